"""`curate dedup` after rows were appended: extending the last run's work against doing it anew.

    python bench/dedup_append.py --rows 100000 --append 10000 [--real-groups 40] [--out DIR]

Builds the dataset of ``bench/dedup_scale.py`` (``--rows`` rows: descriptors synthesised around
real ones, planted groups, and ``--real-groups`` real COCO photos with real edits whose pairs are
verified with ORB + RANSAC on the real images), runs the real job on it (``python -m cli dedup``,
committed), then appends ``--append`` rows (new synthetic rows with their own groups, and 2% of
them near copies of old rows: a re-upload of an earlier photo) and runs the job twice on the
same data, back to back: on the dataset with what the first run kept (``extended``: the new rows
added to its candidate index, the old rows searching the new rows' index, its verifications
taken) and on a copy without it (``anew``: every phase over every row). Prints one JSON line a
run: wall seconds (Ray start included), phase seconds, driver and largest-worker memory,
pairwise precision and recall against the planted groups, the counters; then the ratio.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

BENCH = Path(__file__).resolve().parent
sys.path.append(str(BENCH))  # appended: bench/graph.py must not shadow the graph package

import dedup_scale as scale  # noqa: E402

from curation.store import Store  # noqa: E402


def append_rows(uri: str, start: int, m: int, truth: np.ndarray, seed: int = 1) -> np.ndarray:
    """``m`` rows appended to the dataset (one commit, as an ingest does): synthetic rows, 2% of
    them replaced by near copies of random old rows (same group). Returns the new truth."""
    import hashlib
    import io

    import lance
    from lance import LanceDataset, LanceOperation
    from lance.fragment import write_fragments
    from PIL import Image

    from engines.vector.index import to_matrix

    rng = np.random.default_rng(seed)
    ds = lance.dataset(uri)
    pool = ds.take(rng.choice(start, 2000, replace=False).tolist(), columns=["vec_desc", "vec_regions"])
    pool_f = to_matrix(pool.column("vec_desc"))[0]
    pool_r = to_matrix(pool.column("vec_regions"), unit=scale.VEC_DESC_DIM)[0].reshape(len(pool_f), -1)
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (120, 120, 120)).save(buf, "JPEG")
    t, groups = scale.synthetic_batch(start, m, pool_f, pool_r, rng, buf.getvalue())
    old = rng.choice(start, m // 50, replace=False)  # re-uploads of earlier rows
    at = rng.choice(m, len(old), replace=False)
    src = ds.take(old.tolist(), columns=["vec_desc", "vec_regions", "width", "height"])
    full = to_matrix(t.column("vec_desc"))[0]
    reg = to_matrix(t.column("vec_regions"), unit=scale.VEC_DESC_DIM)[0].reshape(m, -1)
    full[at] = scale._normed(scale._noisy(to_matrix(src.column("vec_desc"))[0], rng, 0.05), 1)
    reg[at] = scale._normed(
        scale._noisy(to_matrix(src.column("vec_regions"), unit=scale.VEC_DESC_DIM)[0].reshape(len(at), -1), rng, 0.05), scale.VEC_REGIONS
    )
    groups[at] = truth[old]
    sha = t.column("image_sha256").to_pylist()
    for k in at:
        sha[k] = hashlib.sha256(f"re-upload {k}".encode()).hexdigest()
    w, h = t.column("width").to_numpy().copy(), t.column("height").to_numpy().copy()
    w[at], h[at] = src.column("width").to_numpy(), src.column("height").to_numpy()
    ids = t.column("id").to_pylist()
    new = scale._table(ids, t.column("image").to_pylist(), sha, w, h, full, reg)
    frags = write_fragments(new, uri, max_rows_per_file=50_000)
    LanceDataset.commit(uri, LanceOperation.Append(frags), read_version=ds.version)
    return np.concatenate([truth, groups])


def run(uri: str, truth: np.ndarray, name: str) -> dict:
    """The job on ``uri`` as users run it, measured and scored (``dedup_scale.run_job``)."""
    import lance

    job = scale.run_job(uri)
    t = lance.dataset(uri).to_table(columns=["dup_group"]).column("dup_group")
    pred = np.where(t.is_null().to_numpy(zero_copy_only=False), -(10**12) - np.arange(len(t)), t.fill_null(0).to_numpy())
    p, r = scale.pair_scores(pred, truth)
    runs = Path(uri, "_curation", "vector").glob("dedup-v*.json")
    stats = json.loads(max(runs, key=lambda f: int(f.stem.split("-v")[1])).read_text())["stats"]
    keys = ("desc_candidates", "verified_pairs", "geometry_pairs", "verifications_reused", "rows_searched_before", "accepted_pairs")
    phases = ("exact_seconds", "index_seconds", "candidates_seconds", "verify_seconds", "semantic_seconds", "groups_seconds")
    return {
        "run": name,
        "rows": len(truth),
        "seconds": job["seconds"],
        "phase_seconds": {k: stats.get(k) for k in phases},
        "peak_private_mib": job["peak_private_mib"],
        "peak_rss_mib": job["peak_rss_mib"],
        "peak_disk_mib": job["peak_disk_mib"],
        "precision": round(p, 4),
        "recall": round(r, 4),
        "counters": {k: stats.get(k) for k in keys},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--append", type=int, default=10_000)
    ap.add_argument("--real-groups", type=int, default=40)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    out = Path(a.out or tempfile.mkdtemp(prefix="dedup-append-"))
    out.mkdir(parents=True, exist_ok=True)
    print(json.dumps({"machine": scale.machine(), "rows": a.rows, "append": a.append, "real_groups": a.real_groups}), flush=True)
    uri = str(out / "ds.lance")
    shutil.rmtree(uri, ignore_errors=True)
    t0 = time.perf_counter()
    truth = scale.build(uri, a.rows, scale.real_part(a.real_groups))
    print(json.dumps({"built": a.rows, "seconds": round(time.perf_counter() - t0, 1)}), flush=True)
    print(json.dumps(run(uri, truth, "first")), flush=True)
    truth = append_rows(uri, a.rows, a.append, truth)
    anew = str(out / "anew.lance")
    shutil.rmtree(anew, ignore_errors=True)
    shutil.copytree(uri, anew)
    state = Store(anew).state_dir
    shutil.rmtree(Path(state) / "vector" / "dedup-verified")
    (Path(state) / "vector" / "dedup-near.json").unlink()
    res = {}
    for name, u in (("anew", anew), ("extended", uri)):
        res[name] = run(u, truth, name)
        print(json.dumps(res[name]), flush=True)
    print(f"extended / anew: {res['extended']['seconds'] / res['anew']['seconds']:.2f} of the wall time", flush=True)
    if not a.out:
        shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
