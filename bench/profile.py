"""Profiling throughput, measured as ratios within one run (so a busy machine cancels out).

1. Cheap signals (metadata + hashes + entropy + degradation, one decode) vs a decode-only loop
   over the same images: (a) plain PIL full decode to RGB, (b) our safe decode alone (same
   working-copy size, JPEG DCT scaling). Target: >= 0.5 of (a).
2. Each model stage's ``process_batch`` (safe decode + model + Arrow columns) vs the bare model's
   batched inference on the same encoded images (PIL decode + the model's own preprocessing +
   forward, no Arrow, no stage). Target: >= 0.85.
3. Optionally (--ray) the cheap stage through ``run_stage`` (Ray actors + Lance commit).

Usage: .venv/bin/python bench/profile.py [--images 80] [--repeat 2] [--ray]
Images: the 80 COCO photos in ../shared/data/coco-mini (640x480-ish JPEGs), cycled.
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# this file is named like the stdlib ``profile`` module (which cProfile imports): keep bench/ off the path
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def timed(fn, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=80)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--ray", action="store_true")
    args = ap.parse_args()

    import numpy as np
    import pyarrow as pa
    import torch
    from PIL import Image

    from pipelines.profile import BrisqueStage, CheapStage, ClipStage, NsfwStage, OcrStage, TextEmbStage

    torch.set_num_threads(os.cpu_count() or 1)
    files = sorted((ROOT / ".." / "shared" / "data" / "coco-mini" / "images").glob("*.jpg"))
    data = [files[i % len(files)].read_bytes() for i in range(args.images)]
    caps = [[{"text": "a photo of something on a table", "kind": "short", "lang": "en"}]] * len(data)
    batch = pa.RecordBatch.from_pydict({
        "image": pa.array(data, pa.large_binary()), "image_uri": pa.array([None] * len(data), pa.string()),
        "captions": pa.array(caps),
    })
    n = len(data)
    lines = [f"machine: {platform.machine()}, {os.cpu_count()} cores, "
             f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB, no GPU; "
             f"{n} COCO JPEGs (~640x480); best of {args.repeat}", ""]

    def rate(sec: float) -> float:
        return n / sec

    # 1. cheap signals ----------------------------------------------------------------------------------
    def plain_decode():
        for b in data:
            Image.open(io.BytesIO(b)).convert("RGB")

    from engines.profiling.decode import DecodeOptions, decode_rows

    def safe_decode():
        decode_rows(list(data), None, DecodeOptions())

    cheap = CheapStage()
    t_plain, t_safe = timed(plain_decode, args.repeat), timed(safe_decode, args.repeat)
    t_cheap = timed(lambda: cheap.run_batch(batch), args.repeat)
    lines += ["| measurement | images/s | ratio |", "|---|---|---|",
              f"| decode only: PIL full decode to RGB | {rate(t_plain):.1f} | 1.00 |",
              f"| decode only: safe decode alone (bomb cap, EXIF, working copy 256..512 px) | {rate(t_safe):.1f} | {t_plain / t_safe:.2f} |",
              f"| cheap stage: meta+hash+entropy+degradation (one decode) | {rate(t_cheap):.1f} | **{t_plain / t_cheap:.2f}** of PIL decode (target >= 0.5) |"]

    # 2. model stages vs bare batched inference -----------------------------------------------------------
    def bench_stage(stage, bare, label):
        stage.setup()
        stage.run_batch(batch.slice(0, 4))  # warm-up
        bare(4)
        t_stage = timed(lambda: stage.run_batch(batch), args.repeat)
        t_bare = timed(lambda: bare(n), args.repeat)
        lines.append(f"| {label}: stage / bare batched inference | {rate(t_stage):.1f} / {rate(t_bare):.1f} | **{t_bare / t_stage:.2f}** (target >= 0.85) |")

    # NSFW: nudenet's own preprocessing on cv2-decoded BGR, one ONNX run per batch of 32
    nsfw = NsfwStage()

    def bare_nsfw(k):
        import cv2
        from nudenet.nudenet import _postprocess, _read_image

        det = nsfw.detector
        for s in range(0, k, 32):
            pre = [_read_image(cv2.imdecode(np.frombuffer(b, np.uint8), cv2.IMREAD_COLOR), 320) for b in data[s:s + 32]]
            out = det.session.run(None, {det.input_name: np.vstack([p[0] for p in pre])})[0]
            [_postprocess([out[j:j + 1]], p[3], p[4], p[1], p[2], p[5], p[6], 320, 320) for j, p in enumerate(pre)]

    lines.append("")
    lines += ["| model stage | images/s | ratio |", "|---|---|---|"]
    bench_stage(nsfw, bare_nsfw, "prof_nsfw (nudenet 320n ONNX)")

    # CLIP (tiny random hf CLIPModel: the model is cheap, so this ratio is a worst case for overhead)
    clip = ClipStage({"model": {"backend": "hf_clip", "random_init": True}})

    def bare_clip(k):
        m = clip.model
        for s in range(0, k, 32):
            m.embed_images([Image.open(io.BytesIO(b)).convert("RGB") for b in data[s:s + 32]])
            m.embed_texts(["a photo of something on a table"] * len(data[s:s + 32]))

    bench_stage(clip, bare_clip, "prof_clip (tiny random CLIPModel, image+text)")

    # MiniLM captions: the stage vs encode() on the same strings
    temb = TextEmbStage()
    bench_stage(temb, lambda k: temb.model.embed_texts(["a photo of something on a table"] * k), "prof_text_emb (MiniLM, text only)")

    # BRISQUE: per-image model; bare = PIL decode + resize to the same working size + score
    br = BrisqueStage()

    def bare_brisque(k):
        for b in data[:k]:
            im = Image.open(io.BytesIO(b)).convert("RGB")
            im.thumbnail((512, 512))
            br.model.score(np.asarray(im))

    bench_stage(br, bare_brisque, "prof_brisque (SVM)")

    # OCR on a subset (slow on CPU): bare = rapidocr on the PIL-decoded BGR array
    ocr = OcrStage()
    sub = min(n, 16)

    def bare_ocr(k):
        for b in data[:k]:
            ocr.engine._engine(np.asarray(Image.open(io.BytesIO(b)).convert("RGB"))[:, :, ::-1].copy())

    ocr.setup()
    t_stage = timed(lambda: ocr.run_batch(batch.slice(0, sub)), 1)
    t_bare = timed(lambda: bare_ocr(sub), 1)
    lines.append(f"| prof_ocr (rapidocr PP-OCR ONNX, {sub} images): stage / bare | {sub / t_stage:.2f} / {sub / t_bare:.2f} | **{t_bare / t_stage:.2f}** (target >= 0.85) |")

    if args.ray:
        import shutil
        import tempfile

        import lance

        from curation.cluster import RayConfig, init_ray
        from curation.runner import run_stage
        from curation.store import Store
        from tests.helpers import sample_row, samples_table

        d = Path(tempfile.mkdtemp()) / "b.lance"
        lance.write_dataset(samples_table([sample_row(b, "bench", str(i)) for i, b in enumerate(data)]), str(d), max_rows_per_file=max(1, n // 4))
        init_ray(RayConfig(num_cpus=os.cpu_count()))
        t0 = time.perf_counter()
        run_stage(Store(str(d)), CheapStage(), show_progress=False)
        t_ray = time.perf_counter() - t0
        lines.append(f"\ncheap stage through run_stage (Ray actors + Lance commit, {n} rows, 4 fragments, incl. actor start): "
                     f"{n / t_ray:.1f} images/s")
        shutil.rmtree(d.parent, ignore_errors=True)

    print("\n".join(lines))


if __name__ == "__main__":
    main()
