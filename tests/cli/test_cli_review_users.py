"""`curate review add-user` and `curate review user list|deactivate|activate`, through the real
typer app on a real SQLite review database."""

from __future__ import annotations

import shutil

from typer.testing import CliRunner

from cli.main import app
from curation.reviewdb import ReviewDB
from tests.helpers import make_items

PW = "correct horse battery"


def test_accounts_are_made_from_stdin_listed_deactivated_and_reactivated(coco_store, tmp_path):
    ds = tmp_path / "u.lance"
    shutil.copytree(coco_store.uri, ds, ignore=shutil.ignore_patterns("_curation"))
    db_url = str(tmp_path / "review.sqlite")
    common = ["--dataset", str(ds), "--db", db_url]
    runner = CliRunner()
    out = runner.invoke(app, ["review", "add-user", "alice", *common, "--password", PW])
    assert out.exit_code == 2 and "not taken from the command line" in out.output  # ps would show it
    for name in ("alice", "bob"):
        # a new database outside the dataset's default place only when told (--create; a no-op the second time)
        out = runner.invoke(app, ["review", "add-user", name, *common, "--create", "--password-stdin"], input=PW + "\n")
        assert out.exit_code == 0, out.output
    db = ReviewDB(db_url)
    alice = db.authenticate("alice", PW)
    token, _ = db.create_session(alice, 600)
    db.enqueue(make_items(2), "b1")
    leased = db.next_item(alice)

    out = runner.invoke(app, ["review", "user", "deactivate", "alice", *common])
    assert out.exit_code == 0 and "1 session(s) ended, 1 leased item(s) back in the queue" in out.output, out.output
    assert db.authenticate("alice", PW) is None and db.session(token) is None
    bob = db.authenticate("bob", PW)
    assert db.next_item(bob)["id"] == leased["id"]  # the lease went back to the queue at once
    out = runner.invoke(app, ["review", "user", "list", *common])
    assert out.exit_code == 0
    lines = {ln.split()[1]: ln for ln in out.output.splitlines() if ln.strip().startswith(("│ alice", "│ bob", "┃"))}
    assert "no" in lines["alice"] and "yes" in lines["bob"], out.output

    out = runner.invoke(app, ["review", "user", "activate", "alice", *common])
    assert out.exit_code == 0 and db.authenticate("alice", PW).name == "alice"
    out = runner.invoke(app, ["review", "user", "deactivate", "mallory", *common])
    assert out.exit_code == 2 and "no user 'mallory'" in out.output
    with db.tx(write=False) as t:
        actions = [r[0] for r in t.all("SELECT action FROM audit ORDER BY id")]
    assert "user_deactivated" in actions and "user_activated" in actions
    db.close()
