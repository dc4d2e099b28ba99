"""``curate models list | pull NAME | verify [NAME]``: the weights the platform uses (``curation.models``).

``huggingface_hub`` is imported inside ``curation.models``' functions only: it reads ``HF_ENDPOINT``,
``HF_HOME`` and ``HF_HUB_OFFLINE`` when first imported, and ``curate --help`` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape
from rich.table import Table

from cli.common import console, err_console
from curation.config import ConfigError

CatalogueOpt = typer.Option(
    None,
    "--catalogue",
    envvar="ZCURATE_MODELS_CATALOGUE",
    help="YAML/JSON file whose entries replace or extend the built-in catalogue by name (a private mirror)",
)


def _say(msg: str, *, error: bool = False) -> None:
    """One line on stderr, never wrapped (a long path or hash stays one greppable line)."""
    err_console.print(("[bold red]error:[/] " if error else "") + escape(msg), soft_wrap=True, highlight=False)


def _stop(lines: list[str], code: int = 1) -> None:
    for line in lines:
        _say(line, error=True)
    raise typer.Exit(code)


def _size(n: int | None, approx: bool = False) -> str:
    if n is None:
        return "?"
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            digits = (1 if unit == "GB" else 0) if approx else 2
            return f"{'~' if approx else ''}{n / scale:.{digits}f} {unit}"
    return f"{n} B"


def _load(catalogue_file: Optional[Path]):
    from curation import models

    try:
        return models, models.catalogue(catalogue_file)
    except ConfigError as e:
        _stop([str(e)], code=2)


def _entries(models, cat, names: list[str]):
    try:
        return [models.get_entry(n, cat) for n in names] if names else list(cat.values())
    except models.ModelError as e:
        _stop(e.lines, code=2)


def _hashing(file: str, path: Path) -> None:
    _say(f"  sha256 {file} ({_size(path.stat().st_size)})")


def register(app: typer.Typer) -> None:
    models_app = typer.Typer(help="Model weights: the catalogue, fetching into the hub cache, sha256 checks.", no_args_is_help=True)

    @models_app.command("list")
    def list_cmd(catalogue: Optional[Path] = CatalogueOpt):
        """The catalogue: repository, size, whether it is in the local cache and verified (no network)."""
        models, cat = _load(catalogue)
        try:
            lock = models.read_lock()
            rows = [models.status(e, lock) for e in cat.values()]
        except models.ModelError as e:
            _stop(e.lines)
        t = Table(title="model weights (hub cache)", show_lines=False)
        for col in ("name", "repository", "revision", "size", "cached", "verified", "picked up by"):
            t.add_column(col, overflow="fold")
        for st in rows:
            e = st.entry
            rev = e.revision[:12] if len(e.revision) == 40 else e.revision
            if st.commit and st.present != "no" and st.commit[:12] != rev:
                rev += f" ({st.commit[:12]})"
            size = _size(st.bytes, approx=st.present == "no")
            t.add_row(e.name, e.repo_id, rev, size, st.present, st.verified, e.config_field)
        console.print(t)
        console.print(f"lock: {models.lock_file()}", soft_wrap=True, highlight=False)

    @models_app.command("pull")
    def pull_cmd(
        names: list[str] = typer.Argument(..., metavar="NAME...", help="catalogue entries to fetch"),
        update: bool = typer.Option(False, "--update", help="resolve the catalogue revision again instead of the locked commit"),
        catalogue: Optional[Path] = CatalogueOpt,
    ):
        """Fetch weights into the hub cache (HF_ENDPOINT, HF_TOKEN, HF_HUB_OFFLINE apply); refuse files whose sha256 differs from the pinned, hub or locked one."""
        models, cat = _load(catalogue)
        failed: list[str] = []
        for e in _entries(models, cat, names):
            _say(f"{e.name}: {e.repo_id}@{e.revision} {list(e.files)}")
            try:
                r = models.pull(e, update=update, on_file=_hashing)
            except models.ModelError as err:
                for line in err.lines:
                    _say(line, error=True)
                failed.append(e.name)
                continue
            recorded = [f.file for f in r.findings if f.kind == "recorded"]
            if recorded:
                _say(f"{e.name}: no pinned hash for {len(recorded)} file(s), recorded hash on first pull in {models.lock_file()}")
            console.print(
                f"{e.name}: {len(r.findings)} file(s), {_size(r.bytes)} at commit {r.commit[:12]} -> {r.path}",
                soft_wrap=True,
                highlight=False,
            )
        if failed:
            raise typer.Exit(1)

    @models_app.command("verify")
    def verify_cmd(
        name: Optional[str] = typer.Argument(None, help="one catalogue entry (default: every cached one)"),
        catalogue: Optional[Path] = CatalogueOpt,
    ):
        """Re-hash cached weights against their pinned, hub or locked sha256; exit 1 with one line per mismatch."""
        models, cat = _load(catalogue)
        bad: list[str] = []
        checked = 0
        for e in _entries(models, cat, [name] if name else []):
            try:
                findings = models.verify(e, on_file=_hashing)
            except models.ModelError as err:
                _stop(err.lines)
            if findings is None:
                if name:
                    _stop([f"{e.name}: not in the cache (curate models pull {e.name})"])
                continue
            checked += 1
            for f in findings:
                if f.kind in ("mismatch", "missing"):
                    bad.append(f"{e.name}: {f.file}: {f.detail}")
                elif f.kind == "recorded":
                    _say(f"{e.name}: {f.file}: {f.detail}")
            ok = sum(f.kind == "ok" for f in findings)
            if ok:
                console.print(f"{e.name}: {ok} of {len(findings)} file(s) match their sha256", highlight=False)
        if bad:
            _stop(bad)
        if not checked:
            console.print("no catalogue model is in the cache (curate models pull NAME)")

    app.add_typer(models_app, name="models")
