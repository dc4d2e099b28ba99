"""Every command, given bad arguments, answers with a clear error and no traceback.

The walk covers each leaf command of the CLI (so a new command is covered the day it is added),
with three kinds of bad input: a dataset or file that does not exist, a directory where a file is
expected, and an unknown option. Each must end with a non-zero exit (or, for the few commands
that create what they are given, a zero one) and never let an exception escape the command.
"""

from __future__ import annotations

import subprocess
import sys

import click
import pytest
import typer
from typer.testing import CliRunner

from cli.main import app

# commands that create the path they are given (a missing path is valid input for them)
CREATES = {"demo-data", "graph build"}
# commands that keep running when their input is good (a server); they get a missing dataset only
SERVES = {"review serve"}


def leaves(cmd: click.Command, path: list[str]):
    subs = getattr(cmd, "commands", None)
    if subs is None:
        yield " ".join(path), cmd
        return
    for name, sub in subs.items():
        yield from leaves(sub, [*path, name])


LEAVES = dict(leaves(typer.main.get_command(app), []))


def required_args(cmd: click.Command, value: str) -> list[str]:
    """``value`` for every required argument and option (and --dataset, required or not)."""
    args: list[str] = []
    for p in cmd.params:
        if p.param_type_name == "argument" and p.required:
            args.append(value)
        elif p.param_type_name == "option" and (p.required or "--dataset" in p.opts):
            args += [p.opts[0], value]
    return args


def _invoke(name: str, args: list[str]):
    res = CliRunner().invoke(app, [*name.split(), *args], input="")
    escaped = res.exception if not isinstance(res.exception, (type(None), SystemExit)) else None
    return res, escaped


@pytest.fixture
def ray_starts(monkeypatch) -> list:
    """Every start of (or connection to) Ray a command makes, recorded and then done as usual:
    ``ray.is_initialized()`` cannot tell, since other tests of the session keep one Ray up."""
    import curation.cluster
    import pipelines.pipeline

    calls: list = []
    real = curation.cluster.init_ray

    def spy(*a, **k):
        calls.append(a)
        return real(*a, **k)

    monkeypatch.setattr(curation.cluster, "init_ray", spy)
    monkeypatch.setattr(pipelines.pipeline, "init_ray", spy)
    return calls


@pytest.mark.parametrize("name", sorted(set(LEAVES) - CREATES))
def test_missing_input_is_one_clear_error(name, tmp_path, ray_starts):
    """A path that does not exist: exit non-zero with an error naming what is wrong."""
    missing = str(tmp_path / "missing" / "nothing.lance")
    res, escaped = _invoke(name, required_args(LEAVES[name], missing))
    assert escaped is None, f"curate {name}: {type(escaped).__name__}: {escaped}"
    assert "Traceback" not in res.output
    assert not ray_starts, f"curate {name} started Ray before finding its input missing"
    if "invalid config" in res.output:  # a ConfigError (one line): it names the missing path
        assert res.exit_code == 2 and missing in "".join(res.output.split()), res.output
    elif required_args(LEAVES[name], missing):
        assert res.exit_code != 0, f"curate {name} accepted a missing input: {res.output[-300:]}"
        assert "error" in res.output.lower() or "usage" in res.output.lower(), res.output[-300:]


@pytest.mark.parametrize("name", sorted(set(LEAVES) - SERVES - CREATES))
def test_directory_where_a_file_or_dataset_is_expected(name, tmp_path):
    """An existing, empty directory (a usual slip: the folder instead of the file in it)."""
    folder = tmp_path / "folder"
    folder.mkdir()
    args = required_args(LEAVES[name], str(folder))
    if not args:
        pytest.skip(f"curate {name} takes no path")
    res, escaped = _invoke(name, args)
    assert escaped is None, f"curate {name}: {type(escaped).__name__}: {escaped}"
    assert "Traceback" not in res.output


@pytest.mark.parametrize("name", sorted(LEAVES))
def test_unknown_option_is_a_usage_error(name):
    res, escaped = _invoke(name, ["--no-such-option"])
    assert escaped is None
    assert res.exit_code == 2 and "No such option" in res.output


def test_the_console_script_turns_an_unforeseen_error_into_one_line(tmp_path):
    """The last net: whatever escapes a command becomes one line on stderr, the traceback goes to
    a log file, exit 1. Provoked with a pipeline file that is not UTF-8 text."""
    bad = tmp_path / "p.yaml"
    bad.write_bytes(b"\xff\xfe\x00steps: [")
    r = subprocess.run([sys.executable, "-m", "cli", "run", str(bad)], capture_output=True, text=True, timeout=120)
    assert r.returncode != 0
    assert "Traceback" not in r.stderr + r.stdout
    assert "error" in r.stderr
