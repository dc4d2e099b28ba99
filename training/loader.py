"""Stream training shards into a training loop: sequence-length-aware batches under a token budget.

Usable on its own (PyTorch + Lance, nothing else of the platform)::

    from training.loader import Loader, LoaderConfig, ShardDataset

    ds = ShardDataset("shards.lance", LoaderConfig(token_budget=16384, seed=0))  # rank/world from torch.distributed
    loader = Loader(ds, num_workers=2)            # spawned workers: Lance is not fork-safe
    for epoch in range(start_epoch, epochs):
        loader.set_epoch(epoch)
        for batch in loader:                      # dict: ids, images (list of uint8 3xHxW), captions, ...
            ...
            ckpt["loader"] = loader.state_dict()  # a few integers; load_state_dict resumes mid-epoch

How an epoch is planned (``plan_epoch``, pure NumPy, identical on every rank and worker):

1. Each row appears ``epoch_size * w / sum(w)`` times, stochastically rounded (weights from the
   shard's ``weight`` column); with ``weighted=False`` or equal weights, exactly once.
2. The occurrences are shuffled by (seed, epoch) and cut into pools of ``pool_size``. Inside a
   pool samples are sorted by sequence length (image tokens + the chosen caption's tokens) and
   cut greedily into batches whose size in the model's tokens stays within ``token_budget``:
   batch size x longest sequence, or with ``packing`` the sum of the sequences (the model packs
   them into one). A sequence counts what the model runs: every segment (image, caption, a pair's
   source) padded to a multiple of ``seq_multiple`` (32), as the model pads it, and an empty
   caption as the one-token null caption. Long sequences come in small batches, short ones in
   large batches, and the padding inside a batch is small because its lengths are neighbours in
   sorted order.
3. The batch count is made a multiple of the world size by splitting the largest batches (so no
   sample is dropped or repeated and every rank runs the same number of steps), the batches are
   grouped in consecutive runs of ``world_size`` (similar lengths, so ranks wait little on each
   other) and the groups are shuffled. Rank r takes batch r of every group.

Workers then take batches round-robin (worker w of n takes the rank's batches w, w+n, ...), which
is the order in which the PyTorch DataLoader reads them back, so the stream of a rank does not
depend on the number of workers, and resuming is skipping the first k planned batches. Workers
open the Lance dataset lazily after they start, read rows with random-access ``take``, decode and
crop each image to its bucket (random crop seeded by (seed, epoch, rank, batch), or centre crop).
A row whose image cannot be decoded is left out of its batch and reported with its reason.

Pair shards (``curate pairs export``, docs/pairs.md) go through the same planner and batcher: a
pair shard is a training shard whose image is the edit's target and whose caption variants are its
instructions, plus the source image. ``ShardMeta.segment_tokens`` adds the source's tokens to every
sequence length, so the token budget counts text + source + target (each segment padded to 32 on
its own, as the model would pad it; ``ShardMeta.segments``); batches also carry
``sources``, ``source_buckets``, ``source_tokens`` and ``kinds``, and a pair's two images are
cropped with one seed (same size, same crop).
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from curation.shards import EXIF_TRANSPOSE, MANIFEST_KEY

__all__ = [
    "LoaderConfig",
    "ShardMeta",
    "EpochPlan",
    "plan_epoch",
    "padded_fraction",
    "decode_and_crop",
    "ShardDataset",
    "Loader",
    "LoaderMetrics",
    "to_unit_range",
]

_META_COLUMNS = ["image_tokens", "caption_tokens", "weight", "bucket_w", "bucket_h"]
_PAIR_SEGMENTS = ("src_image_tokens",)  # a pair shard's further segments (``curate pairs export``)
_PAIR_LOAD = ["src_image", "src_bucket_w", "src_bucket_h", "src_image_tokens", "kind"]


class LoaderConfig(BaseModel):
    """How batches are formed. Everything that changes which sample lands in which batch is here,
    so a state dict is only valid with the same config (checked on resume)."""

    model_config = ConfigDict(extra="forbid")

    token_budget: int = Field(
        16384, ge=1, description="max model tokens per batch: batch size x longest sequence (packing: their sum), segments 32-padded"
    )
    packing: bool = Field(
        False,
        description="budget the sum of the sequences, for a model that packs them (S3DiTConfig.packing); "
        "False: batch size x longest, which fits the padded and the packed model alike",
    )
    seq_multiple: int = Field(32, ge=1, description="the model pads every segment to a multiple of this; budgets count it")
    max_batch_size: int = Field(512, ge=1, description="cap on samples per batch, whatever the budget")
    seed: int = 0
    weighted: bool = Field(True, description="resample rows by the shard's weight column; False: each row once per epoch")
    epoch_size: int | None = Field(None, ge=1, description="samples per epoch when weighted (default: number of rows)")
    pool_size: int = Field(4096, ge=1, description="samples sorted together; larger = less padding, less randomness")
    same_bucket: bool = Field(False, description="only one crop size per batch, so images can be stacked into one tensor")
    random_crop: bool = Field(True, description="random crop inside the scaled image; False: centre crop")
    caption_kind_weights: dict[str, float] | None = Field(
        None, description="probability weight per caption kind (missing kinds: 1, 0 excludes); None = uniform over variants"
    )
    filter: str | None = Field(None, description="Lance SQL filter on shard rows, e.g. 'curriculum_stage <= 1'")
    columns: list[str] = Field(default_factory=list, description="extra shard columns passed through per sample")
    pre_encoded: bool | None = Field(
        None,
        description="use the shard's pre-encoded latents / caption features instead of images / caption text; "
        "None: whenever the shard has them; False: always decode images",
    )

    def fingerprint(self) -> str:
        return hashlib.sha1(self.model_dump_json().encode()).hexdigest()[:12]


# --- planning (pure NumPy) -------------------------------------------------------------------


@dataclass
class ShardMeta:
    """What planning needs per row, read once from the light columns (no image bytes)."""

    positions: np.ndarray  # row positions in the Lance dataset (after the config's filter)
    image_tokens: np.ndarray  # int64
    cap_offsets: np.ndarray  # caption variants of row i are cap_tokens[cap_offsets[i]:cap_offsets[i+1]]
    cap_tokens: np.ndarray
    cap_kinds: np.ndarray | None  # kind per variant (only read when kind weights are configured)
    weight: np.ndarray  # float64
    bucket: np.ndarray  # int64 bucket key (w * 65536 + h)
    segment_tokens: np.ndarray | None = None  # int64: tokens of the row's other segments (a pair's source image)
    segments: tuple[np.ndarray, ...] = ()  # the same per segment, each padded on its own by the model

    def __len__(self) -> int:
        return len(self.positions)

    def row_tokens(self) -> np.ndarray:
        """Tokens of every segment of a row but its text: what the caption's tokens are added to.
        Pairs count their source image here, so one batcher budgets plain samples and pairs alike."""
        return self.image_tokens if self.segment_tokens is None else self.image_tokens + self.segment_tokens

    def row_model_tokens(self, multiple: int) -> np.ndarray:
        """``row_tokens`` as the model runs them: every segment padded to ``multiple`` on its own."""
        segs = self.segments or (() if self.segment_tokens is None else (self.segment_tokens,))
        return sum((_pad_to(s, multiple) for s in segs), _pad_to(self.image_tokens, multiple))

    @classmethod
    def from_table(cls, t: pa.Table, positions: np.ndarray | None = None, segments: tuple[str, ...] = ()) -> ShardMeta:
        caps = t.column("caption_tokens").combine_chunks()
        n = t.num_rows
        offsets = caps.offsets.to_numpy().astype(np.int64) if n else np.zeros(1, np.int64)
        kinds = None
        seg = tuple(t.column(c).to_numpy(zero_copy_only=False).astype(np.int64) for c in segments)
        if "captions" in t.column_names:
            kinds = np.asarray(t.column("captions").combine_chunks().flatten().field("kind").to_pylist(), dtype=object)
        w = t.column("weight").to_numpy(zero_copy_only=False).astype(np.float64)
        w = np.where(np.isfinite(w) & (w > 0), w, 0.0)
        return cls(
            positions=np.arange(n, dtype=np.int64) if positions is None else positions,
            image_tokens=t.column("image_tokens").to_numpy(zero_copy_only=False).astype(np.int64),
            cap_offsets=offsets - offsets[0],
            cap_tokens=caps.values.to_numpy(zero_copy_only=False).astype(np.int64) if n else np.zeros(0, np.int64),
            cap_kinds=kinds,
            weight=w,
            bucket=t.column("bucket_w").to_numpy(zero_copy_only=False).astype(np.int64) * 65536
            + t.column("bucket_h").to_numpy(zero_copy_only=False).astype(np.int64),
            segment_tokens=np.sum(seg, axis=0) if seg else None,
            segments=seg,
        )


@dataclass
class EpochPlan:
    """The batches of one rank for one epoch: batch b is ``rows[bounds[b]:bounds[b+1]]``."""

    epoch: int
    rank: int
    world_size: int
    rows: np.ndarray  # dataset row positions
    caption_idx: np.ndarray  # chosen caption variant per sample (-1: row has none)
    seq_lens: np.ndarray  # image tokens (+ a pair's source tokens) + chosen caption tokens
    bounds: np.ndarray
    dropped: dict[str, int] = field(default_factory=dict)  # samples left out by planning, by reason
    model_lens: np.ndarray | None = None  # what the model runs per sample: segments 32-padded (default: seq_lens)
    packing: bool = False  # batches budgeted (and run) as the sum of model_lens

    def __len__(self) -> int:
        return len(self.bounds) - 1

    def batch(self, b: int) -> slice:
        return slice(int(self.bounds[b]), int(self.bounds[b + 1]))

    def batch_sizes(self) -> np.ndarray:
        return np.diff(self.bounds)

    def padded_fraction(self) -> float:
        """Batch padding: the share of the tokens the model runs that pad samples to their batch's
        longest, counted in model tokens (segments 32-padded); 0 when packed. What batching controls."""
        model = self._model()
        return padded_fraction([model[self.batch(b)] for b in range(len(self))], packing=self.packing)

    def real_padding_fraction(self) -> float:
        """All padding: the share of the tokens the model runs that are not content, the model's own
        padding of every segment to 32 included (about 10% at 256 px with short captions)."""
        model, sl = self._model(), [self.batch(b) for b in range(len(self))]
        return padded_fraction([self.seq_lens[s] for s in sl], [model[s] for s in sl], self.packing)

    def _model(self) -> np.ndarray:
        return self.seq_lens if self.model_lens is None else self.model_lens


def padded_fraction(batches: list[np.ndarray], model: list[np.ndarray] | None = None, packing: bool = False) -> float:
    """Share of the tokens a model runs that are padding, over batches: 1 - real / run, where a
    padded batch runs B x its longest ``model`` length and a packed one their sum. ``model``
    (each sample's segments padded as the model pads them) defaults to the real lengths."""
    model = batches if model is None else model
    total = sum(int(m.sum()) if packing else len(m) * int(m.max()) for m in model if len(m))
    real = sum(int(s.sum()) for s in batches if len(s))
    return 0.0 if total == 0 else (total - real) / total


def _pad_to(n: np.ndarray, multiple: int) -> np.ndarray:
    return -(-n // multiple) * multiple


def _rng(seed: int, epoch: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([seed, epoch, stream])


def _choose_captions(meta: ShardMeta, rows: np.ndarray, cfg: LoaderConfig, rng: np.random.Generator) -> np.ndarray:
    """A caption variant per sample occurrence, drawn afresh every epoch (caption dropout of
    variants, as Z-Image trains on short, long and tag captions of the same image)."""
    start, end = meta.cap_offsets[rows], meta.cap_offsets[rows + 1]
    n = end - start
    u = rng.random(len(rows))
    if cfg.caption_kind_weights is None or meta.cap_kinds is None:
        idx = np.floor(u * n).astype(np.int64)
        return np.where(n > 0, idx, -1)
    kw = cfg.caption_kind_weights
    w = np.array([max(kw.get(k, 1.0), 0.0) for k in meta.cap_kinds], dtype=np.float64)
    cum = np.concatenate([[0.0], np.cumsum(w)])
    lo, hi = cum[start], cum[end]
    pick = np.searchsorted(cum, lo + u * (hi - lo), side="right") - 1
    pick = np.clip(pick, start, np.maximum(end - 1, start))
    return np.where(hi > lo, pick - start, -1)


def _repeats(meta: ShardMeta, cfg: LoaderConfig, rng: np.random.Generator) -> np.ndarray:
    n = len(meta)
    w = meta.weight
    if not cfg.weighted or n == 0 or (w.min() == w.max() and (cfg.epoch_size or n) == n and w.max() > 0):
        return np.ones(n, np.int64)
    if w.sum() <= 0:
        raise ValueError("every row has weight 0; nothing to sample (use weighted=False to ignore weights)")
    expected = (cfg.epoch_size or n) * w / w.sum()
    base = np.floor(expected)
    return (base + (rng.random(n) < expected - base)).astype(np.int64)  # stochastic rounding


def _form_batches(seq: np.ndarray, model: np.ndarray, bucket: np.ndarray, cfg: LoaderConfig) -> list[np.ndarray]:
    """Greedy cuts of one pool sorted by (bucket if same_bucket, model length, length): indices
    into the pool. Sorted by model length, the newest sample of a batch is its longest."""
    order = np.lexsort((seq, model, bucket)) if cfg.same_bucket else np.lexsort((seq, model))
    out, start, run = [], 0, 0
    for i, nxt in enumerate(order):
        n, run = i - start + 1, run + int(model[nxt])
        cost = run if cfg.packing else n * int(model[nxt])
        if i > start and (cost > cfg.token_budget or n > cfg.max_batch_size or (cfg.same_bucket and bucket[nxt] != bucket[order[start]])):
            out.append(order[start:i])
            start, run = i, int(model[nxt])
    if len(order):
        out.append(order[start:])
    return out


def _balance(batches: list[np.ndarray], world_size: int) -> tuple[list[np.ndarray], int]:
    """Make the batch count a multiple of world_size by halving the largest batches; when too few
    batches can be split, drop the last ones. Returns the batches and the samples dropped."""
    short = (-len(batches)) % world_size
    if short == 0:
        return batches, 0
    splittable = sorted((i for i, b in enumerate(batches) if len(b) >= 2), key=lambda i: -len(batches[i]))
    if len(splittable) >= short:
        to_split = set(splittable[:short])
        out: list[np.ndarray] = []
        for i, b in enumerate(batches):
            if i in to_split:
                half = len(b) // 2
                out += [b[:half], b[half:]]
            else:
                out.append(b)
        return out, 0
    extra = len(batches) % world_size
    return batches[: len(batches) - extra], int(sum(len(b) for b in batches[len(batches) - extra :]))


def plan_epoch(meta: ShardMeta, cfg: LoaderConfig, epoch: int, rank: int = 0, world_size: int = 1) -> EpochPlan:
    """The batches rank ``rank`` of ``world_size`` reads in ``epoch`` (deterministic; see module doc)."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in [0, {world_size})")
    reps = _repeats(meta, cfg, _rng(cfg.seed, epoch, 0))
    occ = np.repeat(np.arange(len(meta), dtype=np.int64), reps)
    occ = occ[_rng(cfg.seed, epoch, 1).permutation(len(occ))]
    cap = _choose_captions(meta, occ, cfg, _rng(cfg.seed, epoch, 2))
    cap_tok = np.where(cap >= 0, meta.cap_tokens[np.maximum(meta.cap_offsets[occ] + cap, 0)] if len(meta.cap_tokens) else 0, 0)
    seq = meta.row_tokens()[occ] + cap_tok
    model = meta.row_model_tokens(cfg.seq_multiple)[occ] + _pad_to(np.maximum(cap_tok, 1), cfg.seq_multiple)  # no caption: the null one
    dropped: dict[str, int] = {}
    fits = model <= cfg.token_budget
    if not fits.all():  # one sample alone would break the budget: leave it out, say so
        dropped["over_token_budget"] = int((~fits).sum())
        occ, cap, seq, model = occ[fits], cap[fits], seq[fits], model[fits]
    batches: list[np.ndarray] = []
    for s in range(0, len(occ), cfg.pool_size):
        pool = np.arange(s, min(s + cfg.pool_size, len(occ)))
        batches += [pool[b] for b in _form_batches(seq[pool], model[pool], meta.bucket[occ[pool]], cfg)]
    batches, lost = _balance(batches, world_size)
    if lost:
        dropped["uneven_tail"] = lost
    groups = len(batches) // world_size
    order = _rng(cfg.seed, epoch, 3).permutation(groups)
    mine = [batches[g * world_size + rank] for g in order]
    idx = np.concatenate(mine) if mine else np.zeros(0, np.int64)
    bounds = np.concatenate([[0], np.cumsum([len(b) for b in mine])]).astype(np.int64)
    return EpochPlan(epoch, rank, world_size, meta.positions[occ[idx]], cap[idx], seq[idx], bounds, dropped, model[idx], cfg.packing)


# --- decoding ----------------------------------------------------------------------------------


def decode_and_crop(data: bytes, width: int, height: int, rng: np.random.Generator | None = None) -> np.ndarray:
    """Decode encoded image bytes to an (height, width, 3) uint8 array: apply the EXIF orientation
    (as profiling does), scale to cover the crop size, then crop (random offset from ``rng``,
    centre when None). Transparent images are put on white. JPEGs decode at a reduced DCT scale
    when the crop is much smaller (PIL draft), which is most of a CPU loader's speed."""
    with Image.open(io.BytesIO(data)) as im:
        orient = im.getexif().get(0x0112, 1)
        swap = orient in (5, 6, 7, 8)
        w, h = im.size[::-1] if swap else im.size
        s = max(width / w, height / h)
        req = (math.ceil(w * s), math.ceil(h * s))
        im.draft("RGB", req[::-1] if swap else req)
        if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
            rgba = im.convert("RGBA")
            img = Image.new("RGB", rgba.size, (255, 255, 255))
            img.paste(rgba, mask=rgba.getchannel("A"))
        else:
            img = im.convert("RGB")
    if orient in EXIF_TRANSPOSE:
        img = img.transpose(EXIF_TRANSPOSE[orient])
    w, h = img.size
    s = max(width / w, height / h)
    sw, sh = max(width, round(w * s)), max(height, round(h * s))
    if (sw, sh) != (w, h):
        img = img.resize((sw, sh), Image.BICUBIC, reducing_gap=3.0)
    if rng is None:
        x, y = (sw - width) // 2, (sh - height) // 2
    else:
        x, y = int(rng.integers(0, sw - width + 1)), int(rng.integers(0, sh - height + 1))
    return np.array(img.crop((x, y, x + width, y + height)), dtype=np.uint8)  # a writable copy


def to_unit_range(image: torch.Tensor) -> torch.Tensor:
    """uint8 (3, H, W) -> float32 in [-1, 1], what a VAE encoder expects."""
    return image.float().div_(127.5).sub_(1.0)


# --- the dataset -----------------------------------------------------------------------------


def _dist_defaults() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def clean_native_message(msg: str) -> str:
    """The first line of a native (Lance/Arrow) error without the Rust source locations it lists
    (``, /home/runner/.../commit.rs:653:26``) and Arrow's "External error: " wrapper."""
    import re

    first = (msg.splitlines() or [""])[0]
    first = re.sub(r",\s*/\S*?\.rs:\d+:\d+", "", first).removeprefix("External error: ")
    return first[:300]


class ShardDataset(IterableDataset):
    """Yields whole batches (dicts) of one rank's epoch plan; see the module doc for the plan.

    Picklable and cheap to send to spawned workers: the Lance dataset is opened lazily in the
    process that reads (Lance is not fork-safe), and each worker plans the epoch itself from the
    light columns (deterministic, so identical to the main process's plan). The epoch and the
    first batch to read live in a small shared-memory array once ``Loader`` starts workers, so
    persistent workers follow ``set_epoch`` and ``load_state_dict`` without being respawned.
    A batch dict holds ``ids``, ``images`` (list of uint8 tensors 3 x bucket_h x bucket_w),
    ``captions`` (the chosen variant's text), ``caption_kinds``, ``image_tokens``,
    ``caption_tokens`` and ``seq_lens`` (int64 tensors), ``model_lens`` (the tokens the model runs
    per sample, every segment padded to ``seq_multiple``: what the budget counts), ``packing``
    (whether the budget was their sum), ``buckets`` (list of (w, h)),
    ``curriculum_stage``, any extra ``columns`` (lists of numbers, e.g. pre-encoded latents or
    text features, as float32 NumPy arrays; anything else as Python values), and ``epoch``,
    ``batch_index``, ``skipped`` (list of (id, reason) for rows whose image could not be used).
    A pair shard (detected by its ``src_*`` columns) adds ``sources`` (uint8 3 x src_bucket_h x
    src_bucket_w), ``source_buckets``, ``source_tokens`` and ``kinds``; ``seq_lens`` then counts
    the source too, and ``caption_tokens`` is what is left for the instruction.
    """

    def __init__(
        self,
        uri: str,
        config: LoaderConfig | dict | None = None,
        *,
        rank: int | None = None,
        world_size: int | None = None,
        version: int | None = None,
        storage_options: dict[str, str] | None = None,
    ):
        super().__init__()
        self.uri = str(uri)
        self.config = config if isinstance(config, LoaderConfig) else LoaderConfig.model_validate(config or {})
        r, ws = _dist_defaults()
        self.rank = r if rank is None else rank
        self.world_size = ws if world_size is None else world_size
        self.storage_options = storage_options
        self.epoch = 0
        self.start_batch = 0
        self._ds = None
        self._meta: ShardMeta | None = None
        self._plan: EpochPlan | None = None
        self._shared = None  # [epoch, start_batch] in shared memory, seen by spawned workers
        self.version = version if version is not None else self._open().version
        names = self._open().schema.names
        missing = [c for c in [*_META_COLUMNS, *self.config.columns] if c not in names]
        if missing:
            raise ValueError(f"{self.uri} lacks columns {missing}: is it a training shard written by `curate export`?")
        has_lat, has_txt = "latents" in names, "cap_feats" in names and "cap_feat_tokens" in names
        if self.config.pre_encoded and not (has_lat or has_txt):
            raise ValueError(
                f"{self.uri} has no pre-encoded columns (latents, cap_feats): export it with vae_path / "
                "text_encoder_path set, or use pre_encoded: false"
            )
        self.pairs = all(c in names for c in _PAIR_LOAD)  # a pair shard: yield (source, target, instruction)
        if self.pairs and self.config.pre_encoded:
            raise ValueError(f"{self.uri} is a pair shard: pair shards hold images only, use pre_encoded: false (or None)")
        use = self.config.pre_encoded is not False and not self.pairs
        # a column also named in ``columns`` is passed through raw instead (the older way to read them)
        self.pre_latents = use and has_lat and "latents" not in self.config.columns
        self.pre_text = use and has_txt and "cap_feats" not in self.config.columns

    # --- lazy state (not pickled) ---
    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_ds"] = None
        state["_meta"] = None  # workers read the light columns themselves
        state["_plan"] = None
        return state

    def share_position(self, mp_context) -> None:
        """Put (epoch, start batch) in shared memory before workers start (see class doc)."""
        if self._shared is None:
            self._shared = mp_context.Array("q", [self.epoch, self.start_batch], lock=False)

    def _position(self) -> tuple[int, int]:
        if self._shared is not None:
            return int(self._shared[0]), int(self._shared[1])
        return self.epoch, self.start_batch

    def _open(self):
        if self._ds is None:
            import lance

            self._ds = lance.dataset(self.uri, version=getattr(self, "version", None), storage_options=self.storage_options or None)
        return self._ds

    def _guarded(self, read, columns: list[str], rows=None):
        """``read()``; when it fails, the fragment a damaged file makes unreadable is named in a
        ValueError (Lance's own error names no file and ends in Rust source lines). A failure that
        no single fragment reproduces (a bad ``filter``, say) is raised as it came."""
        try:
            return read()
        except (OSError, ValueError) as e:
            found = self._unreadable_fragment(columns, rows)
            if found is None:
                raise
            frag, err = found
            files = ", ".join(f"data/{f.path}" for f in frag.data_files())
            raise ValueError(
                f"shard fragment {frag.fragment_id} ({files}) of {self.uri} is unreadable: {clean_native_message(str(err))}; "
                "re-export the shards"
            ) from e

    def _unreadable_fragment(self, columns: list[str], rows=None):
        """(fragment, its error) for the first fragment whose ``columns`` (at ``rows``, dataset row
        offsets, when given) cannot be read; None when every one reads."""
        offset = 0
        for frag in self._open().get_fragments():
            n = frag.count_rows()
            local = None if rows is None else [int(r) - offset for r in rows if offset <= int(r) < offset + n]
            offset += n
            if local == []:
                continue
            try:
                frag.to_table(columns=columns) if local is None else frag.take(local, columns=columns)
            except (OSError, ValueError) as err:
                return frag, err
        return None

    @property
    def manifest(self) -> dict[str, Any]:
        """The provenance manifest export wrote into the shard (source URI, version, selection)."""
        meta = self._open().schema.metadata or {}
        raw = meta.get(MANIFEST_KEY.encode())
        return json.loads(raw) if raw else {}

    def meta(self) -> ShardMeta:
        if self._meta is None:
            cols: dict[str, str] = {c: c for c in [*_META_COLUMNS, *(_PAIR_SEGMENTS if self.pairs else ())]}
            if self.config.caption_kind_weights is not None:
                cols["captions"] = "captions"
            if self.config.filter:
                cols["_keep"] = f"({self.config.filter})"
            t = self._guarded(lambda: self._open().to_table(columns=cols), [c for c in cols if c != "_keep"])
            positions = None
            if self.config.filter:
                keep = t.column("_keep").to_numpy(zero_copy_only=False)
                keep = np.asarray([bool(k) if k is not None else False for k in keep]) if keep.dtype == object else keep
                positions = np.flatnonzero(keep).astype(np.int64)
                t = t.filter(pa.array(keep, pa.bool_()))
            self._meta = ShardMeta.from_table(t, positions, _PAIR_SEGMENTS if self.pairs else ())
        return self._meta

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        if epoch != self.epoch or self._plan is None or self._plan.epoch != epoch:
            self._plan = None
        self.epoch, self.start_batch = int(epoch), int(start_batch)
        if self._shared is not None:
            self._shared[0], self._shared[1] = self.epoch, self.start_batch

    def plan(self, epoch: int | None = None) -> EpochPlan:
        """This rank's plan for an epoch (default: the current one); cached per epoch."""
        epoch = self.epoch if epoch is None else epoch
        if self._plan is None or self._plan.epoch != epoch:
            self._plan = plan_epoch(self.meta(), self.config, epoch, self.rank, self.world_size)
        return self._plan

    def __len__(self) -> int:
        return max(0, len(self.plan()) - self.start_batch)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        epoch, start = self._position()
        plan = self.plan(epoch)
        info = get_worker_info()
        wid, nw = (info.id, info.num_workers) if info else (0, 1)
        for b in range(start + wid, len(plan), nw):
            yield self.load_batch(plan, b)

    def load_batch(self, plan: EpochPlan, b: int) -> dict[str, Any]:
        """Batch ``b`` of ``plan``, read with one random-access ``take``: one list per field, a row
        whose image (or latent) cannot be had left out and named in ``skipped`` with its reason."""
        sl = plan.batch(b)
        rows, caps = plan.rows[sl], plan.caption_idx[sl]
        table = self._take(rows)
        arrays = {c for c in self.config.columns if _numeric_nested(table.schema.field(c).type)}
        lat = _flat_lists(table.column("latents")) if self.pre_latents else None
        feats = self._caption_features(table)
        t = table.drop_columns([c for c in self._pre_encoded_columns() if c not in self.config.columns]).to_pydict()
        rng = np.random.default_rng([self.config.seed, plan.epoch, plan.rank, b]) if self.config.random_crop else None
        out = self._empty_batch()
        keep_i, skipped = [], []
        for i in range(len(rows)):
            pix, src, why = self._row_pixels(t, i, lat, rng)
            if why is not None:
                skipped.append((t["id"][i], why))
                continue
            if feats is not None:
                out["cap_feats"].append(feats(i, caps[i]))
            self._append_sample(out, t, i, caps[i], pix, src, arrays)
            keep_i.append(i)
        out.update(self._batch_lengths(plan, sl, t, np.asarray(keep_i, dtype=np.int64)))
        out.update(epoch=plan.epoch, batch_index=b, skipped=skipped)
        return out

    def _pre_encoded_columns(self) -> list[str]:
        """The pre-encoded columns a batch reads instead of decoding images / caption text."""
        return [c for c, on in (("latents", self.pre_latents), ("cap_feats", self.pre_text), ("cap_feat_tokens", self.pre_text)) if on]

    def _take(self, rows: np.ndarray) -> pa.Table:
        """Rows ``rows`` with every column a batch hands over or decodes from, in one ``take``
        (a damaged fragment named in the error, see ``_guarded``)."""
        cols = list(
            dict.fromkeys(
                [
                    "id",
                    *([] if self.pre_latents else ["image"]),
                    "captions",
                    "bucket_w",
                    "bucket_h",
                    "image_tokens",
                    "curriculum_stage",
                    *(_PAIR_LOAD if self.pairs else []),
                    *self.config.columns,
                ]
            )
        )
        read = cols + [c for c in self._pre_encoded_columns() if c not in cols]
        return self._guarded(lambda: self._open().take(rows, columns=read), read, rows)

    def _caption_features(self, table: pa.Table):
        """(row, caption variant) -> that caption's pre-encoded features, a float32 tokens x dim
        tensor, read without Python floats; None when the shard's text is not used pre-encoded."""
        if not self.pre_text:
            return None
        feats = _flat_lists(table.column("cap_feats"), nested=True)
        feat_tok = table.column("cap_feat_tokens").to_pylist()

        def read(i: int, cap: int) -> torch.Tensor:
            variants = feats(i)
            if cap < 0 or variants is None or cap >= len(variants):
                f = np.zeros((0, 1), np.float32)  # no caption: the loop uses the null caption
            else:
                v, n_tok = variants[cap], max(int(feat_tok[i][cap]), 1)
                f = v.astype(np.float32).reshape(n_tok, -1)
            return torch.from_numpy(f)

        return read

    def _empty_batch(self) -> dict[str, Any]:
        """One empty list per field of a batch: the fields every batch has, then those of
        pre-encoded text, of pairs and the pass-through ``columns``."""
        keys = ("ids", "latents" if self.pre_latents else "images", "captions", "caption_kinds", "buckets", "curriculum_stage")
        out: dict[str, Any] = {k: [] for k in keys}
        if self.pre_text:
            out["cap_feats"] = []
        if self.pairs:
            out.update(sources=[], source_buckets=[], kinds=[])
        out.update({c: [] for c in self.config.columns})
        return out

    def _append_sample(self, out: dict[str, Any], t: dict, i: int, cap_i: int, pix, src, arrays: set[str]) -> None:
        """Add kept row ``i`` to the batch's lists: a pair's source, the pixels (or latent), the
        chosen caption variant ``cap_i`` (-1: none, the empty caption), bucket, stage, columns."""
        if self.pairs:
            out["sources"].append(src)
            out["source_buckets"].append((t["src_bucket_w"][i], t["src_bucket_h"][i]))
            out["kinds"].append(t["kind"][i])
        cap = t["captions"][i][cap_i] if cap_i >= 0 else {"text": "", "kind": None}
        out["ids"].append(t["id"][i])
        out["latents" if self.pre_latents else "images"].append(pix)
        out["captions"].append(cap["text"] or "")
        out["caption_kinds"].append(cap["kind"])
        out["buckets"].append((t["bucket_w"][i], t["bucket_h"][i]))
        out["curriculum_stage"].append(t["curriculum_stage"][i])
        for c in self.config.columns:
            v = t[c][i]
            out[c].append(np.asarray(v, dtype=np.float32) if c in arrays and v is not None else v)

    def _row_pixels(self, t: dict, i: int, lat, rng) -> tuple[torch.Tensor | None, torch.Tensor | None, str | None]:
        """Row ``i``'s target as a tensor, its source for an editing pair, and why it is skipped
        (None when it is not): the pre-encoded latent where the export wrote one (no decoding),
        else the image decoded and cropped to its bucket."""
        bw, bh = t["bucket_w"][i], t["bucket_h"][i]
        if lat is not None:  # pre-encoded: no decoding, the latent of the centre crop export made
            z = lat(i)
            if z is None or len(z) == 0 or len(z) % ((bh // 8) * (bw // 8)):
                return None, None, "missing_latents"
            return torch.from_numpy(z.astype(np.float32).reshape(-1, bh // 8, bw // 8)), None, None  # a writable copy
        crop = _pair_crop(rng) if self.pairs else (lambda: rng)
        pix, why = _decode_chw(t["image"][i], bw, bh, crop())
        src = None
        if why is None and self.pairs:  # the source, cropped where the target is (same size: same offset)
            src, why = _decode_chw(t["src_image"][i], t["src_bucket_w"][i], t["src_bucket_h"][i], crop())
            why = why and f"source {why}"
        return pix, src, why

    def _batch_lengths(self, plan: EpochPlan, sl: slice, t: dict, k: np.ndarray) -> dict[str, Any]:
        """The kept rows' (``k``) token counts: image, sequence, what the model runs, caption
        (and source, for pairs), as the loop and its throughput figures read them."""
        img_tok = np.asarray(t["image_tokens"], dtype=np.int64)[k] if len(k) else np.zeros(0, np.int64)
        out: dict[str, Any] = {"image_tokens": torch.from_numpy(img_tok)}
        out["seq_lens"] = torch.from_numpy(plan.seq_lens[sl][k].astype(np.int64))
        model = plan.seq_lens if plan.model_lens is None else plan.model_lens
        out["model_lens"] = torch.from_numpy(model[sl][k].astype(np.int64))  # what the model runs per sample
        out["packing"] = plan.packing
        out["caption_tokens"] = out["seq_lens"] - out["image_tokens"]
        if self.pairs:  # every segment is in seq_lens: text = all - target - source
            out["source_tokens"] = torch.from_numpy(
                np.asarray(t["src_image_tokens"], dtype=np.int64)[k] if len(k) else np.zeros(0, np.int64)
            )
            out["caption_tokens"] -= out["source_tokens"]
        return out


def _decode_chw(data: bytes | None, width: int, height: int, rng) -> tuple[torch.Tensor | None, str | None]:
    """(uint8 3 x height x width tensor, None), or (None, why) for bytes that are missing or do not
    decode: a bad image costs its row, never the run."""
    if data is None:
        return None, "missing_image"
    try:
        arr = decode_and_crop(data, width, height, rng)
    except Exception as e:  # corrupt / truncated / hostile bytes
        return None, f"decode_error: {type(e).__name__}: {str(e)[:120]}"
    # HWC -> CHW in NumPy: torch's strided copy is slow on a busy machine (thread spin-up)
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1))), None


def _pair_crop(rng: np.random.Generator | None):
    """A maker of crop generators that all start from one seed drawn from ``rng``: a pair's source
    and target of one size get the same random crop, so the edit stays where the instruction says."""
    seed = None if rng is None else int(rng.integers(1 << 62))
    return lambda: None if seed is None else np.random.default_rng(seed)


def _flat_lists(col: pa.ChunkedArray, nested: bool = False):
    """Row i -> a NumPy view of its list (or, ``nested``, a list of views, one per inner list),
    without going through Python floats."""
    arr = col.combine_chunks()
    if len(arr) == 0:
        return lambda i: None
    offs = arr.offsets.to_numpy()
    valid = arr.is_valid().to_numpy(zero_copy_only=False)
    if not nested:
        vals = arr.values.to_numpy(zero_copy_only=False)
        return lambda i: vals[offs[i] : offs[i + 1]] if valid[i] else None
    inner = arr.values
    ioffs = inner.offsets.to_numpy()
    vals = inner.values.to_numpy(zero_copy_only=False)
    return lambda i: [vals[ioffs[j] : ioffs[j + 1]] for j in range(offs[i], offs[i + 1])] if valid[i] else None


def _numeric_nested(t: pa.DataType) -> bool:
    """(Nested) lists of numbers: pre-encoded latents or text features, handed over as float32 arrays."""
    if not (pa.types.is_list(t) or pa.types.is_fixed_size_list(t) or pa.types.is_large_list(t)):
        return False
    while pa.types.is_list(t) or pa.types.is_fixed_size_list(t) or pa.types.is_large_list(t):
        t = t.value_type
    return pa.types.is_floating(t) or pa.types.is_integer(t)


# --- the loader ------------------------------------------------------------------------------


def _passthrough(batch: Any) -> Any:
    return batch


@dataclass
class LoaderMetrics:
    """Running figures of what the loader delivered since the last ``set_epoch`` / iteration start."""

    batches: int = 0
    samples: int = 0
    padded_tokens: int = 0  # tokens the model runs: batch size x longest model length (packing: their sum), summed
    model_tokens: int = 0  # per sample, segments 32-padded: what the model runs without batch padding
    real_tokens: int = 0  # content tokens (seq_lens)
    batch_sizes: Counter = field(default_factory=Counter)
    skipped: Counter = field(default_factory=Counter)
    seconds: float = 0.0  # wall time of the iteration so far
    wait_seconds: float = 0.0  # of which the consumer waited for a batch

    def update(self, batch: dict[str, Any]) -> None:
        seq = batch["seq_lens"]
        n = len(seq)
        self.batches += 1
        self.samples += n
        if n:
            model = batch.get("model_lens", seq)
            self.padded_tokens += int(model.sum()) if batch.get("packing") else n * int(model.max())
            self.model_tokens += int(model.sum())
            self.real_tokens += int(seq.sum())
        self.batch_sizes[n] += 1
        for _, reason in batch["skipped"]:
            self.skipped[reason.split(":", 1)[0]] += 1

    def to_dict(self) -> dict[str, Any]:
        sizes = np.repeat(list(self.batch_sizes.keys()), list(self.batch_sizes.values())) if self.batches else np.zeros(1)
        return {
            "batches": self.batches,
            "samples": self.samples,
            "samples_per_s": round(self.samples / self.seconds, 2) if self.seconds > 0 else None,
            "seconds": round(self.seconds, 3),
            "data_wait_fraction": round(self.wait_seconds / self.seconds, 4) if self.seconds > 0 else None,
            # batch padding (what batching controls; 0 when packed), and all padding (the model's own 32-padding too)
            "padded_token_fraction": round(1 - self.model_tokens / self.padded_tokens, 4) if self.padded_tokens else 0.0,
            "real_padding_fraction": round(1 - self.real_tokens / self.padded_tokens, 4) if self.padded_tokens else 0.0,
            "tokens_per_batch": round(self.padded_tokens / self.batches, 1) if self.batches else 0.0,
            "batch_size": {
                "mean": round(float(sizes.mean()), 2),
                "min": int(sizes.min()),
                "max": int(sizes.max()),
                "p50": float(np.percentile(sizes, 50)),
                "histogram": dict(sorted(self.batch_sizes.items())),
            },
            "skipped": dict(self.skipped),
        }


class Loader:
    """A PyTorch DataLoader over a ShardDataset that knows where it is: ``state_dict()`` after any
    batch, ``load_state_dict()`` before iterating resumes with exactly the batches that were not
    yet delivered (batches prefetched by workers but not delivered are read again).

    Workers are spawned (not forked): Lance holds threads and file handles that do not survive a
    fork. They start once and persist across epochs (``persistent_workers``), since a spawned
    worker takes seconds to import torch and Lance. Batches whose every row was skipped are
    counted but not yielded.
    """

    def __init__(
        self,
        dataset: ShardDataset,
        *,
        num_workers: int = 2,
        prefetch_factor: int | None = 2,
        multiprocessing_context: str = "spawn",
        persistent_workers: bool = True,
        pin_memory: bool = False,
        timeout: float = 0,
    ):
        import multiprocessing

        self.dataset = dataset
        self.num_workers = num_workers
        self.prefetch_factor = prefetch_factor if num_workers else None
        self.mp_context = multiprocessing.get_context(multiprocessing_context) if num_workers else None
        self.persistent_workers = persistent_workers and num_workers > 0
        self.pin_memory = pin_memory
        self.timeout = timeout
        self.batches_done = dataset.start_batch
        self.metrics = LoaderMetrics()
        self._dl: DataLoader | None = None

    def set_epoch(self, epoch: int) -> None:
        """Start ``epoch`` from its first batch (call once per epoch, before iterating)."""
        self.dataset.set_epoch(epoch, 0)
        self.batches_done = 0
        self.metrics = LoaderMetrics()

    def __len__(self) -> int:
        return len(self.dataset)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        ds = self.dataset
        if self.num_workers:
            ds.share_position(self.mp_context)
        ds.set_epoch(ds.epoch, self.batches_done)
        ds.plan()  # the main process's copy: length and order checks
        if self._dl is None:
            self._dl = DataLoader(
                ds,
                batch_size=None,
                collate_fn=_passthrough,
                num_workers=self.num_workers,
                prefetch_factor=self.prefetch_factor,
                multiprocessing_context=self.mp_context,
                persistent_workers=self.persistent_workers,
                pin_memory=self.pin_memory,
                timeout=self.timeout,
            )
        dl = self._dl
        m = self.metrics
        t_start = time.perf_counter() - m.seconds
        it = iter(dl)
        while True:
            t0 = time.perf_counter()
            try:
                batch = next(it)
            except StopIteration:
                break
            m.wait_seconds += time.perf_counter() - t0
            if batch["batch_index"] != self.batches_done:  # the stream order is the plan order
                raise RuntimeError(f"loader out of order: got batch {batch['batch_index']}, expected {self.batches_done}")
            self.batches_done += 1
            m.update(batch)
            m.seconds = time.perf_counter() - t_start
            if len(batch["ids"]):
                yield batch

    def close(self) -> None:
        """Stop the persistent workers now (they also stop when the loader is garbage-collected)."""
        it = getattr(self._dl, "_iterator", None) if self._dl is not None else None
        if it is not None and hasattr(it, "_shutdown_workers"):
            it._shutdown_workers()
        self._dl = None

    def state_dict(self) -> dict[str, Any]:
        """A few integers: enough to resume mid-epoch on the same shard, config and world size."""
        ds = self.dataset
        return {
            "epoch": ds.epoch,
            "batches_done": self.batches_done,
            "rank": ds.rank,
            "world_size": ds.world_size,
            "dataset_version": ds.version,
            "config": ds.config.fingerprint(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        ds = self.dataset
        for key, have in (("world_size", ds.world_size), ("dataset_version", ds.version), ("config", ds.config.fingerprint())):
            if state.get(key) != have:
                raise ValueError(
                    f"cannot resume: the state was saved with {key}={state.get(key)!r}, this loader has "
                    f"{have!r}; the batch plan would differ (resume with the same shard version, "
                    "loader config and world size)"
                )
        ds.set_epoch(int(state["epoch"]), int(state["batches_done"]))
        self.batches_done = int(state["batches_done"])
        self.metrics = LoaderMetrics()

    def report(self) -> dict[str, Any]:
        """Metrics so far this epoch: padded-token fraction, batch-size distribution, samples/s, skips."""
        return self.metrics.to_dict()


class MixedLoader:
    """Text-to-image and editing batches in one run (omni-pre-training): each batch comes from the
    pair loader with probability ``ratio``, else from the main one. An epoch is one pass of the main
    loader; the pair loader starts its own next epoch whenever it runs out.

    Why batches and not samples: each loader keeps its own bucketing and token budget (a pair counts
    its source as well), and the model takes either kind, or both, in one batch. The draw for batch
    ``k`` is seeded by ``(seed, k)``, so a resumed run draws the same kinds as an uninterrupted one;
    ``state_dict`` holds both loaders' positions and the number of draws."""

    def __init__(self, main: Loader, edits: Loader, ratio: float, seed: int = 0):
        if not 0 < ratio < 1:
            raise ValueError(f"edit ratio {ratio} must lie strictly between 0 and 1 (0: no pair loader; 1: pair shards alone)")
        self.main, self.edits, self.ratio, self.seed = main, edits, ratio, seed
        self.draws, self.edit_epoch, self.edit_batches = 0, 0, 0
        self._edit_it: Iterator[dict[str, Any]] | None = None

    def set_epoch(self, epoch: int) -> None:
        self.main.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.main)

    def _is_edit(self, k: int) -> bool:
        return bool(np.random.default_rng([self.seed, k]).random() < self.ratio)

    def _next_edit(self) -> dict[str, Any]:
        for _ in range(2):  # this epoch's next batch, else the first of the next epoch
            if self._edit_it is None:
                self._edit_it = iter(self.edits)
            batch = next(self._edit_it, None)
            if batch is not None:
                self.edit_batches += 1
                return batch
            self.edit_epoch += 1
            self.edits.set_epoch(self.edit_epoch)
            self._edit_it = None
        raise RuntimeError("the pair shards yielded no batch")

    def __iter__(self) -> Iterator[dict[str, Any]]:
        main = iter(self.main)
        while True:
            k, self.draws = self.draws, self.draws + 1
            if self._is_edit(k):
                yield self._next_edit()
                continue
            batch = next(main, None)
            if batch is None:
                self.draws -= 1  # the draw that found the epoch's end is made again in the next epoch
                return
            yield batch

    def close(self) -> None:
        self.main.close()
        self.edits.close()

    def state_dict(self) -> dict[str, Any]:
        return {"main": self.main.state_dict(), "edits": self.edits.state_dict(), "draws": self.draws, "edit_epoch": self.edit_epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "main" not in state:
            raise ValueError("cannot resume: the checkpoint was saved without pair shards; train on them in a new out_dir")
        self.main.load_state_dict(state["main"])
        self.edits.load_state_dict(state["edits"])
        self.draws, self.edit_epoch, self._edit_it = int(state["draws"]), int(state["edit_epoch"]), None

    def report(self) -> dict[str, Any]:
        """The main loader's figures (``padded_token_fraction``, ...) plus the share of edit batches."""
        rep = self.main.report()
        rep["edit_batch_fraction"] = round(self.edit_batches / self.draws, 4) if self.draws else 0.0
        return rep
