"""Errors a user can fix (``curation.errors.UserError``) end every command as one line, exit 2:
raised in the driver or in a Ray worker (which Ray wraps in a RayTaskError whose text is a
traceback), while any other exception is left for ``cli.main.main`` to report as a bug."""

from __future__ import annotations

import typer
from typer.testing import CliRunner

from cli.common import UserErrorsAsOneLine
from curation.errors import UserError
from curation.runner import StageRunningError
from engines.vector.index import VectorError


def _app(raiser) -> typer.Typer:
    app = typer.Typer(cls=UserErrorsAsOneLine, pretty_exceptions_enable=False)

    @app.command()
    def go():
        raiser()

    @app.command()
    def other():  # a second command, so ``go`` is a subcommand as in the real app
        pass

    return app


def test_a_user_error_from_the_driver_is_one_line():
    def raiser():
        raise StageRunningError("stage prof_quality is already running on this dataset (pid 7); wait for it")

    res = CliRunner().invoke(_app(raiser), ["go"], env={"COLUMNS": "300"})
    assert res.exit_code == 2 and isinstance(res.exception, SystemExit), res.output
    assert res.output.strip() == "error: stage prof_quality is already running on this dataset (pid 7); wait for it"


def test_a_user_error_from_a_ray_worker_is_its_message_not_a_traceback(ray_session):
    @ray_session.remote
    def build():
        raise VectorError("vec_clip has 3 dimensions, the index 512 [/red]")

    def raiser():
        ray_session.get(build.remote())

    res = CliRunner().invoke(_app(raiser), ["go"], env={"COLUMNS": "300"})
    assert res.exit_code == 2, res.output
    assert res.output.strip() == "error: vec_clip has 3 dimensions, the index 512 [/red]", res.output
    assert "Traceback" not in res.output and "ray::" not in res.output


def test_other_exceptions_are_not_taken_for_user_errors():
    def raiser():
        raise ValueError("a library's own ValueError")

    res = CliRunner().invoke(_app(raiser), ["go"])
    assert type(res.exception) is ValueError and res.exit_code == 1  # cli.main.main reports it as a bug


def test_the_projects_user_facing_errors_share_the_base():
    from curation.config import ConfigError
    from curation.store import DatasetBusyError
    from engines.active.rules import MissingRuleColumn
    from graph.resample import ResampleError

    for cls in (ConfigError, DatasetBusyError, MissingRuleColumn, ResampleError, StageRunningError, VectorError):
        assert issubclass(cls, UserError), cls
    assert issubclass(ConfigError, ValueError) and issubclass(StageRunningError, RuntimeError)  # old handlers still match
