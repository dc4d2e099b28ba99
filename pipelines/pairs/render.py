"""``curate pairs render``: text-editing pairs rendered on real photos (see the package docstring)."""

from __future__ import annotations

import hashlib
import json
import time
from collections import Counter
from typing import Any, ClassVar

import pyarrow as pa
from pydantic import Field, field_validator

from curation.runner import StageResult
from curation.store import Store
from engines.pairs.render import KINDS, RENDER_VERSION
from pipelines.pairs.common import (
    PAIRS_SCHEMA,
    PairJobConfig,
    PairWorker,
    check_kinds,
    eligible_photos,
    existing_ids,
    open_out,
    resolve_out,
    run_job,
    table_path,
)


class PairsConfig(PairJobConfig):
    """What to render (``curate pairs render`` options)."""

    table: ClassVar[str] = "pairs"

    n: int = Field(100, ge=1, le=10_000_000, description="pairs to make (photos are reused when there are fewer)")
    seed: int = Field(0, ge=0, description="picks photos, words, styles, placements and instructions")
    kinds: list[str] = Field(list(KINDS), description="kinds of edit, dealt in turn: replace, remove, add")

    @field_validator("kinds")
    @classmethod
    def _known_kinds(cls, v: list[str]) -> list[str]:
        return check_kinds(v, KINDS)


def default_out(store: Store) -> str:
    return table_path(store, PairsConfig.table)


def pending(store: Store, cfg: PairsConfig) -> tuple[int, int]:
    """(pairs to render, pairs the table already has): what ``render_pairs`` would do, read
    without Ray (the command checks it before starting Ray)."""
    units, skipped = plan_pairs(store.open(), cfg, existing_ids(open_out(resolve_out(store, cfg))))
    return sum(len(json.loads(u["pairs"])) for u in units), skipped


def _pair_id(seed: int, i: int, kind: str, source_id: str) -> str:
    return hashlib.sha1(f"{RENDER_VERSION}:{seed}:{i}:{kind}:{source_id}".encode()).hexdigest()[:24]


def plan_pairs(ds, cfg: PairsConfig, existing: set[str] = frozenset()) -> tuple[list[dict[str, Any]], int]:  # type: ignore[assignment]
    """(units of pairs to render, pairs skipped because the table has them). Each pair: its
    index ``i``, ``pair_id``, the photo's ``source_id`` and ``pos`` (row offset), ``kind``, ``lang``."""
    ids, positions = eligible_photos(ds)
    if not ids:
        return [], 0
    order = sorted(range(len(ids)), key=lambda j: hashlib.sha1(f"{cfg.seed}:{ids[j]}".encode()).digest())
    k = len(cfg.kinds)
    todo, skipped = [], 0
    for i in range(cfg.n):
        j = order[i % len(order)]
        kind = cfg.kinds[i % k]
        pid = _pair_id(cfg.seed, i, kind, ids[j])
        if pid in existing:
            skipped += 1
            continue
        todo.append({"i": i, "pair_id": pid, "source_id": ids[j], "pos": positions[j], "kind": kind, "lang": ("en", "zh")[(i // k) % 2]})
    units = [{"unit": u, "pairs": json.dumps(todo[s : s + cfg.batch_size])} for u, s in enumerate(range(0, len(todo), cfg.batch_size))]
    return units, skipped


class _RenderWorker(PairWorker):
    """Renders text-editing pairs (``engines.pairs.render``)."""

    config_cls = PairsConfig

    def __init__(self, *args, font: str, **kw):
        super().__init__(*args, **kw)
        self.font = font

    def _unit(self, pairs: list[dict]) -> tuple[pa.Table, Counter]:
        from engines.pairs.render import encode_image, render_pair

        counters: Counter = Counter()
        by_pos = self._planned_rows(pairs)
        photos: dict[int, Any] = {}
        out: list[dict] = []
        for p in pairs:
            row = by_pos[p["pos"]]
            if p["pos"] not in photos:
                photos[p["pos"]] = self._photo(row["image"], row["image_uri"])
            photo = photos[p["pos"]]
            if isinstance(photo, str):
                counters[f"skipped_decode_{photo}"] += 1
                continue
            pair = render_pair(photo, p["kind"], [self.cfg.seed, p["i"]], lang=p["lang"], font_path=self.font)
            if pair is None:
                counters["skipped_too_small"] += 1
                continue
            fmt, q = self.cfg.image_format, self.cfg.jpeg_quality
            out.append(
                {
                    "pair_id": p["pair_id"],
                    "source_id": p["source_id"],
                    "target_id": None,  # the target is made here, not a dataset row
                    "kind": pair.kind,
                    "src_image": encode_image(pair.source, fmt, q),
                    "tgt_image": encode_image(pair.target, fmt, q),
                    "instruction_en": pair.instruction_en,
                    "instruction_zh": pair.instruction_zh,
                    "src_text": pair.src_text,
                    "tgt_text": pair.tgt_text,
                    "box": list(pair.box),
                    "changed_fraction": pair.changed_fraction,
                    "lang": pair.lang,
                    "style": pair.style,
                    "width": int(photo.shape[1]),
                    "height": int(photo.shape[0]),
                    "provenance": self.provenance,
                    "created_at": self.created_at,
                }
            )
            counters[f"kind_{pair.kind}"] += 1
            counters[f"lang_{pair.lang}"] += 1
        return pa.Table.from_pylist(out, schema=PAIRS_SCHEMA), counters


def render_pairs(
    store: Store, cfg: PairsConfig, *, show_progress: bool = True, concurrency: int | None = None, font: str | None = None
) -> StageResult:
    """Render ``cfg.n`` pairs from the dataset's photos into the pair table; one new version of it.
    One render job per dataset at a time (a second waits). ``extra`` has the table's path
    (``out``), pairs written, counts by kind and language, and pairs per second (job wall time,
    set-up of the Ray workers included)."""
    from engines.pairs.render import find_font

    t0 = time.perf_counter()
    font = font or find_font()

    def plan(ds, existing):
        units, skipped = plan_pairs(ds, cfg, existing)
        return units, skipped, {}, "no row with an image and no error"

    def tally(c: Counter) -> dict[str, Any]:
        return {"by_kind": {k: c.get(f"kind_{k}", 0) for k in cfg.kinds}, "by_lang": {k: c.get(f"lang_{k}", 0) for k in ("en", "zh")}}

    return run_job(
        store, cfg, "render", plan, _RenderWorker, {"font": font}, f"{RENDER_VERSION} seed={cfg.seed}", tally,
        t0=t0, show_progress=show_progress, concurrency=concurrency,
    )  # fmt: skip
