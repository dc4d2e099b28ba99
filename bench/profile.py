"""Profiling throughput, measured as ratios within one run (so a busy machine cancels out).

Every pair (stage, its baseline) is timed in interleaved rounds (A, B, A, B, ...) and the median
of the rounds is reported, wall clock and CPU seconds of this process (the CPU-time ratio does not
move with other people's load on a shared machine; both sides are single-threaded here, as in a
Ray actor with ``num_cpus: 1``: OpenCV and ONNX Runtime are limited to one thread).

1. Cheap signals (metadata + hashes + entropy + degradation, one decode) vs a decode-only loop
   over the same images: (a) plain PIL full decode to RGB, (b) our safe decode alone (same
   working-copy size, JPEG DCT scaling). Target: >= 0.5 of (a).
2. Each model stage's ``process_batch`` (safe decode + model + Arrow columns) vs the bare model's
   batched inference on the same encoded images (PIL decode + the model's own preprocessing +
   forward, no Arrow, no stage). Target: >= 0.85.
3. Optionally (--ray) the cheap stage through ``run_stage`` (Ray actors + Lance commit).

Usage: .venv/bin/python bench/profile.py [--images 80] [--repeat 5] [--ray] [--skip ocr,clip,...]
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


def interleaved(fns: dict, repeat: int) -> dict:
    """Median wall and CPU seconds per function, the functions timed in alternating rounds."""
    import statistics

    wall: dict = {k: [] for k in fns}
    cpu: dict = {k: [] for k in fns}
    for _ in range(repeat):
        for k, fn in fns.items():
            c0, t0 = time.process_time(), time.perf_counter()
            fn()
            wall[k].append(time.perf_counter() - t0)
            cpu[k].append(time.process_time() - c0)
    return {k: (statistics.median(wall[k]), statistics.median(cpu[k])) for k in fns}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=80)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--ray", action="store_true")
    ap.add_argument("--skip", default="", help="comma-separated: nsfw,clip,text_emb,brisque,ocr")
    args = ap.parse_args()
    skip = {x.strip() for x in args.skip.split(",") if x.strip()}

    import cv2
    import numpy as np
    import pyarrow as pa
    import torch
    from PIL import Image

    from pipelines.profile import BrisqueStage, CheapStage, ClipStage, NsfwStage, OcrStage, TextEmbStage

    torch.set_num_threads(1)  # one CPU per worker, as the stages run in Ray actors with num_cpus: 1
    cv2.setNumThreads(1)
    files = sorted((ROOT / ".." / "shared" / "data" / "coco-mini" / "images").glob("*.jpg"))
    data = [files[i % len(files)].read_bytes() for i in range(args.images)]
    caps = [[{"text": "a photo of something on a table", "kind": "short", "lang": "en"}]] * len(data)
    batch = pa.RecordBatch.from_pydict(
        {
            "image": pa.array(data, pa.large_binary()),
            "image_uri": pa.array([None] * len(data), pa.string()),
            "captions": pa.array(caps),
        }
    )
    n = len(data)
    cpu_model = next(
        (ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("model name")),
        platform.machine(),
    )
    load = os.getloadavg()
    lines = [
        f"machine: {cpu_model}, {os.cpu_count()} cores, "
        f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB, no GPU, load average "
        f"{load[0]:.1f} at start (shared); {n} COCO JPEGs (~640x480); median of {args.repeat} interleaved rounds; "
        "one thread per side",
        "",
    ]

    def row(label, res, base, target):
        (ws, cs), (wb, cb) = res, base
        return f"| {label} | {n / ws:.1f} / {n / wb:.1f} | **{wb / ws:.2f}** | {cb / cs:.2f} | {target} |"

    # 1. cheap signals ----------------------------------------------------------------------------------
    def plain_decode():
        for b in data:
            Image.open(io.BytesIO(b)).convert("RGB")

    from engines.profiling.decode import DecodeOptions, decode_rows

    def safe_decode():
        decode_rows(list(data), None, DecodeOptions())

    cheap = CheapStage()
    cheap.setup()
    cheap.run_batch(batch.slice(0, 4))
    r = interleaved({"plain": plain_decode, "safe": safe_decode, "cheap": lambda: cheap.run_batch(batch)}, args.repeat)
    lines += [
        "| measurement | images/s (this / baseline) | wall ratio | CPU-time ratio | target |",
        "|---|---|---|---|---|",
        row(
            "decode only: safe decode alone (bomb cap, EXIF, working copy 256..512 px) vs PIL full decode to RGB", r["safe"], r["plain"], ""
        ),
        row("cheap stage: meta+hash+entropy+degradation (one decode) vs PIL full decode to RGB", r["cheap"], r["plain"], ">= 0.5"),
    ]

    # 2. model stages vs bare batched inference -----------------------------------------------------------
    def bench_stage(stage, bares: dict, label, target=">= 0.85", rows=None):
        stage.setup()
        stage.run_batch(batch.slice(0, 4))  # warm-up
        for fn in bares.values():
            fn(4)
        k = rows or n
        sub = batch.slice(0, k)
        fns = {"stage": lambda: stage.run_batch(sub), **{name: (lambda f=f: f(k)) for name, f in bares.items()}}
        res = interleaved(fns, args.repeat if rows is None else max(1, args.repeat // 3))
        for name in bares:
            (ws, cs), (wb, cb) = res["stage"], res[name]
            lines.append(f"| {label} vs {name} | {k / ws:.1f} / {k / wb:.1f} | **{wb / ws:.2f}** | {cb / cs:.2f} | {target} |")

    lines += [
        "",
        "| model stage (`process_batch`) vs bare batched inference | images/s (stage / bare) | wall ratio | CPU-time ratio | target |",
        "|---|---|---|---|---|",
    ]

    if "nsfw" not in skip:
        nsfw = NsfwStage()  # num_cpus 1: ONNX Runtime gets one intra-op thread, as in its Ray actor

        def nudenet_pipeline(k):
            """What nudenet itself does: cv2 decode, its preprocessing, one ONNX run per 32, its
            per-anchor Python post-processing."""
            from nudenet.nudenet import _postprocess, _read_image

            det = nsfw.detector
            for s in range(0, k, 32):
                pre = [_read_image(cv2.imdecode(np.frombuffer(b, np.uint8), cv2.IMREAD_COLOR), 320) for b in data[s : s + 32]]
                out = det.session.run(None, {det.input_name: np.vstack([p[0] for p in pre])})[0]
                [_postprocess([out[j : j + 1]], p[3], p[4], p[1], p[2], p[5], p[6], 320, 320) for j, p in enumerate(pre)]

        def model_floor(k):
            """The least any pipeline must do: cv2 decode, batched letterbox, the ONNX run. No
            post-processing at all."""
            det = nsfw.detector
            for s in range(0, k, 32):
                arrs = [cv2.imdecode(np.frombuffer(b, np.uint8), cv2.IMREAD_COLOR) for b in data[s : s + 32]]
                blob, _ = det.preprocess(arrs)
                det.session.run(None, {det.input_name: blob})

        bench_stage(
            nsfw,
            {"nudenet's own pipeline": nudenet_pipeline, "decode + letterbox + ONNX run only": model_floor},
            "prof_nsfw (nudenet 320n ONNX)",
        )

    if "clip" not in skip:
        # tiny random hf CLIPModel: the model is cheap, so this ratio is a worst case for overhead
        clip = ClipStage({"model": {"backend": "hf_clip", "random_init": True}})

        def bare_clip(k):
            m = clip.model
            for s in range(0, k, 32):
                m.embed_images([Image.open(io.BytesIO(b)).convert("RGB") for b in data[s : s + 32]])
                m.embed_texts(["a photo of something on a table"] * len(data[s : s + 32]))

        bench_stage(clip, {"PIL decode + processor + forward": bare_clip}, "prof_clip (tiny RANDOM-weight CLIPModel, image+text)")

    if "text_emb" not in skip:
        temb = TextEmbStage()
        bench_stage(
            temb,
            {"encode() on the same strings": lambda k: temb.model.embed_texts(["a photo of something on a table"] * k)},
            "prof_text_emb (MiniLM, text only)",
        )

    if "brisque" not in skip:
        br = BrisqueStage()

        def bare_brisque(k):
            for b in data[:k]:
                im = Image.open(io.BytesIO(b)).convert("RGB")
                im.thumbnail((512, 512))
                br.model.score(np.asarray(im))

        bench_stage(br, {"PIL decode + thumbnail 512 + score": bare_brisque}, "prof_brisque (SVM)")

    if "ocr" not in skip:
        ocr = OcrStage()

        def bare_ocr(k):
            for b in data[:k]:
                ocr.engine._engine(np.asarray(Image.open(io.BytesIO(b)).convert("RGB"))[:, :, ::-1].copy())

        bench_stage(ocr, {"rapidocr on the PIL-decoded array": bare_ocr}, "prof_ocr (rapidocr PP-OCR ONNX, 16 images)", rows=min(n, 16))

    if args.ray:
        import shutil
        import tempfile

        import lance

        from curation.cluster import RayConfig, init_ray
        from curation.runner import run_stage
        from curation.store import Store
        from tests.helpers import sample_row, samples_table

        d = Path(tempfile.mkdtemp()) / "b.lance"
        lance.write_dataset(
            samples_table([sample_row(b, "bench", str(i)) for i, b in enumerate(data)]), str(d), max_rows_per_file=max(1, n // 4)
        )
        init_ray(RayConfig(num_cpus=os.cpu_count()))
        t0 = time.perf_counter()
        run_stage(Store(str(d)), CheapStage(), show_progress=False)
        t_ray = time.perf_counter() - t0
        lines.append(
            f"\ncheap stage through run_stage (Ray actors + Lance commit, {n} rows, 4 fragments, incl. actor start): "
            f"{n / t_ray:.1f} images/s"
        )
        shutil.rmtree(d.parent, ignore_errors=True)

    print("\n".join(lines))


if __name__ == "__main__":
    main()
