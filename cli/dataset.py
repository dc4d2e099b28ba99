"""Dataset-level commands: ``info``, ``diff``, ``stage``, ``stages``, ``run``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from cli.common import AddressOpt, DatasetOpt, console, fail, open_store, require_version, start_ray, writable_out


def register(app: typer.Typer) -> None:
    @app.command()
    def info(
        dataset: str = DatasetOpt,
        version: Optional[int] = typer.Option(None, help="inspect an older version"),
        columns: bool = typer.Option(False, "--columns", help="every column of the dataset: type, meaning, the stage that writes it"),
        graph: Optional[Path] = typer.Option(None, "--graph", help="concept graph for the tag labels (default: the one graph_tag used)"),
        top_tags: int = typer.Option(15, "--top-tags", min=0, help="concepts listed in the tag summary (0: none)"),
    ):
        """Rows, columns by group, versions and error counts of a dataset (and its top concept tags)."""
        store = open_store(dataset)
        require_version(store, dataset, version)
        if graph is not None and not (graph / "nodes.parquet").is_file():
            fail(f"no concept graph at {graph} (expected nodes.parquet); leave out --graph to use the one graph_tag used")
        ds = store.open(version)
        if columns:
            _print_columns(ds.schema)
            return
        console.print(f"[bold]{escape(store.uri)}[/]", soft_wrap=True)
        console.print(f"version v{ds.version}  rows {ds.count_rows():,}  fragments {len(ds.get_fragments())}")
        t = Table(title="columns by group")
        t.add_column("group")
        t.add_column("columns")
        for g, cols in store.columns_by_group(version).items():
            t.add_row(*_literal(g, ", ".join(cols)))
        console.print(t)
        errs = store.error_counts(version)
        if "exact_dup_of" in ds.schema.names:
            n = ds.count_rows(filter="exact_dup_of IS NOT NULL")
            console.print(f"exact duplicates flagged: {n}")
        console.print(f"rows with errors: {sum(errs.values())}")
        if errs:
            e = Table(title="errors by reason")
            e.add_column("reason")
            e.add_column("rows", justify="right")
            for k, v in errs.items():
                e.add_row(*_literal(k, str(v)))
            console.print(e)
        if top_tags and "tag_concepts" in ds.schema.names:
            _print_tag_summary(store, version, graph, top_tags)
        v = Table(title="versions")
        v.add_column("version")
        v.add_column("time")
        v.add_column("rows", justify="right")
        v.add_column("made by")
        for rec in store.versions()[-10:]:
            v.add_row(
                *_literal(
                    f"v{rec['version']}", str(rec["timestamp"])[:19], rec["metadata"].get("total_rows", ""), rec["job"].get("message", "")
                )
            )
        console.print(v)

    @app.command()
    def diff(
        dataset: str = DatasetOpt,
        v1: str = typer.Argument(..., help="older version (3 or v3, as `curate info` shows them)"),
        v2: Optional[str] = typer.Argument(None, help="newer version (default: latest)"),
    ):
        """What changed between two versions: columns, rows, values per column."""
        store = open_store(dataset)
        v1, v2 = (None if v is None else _version_arg(v) for v in (v1, v2))
        v2 = v2 or store.versions(jobs=False)[-1]["version"]
        for v in (v1, v2):
            require_version(store, dataset, v)
        console.print_json(json.dumps(store.diff(v1, v2)))

    def _version_arg(v: str) -> int:
        """A version as typed: ``3`` or ``v3`` (``curate info`` prints them with the v)."""
        digits = v.strip().removeprefix("v").removeprefix("V")
        if not digits.isdigit():
            fail(f"{v!r} is no version: give its number, e.g. 3 or v3 (see `curate info`)")
        return int(digits)

    @app.command()
    def stage(
        name: str = typer.Argument(..., help="registered stage name (see `curate stages`)"),
        dataset: str = DatasetOpt,
        config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML with the stage's params"),
        overwrite: bool = typer.Option(
            False, help="recompute every row (one commit); without it only rows that lack the columns (added since) are computed"
        ),
        address: Optional[str] = AddressOpt,
    ):
        """Run one registered column stage over the rows that lack its columns (resumable; one commit)."""
        from curation.config import load_yaml, validate
        from curation.registry import get_stage
        from curation.runner import print_summary, run_stage

        try:
            cls = get_stage(name)
        except KeyError as e:
            fail(str(e.args[0]))
        params = load_yaml(config) if config else {}
        cfg = validate(cls.config_model, params, where=str(config or "defaults"))
        store = open_store(dataset)
        start_ray(address)
        print_summary([run_stage(store, cls(cfg), overwrite=overwrite)], title=f"stage {name}")

    @app.command()
    def stages(name: Optional[str] = typer.Argument(None, help="a step: list its config fields")):
        """List registered stages and pipeline steps; with a name, the fields its config accepts."""
        from curation.registry import STAGES, STEPS

        if name is not None:
            _describe_step(name)
            return
        t = Table()
        t.add_column("step")
        t.add_column("kind")
        t.add_column("what it does")
        for n, spec in sorted(STEPS.items()):
            t.add_row(*_literal(n, "stage" if n in STAGES else "step", spec.doc))
        console.print(t)

    @app.command()
    def sql(
        query: str = typer.Argument(..., help='SQL over the dataset as "samples", e.g. "select error, count(*) from samples group by 1"'),
        dataset: str = DatasetOpt,
        version: Optional[int] = typer.Option(None, help="dataset version (default: latest)"),
        out: Optional[Path] = typer.Option(None, "--out", "-o", help="write all rows to .parquet, .csv or .jsonl"),
        max_rows: int = typer.Option(50, min=1, help="rows shown on the terminal"),
    ):
        """SQL on the dataset through DuckDB (columns read lazily; vectors as float32)."""
        from curation.sql import run_sql

        if not query.strip():
            fail('the query is empty; e.g. curate sql "select count(*) from samples" --dataset DS')
        store = open_store(dataset)
        require_version(store, dataset, version)
        if out is not None:
            _check_sql_out(out)
        try:
            t = run_sql(query, store.uri, version, store.storage_options)
        except ValueError as e:
            fail(str(e))
        _print_or_write(t, out, max_rows)

    @app.command(epilog=_steps_epilog())
    def run(
        pipeline: Path = typer.Argument(..., help="pipeline YAML: dataset, ray, steps"),
        overwrite: bool = typer.Option(False, help="recompute steps whose output exists"),
        address: Optional[str] = AddressOpt,
    ):
        """Run the steps of a pipeline file in order; each step is resumable and commits a version."""
        from pipelines.pipeline import run_pipeline

        run_pipeline(pipeline, overwrite=overwrite, address=address)  # a step's UserError: one line (UserErrorsAsOneLine)


def _steps_epilog() -> str:
    """``curate run --help``: each step a pipeline file can name, with the params its config
    accepts (``curate stages NAME`` gives their types, defaults and meaning)."""
    from curation.registry import STEPS

    lines = ["Steps and their params (types and defaults: curate stages NAME):"]
    for name, spec in sorted(STEPS.items()):
        fields = ", ".join(spec.config_model.model_fields) or "(none)"
        lines.append(f"{name}: {fields}")
    return "\n\n".join(lines)


_WRITTEN_BY_STEP = {"base": "curate ingest", "dup": "curate dedup", "rev": "curate review apply"}


def schema_rows(schema=None) -> list[dict[str, str]]:
    """One row per column (of ``schema``, or every declared one): group, Arrow type, the stage or
    command that writes it, and its meaning from ``curation/schema.py``'s own comments."""
    from curation.registry import STAGES
    from curation.schema import COLUMN_GROUPS, SAMPLES_SCHEMA, column_comments, group_of

    meaning = column_comments()
    declared = [*SAMPLES_SCHEMA, *(f for g in COLUMN_GROUPS.values() for f in g.schema)]
    fields = declared if schema is None else list(schema)
    writers: dict[str, list[str]] = {}
    for name, cls in sorted(STAGES.items()):
        for col in cls.output_schema.names:
            writers.setdefault(col, []).append(f"stage {name}")
    rows = []
    for f in fields:
        group = group_of(f.name)
        # stages whose columns depend on their config (the fused prof_cheap families) declare
        # none on the class: their group is named after the stage
        by = ", ".join(writers.get(f.name, [])) or (f"stage {group}" if group in STAGES else _WRITTEN_BY_STEP.get(group, ""))
        rows.append({"column": f.name, "group": group, "type": str(f.type), "written by": by, "meaning": meaning.get(f.name, "")})
    return rows


def schema_markdown() -> str:
    """docs/schema.md: generated, and compared with the file by a test, so it cannot drift."""
    lines = [
        "# Samples table: every column",
        "",
        "Generated from `curation/schema.py` (its field comments) and the stage registry; do not edit.",
        "Regenerate: `.venv/bin/python -c 'from cli.main import app; from cli.dataset import schema_markdown;"
        " print(schema_markdown(), end=\"\")' > docs/schema.md`. A dataset's own columns: `curate info -d DS --columns`.",
        "",
        "| column | group | type | written by | meaning |",
        "|---|---|---|---|---|",
    ]
    for r in schema_rows():
        cells = [f"`{r['column']}`", r["group"], f"`{r['type']}`", r["written by"], r["meaning"].replace("|", "\\|")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _print_columns(schema) -> None:
    t = Table(title="columns", show_lines=False)
    for col in ("column", "group", "type", "written by", "meaning"):
        t.add_column(col, overflow="fold")
    for r in schema_rows(schema):
        t.add_row(*_literal(*r.values()))
    console.print(t)


def _print_tag_summary(store, version: Optional[int], graph: Optional[Path], top: int) -> None:
    """The concepts the captions name most, by English and Chinese label; the id stays beside
    them because it is what the tag columns, priors and filters store."""
    from graph.summary import read_labels, tag_summary, tagging_graph

    graph_dir = str(graph) if graph else tagging_graph(store.read_json("stage_fingerprints.json"))
    labels = read_labels(graph_dir)
    rows = tag_summary(store.to_arrow(columns=["tag_concepts", "tag_direct"], version=version), labels, top)
    t = Table(title="top concept tags (rows whose captions name them)")
    t.add_column("concept", overflow="fold")
    t.add_column("中文", overflow="fold")
    t.add_column("id", no_wrap=True, min_width=11)
    t.add_column("named", justify="right", no_wrap=True)
    t.add_column("+inherited", justify="right", no_wrap=True)
    for r in rows:
        t.add_row(*_literal(r.en or r.id, r.zh, r.id, f"{r.direct:,}", f"{r.rows:,}"))
    console.print(t)
    console.print(
        f"labels from {escape(str(graph_dir))}" if labels else "no concept graph recorded for the labels: pass --graph", soft_wrap=True
    )


def _print_or_write(t, out: Optional[Path], max_rows: int) -> None:
    """The query's rows as a table on the terminal (the first ``max_rows``), or all of them to
    ``out`` (.parquet, .csv or .jsonl: what a spreadsheet or the next script opens). Values and
    column names are printed literally: a caption's "[/INST]" is text, not rich markup."""
    if out is not None:
        _write_rows(t, out)
        return
    rows = t.slice(0, max_rows).to_pylist()
    if len(t.column_names) * 12 > console.width:
        _print_records(rows)
    else:
        table = Table()
        for name in t.column_names:
            table.add_column(Text(name))
        for row in rows:
            table.add_row(*(_cell(v) for v in row.values()))
        console.print(table)
    if t.num_rows > max_rows:
        console.print(f"... {t.num_rows - max_rows:,} more rows (--max-rows, or --out FILE)")


def _print_records(rows: list[dict]) -> None:
    """Rows too wide to read side by side (``select *`` has some 80 columns): one block per row,
    a column name and its value per line, as psql's expanded display does."""
    for i, row in enumerate(rows, 1):
        block = Table(title=f"row {i}", show_header=False, title_justify="left")
        block.add_column(style="bold", no_wrap=True)
        block.add_column(overflow="fold")
        for name, v in row.items():
            block.add_row(Text(name), _cell(v))
        console.print(block)


_OUT_KINDS = (".parquet", ".csv", ".jsonl")


def _check_sql_out(out: Path) -> None:
    """Refuse a bad ``--out`` before the query runs: a directory, a missing folder, its kind."""
    writable_out(out)
    if out.suffix not in _OUT_KINDS:
        fail(f"--out must end in .parquet, .csv or .jsonl (got {out.name!r})")


def _write_rows(t, out: Path) -> None:
    """Write every row to ``out``; an OS error (disk full, permissions) is one line, not a bug."""
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    kinds = {".parquet": lambda: pq.write_table(t, out), ".csv": lambda: pacsv.write_csv(_csv_ready(t), out)}
    kinds[".jsonl"] = lambda: out.write_text("".join(json.dumps(r, default=str) + "\n" for r in t.to_pylist()))
    try:
        kinds[out.suffix]()
    except OSError as e:
        fail(f"could not write {out}: {e.strerror or e}")
    console.print(f"{t.num_rows:,} rows -> {escape(str(out))}", soft_wrap=True)


def _csv_ready(t):
    """``t`` with every nested column (lists, structs, maps: ``captions`` is a list of structs) as
    JSON text, one cell per row: CSV has no nested types and Arrow's writer refuses them."""
    import pyarrow as pa

    for i, field in enumerate(t.schema):
        if pa.types.is_nested(field.type):
            text = [None if v is None else json.dumps(v, default=str, ensure_ascii=False) for v in t.column(i).to_pylist()]
            t = t.set_column(i, pa.field(field.name, pa.string()), pa.array(text, pa.string()))
    return t


def _cell(v) -> Text:
    """One value as literal text (never markup), floats short and long values cut at 80 chars."""
    text = f"{v:.4g}" if isinstance(v, float) else str(v)
    return Text(text if len(text) <= 80 else text[:77] + "...")


def _literal(*cells) -> list[Text]:
    """Table cells printed as they are: names, reasons, labels and messages come from user data,
    and rich would read "[raw]" as a style (dropped) or "[/x]" as a closing tag (a crash)."""
    return [Text(str(c)) for c in cells]


def _describe_step(name: str) -> None:
    """The fields of one step's config: name, type, default, meaning (what a pipeline YAML's
    ``params`` and a ``--config`` file accept)."""
    from curation.config import describe_fields
    from curation.registry import STEPS

    if name not in STEPS:
        import difflib

        near = difflib.get_close_matches(name, list(STEPS), n=1)
        fail(f"unknown step {name!r}{f' (did you mean {near[0]!r}?)' if near else ''}; steps: {', '.join(sorted(STEPS))}")
    spec = STEPS[name]
    rows = describe_fields(spec.config_model)
    if not rows:
        console.print(Text(f"{name}: {spec.doc}\nno config fields: it takes no params"))
        return
    t = Table(title=Text(f"{name}: {spec.doc}"), title_justify="left")
    for col in ("field", "type", "default", "meaning"):
        t.add_column(col, overflow="fold")
    for row in rows:
        t.add_row(*_literal(*row))
    console.print(t)
