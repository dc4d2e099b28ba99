"""What `curate` prints for user data, paths and errors: literally, in one line, never a traceback.

Captions, paths and exception texts can hold "[/INST]" or "[raw]", which rich reads as markup (a
``MarkupError`` crash, or text silently dropped). Bad ``--version`` / ``--out`` values must be one
line naming the problem, not Lance's Rust text or "this is a bug in zcurate". Ctrl-C must print the
"interrupted" line.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.main import app
from curation.store import Store
from tests.helpers import interruptible_cli

ROOT = Path(__file__).resolve().parents[2]
WIDE = {"COLUMNS": "250"}  # no line wrapping inside the paths and messages asserted on
HOSTILE = ["a dog [/INST] on grass", "[red]red text[/red] and [link=http://evil]click[/link]"]


def flat(text: str) -> str:
    """The output with line breaks and runs of spaces as one space (rich wraps long lines)."""
    return " ".join(text.split())


def curate(*args: str, env: dict | None = None, timeout: int = 120) -> subprocess.CompletedProcess:
    """A real `python -m cli` process from the checkout these tests belong to."""
    cmd = [sys.executable, "-m", "cli", *args]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env={**os.environ, **WIDE, **(env or {})})


@pytest.fixture
def bracket_store(tmp_path, coco_dir):
    """Two rows whose captions look like rich markup, in a dataset whose path does too."""
    import lance

    from curation.store import Store
    from tests.helpers import sample_row, samples_table

    photos = sorted((coco_dir / "images").glob("*.jpg"))[:2]
    rows = [sample_row(p.read_bytes(), "src", p.name, [cap]) for p, cap in zip(photos, HOSTILE)]
    uri = tmp_path / "[raw] shoot.lance"
    lance.write_dataset(samples_table(rows), str(uri))
    return Store(str(uri))


# --- #4: markup in user data, paths and exception text ----------------------------------------


def test_sql_prints_captions_and_column_names_literally(bracket_store):
    q = "select source_key, captions[1].text as \"[raw] caption\", '[/x] weird' as c from samples order by 1"
    res = CliRunner().invoke(app, ["sql", q, "--dataset", bracket_store.uri], env=WIDE)
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    assert res.exit_code == 0, res.output
    for text in (*HOSTILE, "[raw] caption", "[/x] weird"):
        assert text in res.output


def test_info_prints_a_bracketed_dataset_path_literally(bracket_store):
    res = CliRunner().invoke(app, ["info", "--dataset", bracket_store.uri], env=WIDE)
    assert res.exit_code == 0, res.output
    assert bracket_store.uri in res.output


def test_error_lines_keep_brackets_in_paths(tmp_path):
    runner = CliRunner()
    src = str(tmp_path / "nothere[/x]")
    res = runner.invoke(app, ["ingest", src, "--dataset", str(tmp_path / "x.lance")], env=WIDE)
    assert res.exit_code == 2 and f"source not found: {src}" in flat(res.output), repr(res.exception)
    missing = str(tmp_path / "[raw] missing.lance")
    res = runner.invoke(app, ["info", "--dataset", missing], env=WIDE)
    assert res.exit_code == 2 and f"--dataset '{missing}'" in flat(res.output), res.output  # a hint that can be pasted


def test_main_prints_a_config_error_with_brackets_as_one_line(tmp_path):
    bad = tmp_path / "bracket.yaml"
    bad.write_text("dataset: d.lance\nsteps:\n  - stage: ingest\n    params: {source: [/data/photos}\n")
    r = curate("run", str(bad))
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr + r.stdout and "MarkupError" not in r.stderr
    assert "expected ',' or ']'" in r.stderr and "[/data/photos}" in r.stderr


def test_main_prints_an_unforeseen_error_with_brackets_as_one_line():
    """The last net itself must not crash on the message it prints."""
    py = (
        "import sys, cli.main as m\n"
        "@m.app.command('boom')\n"
        "def boom():\n"
        "    raise RuntimeError('[/x] closing tag and [raw] folder')\n"
        "sys.argv = ['curate', 'boom']\n"
        "m.main()\n"
    )
    r = subprocess.run([sys.executable, "-c", py], cwd=ROOT, capture_output=True, text=True, timeout=120, env={**os.environ, **WIDE})
    assert r.returncode == 1, r.stderr
    assert "Traceback" not in r.stderr and "MarkupError" not in r.stderr
    assert "error: RuntimeError: [/x] closing tag and [raw] folder" in flat(r.stderr)


# --- #6: `sql --out` with nested columns and bad places --------------------------------------


def test_sql_out_csv_writes_nested_columns_as_json(coco_store, tmp_path):
    out = tmp_path / "rows.csv"
    res = CliRunner().invoke(app, ["sql", "select id, captions from samples", "--dataset", coco_store.uri, "-o", str(out)])
    assert res.exit_code == 0, repr(res.exception)
    with out.open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 80
    caps = json.loads(rows[0]["captions"])
    assert len(caps) == 5 and caps[0]["kind"] == "short" and caps[0]["text"]


def test_sql_out_in_a_missing_folder_or_a_directory_is_one_line(coco_store, tmp_path):
    runner = CliRunner()
    q = "select id from samples"
    res = runner.invoke(app, ["sql", q, "--dataset", coco_store.uri, "-o", str(tmp_path / "nonexistent" / "x.parquet")], env=WIDE)
    assert res.exit_code == 2 and "does not exist" in flat(res.output), repr(res.exception)
    res = runner.invoke(app, ["sql", q, "--dataset", coco_store.uri, "-o", str(tmp_path)], env=WIDE)
    assert res.exit_code == 2 and f"{tmp_path} is a directory" in flat(res.output), res.output


# --- #7: --version, --out and --examples ---------------------------------------------------


@pytest.mark.parametrize(
    "args", [["info"], ["sql", "select id from samples"], ["report", "-o", "{tmp}/r.html"]], ids=["info", "sql", "report"]
)
def test_a_missing_version_names_the_versions_there_are(args, coco_store, tmp_path):
    argv = [a.format(tmp=tmp_path) for a in args] + ["--dataset", coco_store.uri, "--version", "77"]
    res = CliRunner().invoke(app, argv, env=WIDE)
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    assert res.exit_code == 2 and "has no version 77; its versions are 1" in flat(res.output), res.output
    assert "lance" not in flat(res.output).split("its versions are")[1].split("(see")[0]  # no Rust text
    assert not (tmp_path / "r.html").exists()


def test_report_refuses_a_directory_and_a_negative_examples(coco_store, tmp_path):
    runner = CliRunner()
    res = runner.invoke(app, ["report", "--dataset", coco_store.uri, "-o", str(tmp_path)], env=WIDE)
    assert res.exit_code == 2 and f"{tmp_path} is a directory" in flat(res.output), repr(res.exception)
    res = runner.invoke(app, ["report", "--dataset", coco_store.uri, "-o", str(tmp_path / "r.html"), "--examples", "-3"], env=WIDE)
    assert res.exit_code == 2 and "--examples" in res.output, res.output
    assert not (tmp_path / "r.html").exists()


def test_build_report_refuses_a_negative_examples(coco_store, tmp_path):
    from pipelines.report import build_report

    with pytest.raises(ValueError, match="examples must be >= 0"):
        build_report(coco_store, tmp_path / "r.html", examples=-3)


def test_diff_hints_a_command_that_works(coco_store):
    runner = CliRunner()
    res = runner.invoke(app, ["diff", "--dataset", coco_store.uri, "1", "99"], env=WIDE)
    assert res.exit_code == 2, res.output
    hint = flat(res.output).split("(see `")[1].split("`")[0]
    assert hint == f"curate info --dataset {coco_store.uri}"
    again = runner.invoke(app, hint.split()[1:], env=WIDE)
    assert again.exit_code == 0, again.output


# --- #8: Ctrl-C ------------------------------------------------------------------------------


def test_ctrl_c_prints_the_interrupted_line(coco_dir):
    """SIGINT to the process group (what a terminal's Ctrl-C does) while ingest writes units."""
    tmp = Path(tempfile.mkdtemp(prefix="zc", dir="/tmp"))  # short: Ray's socket paths must fit 107 bytes
    ds = tmp / "d.lance"
    cmd = [sys.executable, "-m", "cli", "ingest", str(coco_dir / "images"), "--dataset", str(ds), "--shard-size", "1"]
    p = interruptible_cli(cmd, ROOT, {**WIDE, "TMPDIR": str(tmp)})
    try:
        deadline = time.monotonic() + 180
        while p.poll() is None and time.monotonic() < deadline and not list(ds.glob("_curation/checkpoints/ingest-*/*")):
            time.sleep(0.05)
        assert p.poll() is None, "ingest ended before it could be interrupted"
        os.killpg(p.pid, signal.SIGINT)
        out, err = p.communicate(timeout=120)
    finally:
        _kill_group(p.pid)
        shutil.rmtree(tmp, ignore_errors=True)
    assert p.returncode == 130, err
    assert "interrupted: committed versions are kept; re-run the command to resume" in flat(err)
    assert "Traceback" not in out + err


def _kill_group(pgid: int) -> None:
    """Whatever the interrupted run left in its own process group (Ray's helpers)."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def test_ingest_names_a_bracketed_dataset_path_literally(tmp_path, coco_dir, ray_session):
    src = tmp_path / "photos"
    src.mkdir()
    for p in sorted((coco_dir / "images").glob("*.jpg"))[:2]:
        shutil.copy(p, src / p.name)
    target = str(tmp_path / "[raw] shoot.lance")
    res = CliRunner().invoke(app, ["ingest", str(src), "--dataset", target], env=WIDE)
    assert res.exit_code == 0, res.output
    assert f"into {target}" in flat(res.output), res.output


def test_demo_data_names_a_bracketed_folder_literally(tmp_path):
    out = tmp_path / "[raw] corpus"
    res = CliRunner().invoke(app, ["demo-data", str(out)], env=WIDE)
    assert res.exit_code == 0, res.output
    assert f"next: curate ingest {out} --dataset demo.lance" in flat(res.output), res.output[-400:]


def test_a_step_error_in_curate_run_is_one_line_not_a_bug(coco_store, coco_graph_dir, tmp_path, ray_session):
    """A resample target no row set can reach is the user's to change: said as such, with the fix."""
    import yaml

    ds = tmp_path / "r.lance"
    shutil.copytree(coco_store.uri, ds)
    pipe = tmp_path / "p.yaml"
    pipe.write_text(
        yaml.safe_dump(
            {
                "dataset": str(ds),
                "steps": [
                    {"stage": "graph_tag", "params": {"graph": str(coco_graph_dir)}},
                    {"stage": "resample", "params": {"graph": str(coco_graph_dir), "target_size": 100000}},
                ],
            }
        )
    )
    res = CliRunner().invoke(app, ["run", str(pipe)], env=WIDE)
    out = flat(res.output)
    assert res.exit_code == 2 and "error: target size 100000 needs more than max_upsample" in out, out[-600:]
    assert "bug in zcurate" not in out


def test_user_mistakes_inside_curate_run_are_one_line_not_a_bug(coco_store, tmp_path, monkeypatch, ray_session):
    """The same mistakes as through `curate ingest` / `curate export`, inside a pipeline file:
    a missing source (relative: said where it was looked for) and an export rule's missing column."""
    import yaml

    monkeypatch.chdir(tmp_path)
    pipe = tmp_path / "p.yaml"
    pipe.write_text(yaml.safe_dump({"dataset": "new.lance", "steps": [{"stage": "ingest", "params": {"source": ["photos"]}}]}))
    res = CliRunner().invoke(app, ["run", str(pipe)], env=WIDE)
    out = flat(res.output)
    assert res.exit_code == 2 and f"error: source not found: photos (a relative path is read from the current folder, {tmp_path})" in out, (
        out
    )
    ds = tmp_path / "c.lance"
    shutil.copytree(coco_store.uri, ds)
    pipe.write_text(yaml.safe_dump({"dataset": str(ds), "steps": [{"stage": "export", "params": {"out": str(tmp_path / "shards")}}]}))
    res = CliRunner().invoke(app, ["run", str(pipe)], env=WIDE)
    out = flat(res.output)
    # refused when the file is read, before any step runs (it failed when the export step came)
    assert res.exit_code == 2 and "error: invalid config in" in out, out
    assert "step 1: export rule 'nsfw' ('prof_nsfw >= 0.8') needs column prof_nsfw" in out, out
    assert "bug in zcurate" not in out and "Traceback" not in res.output


def test_sql_select_star_is_readable_at_terminal_width(coco_store):
    """Too many columns to read side by side: one block per row (name, value), every value shown."""
    res = CliRunner().invoke(
        app, ["sql", "select * from samples order by source_key limit 2", "--dataset", coco_store.uri], env={"COLUMNS": "100"}
    )
    assert res.exit_code == 0, res.output
    first = sorted(p.name for p in Path(coco_store.to_arrow(columns=["source"])["source"][0].as_py(), "images").glob("*.jpg"))[:2]
    for name in first:
        assert f"│ source_key   │ {name}" in res.output, res.output
    assert "row 1" in res.output and "row 2" in res.output and "…" not in res.output


def test_report_goes_next_to_the_dataset_by_default(coco_store, tmp_path, monkeypatch):
    """It went to ./report.html, where the next dataset's report overwrote it without a word."""
    ds = tmp_path / "c.lance"
    shutil.copytree(coco_store.uri, ds)
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(app, ["report", "--dataset", str(ds), "--examples", "0"], env=WIDE)
    want = ds / "_curation" / "reports" / f"profile-v{Store(ds).open().version}.html"
    assert res.exit_code == 0 and f"wrote {want}" in flat(res.output), res.output
    assert want.is_file() and not (tmp_path / "report.html").exists()
