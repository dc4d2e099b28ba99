"""``curate pairs synth``: object edits from COCO instance masks (see the package docstring)."""

from __future__ import annotations

import hashlib
import json
import time
from collections import Counter
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa
from pydantic import Field, field_validator

from curation.runner import StageResult
from curation.store import Store
from engines.pairs.synth import SYNTH_KINDS, SYNTH_VERSION
from pipelines.pairs.common import (
    PAIRS_SCHEMA,
    PairJobConfig,
    PairWorker,
    check_kinds,
    existing_ids,
    open_out,
    resolve_out,
    run_job,
    table_path,
)


class SynthConfig(PairJobConfig):
    """What to synthesise (``curate pairs synth`` options)."""

    table: ClassVar[str] = "synth"

    annotations: str = Field(description="a COCO instances JSON (images, annotations with segmentations, categories)")
    n: int = Field(100, ge=1, le=10_000_000, description="pairs to make (objects are reused when there are fewer)")
    seed: int = Field(0, ge=0, description="picks photos, objects, colours, shifts, scales and instructions")
    kinds: list[str] = Field(list(SYNTH_KINDS), description="kinds of edit, dealt in turn: recolour, remove, move, resize")
    min_area: float = Field(0.02, gt=0, lt=1, description="smallest object (with what is attached to it), as a share of the image")
    max_area: float = Field(0.4, gt=0, le=1, description="largest object (with what is attached to it), as a share of the image")

    @field_validator("kinds")
    @classmethod
    def _known_kinds(cls, v: list[str]) -> list[str]:
        return check_kinds(v, SYNTH_KINDS)

    @field_validator("max_area")
    @classmethod
    def _area_range(cls, v: float, info) -> float:
        lo = info.data.get("min_area")
        if lo is not None and v <= lo:
            raise ValueError(f"max_area {v} must be larger than min_area {lo}")
        return v


def default_synth_out(store: Store) -> str:
    return table_path(store, SynthConfig.table)


# --- synth: object edits from COCO instance masks ------------------------------------------------


def load_annotations(path: str) -> tuple[dict[str, dict], str]:
    """(``engines.pairs.synth.index_annotations`` of the COCO instances file at ``path``, the first
    12 hex digits of its SHA-1). ``ValueError`` with a one-line reason when it is not one."""
    from pathlib import Path

    from engines.pairs.synth import index_annotations

    p = Path(path).expanduser()
    if not p.exists():
        raise ValueError(f"--annotations {path}: no such file")
    if not p.is_file():
        raise ValueError(f"--annotations {path} is not a file (a COCO instances JSON, e.g. instances_train2017.json)")
    data = p.read_bytes()
    try:
        coco = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"--annotations {path} is not JSON: {e}") from None
    if not isinstance(coco, dict) or not all(isinstance(coco.get(k), list) for k in ("images", "annotations", "categories")):
        raise ValueError(f"--annotations {path} is not a COCO instances file (it needs images, annotations and categories lists)")
    try:
        return index_annotations(coco), hashlib.sha1(data).hexdigest()[:12]
    except (KeyError, TypeError, ValueError, IndexError) as e:
        raise ValueError(f"--annotations {path}: a malformed image or annotation entry ({type(e).__name__}: {e})") from None


def _base(name: str | None) -> str | None:
    return name.replace("\\", "/").rsplit("/", 1)[-1] if name else None


def match_photos(ds, index: dict[str, dict]) -> tuple[list[dict[str, Any]], Counter]:
    """The rows with a stored image and no error that have an entry in ``index`` (the COCO file
    names): ``[{"id", "pos", "file_name"}]`` in row order, and counters ``unmatched`` (no such
    file name) and ``size_mismatch`` (the name matches, the row's width x height does not)."""
    import pyarrow.compute as pc

    cols = [c for c in ("id", "image_sha256", "error", "source_key", "image_uri", "width", "height") if c in ds.schema.names]
    t = ds.to_table(columns=cols)
    ok = pc.and_(pc.is_valid(t.column("image_sha256")), pc.is_null(t.column("error"))).to_numpy(zero_copy_only=False)
    stems: dict[str, str | None] = {}
    for fn in index:
        stem = fn.rsplit(".", 1)[0]
        stems[stem] = None if stem in stems and stems[stem] != fn else fn  # an ambiguous stem matches nothing
    n = t.num_rows
    get = {c: t.column(c).to_pylist() if c in t.column_names else [None] * n for c in ("id", "source_key", "image_uri", "width", "height")}
    out, counts = [], Counter()
    for pos in np.flatnonzero(ok).tolist():
        fn = None
        for name in (_base(get["source_key"][pos]), _base(get["image_uri"][pos])):
            if not name:
                continue
            fn = name if name in index else stems.get(name) or stems.get(name.rsplit(".", 1)[0])
            if fn:
                break
        if fn is None:
            counts["unmatched"] += 1
            continue
        w, h = get["width"][pos], get["height"][pos]
        if w is not None and h is not None and (w, h) != (index[fn]["width"], index[fn]["height"]):
            counts["size_mismatch"] += 1
            continue
        out.append({"id": get["id"][pos], "pos": pos, "file_name": fn})
    return out, counts


def _synth_pair_id(seed: int, i: int, kind: str, source_id: str, ann_id: Any, digest: str) -> str:
    return hashlib.sha1(f"{SYNTH_VERSION}:{seed}:{i}:{kind}:{source_id}:{ann_id}:{digest}".encode()).hexdigest()[:24]


def plan_synth(
    ds,
    cfg: SynthConfig,
    index: dict[str, dict],
    digest: str,
    existing: set[str] = frozenset(),  # type: ignore[assignment]
) -> tuple[list[dict[str, Any]], int, dict[str, Any]]:
    """(units of pairs to make, pairs skipped because the table has them, what matching found).

    The matched photos are ranked by ``sha1(seed:id)``, the objects of each photo by
    ``sha1(seed:ann_id)``; a kind's candidates are the first object of every photo, then the
    second, ... Pair ``i`` has kind ``kinds[i mod k]`` and is that kind's ``j = i div k``-th pair:
    candidate ``(j + kind_index * len / k) mod len`` (each kind starts at another photo)."""
    from engines.pairs.synth import eligible_objects, refer

    matched, counts = match_photos(ds, index)
    rank = sorted(matched, key=lambda r: hashlib.sha1(f"{cfg.seed}:{r['id']}".encode()).digest())
    cands: dict[str, list[tuple[dict, dict]]] = {}
    no_object = 0
    for kind in cfg.kinds:
        per_photo = []
        for r in rank:
            objs = eligible_objects(index[r["file_name"]], kind, cfg.min_area, cfg.max_area)
            per_photo.append(sorted(objs, key=lambda o: hashlib.sha1(f"{cfg.seed}:{o['ann_id']}".encode()).digest()))
        deep = max((len(o) for o in per_photo), default=0)
        cands[kind] = [(r, objs[d]) for d in range(deep) for r, objs in zip(rank, per_photo, strict=True) if d < len(objs)]
    for r in rank:
        entry = index[r["file_name"]]
        no_object += not any(eligible_objects(entry, kind, cfg.min_area, cfg.max_area) for kind in cfg.kinds)
    info = {
        "photos_matched": len(matched),
        "photos_unmatched": counts["unmatched"],
        "photos_size_mismatch": counts["size_mismatch"],
        "photos_without_object": no_object,
        "objects": {k: len(v) for k, v in cands.items()},
    }
    k = len(cfg.kinds)
    todo, skipped = [], 0
    for i in range(cfg.n):
        ki, j = i % k, i // k
        kind = cfg.kinds[ki]
        pool = cands[kind]
        if not pool:
            continue
        r, o = pool[(j + ki * len(pool) // k) % len(pool)]
        entry = index[r["file_name"]]
        pid = _synth_pair_id(cfg.seed, i, kind, r["id"], o["ann_id"], digest)
        if pid in existing:
            skipped += 1
            continue
        peers = [p["bbox"] for p in entry["objects"] if p["category"] == o["category"] and p["ann_id"] != o["ann_id"]]
        obj_en, obj_zh = refer(o["category"], o["bbox"], peers, entry["width"], entry["height"])
        todo.append(
            {
                "i": i,
                "pair_id": pid,
                "source_id": r["id"],
                "pos": r["pos"],
                "kind": kind,
                "width": entry["width"],
                "height": entry["height"],
                "category": o["category"],
                "refer": [obj_en, obj_zh],
                "ann_ids": [o["ann_id"], *(a["ann_id"] for a in o["with"])],
                "segmentations": [o["segmentation"], *(a["segmentation"] for a in o["with"])],
            }
        )
    units = [{"unit": u, "pairs": json.dumps(todo[s : s + cfg.batch_size])} for u, s in enumerate(range(0, len(todo), cfg.batch_size))]
    return units, skipped, info


def pending_synth(store: Store, cfg: SynthConfig, loaded: tuple[dict, str] | None = None) -> tuple[int, int, dict[str, Any]]:
    """(pairs to make, pairs the table already has, what matching found): what ``synth_pairs``
    would do, read without Ray (the command checks it before starting Ray). ``loaded``: what
    ``load_annotations(cfg.annotations)`` returned, if the caller has it (a full COCO file takes
    seconds to parse)."""
    index, digest = loaded or load_annotations(cfg.annotations)
    existing = existing_ids(open_out(resolve_out(store, cfg)))
    units, skipped, info = plan_synth(store.open(), cfg, index, digest, existing)
    return sum(len(json.loads(u["pairs"])) for u in units), skipped, info


class _SynthWorker(PairWorker):
    """Makes object-editing pairs (``engines.pairs.synth``) from the masks the units carry."""

    config_cls = SynthConfig

    def _unit(self, pairs: list[dict]) -> tuple[pa.Table, Counter]:
        import cv2

        from engines.pairs.render import encode_image
        from engines.pairs.synth import Skip, decode_segmentation, synth_pair

        counters: Counter = Counter()
        by_pos = self._planned_rows(pairs)
        photos: dict[int, Any] = {}
        out: list[dict] = []
        for p in pairs:
            row = by_pos[p["pos"]]
            if p["pos"] not in photos:
                rgb = self._decode(row["image"], row["image_uri"])
                photos[p["pos"]] = rgb if isinstance(rgb, str) else (rgb.size, self._shrink(rgb))
            got = photos[p["pos"]]
            if isinstance(got, str):
                counters[f"skipped_decode_{got}"] += 1
                continue
            (w, h), photo = got
            if (w, h) != (p["width"], p["height"]):
                counters["skipped_size_mismatch"] += 1
                continue
            segs = p["segmentations"][:1] if p["kind"] == "recolour" else p["segmentations"]
            mask = np.zeros((h, w), dtype=bool)
            for seg in segs:
                mask |= decode_segmentation(seg, h, w)
            if photo.shape[:2] != (h, w):  # shrunk to max_side: the mask follows
                small = cv2.resize(mask.astype(np.float32), (photo.shape[1], photo.shape[0]), interpolation=cv2.INTER_AREA)
                mask = small >= 0.5
            try:
                pair = synth_pair(photo, mask, p["kind"], [self.cfg.seed, p["i"]], tuple(p["refer"]))
            except Skip as e:
                counters[f"skipped_{e.reason}"] += 1
                continue
            fmt, q = self.cfg.image_format, self.cfg.jpeg_quality
            ann = "+".join(str(a) for a in (p["ann_ids"][:1] if p["kind"] == "recolour" else p["ann_ids"]))
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
                    "src_text": p["category"],
                    "tgt_text": pair.detail,
                    "box": list(pair.box),
                    "changed_fraction": pair.changed_fraction,
                    "lang": None,
                    "style": pair.params,
                    "width": int(photo.shape[1]),
                    "height": int(photo.shape[0]),
                    "provenance": f"{self.provenance} ann={ann}",
                    "created_at": self.created_at,
                }
            )
            counters[f"kind_{pair.kind}"] += 1
        return pa.Table.from_pylist(out, schema=PAIRS_SCHEMA), counters


def synth_pairs(
    store: Store,
    cfg: SynthConfig,
    *,
    show_progress: bool = True,
    concurrency: int | None = None,
    loaded: tuple[dict, str] | None = None,
) -> StageResult:
    """Make ``cfg.n`` object-editing pairs from the dataset's photos and the COCO masks of
    ``cfg.annotations`` into the pair table; one new version of it. ``extra`` has the table's path
    (``out``), pairs written, counts by kind, what matching found (``photos_matched``,
    ``photos_unmatched``, ...) and pairs per second (job wall time, set-up of the Ray workers
    included; and the parsing of the annotations unless ``loaded`` gives it)."""
    from pathlib import Path

    t0 = time.perf_counter()
    index, digest = loaded or load_annotations(cfg.annotations)

    def plan(ds, existing):
        units, skipped, info = plan_synth(ds, cfg, index, digest, existing)
        nothing = (
            "no row with an image and no error matches a file name of the annotations"
            if not info["photos_matched"]
            else f"no object of {cfg.min_area:.0%}-{cfg.max_area:.0%} of its image fits the kinds {', '.join(cfg.kinds)}"
        )
        return units, skipped, info, nothing

    def tally(c: Counter) -> dict[str, Any]:
        return {"by_kind": {k: c.get(f"kind_{k}", 0) for k in cfg.kinds}}

    provenance = f"{SYNTH_VERSION} seed={cfg.seed} annotations={Path(cfg.annotations).name}#{digest}"
    return run_job(
        store, cfg, "synth", plan, _SynthWorker, {}, provenance, tally,
        t0=t0, show_progress=show_progress, concurrency=concurrency, salt=digest,
    )  # fmt: skip
