"""`curate graph build | show` print concept labels and user terms literally: a label such as
"[raw] widget" is rich markup to the console and was silently dropped."""

from __future__ import annotations

from typer.testing import CliRunner

from cli.main import app

WIDE = {"COLUMNS": "250"}


def test_graph_show_prints_bracketed_labels_and_aliases_literally(tmp_path):
    users = tmp_path / "concepts.csv"
    users.write_text("concept,parent,aliases,zh,weight\n[raw] widget,,[/INST] gizmo,,1\nblue widget,[raw] widget,,,2\n")
    out = tmp_path / "g"
    build = CliRunner().invoke(app, ["graph", "build", "--out", str(out), "--no-wordnet", "--no-zh", "--user", str(users)], env=WIDE)
    assert build.exit_code == 0, build.output
    show = CliRunner().invoke(app, ["graph", "show", "--graph", str(out), "--node", "blue widget"], env=WIDE)
    assert show.exit_code == 0, show.output
    assert "[raw] widget" in show.output, show.output  # the parent's label, as written
    show = CliRunner().invoke(app, ["graph", "show", "--graph", str(out), "--node", "[raw] widget"], env=WIDE)
    assert show.exit_code == 0 and "[/INST] gizmo" in show.output, show.output
