"""``curate review mine | add-user | serve | apply``: the Active Curation Engine and its web UI."""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape

from cli.common import AddressOpt, DatasetOpt, fail, open_store, start_ray
from cli.common import console as out_console
from cli.common import err_console as console
from curation.reviewdb import redact_url
from pipelines.review import (
    ReviewApplyConfig,
    ReviewMineConfig,
    apply_reviews,
    check_mine_request,
    dataset_graph,
    default_db_url,
    mine_queue,
    mines_locally,
    review_apply_action,
)


def register(app) -> None:

    review = typer.Typer(help="Human review: mine hard cases, serve the annotator UI, apply decisions.", no_args_is_help=True)
    app.add_typer(review, name="review")
    DbOpt = typer.Option(
        None, "--db", help="review database: SQLite path or postgresql:// URL (default: <dataset>/_curation/review/review.sqlite)"
    )
    RandomOpt = typer.Option(
        False,
        "--allow-random-weights",
        help="use embeddings/scores made by randomly initialised weights anyway (noise; the output is marked random-derived)",
    )

    @review.command("mine")
    def mine_cmd(
        dataset: str = DatasetOpt,
        db: Optional[str] = DbOpt,
        n: int = typer.Option(1000, help="items to queue"),
        double_share: float = typer.Option(0.1, help="share of items for two annotators"),
        band: float = typer.Option(0.25, help="'near a threshold' in IQR units"),
        min_hardness: float = typer.Option(0.3, help="skip rows less hard than this"),
        gold: Optional[Path] = typer.Option(None, help="CSV row_id,keep|drop of gold items"),
        include_reviewed: bool = typer.Option(False, help="also re-mine rows already reviewed"),
        allow_random_weights: bool = RandomOpt,
        address: Optional[str] = AddressOpt,
    ):
        """Choose hard cases, attach pseudo-labels and the AI verdict, queue them for review.
        The numbers of every row are read here; captions, OCR text, tags and vectors are read
        and judged fragment by fragment on Ray workers (in this process, without Ray, up to
        50,000 rows unless a cluster is named with --address or RAY_ADDRESS)."""
        from curation.config import validate

        store = open_store(dataset)
        if db and not _is_sqlite(db):
            open_db(dataset, db, create="all").close()  # an unreachable server: one line, not a traceback
        cfg = validate(
            ReviewMineConfig,
            {
                "db": db,
                "n": n,
                "double_share": double_share,
                "band": band,
                "min_hardness": min_hardness,
                "gold": str(gold) if gold else None,
                "include_reviewed": include_reviewed,
                "allow_random_weights": allow_random_weights,
            },
            where="command line",
        )
        try:
            check_mine_request(store, cfg)  # a bad rule file or random-weight inputs: refused before Ray starts
            if address or os.environ.get("RAY_ADDRESS"):
                cfg = cfg.model_copy(update={"local_rows": 0})  # a cluster named: the work goes there
            if not mines_locally(store.open(), cfg):
                start_ray(address)
            s = mine_queue(store, cfg)
        except (ValueError, FileNotFoundError) as e:
            fail(str(e))
        console.print(
            f"[bold]review mine[/]: {s['rows']:,} rows, {s['candidates']:,} hard, queued {s['queued']:,} "
            f"(added {s['added']}, updated {s['updated']}, unchanged {s['unchanged']}) in {s['seconds']} s"
        )
        for k, v in s["criteria"].items():
            console.print(f"  {escape(str(k))}: {v:,} rows")
        for k, v in s["skipped_criteria"].items():
            console.print(f"  [yellow]{escape(str(k))} off[/]: {escape(str(v))}")
        _say_random(s.get("random_derived"))
        console.print(f"database: {escape(str(s['db']))}")

    @review.command("add-user")
    def add_user_cmd(
        name: str = typer.Argument(..., help="login name"),
        dataset: str = DatasetOpt,
        db: Optional[str] = DbOpt,
        role: str = typer.Option("annotator", help="annotator or admin"),
        password_stdin: bool = typer.Option(
            False, "--password-stdin", help="read the password from the first line of stdin (scripts); else a hidden prompt"
        ),
        password_argv: Optional[str] = typer.Option(None, "--password", hidden=True),
        reset: bool = typer.Option(False, help="change the password / role of an existing user"),
        create: bool = typer.Option(
            False,
            "--create",
            help="start a new, empty review database at --db when there is none (without it a --db that names none is an error)",
        ),
    ):
        """Create an annotator or admin account (password hashed with scrypt). The password is
        asked for (hidden, twice) or read from stdin, never taken from the command line, where
        `ps` and the shell history would show it.

        Which database: without --db, the dataset's own (<dataset>/_curation/review/review.sqlite),
        made by the first add-user if no `review mine` has made it yet. A --db must name an
        existing review database (one that `review mine` or an earlier add-user made), so a
        mistyped path or URL is an error, not a new, empty database holding the account where no
        server looks; pass --create to start a new one there on purpose."""
        if password_argv is not None:
            fail("passwords are not taken from the command line (ps and shell history show them): use the prompt or --password-stdin")
        rdb = open_db(dataset, db, create="all" if create else "default")  # before the prompt: a wrong --db asks for nothing
        password = _read_password(password_stdin)
        try:
            u = rdb.add_user(name, password, role, replace=reset)
        except ValueError as e:
            fail(str(e))
        console.print(f"user [bold]{escape(u.name)}[/] ({u.role}) ready")

    user = typer.Typer(help="Accounts of the review UI: list, deactivate, activate.", no_args_is_help=True)
    review.add_typer(user, name="user")

    @user.command("list")
    def user_list_cmd(dataset: str = DatasetOpt, db: Optional[str] = DbOpt):
        """Every account: role, whether it can log in, created, decisions made."""
        import datetime as dt

        from rich.table import Table

        rows = open_db(dataset, db).user_table()
        table = Table("name", "role", "active", "created (UTC)", "decisions")
        for r in rows:
            when = dt.datetime.fromtimestamp(r["created"], dt.UTC).strftime("%Y-%m-%d %H:%M")
            table.add_row(escape(r["name"]), r["role"], "yes" if r["active"] else "[red]no[/]", when, f"{r['decisions']:,}")
        if rows:
            out_console.print(table)  # stdout: the list is the command's output
        else:
            console.print("no accounts yet: curate review add-user NAME")

    def _set_active(name: str, dataset: str, db: Optional[str], active: bool) -> None:
        rdb = open_db(dataset, db)
        try:
            r = rdb.set_active(name, active)
        except ValueError as e:
            fail(str(e))
        if active:
            console.print(f"user [bold]{escape(name)}[/] can log in again")
        else:
            console.print(
                f"user [bold]{escape(name)}[/] deactivated: {r['sessions_ended']} session(s) ended, {r['leases_released']} leased item(s) back in the queue"
            )

    @user.command("deactivate")
    def user_deactivate_cmd(name: str = typer.Argument(..., help="login name"), dataset: str = DatasetOpt, db: Optional[str] = DbOpt):
        """Stop an account from logging in: its sessions end now, its leased items go back to the queue; its decisions stay."""
        _set_active(name, dataset, db, False)

    @user.command("activate")
    def user_activate_cmd(name: str = typer.Argument(..., help="login name"), dataset: str = DatasetOpt, db: Optional[str] = DbOpt):
        """Let a deactivated account log in again (its password is unchanged)."""
        _set_active(name, dataset, db, True)

    @review.command("serve")
    def serve_cmd(
        dataset: str = DatasetOpt,
        db: Optional[str] = DbOpt,
        host: str = typer.Option("127.0.0.1", help="bind address (loopback by default; put a TLS proxy in front otherwise)"),
        port: int = typer.Option(8600, min=1, max=65535, help="TCP port (1-65535)"),
        lease_s: float = typer.Option(600, help="seconds before an idle lease returns to the queue"),
        gold_rate: float = typer.Option(0.05, help="chance that the next item is a gold item"),
        secure_cookies: bool = typer.Option(False, help="Secure cookie flag (behind HTTPS)"),
        threads: int = typer.Option(40, min=1, max=256, help="request-handler threads (database work)"),
        address: Optional[str] = AddressOpt,
        graph: Optional[str] = typer.Option(
            None, help="concept graph folder whose labels the tag field suggests (default: the one the dataset's graph_tag stage used)"
        ),
        gold_feedback: bool = typer.Option(False, help="after a decision on a gold item, show the annotator the expected answer"),
        allow_random_weights: bool = typer.Option(
            False, "--allow-random-weights", help="let the admin page's apply use random-weight embeddings/scores (marked random-derived)"
        ),
    ):
        """Run the annotator web app."""
        import uvicorn

        from annotator_ui.app import AppSettings, create_app

        store = open_store(dataset)
        url = db or default_db_url(store)
        rdb = open_db(dataset, url)  # never a new, empty database for a mistyped --db
        app_ = create_app(
            AppSettings(
                db_url=url,
                dataset=store.uri,
                lease_s=lease_s,
                gold_rate=gold_rate,
                cookie_secure=secure_cookies,
                ray_address=address,
                threads=threads,
                graph=graph or dataset_graph(store),
                gold_feedback=gold_feedback,
            ),
            rdb,
            apply=review_apply_action(url, address, allow_random_weights=allow_random_weights),
        )
        console.print(f"annotator UI on http://{host}:{port}/  (database {escape(redact_url(url))})")
        uvicorn.run(app_, host=host, port=port, log_level="warning")

    @review.command("apply")
    def apply_cmd(
        dataset: str = DatasetOpt,
        db: Optional[str] = DbOpt,
        address: Optional[str] = AddressOpt,
        prior_n: float = typer.Option(50.0, help="labels needed to move a threshold halfway"),
        allow_random_weights: bool = RandomOpt,
    ):
        """Merge decisions into a new dataset version; refit reward head, keep head and thresholds; write a report."""
        from curation.config import validate
        from engines.vector.retrieval import RandomWeightsError

        store = open_store(dataset)
        cfg = validate(
            ReviewApplyConfig, {"db": db, "prior_n": prior_n, "allow_random_weights": allow_random_weights}, where="command line"
        )
        open_db(dataset, db).close()  # a missing or unreachable database is told before Ray starts
        start_ray(address)
        try:
            rep = apply_reviews(store, cfg)
        except (FileNotFoundError, RandomWeightsError) as e:
            fail(str(e))
        if rep["stage"]["status"] == "skipped":
            console.print(
                f"[bold]review apply[/]: {rep['decisions']} decisions on {rep['rows_reviewed']} rows, all in v{rep['version_after']} "
                "already: the dataset is left as it is"
            )
        else:
            console.print(
                f"[bold]review apply[/]: v{rep['version_before']} -> v{rep['version_after']}, "
                f"{rep['decisions']} decisions on {rep['rows_reviewed']} rows"
            )
        if why := (rep.get("reward_head") or {}).get("skipped"):
            console.print(f"  reward head not trained ({escape(why)}): rev_reward stays empty")
        if px := rep.get("pairs"):
            console.print(
                f"  pairs: {px['keep']} keep, {px['drop']} drop, {px['edited']} instructions edited, in {len(px['tables'])} pair table(s)"
            )
        for t in rep.get("thresholds", []):
            console.print(f"  {escape(str(t['column']))} {t['op']} {t['old']:.4g} -> {t['new']:.4g}  {escape(str(t.get('note', '')))}")
        if out := rep.get("tags_not_in_graph"):
            some = ", ".join(repr(t) for t in list(out["tags"])[:5])
            console.print(
                f"  [yellow]{out['rows']} reviewed row(s) have tags that are no concept of the graph[/] "
                f"{escape(out['graph'])} (kept as given): {escape(some)}"
            )
        pa_ = rep["pseudo_label_agreement"]
        if pa_["accuracy"] is not None:
            console.print(f"  pseudo-labels agreed with humans on {pa_['accuracy']:.1%} of {pa_['n']} rows")
        if "path" in rep.get("keep_head", {}):
            console.print(f"  keep-probability head (0..1, not an aesthetics score): {escape(str(rep['keep_head']['path']))}")
        _say_random(rep.get("random_derived"))
        console.print(f"report: {escape(str(rep['report_html']))}")


def open_db(dataset: str, db: str | None, *, create: str = "none"):
    """The review database named by ``--db`` (default: the dataset's), opened for a command.

    Why ``create`` is a choice: a mistyped ``--db`` must never become a new, empty database that
    accounts and annotators then use. ``"none"`` (serve, apply, the user commands): a database
    that does not exist is an error. ``"default"`` (add-user): accounts may be set up before the
    first mine, so the dataset's *default* database is made when missing; a ``--db`` elsewhere
    that names none is an error that points at ``--create``. ``"all"`` (mine, add-user
    ``--create``): made wherever it is named. A new file is announced. Any failure is one line
    (exit 2), password hidden."""
    from curation.reviewdb import ReviewDB

    default = default_db_url(open_store(dataset))
    url = db or default
    make = create == "all" or (create == "default" and (db is None or _same_file(db, default)))
    new = _is_sqlite(url) and make and not Path(_path_of(url)).exists()
    hint = ", or pass --create to start a new review database there" if create == "default" else ""
    with _db_errors(url, missing_hint=hint):
        rdb = ReviewDB(url, create=make)
    if new:
        console.print(f"[yellow]new review database[/] at {escape(str(_path_of(url)))} (no items queued yet: run `curate review mine`)")
    return rdb


def _same_file(db: str, default: str) -> bool:
    """Whether ``--db`` names the dataset's default SQLite file (written out in full)."""
    if not _is_sqlite(db):
        return False
    return Path(_path_of(db)).expanduser().resolve() == Path(_path_of(default)).expanduser().resolve()


def _is_sqlite(url: str) -> bool:
    return not str(url).startswith(("postgresql://", "postgres://"))


def _path_of(url: str) -> str:
    return str(url).removeprefix("sqlite:///").removeprefix("sqlite://")


@contextmanager
def _db_errors(url: str, missing_hint: str = ""):
    """A database that is missing, of another schema, not a database, or unreachable (a
    PostgreSQL server down, a bad URL): one error line naming it, password hidden, exit 2; not
    the catch-all "this is a bug" of ``cli.main``."""
    import sqlite3

    from curation.reviewdb import BadInput

    errors: tuple[type[BaseException], ...] = (sqlite3.DatabaseError,)
    if not _is_sqlite(url):
        try:
            import psycopg
        except ImportError:
            fail("a postgresql:// review database needs `pip install psycopg[binary]` (in the `ui` extra)")
        errors = (psycopg.Error,)
    try:
        yield
    except FileNotFoundError as e:
        fail(f"{e}{missing_hint}")
    except BadInput as e:
        fail(str(e))
    except errors as e:
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0].replace(str(url), redact_url(url))
        verb = "open" if _is_sqlite(url) else "connect to"
        fail(f"cannot {verb} the review database {redact_url(url)}: {reason.split(' failed: ')[-1]}")


def _say_random(marks: dict | None) -> None:
    """One warning line per random-derived input a command used because it was told to."""
    for col, why in (marks or {}).items():
        console.print(f"  [bold yellow]RANDOM-DERIVED[/] {escape(f'{col} ({why})')}: results that use it are noise")


def _read_password(from_stdin: bool) -> str:
    """A hidden prompt (typed twice) on a terminal; the first line of stdin with --password-stdin
    or when stdin is not a terminal (scripts, CI)."""
    import sys

    if from_stdin or not sys.stdin.isatty():
        line = sys.stdin.readline()
        if not line:
            fail("no password on stdin (pass it as the first line, or run in a terminal to be asked)")
        return line.rstrip("\r\n")
    return typer.prompt("Password", hide_input=True, confirmation_prompt=True)
