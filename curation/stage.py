"""What a stage is: a named, resourced, pure transform from a batch of rows to new columns.

A stage knows nothing of Ray or Lance. The runner (``curation.runner``) decides where it runs
(Ray actors, one ``setup()`` per worker), over which fragments, and commits the result. So a
stage can be unit-tested on a hand-made Arrow batch, and the same stage runs on a cluster.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, ClassVar

import pyarrow as pa
from pydantic import BaseModel, ConfigDict

__all__ = ["Resources", "Stats", "Stage", "StageConfig"]


@dataclass(frozen=True)
class Resources:
    """What one worker of a stage needs. ``num_gpus`` > 0 puts it on a GPU node."""

    num_cpus: float = 1.0
    num_gpus: float = 0.0
    memory_mb: int | None = None  # a Ray scheduling hint, not a hard limit
    # custom Ray resources a node advertises (`ray start --resources='{"big_mem": 1}'`): pins a
    # stage's workers to the nodes that have them, e.g. the nodes next to the data or with a model
    resources: dict[str, float] = field(default_factory=dict, hash=False)

    def ray_options(self) -> dict[str, Any]:
        opts: dict[str, Any] = {"num_cpus": self.num_cpus}
        if self.num_gpus:
            opts["num_gpus"] = self.num_gpus
        if self.memory_mb:
            opts["memory"] = int(self.memory_mb) * 1024 * 1024
        if self.resources:
            opts["resources"] = dict(self.resources)
        return opts


@dataclass
class Stats:
    """Summable job counters: rows seen, and named reasons (``error_<reason>``, ``skipped_...``).

    Stats of fragments add up with ``+`` into the job's stats, the way datatrove sums rank stats.
    """

    rows: int = 0
    counters: Counter = field(default_factory=Counter)
    seconds: float = 0.0

    def count(self, key: str, n: int = 1) -> None:
        if n:
            self.counters[key] += n

    def __add__(self, other: Stats) -> Stats:
        return Stats(self.rows + other.rows, self.counters + other.counters, self.seconds + other.seconds)

    def to_dict(self) -> dict[str, Any]:
        return {"rows": self.rows, "seconds": round(self.seconds, 3), "counters": dict(sorted(self.counters.items()))}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Stats:
        return cls(int(d.get("rows", 0)), Counter(d.get("counters", {})), float(d.get("seconds", 0.0)))


# Config keys that change how a stage is scheduled, not what it computes: a new batch size or CPU
# count must neither invalidate checkpoints nor trigger a recompute of committed columns.
SCHEDULING_KEYS = frozenset({"num_cpus", "num_gpus", "batch_size", "concurrency"})


class StageConfig(BaseModel):
    """Base of every stage's typed config: unknown keys are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid")


class Stage:
    """Base class of column stages.

    Subclasses set ``name``, ``input_columns``, ``output_schema`` (the columns they add, normally a
    group from ``curation.schema``) and implement ``process_batch``. ``setup`` loads models once per
    worker; ``resources`` and ``batch_size`` tell the runner how to schedule it.
    """

    name: ClassVar[str] = "stage"
    config_model: ClassVar[type[StageConfig]] = StageConfig
    input_columns: ClassVar[list[str]] = []
    output_schema: ClassVar[pa.Schema] = pa.schema([])
    batch_size: ClassVar[int] = 256
    num_cpus: ClassVar[float] = 1.0  # CPUs per worker unless the config sets ``num_cpus``
    # Set by the runner before ``prepare``: the dataset's store and how the run goes, for a
    # ``prepare`` that runs a phase of its own on the workers (graph_tag counts its corpus there
    # rather than read every caption into the driver). None when ``prepare`` is called directly.
    store: Any = None
    show_progress: bool = False
    concurrency: int | None = None
    # The name the config behind the committed columns is recorded under (``record_key``): stages
    # that compute the same columns the same way share one (the fused cheap profile and each of
    # its families), so a changed config is seen whichever of them ran before.
    record_as: str | None = None

    def __init__(self, config: StageConfig | dict | None = None, **overrides: Any):
        if config is None or isinstance(config, dict):
            config = self.config_model.model_validate({**(config or {}), **overrides})
        self.config = config
        self.stats = Stats()
        if hasattr(config, "batch_size"):  # a config may tune the batch size per run
            self.batch_size = config.batch_size

    # --- to override ---------------------------------------------------------------------
    @property
    def resources(self) -> Resources:
        """``num_cpus`` / ``num_gpus`` from the config when it has them, else the class defaults."""
        return Resources(num_cpus=getattr(self.config, "num_cpus", self.num_cpus), num_gpus=getattr(self.config, "num_gpus", 0.0))

    def setup(self) -> None:
        """Load models and other heavy state; called once per worker before any batch."""

    def prepare(self, dataset: Any) -> None:
        """Driver-side hook before the run (e.g. read a small global table). Runs once, not per worker."""

    def begin_fragment(self, fragment_id: int) -> None:
        """Worker-side hook before a fragment's batches (e.g. load that fragment's slice of a
        table too large to hold whole in every worker)."""

    def process_batch(self, batch: pa.RecordBatch) -> pa.RecordBatch | dict[str, Any]:
        raise NotImplementedError

    # --- used by the runner --------------------------------------------------------------
    @property
    def record_key(self) -> str:
        return self.record_as or self.name

    def fingerprint(self) -> str:
        """Identifies the computation: a checkpoint made by another config is not reused. Stages may
        mix in what ``prepare`` learned (e.g. corpus statistics); the base is the config alone."""
        return self.config_fingerprint()

    def config_fingerprint(self) -> str:
        """The stage and its config (scheduling keys excluded): known before ``prepare`` runs, so
        the runner can tell whether committed columns came from the config asked for now."""
        cfg = {k: v for k, v in self.config.model_dump(mode="json").items() if k not in SCHEDULING_KEYS}
        payload = json.dumps({"stage": self.name, "cols": self.output_schema.names, "cfg": cfg}, sort_keys=True)
        return hashlib.sha1(payload.encode()).hexdigest()[:12]

    def run_batch(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        """``process_batch`` plus the checks that keep a bad stage from committing a wrong schema."""
        out = self.process_batch(batch)
        if isinstance(out, dict):
            out = pa.RecordBatch.from_pydict({n: out[n] for n in self.output_schema.names}, schema=self.output_schema)
        elif out.schema != self.output_schema:
            out = pa.RecordBatch.from_arrays(
                [out.column(n).cast(self.output_schema.field(n).type) for n in self.output_schema.names],
                schema=self.output_schema,
            )
        if out.num_rows != batch.num_rows:
            raise ValueError(f"stage {self.name} returned {out.num_rows} rows for a batch of {batch.num_rows}")
        self.stats.rows += batch.num_rows
        return out
