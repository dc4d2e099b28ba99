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
from collections import Counter
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from curation.errors import UserError
from curation.registry import register_stage, register_step
from curation.schema import CONCEPT_TAGS, RESAMPLE
from curation.stage import Resources, Stage, StageConfig

__all__ = [
    "GraphError",
    "GraphBuildConfig",
    "GraphTagConfig",
    "ResampleStepConfig",
    "GraphTagStage",
    "ResampleStage",
    "build_graph",
    "graph_problem",
    "check_resample_request",
    "run_resample",
]


class GraphError(UserError, ValueError):
    """A graph job the user's input or dataset cannot serve (no graph at the path, an empty graph,
    no source of concepts, missing tag columns); the message says what to run or pass. A
    ``UserError``: the CLI prints it as one line inside ``curate run`` as well."""


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


def graph_problem(path: str | Path) -> str | None:
    """What makes ``path`` unusable as a concept graph, as a one-line message (None: usable).
    Why: the jobs check this before Ray starts, and an empty graph would tag nothing and so
    silently blank every row's tags on ``--overwrite``."""
    import pyarrow.parquet as pq

    nodes = Path(path) / "nodes.parquet"
    if not nodes.exists():
        return f"no concept graph at {path}; build one with `curate graph build --out {path}`"
    if pq.read_metadata(nodes).num_rows == 0:
        return f"the concept graph at {path} has no concepts; rebuild it from WordNet, --user, --links or --mine-from"
    return None


class _Phases:
    """One log line per build phase with its own and the total elapsed time. Why: a build is a
    few library calls (no loop to put a bar with a rate on), and a user should see it move."""

    def __init__(self, log):
        self.log, self.t0 = log, time.perf_counter()
        self.last = self.t0

    def done(self, msg: str) -> None:
        now = time.perf_counter()
        self.log(f"{msg} ({now - self.last:.1f}s, {now - self.t0:.1f}s in all)")
        self.last = now


def _check_sources(cfg: GraphBuildConfig) -> None:
    """Refuse a build with no source of concepts (Chinese labels only label existing nodes), or
    naming files that are not there: before WordNet's half minute, not after it."""
    if not (cfg.wordnet or cfg.user_files or cfg.links or cfg.mine_from is not None):
        raise GraphError("nothing to build the graph from: keep WordNet or give --user, --links or --mine-from")
    for what, path in [*(("user concept file", u) for u in cfg.user_files), *([("entity link table", cfg.links)] if cfg.links else [])]:
        if not Path(path).is_file():
            raise GraphError(f"{what} not found: {path}")


def build_graph(cfg: GraphBuildConfig, store=None, log=print):
    """Build, merge, check and save the graph; returns (graph, report dict)."""
    from graph.concepts import ConceptGraph

    _check_sources(cfg)
    ph = _Phases(log)
    report: dict[str, Any] = {}
    g = _merge_sources(ConceptGraph(), cfg, store, report, ph)
    g.finalize()
    if len(g) == 0:
        raise GraphError(f"the sources gave no concepts, so no graph was saved to {cfg.out}")
    ph.done(f"checked: {len(g):,} nodes, {g.g.number_of_edges():,} edges")
    g.save(cfg.out, graphml=cfg.graphml)
    ph.done(f"wrote nodes and edges (Parquet{' + GraphML' if cfg.graphml else ''})")
    report["stats"] = g.stats()
    from graph.report import graph_report

    report["report"] = str(graph_report(Path(cfg.out) / "report.html", report["stats"], lexnames=report.get("lexnames")))
    ph.done("report written")
    report["seconds"] = round(time.perf_counter() - ph.t0, 2)
    return g, report


def _merge_sources(g, cfg: GraphBuildConfig, store, report: dict, ph: _Phases):
    """WordNet, Chinese labels, user files, links and mined tags, in that order, into ``g``."""
    if cfg.wordnet:
        from graph.wordnet import load_wordnet

        g = load_wordnet(cfg.wordnet_dir, visual_only=cfg.visual_only)
        report["wordnet_nodes"] = len(g)
        report["lexnames"] = g.g.graph.get("lexnames", {})
        ph.done(f"wordnet: {len(g):,} noun synsets")
    if cfg.zh:
        from graph.chinese import add_zh_labels

        report["zh_labels_added"] = add_zh_labels(g)
        ph.done(f"chinese labels: {report['zh_labels_added']:,} nodes")
    for f in cfg.user_files:
        from graph.userfile import merge_user_concepts

        report[f"user:{Path(f).name}"] = r = merge_user_concepts(g, f)
        ph.done(f"user concepts {f}: {r}")
    if cfg.links:
        from graph.linkgraph import merge_link_graph

        report["links"] = r = merge_link_graph(g, cfg.links, quantile=cfg.link_quantile)
        ph.done(f"link graph {cfg.links}: {r}")
    if cfg.mine_from is not None:
        report["mined"] = _merge_mined_tags(g, cfg, store, ph.log)
        ph.done("mined tags merged")
    return g


def _merge_mined_tags(g, cfg: GraphBuildConfig, store, log) -> dict:
    """Tags mined from the captions of ``cfg.mine_from`` ('' = ``store``), merged into ``g``."""
    from curation.store import Store
    from graph.bm25 import Tokenizer
    from graph.mined import embed_texts, merge_mined, mine_tags
    from graph.wordnet import noun_exceptions, noun_lemmas

    src = Store(cfg.mine_from) if cfg.mine_from else store
    if src is None or not src.exists():
        raise GraphError(f"mine_from: no dataset at {cfg.mine_from!r}")
    texts = _captions_of(src)
    nouns = noun_lemmas(Path(cfg.wordnet_dir))
    tok = Tokenizer(nouns, exceptions=noun_exceptions(Path(cfg.wordnet_dir)))
    tags = mine_tags(texts, tok, nouns, min_count=cfg.mine_min_count, max_tags=cfg.mine_max_tags)
    emb = embed_texts([t for t, _ in tags]) if tags else None
    r = merge_mined(g, tags, emb, branching=cfg.mine_branching, leaf_size=cfg.mine_leaf_size)
    log(f"mined tags from {len(texts):,} captions: {r}")
    return r


@register_step("graph_build", GraphBuildConfig, writes=frozenset())
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


TAGGER_RESOURCES = Resources(num_cpus=1, memory_mb=1500)  # a worker holding a tagger (graph, sense model)


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
        return TAGGER_RESOURCES

    def _tagger(self):
        return _tagger_of(self.config)

    def prepare(self, dataset) -> None:
        """BM25 statistics need the whole corpus: the workers count their fragments' captions
        (a phase of its own), the driver sums the counts and ships only idf to the taggers."""
        problem = graph_problem(self.config.graph)
        if problem:  # an empty graph would blank every row's tags
            raise GraphError(problem)
        meta = json.loads((Path(self.config.graph) / "meta.json").read_text()) if (Path(self.config.graph) / "meta.json").exists() else {}
        from curation.store import Store

        self._bm25 = corpus_idf(self.store or Store(dataset.uri), dataset.version, self.config, self.show_progress, self.concurrency)
        self._graph_digest = meta.get("digest", "")

    def fingerprint(self) -> str:
        import hashlib

        from graph.colloquial import colloquial_digest
        from graph.tagging import TAGGER_VERSION

        base = super().fingerprint()
        extra = f"{getattr(self, '_graph_digest', '')}:{getattr(self, '_bm25', {}).get('n_docs', '')}:v{TAGGER_VERSION}"
        if self.config.colloquial:  # tags depend on the everyday-names file: an edit re-tags
            extra += f":{colloquial_digest()}"
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


def _tagger_of(config: GraphTagConfig):
    """The tagger of ``config``'s graph and parameters, built once per worker process for both
    phases of graph_tag (its counts, then its tags: ``process_cached``); the key names the graph
    file's size and time, so a rebuilt graph is loaded anew."""
    from curation.runner import process_cached
    from graph.concepts import ConceptGraph
    from graph.tagging import Tagger

    tag_cfg = TagConfig(**config.model_dump(exclude={"graph"}))
    nodes = Path(config.graph) / "nodes.parquet"
    st = nodes.stat()
    key = f"tagger:{nodes.resolve()}:{st.st_size}:{st.st_mtime_ns}:{tag_cfg.model_dump_json()}"
    return process_cached(key, lambda: Tagger(ConceptGraph.load(config.graph), tag_cfg))


class _CaptionCounts:
    """A worker of graph_tag's counting phase: the BM25 corpus counts of one fragment's captions,
    tokenised as the tagger tokenises them. Counts add up, so the driver only sums them: its
    memory grows with the vocabulary, not with the rows, and no caption is read there."""

    def __init__(self, store, version: int, config: GraphTagConfig):
        self.ds = store.open(version)
        self.tagger = _tagger_of(config)  # the tag phase's, which the same process reuses

    def __call__(self, unit: pa.Table) -> pa.Table:
        fid = unit.column("fragment_id")[0].as_py()
        caps = self.ds.get_fragment(fid).to_table(columns=["captions"]).column("captions").to_pylist()
        c = self.tagger.count(t for row in _caption_texts(caps) for t in row)
        words, q = list(c.df), self.tagger.scorer.qcol
        return pa.table(
            {
                "n_docs": [c.n_docs],
                "total_len": [c.total_len],
                "words": pa.array([words], pa.list_(pa.string())),
                "df": pa.array([[c.df[w] for w in words]], pa.list_(pa.int64())),
                "query": pa.array([[w in q for w in words]], pa.list_(pa.bool_())),
            }
        )


def corpus_idf(store, version: int, config: GraphTagConfig, show_progress: bool = False, concurrency: int | None = None) -> dict:
    """The BM25 statistics the taggers need (``BM25Scorer.state_of``), from counts made on the
    workers, one unit a fragment."""
    from curation.runner import execute_units
    from graph.bm25 import BM25Counts, BM25Scorer

    total, query = BM25Counts(), set()

    def add(row: dict) -> None:
        total.n_docs += row["n_docs"]
        total.total_len += row["total_len"]
        total.df.update(dict(zip(row["words"], row["df"])))
        query.update(w for w, q in zip(row["words"], row["query"]) if q)

    execute_units(
        [{"fragment_id": f.fragment_id} for f in store.open(version).get_fragments()],
        _CaptionCounts,
        {"store": store, "version": version, "config": config},
        ray_options=TAGGER_RESOURCES.ray_options(),
        on_result=add,
        description="graph_tag: caption counts",
        concurrency=concurrency,
        show_progress=show_progress,
    )
    return BM25Scorer.state_of(total, query, config.epsilon)


# --- resampling stage ------------------------------------------------------------------------

from graph.resample import ResampleConfig, TagBlock  # noqa: E402  (pure numpy/pydantic)


class ResampleStepConfig(ResampleConfig, StageConfig):
    graph: Optional[str] = Field(None, description="concept graph (node weights, labels for the prior and report)")
    curriculum_column: str = Field("prof_curriculum", description="profiling column copied to rs_stage when present")
    auto_tag: bool = Field(True, description="run graph_tag first when the tag columns are missing")


def left_out_reasons(ds) -> np.ndarray:
    """Why each row of the Lance dataset (or fragment) ``ds`` will not be trained on (None: it will be), as
    export's default checks decide it (``pipelines.export.default_exclusions``: errors,
    duplicates, review rejects, the default rules such as ``nsfw``, too small or extreme images,
    no caption), each as a short label (``error``, ``duplicate``, ``rule:nsfw``, ``too_small``...).
    Why: copies given to such rows are lost at export (the trained set ends up below
    ``--target-size``) and their concepts skew the balance."""
    from pipelines.export import default_exclusions

    return np.array([None if r is None else _left_out_label(r) for r in default_exclusions(ds)], dtype=object)


def _left_out_label(reason: str) -> str:
    """Export's reason as counted here: details dropped (``error: truncated`` -> ``error``), every
    kind of duplicate one label, a rule by its name (``rule:nsfw``)."""
    if reason.startswith("rule:"):
        return reason
    if reason == "near_duplicate" or reason.startswith("duplicate"):
        return "duplicate"
    return reason.split(":", 1)[0]


class _FragmentTags(TagBlock):
    """One fragment's rows for the resampling solve, kept by a worker: the tags of the rows that
    will be trained on (a :class:`graph.resample.TagBlock`) and, for every row, why it is left
    out and its curriculum stage, for the weights it writes at the end (``write_plan``)."""

    def __init__(self, ds, fragment_id: int, curriculum_column: str):
        frag = ds.get_fragment(fragment_id)
        self.fid, self.why = fragment_id, left_out_reasons(frag)
        extra = [curriculum_column] if curriculum_column in frag.schema.names else []
        t = frag.to_table(columns=["id", *CONCEPT_TAGS.columns, *extra])
        self.ids = t.column("id")
        stage = pc.fill_null(t.column(curriculum_column), 0).cast(pa.int32()) if extra else None
        self.stage = stage.to_numpy() if extra else np.zeros(t.num_rows, np.int32)
        self.used = np.flatnonzero(self.why == None)  # noqa: E711 (elementwise)
        use = t if len(self.used) == t.num_rows else t.take(pa.array(self.used))
        super().__init__(use.column("tag_concepts"), use.column("tag_scores"), use.column("tag_direct"))

    def left_out(self) -> dict[str, int]:
        return dict(Counter(w for w in self.why if w))

    def write_plan(self, folder: str, part: tuple[np.ndarray, np.ndarray]) -> None:
        """Every row's weight, copies, stage and left-out reason (0 copies), in the fragment's
        order, to an Arrow file the stage's workers read for this fragment."""
        import pyarrow.feather as feather

        e, copies = part
        weight, n = np.zeros(len(self.why)), np.zeros(len(self.why), np.int32)
        weight[self.used], n[self.used] = e, copies
        t = pa.table(
            {"id": self.ids, "rs_weight": weight, "rs_copies": n, "rs_stage": self.stage, "reason": pa.array(list(self.why), pa.string())}
        )
        path = Path(folder) / f"{self.fid}.arrow"
        tmp = path.with_suffix(".tmp")
        feather.write_feather(t, str(tmp), compression="uncompressed")
        tmp.replace(path)


class _FragmentTagsLoader:
    """A holder's loader (``curation.holders``): one :class:`_FragmentTags` a fragment."""

    def __init__(self, store, version: int, curriculum_column: str):
        self.ds, self.curriculum_column = store.open(version), curriculum_column

    def __call__(self, unit: pa.Table) -> _FragmentTags:
        return _FragmentTags(self.ds, unit.column("fragment_id")[0].as_py(), self.curriculum_column)


@register_stage
class ResampleStage(Stage):
    """Per-row sampling weight and copies toward a concept prior: solved over the rows' tags kept
    on workers (one block a fragment, ``graph.resample.solve``), written from a plan file a
    fragment. The driver holds concept-length vectors and one weight and copy count per row."""

    name = "resample_weights"
    config_model = ResampleStepConfig
    input_columns = ["id"]
    output_schema = RESAMPLE.schema
    batch_size = 4096

    num_cpus = 0.5

    def prepare(self, dataset) -> None:
        """Solve the weights once over the rows that will be trained on; left-out rows get 0."""
        from curation.holders import Holders
        from curation.store import Store

        missing = [c for c in CONCEPT_TAGS.columns if c not in dataset.schema.names]
        if missing:
            raise GraphError(f"resample needs the tag columns {missing}: run `curate graph tag --dataset ... --graph ...` first")
        store = self.store or Store(dataset.uri)
        units = [{"fragment_id": f.fragment_id} for f in dataset.get_fragments()]
        loader = {"store": store, "version": dataset.version, "curriculum_column": self.config.curriculum_column}
        opts = Resources(num_cpus=1, memory_mb=500).ray_options()
        with Holders(
            units,
            _FragmentTagsLoader,
            loader,
            ray_options=opts,
            description="resample: rows' tags",
            concurrency=self.concurrency,
            show_progress=self.show_progress,
        ) as blocks:
            res = self._solve(blocks, dataset.count_rows())
            self._plan_dir = self._plan_folder(store, res)
            sizes = np.cumsum(blocks.map("rows"))[:-1]
            blocks.map("write_plan", str(self._plan_dir), each=list(zip(np.split(res.expected, sizes), np.split(res.copies, sizes))))

    def _solve(self, blocks, n_rows: int):
        from graph.resample import ResampleError, solve

        cfg = self.config
        self.left_out = dict(sorted(sum((Counter(c) for c in blocks.map("left_out")), Counter()).items()))
        if n_rows == sum(self.left_out.values()):
            raise ResampleError(f"no row of the {n_rows} can be trained on (left out: {self.left_out}): nothing to resample")
        graph = self._graph()
        res = solve(
            blocks,
            ResampleConfig(**cfg.model_dump(include=set(ResampleConfig.model_fields))),
            concept_weight={n: w for n, w in graph.g.nodes(data="weight") if w != 1.0} if graph else None,
            concept_depth=dict(graph.g.nodes(data="depth")) if graph else None,
            **self._prior(graph, blocks),
        )
        self._driver = {"result": res, "graph": graph, "left_out": self.left_out, "rows_used": len(res.expected)}
        return res

    def _graph(self):
        from graph.concepts import ConceptGraph

        return ConceptGraph.load(self.config.graph) if self.config.graph else None

    def _prior(self, graph, blocks) -> dict:
        """The prior and its aliases (:func:`checked_prior`); without a graph, its names are checked
        against the concepts tagged on the rows that will be trained on."""
        if self.config.prior == "uniform" or graph is not None:
            return checked_prior(self.config.prior, graph, None)
        seen = sorted({c for names, _, _ in blocks.map("concept_rows", True) for c in names})
        return checked_prior(self.config.prior, None, [seen])

    def _plan_folder(self, store, res) -> Path:
        """A folder named after the solve's result (its digest is also this run's fingerprint): a
        resumed run that solves the same weights writes to, and resumes, the same one."""
        import hashlib
        import shutil

        h = hashlib.sha1(res.expected.tobytes() + res.copies.tobytes() + json.dumps(self.left_out).encode())
        self._digest = h.hexdigest()[:16]
        root = store.state_dir / "graph" / "resample-plan"
        for old in root.glob("*") if root.exists() else []:
            if old.name != self._digest:
                shutil.rmtree(old, ignore_errors=True)
        (root / self._digest).mkdir(parents=True, exist_ok=True)
        return root / self._digest

    def fingerprint(self) -> str:
        import hashlib

        return hashlib.sha1(f"{super().fingerprint()}:{getattr(self, '_digest', '')}".encode()).hexdigest()[:12]

    def begin_fragment(self, fragment_id: int) -> None:
        import pyarrow.feather as feather

        self._part, self._pos = feather.read_table(str(Path(self._plan_dir) / f"{fragment_id}.arrow"), memory_map=True), 0

    def process_batch(self, batch):
        got = self._part.slice(self._pos, batch.num_rows)
        self._pos += batch.num_rows
        if got.column("id").to_pylist() != batch.column("id").to_pylist():  # the plan is in the fragment's order
            raise RuntimeError(f"resample: the weights planned for a fragment do not match its rows (plan {self._plan_dir})")
        copies, reason = got.column("rs_copies").to_numpy(), got.column("reason")
        self.stats.count("rows_dropped", int(((copies == 0) & reason.is_null().to_numpy()).sum()))
        for vc in pc.value_counts(reason.drop_null()).to_pylist():
            self.stats.count(f"rows_left_out_{vc['values']}", vc["counts"])
        self.stats.count("rows_upsampled", int((copies > 1).sum()))
        return {c: got.column(c).combine_chunks() for c in RESAMPLE.schema.names}

    def __getstate__(self):
        d = dict(self.__dict__)
        d.pop("_driver", None)
        return d


def checked_prior(prior_path: str, graph, tags: list | None) -> dict:
    """The prior file's weights and what each name resolves to, or a ``ResampleError`` naming
    the file, line and concept of each name that matches nothing (with a graph: no node by id,
    label or term; without one: no concept id in ``tags``, the trained-on rows' tag lists),
    since such a concept would silently weigh nothing."""
    from graph.resample import check_prior_concepts, read_prior

    if prior_path == "uniform":
        return {"prior": None, "aliases": None}
    prior = read_prior(prior_path)
    if graph is None:
        seen = {c for ts in tags or [] for c in (ts or [])}
        check_prior_concepts(prior_path, seen.__contains__, "no concept id tagged in the data (pass --graph to name concepts by label)")
        return {"prior": prior, "aliases": None}
    aliases = {k: graph.resolve(k) for k in prior}
    check_prior_concepts(prior_path, lambda k: bool(aliases.get(k)))
    return {"prior": prior, "aliases": aliases}


def check_resample_request(store, cfg: ResampleStepConfig) -> None:
    """What ``run_resample`` would refuse about the graph and the prior file, checked on the
    driver from the dataset's columns, before Ray starts: a misspelt prior concept is one line
    in a second, with the message the stage gives, not after a cluster start (and a tagging
    run). Raises ``GraphError`` (``ResampleError`` for the prior), both user errors."""
    from graph.concepts import ConceptGraph

    problem = graph_problem(cfg.graph) if cfg.graph else None
    if problem:
        raise GraphError(problem)
    names = store.open().schema.names
    tagged = CONCEPT_TAGS.columns[0] in names
    if cfg.auto_tag and not tagged and not cfg.graph:
        raise GraphError("the dataset has no tag columns and no graph was given: pass --graph to tag it first")
    if cfg.prior == "uniform":
        return
    if cfg.graph:
        checked_prior(cfg.prior, ConceptGraph.load(cfg.graph), None)
    elif tagged:  # the concepts tagged on any row, read in batches (concept-sized, not row-sized);
        # the stage then checks them against the rows that will be trained on

        seen: set[str] = set()
        for b in store.open().to_batches(columns=[CONCEPT_TAGS.columns[0]]):
            seen.update(c for c in pc.unique(pc.list_flatten(b.column(0))).to_pylist() if c is not None)
        checked_prior(cfg.prior, None, [sorted(seen)])


def run_resample(ctx, cfg: ResampleStepConfig):
    """Tag if needed, compute weights (a committed stage), write the manifest and the report."""
    import shutil

    from curation.runner import run_stage
    from graph.report import resample_report

    store = ctx.store
    results = []
    check_resample_request(store, cfg)  # before any tagging or stage work
    if cfg.auto_tag and CONCEPT_TAGS.columns[0] not in store.open().schema.names:
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
    ds = store.open(res.version)
    _write_manifest(ds, out_dir / "manifest.parquet")
    shutil.rmtree(stage._plan_dir.parent, ignore_errors=True)  # written into the rs_* columns now
    graph = drv["graph"]
    label = graph.display if graph else (lambda c: c)
    left_out = _left_out_note(drv["left_out"])
    settings = cfg.model_dump(mode="json") | {"dataset_version": res.version, "cap_t_solved": r.cap_t, "rows_left_out": left_out}
    report = resample_report(out_dir / "report.html", r, label=label, top=_top_rows(ds, r.expected), settings=settings)
    summary = {k: v for k, v in r.after.items() if k != "frequencies"}
    before = {k: v for k, v in r.before.items() if k != "frequencies"}
    rows = {"used": drv["rows_used"], "left_out": drv["left_out"]}
    doc = {"before": before, "after": summary, "rows": rows, "settings": settings}
    (out_dir / "summary.json").write_text(json.dumps(doc, indent=2, default=str))
    res.extra.update(
        {
            "manifest": str(out_dir / "manifest.parquet"),
            "report": str(report),
            "entropy": f"{before['entropy_normalised']} -> {summary['entropy_normalised']}",
            "max_over_median": f"{before['max_over_median']} -> {summary['max_over_median']}",
            "target_size": int(r.copies.sum()),
            "rows_left_out": left_out,
        }
    )
    return results


def _write_manifest(ds, path: Path) -> None:
    """The resampled set as a table of (id, copies, weight, stage), rows with copies only, read
    back from the committed ``rs_*`` columns (the driver never held the ids)."""
    import pyarrow.parquet as pq

    t = ds.to_table(columns=["id", "rs_copies", "rs_weight", "rs_stage"], filter="rs_copies > 0")
    schema = pa.schema([("id", pa.string()), ("copies", pa.int32()), ("weight", pa.float64()), ("stage", pa.int32())])
    t = t.rename_columns(schema.names).cast(schema)
    pq.write_table(t.sort_by([("stage", "ascending"), ("id", "ascending")]), path)


def _top_rows(ds, expected: np.ndarray, top: int = 20) -> list[dict]:
    """The ``top`` rows with the largest weights (id, weight, copies, caption, tags), for the
    report: read back by their weight, not kept on the driver for every row."""
    if not len(expected):
        return []
    floor = float(np.sort(expected)[-min(top, len(expected))])
    if floor <= 0:
        return []
    cols = ["id", "rs_weight", "rs_copies", "captions", "tag_concepts"]
    above = ds.to_table(columns=cols, filter=f"rs_weight > {floor!r}").to_pylist()  # fewer than ``top``
    ties = ds.to_table(columns=cols, filter=f"rs_weight = {floor!r}", limit=top - len(above)).to_pylist()  # many at the cap
    rows = sorted(above, key=lambda r: -r["rs_weight"]) + ties
    return [
        {
            "id": r["id"],
            "expected": r["rs_weight"],
            "copies": r["rs_copies"],
            "caption": (r["captions"] or [{}])[0].get("text") or "",
            "tags": r["tag_concepts"] or [],
        }
        for r in rows
    ]


def _left_out_note(counts: dict[str, int]) -> str:
    """The left-out rows in words ("3 (duplicate 2, error 1): 0 copies, ..."), for the summary and report."""
    n = sum(counts.values())
    if not n:
        return "0"
    return f"{n} ({', '.join(f'{k} {v}' for k, v in counts.items())}): 0 copies, not in the balance"


@register_step("resample", ResampleStepConfig, writes=frozenset(RESAMPLE.columns + CONCEPT_TAGS.columns))
def _resample_step(ctx, cfg: ResampleStepConfig):
    """Tagged resampling: rs_* columns, a resampled manifest and an HTML report."""
    return run_resample(ctx, cfg)[-1]
