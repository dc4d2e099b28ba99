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

import numpy as np

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
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {mem:.0f} GiB, no GPU; "
            f"faiss {faiss.__version__}, {faiss.omp_get_max_threads()} OpenMP threads; load avg {os.getloadavg()[0]:.1f}")


def make_vectors(n: int, dim: int, path: Path, seed: int = 0) -> np.memmap:
    x = np.lib.format.open_memmap(str(path), mode="w+", dtype=np.float32, shape=(n, dim))
    s = 0
    for chunk in clustered_embeddings(n, dim, n_clusters=max(100, n // 100), seed=seed):
        x[s:s + len(chunk)] = chunk
        s += len(chunk)
    x.flush()
    return x


def bench_recall(n: int, dim: int, tmp: Path) -> dict:
    x = make_vectors(n + 1000, dim, tmp / "recall.npy", seed=1)
    base, q = x[:n], np.array(x[n:])
    t = time.perf_counter(); es, ei = exact_knn(base, q, 10); t_exact = time.perf_counter() - t
    cfg = IndexConfig(kind="ivfsq8", nprobe=8, train_size=50_000)
    t = time.perf_counter(); idx, kind, spec = train_index(np.array(base[:50_000]), n, cfg); t_train = time.perf_counter() - t
    t = time.perf_counter(); add_vectors(idx, base, np.arange(n)); t_add = time.perf_counter() - t
    t = time.perf_counter(); _, ai = search(idx, q, 10); t_ivf = time.perf_counter() - t
    out = {"n": n, "dim": dim, "queries": len(q), "index": spec, "nprobe": cfg.nprobe,
           "recall@10": round(recall_at_k(ai, ei, 10), 4), "exact_s": round(t_exact, 3), "ivf_s": round(t_ivf, 3),
           "speedup": round(t_exact / t_ivf, 1), "train_s": round(t_train, 1), "add_s": round(t_add, 1)}
    del idx
    return out


def bench_graph(n: int, dim: int, k: int, threshold: float, tmp: Path) -> dict:
    """Index build + k-NN graph (batched) + threshold proximity graph + Leiden, one process."""
    t0 = time.perf_counter()
    x = make_vectors(n, dim, tmp / f"g{n}.npy", seed=2)
    t_gen = time.perf_counter() - t0
    t = time.perf_counter()
    # IVF-SQ8, ~2 sqrt(N) lists (capped by the 40k training sample); nprobe 6 keeps the pass short
    n_train = min(n, 40_000)
    cfg = IndexConfig(kind="ivfsq8", nlist=int(2 * math.sqrt(n)), nprobe=6, train_size=n_train)
    idx, kind, spec = train_index(np.array(x[:: max(1, n // n_train)][:n_train]), n, cfg)
    add_vectors(idx, x, np.arange(n))
    t_index = time.perf_counter() - t
    t = time.perf_counter()
    src_l, dst_l, sim_l = [], [], []
    edges = 0
    for s in range(0, n, 20_000):
        e = knn_block(idx, np.asarray(x[s:s + 20_000]), np.arange(s, min(s + 20_000, n)), k)
        edges += len(e["src"])
        keep = e["sim"] >= threshold  # the proximity graph keeps only close pairs (as dedup does)
        src_l.append(e["src"][keep]); dst_l.append(e["dst"][keep]); sim_l.append(e["sim"][keep])
    t_knn = time.perf_counter() - t
    q = np.asarray(x[n // 2:n // 2 + 300])  # recall of the graph's first 10 neighbours vs brute force
    _, ex = exact_knn(x, q, 11)
    _, ap = search(idx, q, 11)
    graph_recall = recall_at_k(ap[:, 1:], ex[:, 1:], 10)
    del idx
    t = time.perf_counter()
    a, b, w = threshold_edges(np.concatenate(src_l), np.concatenate(dst_l), np.concatenate(sim_l), threshold)
    lab = communities(n, a, b, w, method="leiden", resolution=0.1)
    sizes = np.bincount(lab)
    t_comm = time.perf_counter() - t
    total = time.perf_counter() - t0 - t_gen
    return {"n": n, "dim": dim, "k": k, "index": spec, "nprobe": cfg.nprobe, "knn_edges": edges, "recall@10_sampled": round(graph_recall, 4),
            "graph_edges": int(len(a)), "threshold": threshold, "groups": int((sizes > 1).sum()),
            "rows_in_groups": int(sizes[sizes > 1].sum()), "index_s": round(t_index, 1), "knn_s": round(t_knn, 1),
            "communities_s": round(t_comm, 1), "total_s": round(total, 1), "peak_rss_gib": round(rss_gib(), 2)}


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
        images.append(data); group.append(g)
        for _, v in near_dup_variants(data, seed=g):
            images.append(v); group.append(g)
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
    out = {"images": n, "originals": int(group.max() + 1), "edits": "crop, resize, re-encode, watermark, colour, combo",
           "ours_precision": ours[0], "ours_recall": ours[1], "seconds": round(elapsed, 1), **stats}
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
    ap.add_argument("--k", type=int, default=10)
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
                r = bench_graph(n, args.dim, args.k, args.threshold, tmp)
                results["graph"].append(r)
                print("graph:", json.dumps(r), flush=True)
                (tmp / f"g{n}.npy").unlink(missing_ok=True)
            g = results["graph"]
            if len(g) >= 2:
                e = math.log(g[-1]["total_s"] / g[0]["total_s"]) / math.log(g[-1]["n"] / g[0]["n"])
                print(f"scaling exponent (total time, {g[0]['n']} -> {g[-1]['n']}): N^{e:.2f}", flush=True)


if __name__ == "__main__":
    main()
