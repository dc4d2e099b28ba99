"""Does the vector engine really use the GPU? Run on a machine with a GPU and faiss-gpu-cu12:

    pip install faiss-gpu-cu12   # in place of faiss-cpu
    python bench/faiss_gpu.py [--rows 1000000] [--dim 512]

It checks, and prints as JSON lines:
1. FAISS sees the GPUs (``faiss.get_num_gpus()``);
2. ``engines.vector.index.maybe_gpu`` moves an index there (the object is a GPU index);
3. the k-NN block search the jobs run (``engines.vector.knn.knn_block``, what ``curate knn``'s
   actors and the dedup candidate actors call after ``maybe_gpu``) gives the same neighbours on
   the GPU as on the CPU (recall of GPU vs CPU top-10), and how fast each is, same data, same run;
4. with ``--job``: the real ``curate index build`` + ``curate knn`` + ``curate dedup`` on a small
   synthetic dataset, with ``nvidia-smi`` sampled while they run (GPU memory in use > 0 during
   the search phases is the evidence that the jobs used it).
On a machine without a GPU it says so and stops (exit 0: `make bench` runs every bench here).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _gpu_memory_mib() -> int:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=10
        ).stdout
        return sum(int(x) for x in out.split())
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return -1


def search_check(rows: int, dim: int, queries: int) -> dict:
    """CPU vs GPU on the same IVF index: speed and agreement of the k-NN block search."""
    import faiss

    from engines.vector.index import IndexConfig, add_vectors, maybe_gpu, train_index
    from engines.vector.knn import knn_block
    from engines.vector.synth import clustered_embeddings

    x = np.concatenate(list(clustered_embeddings(rows, dim, seed=0)))
    cfg = IndexConfig(kind="ivfflat", nprobe=16)
    index, kind, spec = train_index(x[: min(rows, 200_000)], rows, cfg)
    add_vectors(index, x, np.arange(rows))
    gpu = maybe_gpu(index, True)
    out = {"index": spec, "gpu_index_type": type(gpu).__name__, "on_gpu": "Gpu" in type(gpu).__name__}
    q, lab = x[:queries], np.arange(queries)
    res = {}
    for name, idx in (("cpu", index), ("gpu", gpu)):
        t0 = time.perf_counter()
        e = knn_block(idx, q, lab, 10, nprobe=16)
        res[name] = (time.perf_counter() - t0, e)
    agree = np.mean(
        [
            len(set(res["cpu"][1]["dst"][res["cpu"][1]["src"] == i]) & set(res["gpu"][1]["dst"][res["gpu"][1]["src"] == i])) / 10
            for i in range(0, queries, max(1, queries // 500))
        ]
    )
    out.update(
        {
            "cpu_qps": round(queries / res["cpu"][0]),
            "gpu_qps": round(queries / res["gpu"][0]),
            "gpu_vs_cpu_top10_agreement": round(float(agree), 4),
            "faiss_gpus": faiss.get_num_gpus(),
        }
    )
    return out


def job_check(rows: int) -> dict:
    """The real jobs on a synthetic dataset, with GPU memory sampled while they run."""
    import tempfile

    sys.path.insert(0, str(ROOT / "bench"))
    from dedup_scale import build, real_part  # the scale bench's dataset builder

    uri = str(Path(tempfile.mkdtemp()) / "gpu.lance")
    build(uri, rows, real_part(5))
    peak = [0]
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], _gpu_memory_mib())
            time.sleep(0.5)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    steps = {}
    for args in (["index", "build", "--column", "vec_desc"], ["knn", "--column", "vec_desc", "--k", "10"], ["dedup"]):
        t0 = time.perf_counter()
        r = subprocess.run([sys.executable, "-m", "cli", *args, "--dataset", uri], cwd=ROOT, capture_output=True, text=True)
        steps[" ".join(args[:2])] = {
            "rc": r.returncode,
            "seconds": round(time.perf_counter() - t0, 1),
            "tail": r.stdout[-300:] + r.stderr[-300:],
        }
    stop.set()
    return {"rows": rows, "steps": steps, "peak_gpu_memory_mib": peak[0], "idle_gpu_memory_mib": _gpu_memory_mib()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--queries", type=int, default=100_000)
    ap.add_argument("--job", action="store_true", help="also run the real index/knn/dedup jobs (100k rows)")
    a = ap.parse_args()
    import faiss

    n = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
    print(json.dumps({"faiss": faiss.__version__, "gpus": n, "nvidia_smi_memory_mib": _gpu_memory_mib()}), flush=True)
    if n == 0:
        print("no GPU visible to FAISS (faiss-cpu installed, or no CUDA device): nothing to check", flush=True)
        return
    print(json.dumps(search_check(a.rows, a.dim, a.queries)), flush=True)
    if a.job:
        print(json.dumps(job_check(100_000)), flush=True)


if __name__ == "__main__":
    main()
