"""The pair jobs as pipeline steps (``curate run``): ``pairs_render``, ``pairs_synth``,
``pairs_mine`` and ``pairs_export``, with the options of their commands.

Why here and not in each job module: a step is the job's ``(store, config)`` entry point behind a
name, nothing more, and one module shows at a glance which pair jobs a pipeline file may name.
Each step is resumable and idempotent like its command: a re-run pipeline finds every pair id
already in the table (or the same export already written) and adds nothing."""

from __future__ import annotations

from curation.registry import register_step
from curation.runner import StageResult
from pipelines.pairs.export import PairExportConfig, export_pairs
from pipelines.pairs.mine import MineConfig, mine_pairs
from pipelines.pairs.render import PairsConfig, render_pairs
from pipelines.pairs.synth import SynthConfig, synth_pairs


@register_step("pairs_render", PairsConfig, doc="text-editing pairs rendered onto the dataset's photos (docs/pairs.md)", writes=frozenset())
def _render_step(ctx, cfg: PairsConfig) -> StageResult:
    return render_pairs(ctx.store, cfg, show_progress=ctx.show_progress)


@register_step("pairs_synth", SynthConfig, doc="object-editing pairs from COCO instance masks (docs/pairs.md)", writes=frozenset())
def _synth_step(ctx, cfg: SynthConfig) -> StageResult:
    return synth_pairs(ctx.store, cfg, show_progress=ctx.show_progress)


@register_step("pairs_mine", MineConfig, doc="pairs of real photos of one scene from the k-NN graph (docs/pairs.md)", writes=frozenset())
def _mine_step(ctx, cfg: MineConfig) -> StageResult:
    return mine_pairs(ctx.store, cfg, show_progress=ctx.show_progress)


@register_step("pairs_export", PairExportConfig, doc="pair shards for editing / omni training (docs/pairs.md)", writes=frozenset())
def _export_step(ctx, cfg: PairExportConfig) -> StageResult:
    return export_pairs(ctx.store, cfg, show_progress=ctx.show_progress)
