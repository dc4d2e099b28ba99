"""What the dedup job's list router costs and how often it keeps a copy with its original.

    python bench/list_router.py [--lists 14000 47000 141000] [--vectors 32768]
    python bench/list_router.py --saved JOB/router.npz   # a job's router against one rebuilt now

``ListRouter`` picks each vector's lists (where the index phase stores it, which lists a
candidate query scans). For each list count (14k, 47k, 141k: the lists of 300k, 1M and 3M dedup
rows) this compares, in the same run on the same vectors, the levels ``router_levels`` chooses
(built top-down, the default, and bottom-up, as in session 15) with one level of groups, and
prints one JSON line per router: build seconds, microseconds a vector (route to 1 list, the
index phase; to 8, the candidate queries), top-1 agreement with the exact best list, and the
fraction of near copies (cosine ~0.999, 0.98, 0.93 to the original) whose 8 probes include the
list the original is stored in (what the candidates need). ``--saved`` takes the lists of a
dedup job's saved router (``<dataset>/_curation/vector/dedup-*/router.npz``) and compares that
router, as the job built it, with one built from the same lists by the code now; each line
also gives the group sizes of each level (count, median, largest). Vectors are synthesised around real
descriptors (coco-mini photos) as in ``bench/dedup_scale.py``; one BLAS thread, as a Ray worker
has.
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
import dedup_scale as ds  # noqa: E402

from curation.schema import VEC_DESC_DIM  # noqa: E402
from engines.vector.index import ListRouter  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lists", type=int, nargs="+", default=[14_000, 47_000, 141_000])
    ap.add_argument("--vectors", type=int, default=32_768)
    ap.add_argument("--saved", type=Path, help="a dedup job's router.npz: compare it with one rebuilt from its lists")
    args = ap.parse_args()
    synth = ds.DescriptorSampler()
    x = synth.sample(args.vectors)
    copies = [synth.near(x[:8000], noise) for noise in (0.05, 0.2, 0.4)]
    print(json.dumps({"machine": ds.machine(), "vectors": len(x), "dim": VEC_DESC_DIM}), flush=True)
    if args.saved:
        c = np.load(args.saved)["c0"]
        exact = np.argmax(x[:2000] @ c.T, axis=1)
        t = time.perf_counter()
        saved = ListRouter.load(args.saved)
        print(
            json.dumps(
                _measure(saved, x, copies, exact, {"lists": len(c), "router": "saved", "load_s": round(time.perf_counter() - t, 1)})
            ),
            flush=True,
        )
        t = time.perf_counter()
        now = ListRouter(c)
        print(
            json.dumps(
                _measure(now, x, copies, exact, {"lists": len(c), "router": "rebuilt", "build_s": round(time.perf_counter() - t, 1)})
            ),
            flush=True,
        )
        return
    for nlist in args.lists:
        c = synth.sample(nlist)
        exact = np.argmax(x[:2000] @ c.T, axis=1)
        for levels, build in ((None, "top-down"), (None, "bottom-up"), (1, "top-down")):
            t = time.perf_counter()
            r = ListRouter(c, levels=levels, build=build)
            line = {
                "lists": nlist,
                "levels": r.levels,
                "chosen": levels is None,
                "build": build,
                "build_s": round(time.perf_counter() - t, 1),
            }
            print(json.dumps(_measure(r, x, copies, exact, line)), flush=True)


def _measure(r: ListRouter, x: np.ndarray, copies: list[np.ndarray], exact: np.ndarray, line: dict) -> dict:
    """``line`` with the router's group sizes, its microseconds a routed vector (to 1 and 8
    lists), its top-1 agreement with the exact best list and its copies found."""
    level, lvl = r, 0
    while level.upper is not None:
        sizes = np.diff(level.bounds)
        line[f"groups{lvl}"] = [len(sizes), float(np.median(sizes)), int(sizes.max())]
        level, lvl = level.upper, lvl + 1
    line["levels"] = lvl
    r.route(x[:500], 8)  # warm
    for k in (1, 8):
        t = time.perf_counter()
        got = r.route(x, k)
        line[f"us_per_vector_route{k}"] = round((time.perf_counter() - t) / len(x) * 1e6, 1)
        if k == 1:
            line["top1_exact"] = round(float(np.mean(got[:2000, 0] == exact)), 4)
            stored = got[:8000, 0]
    for y in copies:
        cos = float(np.mean(np.sum(x[:8000] * y, axis=1)))
        line[f"copy_found_cos{cos:.3f}"] = round(float(np.mean((r.route(y, 8) == stored[:, None]).any(axis=1))), 4)
    return line


if __name__ == "__main__":
    main()
