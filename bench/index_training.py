"""What training the dedup index's lists costs with two and with three levels of k-means, and
whether the lists of three keep a copy with its original as often.

    python bench/index_training.py [--lists 14000 47000 141000] [--threads 2]

The dedup job's index training task (``pipelines.dedup_candidates._train``) finds ``nlist``
centroids in a sample of 40 vectors a list (``train_points``: 41 x nlist here), with
``engines.vector.index.nested_kmeans``. For each list count (14k, 47k, 141k: the lists of 300k,
1M and 3M dedup rows) this trains both ways on the same sample, in the same run, and prints one
JSON line per way: seconds (the k-means only: the sample is made first and not counted; the
training task adds the SQ8 codes and the router), list sizes (largest and 99th percentile over
the mean, of 8 x nlist sample vectors routed through an HNSW graph of the centroids: a list
scanned is paid for by its size), and, for 4,000 held-out vectors, the fraction
of near copies (cosine ~0.999, 0.98, 0.93 to the original) whose 8 nearest lists include the
original's list (what the candidate search needs), exactly, without the router. Vectors are
synthesised around real descriptors (coco-mini photos) as in ``bench/dedup_scale.py``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import dedup_scale as ds  # noqa: E402

from curation.schema import VEC_DESC_DIM  # noqa: E402
from engines.vector.index import IndexConfig, nested_kmeans  # noqa: E402


def nearest_lists(c: np.ndarray, y: np.ndarray, k: int, exact: bool = True) -> np.ndarray:
    """Each row of ``y``'s ``k`` best centroids by inner product: exactly (FAISS flat search), or
    through an HNSW graph of the centroids (what the job's quantiser is; fast enough to count
    list sizes over millions of vectors)."""
    import faiss

    if exact:
        index = faiss.IndexFlatIP(c.shape[1])
    else:
        index = faiss.IndexHNSWFlat(c.shape[1], 32, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efSearch = 64
    index.add(np.ascontiguousarray(c, np.float32))
    return index.search(np.ascontiguousarray(y, np.float32), k)[1]


def main() -> None:
    import faiss

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lists", type=int, nargs="+", default=[14_000, 47_000, 141_000])
    ap.add_argument("--threads", type=int, default=2, help="FAISS threads (the training task uses the node's CPUs)")
    args = ap.parse_args()
    faiss.omp_set_num_threads(args.threads)
    cfg = IndexConfig()
    synth = ds.DescriptorSampler()
    held = synth.sample(4000)
    copies = [synth.near(held, noise) for noise in (0.05, 0.2, 0.4)]
    print(json.dumps({"machine": ds.machine(), "threads": args.threads, "dim": VEC_DESC_DIM, "kmeans_iter": cfg.kmeans_iter}), flush=True)
    for nlist in args.lists:
        x = synth.sample(41 * nlist)
        for levels in (2, 3):
            t = time.perf_counter()
            c = nested_kmeans(x, nlist, levels, cfg.kmeans_iter, cfg.seed, spherical=True)
            secs = time.perf_counter() - t
            sizes = np.bincount(nearest_lists(c, x[: 8 * nlist], 1, exact=False)[:, 0], minlength=nlist)
            line = {"lists": nlist, "sample": len(x), "levels": levels, "kmeans_s": round(secs, 1)}
            line |= {
                "largest_over_mean": round(float(sizes.max() / sizes.mean()), 1),
                "p99_over_mean": round(float(np.percentile(sizes, 99) / sizes.mean()), 2),
            }
            stored = nearest_lists(c, held, 1)[:, 0]
            for y in copies:
                cos = float(np.mean(np.sum(held * y, axis=1)))
                line[f"copy_found_cos{cos:.3f}"] = round(float(np.mean((nearest_lists(c, y, 8) == stored[:, None]).any(axis=1))), 4)
            print(json.dumps(line), flush=True)
        del x


if __name__ == "__main__":
    main()
