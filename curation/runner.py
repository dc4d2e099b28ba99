"""The stage runner: a stage over every Lance fragment on Ray, one atomic commit, resumable.

How it works, and why:

- The unit of work is a Lance fragment. A pool of Ray actors (``execute_units``) hands each one to
  a worker actor, which calls ``stage.setup()`` once (models load once per worker) and then
  ``fragment.merge_columns(stage.run_batch)``: the new columns are written as new data files next
  to the old ones, never rewriting image bytes.
- The driver receives each fragment's metadata as it finishes and writes it to a checkpoint file
  (atomic rename). When all fragments are done it commits one ``Merge`` operation: the dataset
  moves to a new version with all new columns at once, or not at all.
- Incremental by default: when the dataset already has the stage's columns, only the fragments
  that lack them (rows appended after the stage ran) or whose input files were rewritten are
  computed and merged in one commit (``curation.incremental``); the others are left as they are.
  ``overwrite`` (or a changed config) recomputes every fragment, also in one commit. Each commit
  names the stage, the mode and the rows it computed (``commit_properties``, ``curate info``).
- A killed job, re-run, finds the checkpoints of the same stage, config and dataset version and
  only computes the missing fragments; the commit is then identical to an uninterrupted run.
- If another job committed in between (a concurrent stage adding other columns), Lance reports a
  retryable conflict and the runner recomputes against the new version instead of losing either.
- The same stage started twice on one dataset joins: the second waits on the stage's lock (see
  ``Store.lock``; a dead holder's lock is free again) and then finds the columns committed
  (skipped), or with ``wait_if_running=False`` refuses with ``StageRunningError``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from curation.errors import UserError
from curation.stage import Stage, Stats
from curation.store import DatasetBusyError, Store

__all__ = ["StageResult", "StageRunningError", "Checkpoints", "run_stage", "execute_units", "print_summary"]

console = Console(stderr=True)


@dataclass
class StageResult:
    """What a job did; also written as ``stats/<stage>-v<version>.json`` next to the dataset."""

    stage: str
    status: str  # "committed", "skipped", "empty"
    version: int
    read_version: int
    fragments: int = 0
    fragments_resumed: int = 0
    stats: Stats = field(default_factory=Stats)
    seconds: float = 0.0
    stats_path: str | None = None
    mode: str = ""  # "full" (every row) or "incremental" (only rows that lacked the columns)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        rows = self.stats.rows
        return {
            "stage": self.stage,
            "status": self.status,
            "version": self.version,
            "read_version": self.read_version,
            "fragments": self.fragments,
            "fragments_resumed": self.fragments_resumed,
            **({"mode": self.mode} if self.mode else {}),
            "seconds": round(self.seconds, 3),
            "rows_per_second": round(rows / self.seconds, 1) if self.seconds > 0 else None,
            **self.stats.to_dict(),
            **self.extra,
        }


class Checkpoints:
    """Per-unit results of one job, one JSON file per unit, written by atomic rename.

    The driver saves each unit's result as it arrives; a killed job re-run with the same
    fingerprint (folder) loads them and only computes the rest. Cleared after the commit."""

    def __init__(self, folder, key: str):
        self.folder, self.key = folder, key
        self.folder.mkdir(parents=True, exist_ok=True)

    def load(self) -> dict[int, dict[str, Any]]:
        return {rec[self.key]: rec for rec in (json.loads(p.read_text()) for p in self.folder.glob("unit-*.json"))}

    def save(self, rec: dict[str, Any]) -> None:
        final = self.folder / f"unit-{rec[self.key]}.json"
        # made again: a job of the same fingerprint (two ingests of one source) may have cleared it
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = final.with_suffix(f".json.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(rec))
        tmp.replace(final)  # a killed driver never leaves half a checkpoint

    def clear(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


class _RateColumn(ProgressColumn):
    """``1,234 rows/s`` (or units/s): the rate a user compares between runs and machines.

    The average since the task started, over the work done in this run (not what a
    resumed run found done: ``resumed``). Why not rich's own speed: it is measured over the last few
    updates, so units that finish together read as a burst (211.6 units/s for 2 units in 6 s)."""

    def __init__(self, unit: str):
        super().__init__()
        self.unit = unit

    def render(self, task) -> Text:
        done = task.completed - task.fields.get("resumed", 0)
        speed = done / task.elapsed if task.elapsed and done > 0 else None
        return Text(f"{speed:,.1f} {self.unit}/s" if speed else f"- {self.unit}/s", style="progress.data.speed")


def _progress(disable: bool, unit: str = "units") -> Progress:
    """Rows or units done, rate, elapsed and ETA. Into a log (not a terminal) rich prints the last
    state once, at 80 columns: without the bar, so the figures are not cut ("0:0…")."""
    bar = [BarColumn()] if console.is_terminal else []
    return Progress(
        TextColumn("[bold]{task.description}"),
        *bar,
        MofNCompleteColumn(),
        TextColumn(unit),
        _RateColumn(unit),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
        disable=disable,
        transient=False,
    )


class RowProgress:
    """Rows done, counted by the workers as they go (a Ray actor they tell after each batch) and
    read by a driver thread twice a second: a stage over two big fragments would otherwise show a
    2-step bar that stands still for minutes. ``start``: rows done by an earlier, resumed run."""

    def __init__(self, total: int, start: int = 0):
        import ray

        self.total, self.start = total, start
        self.counter = ray.remote(num_cpus=0)(_RowCounter).remote()

    def follow(self, progress: Progress, task, stop) -> None:
        import ray

        while not stop.wait(0.5):
            try:
                done = ray.get(self.counter.value.remote(), timeout=5)
            except Exception:  # the counter is gone (shutdown): the bar just stops moving
                return
            progress.update(task, completed=min(self.start + done, self.total))


class _RowCounter:
    def __init__(self):
        self.n = 0

    def add(self, n: int) -> None:
        self.n += n

    def value(self) -> int:
        return self.n


def _cluster_slots(opts: dict[str, Any]) -> int:
    import ray

    res = ray.cluster_resources()
    if opts.get("num_gpus"):
        slots = max(1, int(res.get("GPU", 0) // opts["num_gpus"]))
    else:
        slots = max(1, int(res.get("CPU", 1) // max(opts.get("num_cpus", 1), 1e-3)))
    if opts.get("memory"):  # a memory reservation caps the pool too: more actors would wait forever
        slots = min(slots, max(1, int(res.get("memory", 0) // max(opts["memory"], 1))))
    # a custom resource (e.g. only some nodes have it) caps the pool: more actors would never start
    for name, need in (opts.get("resources") or {}).items():
        slots = min(slots, max(1, int(res.get(name, 0) // max(need, 1e-3))))
    return slots


def execute_units(
    units: list[dict[str, Any]],
    worker_cls: type,
    ctor_kwargs: dict[str, Any],
    *,
    ray_options: dict[str, Any],
    on_result: Callable[[dict[str, Any]], None],
    description: str,
    concurrency: int | None = None,
    show_progress: bool = True,
    rows: RowProgress | None = None,
) -> None:
    """Run ``worker_cls(**ctor_kwargs)(unit)`` for every unit on Ray, streaming results.

    A unit is a Ray task on one of Ray's warm worker processes, which builds the phase's worker
    once (models load once per process and phase, ``_ProcessWorker``); the next unit is handed
    out as one finishes, so finished units reach ``on_result`` (on the driver) while the rest still
    run: the driver checkpoints as it goes and memory stays bounded by the in-flight units. A unit
    whose process dies is retried (three times). Tasks, not a pool of actors a phase: a fresh
    actor waits about a second for its process, which every phase of every job paid (a 48-row
    dedup, five phases: 12 s -> 3 s). GPU phases still run on actors (``_on_actors``), stopped
    after the phase, so no idle process keeps a model in GPU memory.
    ``rows``: progress in rows as the workers report them (their ``progress`` counter), else in units.
    """
    if not units:
        return
    n = min(len(units), concurrency or _cluster_slots(ray_options))
    on = _on_actors if ray_options.get("num_gpus") else _on_tasks
    results = on(units, worker_cls, ctor_kwargs, ray_options, n)
    try:
        with _progress(not show_progress, "rows" if rows else "units") as progress:
            start = rows.start if rows else 0
            task = progress.add_task(description, total=rows.total if rows else len(units), completed=start, resumed=start)
            halt = _follow(rows, progress, task) if rows and show_progress else None
            try:
                for row in results:
                    on_result(row)
                    if rows is None:
                        progress.advance(task)
            finally:
                if halt is not None:
                    halt()
            if halt is not None:
                progress.update(task, completed=rows.total)
    finally:
        results.close()  # an error (a unit's, or ``on_result``'s): the actors are killed now


class _UnitActor:
    """An actor of :func:`execute_units`: one unit worker, built once, given one unit a call as a
    one-row Arrow table (what the workers read); its output comes back as rows."""

    def __init__(self, worker_cls: type, ctor_kwargs: dict[str, Any]):
        self.worker = worker_cls(**ctor_kwargs)

    def run(self, unit: dict[str, Any]) -> list[dict[str, Any]]:
        return _unit_rows(self.worker, unit)


def _unit_rows(worker, unit: dict[str, Any]) -> list[dict[str, Any]]:
    """A worker's output for one unit (given as a one-row Arrow table, what workers read), as rows."""
    out = worker(pa.Table.from_pylist([unit]))
    return (out if isinstance(out, pa.Table) else pa.table(out)).to_pylist()


def _stream(units: list[dict[str, Any]], slots: list, submit: Callable[[Any, dict[str, Any]], Any], stop: Callable[[list], None]):
    """Rows of every unit's output as units finish, one unit in flight per slot (``submit(slot,
    unit)`` returns its ref); the next unit goes to the slot that finished. On close (the end, an
    error, Ctrl-C), ``stop(refs of the units still running)``, then a wait for those units to end
    (a second or so), so no unit writes anything after the generator returns."""
    import ray

    todo = iter(units)
    running = {submit(slot, u): slot for slot, u in zip(slots, todo)}
    try:
        while running:
            (ref,), _ = ray.wait(list(running), num_returns=1)
            slot = running.pop(ref)
            out = ray.get(ref)  # a unit's error (a RayTaskError that is also the worker's exception)
            nxt = next(todo, None)
            if nxt is not None:
                running[submit(slot, nxt)] = slot
            yield from out
    finally:
        # Only the units still running: cancelling one that has just finished (a Ctrl-C while
        # ray.wait returns) failed a check in Ray's core worker, which ended the command with
        # exit 1 and no message (tests/curation/test_runner_interrupt.py).
        busy = ray.wait(list(running), num_returns=len(running), timeout=0)[1] if running else []
        stop(busy)
        if busy:
            ray.wait(busy, num_returns=len(busy), timeout=30)


def _on_actors(units: list[dict[str, Any]], worker_cls: type, ctor_kwargs: dict[str, Any], ray_options: dict[str, Any], n: int):
    """Rows of every unit's output, as units finish, from ``n`` actors spread over the nodes.
    The actor class takes the worker's name, so the dashboard (and ``ray list actors``) says
    which worker runs where. Closing the generator kills the actors (``_stream``)."""
    import ray

    named = type(worker_cls.__name__, (_UnitActor,), {"__qualname__": worker_cls.__qualname__})
    opts = {"max_restarts": 3, "max_task_retries": 3, "scheduling_strategy": "SPREAD", **ray_options}
    actors = [ray.remote(named).options(**opts).remote(worker_cls, ctor_kwargs) for _ in range(n)]
    yield from _stream(units, actors, lambda actor, u: actor.run.remote(u), lambda running: [ray.kill(a) for a in actors])


class _ProcessWorker:
    """The worker of :func:`_run_unit` in this (Ray worker) process: built for a phase on the
    process's first unit of it, kept for its next ones; the previous phase's is dropped first, and
    an idle one after ``IDLE_S`` (its models do not outlive the phase by long)."""

    IDLE_S = 20.0
    lock = threading.Lock()
    phase: str | None = None
    worker: Any = None
    used = 0.0
    reaper = None
    in_unit = False
    shared: dict[str, Any] = {}  # ``process_cached``'s value (one key at a time)

    @classmethod
    def get(cls, phase: str, spec_box: list):
        if cls.phase != phase:
            import ray

            cls.phase, cls.worker = None, None
            worker_cls, ctor_kwargs = ray.get(spec_box[0])
            cls.worker = worker_cls(**ctor_kwargs)  # a constructor error: raised for this unit (the phase stops)
            cls.phase = phase
        if cls.reaper is None:
            cls.reaper = threading.Thread(target=cls._reap, daemon=True, name="unit-worker-reaper")
            cls.reaper.start()
        return cls.worker

    @classmethod
    def _reap(cls) -> None:
        import gc

        while True:
            time.sleep(cls.IDLE_S / 4)
            with cls.lock:
                if (cls.worker is not None or cls.shared) and time.monotonic() - cls.used > cls.IDLE_S:
                    cls.phase, cls.worker = None, None
                    cls.shared.clear()
                    gc.collect()


def process_cached(key: str, build: Callable[[], Any]) -> Any:
    """A value a worker process keeps for the next phases of a job: graph_tag's count phase and tag
    phase build one tagger per process, not two. One key at a time (another key replaces it), and
    dropped, like the phase's worker, once the process has been idle ``_ProcessWorker.IDLE_S``.
    Outside a unit task (the driver, a GPU phase's actor) it is built and not kept."""
    if not _ProcessWorker.in_unit:
        return build()
    shared = _ProcessWorker.shared
    if key not in shared:
        shared.clear()
        shared[key] = build()
    return shared[key]


def _run_unit(phase: str, spec_box: list, unit: dict[str, Any]) -> list[dict[str, Any]]:
    """One unit of :func:`execute_units` as a Ray task, on a worker process Ray keeps warm."""
    with _ProcessWorker.lock:
        _ProcessWorker.in_unit = True
        try:
            return _unit_rows(_ProcessWorker.get(phase, spec_box), unit)
        finally:
            _ProcessWorker.in_unit = False
            _ProcessWorker.used = time.monotonic()


def _on_tasks(units: list[dict[str, Any]], worker_cls: type, ctor_kwargs: dict[str, Any], ray_options: dict[str, Any], n: int):
    """Rows of every unit's output, as units finish, from ``n`` Ray tasks in flight spread over
    the nodes. Tasks, not actors: Ray keeps its worker processes warm between phases (a phase of
    fresh actors waits about a second for their processes to start; measured in bench/unit_pool.py),
    and each process builds the phase's worker once (``_ProcessWorker``). A task is named after the
    worker (``_FragmentWorker.run``: the dashboard says which worker runs where); one whose process
    dies is retried (three times). Closing the generator cancels the running units (``_stream``)."""
    import uuid

    import ray

    phase = uuid.uuid4().hex
    spec_box = [ray.put((worker_cls, ctor_kwargs))]  # in a list: fetched by a process once, not a call
    task = ray.remote(_run_unit).options(name=f"{worker_cls.__name__}.run", scheduling_strategy="SPREAD", max_retries=3, **ray_options)
    yield from _stream(
        units, list(range(n)), lambda _, u: task.remote(phase, spec_box, u), lambda running: [ray.cancel(r, force=True) for r in running]
    )


def execute_resumable(
    units: list[dict[str, Any]],
    ckpt: Checkpoints,
    worker_cls: type,
    ctor_kwargs: dict[str, Any],
    *,
    record: Callable[[dict[str, Any]], dict[str, Any]],
    job: str,
    ray_options: dict[str, Any],
    description: str | None = None,
    concurrency: int | None = None,
    show_progress: bool = True,
    count_rows: Callable[[dict[str, Any]], int] | None = None,
    on_record: Callable[[dict[str, Any]], None] | None = None,
    noun: str = "units",
    already: str = "done",
) -> tuple[dict[Any, dict[str, Any]], int]:
    """``execute_units`` for a job that resumes: the units whose record an interrupted run left in
    ``ckpt`` are not run again, every other unit's result becomes its record (``record(row)``,
    keyed by ``ckpt.key``), checkpointed as it arrives. ``on_record(rec)`` sees every unit's
    record: the resumed ones first, before anything runs, then each new one as it arrives.
    ``count_rows(unit)``: progress in rows, the resumed units' rows counted as done; the workers
    get the counter they advance as ``progress`` (``ctor_kwargs["progress"]``). ``description``:
    the progress bar's, by default "<job> (<noun>)".

    Returns every unit's record by key and how many came from an earlier run; raises when a unit
    produced none, so that no job commits with a unit's rows silently missing."""
    key = ckpt.key
    wanted = {u[key] for u in units}
    done = {k: v for k, v in ckpt.load().items() if k in wanted}
    resumed = len(done)
    if resumed:
        console.print(f"{job}: resuming, {resumed} of {len(units)} {noun} already {already}", markup=False)
    for rec in done.values() if on_record is not None else ():
        on_record(rec)

    def on_result(row: dict[str, Any]) -> None:
        rec = record(row)
        ckpt.save(rec)
        done[rec[key]] = rec
        if on_record is not None:
            on_record(rec)

    todo = [u for u in units if u[key] not in done]
    rows = None
    if count_rows is not None and show_progress and todo:
        n_rows = {u[key]: count_rows(u) for u in units}
        total = sum(n_rows.values())
        rows = RowProgress(total, start=total - sum(n_rows[u[key]] for u in todo))
        ctor_kwargs = {**ctor_kwargs, "progress": rows.counter}
    execute_units(
        todo, worker_cls, ctor_kwargs, ray_options=ray_options, on_result=on_result,
        description=description or f"{job} ({noun})", concurrency=concurrency, show_progress=show_progress, rows=rows,
    )  # fmt: skip
    missing = sorted(wanted - set(done))
    if missing:
        raise RuntimeError(f"{job}: {noun} {missing} produced no result")
    return done, resumed


def json_record(key: str, *fields: str) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """The ``record`` of ``execute_resumable`` for a worker that returns its unit's ``key`` and
    ``fields`` as JSON strings: the record holds them decoded."""
    return lambda row: {key: row[key], **{f: json.loads(row[f]) for f in fields}}


def _follow(rows: RowProgress, progress: Progress, task) -> Callable[[], None]:
    """Start the driver thread that moves the bar from the workers' row counter; returns what
    stops it: its event set, then the thread waited for, so none of its Ray calls is in flight
    once the phase is over. One left in flight when a command's last phase ended and the
    command shut Ray down made Ray's core worker end the process ("The core worker has already
    been shutdown ... The process will exit"): `curate dedup` exited -11 after its last line,
    about one run in ten on a loaded machine."""
    import threading

    stop = threading.Event()
    thread = threading.Thread(target=rows.follow, args=(progress, task, stop), daemon=True, name="row-progress")
    thread.start()

    def halt() -> None:
        stop.set()
        thread.join(timeout=30)  # its Ray call times out after 5 s

    return halt


class _FragmentWorker:
    """A Ray actor: loads the stage once, then computes the stage's columns for whole fragments."""

    def __init__(self, store: Store, stage: Stage, read_version: int, progress=None):
        self.stage = stage
        self.stage.setup()
        self.dataset = store.open(read_version)
        self.progress = progress  # RowProgress's counter: told the rows of each batch done

    def _udf(self) -> Callable[[pa.RecordBatch], pa.RecordBatch]:
        """Lance calls the UDF once on a 1-row sample to learn the output schema and discards
        the result; answer that probe with nulls so models and counters see each row once."""
        state = {"probed": False}

        def udf(batch: pa.RecordBatch) -> pa.RecordBatch:
            if not state["probed"]:
                state["probed"] = True
                return pa.RecordBatch.from_pylist([{}] * batch.num_rows, schema=self.stage.output_schema)
            out = self.stage.run_batch(batch)
            if self.progress is not None:
                self.progress.add.remote(batch.num_rows)  # fire and forget: never waits on the driver
            return out

        return udf

    def __call__(self, batch: pa.Table) -> pa.Table:
        out: dict[str, list] = {"fragment_id": [], "fragment": [], "schema": [], "stats": []}
        for fid in batch.column("fragment_id").to_pylist():
            self.stage.stats = Stats()
            t0 = time.perf_counter()
            frag = self.dataset.get_fragment(int(fid))
            self.stage.begin_fragment(int(fid))
            meta, schema = frag.merge_columns(
                self._udf(),
                columns=self.stage.input_columns or ["id"],
                batch_size=self.stage.batch_size,
            )
            self.stage.stats.seconds = time.perf_counter() - t0
            import pickle

            out["fragment_id"].append(int(fid))
            out["fragment"].append(json.dumps(meta.to_json()))
            out["schema"].append(pickle.dumps(schema))
            out["stats"].append(json.dumps(self.stage.stats.to_dict()))
        return pa.table(out)


_FINGERPRINTS = "stage_fingerprints.json"


def _committed_fingerprints(store: Store) -> dict[str, str]:
    """Which config computed each stage's committed columns (absent: unknown, e.g. an older run)."""
    p = store.state_dir / _FINGERPRINTS
    try:
        return {k: v["fingerprint"] for k, v in json.loads(p.read_text()).items()}
    except (FileNotFoundError, ValueError, KeyError, TypeError):
        return {}


def _recorded_inputs(store: Store, stage: Stage) -> dict[str, str] | None:
    """Per fragment, which input files the committed columns were computed from (None: unknown)."""
    p = store.state_dir / _FINGERPRINTS
    try:
        return json.loads(p.read_text())[stage.record_key].get("inputs")
    except (FileNotFoundError, ValueError, KeyError, TypeError, AttributeError):
        return None


def _record_fingerprint(store: Store, stage: Stage, version: int, inputs: dict[str, str] | None = None) -> None:
    """Remember the config behind the committed columns, so a re-run with a changed config
    recomputes instead of silently keeping stale values (and an unchanged one still skips), and
    each fragment's input files (``inputs``), so one whose inputs were rewritten is recomputed.
    Locked: two stages finishing at once would otherwise each drop the other's entry."""
    p = store.state_dir / _FINGERPRINTS
    with store.lock("fingerprints"):
        try:
            known = json.loads(p.read_text())
        except (FileNotFoundError, ValueError):
            known = {}
        cfg = stage.config.model_dump(mode="json")
        known[stage.record_key] = {"fingerprint": stage.config_fingerprint(), "version": version, "config": cfg, "inputs": inputs}
        store.write_json(_FINGERPRINTS, known)


def _checkpoint_dir(store: Store, stage: Stage, read_version: int, mode: str):
    return store.state_dir / "checkpoints" / f"{stage.name}-{stage.fingerprint()}-v{read_version}-{mode}"


class StageRunningError(UserError, RuntimeError):
    """The same stage is already running on this dataset (``run_stage(wait_if_running=False)``)."""


def _stage_lock_name(stage: Stage) -> str:
    """One lock per stage name and output columns: what two runs would fight over (the same
    checkpoints and columns); a stage instance writing other columns (a per-run schema) may run."""
    cols = ",".join(stage.output_schema.names)
    return f"stage-{stage.name}-{hashlib.sha1(cols.encode()).hexdigest()[:8]}"


def run_stage(
    store: Store,
    stage: Stage,
    *,
    overwrite: bool = False,
    concurrency: int | None = None,
    show_progress: bool = True,
    max_conflict_retries: int = 3,
    wait_if_running: bool = True,
) -> StageResult:
    """Compute ``stage``'s columns for every row that lacks them and commit them as one new version.

    Rows that already have the columns keep them (nothing to compute: status "skipped", no new
    version), unless their input columns were rewritten since, ``overwrite``, or the stage's config
    changed since they were computed (its fingerprint is recorded at commit). Every fragment's
    result is checkpointed, so a killed run, re-run with the same stage config, resumes.
    The same stage already running on the dataset: wait for it, then go on (normally "skipped"),
    or with ``wait_if_running=False`` raise ``StageRunningError``.
    """
    lock = _stage_lock_name(stage)

    def waiting(holder: str) -> None:
        console.print(f"[yellow]{stage.name}[/]: stage {stage.name} is already running on this dataset ({escape(holder)}); waiting for it")

    try:
        with store.lock(lock, wait=wait_if_running, on_wait=waiting):
            return _run_stage_locked(store, stage, overwrite, concurrency, show_progress, max_conflict_retries)
    except DatasetBusyError as e:
        if e.name != lock:
            raise
        raise StageRunningError(
            f"stage {stage.name} is already running on this dataset ({e.holder}); wait for it to finish or stop that job"
        ) from None


def _run_stage_locked(
    store: Store, stage: Stage, overwrite: bool, concurrency: int | None, show_progress: bool, max_conflict_retries: int
) -> StageResult:
    """``run_stage`` once it holds the stage's lock: fill the stage's columns where they are
    missing (``curation.incremental``), or add them when the dataset has none of them yet."""
    from lance.commit import CommitConflictError

    from curation.incremental import types_match

    t_start = time.perf_counter()
    cols = stage.output_schema.names
    run = _Run(store, stage, concurrency, show_progress, t_start)
    for _attempt in range(max_conflict_retries + 1):
        ds = store.open()
        present = [c for c in cols if c in ds.schema.names]
        try:
            if len(present) == len(cols) and types_match(ds, stage):
                return run.fill(ds, full=overwrite or _config_changed(store, stage))
            if present:  # some columns only, or of another type (an older stage): drop, add anew
                console.print(
                    f"[yellow]{stage.name}[/]: dropping {escape(str(present))} (incomplete or of another type) to compute them anew"
                )
                ds.drop_columns(present)
                ds = store.open()
            return run.add(ds)
        except CommitConflictError:
            console.print(f"[yellow]{stage.name}[/]: another job committed first; recomputing on the new version")
            continue
    raise RuntimeError(f"{stage.name}: gave up after {max_conflict_retries} commit conflicts")


def _config_changed(store: Store, stage: Stage) -> bool:
    """The stage's columns were made by another config (unknown, e.g. an older run: trusted)."""
    made_by = _committed_fingerprints(store).get(stage.record_key)
    if made_by is None or made_by == stage.config_fingerprint():
        return False
    console.print(
        f"[yellow]{stage.name}[/]: config changed since its columns were computed "
        f"(fingerprint {made_by} -> {stage.config_fingerprint()}); recomputing"
    )
    return True


@dataclass
class _Run:
    """One stage run's two ways to commit: ``add`` the columns to every fragment (the dataset has
    none of them) or ``fill`` them on the fragments that lack them (or all, ``full``)."""

    store: Store
    stage: Stage
    concurrency: int | None
    show_progress: bool
    t_start: float

    def _prepare(self, ds) -> None:
        stage = self.stage
        stage.store, stage.show_progress, stage.concurrency = self.store, self.show_progress, self.concurrency
        stage.prepare(ds)

    def add(self, ds) -> StageResult:
        stage, store = self.stage, self.store
        self._prepare(ds)
        fragments = ds.get_fragments()
        if not fragments or ds.count_rows() == 0:
            ds.add_columns(stage.output_schema)
            return StageResult(stage.name, "empty", store.open().version, ds.version, seconds=time.perf_counter() - self.t_start)
        units = [{"fragment_id": f.fragment_id} for f in fragments]
        done, resumed, ckpt = self._compute(ds, units, "add", _FragmentWorker)
        stats = _sum_stats(done)
        props = commit_properties(stage, "full", len(units), stats.rows)
        new = _committed(ckpt, lambda: _commit_merge(store, ds.version, fragments, done, props))
        return self._finish(ds, new, ckpt, len(units), resumed, stats, "full")

    def fill(self, ds, *, full: bool) -> StageResult:
        from curation.incremental import FillWorker, commit_fill, plan_fill

        stage = self.stage
        self._prepare(ds)  # before planning: a stage may choose its input columns from the schema there (prof_caption)
        plan = plan_fill(ds, stage, None if full else _recorded_inputs(self.store, stage), full=full)
        if not plan.todo:
            console.print(
                f"[yellow]{stage.name}[/]: columns {escape(', '.join(stage.output_schema.names))} already present on every row at "
                f"v{ds.version}, nothing new to compute; pass --overwrite to recompute all"
            )
            return StageResult(stage.name, "skipped", ds.version, ds.version, seconds=time.perf_counter() - self.t_start)
        why = ", ".join(f"{k}={v}" for k, v in sorted(plan.reasons.items()))
        console.print(f"{stage.name}: {plan.mode}, computing {len(plan.todo)} of {len(ds.get_fragments())} fragments ({why})")
        units = [{"fragment_id": fid, "columns": cols} for fid, cols in sorted(plan.todo.items())]
        done, resumed, ckpt = self._compute(ds, units, plan.mode, FillWorker)
        stats = _sum_stats(done)
        props = commit_properties(stage, plan.mode, len(units), stats.rows)
        new = _committed(ckpt, lambda: commit_fill(self.store, ds.version, done, props))
        return self._finish(ds, new, ckpt, len(units), resumed, stats, plan.mode)

    def _compute(self, ds, units: list[dict[str, Any]], mode: str, worker: type):
        ckpt = Checkpoints(_checkpoint_dir(self.store, self.stage, ds.version, mode), "fragment_id")
        done, resumed = _compute_fragments(
            self.store, self.stage, ds, units, ckpt, worker, concurrency=self.concurrency, show_progress=self.show_progress
        )
        return done, resumed, ckpt

    def _finish(self, ds, new, ckpt: Checkpoints, n: int, resumed: int, stats: Stats, mode: str) -> StageResult:
        from curation.incremental import input_sigs

        ckpt.clear()
        _record_fingerprint(self.store, self.stage, new.version, input_sigs(new, self.stage))
        seconds = time.perf_counter() - self.t_start
        result = StageResult(self.stage.name, "committed", new.version, ds.version, n, resumed, stats, seconds, mode=mode)
        result.stats_path = str(self.store.write_json(f"stats/{self.stage.name}-v{new.version}.json", result.to_dict()))
        return result


def _committed(ckpt: Checkpoints, commit: Callable[[], Any]):
    """``commit()``; on a conflict the checkpoints (computed on a version that is no longer the
    latest) are cleared before the caller plans again on the new one."""
    from lance.commit import CommitConflictError

    try:
        return commit()
    except CommitConflictError:
        ckpt.clear()
        raise


def _sum_stats(done: dict[int, dict[str, Any]]) -> Stats:
    stats = Stats()
    for rec in done.values():
        stats = stats + Stats.from_dict(rec["stats"])
    return stats


def commit_properties(stage: Stage, mode: str, fragments: int, rows: int) -> dict[str, str]:
    """What a stage's commit says about itself (``Store.versions``, ``curate info``): the stage,
    full or incremental, how many fragments and rows it computed, the config that made them."""
    from lance.dataset import LANCE_COMMIT_MESSAGE_KEY

    return {
        LANCE_COMMIT_MESSAGE_KEY: f"stage {stage.name} ({mode}: {rows} rows in {fragments} fragments)",
        "curate.job": "stage",
        "curate.stage": stage.name,
        "curate.mode": mode,
        "curate.fragments": str(fragments),
        "curate.rows": str(rows),
        "curate.config": stage.config_fingerprint(),
    }


def _compute_fragments(
    store: Store,
    stage: Stage,
    ds,
    units: list[dict[str, Any]],
    ckpt: Checkpoints,
    worker: type,
    *,
    concurrency: int | None,
    show_progress: bool,
) -> tuple[dict[int, dict[str, Any]], int]:
    """Run ``worker`` over every unit (one fragment each) not yet in ``ckpt`` (each result
    checkpointed as it arrives). Returns every unit's record by fragment id and how many came
    from an earlier run."""

    def record(row: dict[str, Any]) -> dict[str, Any]:
        rec = {"fragment_id": row["fragment_id"], "stats": json.loads(row["stats"])}
        if "file" in row:
            rec["file"] = json.loads(row["file"])
        else:
            rec.update(fragment=row["fragment"], schema=row["schema"].hex())
        return rec

    return execute_resumable(
        units,
        ckpt,
        worker,
        {"store": store, "stage": stage, "read_version": ds.version, "progress": None},
        record=record,
        job=stage.name,
        ray_options=stage.resources.ray_options(),
        description=stage.name,
        concurrency=concurrency,
        show_progress=show_progress,
        count_rows=lambda u: ds.get_fragment(u["fragment_id"]).count_rows(),
        noun="fragments",
        already="computed",
    )


def _commit_merge(store: Store, read_version: int, fragments: list, done: dict[int, dict[str, Any]], properties: dict[str, str]):
    """One ``Merge`` commit of every fragment's new columns on top of ``read_version``; raises
    lance's ``CommitConflictError`` when another job committed in between."""
    import pickle

    from lance import LanceDataset, LanceOperation, Transaction
    from lance.fragment import FragmentMetadata

    metas = [FragmentMetadata.from_json(done[f.fragment_id]["fragment"]) for f in fragments]
    schema = pickle.loads(bytes.fromhex(done[fragments[0].fragment_id]["schema"]))
    tx = Transaction(read_version, LanceOperation.Merge(metas, schema), transaction_properties=properties)
    return LanceDataset.commit(store.uri, tx, storage_options=store.storage_options or None)


def print_summary(results: Iterable[StageResult], title: str = "summary") -> None:
    """One screen: per stage, status, rows and speed; below it every counter with its reason."""
    results = list(results)
    table = Table(title=title, show_lines=False)
    for col in ("stage", "status", "version", "rows", "rows/s", "seconds", "fragments"):
        table.add_column(col, no_wrap=True)
    for r in results:
        d = r.to_dict()
        table.add_row(
            r.stage,
            r.status,
            f"v{r.version}",
            str(d["rows"]),
            str(d["rows_per_second"] or "-"),
            f"{r.seconds:.1f}",
            f"{r.fragments} ({r.fragments_resumed} resumed)" if r.fragments_resumed else str(r.fragments),
        )
    console.print(table)
    for r in results:
        counters = r.stats.to_dict()["counters"]
        if counters:
            console.print(f"[bold]{r.stage}[/]: " + ", ".join(f"{k}={v}" for k, v in counters.items()), soft_wrap=True)
