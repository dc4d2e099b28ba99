"""A deliberately slow, deterministic stage for fault and cluster tests (a pipeline ``plugins:`` entry).

Each batch sleeps ``sleep_s`` so a test has time to kill a worker or the driver mid-stage, and
writes the worker's pid to ``pid_dir`` so the test knows which process is computing. The output
depends only on the row (a hash of id and first caption), so an interrupted and an uninterrupted
run must commit identical columns.
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import pyarrow as pa

from curation.registry import register_stage
from curation.stage import Resources, Stage, StageConfig


class SlowConfig(StageConfig):
    column: str = "toy_slow"  # output column (two jobs can add different ones at once)
    sleep_s: float = 0.5
    pid_dir: str | None = None
    num_cpus: float = 0.5
    resources: dict[str, float] = {}


@register_stage
class SlowStage(Stage):
    """sha256(id | first caption)[:16], slowly."""

    name = "toy_slow"
    config_model = SlowConfig
    input_columns = ["id", "captions"]
    output_schema = pa.schema([pa.field("toy_slow", pa.string())])
    batch_size = 5

    def __init__(self, config=None, **overrides):
        super().__init__(config, **overrides)
        if self.config.column != "toy_slow":  # a per-instance schema: same stage, another column
            self.output_schema = pa.schema([pa.field(self.config.column, pa.string())])

    def prepare(self, dataset) -> None:
        # tests set ``_barrier`` to start two jobs from the same dataset version (a real conflict);
        # it is removed before the stage is shipped to workers (a barrier does not pickle)
        barrier = self.__dict__.pop("_barrier", None)
        if barrier is not None:
            barrier.wait(timeout=120)

    @property
    def resources(self) -> Resources:
        return Resources(num_cpus=self.config.num_cpus, resources=dict(self.config.resources))

    def process_batch(self, batch):
        if self.config.pid_dir:
            Path(self.config.pid_dir, f"{os.getpid()}").write_text(str(time.time()))
        time.sleep(self.config.sleep_s)
        out = []
        for i, caps in zip(batch.column("id").to_pylist(), batch.column("captions").to_pylist()):
            text = (caps or [{}])[0].get("text") or ""
            out.append(hashlib.sha256(f"{i}|{text}".encode()).hexdigest()[:16])
        self.stats.count("hashed", len(out))
        return {self.config.column: pa.array(out, pa.string())}
