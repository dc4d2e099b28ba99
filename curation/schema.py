"""The one schema of the samples table, and of every column group an engine adds to it.

One row is one image with all its captions. Ingest writes the base columns; each engine adds a
*column group* (Lance schema evolution: new data files, the image bytes are never rewritten).
Declaring every group here means every writer produces a known Arrow schema, the CLI can show
columns by group, and two engines cannot silently fight over one column name.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import pyarrow as pa

__all__ = [
    "CAPTION_KINDS",
    "CAPTION_TYPE",
    "SAMPLES_SCHEMA",
    "ColumnGroup",
    "COLUMN_GROUPS",
    "column_group",
    "group_of",
    "sample_id",
    "sha256_hex",
    "empty_samples_table",
]

CAPTION_KINDS = ("alt", "short", "long", "tags", "ocr", "reviewed")
"""Kinds of caption: web alt text, a short or long description, a tag list, OCR text, a reviewer's fix."""

CAPTION_TYPE = pa.struct(
    [
        pa.field("text", pa.string()),  # the caption text as found (reviewed captions: invisible controls removed)
        pa.field("kind", pa.string()),  # one of CAPTION_KINDS
        pa.field("lang", pa.string()),  # "en", "zh", "mixed", "und"
    ]
)

SAMPLES_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),  # stable: hash of (source, source_key)
        pa.field("image", pa.large_binary()),  # encoded bytes as found; null for remote data
        pa.field("image_uri", pa.string()),  # where the bytes live when not stored inline
        pa.field("image_sha256", pa.string()),  # SHA-256 of the image bytes, hex (exact duplicates)
        pa.field("source", pa.string()),  # the source folder / file / tar the row came from
        pa.field("source_key", pa.string()),  # path / tar key / row within the source
        pa.field("captions", pa.list_(CAPTION_TYPE)),  # every caption: {text, kind, lang}; kind in CAPTION_KINDS
        pa.field("width", pa.int32()),  # pixels, after the EXIF orientation
        pa.field("height", pa.int32()),  # pixels, after the EXIF orientation
        pa.field("format", pa.string()),  # PIL format name: JPEG, PNG, GIF, WEBP, ...
        pa.field("error", pa.string()),  # null when the row is usable; else "<reason>: <detail>"
        # a source record's other fields (url, status, LAION similarity ...) as JSON, sorted keys;
        # last and nullable, so ingest adds it to older datasets as a metadata-only change
        pa.field("meta", pa.string()),
    ]
)


@dataclass(frozen=True)
class ColumnGroup:
    """Columns one stage adds, under one name (``curate info`` lists columns by group)."""

    name: str
    schema: pa.Schema
    doc: str = ""

    @property
    def columns(self) -> list[str]:
        return list(self.schema.names)


COLUMN_GROUPS: dict[str, ColumnGroup] = {}


def column_group(name: str, fields: list[pa.Field], doc: str = "") -> ColumnGroup:
    """Declare a column group; a column name may belong to one group only."""
    schema = pa.schema(fields)
    for other in COLUMN_GROUPS.values():
        if other.name != name and set(other.columns) & set(schema.names):
            clash = sorted(set(other.columns) & set(schema.names))
            raise ValueError(f"columns {clash} of group {name!r} already belong to {other.name!r}")
    group = ColumnGroup(name, schema, doc)
    COLUMN_GROUPS[name] = group
    return group


def group_of(column: str) -> str:
    """Name of the group a column belongs to ("base" for ingest columns, "other" if unknown)."""
    if column in SAMPLES_SCHEMA.names:
        return "base"
    for g in COLUMN_GROUPS.values():
        if column in g.columns:
            return g.name
    return "other"


# --- Column groups -------------------------------------------------------------------------
# Each engine owns its block below. Keep names prefixed by the group so columns stay unique.

EXACT_DUP = column_group(
    "exact_dup",
    [pa.field("exact_dup_of", pa.string())],  # id of the first row with the same bytes; null for the first
    "id of the first row (dataset order) with the same image bytes; null for the first/unique row",
)

CAPTION_STATS = column_group(
    "caption_stats",
    [
        pa.field("caption_count", pa.int32()),  # number of non-empty captions
        pa.field("caption_chars", pa.int32()),  # length of the longest caption in characters
        pa.field("caption_lang", pa.string()),  # language of the longest caption
    ],
    "cheap caption statistics computed from the captions column",
)


# --- profiling (engines/profiling) ---------------------------------------------------------
# (profiling groups go here)
# Written by the prof_* stages (pipelines/profile.py); documented in docs/profiling.md. Pixel
# signals are computed after the EXIF orientation is applied. ``prof_error`` (group prof_meta) is
# null when the image decoded, else "<reason>: <detail>"; other groups are null on such rows.


def embedding_type(dim: int, dtype: str = "float16") -> pa.DataType:
    """Arrow type of a stored embedding: a fixed-size list of L2-normalised float16/float32."""
    return pa.list_(pa.float16() if dtype == "float16" else pa.float32(), dim)


PROF_META = column_group(
    "prof_meta",
    [
        pa.field("prof_error", pa.string()),  # null = decoded; else "<reason>: <detail>"
        pa.field("prof_format", pa.string()),  # format PIL decoded: JPEG, PNG, WEBP, ...
        pa.field("prof_mode", pa.string()),  # PIL mode as stored: RGB, L, P, RGBA, CMYK, I;16, ...
        pa.field("prof_bit_depth", pa.int16()),  # bits per channel
        pa.field("prof_channels", pa.int16()),  # colour channels as stored (1, 3, 4)
        pa.field("prof_orientation", pa.int16()),  # EXIF orientation tag 1..8 (1 when absent)
        pa.field("prof_width", pa.int32()),  # after EXIF orientation
        pa.field("prof_height", pa.int32()),  # after EXIF orientation
        pa.field("prof_megapixels", pa.float32()),  # width * height / 1e6
        pa.field("prof_aspect", pa.float32()),  # width / height
        pa.field("prof_file_bytes", pa.int64()),  # encoded size in bytes
        pa.field("prof_frames", pa.int32()),  # >1 for animated images (first frame is profiled)
        pa.field("prof_has_alpha", pa.bool_()),  # an alpha channel or palette transparency
        pa.field("prof_compression", pa.float32()),  # w*h*channels*bit_depth/8 / file bytes
    ],
    "image metadata, decode status and compression ratio",
)

PROF_HASH = column_group(
    "prof_hash",
    [
        pa.field("prof_phash", pa.uint64()),  # 64-bit DCT perceptual hash
        pa.field("prof_dhash", pa.uint64()),  # 64-bit difference hash
    ],
    "64-bit perceptual hashes (DCT pHash, difference hash); Hamming distance = near-duplicate distance",
)

PROF_ENTROPY = column_group(
    "prof_entropy",
    [
        pa.field("prof_border_var", pa.float32()),  # luma variance of the outer border band
        pa.field("prof_jpeg_bpp", pa.float32()),  # bytes/pixel after a JPEG re-encode at fixed quality
        pa.field("prof_gray_entropy", pa.float32()),  # Shannon entropy of the luma histogram, bits
    ],
    "information entropy: flat backgrounds / frames, and re-encode size as a complexity proxy",
)

PROF_DEGRADATION = column_group(
    "prof_degradation",
    [
        pa.field("prof_sharpness", pa.float32()),  # log10 variance of the Laplacian, full analysis scale
        pa.field("prof_sharpness_coarse", pa.float32()),  # same at half scale
        pa.field("prof_noise", pa.float32()),  # Immerkaer noise sigma (0..255 luma units)
        pa.field("prof_color_cast", pa.float32()),  # mean chroma offset in Lab a*b*, normalised by spread
        pa.field("prof_shadows_clipped", pa.float32()),  # share of pixels with luma <= 2
        pa.field("prof_highlights_clipped", pa.float32()),  # share of pixels with luma >= 253
        pa.field("prof_brightness", pa.float32()),  # mean luma / 255
        pa.field("prof_contrast", pa.float32()),  # RMS contrast: std luma / 255
        pa.field("prof_colorfulness", pa.float32()),  # Hasler-Suesstrunk colourfulness
        pa.field("prof_watermark", pa.float32()),  # heuristic likelihood [0, 1] of a corner/edge overlay
        pa.field("prof_watermark_overlay", pa.float32()),  # [0, 1] semi-transparent light overlay strokes
    ],
    "no-model degradation signals",
)

PROF_BRISQUE = column_group(
    "prof_brisque",
    [pa.field("prof_brisque", pa.float32())],  # BRISQUE score, lower is better, roughly 0..100
    "BRISQUE no-reference quality (lower is better, roughly 0..100)",
)

PROF_OCR = column_group(
    "prof_ocr",
    [
        pa.field("prof_ocr_text", pa.string()),  # lines joined with newlines; "" when no text
        pa.field("prof_ocr_boxes", pa.list_(pa.list_(pa.float32(), 8))),  # quads x1,y1..x4,y4, 0..1
        pa.field("prof_ocr_conf", pa.list_(pa.float32())),  # recogniser confidence per box, 0..1
        pa.field("prof_ocr_area", pa.float32()),  # share of the image covered by text boxes
        pa.field("prof_ocr_lang", pa.string()),  # en / zh / mixed / und (no text)
    ],
    "OCR with PaddleOCR models (rapidocr backend by default)",
)

PROF_NSFW = column_group(
    "prof_nsfw",
    [
        pa.field("prof_nsfw", pa.float32()),  # NSFW score 0..1 from exposed-part detections
        pa.field("prof_nsfw_labels", pa.list_(pa.string())),  # the exposed classes found
    ],
    "NSFW score in [0, 1] (nudenet exposed-part detector) and the exposed classes found",
)

PROF_CLIP = column_group(
    "prof_clip",
    [
        pa.field("prof_clip_image", embedding_type(512)),  # width = the configured model's dim
        pa.field("prof_clip_text", embedding_type(512)),  # embedding of the row's chosen caption
        pa.field("prof_clip_sim", pa.float32()),  # cosine(image, caption)
    ],
    "image / caption embeddings (L2-normalised) and image-text similarity from the embed registry",
)

PROF_TEXT_EMB = column_group(
    "prof_text_emb",
    [pa.field("prof_caption_emb", embedding_type(384))],  # caption embedding, L2-normalised float16
    "caption-only embedding (all-MiniLM-L6-v2 by default), L2-normalised",
)

PROF_AESTHETIC = column_group(
    "prof_aesthetic",
    [pa.field("prof_aesthetic", pa.float32())],  # LAION-style aesthetic score, 1..10
    "aesthetic score from a LAION-style MLP head over prof_clip_image; absent without weights",
)

PROF_CAPTION = column_group(
    "prof_caption",
    [
        pa.field("prof_cap_tokens", pa.int32()),  # tokens of the chosen caption (jieba for Chinese)
        pa.field("prof_cap_lang", pa.string()),  # en / zh / mixed / und
        pa.field("prof_cap_ocr_overlap", pa.float32()),  # share of OCR tokens found in the caption
    ],
    "caption statistics for the caption the model stages use",
)

PROF_SCORES = column_group(
    "prof_scores",
    [
        pa.field("prof_quality", pa.float32()),  # composite quality in [0, 1], documented weights
        pa.field("prof_complexity", pa.float32()),  # composite complexity in [0, 1]
        pa.field("prof_curriculum", pa.int16()),  # quantile bin of complexity, 0 = simplest
        pa.field("prof_watermark_score", pa.float32()),  # [0, 1] from OCR boxes; cheap prof_watermark without OCR
    ],
    "composite scores, the curriculum bin and the watermark score built from the profile",
)

# Plug-in model stages (docs/plugin-models.md): transformers models from local folders, run only
# when a model path is configured; models.json records each model and whether its weights are random.
PROF_VLM = column_group(
    "prof_vlm",
    [
        pa.field("prof_vlm_caption", pa.string()),  # caption generated by the captioner (BLIP); null without caption_model
        pa.field("prof_vlm_match", pa.float32()),  # P(image matches the row's caption), BLIP ITM head, 0..1; null without match_model
    ],
    "vision-language captioner and caption-image verifier (BLIP from local folders)",
)

PROF_AIGC = column_group(
    "prof_aigc",
    [pa.field("prof_aigc", pa.float32())],  # probability the image is AI-generated, 0..1 (image classifier)
    "AI-generated-image detector: a transformers image classifier from a local folder",
)

# --- vector (engines/vector) -----------------------------------------------------------------
# Written by the vector jobs (pipelines/descriptors.py, pipelines/dedup.py); documented in docs/vector.md.

VEC_DESC_DIM = 231
"""Length of ``vec_desc`` (engines.vector.descriptor.DESC_DIM: 8 bins x 21 cells + 63 DCT terms).
Was 252 (9 bins) before the descriptor became mirror- and rotation-aware: an older column is
recomputed by the dedup and index jobs."""

VEC_REGIONS = 11
"""Regional descriptors per row in ``vec_regions`` (engines.vector.descriptor.N_REGIONS): centre and
four corners at 80% and 70%, then the content box (a screenshot's photo). Was 10 before the content
box: an older column is recomputed by the dedup and index jobs.

``vec_regions`` holds int8 directions: each descriptor scaled so its largest |component| is 127
(``descriptor.to_int8``), read back L2-normalised (``index.to_matrix(..., unit=VEC_DESC_DIM)``).
A float16 column (unit vectors, before session 17) reads the same way and is not recomputed;
rows appended to such a dataset make the stage compute the columns anew."""

VEC_VISUAL = column_group(
    "vec_visual",
    [
        pa.field("vec_desc", pa.list_(pa.float16(), VEC_DESC_DIM)),  # training-free global descriptor, L2-normalised
        pa.field("vec_regions", pa.list_(pa.int8(), VEC_DESC_DIM * VEC_REGIONS)),  # same, 10 centre/corner crops + content box, int8
        pa.field("vec_error", pa.string()),  # null = described; else "<reason>: <detail>"
    ],
    "training-free image descriptors (gradient pyramid + DCT tiny image) for near-duplicate search",
)

DUP = column_group(
    "dup",
    [
        pa.field("dup_group", pa.int64()),  # duplicate group id; null = no duplicate found
        pa.field("dup_keep", pa.bool_()),  # false = a duplicate of a better row (drop it when filtering)
        pa.field("dup_of", pa.string()),  # id of the kept row of the group; null for kept rows
        pa.field("dup_reason", pa.string()),  # exact / near / semantic; null for kept rows
        pa.field("dup_sim", pa.float32()),  # similarity to the kept row (1.0 for exact)
    ],
    "duplicate groups (graph communities) with the best-quality row kept",
)

# --- graph (graph/) -------------------------------------------------------------------------
# (concept tag / resampling groups go here)

CONCEPT_TAGS = column_group(
    "concept_tags",
    [
        pa.field("tag_concepts", pa.list_(pa.string())),  # concept ids, best score first
        pa.field("tag_scores", pa.list_(pa.float32())),  # BM25 (best caption), decayed for ancestors
        pa.field("tag_direct", pa.list_(pa.bool_())),  # named in a caption (True) or inherited
    ],
    "concept tags of the row's captions with BM25 relevance, propagated up the concept graph",
)

RESAMPLE = column_group(
    "resample",
    [
        pa.field("rs_weight", pa.float64()),  # expected copies in the resampled set
        pa.field("rs_copies", pa.int32()),  # realised copies (sum = target size)
        pa.field("rs_stage", pa.int32()),  # curriculum stage from a profiling score (0 without one)
    ],
    "tagged resampling toward a concept prior: sampling weight and copies per row",
)

# --- active curation (engines/active) -----------------------------------------------------
# (review decision groups go here)
# Written by ``curate review apply`` (pipelines/review.py) from the review database; documented in
# docs/review.md. Null on rows nobody reviewed (except ``rev_reward``, the closed loop's score).

REVIEW = column_group(
    "rev",
    [
        pa.field("rev_decision", pa.string()),  # keep / drop / disputed (annotators disagree); null = not reviewed
        pa.field("rev_flag", pa.bool_()),  # a reviewer flagged the row as a failure case ("find more like this")
        pa.field("rev_caption", pa.string()),  # the reviewer's caption when it differs from the original; else null
        pa.field("rev_tags", pa.list_(pa.string())),  # tags confirmed or corrected by the reviewer
        pa.field("rev_reviewer", pa.string()),  # annotator names, comma separated
        pa.field("rev_time", pa.timestamp("us", tz="UTC")),  # latest decision
        pa.field("rev_votes", pa.int16()),  # number of human decisions behind rev_decision
        pa.field("rev_reward", pa.float32()),  # reward head P(keep) fitted on human labels; null before the first fit
    ],
    "human review decisions merged from the review database, and the reward head's score",
)

# --- helpers --------------------------------------------------------------------------------


def column_comments() -> dict[str, str]:
    """Each declared column's meaning: the comment on its ``pa.field`` line in this file (or the
    comment lines right above it). Read from the source so that the schema reference
    (docs/schema.md, ``curate info --columns``) is the schema itself and cannot drift."""
    import io
    import re
    import tokenize
    from pathlib import Path

    out: dict[str, str] = {}
    above: list[str] = []
    pending: str | None = None
    tokens = tokenize.generate_tokens(io.StringIO(Path(__file__).read_text(encoding="utf-8")).readline)
    for tok in tokens:
        if tok.type == tokenize.COMMENT:
            text = tok.string.lstrip("# ").strip()
            if pending is not None:
                out[pending], pending = text, None
            elif tok.line.strip().startswith("#"):
                above.append(text)
        elif tok.type == tokenize.STRING and tok.line.lstrip().lstrip("[").startswith("pa.field(") and pending is None:
            m = re.match(r"\s*\[?pa\.field\(\"(\w+)\"", tok.line)
            if m and tok.string.strip('"') == m.group(1):
                pending = m.group(1)
                if above:
                    out[pending], pending = " ".join(above), None
        elif tok.type == tokenize.NL and pending is None and not tok.line.strip().startswith("#"):
            above = []
        elif tok.type == tokenize.NEWLINE or (tok.type == tokenize.NL and pending is not None):
            pending, above = None, []
    return out


def sample_id(source: str, source_key: str) -> str:
    """Stable row id: 96 bits of SHA-1 over (source, key), so a re-ingest gives the same ids."""
    return hashlib.sha1(f"{source}\0{source_key}".encode()).hexdigest()[:24]


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def empty_samples_table() -> pa.Table:
    return SAMPLES_SCHEMA.empty_table()
