"""``curate profile``: every signal of the Data Profiling Engine as a resumable column stage.

Each signal family is a registered stage (runnable alone with ``curate stage prof_ocr``) whose
columns are declared in ``curation.schema`` (groups ``prof_*``). ``curate profile`` runs the
configured ones in order through ``run_stage``, each committing one Lance version and resuming
per fragment after a kill. The model-free families (meta, hash, entropy, degradation) are fused
into one pass when run together, so an image is decoded once for all of them.

Model stages load their model once per Ray actor in ``setup()`` and ask for ``num_gpus`` when
configured. Heavy libraries are imported inside methods only.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any, ClassVar, Literal, Optional

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field
from rich.markup import escape

from curation.config import ConfigError
from curation.registry import register_stage, register_step
from curation.schema import (
    PROF_AESTHETIC,
    PROF_AIGC,
    PROF_BRISQUE,
    PROF_CAPTION,
    PROF_CLIP,
    PROF_DEGRADATION,
    PROF_ENTROPY,
    PROF_HASH,
    PROF_META,
    PROF_NSFW,
    PROF_OCR,
    PROF_SCORES,
    PROF_TEXT_EMB,
    PROF_VLM,
    embedding_type,
)
from curation.stage import SCHEDULING_KEYS, Stage, StageConfig
from engines.profiling.embed import EmbedModelConfig

__all__ = [
    "ProfileConfig",
    "run_profile",
    "CheapStage",
    "BrisqueStage",
    "OcrStage",
    "NsfwStage",
    "ClipStage",
    "TextEmbStage",
    "AestheticStage",
    "CaptionStage",
    "ScoresStage",
    "VlmStage",
    "AigcStage",
    "STAGE_ORDER",
]

CHEAP_FAMILIES = ("meta", "hash", "entropy", "degradation")
_GROUPS = {"meta": PROF_META, "hash": PROF_HASH, "entropy": PROF_ENTROPY, "degradation": PROF_DEGRADATION}


# --- shared config and decoding ----------------------------------------------------------------------


class ImageStageConfig(StageConfig):
    max_pixels: int = Field(64_000_000, ge=1, description="decompression-bomb cap on width x height, checked before decoding")
    max_file_bytes: int = Field(256 * 1024 * 1024, ge=1)
    max_side: Optional[int] = Field(512, ge=16, description="longest side of the working copy signals are measured on")
    num_cpus: float = Field(1.0, gt=0)
    num_gpus: float = Field(0.0, ge=0, description="GPUs per worker (model stages); 0 = CPU")
    batch_size: int = Field(64, ge=1)


class _ImageStage(Stage):
    """Decodes the batch's images safely; failures become per-row reasons in the stats."""

    input_columns: ClassVar[list[str]] = ["image", "image_uri"]

    def __init__(self, config=None, **kw):
        super().__init__(config, **kw)

    def decode(self, batch: pa.RecordBatch) -> list:
        from engines.profiling.decode import DecodeFailure, DecodeOptions, decode_rows

        opts = DecodeOptions(self.config.max_pixels, self.config.max_file_bytes, self.config.max_side)
        uris = batch.column("image_uri").to_pylist() if "image_uri" in batch.schema.names else None
        results = decode_rows(batch.column("image").to_pylist(), uris, opts)
        for r in results:
            if isinstance(r, DecodeFailure):
                self.stats.count(f"error_{r.reason}")
        return results

    def device(self) -> str:
        return "cuda" if self.config.num_gpus > 0 else "cpu"

    def setup(self) -> None:
        """Size OpenCV's thread pool to the CPUs Ray granted this worker: by default it starts one
        thread per core of the node, and on the small working copies its fork/join costs more than
        it saves while every other actor's threads compete for the same cores."""
        import cv2

        cv2.setNumThreads(max(1, round(self.config.num_cpus)))


# --- model-free families -----------------------------------------------------------------------------


class CheapFamilyConfig(ImageStageConfig):
    jpeg_quality: int = Field(75, ge=1, le=100, description="quality of the throwaway re-encode (prof_jpeg_bpp)")


class CheapConfig(CheapFamilyConfig):
    families: list[Literal["meta", "hash", "entropy", "degradation"]] = Field(default_factory=lambda: list(CHEAP_FAMILIES))


@register_stage
class CheapStage(_ImageStage):
    """Model-free signals (metadata, hashes, entropy, degradation) in one decode per image."""

    name = "prof_cheap"
    record_as = "prof_cheap"  # the families' own stages too: one record of the config their columns came from
    config_model = CheapConfig
    FAMILIES: ClassVar[tuple[str, ...] | None] = None

    def __init__(self, config=None, **kw):
        super().__init__(config, **kw)
        fams = self.FAMILIES or tuple(f for f in CHEAP_FAMILIES if f in self.config.families)
        self.families = fams
        self.output_schema = pa.schema([f for fam in fams for f in _GROUPS[fam].schema])

    def config_fingerprint(self) -> str:
        """Without the families: which of them a run computes follows from the columns present
        (``plan``), so a run of meta alone is no changed config for the hash columns made earlier
        by a run of all four, and the new rows of both get filled, not every row recomputed. The
        same for a family's own stage (``prof_entropy``...): a changed ``jpeg_quality`` there, after
        ``curate profile`` made the columns, recomputes them."""
        cfg = {k: v for k, v in self.config.model_dump(mode="json").items() if k not in SCHEDULING_KEYS | {"families"}}
        return hashlib.sha1(json.dumps({"stage": "prof_cheap", "cfg": cfg}, sort_keys=True).encode()).hexdigest()[:12]

    def fingerprint(self) -> str:
        """The families included: checkpoints of a run that wrote other columns are not reused."""
        return hashlib.sha1(f"{self.config_fingerprint()}:{','.join(self.families)}".encode()).hexdigest()[:12]

    def process_batch(self, batch: pa.RecordBatch) -> dict:
        from engines.profiling import cheap

        results = self.decode(batch)
        out: dict[str, list] = {}
        for fam in self.families:
            if fam == "meta":
                out.update(cheap.meta_columns(results))
            elif fam == "hash":
                out.update(cheap.hash_columns(results))
            elif fam == "entropy":
                out.update(cheap.entropy_columns(results, self.config.jpeg_quality))
            else:
                out.update(cheap.degradation_columns(results))
        return out


def _family_stage(fam: str, doc: str) -> type[CheapStage]:
    cls = type(
        f"{fam.title()}Stage",
        (CheapStage,),
        {
            "name": f"prof_{fam}",
            "config_model": CheapFamilyConfig,
            "FAMILIES": (fam,),
            "__doc__": doc,
            "__module__": __name__,
        },
    )
    return register_stage(cls)


MetaStage = _family_stage("meta", "Image metadata, decode status (prof_error) and compression ratio.")
HashStage = _family_stage("hash", "64-bit pHash and dHash for near-duplicate search.")
EntropyStage = _family_stage("entropy", "Border variance, JPEG re-encode bytes/pixel, luma entropy.")
DegradationStage = _family_stage("degradation", "Sharpness, noise, colour cast, exposure, contrast, colourfulness, watermark.")


# --- model stages ------------------------------------------------------------------------------------


class BrisqueConfig(ImageStageConfig):
    max_side: Optional[int] = Field(512, ge=16)
    batch_size: int = Field(32, ge=1)


@register_stage
class BrisqueStage(_ImageStage):
    """BRISQUE no-reference quality (its SVM ships in the brisque package)."""

    name = "prof_brisque"
    config_model = BrisqueConfig
    output_schema = PROF_BRISQUE.schema

    def setup(self) -> None:
        super().setup()
        from brisque import BRISQUE

        self.model = BRISQUE(url=False)

    def process_batch(self, batch: pa.RecordBatch) -> dict:
        import warnings

        from engines.profiling.decode import Decoded

        out = []
        for r in self.decode(batch):
            v = None
            if isinstance(r, Decoded) and min(r.array.shape[:2]) >= 16:
                try:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        v = float(self.model.score(r.array))
                except Exception as e:  # BRISQUE's fit can fail on flat images
                    self.stats.count(f"error_brisque_{type(e).__name__}")
                if v is not None and v != v:  # NaN
                    v = None
            elif isinstance(r, Decoded):
                self.stats.count("skipped_too_small_for_brisque")
            out.append(v)
        return {"prof_brisque": out}


class OcrConfig(ImageStageConfig):
    backend: Literal["rapidocr", "paddleocr"] = "rapidocr"
    model_dirs: dict[str, str] = Field(default_factory=dict, description="paddleocr: {det: DIR, rec: DIR}")
    min_confidence: float = Field(0.5, ge=0, le=1)
    max_side: Optional[int] = Field(1536, ge=16)
    batch_size: int = Field(16, ge=1)


@register_stage
class OcrStage(_ImageStage):
    """OCR (PaddleOCR models via rapidocr): text, boxes, confidences, text-area ratio, script."""

    name = "prof_ocr"
    config_model = OcrConfig
    output_schema = PROF_OCR.schema

    def __init__(self, config=None, **kw):
        super().__init__(config, **kw)
        if self.config.backend == "paddleocr":
            from engines.profiling.ocr import check_paddleocr

            try:
                check_paddleocr(self.config.model_dirs)  # on the driver, before any actor starts
            except ValueError as e:
                raise ConfigError(f"prof_ocr: {e}") from None

    def setup(self) -> None:
        super().setup()
        from engines.profiling.ocr import OcrEngine

        self.engine = OcrEngine(self.config.backend, self.config.model_dirs, self.config.min_confidence)

    def process_batch(self, batch: pa.RecordBatch) -> dict:
        from engines.profiling.ocr import ocr_columns

        out = ocr_columns(self.decode(batch), self.engine, on_error=self.stats.count)
        self.stats.count("rows_with_text", sum(1 for t in out["prof_ocr_text"] if t))
        return out


class NsfwConfig(ImageStageConfig):
    model_path: Optional[str] = Field(None, description="nudenet-compatible ONNX file (default: the one in the nudenet wheel)")
    max_side: Optional[int] = Field(
        639,
        ge=16,
        description="2 x the model's 320 input - 1: JPEGs decode at the smallest DCT scale that still gives the model at least 320 px",
    )
    batch_size: int = Field(32, ge=1)


@register_stage
class NsfwStage(_ImageStage):
    """NSFW score in [0, 1] from nudenet's exposed-body-part detector."""

    name = "prof_nsfw"
    config_model = NsfwConfig
    output_schema = PROF_NSFW.schema

    def setup(self) -> None:
        super().setup()
        from engines.profiling.nsfw import NsfwDetector

        gpu = self.config.num_gpus > 0
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if gpu else ["CPUExecutionProvider"]
        # intra-op threads = the CPUs Ray granted this actor, not every core of the node
        threads = None if gpu else max(1, round(self.config.num_cpus))
        self.detector = NsfwDetector(self.config.model_path, providers, threads=threads)

    def process_batch(self, batch: pa.RecordBatch) -> dict:
        from engines.profiling.nsfw import nsfw_columns

        return nsfw_columns(self.decode(batch), self.detector)


def _record_model(dataset: Any, column_group: str, cfg: EmbedModelConfig, dim: int, source: str = "config") -> None:
    """Note which model made an embedding column and where its path came from (config or the
    models cache): the report says so when weights are random."""
    import json

    from curation.store import Store
    from engines.profiling.embed import MODELS_RECORD, weights_are_random

    store = Store(dataset.uri)
    p = store.state_dir / MODELS_RECORD
    models = json.loads(p.read_text()) if p.exists() else {}
    rec = {"model": cfg.describe(), "backend": cfg.backend, "dim": dim, "random_weights": weights_are_random(cfg), "source": source}
    models[column_group] = rec
    store.write_json(MODELS_RECORD, models)


CACHE_MODELS = {"clip": "clip-vit-l14-laion2b", "aesthetic": "laion-aesthetic-l14"}
"""Catalogue entries (``curate models pull NAME``) a stage uses when its config names no model."""


def _clip_from_cache(cfg: ClipConfig) -> tuple[ClipConfig, str]:
    """``cfg`` with the pulled open_clip ViT-L/14 folder as its model when none is configured, and
    where the model came from: a user who pulled the weights need not copy their path."""
    from curation.models import SOURCE_CONFIG, resolve_weights

    if cfg.model is not None:
        return cfg, SOURCE_CONFIG
    path, source = resolve_weights(None, CACHE_MODELS["clip"])
    if path is None:
        return cfg, source
    return cfg.model_copy(update={"model": EmbedModelConfig(backend="open_clip", path=path)}), source


def _aesthetic_from_cache(cfg: AestheticConfig) -> tuple[AestheticConfig, str]:
    """``cfg`` with the pulled LAION aesthetic head when no weights are configured, and the source."""
    from curation.models import resolve_weights

    path, source = resolve_weights(cfg.weights, CACHE_MODELS["aesthetic"])
    return (cfg if path == cfg.weights else cfg.model_copy(update={"weights": path})), source


class ClipConfig(ImageStageConfig):
    model: Optional[EmbedModelConfig] = Field(None, description="image-text model; null = stage skipped by `curate profile`")
    caption: Literal["first", "longest"] = "first"
    dtype: Literal["float16", "float32"] = "float16"
    max_side: Optional[int] = Field(512, ge=16)
    batch_size: int = Field(32, ge=1)


@register_stage
class ClipStage(_ImageStage):
    """Image and caption embeddings and their cosine similarity (CLIP / CN-CLIP / open_clip)."""

    name = "prof_clip"
    config_model = ClipConfig
    output_schema = PROF_CLIP.schema
    input_columns = ["image", "image_uri", "captions"]

    def __init__(self, config=None, **kw):
        super().__init__(config, **kw)
        from engines.profiling.embed import BACKENDS, embed_dim

        self.config, self.source = _clip_from_cache(self.config)
        m = self.config.model
        if m is None:
            raise ConfigError(
                "prof_clip: set model, e.g. {backend: hf_clip, path: /models/clip-vit-large-patch14}; "
                "random_init: true gives a tiny random model (tests only)"
            )
        if m.backend == "minilm":
            raise ConfigError("prof_clip.model.backend: minilm embeds text only; use hf_clip, hf_chinese_clip or open_clip")
        assert m.backend in BACKENDS
        self.dim = embed_dim(m)
        t = embedding_type(self.dim, self.config.dtype)
        self.output_schema = pa.schema(
            [
                pa.field("prof_clip_image", t),
                pa.field("prof_clip_text", t),
                pa.field("prof_clip_sim", pa.float32()),
            ]
        )

    def prepare(self, dataset) -> None:
        _record_model(dataset, "prof_clip", self.config.model, self.dim, self.source)

    def setup(self) -> None:
        super().setup()
        from engines.profiling.embed import load_embedder

        self.model = load_embedder(self.config.model.model_copy(update={"device": self.device()} if self.config.num_gpus else {}))

    def process_batch(self, batch: pa.RecordBatch) -> dict:
        import numpy as np

        from engines.profiling.captions import profiled_caption
        from engines.profiling.decode import Decoded

        results = self.decode(batch)
        n = len(results)
        ok = [i for i, r in enumerate(results) if isinstance(r, Decoded)]
        texts = [profiled_caption(c, self.config.caption) for c in batch.column("captions").to_pylist()]
        has_text = [i for i, t in enumerate(texts) if t]
        img = self.model.embed_images([results[i].rgb for i in ok])
        txt = self.model.embed_texts([texts[i] for i in has_text])
        self.stats.count("no_caption", n - len(has_text))
        img_rows: list = [None] * n
        txt_rows: list = [None] * n
        for k, i in enumerate(ok):
            img_rows[i] = img[k]
        for k, i in enumerate(has_text):
            txt_rows[i] = txt[k]
        sim = [float(np.dot(a, b)) if a is not None and b is not None else None for a, b in zip(img_rows, txt_rows)]
        return {
            "prof_clip_image": _fixed_list(img_rows, self.dim, self.config.dtype),
            "prof_clip_text": _fixed_list(txt_rows, self.dim, self.config.dtype),
            "prof_clip_sim": pa.array(sim, pa.float32()),
        }


def _fixed_list(rows: list, dim: int, dtype: str) -> pa.Array:
    """Rows of vectors (or None) -> FixedSizeList array with nulls, without a Python-float detour."""
    import numpy as np

    np_t = np.float16 if dtype == "float16" else np.float32
    mat = np.zeros((len(rows), dim), np_t)
    valid = np.array([r is not None for r in rows], bool)
    for i, r in enumerate(rows):
        if r is not None:
            mat[i] = r
    values = pa.array(mat.ravel(), type=pa.float16() if dtype == "float16" else pa.float32())
    mask = pa.array(~valid) if not valid.all() else None
    return pa.FixedSizeListArray.from_arrays(values, dim, mask=mask)


class TextEmbConfig(StageConfig):
    model: EmbedModelConfig = Field(default_factory=lambda: EmbedModelConfig(backend="minilm"))
    caption: Literal["first", "longest"] = "first"
    dtype: Literal["float16", "float32"] = "float16"
    num_cpus: float = Field(1.0, gt=0)
    num_gpus: float = Field(0.0, ge=0)
    batch_size: int = Field(256, ge=1)


@register_stage
class TextEmbStage(Stage):
    """Caption-only embedding (all-MiniLM-L6-v2, shipped offline, by default)."""

    name = "prof_text_emb"
    config_model = TextEmbConfig
    output_schema = PROF_TEXT_EMB.schema
    input_columns = ["captions"]

    def __init__(self, config=None, **kw):
        super().__init__(config, **kw)
        from engines.profiling.embed import embed_dim

        self.dim = embed_dim(self.config.model)
        self.output_schema = pa.schema([pa.field("prof_caption_emb", embedding_type(self.dim, self.config.dtype))])

    def prepare(self, dataset) -> None:
        _record_model(dataset, "prof_text_emb", self.config.model, self.dim)

    def setup(self) -> None:
        from engines.profiling.embed import load_embedder

        upd = {"device": "cuda"} if self.config.num_gpus else {}
        self.model = load_embedder(self.config.model.model_copy(update=upd))

    def process_batch(self, batch: pa.RecordBatch) -> dict:
        from engines.profiling.captions import profiled_caption

        texts = [profiled_caption(c, self.config.caption) for c in batch.column("captions").to_pylist()]
        idx = [i for i, t in enumerate(texts) if t]
        emb = self.model.embed_texts([texts[i] for i in idx])
        rows: list = [None] * len(texts)
        for k, i in enumerate(idx):
            rows[i] = emb[k]
        self.stats.count("no_caption", len(texts) - len(idx))
        return {"prof_caption_emb": _fixed_list(rows, self.dim, self.config.dtype)}


class AestheticConfig(StageConfig):
    weights: Optional[str] = Field(None, description="LAION-style MLP head (.pth/.safetensors); null = no aesthetic column")
    num_cpus: float = Field(0.5, gt=0)
    batch_size: int = Field(1024, ge=1)


@register_stage
class AestheticStage(Stage):
    """Aesthetic score: a LAION-style MLP head (loaded from a file) over prof_clip_image."""

    name = "prof_aesthetic"
    config_model = AestheticConfig
    output_schema = PROF_AESTHETIC.schema
    input_columns = ["prof_clip_image"]

    def __init__(self, config=None, **kw):
        super().__init__(config, **kw)
        self.config, self.source = _aesthetic_from_cache(self.config)
        if not self.config.weights:
            raise ConfigError(
                "prof_aesthetic: set weights to a LAION-style head file, or `curate models pull laion-aesthetic-l14`; "
                "without it there is no aesthetic score"
            )
        if not Path(self.config.weights).is_file():
            raise ConfigError(f"prof_aesthetic.weights: file not found: {self.config.weights}")

    def prepare(self, dataset) -> None:
        from engines.profiling.aesthetics import load_head

        if "prof_clip_image" not in dataset.schema.names:
            raise ConfigError("prof_aesthetic reads prof_clip_image: run prof_clip first")
        _, dim = load_head(self.config.weights)
        have = dataset.schema.field("prof_clip_image").type.list_size
        if dim != have:
            raise ConfigError(
                f"prof_aesthetic.weights expects {dim}-d embeddings but prof_clip_image is {have}-d; "
                "use the head trained for the configured CLIP model"
            )
        _record_head(dataset, self.config.weights, dim, self.source)

    def setup(self) -> None:
        from engines.profiling.aesthetics import load_head

        self.head, self.dim = load_head(self.config.weights)

    def process_batch(self, batch: pa.RecordBatch) -> dict:
        import numpy as np

        from engines.profiling.aesthetics import score_embeddings

        col = batch.column("prof_clip_image")
        valid = np.asarray(col.is_valid())
        out: list = [None] * len(col)
        if valid.any():
            flat = col.filter(pa.array(valid)).flatten().to_numpy(zero_copy_only=False).astype(np.float32)
            scores = score_embeddings(self.head, flat.reshape(-1, self.dim))
            for k, i in enumerate(np.flatnonzero(valid)):
                out[int(i)] = float(scores[k])
        return {"prof_aesthetic": pa.array(out, pa.float32())}


def _record_head(dataset: Any, weights: str, dim: int, source: str) -> None:
    """Note the aesthetic head and where it came from in models.json (the report lists it). The
    head's own weights are not random; when its input, prof_clip_image, is, the text says so and
    ``derived_random`` is set, while consumers keep flagging it through ``DERIVED_FROM`` (prof_clip)."""
    from curation.store import Store
    from engines.profiling.embed import MODELS_RECORD

    store = Store(dataset.uri)
    models = store.read_json(MODELS_RECORD) or {}
    random_input = bool((models.get("prof_clip") or {}).get("random_weights"))
    what = f"laion-mlp-head:{weights}" + (" (from the models cache)" if source != "config" else "")
    what += " over prof_clip_image from random weights" if random_input else ""
    rec = {"model": what, "backend": "aesthetic_head", "dim": dim, "random_weights": False, "source": source}
    rec["derived_random"] = random_input
    models["prof_aesthetic"] = rec
    store.write_json(MODELS_RECORD, models)


class CaptionConfig(StageConfig):
    caption: Literal["first", "longest"] = "first"
    batch_size: int = Field(1024, ge=1)


@register_stage
class CaptionStage(Stage):
    """Caption length in tokens (jieba for Chinese), language, and overlap with OCR text."""

    name = "prof_caption"
    config_model = CaptionConfig
    output_schema = PROF_CAPTION.schema
    input_columns = ["captions"]

    def __init__(self, config=None, **kw):
        super().__init__(config, **kw)

    num_cpus = 0.5

    def prepare(self, dataset) -> None:
        # OCR overlap only when the OCR stage has run; otherwise that column stays null
        self.input_columns = ["captions", "prof_ocr_text"] if "prof_ocr_text" in dataset.schema.names else ["captions"]

    def process_batch(self, batch: pa.RecordBatch) -> dict:
        from engines.profiling.captions import caption_columns

        ocr = batch.column("prof_ocr_text").to_pylist() if "prof_ocr_text" in batch.schema.names else None
        return caption_columns(batch.column("captions").to_pylist(), ocr, self.config.caption)


def _note_dropped_inputs(dataset: Any, cols: list[str]) -> dict[str, str]:
    """The quality components made by random weights (left out of ``prof_quality``), noted in
    models.json under prof_scores so the report says so; the note goes when none is left out."""
    from curation.store import Store
    from engines.profiling import scores
    from engines.profiling.embed import MODELS_RECORD

    store = Store(dataset.uri)
    dropped = scores.random_quality_inputs(store, cols)
    models = store.read_json(MODELS_RECORD) or {}
    if dropped:
        why = "; ".join(f"{c} ({w})" for c, w in dropped.items())
        what = f"composite scores: prof_quality leaves out {why}; the other weights renormalised"
        models["prof_scores"] = {"model": what, "backend": "scores", "random_weights": False, "dropped_random": dropped}
    elif models.pop("prof_scores", None) is None:
        return dropped  # nothing dropped now or before: models.json stays as it is
    store.write_json(MODELS_RECORD, models)
    return dropped


class ScoresConfig(StageConfig):
    curriculum_bins: int = Field(5, ge=2, le=100, description="number of complexity quantile bins")
    batch_size: int = Field(4096, ge=1)


@register_stage
class ScoresStage(Stage):
    """Composite quality and complexity scores, the curriculum bin (complexity quantiles) and the
    watermark score (OCR-box layout when prof_ocr ran, else the cheap pixel cue)."""

    name = "prof_scores"
    config_model = ScoresConfig
    output_schema = PROF_SCORES.schema

    def __init__(self, config=None, **kw):
        super().__init__(config, **kw)
        self.edges: list[float] = []
        self.dropped: dict[str, str] = {}

    num_cpus = 0.5

    def config_fingerprint(self) -> str:
        """The config and ``SCORES_VERSION``: columns scored by older code are scored anew."""
        from engines.profiling.scores import SCORES_VERSION

        return hashlib.sha1(f"{super().config_fingerprint()}:v{SCORES_VERSION}".encode()).hexdigest()[:12]

    def prepare(self, dataset) -> None:
        from engines.profiling import scores

        cols = scores.input_columns(dataset.schema.names)
        if not cols:
            raise ConfigError("prof_scores needs profile columns: run the cheap stages (prof_cheap) first")
        self.input_columns = cols
        self.dropped = _note_dropped_inputs(dataset, cols)
        comp_cols = [c for c in cols if c in scores.COMPLEXITY_WEIGHTS]  # not the OCR lists: edges need complexity only
        t = dataset.to_table(columns=comp_cols or ["id"])
        comp = scores.complexity_score({c: t.column(c).to_pylist() for c in comp_cols}, t.num_rows)
        self.edges = scores.curriculum_edges(comp, self.config.curriculum_bins)

    def process_batch(self, batch: pa.RecordBatch) -> dict:
        from engines.profiling import scores

        cols = {c: batch.column(c).to_pylist() for c in batch.schema.names}
        n = batch.num_rows
        cols = scores.with_watermark_score(cols, n)
        comp = scores.complexity_score(cols, n)
        for c in self.dropped:
            self.stats.count(f"quality_without_random_{c}", n)
        if "prof_ocr_boxes" not in cols and ("prof_watermark" in cols or "prof_watermark_overlay" in cols):
            self.stats.count("watermark_from_pixel_cue_only", n)  # prof_ocr not run: the weaker pixel cues
        return {
            "prof_watermark_score": cols["prof_watermark_score"],
            "prof_quality": scores.quality_score(cols, n, exclude=self.dropped),
            "prof_complexity": comp,
            "prof_curriculum": scores.curriculum_bins(comp, self.edges),
        }


# --- plug-in transformers models (engines/profiling/vlm.py, aigc.py; docs/plugin-models.md) ----------


def _record_models(dataset: Any, group: str, records: dict[str, dict]) -> None:
    """Note the models behind a plug-in group in models.json (random weights if any of them is)."""
    from curation.store import Store
    from engines.profiling.embed import MODELS_RECORD

    store = Store(dataset.uri)
    models = store.read_json(MODELS_RECORD) or {}
    models[group] = {
        "model": "; ".join(r["model"] for r in records.values()),
        "backend": ", ".join(dict.fromkeys(r["backend"] for r in records.values())),
        "random_weights": any(r["random_weights"] for r in records.values()),
        "models": records,
    }
    store.write_json(MODELS_RECORD, models)


def _checked(stage: str, check, *args, **kw):
    from engines.profiling.hf_local import ModelDirError

    try:
        return check(*args, **kw)
    except ModelDirError as e:
        raise ConfigError(f"{stage}.{e}") from None


class VlmConfig(ImageStageConfig):
    caption_model: Optional[str] = Field(None, description="local BlipForConditionalGeneration folder -> prof_vlm_caption")
    match_model: Optional[str] = Field(None, description="local BlipForImageTextRetrieval folder -> prof_vlm_match (ITM probability)")
    caption: Literal["first", "longest"] = Field("first", description="the row's caption the verifier scores")
    max_new_tokens: int = Field(30, ge=1, le=256)
    num_beams: int = Field(1, ge=1, le=16)
    max_text_tokens: int = Field(64, ge=8)
    batch_size: int = Field(16, ge=1)


@register_stage
class VlmStage(_ImageStage):
    """Generated caption and caption-image match probability (BLIP captioner / ITM verifier)."""

    name = "prof_vlm"
    config_model = VlmConfig
    output_schema = PROF_VLM.schema
    input_columns = ["image", "image_uri", "captions"]

    def __init__(self, config=None, **kw):
        super().__init__(config, **kw)
        from engines.profiling.hf_local import check_model_dir
        from engines.profiling.vlm import CAPTION_ARCH, MATCH_ARCH

        c = self.config
        if not c.caption_model and not c.match_model:
            raise ConfigError("prof_vlm: set caption_model and/or match_model to a local BLIP model folder; nothing is downloaded")
        for field, arch in (("caption_model", CAPTION_ARCH), ("match_model", MATCH_ARCH)):
            if getattr(c, field):
                _checked("prof_vlm", check_model_dir, getattr(c, field), field, (arch,), tokenizer=True)

    def prepare(self, dataset) -> None:
        from engines.profiling.hf_local import model_record

        recs = {"caption": ("caption_model", "blip-caption"), "match": ("match_model", "blip-itm")}
        cfg = self.config
        records = {k: model_record(kind, getattr(cfg, f), "transformers") for k, (f, kind) in recs.items() if getattr(cfg, f)}
        _record_models(dataset, "prof_vlm", records)

    def setup(self) -> None:
        super().setup()
        from engines.profiling.hf_local import torch_device
        from engines.profiling.vlm import BlipCaptioner, BlipMatcher

        c, dev = self.config, torch_device(self.config.num_gpus, self.config.num_cpus)
        gen = {"max_new_tokens": c.max_new_tokens, "num_beams": c.num_beams}
        self.captioner = BlipCaptioner(c.caption_model, device=dev, **gen) if c.caption_model else None
        self.matcher = BlipMatcher(c.match_model, device=dev, max_text_tokens=c.max_text_tokens) if c.match_model else None

    def process_batch(self, batch: pa.RecordBatch) -> dict:
        from engines.profiling.captions import profiled_caption
        from engines.profiling.vlm import vlm_columns

        texts = [profiled_caption(c, self.config.caption) for c in batch.column("captions").to_pylist()]
        if self.matcher is not None:
            self.stats.count("no_caption", sum(1 for t in texts if not t))
        out = vlm_columns(self.decode(batch), texts, self.captioner, self.matcher)
        return {
            "prof_vlm_caption": pa.array(out["prof_vlm_caption"], pa.string()),
            "prof_vlm_match": pa.array(out["prof_vlm_match"], pa.float32()),
        }


class AigcConfig(ImageStageConfig):
    model: Optional[str] = Field(None, description="local image-classification model folder (AI-generated detector); null = skipped")
    ai_labels: Optional[list[str]] = Field(None, description="labels meaning AI-generated (default: by name)")
    batch_size: int = Field(32, ge=1)


@register_stage
class AigcStage(_ImageStage):
    """Probability that the image is AI-generated (a transformers image classifier)."""

    name = "prof_aigc"
    config_model = AigcConfig
    output_schema = PROF_AIGC.schema

    def __init__(self, config=None, **kw):
        super().__init__(config, **kw)
        from engines.profiling.aigc import check_detector_dir

        if not self.config.model:
            raise ConfigError("prof_aigc: set model to a local image-classification model folder (an AI-generated-image detector)")
        _checked("prof_aigc", check_detector_dir, self.config.model, self.config.ai_labels, "model")

    def prepare(self, dataset) -> None:
        from engines.profiling.hf_local import model_record

        _record_models(dataset, "prof_aigc", {"detector": model_record("image-classifier", self.config.model, "transformers")})

    def setup(self) -> None:
        super().setup()
        from engines.profiling.aigc import AigcDetector
        from engines.profiling.hf_local import torch_device

        self.detector = AigcDetector(
            self.config.model, device=torch_device(self.config.num_gpus, self.config.num_cpus), ai_labels=self.config.ai_labels
        )

    def process_batch(self, batch: pa.RecordBatch) -> dict:
        from engines.profiling.aigc import aigc_column

        return {"prof_aigc": pa.array(aigc_column(self.decode(batch), self.detector), pa.float32())}


# --- the profile command -----------------------------------------------------------------------------

STAGE_ORDER = (
    *("meta", "hash", "entropy", "degradation", "brisque", "ocr", "nsfw", "clip", "text_emb", "aesthetic", "caption", "scores"),
    *("vlm", "aigc"),  # plug-in transformers models: skipped unless a model path is configured
)


class ProfileConfig(BaseModel):
    """``profile.yaml``: which stages run, in this order, and each stage's params."""

    model_config = ConfigDict(extra="forbid")

    stages: list[Literal[STAGE_ORDER]] = Field(default_factory=lambda: list(STAGE_ORDER))  # type: ignore[valid-type]
    cheap: CheapFamilyConfig = Field(default_factory=CheapFamilyConfig)
    brisque: BrisqueConfig = Field(default_factory=BrisqueConfig)
    ocr: OcrConfig = Field(default_factory=OcrConfig)
    nsfw: NsfwConfig = Field(default_factory=NsfwConfig)
    clip: ClipConfig = Field(default_factory=ClipConfig)
    text_emb: TextEmbConfig = Field(default_factory=TextEmbConfig)
    aesthetic: AestheticConfig = Field(default_factory=AestheticConfig)
    caption: CaptionConfig = Field(default_factory=CaptionConfig)
    scores: ScoresConfig = Field(default_factory=ScoresConfig)
    vlm: VlmConfig = Field(default_factory=VlmConfig)
    aigc: AigcConfig = Field(default_factory=AigcConfig)


def _cheap_stages(cfg: ProfileConfig, wanted: list[str], present: set[str]) -> list[Stage]:
    """The cheap families in at most two fused passes (one decode per image each): those whose
    columns the dataset has, filled where rows lack them (or recomputed, ``--overwrite``) in one
    commit, and those it lacks (or has only some columns of), added in another."""
    fams = [f for f in wanted if f in CHEAP_FAMILIES]
    have = [f for f in fams if set(_GROUPS[f].columns) <= present]
    new = [f for f in fams if f not in have]
    return [CheapStage(CheapConfig(**cfg.cheap.model_dump(), families=group)) for group in (have, new) if group]


def with_cached_models(cfg: ProfileConfig) -> tuple[ProfileConfig, dict[str, dict]]:
    """``cfg`` with the models a user pulled (``curate models pull``) filled in where the config
    names none, and ``{stage: {path, source, random_weights, catalogue}}`` (source: config, models
    cache or none; random_weights: the model, or for the head its input, is random) for the summary."""
    from engines.profiling.embed import weights_are_random

    clip, clip_src = _clip_from_cache(cfg.clip)
    aes, aes_src = _aesthetic_from_cache(cfg.aesthetic)
    random_clip = bool(clip.model and weights_are_random(clip.model))
    sources = {
        "clip": {"path": clip.model.describe() if clip.model else None, "source": clip_src, "random_weights": random_clip},
        "aesthetic": {"path": aes.weights, "source": aes_src, "random_weights": random_clip},  # reads prof_clip_image
    }
    for stage, v in sources.items():
        v["catalogue"] = CACHE_MODELS[stage]
    return cfg.model_copy(update={"clip": clip, "aesthetic": aes}), sources


def plan(cfg: ProfileConfig, present: set[str], overwrite: bool = False) -> tuple[list[Stage], list[str]]:
    """Stages to run (cheap families fused) and notes on the ones skipped. Every configured
    stage runs: the runner computes only the rows that lack its columns, unless ``overwrite``
    (kept in the signature for callers; the runner applies it)."""
    notes: list[str] = []
    cfg, sources = with_cached_models(cfg)
    notes += [f"prof_{s} model from the models cache: {v['path']}" for s, v in sources.items() if v["source"] != "config" and v["path"]]
    wanted = [s for s in STAGE_ORDER if s in cfg.stages]
    stages: list[Stage] = _cheap_stages(cfg, wanted, present)
    for s in wanted:
        if s in CHEAP_FAMILIES:
            continue
        if s == "clip" and cfg.clip.model is None:
            notes.append("prof_clip skipped: no model configured (clip.model) or pulled (clip-vit-l14-laion2b); no image embeddings")
            continue
        if s == "aesthetic" and not cfg.aesthetic.weights:
            notes.append("prof_aesthetic skipped: no head weights configured (aesthetic.weights) or pulled; no aesthetic score")
            continue
        if s == "vlm" and not (cfg.vlm.caption_model or cfg.vlm.match_model):
            notes.append("prof_vlm skipped: no model configured (vlm.caption_model / vlm.match_model)")
            continue
        if s == "aigc" and not cfg.aigc.model:
            notes.append("prof_aigc skipped: no model configured (aigc.model); no AI-generated score")
            continue
        cls = {
            "brisque": BrisqueStage,
            "ocr": OcrStage,
            "nsfw": NsfwStage,
            "clip": ClipStage,
            "text_emb": TextEmbStage,
            "aesthetic": AestheticStage,
            "caption": CaptionStage,
            "scores": ScoresStage,
            "vlm": VlmStage,
            "aigc": AigcStage,
        }[s]
        stages.append(cls(getattr(cfg, s)))
    return stages, notes


def run_profile(store, cfg: ProfileConfig, *, overwrite: bool = False, show_progress: bool = True) -> list:
    """Run the configured stages in order; each is resumable and commits its own version, with
    the rows that lack its columns (rows added since it ran) or all rows with ``overwrite``."""
    from rich.console import Console

    from curation.runner import run_stage

    console = Console(stderr=True)
    stages, notes = plan(cfg, set(store.open().schema.names), overwrite)
    for n in notes:
        console.print(f"[yellow]{escape(n)}[/]")
    results = []
    t0 = time.perf_counter()
    for st in stages:
        console.rule(f"[bold]{st.name}" + (f" ({', '.join(st.families)})" if isinstance(st, CheapStage) else ""))
        results.append(run_stage(store, st, overwrite=overwrite, show_progress=show_progress))
    store.write_json(
        "profiling/last_run.json",
        {
            "seconds": round(time.perf_counter() - t0, 2),
            "notes": notes,
            "model_sources": with_cached_models(cfg)[1],
            "results": [r.to_dict() for r in results],
            "config": cfg.model_dump(mode="json"),
        },
    )
    return results


def _profile_writes(cfg: ProfileConfig, have: set[str]) -> set[str]:
    """The columns a profile step writes: its planned stages' (``plan``)."""
    return {c for stage in plan(cfg, have)[0] for c in stage.output_schema.names}


@register_step(
    "profile", ProfileConfig, doc="Run the profiling stages (profile.yaml) in order", writes=lambda cfg, have: _profile_writes(cfg, have)
)
def _profile_step(ctx, cfg: ProfileConfig):
    from curation.runner import StageResult

    results = run_profile(ctx.store, cfg, overwrite=ctx.overwrite, show_progress=ctx.show_progress)
    v = ctx.store.open().version
    rows = max((r.stats.rows for r in results), default=0)  # rows some stage computed, not counted once per stage
    status = "committed" if any(r.status == "committed" for r in results) else "skipped"
    return StageResult("profile", status, v, v, extra={"stages": [r.stage for r in results], "rows": rows})


def load_profile_config(path: Path | None, only: str | None) -> ProfileConfig:
    from curation.config import load_yaml, validate

    cfg = validate(ProfileConfig, load_yaml(path) if path else {}, where=str(path or "defaults"))
    if only:
        names = [s.strip().removeprefix("prof_") for s in only.split(",") if s.strip()]
        if "cheap" in names:
            names = [n for n in names if n != "cheap"] + list(CHEAP_FAMILIES)
        bad = [n for n in names if n not in STAGE_ORDER]
        if bad:
            raise ConfigError(f"--only: unknown stage(s) {bad}; allowed: {', '.join(STAGE_ORDER)} (or cheap)")
        cfg.stages = [s for s in STAGE_ORDER if s in names]
    return cfg
