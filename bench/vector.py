"""Vector engine benchmark: ANN recall vs exact and speed ratio, the k-NN graph + communities at
100k and 1M x 512 (time, peak RSS, scaling exponent), near-duplicate precision/recall on real
photos against pHash alone. Prints figures with the machine described; no assertions.

    .venv/bin/python bench/vector.py                      # everything (several minutes)
    .venv/bin/python bench/vector.py --parts recall,neardup
    .venv/bin/python bench/vector.py --sizes 100000 --k 10

Uses the engine functions in-process (the Ray jobs call the same functions per shard/unit), so
peak RSS is this one process's: vectors are generated chunk by chunk into a memory-mapped file
and queried block by block, as the k-NN job does.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

# OpenMP threads sleep instead of spinning when they wait: on a machine shared with other jobs,
# spinning threads burn the cores the other thread needs (set before FAISS loads libgomp)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engines.vector.graph import communities, threshold_edges  # noqa: E402
from engines.vector.index import IndexConfig, add_vectors, search, train_index  # noqa: E402
from engines.vector.knn import exact_knn, knn_block, recall_at_k  # noqa: E402
from engines.vector.synth import clustered_embeddings  # noqa: E402


def rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 / 1024


def machine() -> str:
    import faiss

    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {mem:.0f} GiB, no GPU; "
        f"faiss {faiss.__version__}, {faiss.omp_get_max_threads()} OpenMP threads; load avg {os.getloadavg()[0]:.1f}"
    )


def make_vectors(n: int, dim: int, path: Path, seed: int = 0) -> np.memmap:
    x = np.lib.format.open_memmap(str(path), mode="w+", dtype=np.float32, shape=(n, dim))
    s = 0
    for chunk in clustered_embeddings(n, dim, n_clusters=max(100, n // 100), seed=seed):
        x[s : s + len(chunk)] = chunk
        s += len(chunk)
    x.flush()
    return x


def bench_recall(n: int, dim: int, tmp: Path) -> dict:
    x = make_vectors(n + 1000, dim, tmp / "recall.npy", seed=1)
    base, q = x[:n], np.array(x[n:])
    t = time.perf_counter()
    es, ei = exact_knn(base, q, 10)
    t_exact = time.perf_counter() - t
    cfg = IndexConfig(kind="ivfsq8", nprobe=8, train_size=50_000)
    t = time.perf_counter()
    idx, kind, spec = train_index(np.array(base[:50_000]), n, cfg)
    t_train = time.perf_counter() - t
    t = time.perf_counter()
    add_vectors(idx, base, np.arange(n))
    t_add = time.perf_counter() - t
    t = time.perf_counter()
    _, ai = search(idx, q, 10)
    t_ivf = time.perf_counter() - t
    out = {
        "n": n,
        "dim": dim,
        "queries": len(q),
        "index": spec,
        "nprobe": cfg.nprobe,
        "recall@10": round(recall_at_k(ai, ei, 10), 4),
        "exact_s": round(t_exact, 3),
        "ivf_s": round(t_ivf, 3),
        "speedup": round(t_exact / t_ivf, 1),
        "train_s": round(t_train, 1),
        "add_s": round(t_add, 1),
    }
    del idx
    return out


class Phases:
    """Wall and CPU seconds (all threads of this process) per phase. On a shared 2-core machine
    wall time swings ~2x with other people's load; CPU time is the steadier measure of work."""

    def __init__(self) -> None:
        self.wall: dict[str, float] = {}
        self.cpu: dict[str, float] = {}

    def __call__(self, name: str):
        import contextlib

        @contextlib.contextmanager
        def timed():
            w, c = time.perf_counter(), time.process_time()
            yield
            self.wall[name] = self.wall.get(name, 0.0) + time.perf_counter() - w
            self.cpu[name] = self.cpu.get(name, 0.0) + time.process_time() - c

        return timed()


def exact_blocked(x: np.ndarray, q: np.ndarray, k: int, block: int = 100_000) -> np.ndarray:
    """Brute-force k nearest positions of ``q`` in ``x`` (inner product), block by block of a
    memory-mapped ``x``: memory = one block, never a float32 copy of all of x."""
    import faiss
    from faiss.contrib.exhaustive_search import knn_ground_truth

    def blocks():
        for s in range(0, len(x), block):
            yield np.ascontiguousarray(x[s : s + block], np.float32)

    return knn_ground_truth(np.ascontiguousarray(q, np.float32), blocks(), k, metric_type=faiss.METRIC_INNER_PRODUCT)[1]


def bench_graph(
    n: int,
    dim: int,
    k: int,
    threshold: float,
    tmp: Path,
    *,
    kind: str = "auto",
    list_size: int = 256,
    nprobe: int = 16,
    block: int = 20_000,
    sample: int = 300,
) -> dict:
    """Index build + k-NN graph (batched) + threshold proximity graph + Leiden, one process,
    with the library defaults for the index (lists of ~``list_size`` rows, HNSW coarse quantiser
    from 2048 lists on). Recall: the graph's neighbours of ``sample`` random rows against brute
    force over all n rows (not timed)."""
    from engines.vector.index import train_points

    x = make_vectors(n, dim, tmp / f"g{n}.npy", seed=2)
    ph = Phases()
    cfg = IndexConfig(kind=kind, list_size=list_size, nprobe=nprobe, flat_max=0)
    n_train = train_points(n, cfg)
    with ph("train"):
        rng = np.random.default_rng(0)
        tr = np.asarray(x[np.sort(rng.choice(n, n_train, replace=False))])
        idx, kind, spec = train_index(tr, n, cfg)
        del tr
    with ph("add"):
        add_vectors(idx, x, np.arange(n))
    src_l, dst_l, sim_l = [], [], []
    edges = 0
    with ph("knn"):
        for s in range(0, n, block):
            e = knn_block(idx, np.asarray(x[s : s + block]), np.arange(s, min(s + block, n)), k)
            edges += len(e["src"])
            keep = e["sim"] >= threshold  # the proximity graph keeps only close pairs (as dedup does)
            src_l.append(e["src"][keep])
            dst_l.append(e["dst"][keep])
            sim_l.append(e["sim"][keep])
    with ph("communities"):
        a, b, w = threshold_edges(np.concatenate(src_l), np.concatenate(dst_l), np.concatenate(sim_l), threshold)
        lab = communities(n, a, b, w, method="leiden", resolution=0.1)
        sizes = np.bincount(lab)
    rss = rss_gib()
    pos = np.sort(np.random.default_rng(1).choice(n, sample, replace=False))
    q = np.asarray(x[pos])
    ex = exact_blocked(x, q, k + 1)
    _, ap = search(idx, q, k + 1)  # the same search (index, nprobe, k + 1) knn_block ran for these rows
    drop_self = lambda m: np.array([[v for v in row if v != p][:k] for row, p in zip(m, pos)])  # noqa: E731
    ex, ap = drop_self(ex), drop_self(ap)
    del idx
    total_w, total_c = sum(ph.wall.values()), sum(ph.cpu.values())
    return {
        "n": n,
        "dim": dim,
        "k": k,
        "index": spec,
        "nprobe": nprobe,
        "train_vectors": n_train,
        "knn_edges": edges,
        f"recall@10_{sample}": round(recall_at_k(ap, ex, 10), 4),
        f"recall@{k}_{sample}": round(recall_at_k(ap, ex, k), 4),
        "graph_edges": int(len(a)),
        "threshold": threshold,
        "groups": int((sizes > 1).sum()),
        "rows_in_groups": int(sizes[sizes > 1].sum()),
        **{f"{p}_s": round(v, 1) for p, v in ph.wall.items()},
        "total_s": round(total_w, 1),
        **{f"{p}_cpu_s": round(v, 1) for p, v in ph.cpu.items()},
        "total_cpu_s": round(total_c, 1),
        "peak_rss_gib": round(rss, 2),
        "load_avg": round(os.getloadavg()[0], 1),
    }


def exponents(g: list[dict]) -> dict:
    """Growth exponent e of each phase (time ~ N^e) between the smallest and largest size."""
    a, b = g[0], g[-1]
    r = math.log(b["n"] / a["n"])
    out = {}
    for key in a:
        if key.endswith("_s") and a[key] > 0 and b.get(key, 0) > 0:
            out[key] = round(math.log(b[key] / a[key]) / r, 2)
    return out


def bench_neardup(limit: int | None = None) -> dict:
    from engines.profiling.cheap import phash
    from engines.profiling.decode import decode_image
    from engines.vector.dedup import NearDupConfig, group_duplicates, near_pairs, popcount64
    from engines.vector.descriptor import describe, orb_features, orb_verify, working_gray
    from engines.vector.synth import near_dup_variants

    coco = ROOT.parent / "shared" / "data" / "coco-mini" / "images"
    images, group = [], []
    for g, p in enumerate(sorted(coco.glob("*.jpg"))[:limit]):
        data = p.read_bytes()
        images.append(data)
        group.append(g)
        for _, v in near_dup_variants(data, seed=g):
            images.append(v)
            group.append(g)
    group = np.array(group)
    n = len(images)
    t0 = time.perf_counter()
    decoded = [decode_image(b) for b in images]
    grays = [working_gray(d.array) for d in decoded]
    fr = [describe(g) for g in grays]
    full, regions = np.stack([f for f, _ in fr]), np.stack([r for _, r in fr])
    hashes = np.array([phash(d) for d in decoded], np.uint64)
    feats: dict = {}

    def verify(i, j):
        out = []
        for a, b in zip(i.tolist(), j.tolist()):
            for u in (a, b):
                if u not in feats:
                    feats[u] = orb_features(grays[u])
            out.append(orb_verify(feats[a], feats[b]))
        return [o[0] for o in out], [o[2] for o in out]

    pairs, stats = near_pairs(full, regions, np.ones(n, bool), hashes, NearDupConfig(), verify)
    res = group_duplicates(n, pairs, np.zeros(n))
    elapsed = time.perf_counter() - t0
    iu = np.triu_indices(n, 1)
    truth = (group[:, None] == group[None, :])[iu]

    def pr(labels):
        pred = (labels[:, None] == labels[None, :])[iu]
        tp = (pred & truth).sum()
        return round(float(tp / max(pred.sum(), 1)), 4), round(float(tp / truth.sum()), 4)

    ours = pr(np.where(res.group >= 0, res.group, -1 - np.arange(n)))
    ham = popcount64(np.bitwise_xor(hashes[:, None], hashes[None, :]).ravel()).reshape(n, n)
    out = {
        "images": n,
        "originals": int(group.max() + 1),
        "edits": "crop, resize, re-encode, watermark, colour, combo",
        "ours_precision": ours[0],
        "ours_recall": ours[1],
        "seconds": round(elapsed, 1),
        **stats,
    }
    for th in (4, 8, 12):
        i, j = np.nonzero(np.triu(ham <= th, 1))
        p, r = pr(communities(n, i, j, method="components"))
        out[f"phash<={th}_precision"], out[f"phash<={th}_recall"] = p, r
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--parts", default="recall,neardup,graph")
    ap.add_argument("--recall-n", type=int, default=200_000)
    ap.add_argument("--sizes", default="100000,1000000")
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--k", type=int, default=100, help="neighbours per row in the graph (the report uses 100)")
    ap.add_argument("--kind", default="auto", help="index kind for the graph (auto: ivfsq8, ivfhnsw from 2048 lists)")
    ap.add_argument("--list-size", type=int, default=256, help="rows per IVF list (nlist = n / list_size)")
    ap.add_argument("--nprobe", type=int, default=16)
    ap.add_argument("--threshold", type=float, default=0.9)
    args = ap.parse_args()
    parts = set(args.parts.split(","))
    print("machine:", machine(), flush=True)
    results: dict = {}
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP", "/tmp")) as d:
        tmp = Path(d)
        if "recall" in parts:
            results["recall"] = bench_recall(args.recall_n, args.dim, tmp)
            print("recall:", json.dumps(results["recall"]), flush=True)
        if "neardup" in parts:
            results["neardup"] = bench_neardup()
            print("neardup:", json.dumps(results["neardup"]), flush=True)
        if "graph" in parts:
            sizes = [int(s) for s in args.sizes.split(",")]
            results["graph"] = []
            for n in sizes:
                r = bench_graph(n, args.dim, args.k, args.threshold, tmp, kind=args.kind, list_size=args.list_size, nprobe=args.nprobe)
                results["graph"].append(r)
                print("graph:", json.dumps(r), flush=True)
                (tmp / f"g{n}.npy").unlink(missing_ok=True)
            g = results["graph"]
            if len(g) >= 2:
                print(
                    f"growth exponents {g[0]['n']} -> {g[-1]['n']} (time ~ N^e, wall and CPU per phase):",
                    json.dumps(exponents(g)),
                    flush=True,
                )


if __name__ == "__main__":
    main()
