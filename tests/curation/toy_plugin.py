"""A user plugin as a pipeline YAML names it under ``plugins:`` (used by the tests)."""

import os
import time

import pyarrow as pa

from curation.registry import register_stage
from curation.stage import Stage, StageConfig


class ShoutConfig(StageConfig):
    suffix: str = "!"
    fail_marker: str | None = None  # a file: while it exists, the second fragment fails


@register_stage
class ShoutStage(Stage):
    """Upper-cased first caption plus a suffix."""

    name = "toy_shout"
    config_model = ShoutConfig
    input_columns = ["id", "captions"]
    output_schema = pa.schema([pa.field("toy_shout", pa.string())])

    def process_batch(self, batch):
        if self.config.fail_marker and os.path.exists(self.config.fail_marker):
            ids = sorted(batch.column("id").to_pylist())
            if os.path.exists(self.config.fail_marker + "." + ids[0]):
                # give the driver time to receive (and checkpoint) the fragments finished before
                # this one; otherwise the abort can overtake their results and nothing resumes
                time.sleep(3)
                raise RuntimeError("injected failure")
        first = [((c or [{}])[0].get("text") or "").upper() + self.config.suffix for c in batch.column("captions").to_pylist()]
        self.stats.count("shouted", len(first))
        return {"toy_shout": pa.array(first)}
