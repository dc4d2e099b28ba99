"""Benchmark: `curate index build` and `curate knn` at growing sizes, time and memory of the driver and the workers.

    .venv/bin/python bench/index_knn_scale.py --rows 100000 300000 [1000000 ...] [--code DIR ...]
                                              [--k 100] [--index-kind auto|flat|ivfsq8|...] [--work DIR]

Each size is a Lance dataset of that many rows: ``id`` (string) and ``prof_clip_image``, a 512-d
float32 embedding (fixed_size_list<float32, 512>, the column both commands default to), made by
``engines.vector.synth.clustered_embeddings`` (n/100 clusters, planted near duplicates), written
chunk by chunk, 50,000 rows a file. No model record goes with it, so the CLI takes it as ingested
embeddings (no random-weights refusal). The dataset is written once per size (its setup time
printed apart) and copied for each ``--code``, so every checkout runs on the same rows and none
sees another's index or graph (they live under the dataset's ``_curation/``).

The real jobs run as users run them (``python -m cli index build --dataset DS --column COL``,
then ``python -m cli knn --dataset DS --column COL --k K``, the embedded local Ray), each in a
child process sampled every 0.25 s for the RSS of the driver and of its largest Ray worker
(``ray::`` processes under it) and their ``private`` memory (RSS less file-backed and shared-memory
pages, psutil's ``rss - shared`` as in bench/dedup_scale.py: without a memory-mapped index), and
every 1 s for their USS (pages no other process maps, read from /proc/PID/smaps: a file mapped by
one process only counts there, as Private_Clean, so USS drops a memory-mapped index only where
several processes share its pages). ``seconds`` is each command's wall time, Ray's start
(~10 s) included. ``index_bytes`` is the index folder on disk after the build
(``_curation/vector/index-COL/``), ``knn_bytes`` the graph's. ``recall_at_10``: the graph's 10
first neighbours of 300 random rows against brute force over all n rows (streamed, not timed).
``--index-kind auto`` (the default) is an exact flat index up to 100k rows and IVF above.

``--code DIR`` (repeatable) runs the CLI from that checkout (``PYTHONPATH=DIR``): the before/after
of a change, side by side in one run. One JSON line per size and code, then per code the growth
exponents (time and driver memory from the smallest to the largest size as N^X). The figures
go to docs/benchmarks.md, with the machine line printed first.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(1, str(ROOT))  # after bench/ (sys.path[0]): bench/graph.py must not shadow the graph package
COLUMN, DIM = "prof_clip_image", 512
ROWS_PER_FILE = 50_000


def batches(n: int, seed: int = 0):
    """``n`` rows of ``id`` + ``COLUMN`` as record batches of ``ROWS_PER_FILE`` rows."""
    from engines.vector.synth import clustered_embeddings

    start = 0
    for x in clustered_embeddings(n, DIM, n_clusters=max(1, n // 100), seed=seed, chunk=ROWS_PER_FILE):
        x = np.ascontiguousarray(x, np.float32)  # the synth yields float64 under NumPy 2's scalar rules
        ids = pa.array([f"r{i:09d}" for i in range(start, start + len(x))])
        vec = pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), DIM)
        yield pa.record_batch([ids, vec], names=["id", COLUMN])
        start += len(x)


def build(uri: Path, n: int) -> dict:
    import lance

    t0 = time.perf_counter()
    shutil.rmtree(uri, ignore_errors=True)
    schema = pa.schema([("id", pa.string()), (COLUMN, pa.list_(pa.float32(), DIM))])
    lance.write_dataset(pa.RecordBatchReader.from_batches(schema, batches(n)), str(uri), max_rows_per_file=ROWS_PER_FILE)
    return {"setup_seconds": round(time.perf_counter() - t0, 1), "dataset_mib": folder_bytes(uri) >> 20}


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


class Peaks:
    """Peak RSS, private memory and USS of a driver process and of its largest ``ray::`` worker
    (each the largest over the workers, not necessarily the same worker)."""

    def __init__(self, pid: int):
        import psutil

        self.driver = psutil.Process(pid)
        self.rss = {"driver": 0, "largest_worker": 0}
        self.private = {"driver": 0, "largest_worker": 0}  # RSS less file-backed and shared-memory pages
        self.uss = {"driver": 0, "largest_worker": 0}

    def sample(self, uss: bool) -> None:
        import psutil

        try:
            procs = [("driver", self.driver)]
            for p in self.driver.children(recursive=True):
                try:
                    if " ".join(p.cmdline()).startswith("ray::"):
                        procs.append(("largest_worker", p))
                except psutil.Error:
                    continue
        except psutil.Error:
            return
        for who, p in procs:
            try:
                m = p.memory_info()
                self.rss[who], self.private[who] = max(self.rss[who], m.rss), max(self.private[who], m.rss - m.shared)
                if uss:
                    self.uss[who] = max(self.uss[who], p.memory_full_info().uss)
            except psutil.Error:
                continue


def run_cli(args: list[str], code: Path, interval: float = 0.25, uss_every: int = 4) -> dict:
    """``python -m cli ARGS`` from the checkout ``code``: seconds, peak RSS and private memory
    (every ``interval``) and peak USS (every ``uss_every`` samples: it reads /proc/PID/smaps, slower) of the command
    (the driver) and of its largest Ray worker (the job's own: its raylet is the driver's child),
    and what it printed. Exits with the output's end if the command fails."""
    t0 = time.perf_counter()
    log = tempfile.TemporaryFile("w+")
    cmd = [sys.executable, "-m", "cli", *args]
    proc = subprocess.Popen(cmd, cwd=code, stdout=log, stderr=subprocess.STDOUT, text=True, env={**os.environ, "PYTHONPATH": str(code)})
    peaks, tick = Peaks(proc.pid), 0
    while proc.poll() is None:
        peaks.sample(uss=tick % uss_every == 0)
        tick += 1
        time.sleep(interval)
    log.seek(0)
    out = log.read()
    if proc.returncode:
        raise SystemExit(f"{' '.join(args[:2])} failed ({proc.returncode}):\n{out[-4000:]}")
    return {
        "seconds": round(time.perf_counter() - t0, 1),
        "peak_rss_mib": {k: v >> 20 for k, v in peaks.rss.items()},
        "peak_private_mib": {k: v >> 20 for k, v in peaks.private.items()},
        "peak_uss_mib": {k: v >> 20 for k, v in peaks.uss.items()},
        "output": out,
    }


def exact_top(uri: Path, q: np.ndarray, k: int, block: int = ROWS_PER_FILE) -> np.ndarray:
    """Ids of the ``k`` most cosine-similar rows of the dataset to each row of ``q`` (unit
    rows), by brute force over the dataset streamed ``block`` rows at a time."""
    import lance

    best_s = np.full((len(q), 0), -np.inf, np.float32)
    best_i = np.empty((len(q), 0), object)
    for b in lance.dataset(str(uri)).to_batches(columns=["id", COLUMN], batch_size=block):
        x = b.column(COLUMN).flatten().to_numpy().reshape(-1, DIM)
        s = q @ (x / np.linalg.norm(x, axis=1, keepdims=True)).T
        top = np.argpartition(-s, min(k, s.shape[1] - 1), axis=1)[:, :k]  # this block's k best, unordered
        ids = np.array(b.column("id").to_pylist(), object)[top]
        s, i = np.concatenate([best_s, np.take_along_axis(s, top, 1)], 1), np.concatenate([best_i, ids], 1)
        order = np.argsort(-s, axis=1)[:, :k]
        best_s, best_i = np.take_along_axis(s, order, 1), np.take_along_axis(i, order, 1)
    return best_i


def recall_at_10(uri: Path, n: int, sample: int = 300, seed: int = 1) -> float:
    """Mean share of the exact 10 nearest rows (itself left out) among the graph's 10 first
    neighbours, over ``sample`` random rows. The graph: ``<uri>/_curation/vector/knn-COL.lance``
    (``pipelines.knn.knn_uri`` for a local dataset)."""
    import lance

    pos = np.sort(np.random.default_rng(seed).choice(n, min(sample, n), replace=False))
    t = lance.dataset(str(uri)).take(pos, columns=["id", COLUMN])
    ids = t.column("id").to_pylist()
    q = t.column(COLUMN).combine_chunks().flatten().to_numpy().reshape(-1, DIM)
    exact = exact_top(uri, q / np.linalg.norm(q, axis=1, keepdims=True), 11)
    graph = lance.dataset(str(uri / "_curation" / "vector" / f"knn-{COLUMN}.lance"))
    quoted = ", ".join(f"'{i}'" for i in ids)
    g = graph.to_table(columns=["source_id", "neighbour_id"], filter=f"source_id IN ({quoted}) AND rank <= 10").to_pydict()
    found: dict[str, set] = {}
    for s, d in zip(g["source_id"], g["neighbour_id"]):
        found.setdefault(s, set()).add(d)
    hits = [len(found.get(i, set()) & set([e for e in row if e != i][:10])) / 10 for i, row in zip(ids, exact)]
    return round(float(np.mean(hits)), 4)


def index_facts(uri: Path) -> dict:
    """The index folder's size on disk and, from its manifest when readable, its kind."""
    folder = uri / "_curation" / "vector" / f"index-{COLUMN}"
    try:
        m = json.loads((folder / "manifest.json").read_text())
    except (OSError, ValueError):
        m = {}
    return {"index_kind": m.get("kind"), "index_factory": m.get("factory"), "index_bytes": folder_bytes(folder)}


def run_job(uri: Path, n: int, code: Path, k: int, kind: str | None) -> dict:
    """`curate index build` then `curate knn` on ``uri`` from ``code``; the index and the graph."""
    common = ["--dataset", str(uri), "--column", COLUMN]
    b = run_cli(["index", "build", *common, *(["--kind", kind] if kind else [])], code)
    facts = index_facts(uri)
    g = run_cli(["knn", *common, "--k", str(k)], code)
    t0 = time.perf_counter()
    recall = recall_at_10(uri, n)
    knn_bytes = folder_bytes(uri / "_curation" / "vector" / f"knn-{COLUMN}.lance")
    strip = lambda r: {key: v for key, v in r.items() if key != "output"}  # noqa: E731
    return {
        "build": strip(b),
        "knn": strip(g),
        **facts,
        "knn_bytes": knn_bytes,
        "recall_at_10": recall,
        "recall_seconds": round(time.perf_counter() - t0, 1),
    }


def machine() -> str:
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    gpu = "a GPU" if Path("/dev/nvidia0").exists() else "no GPU"
    return f"{os.cpu_count()} cores, {mem:.0f} GiB, {gpu}, Python {platform.python_version()}, load {os.getloadavg()[0]:.1f} at start"


def growth(a: dict, b: dict, *path: str) -> float | None:
    """X in value ~ rows^X from row ``a`` to row ``b``, for the value at ``path`` (keys)."""
    lo, hi = a, b
    for key in path:
        lo, hi = lo[key], hi[key]
    return round(math.log(hi / lo) / math.log(b["rows"] / a["rows"]), 2) if lo > 0 and hi > 0 else None


def print_growth(results: dict[str, list[dict]]) -> None:
    for code, rows in results.items():
        if len(rows) < 2:
            continue
        a, b = rows[0], rows[-1]
        for job in ("build", "knn"):
            t = growth(a, b, job, "seconds")
            rss = growth(a, b, job, "peak_rss_mib", "driver")
            private = growth(a, b, job, "peak_private_mib", "driver")
            uss = growth(a, b, job, "peak_uss_mib", "driver")
            print(f"{code}: {job} growth exponent {t} (time), {rss} (driver RSS), {private} (driver private), {uss} (driver USS)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, nargs="+", default=[100_000, 300_000])
    ap.add_argument("--code", type=Path, action="append", help="checkout(s) to run the CLI from (default: this one)")
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "bench-index-knn")
    ap.add_argument("--k", type=int, default=100, help="neighbours per row (`curate knn --k`)")
    ap.add_argument("--index-kind", default=None, help="`curate index build --kind` (default: the CLI's, auto)")
    args = ap.parse_args()
    codes = [c.resolve() for c in args.code or [ROOT]]
    print(f"machine: {machine()}", flush=True)
    results: dict[str, list[dict]] = {str(c): [] for c in codes}
    for n in sorted(args.rows):
        base = args.work / f"base-{n}.lance"
        info = build(base, n)
        for code in codes:
            uri = args.work / f"run-{n}.lance"
            shutil.rmtree(uri, ignore_errors=True)
            shutil.copytree(base, uri)  # each code on the same rows, none on another's index or graph
            row = {"rows": n, "code": str(code), "k": args.k, **info, **run_job(uri, n, code, args.k, args.index_kind)}
            results[str(code)].append(row)
            print(json.dumps(row), flush=True)
            shutil.rmtree(uri, ignore_errors=True)
        shutil.rmtree(base, ignore_errors=True)
    print_growth(results)


if __name__ == "__main__":
    main()
