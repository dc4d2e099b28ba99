"""``curate report``: the profiling report (HTML)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape

from cli.common import DatasetOpt, console, open_store, require_version, writable_out
from pipelines.report import build_report


def register(app) -> None:

    @app.command()
    def report(
        dataset: str = DatasetOpt,
        out: Optional[Path] = typer.Option(
            None, "--out", "-o", help="HTML file to write (default: the dataset's reports folder, profile-v<version>.html)"
        ),
        examples: int = typer.Option(5, min=0, help="thumbnails at each end of every signal (0: none)"),
        version: Optional[int] = typer.Option(None, help="report an older version (default: latest)"),
    ):
        """HTML report of the profile: histograms, lowest/highest thumbnails, errors by reason."""
        store = open_store(dataset)
        require_version(store, dataset, version)
        if out is None:  # next to the dataset's other reports, not ./report.html overwritten by the next dataset's
            out = store.state_dir / "reports" / f"profile-v{store.open(version).version}.html"
        writable_out(out, create_parent=True)
        if version is not None:
            from curation.store import Store

            class _At(Store):
                def open(self, v=None):  # noqa: D401 - pin the version for the report
                    return super().open(version if v is None else v)

            store = _At(store.uri, store.storage_options)
        path = build_report(store, out, examples=examples)
        console.print(f"wrote {escape(str(Path(path).resolve()))}", soft_wrap=True)
