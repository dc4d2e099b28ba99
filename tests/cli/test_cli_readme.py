"""The README's command list and the CLI say the same: every command the README names exists, and
every command the CLI has is in the README (a renamed or new command cannot drift unseen)."""

from __future__ import annotations

import re
from pathlib import Path

import typer

from cli.main import app
from curation.registry import STEPS

# the project's own steps, as collection found them (tests that load plugin steps run later)
PROJECT_STEPS = dict(STEPS)
README = Path(__file__).resolve().parents[2] / "README.md"


def cli_commands() -> set[str]:
    """'ingest', 'graph build', 'review user list', ... (the leaf commands, as typed)."""

    def walk(cmd, path):
        subs = getattr(cmd, "commands", None)
        if subs is None:
            yield " ".join(path)
            return
        for name, sub in subs.items():
            yield from walk(sub, [*path, name])

    return set(walk(typer.main.get_command(app), []))


def readme_commands() -> set[str]:
    """Commands named in the README's "Using it" block: `curate a b | c | d e` names `a b`,
    `a c` and `a d e` (the alternatives share the first word)."""
    block = README.read_text().split("## Using it", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    names = set()
    for line in block.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line.startswith("curate "):
            continue
        alternatives = re.split(r"\s+\|\s+", line.removeprefix("curate "))
        head = alternatives[0].split()[0]
        for i, alt in enumerate(alternatives):
            parts = []
            for w in alt.split():  # the command words: up to the first option or placeholder
                if not re.fullmatch(r"[a-z][a-z-]*", w):
                    break
                parts.append(w)
            names.add(" ".join(parts if i == 0 else [head, *parts]))
    return names


def test_readme_and_cli_name_the_same_commands():
    cli, readme = cli_commands(), readme_commands()
    assert not readme - cli, f"the README names commands the CLI does not have: {sorted(readme - cli)}"
    assert not cli - readme, f"commands missing from the README's list: {sorted(cli - readme)}"


def test_run_help_lists_every_step_with_its_fields():
    """A YAML error points at `curate run --help`: it must list each step's params."""
    from typer.testing import CliRunner

    run = typer.main.get_command(app).commands["run"]
    shown = CliRunner().invoke(app, ["run", "--help"]).output
    assert "Steps and their params" in shown
    lines = set(run.epilog.split("\n\n"))
    for name, spec in PROJECT_STEPS.items():
        assert f"{name}: {', '.join(spec.config_model.model_fields) or '(none)'}" in lines, name
