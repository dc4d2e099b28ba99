"""Retrieval over a built index: by vector, row id, image or text ("find more like this").

The review UI and active curation call ``Retriever``: query with a bad image or prompt, get
the rows (and so the data clusters) nearest to it. Queries are encoded in the index's own
space: ``vec_desc`` by the training-free descriptor, profiling embedding columns by the model
recorded in ``<state>/profiling/models.json`` (the profiling engine's embed registry).
No Ray here: a retriever is a small in-process object.

Random weights: ``models.json`` also says whether a profiling embedding group was made by randomly
initialised weights (tests, demos, no real weights offline). Its vectors, similarities and the
scores computed from them are noise, so every consumer asks ``check_random_weights`` first: it
refuses with one line naming the column group, why and the fix, unless the caller passes
``allow_random_weights`` (then it returns what to mark as random-derived in the output).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from engines.vector.index import VectorError, check_fresh, clean_vectors, load_index, search, to_matrix

__all__ = [
    "Retriever",
    "index_dir",
    "index_relpath",
    "pull_index",
    "push_index",
    "model_record",
    "RandomWeightsError",
    "DERIVED_FROM",
    "random_weight_sources",
    "refuse_random_weights",
    "check_random_weights",
]

log = logging.getLogger(__name__)


def index_relpath(column: str) -> str:
    """The index folder of ``column`` inside the state dir (and under ``<uri>/_curation/``)."""
    return f"vector/index-{column}"


def index_dir(store: Any, column: str) -> Path:
    """Where the index over ``column`` of a dataset lives (next to the dataset's other state)."""
    return Path(store.state_dir) / index_relpath(column)


def pull_index(store: Any, column: str) -> Path:
    """The local index folder, first fetched from the dataset's object store when the dataset is
    remote and this machine's copy is missing or has another manifest (``Store.pull_state``):
    any node finds an index another node built. Local datasets: just the folder. A column the
    dataset does not have is named as such (not as a missing index that a build would not mend)."""
    import pyarrow as pa

    schema = store.open().schema
    if column not in schema.names:
        vectors = [f.name for f in schema if pa.types.is_fixed_size_list(f.type)]
        raise VectorError(f"no column {column!r} in {store.uri}; its vector columns: {', '.join(vectors) or 'none'}")
    if hasattr(store, "pull_state") and store.pull_state(index_relpath(column)):
        log.info("index on %s fetched from %s/_curation/%s", column, store.uri, index_relpath(column))
    return index_dir(store, column)


def push_index(store: Any, column: str) -> list[str]:
    """Upload a saved index folder to the dataset's object store (manifest last); no-op locally."""
    return store.push_state(index_relpath(column)) if hasattr(store, "push_state") else []


def model_record(store: Any, column: str) -> dict | None:
    """The profiling engine's note on the model behind an embedding column, if any."""
    from curation.schema import group_of
    from engines.profiling.embed import MODELS_RECORD

    p = Path(store.state_dir) / MODELS_RECORD
    if not p.exists():
        return None
    return json.loads(p.read_text()).get(group_of(column))


class RandomWeightsError(VectorError):
    """An embedding, or a score computed from one, came from randomly initialised weights and its
    consumer was not told to accept that (``allow_random_weights`` / ``--allow-random-weights``)."""


# scores that a profiling stage computes from another group's embeddings: noise whenever those
# embeddings are (the aesthetics head reads prof_clip_image)
DERIVED_FROM: dict[str, str] = {"prof_aesthetic": "prof_clip"}


def random_weight_sources(store: Any, columns: Any) -> dict[str, dict[str, str]]:
    """``{column: {"group", "why"}}`` for each of ``columns`` whose values came from randomly
    initialised weights, by the profiling engine's record (``profiling/models.json``). A column
    with no record (ingested embeddings, descriptors, plain signals) is not listed."""
    from curation.schema import group_of
    from engines.profiling.embed import MODELS_RECORD

    p = Path(store.state_dir) / MODELS_RECORD
    models = json.loads(p.read_text()) if p.is_file() else {}
    out: dict[str, dict[str, str]] = {}
    for c in dict.fromkeys(columns):
        group = group_of(c)
        rec = models.get(group)
        if rec is not None and rec.get("random_weights"):
            out[c] = {"group": group, "why": f"made by randomly initialised weights ({rec.get('model', '?')})"}
            continue
        src = DERIVED_FROM.get(group)
        rec = models.get(src) if src else None
        if rec is not None and rec.get("random_weights"):
            out[c] = {
                "group": group,
                "why": f"computed from {src} embeddings made by randomly initialised weights ({rec.get('model', '?')})",
            }
    return out


def refuse_random_weights(sources: dict[str, dict[str, str]], *, consumer: str, allow: bool) -> dict[str, dict[str, str]]:
    """Raise ``RandomWeightsError`` (one line: what, why, the fix) when ``sources`` (from
    ``random_weight_sources``) is not empty, unless ``allow``; return ``sources``, which the
    caller then writes into its output's metadata as random-derived."""
    if not sources or allow:
        return sources
    by_group: dict[tuple[str, str], list[str]] = {}
    for c, s in sources.items():
        by_group.setdefault((s["group"], s["why"]), []).append(c)
    what = "; ".join(f"column group {g!r} ({', '.join(cs)}) was {why}" for (g, why), cs in by_group.items())
    groups = ", ".join(dict.fromkeys(g for g, _ in by_group))
    raise RandomWeightsError(
        f"{consumer} refused: {what}, so its values are noise. Re-run the profiling stage for {groups} with real weights "
        "(a model path instead of random_init), or pass --allow-random-weights (config: allow_random_weights: true) "
        "to go on with the output marked random-derived"
    )


def check_random_weights(store: Any, columns: Any, *, consumer: str, allow: bool = False) -> dict[str, dict[str, str]]:
    """The one check every consumer of embeddings or scores runs: ``refuse_random_weights`` over
    ``random_weight_sources(store, columns)``."""
    return refuse_random_weights(random_weight_sources(store, columns), consumer=consumer, allow=allow)


def _embedder_for(store: Any, column: str):
    rec = model_record(store, column)
    if rec is None:
        raise VectorError(f"no model recorded for {column!r} (profiling/models.json); cannot encode queries in its space")
    from engines.profiling.embed import EmbedModelConfig, load_embedder

    what = rec["model"].split(":", 1)[1] if ":" in rec["model"] else ""
    cfg = EmbedModelConfig(
        backend=rec["backend"],
        random_init=bool(rec.get("random_weights")),
        path=None if what in ("", "packaged default", "random-init tiny model") else what,
    )
    if rec.get("random_weights"):  # only reached with allow_random_weights (Retriever checks first)
        log.warning("%s was made by a randomly initialised model: retrieval results carry no meaning", column)
    return load_embedder(cfg)


class Retriever:
    """Nearest rows of a dataset for a query; refuses an index older than the dataset's rows, and
    one over embeddings made by random weights unless ``allow_random_weights`` (then every hit
    says ``random_weights: True`` and ``random_derived`` names why)."""

    def __init__(
        self, store: Any, column: str, *, nprobe: int | None = None, allow_stale: bool = False, allow_random_weights: bool = False
    ):
        self.store, self.column = store, column
        self.random_derived = check_random_weights(store, [column], consumer=f"retrieval over {column}", allow=allow_random_weights)
        self.index, self.manifest, labels = load_index(pull_index(store, column))
        self.ds = store.open()
        if allow_stale:
            try:
                check_fresh(self.manifest, self.ds, store.uri)
            except VectorError as e:
                log.warning("%s", e)
        else:
            check_fresh(self.manifest, self.ds, store.uri)
        self.label_to_id = dict(zip(labels.column("label").to_pylist(), labels.column("id").to_pylist()))
        self.nprobe = nprobe
        self._embedder = None

    # --- queries -------------------------------------------------------------------------
    def by_vector(self, v: np.ndarray, k: int = 20, exclude: set[str] | None = None) -> list[dict]:
        x, valid, skipped = clean_vectors(np.atleast_2d(np.asarray(v, np.float32)), normalize=self.manifest.config.get("normalize", True))
        if x.shape[1] != self.manifest.dim:
            raise VectorError(f"query has dimension {x.shape[1]}, index {self.column!r} has {self.manifest.dim}")
        if not valid.all():
            raise VectorError(f"query vector is unusable ({', '.join(skipped)})")
        extra = len(exclude or ())
        sims, labs = search(self.index, x, min(k + extra, max(self.index.ntotal, 1)), nprobe=self.nprobe)
        out = []
        for s, lab in zip(sims[0].tolist(), labs[0].tolist()):
            rid = self.label_to_id.get(lab)
            if lab < 0 or rid is None or (exclude and rid in exclude):
                continue
            hit = {"id": rid, "similarity": float(s), "rank": len(out) + 1}
            if self.random_derived:
                hit["random_weights"] = True  # noise: the caller was told and asked for it anyway
            out.append(hit)
            if len(out) == k:
                break
        return out

    def vector_of(self, row_id: str) -> np.ndarray:
        t = self.ds.to_table(columns=[self.column], filter=f"id = '{row_id.replace(chr(39), '')}'")
        if t.num_rows == 0:
            raise VectorError(f"no row with id {row_id!r}")
        x, null = to_matrix(t.column(self.column), self.manifest.dim)
        if null[0]:
            raise VectorError(f"row {row_id!r} has no {self.column} vector")
        return x[0]

    def by_id(self, row_id: str, k: int = 20) -> list[dict]:
        """Neighbours of a row (the row itself left out)."""
        return self.by_vector(self.vector_of(row_id), k, exclude={row_id})

    def by_image(self, data: bytes, k: int = 20) -> list[dict]:
        if self.column == "vec_desc":
            from engines.vector.descriptor import decode_gray, global_descriptor

            g = decode_gray(data)
            if not isinstance(g, np.ndarray):
                raise VectorError(f"query image unusable: {g.message}")
            return self.by_vector(global_descriptor(g), k)
        emb = self._model()
        if not emb.embeds_images:
            raise VectorError(f"{self.column!r} is a text embedding; image queries need an image-text model column")
        from engines.profiling.decode import decode_image

        d = decode_image(data)
        if not hasattr(d, "rgb"):
            raise VectorError(f"query image unusable: {d.message}")
        return self.by_vector(emb.embed_images([d.rgb])[0], k)

    def by_text(self, text: str, k: int = 20) -> list[dict]:
        if not text or not text.strip():
            raise VectorError("--text is empty: give the words to search for")
        if self.column in ("vec_desc",):
            raise VectorError(
                "vec_desc is an image descriptor: text queries need an index over "
                "prof_clip_image (image-text model) or prof_caption_emb (captions)"
            )
        return self.by_vector(self._model().embed_texts([text])[0], k)

    def _model(self):
        if self._embedder is None:
            self._embedder = _embedder_for(self.store, self.column)
        return self._embedder
