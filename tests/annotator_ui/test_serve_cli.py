"""`curate review serve` and the account commands, through the real typer app, on a real Lance
dataset and real SQLite files (and a PostgreSQL URL nobody listens on): what they answer to a
bad port and to a ``--db`` that does not name a review database (/work/audit/review.md #7-#9).
The server itself is not started: ``uvicorn.run`` is recorded instead (the app it would serve is
tested in test_api.py and test_browser.py)."""

from __future__ import annotations

import lance
import pytest
import uvicorn
from typer.testing import CliRunner

import cli.review
from cli.main import app
from curation.reviewdb import ReviewDB
from tests.helpers import PASSWORD, coco_rows, free_port, samples_table


@pytest.fixture
def ds(tmp_path, coco_dir) -> str:
    uri = str(tmp_path / "ds.lance")
    lance.write_dataset(samples_table(coco_rows(coco_dir, limit=2)), uri)
    return uri


@pytest.fixture
def started(monkeypatch) -> list:
    """Every server and Ray start a command makes, recorded, none done."""
    calls: list = []
    monkeypatch.setattr(uvicorn, "run", lambda app_, **kw: calls.append(("serve", kw)))
    monkeypatch.setattr(cli.review, "start_ray", lambda *a, **kw: calls.append(("ray", a)))
    return calls


def _run(*args: str, stdin: str = ""):
    res = CliRunner().invoke(app, ["review", *args], input=stdin)
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)  # never an escaped traceback
    return res.exit_code, res.output


def _says(out: str, text: str) -> bool:
    """``text`` in ``out``, whitespace aside: rich wraps long lines, paths too."""
    return "".join(text.split()) in "".join(out.split())


def test_serve_refuses_a_port_outside_1_to_65535(ds, tmp_path, started):
    """Audit #7: --port 99999 announced :99999 and bound 34463 (99999 mod 65536); -5 ended in a
    uvicorn error. A usage error now, and nothing starts."""
    db = str(tmp_path / "review.sqlite")
    ReviewDB(db).close()
    for port in ("99999", "65536", "0", "-5"):
        code, out = _run("serve", "--dataset", ds, "--db", db, "--port", port)
        assert code == 2 and _says(out, "--port"), (port, out)
    assert started == []
    code, out = _run("serve", "--dataset", ds, "--db", db, "--port", "65535")
    assert code == 0 and started == [("serve", {"host": "127.0.0.1", "port": 65535, "log_level": "warning"})], out


def test_a_mistyped_db_is_an_error_not_a_new_empty_database(ds, tmp_path, started):
    """Audit #8: a mistyped --db made a new, empty database (and its folders) for serve, add-user
    and the user commands: annotators saw an empty queue, accounts landed in the wrong file."""
    typo = tmp_path / "typo" / "review.sqlite"
    for args in (["serve"], ["user", "list"], ["user", "deactivate", "bob"], ["user", "activate", "bob"], ["apply"]):
        code, out = _run(*args, "--dataset", ds, "--db", str(typo))
        assert code == 2 and _says(out, f"no review database at {typo}; run `curate review mine` first"), (args, out)
    code, out = _run("add-user", "zed", "--dataset", ds, "--db", str(typo), "--password-stdin", stdin=PASSWORD + "\n")
    assert code == 2 and _says(out, "no review database at"), out
    assert not typo.parent.exists() and started == []  # no folder, no server, no Ray
    # accounts may come before the first mine, in a database asked for: the new file is announced
    new = tmp_path / "fresh.sqlite"
    code, out = _run("add-user", "zed", "--dataset", ds, "--db", str(new), "--create", "--password-stdin", stdin=PASSWORD + "\n")
    assert code == 0 and _says(out, f"new review database at {new}") and _says(out, "user zed (annotator) ready"), out
    code, out = _run("serve", "--dataset", ds, "--db", str(new))
    assert code == 0 and [c[0] for c in started] == ["serve"], out


def test_add_user_makes_a_new_database_only_in_the_default_place_or_when_told(ds, tmp_path, db_url):
    """Audit: `add-user --db` with a mistyped path in a folder that exists (or a PostgreSQL
    database that was never mined) made a new, empty review database and put the account there,
    where no server looked. Now a --db must name a review database unless --create says to start
    one; the dataset's default database is still made by the first add-user, before any mine."""
    args = ("--dataset", ds, "--password-stdin")
    code, out = _run("add-user", "zed", *args, "--db", db_url, stdin=PASSWORD + "\n")
    assert code == 2, out
    assert _says(out, "; run `curate review mine` first, or pass --create to start a new review database there"), out
    assert _says(out, f"no review database at {db_url}") or db_url.startswith("postgresql://"), out
    if not db_url.startswith("postgresql://"):
        assert not (tmp_path / "review.sqlite").exists()
    with pytest.raises(FileNotFoundError):  # nothing was made there
        ReviewDB(db_url, create=False)
    code, out = _run("add-user", "zed", *args, "--db", db_url, "--create", stdin=PASSWORD + "\n")
    assert code == 0 and _says(out, "user zed (annotator) ready"), out
    assert _says(out, "new review database at") == (not db_url.startswith("postgresql://")), out
    code, out = _run("add-user", "amy", *args, "--db", db_url, stdin=PASSWORD + "\n")  # it exists now
    assert code == 0 and not _says(out, "new review database") and _says(out, "user amy (annotator) ready"), out
    rdb = ReviewDB(db_url, create=False)
    assert {u["name"] for u in rdb.user_table()} == {"zed", "amy"}
    rdb.close()


def test_the_first_add_user_makes_the_datasets_default_database(ds, tmp_path):
    """Without --db (or with the default path written out) the dataset's own database is made
    on demand and announced: accounts may come before the first mine."""
    default = tmp_path / "ds.lance" / "_curation" / "review" / "review.sqlite"
    code, out = _run("add-user", "zed", "--dataset", ds, "--password-stdin", stdin=PASSWORD + "\n")
    assert code == 0 and _says(out, f"new review database at {default}") and default.exists(), out
    code, out = _run("add-user", "amy", "--dataset", ds, "--db", str(default), "--role", "admin", "--password-stdin", stdin=PASSWORD + "\n")
    assert code == 0 and not _says(out, "new review database") and _says(out, "user amy (admin) ready"), out
    default.unlink()
    code, out = _run("add-user", "bo", "--dataset", ds, "--db", str(default), "--password-stdin", stdin=PASSWORD + "\n")
    assert code == 0 and _says(out, f"new review database at {default}"), out  # the default, spelt out


@pytest.mark.parametrize(
    "args",
    [["user", "list"], ["user", "deactivate", "bob"], ["serve"], ["apply"], ["mine"], ["add-user", "zed", "--password-stdin"]],
    ids=lambda a: " ".join(a[:2]),
)
def test_an_unreachable_postgresql_db_is_one_line_with_the_password_hidden(ds, started, args):
    """Audit #9: a PostgreSQL server that does not answer was reported as "this is a bug in
    zcurate" with a traceback in a log. One line now, naming the database (password hidden)."""
    url = f"postgresql://u:s3cret@127.0.0.1:{free_port()}/review"
    code, out = _run(*args, "--dataset", ds, "--db", url, stdin=PASSWORD + "\n")
    assert code == 2, out
    assert _says(out, "error: cannot connect to the review database postgresql://u:***@127.0.0.1:") and _says(out, "Connection refused"), (
        out
    )
    assert "s3cret" not in out and started == []
