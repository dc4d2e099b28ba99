"""What a list visit of the dedup candidate scan costs: codes multiplied as they are (now, and as
in sessions 16-19) vs decoded.

    python bench/list_scan.py [--lists 5000] [--list-size 255] [--queries-per-list 8 32 64]

``search_above`` (the candidate actors' scan) groups a block's queries by list and multiplies
each visited list with its queries. A candidate actor visits nearly every list once per block,
so what a visit costs beyond the product is paid units x lists times. With 8-bit (or float16)
lists the scan multiplies the scaled queries with the codes and adds one bias a query
(``engines.vector.index._list_products``); before session 16 it decoded each list with FAISS
and added the list's centroid to every vector, then multiplied ("decoded"); in sessions 16-19
the queries were the product's left side and each visit scaled them ("codes_wide"). This
builds an IVF-SQ8 index of the given shape (d 231, the descriptor's; 255 vectors a list is the 3M-row job's mean), routes
queries so that each list meets the given number, and times the scans over the same lists,
in the same run (alternated, the best of 3 each), one BLAS thread (as a Ray worker has). One
JSON line per setting: microseconds a list visit (routing excluded), and whether the others
found the same hits as now.
"""

from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_v] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from dedup_scale import machine  # noqa: E402

from curation.schema import VEC_DESC_DIM  # noqa: E402
from engines.vector import index as vi  # noqa: E402


def wide_products(ivf, q, centroids=None):
    """The scan's products in sessions 16-19: queries x codes^T (a thin matrix on the left),
    each visit scaling its queries and reading the centroid from the quantiser."""
    import faiss

    d = ivf.d
    vmin, vdiff = faiss.vector_to_array(ivf.sq.trained).reshape(2, d)
    scale, offset = vdiff / 255, vmin + vdiff / 510
    centroid = ivf.quantizer.reconstruct if ivf.by_residual else (lambda lst: 0.0)

    def products(lst: int, size: int, rows: np.ndarray) -> np.ndarray:
        codes = faiss.rev_swig_ptr(ivf.invlists.get_codes(lst), size * ivf.code_size)
        qr = q[rows]
        return (qr * scale) @ codes.reshape(size, d).astype(np.float32).T + (qr @ (offset + centroid(lst)))[:, None]

    return products


def decoded_products(ivf, q, centroids=None):
    """The scan's products before session 16: FAISS decodes the list, the centroid is added back."""
    import faiss

    def products(lst: int, size: int, rows: np.ndarray) -> np.ndarray:
        codes = faiss.rev_swig_ptr(ivf.invlists.get_codes(lst), size * ivf.code_size)
        vecs = ivf.sq.decode(codes.reshape(size, ivf.code_size))
        if ivf.by_residual:
            vecs += ivf.quantizer.reconstruct(lst)
        return q[rows] @ vecs.T

    return products


def build(nlist: int, per: int, d: int, rng: np.random.Generator):
    """An IVF-SQ8 index (residual codes, inner product) of ``nlist`` lists of ``per`` vectors,
    each list's vectors spread around its centroid (cosine ~0.7), filled by the exact router."""
    import faiss
    from faiss.contrib.ivf_tools import add_preassigned

    cent = rng.standard_normal((nlist, d)).astype(np.float32)
    cent /= np.linalg.norm(cent, axis=1, keepdims=True)
    quant = faiss.IndexFlatIP(d)
    quant.add(cent)
    ivf = faiss.IndexIVFScalarQuantizer(quant, d, nlist, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT)
    x = (cent[np.repeat(np.arange(nlist), per)] + rng.standard_normal((nlist * per, d)) / np.sqrt(d)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    ivf.train(x[rng.choice(len(x), min(len(x), 200_000), replace=False)])
    add_preassigned(ivf, x, np.repeat(np.arange(nlist), per).astype(np.int64), np.arange(len(x), dtype=np.int64))
    return ivf, x, cent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lists", type=int, default=5000)
    ap.add_argument("--list-size", type=int, default=255)
    ap.add_argument("--queries-per-list", type=int, nargs="+", default=[8, 32, 64])
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    t = time.perf_counter()
    ivf, x, cent = build(args.lists, args.list_size, VEC_DESC_DIM, rng)
    print(
        json.dumps({"machine": machine(), "lists": args.lists, "list_size": args.list_size, "build_s": round(time.perf_counter() - t, 1)})
    )
    router = vi.ListRouter(cent, levels=0)
    for qpl in args.queries_per_list:
        n = args.lists * qpl // 8  # 8 probes a query
        q = (x[rng.integers(0, len(x), n)] + 0.01 * rng.standard_normal((n, VEC_DESC_DIM)) / np.sqrt(VEC_DESC_DIM)).astype(np.float32)
        probes = np.concatenate([router.route(q[s : s + 8192], 8) for s in range(0, n, 8192)])
        line = {"queries_per_list": qpl, "queries": n}
        hits = {}
        real, best = vi._list_products, {}
        for _ in range(3):  # alternated, the best of 3 each: warm-up and a busy machine fall on both
            for name, make in (("codes", real), ("codes_wide", wide_products), ("decoded", decoded_products)):
                vi._list_products = make  # the scan as it is, with one or the other product
                try:
                    t = time.perf_counter()
                    hits[name] = vi.search_above(ivf, q, 0.9, nprobe=8, per_list=100, router=router, probe=probes)
                    best[name] = min(best.get(name, np.inf), time.perf_counter() - t)
                finally:
                    vi._list_products = real
        for name, secs in best.items():
            line[f"{name}_us_per_visit"] = round(secs / args.lists * 1e6, 1)
        a = hits["codes"]
        for other in ("codes_wide", "decoded"):
            b = hits[other]
            line[f"same_hits_as_{other}"] = bool(np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]))
            line[f"max_sim_diff_{other}"] = float(np.abs(a[2] - b[2]).max()) if len(a[2]) == len(b[2]) and len(a[2]) else None
        line["hits"] = len(a[0])
        print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
