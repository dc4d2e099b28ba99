"""``curate review mine|serve|add-user|apply``: the active-curation loop around human review.

- ``mine`` reads the dataset's light columns (whatever engines have run), picks hard cases in
  balanced order with pseudo-labels and an AI verdict (``engines.active.mining``) and queues them
  in the review database (``curation.reviewdb``; SQLite next to the dataset by default).
- ``serve`` runs the annotator web app (``annotator_ui.app``) on loopback.
- ``apply`` merges the decisions into the dataset as one new Lance version (``rev_*`` columns,
  computed per fragment on Ray by the stage runner), then closes the loop: fits the reward head,
  recalibrates the rule thresholds the next ``mine`` reads, writes the corrected tags for the
  concept graph, and reports what changed and how well the machine's proposals matched humans.

Both refuse embeddings and scores made by randomly initialised weights (the profiling engine's
``profiling/models.json``, and ``rev_reward`` from a reward head fitted on such inputs) with one
line naming the column group, unless ``allow_random_weights``; then the mining summary, every
payload, the reward head, the keep head and the apply report say which inputs were random-derived.
The head trained on image embeddings is a keep-probability head (0..1, target: reviewer keep
decisions, ``review/keep_head.safetensors``), never an aesthetics head.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

import pyarrow as pa
from pydantic import Field

from curation.registry import register_step
from curation.reports import png_data_uri, render
from curation.schema import REVIEW
from curation.stage import Stage, StageConfig
from curation.store import Store
from engines.active.mining import MineConfig

__all__ = [
    "ReviewMineConfig",
    "ReviewApplyConfig",
    "ReviewMergeStage",
    "review_dir",
    "default_db_url",
    "mine_queue",
    "mines_locally",
    "check_mine_request",
    "apply_reviews",
    "review_apply_action",
    "add_tag_labels",
]

# numeric profile signals the reward head may use (what exists is used; embeddings come on top)
REWARD_SIGNALS = [
    "prof_quality",
    "prof_aesthetic",
    "prof_clip_sim",
    "prof_sharpness",
    "prof_brisque",
    "prof_noise",
    "prof_watermark",
    "prof_nsfw",
    "prof_complexity",
    "prof_megapixels",
    "prof_compression",
    "prof_border_var",
    "prof_jpeg_bpp",
    "prof_color_cast",
    "prof_contrast",
    "prof_cap_ocr_overlap",
]


def review_dir(store: Store) -> Path:
    d = store.state_dir / "review"
    d.mkdir(parents=True, exist_ok=True)
    return d


def default_db_url(store: Store) -> str:
    """SQLite next to the dataset's other state (``<dataset>/_curation/review/review.sqlite``)."""
    return str(review_dir(store) / "review.sqlite")


class ReviewMineConfig(MineConfig):
    db: Optional[str] = Field(None, description="review database (SQLite path or postgresql:// URL); default next to the dataset")
    local_rows: int = Field(
        50_000,
        ge=0,
        description="mine in this process, without Ray, up to this many rows (Ray's start and its passes cost more than "
        "they save on small data: 7.6 s against 15.7 s at 50,000 rows, about even at 100,000 on 2 cores); 0 = always on Ray",
    )
    gold: Optional[str] = Field(None, description="CSV of row_id,keep|drop: gold items with known answers")
    graph: Optional[str] = Field(
        None, description="concept graph folder for the tags' display names (default: the one the dataset's graph_tag stage used)"
    )


class ReviewApplyConfig(StageConfig):
    db: Optional[str] = Field(None, description="review database; default next to the dataset")
    prior_n: float = Field(50.0, gt=0, description="labels needed to move a threshold halfway to the best cut")
    min_labels: int = Field(10, ge=2, description="fewer labels than this change nothing")
    keep_head: bool = Field(
        True,
        description="also train a keep-probability head (0..1, target: reviewer keep decisions) on prof_clip_image "
        "(review/keep_head.safetensors; not an aesthetics head)",
    )
    aesthetic_head: Optional[bool] = Field(
        None, description="deprecated name of keep_head: what it trained was never an aesthetics score; set keep_head"
    )
    allow_random_weights: bool = Field(
        False,
        description="fit the heads and thresholds even on embeddings or scores made by randomly initialised weights "
        "(noise); the heads and the report are then marked random_derived",
    )


# --- mine ------------------------------------------------------------------------------------------


def _mine_columns(schema: pa.Schema) -> list[str]:
    from engines.active.rules import DISPLAY_SIGNALS, DUP_SIM_COLUMNS, EMBEDDING_COLUMNS, GOODNESS

    want = {
        "id",
        "captions",
        "error",
        "prof_ocr_text",
        "tag_concepts",
        "tag_scores",
        "tag_direct",
        "rev_decision",
        "rev_caption",
        *DISPLAY_SIGNALS,
        *GOODNESS,
        *DUP_SIM_COLUMNS,
    }
    names = schema.names
    emb = next((c for c in EMBEDDING_COLUMNS if c in names), None)

    return [c for c in names if c in want or c == emb]


def _read_gold(path: str) -> dict[str, str]:
    import csv

    out = {}
    with open(path, newline="", encoding="utf-8") as f:
        for i, row in enumerate(csv.reader(f)):
            if not row or row[0].startswith("#") or (i == 0 and row[0] == "row_id"):
                continue
            if len(row) < 2 or row[1].strip() not in ("keep", "drop"):
                raise ValueError(f"{path} line {i + 1}: expected 'row_id,keep|drop', got {row!r}")
            out[row[0].strip()] = row[1].strip()
    return out


def random_inputs(store: Store, columns: list[str]) -> dict[str, dict[str, str]]:
    """``{column: {"group", "why"}}`` for the columns the review loop reads that came from random
    weights: the profiling record (``engines.vector.retrieval.random_weight_sources``), and
    ``rev_reward`` when the reward head that wrote it was fitted on random-derived inputs."""
    from engines.vector.retrieval import random_weight_sources

    out = random_weight_sources(store, columns)
    if "rev_reward" in columns:
        p = review_dir(store) / "reward_head.json"
        tainted = (json.loads(p.read_text()).get("meta") or {}).get("random_derived") if p.is_file() else None
        if tainted:
            out["rev_reward"] = {
                "group": REVIEW.name,
                "why": f"written by a reward head fitted on random-derived inputs ({', '.join(tainted)})",
            }
    return out


def check_mine_request(store: Store, cfg: ReviewMineConfig) -> tuple[list, list[str], dict[str, dict[str, str]]]:
    """(rules, columns mined, random-derived columns) of a mining request, or its refusal
    (a rule file naming an absent column, inputs from random weights): checked from the schema
    and the state folder, before Ray starts (``curate review mine`` calls it first)."""
    from engines.active.rules import load_rules
    from engines.vector.retrieval import refuse_random_weights

    names = store.open().schema.names
    rules = load_rules(review_dir(store) / "thresholds.json", columns=names)
    cols = sorted(set(_mine_columns(store.open().schema)) | {r.column for r in rules if r.column in names})
    return rules, cols, refuse_random_weights(random_inputs(store, cols), consumer="review mining", allow=cfg.allow_random_weights)


def mine_queue(store: Store, cfg: ReviewMineConfig, *, show_progress: bool = True) -> dict[str, Any]:
    """Mine hard cases from the latest version and queue them. Returns the mining summary.

    Raises ``RandomWeightsError`` before reading anything when a column it would read came from
    random weights and ``cfg.allow_random_weights`` is off."""
    from curation.reviewdb import ReviewDB, is_pair_row
    from engines.active.loop import aggregate
    from engines.active.mining import mine_blocks

    t0 = time.perf_counter()
    ds = store.open()
    rules, cols, random_derived = check_mine_request(store, cfg)
    local = mines_locally(ds, cfg)
    blocks = FragmentBlocks(store, ds.version, cols, rules, show_progress=show_progress, local=local)
    gold = _read_gold(cfg.gold) if cfg.gold else {}
    if gold:  # a bad gold file is refused before the queue's database is made
        _check_gold(blocks, gold)
    db = ReviewDB(cfg.db or default_db_url(store))
    db.set_meta("dataset", store.uri)
    # the queue's editing pairs (``curate pairs review``) are not dataset rows: mining never sees them
    agg = aggregate([d for d in db.decisions() if not is_pair_row(d["row_id"])])
    reviewed = {r: a["decision"] for r, a in agg.items() if a["decision"] in ("keep", "drop")}
    flagged = [r for r in db.flagged_rows() if not is_pair_row(r)]
    kw = {"columns": cols, "flagged": flagged, "reviewed": reviewed, "random_derived": random_derived}
    items, summary = mine_blocks(blocks, rules, cfg, **kw)
    if gold:
        items = _with_gold(blocks, rules, cfg, items, gold, **kw)
    for it in items:
        it["payload"]["version"] = ds.version
    add_tag_labels(items, _graph_for_labels(store, cfg))
    batch = f"v{ds.version}-{time.strftime('%Y%m%dT%H%M%S')}"
    counts = db.enqueue(items, batch, user="curate review mine")
    summary.update(
        {
            "batch": batch,
            "version": ds.version,
            "db": db.url,
            **counts,
            "gold": counts.get("gold", 0),
            "gold_skipped": counts.get("gold_skipped", []),
            "seconds": round(time.perf_counter() - t0, 2),
            "rules": [r.model_dump() for r in rules],
        }
    )
    store.write_json(f"review/mine-{batch}.json", summary)
    db.close()
    return summary


def mines_locally(ds, cfg: ReviewMineConfig) -> bool:
    """Whether ``mine_queue`` runs its passes in this process (a dataset of at most
    ``cfg.local_rows`` rows) instead of as Ray tasks; the CLI then starts no Ray either."""
    return ds.count_rows() <= cfg.local_rows


def _graph_for_labels(store: Store, cfg: ReviewMineConfig) -> str | None:
    """The concept graph to name the tags from: the option, else the graph the dataset's tags
    were computed with (the stage runner records each stage's config in the state dir)."""
    return cfg.graph or dataset_graph(store)


def dataset_graph(store: Store) -> str | None:
    """The concept graph the dataset's ``graph_tag`` stage ran with (curation.runner records
    each stage's config), or None: what ``serve`` suggests tags from when given no ``--graph``."""
    known = store.read_json("stage_fingerprints.json") or {}
    return ((known.get("graph_tag") or {}).get("config") or {}).get("graph")


def add_tag_labels(items: list[dict[str, Any]], graph: str | None) -> int:
    """Put the display names (English label, Chinese when the graph has one) of each item's
    proposed tags and concept into its payload as ``tag_labels``: the page shows names, not bare
    ids like ``wn:08674251``. Done here, when queueing, because the graph lives with the
    dataset and the review server may not see it. Reads only the needed nodes; a missing graph
    or node leaves the id to show. Returns how many items got names."""
    import pyarrow.parquet as pq

    wanted = {it["row_id"]: _label_ids(it["payload"]) for it in items}
    ids = sorted({i for v in wanted.values() for i in v})
    nodes = Path(graph) / "nodes.parquet" if graph else None
    if not ids or nodes is None or not nodes.is_file():
        return 0
    t = pq.read_table(nodes, columns=["id", "label_en", "label_zh"], filters=[("id", "in", ids)])
    names = {i: {"en": en or "", "zh": zh or ""} for i, en, zh in zip(*(t.column(c).to_pylist() for c in t.column_names))}
    n = 0
    for it in items:
        own = {i: names[i] for i in wanted[it["row_id"]] if i in names}
        if own:
            it["payload"]["tag_labels"] = own
            n += 1
    return n


def tags_outside_graph(tags: dict[str, list[str]], graph: str | None) -> dict[str, Any] | None:
    """Reviewed tags that are no concept id of the dataset's graph, or None (none, or no graph
    to check against): ``{"rows", "tags": {tag: rows, the 20 commonest}, "graph"}``.

    Why: the review UI stores only concept ids when it has a graph, but decisions made before
    it checked, on a server without a graph, or that kept a proposed caption keyword, may hold
    words that name no concept; they reach ``rev_tags`` as they are, and the apply report says
    how many rather than letting them pass unseen."""
    import pyarrow.parquet as pq

    nodes = Path(graph) / "nodes.parquet" if graph else None
    if not tags or nodes is None or not nodes.is_file():
        return None
    from collections import Counter

    ids = set(pq.read_table(nodes, columns=["id"]).column("id").to_pylist())
    bad = Counter(t for ts in tags.values() for t in set(ts) if t not in ids)
    if not bad:
        return None
    rows = sum(1 for ts in tags.values() if any(t not in ids for t in ts))
    return {"rows": rows, "tags": dict(bad.most_common(20)), "graph": str(graph)}


def _label_ids(payload: dict[str, Any]) -> list[str]:
    tags = list((payload.get("pseudo") or {}).get("tags") or [])
    return tags + ([payload["concept"]] if payload.get("concept") else [])


def _with_gold(
    blocks, rules: list, cfg: ReviewMineConfig, items: list[dict[str, Any]], gold: dict[str, str], **mine_kw: Any
) -> list[dict[str, Any]]:
    """The mined items with the gold answers set, plus the gold rows mining did not pick.

    Why those are mined too: a gold item must look like any other, or annotators learn to
    spot the test (a caption alone, "gold item" as the reason, no pseudo-label) and gold
    accuracy measures how people treat a known test. Mining runs over every row again (so
    scales, ranks, look-alikes and the verifier's votes are the dataset's) with only the
    missing gold rows allowed in the queue."""
    from engines.active.mining import mine_blocks

    picked = {it["row_id"] for it in items}
    extra_ids = [g for g in gold if g not in picked]
    extra: list[dict[str, Any]] = []
    if extra_ids:
        sub = cfg.model_copy(update={"n": len(extra_ids), "min_hardness": 0.0, "include_reviewed": True})
        extra, _ = mine_blocks(blocks, rules, sub, only=extra_ids, **mine_kw)
        for it in extra:
            it["priority"] = 0.0  # served through the gold share (``serve --gold-rate``), not by hardness
    for it in (*items, *extra):
        if it["row_id"] in gold:
            it["gold_answer"] = gold[it["row_id"]]
    return items + extra


def _check_gold(blocks, gold: dict[str, str]) -> None:
    present = {i for part in blocks.map("which", pa.array(list(gold), pa.string())) for i in part}
    missing = [g for g in gold if g not in present]
    if missing:
        raise ValueError(f"gold rows not in the dataset: {missing[:5]}")


# what each MineBlock method reads: vectors only, captions only, ids only, numbers only, or every mined column
_VECTOR_CALLS = {"vectors_at", "vectors_of", "nearest"}
_CAPTION_CALLS = {"captions_at"}
_ID_CALLS = {"id_column", "which"}
_NUMBER_CALLS = {"stats"}
_POSITIONAL_CALLS = {"vectors_at", "details_at", "captions_at"}
_CALL_NAMES = {  # what each pass is, in the progress line
    "stats": "the signals' distributions",
    "score": "judging every row",
    "vectors_at": "vectors of given rows",
    "vectors_of": "vectors of reviewed or flagged rows",
    "details_at": "queued rows' details",
    "nearest": "look-alikes",
    "captions_at": "look-alikes' captions",
}


class FragmentBlocks:
    """Review mining's blocks in a job: one a Lance fragment, read on a Ray worker at each call
    (``execute_units``: a pass over the data, one fragment a unit, only the columns the call
    reads) and not kept, so neither the driver nor a worker holds every row's text or vectors.
    A call about given rows (their vectors, details, captions) reads only their fragments.
    ``local``: the same units run one after another in this process (small data, no Ray)."""

    def __init__(self, store: Store, version: int, columns: list[str], rules: list, *, show_progress: bool = True, local: bool = False):
        from engines.active.rules import EMBEDDING_COLUMNS

        ds = store.open(version)
        self.store, self.version, self.columns, self.rules, self.show_progress = store, version, columns, rules, show_progress
        self.local = local
        self.frags, offset = [], 0
        for f in ds.get_fragments():
            n = f.count_rows()
            self.frags.append((f.fragment_id, offset, n))
            offset += n
        self.emb_col = next((c for c in EMBEDDING_COLUMNS if c in columns), None)
        self.schema = pa.schema([ds.schema.field(c) for c in columns])

    def _columns(self, method: str) -> list[str]:
        from engines.active.mining import signal_columns
        from engines.active.rules import DUP_SIM_COLUMNS

        if method in _VECTOR_CALLS:
            return ["id", *([self.emb_col] if self.emb_col else [])]
        if method in _CAPTION_CALLS:
            return [c for c in ("id", "captions", "rev_caption") if c in self.columns]
        if method in _ID_CALLS:
            return ["id"]
        if method in _NUMBER_CALLS:
            numbers = {*signal_columns(self.rules), *DUP_SIM_COLUMNS}
            return ["id", *(c for c in self.columns if c in numbers)]
        return self.columns

    def map(self, method: str, *args, each=None, into=None) -> list:
        import pickle

        import numpy as np

        from curation.runner import execute_units
        from engines.active.mining import MineBlock

        if each is not None:
            raise NotImplementedError("FragmentBlocks.map takes the same arguments for every block")
        if method == "rows":
            return [n for _, _, n in self.frags]
        if method == "embedding_column":
            return [self.emb_col] * len(self.frags)
        hit = list(range(len(self.frags)))
        if method in _POSITIONAL_CALLS and args[0] is not None:
            pos = np.asarray(args[0], np.int64)
            hit = [k for k, (_, off, n) in enumerate(self.frags) if ((pos >= off) & (pos < off + n)).any()]
        out = _InOrder(len(self.frags), into)
        cols = self._columns(method)
        skipped = sorted(set(range(len(self.frags))) - set(hit))
        if skipped:  # no row asked for there: the answer of a block with no rows, the same for each
            empty = getattr(MineBlock(self.schema.empty_table().select(cols), 0, self.rules), method)(*args)
            for k in skipped:
                out.put(k, empty)
        units = [{"k": k, "fragment_id": self.frags[k][0], "offset": self.frags[k][1]} for k in hit]
        call = {"store": self.store, "version": self.version, "columns": cols, "rules": self.rules, "method": method, "args": args}
        if self.local:
            worker = _FragmentCall(**call)
            for u in units:
                out.put(u["k"], worker.answer(u["fragment_id"], u["offset"]))
            return out.results
        execute_units(
            units,
            _FragmentCall,
            call,
            ray_options={"num_cpus": 1},
            on_result=lambda row: out.put(row["k"], pickle.loads(row["out"])),
            description=f"review mine: {_CALL_NAMES.get(method, method)}",
            show_progress=self.show_progress,
        )
        return out.results


class _InOrder:
    """The blocks' answers in block order, whatever order they arrive in: kept in a list, or
    handed to ``into`` as soon as every earlier block's has been (the few that came early wait)."""

    def __init__(self, n: int, into=None):
        self.into, self.next = into, 0
        self.results: list = [None] * n if into is None else []
        self.early: dict[int, Any] = {}

    def put(self, k: int, answer: Any) -> None:
        if self.into is None:
            self.results[k] = answer
            return
        self.early[k] = answer
        while self.next in self.early:
            self.into(self.early.pop(self.next))
            self.next += 1


class _FragmentCall:
    """A unit worker of :class:`FragmentBlocks`: one fragment's ``MineBlock``, one method call."""

    def __init__(self, store: Store, version: int, columns: list[str], rules: list, method: str, args: tuple):
        self.ds, self.columns, self.rules, self.method, self.args = store.open(version), columns, rules, method, args

    def answer(self, fragment_id: int, offset: int):
        """The method's answer over fragment ``fragment_id`` (its first row at ``offset``)."""
        from engines.active.mining import MineBlock

        block = MineBlock(self.ds.get_fragment(fragment_id).to_table(columns=self.columns), offset, self.rules)
        return getattr(block, self.method)(*self.args)

    def __call__(self, unit: pa.Table) -> pa.Table:
        import pickle

        k, fid, offset = (unit.column(c)[0].as_py() for c in ("k", "fragment_id", "offset"))
        return pa.table({"k": [k], "out": pa.array([pickle.dumps(self.answer(fid, offset))], pa.binary())})


# --- apply -----------------------------------------------------------------------------------------


class ReviewMergeStage(Stage):
    """Write the aggregated review decisions (and the reward head's score) as the ``rev_*`` columns."""

    name = "review_merge"
    output_schema = REVIEW.schema
    batch_size = 4096

    def __init__(self, config=None, *, decisions: dict[str, dict] | None = None, head: dict | None = None, **kw):
        super().__init__(config, **kw)
        self.decisions = decisions or {}
        self.head = head
        cols = ["id"]
        if head:
            cols += [c for c in head["columns"]]
            if head.get("emb_column"):
                cols.append(head["emb_column"])
        self.input_columns = list(dict.fromkeys(cols))

    def fingerprint(self) -> str:
        import hashlib

        blob = json.dumps([sorted(self.decisions.items()), self.head], sort_keys=True, default=str)
        return hashlib.sha1(blob.encode()).hexdigest()[:12]

    num_cpus = 0.5

    def process_batch(self, batch: pa.RecordBatch) -> dict:
        import numpy as np

        from engines.active.loop import RewardHead
        from engines.active.rules import column_values, embedding_matrix

        ids = batch.column("id").to_pylist()
        recs = [self.decisions.get(i) for i in ids]
        self.stats.count("reviewed", sum(r is not None for r in recs))
        reward = [None] * len(ids)
        if self.head:
            t = pa.Table.from_batches([batch])
            head = RewardHead.from_json(self.head)
            vals = {c: v for c in head.columns if (v := column_values(t, c)) is not None}
            emb = None
            if head.emb_column:
                m = embedding_matrix(t, head.emb_column)
                emb = m[0] if m is not None else np.zeros((len(ids), head.emb_dim), np.float32)
            reward = head.predict(vals, emb).astype(np.float32).tolist()
        return {
            "rev_decision": pa.array([r["decision"] if r else None for r in recs], pa.string()),
            "rev_flag": pa.array([r["flag"] if r else None for r in recs], pa.bool_()),
            "rev_caption": pa.array([r["caption"] if r else None for r in recs], pa.string()),
            "rev_tags": pa.array([r["tags"] if r else None for r in recs], pa.list_(pa.string())),
            "rev_reviewer": pa.array([r["reviewers"] if r else None for r in recs], pa.string()),
            "rev_time": pa.array([int(r["time"] * 1e6) if r else None for r in recs], pa.timestamp("us", tz="UTC")),
            "rev_votes": pa.array([r["votes"] if r else None for r in recs], pa.int16()),
            "rev_reward": pa.array(reward, pa.float32()),
        }


def apply_reviews(store: Store, cfg: ReviewApplyConfig, *, show_progress: bool = True, by: Any = None) -> dict[str, Any]:
    """Merge decisions into a new dataset version and close the loop. Returns the report dict.

    Decisions on editing pairs (``curate pairs review``: row ids ``pair:<id>``) are written to
    their pair tables first (``pipelines.pairs.review.apply_pair_reviews``, ``report["pairs"]``)
    and are no part of the rest: the dataset, heads and thresholds see the hard cases only.

    ``by``: the admin (``curation.reviewdb.User``) who ran it from the web page, for the audit log.
    Raises ``RandomWeightsError`` before changing anything when a signal or embedding the heads
    and thresholds would learn from came from random weights and ``cfg.allow_random_weights`` is off."""
    from curation.reviewdb import ReviewDB, is_pair_row
    from curation.runner import StageResult, run_stage
    from engines.active.loop import aggregate
    from engines.active.rules import EMBEDDING_COLUMNS, load_rules
    from engines.vector.retrieval import refuse_random_weights
    from pipelines.pairs.review import apply_pair_reviews

    t0 = time.perf_counter()
    rdir = review_dir(store)
    ds = store.open()
    names = ds.schema.names
    rules = load_rules(rdir / "thresholds.json", columns=names)
    emb_col = next((c for c in EMBEDDING_COLUMNS if c in names), None)
    sig_cols = [c for c in dict.fromkeys(REWARD_SIGNALS + [r.column for r in rules]) if c in names]
    random_derived = refuse_random_weights(
        random_inputs(store, sig_cols + ([emb_col] if emb_col else [])),
        consumer="review apply (reward head, keep head, thresholds)",
        allow=cfg.allow_random_weights,
    )
    marks = {c: f"{s['group']}: {s['why']}" for c, s in random_derived.items()}
    db = ReviewDB(cfg.db or default_db_url(store), create=False)
    every = db.decisions()
    # pair items (``curate pairs review``) go to their pair tables, never into the dataset's
    # rev_* columns, the heads or the agreement figures: the hard-case loop sees what it saw before
    decisions = [d for d in every if not is_pair_row(d["row_id"])]
    pairs_report = apply_pair_reviews(every)
    agg = aggregate(decisions)
    before = ds.version
    labelled = {r: a for r, a in agg.items() if a["decision"] in ("keep", "drop")}
    report: dict[str, Any] = {
        "version_before": before,
        "decisions": len(decisions),
        "rows_reviewed": len(agg),
        "labels": len(labelled),
        "rules_before": [r.model_dump() for r in rules],
    }
    if marks:
        report["random_derived"] = marks
    if pairs_report["pairs"]:
        report["pairs"] = pairs_report
    head_json = _learn_from_labels(ds, cfg, rdir, labelled, rules, sig_cols, emb_col, marks, before, report) if labelled else None
    report.update(_loop_quality(agg, labelled))
    # the reviewed tags, by row, for the concept graph (nothing reads the file automatically yet)
    tags = {r: a["tags"] for r, a in agg.items() if a["tags"]}
    store.write_json("review/graph_tags.json", {"version": before, "tags": tags})
    report["graph_tags_rows"] = len(tags)
    outside = tags_outside_graph(tags, dataset_graph(store))
    if outside:
        report["tags_not_in_graph"] = outside
    stage = ReviewMergeStage(decisions={r: {k: v for k, v in a.items() if k != "payload"} for r, a in agg.items()}, head=head_json)
    last = store.read_json("review/apply-last.json") or {}
    if last.get("fingerprint") == stage.fingerprint() and "rev_decision" in names:  # the same decisions and head again
        result = StageResult(stage.name, "skipped", before, before, extra={"why": f"no new decision since v{last.get('version')}"})
    else:
        result = run_stage(store, stage, overwrite=True, show_progress=show_progress)
        store.write_json("review/apply-last.json", {"fingerprint": stage.fingerprint(), "version": result.version})
    report.update({"version_after": result.version, "stage": result.to_dict(), "seconds": round(time.perf_counter() - t0, 2)})
    report["rules_after"] = (
        json.loads((rdir / "thresholds.json").read_text())["rules"] if (rdir / "thresholds.json").exists() else report["rules_before"]
    )
    store.write_json(f"review/apply-v{result.version}.json", {k: v for k, v in report.items() if k != "plots"})
    report["report_html"] = str(_write_report(rdir / f"apply-v{result.version}.html", report))
    # the decisions read above are in the dataset now: history can no longer re-open them
    through = max((d["decision_id"] for d in every), default=0)  # the pair decisions are applied too
    db.mark_applied(by, through, version=result.version, decisions=len(decisions), version_before=before)
    db.close()
    return report


def _learn_from_labels(
    ds: Any,
    cfg: ReviewApplyConfig,
    rdir: Path,
    labelled: dict[str, dict],
    rules: list,
    sig_cols: list[str],
    emb_col: str | None,
    marks: dict[str, str],
    before: int,
    report: dict[str, Any],
) -> dict | None:
    """Fit the reward head (and the keep head) on the keep/drop labels and recalibrate the
    thresholds; their figures go into ``report``. Returns the reward head as JSON (None when too
    few labels), for the merge stage to score every row with."""
    import numpy as np
    import pyarrow.compute as pc

    from engines.active.loop import fit_reward_head, recalibrate
    from engines.active.rules import column_values, embedding_matrix, save_rules

    head_json = None
    t = ds.to_table(
        columns=["id", *sig_cols] + ([emb_col] if emb_col else []), filter=pc.field("id").isin(pa.array(sorted(labelled), pa.string()))
    )
    y = np.array([1 if labelled[i]["decision"] == "keep" else 0 for i in t.column("id").to_pylist()])
    vals = {c: v for c in sig_cols if (v := column_values(t, c)) is not None}
    emb = embedding_matrix(t, emb_col) if emb_col else None
    head = fit_reward_head(
        vals, y, [c for c in sig_cols if c != "rev_reward"], emb=emb[0] if emb else None, emb_column=emb_col, min_labels=cfg.min_labels
    )
    if head is not None:
        used = [c for c in [*head.columns, head.emb_column] if c in marks]
        if used:
            head.meta["random_derived"] = {c: marks[c] for c in used}
        head_json = head.to_json()
        (rdir / "reward_head.json").write_text(json.dumps(head_json))
        report["reward_head"] = head.meta | {"features": head.columns, "embedding": head.emb_column}
        want_keep = cfg.keep_head if cfg.aesthetic_head is None else cfg.aesthetic_head
        if want_keep and emb is not None and emb_col == "prof_clip_image" and len(y) >= 20:
            report["keep_head"] = _export_keep_head(emb[0], y, rdir, emb_col, {c: marks[c] for c in (emb_col,) if c in marks})
    else:
        report["reward_head"] = {"skipped": f"needs >= {cfg.min_labels} labels with both keep and drop"}
    new_rules, rule_report = recalibrate(rules, vals, y, prior_n=cfg.prior_n, min_labels=cfg.min_labels)
    for entry in rule_report:
        if entry["column"] in marks:  # said where the threshold is shown (CLI, HTML report, history)
            entry["random_derived"] = marks[entry["column"]]
            entry["note"] = f"RANDOM-DERIVED signal ({marks[entry['column']]})" + (f"; {entry['note']}" if entry.get("note") else "")
    report["thresholds"] = rule_report
    save_rules(
        rdir / "thresholds.json", new_rules, [{"time": time.time(), "version": before, "labels": int(len(y)), "changes": rule_report}]
    )
    report["plots"] = _threshold_plots(vals, y, rule_report)
    return head_json


def _loop_quality(agg: dict[str, dict], labelled: dict[str, dict]) -> dict[str, Any]:
    """How well the machine's proposals (pseudo-labels, the verifier, caption fixes) matched the
    humans: the previous loop's quality, reported with every apply."""
    from engines.active.loop import agreement

    rows = list(labelled.values())
    human = [a["decision"] for a in rows]
    fixes = [(a["payload"].get("pseudo", {}).get("caption_fix"), a["caption"]) for a in agg.values()]
    proposed = [(f, c) for f, c in fixes if f]
    return {
        "pseudo_label_agreement": agreement([a["payload"].get("pseudo", {}).get("decision") for a in rows], human),
        "verifier_agreement": agreement([a["payload"].get("verifier", {}).get("verdict") for a in rows], human),
        "caption_fixes": {
            "proposed": len(proposed),
            "accepted": sum(1 for f, c in proposed if c == f),
            "captions_edited": sum(1 for a in agg.values() if a["caption"]),
        },
    }


def _export_keep_head(emb, y, rdir: Path, emb_col: str, random_derived: dict[str, str]) -> dict[str, Any]:
    """The keep-probability head (``engines.active.loop.fit_keep_head``) as
    ``review/keep_head.safetensors``: what it is and its scale are in the file, so it is never
    mistaken for (and the aesthetics loader refuses it as) an aesthetics head."""
    try:
        from engines.active.loop import fit_keep_head, save_keep_head

        head, loss = fit_keep_head(emb, y, embedding_column=emb_col, random_derived=random_derived)
        path = save_keep_head(head, rdir / "keep_head.safetensors")
        out = {"path": str(path), "train_loss": round(loss, 4), **{k: head.meta[k] for k in ("name", "scale", "target")}}
        return out | ({"random_derived": random_derived} if random_derived else {})
    except ImportError as e:  # torch not installed: the logistic head still stands
        return {"skipped": str(e)}


def _threshold_plots(vals, y, rule_report) -> dict[str, str]:
    """Per recalibrated rule: histograms of the signal for human keeps and drops, old and new threshold
    (column -> PNG ``data:`` URI, ready for an ``<img src>``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    out = {}
    for r in rule_report:
        x = vals.get(r["column"])
        if x is None or "best_cut" not in r:
            continue
        fig, ax = plt.subplots(figsize=(5, 2.6))
        ok = ~np.isnan(x)
        bins = np.histogram_bin_edges(x[ok], bins=30)
        ax.hist(x[ok & (y == 1)], bins=bins, alpha=0.6, label="human keep", color="#2e7d32")
        ax.hist(x[ok & (y == 0)], bins=bins, alpha=0.6, label="human drop", color="#c62828")
        ax.axvline(r["old"], color="k", ls="--", label=f"old {r['old']:.3g}")
        ax.axvline(r["new"], color="k", ls="-", label=f"new {r['new']:.3g}")
        ax.set_title(f"{r['column']} ({r['op']})", fontsize=9)
        ax.legend(fontsize=7)
        fig.tight_layout()
        out[r["column"]] = png_data_uri(fig, dpi=90)
    return out


def _write_report(path: Path, report: dict[str, Any]) -> Path:
    """The apply report (``curation/templates/review_report.html``): agreement, reward head, thresholds, plots."""
    path.write_text(render("review_report.html", r=report), encoding="utf-8")
    return path


# --- pipeline steps --------------------------------------------------------------------------------


def review_apply_action(
    db_url: str, ray_address: str | None = None, *, allow_random_weights: bool = False
) -> Callable[[str, Any], dict[str, Any]]:
    """The web app's "apply decisions" action (``create_app(..., apply=...)``): the same
    ``apply_reviews`` as ``curate review apply``, joining or starting Ray on first use."""

    def apply(dataset: str, user: Any) -> dict[str, Any]:
        from curation.cluster import RayConfig, init_ray

        init_ray(RayConfig(address=ray_address))
        cfg = ReviewApplyConfig(db=db_url, allow_random_weights=allow_random_weights)
        return apply_reviews(Store(dataset), cfg, show_progress=False, by=user)

    return apply


@register_step("review_mine", ReviewMineConfig, writes=frozenset())
def _mine_step(ctx, cfg: ReviewMineConfig):
    """Queue hard cases with pseudo-labels for human review."""
    return mine_queue(ctx.store, cfg, show_progress=ctx.show_progress)


@register_step("review_apply", ReviewApplyConfig, writes=frozenset(REVIEW.columns))
def _apply_step(ctx, cfg: ReviewApplyConfig):
    """Merge review decisions into a new version; refit the reward head and thresholds."""
    rep = apply_reviews(ctx.store, cfg, show_progress=ctx.show_progress)
    return {k: v for k, v in rep.items() if k != "plots"}
