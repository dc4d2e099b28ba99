"""World Knowledge Topological Graph jobs: build the concept graph, tag captions, resample.

- ``curate graph build --out GRAPH``: WordNet nouns (+ Chinese labels) merged with user concept
  files, a PageRank-pruned link graph and tags mined from a dataset's captions.
- ``curate graph show --graph GRAPH [--node dog]``: statistics, depth histogram, a neighbourhood.
- ``curate graph tag --dataset DS --graph GRAPH``: the ``graph_tag`` stage (``tag_*`` columns).
- ``curate resample --dataset DS --graph GRAPH``: the ``resample_weights`` stage (``rs_*``
  columns) plus a resampled manifest and an HTML report under ``<dataset>/_curation/graph/``.

Both column jobs are registered stages, so they run on Ray actors per Lance fragment, checkpoint
and resume (``curation.runner.run_stage``). Corpus-wide state (BM25 statistics, the resampling
solve) is computed once on the driver in ``prepare``; workers only apply it. Pipeline YAML steps:
``graph_build``, ``graph_tag``, ``resample``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Optional

from pydantic import Field

from curation.registry import register_stage, register_step
from curation.schema import CONCEPT_TAGS, RESAMPLE
from curation.stage import Resources, Stage, StageConfig

__all__ = ["GraphBuildConfig", "GraphTagConfig", "ResampleStepConfig", "GraphTagStage", "ResampleStage", "build_graph", "run_resample"]


# --- build ------------------------------------------------------------------------------------


class GraphBuildConfig(StageConfig):
    out: str = Field(description="folder to write the graph to (nodes/edges Parquet, GraphML, meta)")
    wordnet: bool = True
    wordnet_dir: str = "/usr/share/wordnet"
    visual_only: bool = Field(False, description="drop WordNet synsets of non-visual lexicographer files")
    zh: bool = Field(True, description="Chinese labels from CC-CEDICT + Cilin synonyms")
    user_files: list[str] = Field(default_factory=list, description="CSV/JSONL concept files, merged in order")
    links: Optional[str] = Field(None, description="entity link table (source,target[,kind]) to prune by PageRank")
    link_quantile: float = Field(0.5, ge=0, lt=1, description="drop linked entities below this PageRank quantile")
    mine_from: Optional[str] = Field(None, description="dataset whose captions to mine tags from ('' = the pipeline's)")
    mine_min_count: int = Field(2, ge=1)
    mine_max_tags: int = Field(2000, ge=1)
    mine_branching: int = Field(8, ge=2)
    mine_leaf_size: int = Field(8, ge=2)
    graphml: bool = True


def _captions_of(store) -> list[str]:
    t = store.to_arrow(columns=["captions"])
    return [c["text"] for caps in t.column("captions").to_pylist() for c in (caps or []) if c and c.get("text")]


def build_graph(cfg: GraphBuildConfig, store=None, log=print):
    """Build, merge, check and save the graph; returns (graph, report dict)."""
    from graph.concepts import ConceptGraph

    t0 = time.perf_counter()
    report: dict[str, Any] = {}
    g = ConceptGraph()
    if cfg.wordnet:
        from graph.wordnet import load_wordnet

        g = load_wordnet(cfg.wordnet_dir, visual_only=cfg.visual_only)
        report["wordnet_nodes"] = len(g)
        report["lexnames"] = g.g.graph.get("lexnames", {})
        log(f"wordnet: {len(g):,} noun synsets ({time.perf_counter() - t0:.1f}s)")
    if cfg.zh:
        from graph.chinese import add_zh_labels

        report["zh_labels_added"] = add_zh_labels(g)
        log(f"chinese labels: {report['zh_labels_added']:,} nodes")
    for f in cfg.user_files:
        from graph.userfile import merge_user_concepts

        report[f"user:{Path(f).name}"] = r = merge_user_concepts(g, f)
        log(f"user concepts {f}: {r}")
    if cfg.links:
        from graph.linkgraph import merge_link_graph

        report["links"] = r = merge_link_graph(g, cfg.links, quantile=cfg.link_quantile)
        log(f"link graph {cfg.links}: {r}")
    if cfg.mine_from is not None:
        report["mined"] = _merge_mined_tags(g, cfg, store, log)
    g.finalize()
    g.save(cfg.out, graphml=cfg.graphml)
    report["seconds"] = round(time.perf_counter() - t0, 2)
    report["stats"] = g.stats()
    from graph.report import graph_report

    report["report"] = str(graph_report(Path(cfg.out) / "report.html", report["stats"], lexnames=report.get("lexnames")))
    return g, report


def _merge_mined_tags(g, cfg: GraphBuildConfig, store, log) -> dict:
    """Tags mined from the captions of ``cfg.mine_from`` ('' = ``store``), merged into ``g``."""
    from curation.store import Store
    from graph.bm25 import Tokenizer
    from graph.mined import embed_texts, merge_mined, mine_tags
    from graph.wordnet import noun_exceptions, noun_lemmas

    src = Store(cfg.mine_from) if cfg.mine_from else store
    if src is None or not src.exists():
        raise ValueError(f"mine_from: no dataset at {cfg.mine_from!r}")
    texts = _captions_of(src)
    nouns = noun_lemmas(Path(cfg.wordnet_dir))
    tok = Tokenizer(nouns, exceptions=noun_exceptions(Path(cfg.wordnet_dir)))
    tags = mine_tags(texts, tok, nouns, min_count=cfg.mine_min_count, max_tags=cfg.mine_max_tags)
    emb = embed_texts([t for t, _ in tags]) if tags else None
    r = merge_mined(g, tags, emb, branching=cfg.mine_branching, leaf_size=cfg.mine_leaf_size)
    log(f"mined tags from {len(texts):,} captions: {r}")
    return r


@register_step("graph_build", GraphBuildConfig)
def _graph_build_step(ctx, cfg: GraphBuildConfig):
    """Build the concept graph (WordNet + zh labels + user files + links + mined tags)."""
    from pathlib import Path

    if (Path(cfg.out) / "meta.json").exists() and not ctx.overwrite:  # a re-run pipeline keeps its graph
        print(f"graph_build: a graph already exists at {cfg.out}; pass --overwrite to rebuild it")
        return {"status": "skipped", "graph": cfg.out}
    _, report = build_graph(cfg, ctx.store)
    return {k: v for k, v in report.items() if k not in ("stats", "lexnames")} | {"nodes": report["stats"]["nodes"]}


# --- tagging stage ----------------------------------------------------------------------------

from graph.tagging import TagConfig  # noqa: E402  (pure pydantic/numpy: cheap)


class GraphTagConfig(TagConfig, StageConfig):
    graph: str = Field(description="concept graph folder written by `curate graph build`")


def _caption_texts(captions: list) -> list[list[str]]:
    return [[c["text"] for c in (caps or []) if c and c.get("text")] for caps in captions]


@register_stage
class GraphTagStage(Stage):
    """Concept tags with BM25 scores for every row's captions, propagated to ancestors."""

    name = "graph_tag"
    config_model = GraphTagConfig
    input_columns = ["captions"]
    output_schema = CONCEPT_TAGS.schema
    batch_size = 512

    @property
    def resources(self) -> Resources:
        return Resources(num_cpus=1, memory_mb=1500)

    def _tagger(self):
        from graph.concepts import ConceptGraph
        from graph.tagging import Tagger

        tag_cfg = TagConfig(**self.config.model_dump(exclude={"graph"}))
        return Tagger(ConceptGraph.load(self.config.graph), tag_cfg)

    def prepare(self, dataset) -> None:
        """BM25 statistics need the whole corpus: count once here, ship only idf to workers."""
        meta = json.loads((Path(self.config.graph) / "meta.json").read_text()) if (Path(self.config.graph) / "meta.json").exists() else {}
        tagger = self._tagger()
        caps = _caption_texts(dataset.to_table(columns=["captions"]).column("captions").to_pylist())
        tagger.fit(t for row in caps for t in row)
        self._bm25 = tagger.scorer.state()
        self._graph_digest = meta.get("digest", "")

    def fingerprint(self) -> str:
        import hashlib

        base = super().fingerprint()
        extra = f"{getattr(self, '_graph_digest', '')}:{getattr(self, '_bm25', {}).get('n_docs', '')}"
        return hashlib.sha1(f"{base}:{extra}".encode()).hexdigest()[:12]

    def setup(self) -> None:
        self.tagger = self._tagger()
        self.tagger.scorer.load_state(self._bm25)

    def process_batch(self, batch):
        texts = _caption_texts(batch.column("captions").to_pylist())
        limit = self.config.max_caption_chars
        self.stats.count("rows_without_caption", sum(1 for t in texts if not t))
        self.stats.count("captions_truncated", sum(1 for row in texts for t in row if len(t) > limit))
        out = self.tagger.tag_rows(texts)
        n_tags = out["tag_concepts"].value_lengths().to_numpy(zero_copy_only=False)
        self.stats.count("rows_untagged", int((n_tags == 0).sum()))
        self.stats.count("tags", int(n_tags.sum()))
        return out

    def __getstate__(self):
        d = dict(self.__dict__)
        d.pop("tagger", None)
        return d


# --- resampling stage ------------------------------------------------------------------------

from graph.resample import ResampleConfig  # noqa: E402


class ResampleStepConfig(ResampleConfig, StageConfig):
    graph: Optional[str] = Field(None, description="concept graph (node weights, labels for the prior and report)")
    curriculum_column: str = Field("prof_curriculum", description="profiling column copied to rs_stage when present")
    auto_tag: bool = Field(True, description="run graph_tag first when the tag columns are missing")


@register_stage
class ResampleStage(Stage):
    """Per-row sampling weight and copies toward a concept prior (solved once on the driver)."""

    name = "resample_weights"
    config_model = ResampleStepConfig
    input_columns = ["id"]
    output_schema = RESAMPLE.schema
    batch_size = 4096

    num_cpus = 0.5

    def prepare(self, dataset) -> None:
        from graph.resample import read_prior, resample

        cfg = self.config
        missing = [c for c in CONCEPT_TAGS.columns if c not in dataset.schema.names]
        if missing:
            raise ValueError(f"resample needs the tag columns {missing}: run `curate graph tag --dataset ... --graph ...` first")
        cols = ["id", "captions", *CONCEPT_TAGS.columns]
        has_cur = cfg.curriculum_column in dataset.schema.names
        t = dataset.to_table(columns=cols + ([cfg.curriculum_column] if has_cur else []))
        graph = None
        if cfg.graph:
            from graph.concepts import ConceptGraph

            graph = ConceptGraph.load(cfg.graph)
        weights = {n: w for n, w in graph.g.nodes(data="weight") if w != 1.0} if graph else None
        prior = aliases = None
        if cfg.prior != "uniform":
            prior = read_prior(cfg.prior)
            if graph:
                aliases = {k: graph.resolve(k) or [k] for k in prior}
        res = resample(
            t.column("tag_concepts").to_pylist(),
            t.column("tag_scores").to_pylist(),
            t.column("tag_direct").to_pylist(),
            ResampleConfig(**cfg.model_dump(include=set(ResampleConfig.model_fields))),
            concept_weight=weights,
            prior=prior,
            aliases=aliases,
            concept_depth=dict(graph.g.nodes(data="depth")) if graph else None,
        )
        ids = t.column("id").to_pylist()
        stage = [int(x or 0) for x in t.column(cfg.curriculum_column).to_pylist()] if has_cur else [0] * len(ids)
        self._by_id = {i: (float(e), int(c), s) for i, e, c, s in zip(ids, res.expected, res.copies, stage)}
        caps = [(row[0]["text"] if row else "") for row in t.column("captions").to_pylist()]
        self._driver = {
            "result": res,
            "graph": graph,
            "ids": ids,
            "captions": caps,
            "stage": stage,
            "tags": t.column("tag_concepts").to_pylist(),
        }

    def fingerprint(self) -> str:
        import hashlib

        ids = sorted(getattr(self, "_by_id", {}).items())[:50]
        return hashlib.sha1(f"{super().fingerprint()}:{ids}".encode()).hexdigest()[:12]

    def process_batch(self, batch):
        got = [self._by_id.get(i, (0.0, 0, 0)) for i in batch.column("id").to_pylist()]
        self.stats.count("rows_dropped", sum(1 for g in got if g[1] == 0))
        self.stats.count("rows_upsampled", sum(1 for g in got if g[1] > 1))
        return {"rs_weight": [g[0] for g in got], "rs_copies": [g[1] for g in got], "rs_stage": [g[2] for g in got]}

    def __getstate__(self):
        d = dict(self.__dict__)
        d.pop("_driver", None)
        return d


def run_resample(ctx, cfg: ResampleStepConfig):
    """Tag if needed, compute weights (a committed stage), write the manifest and the report."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from curation.runner import run_stage
    from graph.report import resample_report

    store = ctx.store
    results = []
    if cfg.auto_tag and CONCEPT_TAGS.columns[0] not in store.open().schema.names:
        if not cfg.graph:
            raise ValueError("the dataset has no tag columns and no graph was given: pass --graph to tag it first")
        results.append(run_stage(store, GraphTagStage({"graph": cfg.graph}), show_progress=ctx.show_progress))
    stage = ResampleStage(cfg)
    res = run_stage(store, stage, overwrite=ctx.overwrite, show_progress=ctx.show_progress)
    results.append(res)
    drv = getattr(stage, "_driver", None)
    if drv is None:
        return results
    r = drv["result"]
    out_dir = store.state_dir / "graph" / f"resample-v{res.version}"
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest = pa.table(
        {
            "id": drv["ids"],
            "copies": pa.array(r.copies, pa.int32()),
            "weight": r.expected,
            "stage": pa.array(drv["stage"], pa.int32()),
        }
    ).filter(pa.array(r.copies > 0))
    manifest = manifest.sort_by([("stage", "ascending"), ("id", "ascending")])
    pq.write_table(manifest, out_dir / "manifest.parquet")
    graph = drv["graph"]
    label = graph.display if graph else (lambda c: c)
    settings = cfg.model_dump(mode="json") | {"dataset_version": res.version, "cap_t_solved": r.cap_t}
    report = resample_report(
        out_dir / "report.html", r, label=label, row_ids=drv["ids"], row_captions=drv["captions"], row_tags=drv["tags"], settings=settings
    )
    summary = {k: v for k, v in r.after.items() if k != "frequencies"}
    before = {k: v for k, v in r.before.items() if k != "frequencies"}
    (out_dir / "summary.json").write_text(json.dumps({"before": before, "after": summary, "settings": settings}, indent=2, default=str))
    res.extra.update(
        {
            "manifest": str(out_dir / "manifest.parquet"),
            "report": str(report),
            "entropy": f"{before['entropy_normalised']} -> {summary['entropy_normalised']}",
            "max_over_median": f"{before['max_over_median']} -> {summary['max_over_median']}",
            "target_size": int(r.copies.sum()),
        }
    )
    return results


@register_step("resample", ResampleStepConfig)
def _resample_step(ctx, cfg: ResampleStepConfig):
    """Tagged resampling: rs_* columns, a resampled manifest and an HTML report."""
    return run_resample(ctx, cfg)[-1]
