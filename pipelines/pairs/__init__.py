"""``curate pairs render --dataset DS``: text-editing pairs with exact ground truth (issue #17).

Each pair is made from one photo of the dataset by ``engines.pairs.render``: sign-like text in
English or Chinese drawn on a flat part of the photo, then replaced by other text, removed (the
target is the clean photo itself) or added. The pairs go to a separate Lance table, the *pair
table* (``PAIRS_SCHEMA``), by default ``<dataset>/_curation/pairs/pairs.lance``; the samples table
is only read.

How it runs, and why:

- The driver reads the light columns (``id``, ``image_sha256``, ``error``) and ranks the rows
  with a stored image and no error by ``sha1(seed:id)``: a deterministic sample spread over the
  whole dataset. Pair ``i`` uses photo ``i mod photos`` (so ``--n`` may exceed the photo count),
  kind ``kinds[i mod len(kinds)]`` and alternates English and Chinese, so every kind gets both.
  Its ``pair_id`` is a hash of (render version, seed, i, kind, row id): a re-run with the same
  options finds every id in the table and adds nothing, and ``--n 200`` after ``--n 100`` adds the
  100 new ones.
- Units of ``batch_size`` pairs run on Ray actors (``execute_units``): the actor ``take``s its
  photos at the pinned dataset version, renders, encodes (PNG by default: lossless, so the exact
  ground-truth claims hold after decoding) and writes Lance fragments of the pair table. The
  driver only holds fragment metadata and counters, never image bytes.
- Each finished unit is checkpointed; one commit (``Overwrite`` for a new table, ``Append``
  otherwise) makes a new version of the pair table. A killed job re-run with the same options
  resumes from the checkpoints.

``curate pairs synth --dataset DS --annotations FILE``: object edits (recolour, remove, move,
resize) made by ``engines.pairs.synth`` from COCO instance masks, into the same schema (default
table ``<dataset>/_curation/pairs/synth.lance``). The samples table carries no annotations: the
driver reads the COCO instances file and matches rows to its images by the file name of
``source_key`` (or ``image_uri``), with or without its extension (a folder ingest keeps
``images/000000000139.jpg``, a tar ``000000000139``), and by size where the row has one. Rows with
no match are skipped and counted. Planning, ids, units, checkpoints and the one commit work as for
render; each pair's unit carries its object's segmentation, so workers need no annotation file.

``curate pairs mine --dataset DS``: pairs of *real* images of one scene that differ meaningfully,
from the ``curate knn`` graph (``engines.pairs.mine``): neighbours whose similarity lies in a band
(not duplicates, not unrelated), capped per image and per group, then aligned (ORB + RANSAC
homography) and scored (changed area, regions, global / local, caption difference) on Ray workers,
into the same schema with kind ``mined`` (default table ``<dataset>/_curation/pairs/mined.lance``).
No instruction unless a plug-in is configured. Pairs the workers drop (cannot be aligned, nothing
changed) are remembered next to the dataset, so a re-run does not score them again.

Modules: ``common`` (the schema, the output table, the worker base and the one job runner),
``render``, ``synth``, ``mine`` (the three ways to make pairs) and ``export`` (pair shards for
training). The names below are the package's interface; the CLI and the tests import from here.
"""

from pipelines.pairs.common import PAIRS_SCHEMA, check_out, eligible_photos, table_path
from pipelines.pairs.export import PairExportConfig, export_pairs, pair_shard_rows, pair_shard_schema, pair_tables
from pipelines.pairs.mine import (
    MineConfig,
    default_mined_out,
    mine_pairs,
    mined_fields,
    open_graph,
    pending_mine,
    plan_mine,
    why_no_candidate,
)
from pipelines.pairs.render import PairsConfig, default_out, pending, plan_pairs, render_pairs
from pipelines.pairs.synth import SynthConfig, default_synth_out, load_annotations, match_photos, pending_synth, plan_synth, synth_pairs

__all__ = [
    "PairsConfig",
    "SynthConfig",
    "PAIRS_SCHEMA",
    "render_pairs",
    "synth_pairs",
    "plan_pairs",
    "plan_synth",
    "pending",
    "pending_synth",
    "eligible_photos",
    "load_annotations",
    "match_photos",
    "default_out",
    "default_synth_out",
    "check_out",
    "table_path",
    "PairExportConfig",
    "pair_shard_schema",
    "pair_shard_rows",
    "pair_tables",
    "export_pairs",
    "MineConfig",
    "mine_pairs",
    "plan_mine",
    "pending_mine",
    "default_mined_out",
    "open_graph",
    "mined_fields",
    "why_no_candidate",
]
