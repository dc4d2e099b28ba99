"""How the dedup job (`curate dedup`) scales: time, driver and worker memory, precision and recall.

    python bench/dedup_scale.py --rows 100000 300000 [1000000 ...] [--index-kind auto ivffp16 ivfsq8]
                                [--out DIR] [--keep | --reuse | --build-only]
                                [--set KEY=VALUE ...] [--variant KEY=VALUE,KEY=VALUE ...]

For each size it builds a Lance dataset of that many rows, runs the real job as users do
(``python -m cli dedup --dataset DS`` in a subprocess: Ray, the index, candidates, verification,
communities, the commit) and prints one JSON line: ``rows``, ``seconds`` (the job's wall time,
Ray start included), ``peak_rss_mib`` of the driver and of the largest Ray worker (and
``peak_private_mib``: RSS less file-backed pages, i.e. without the memory-mapped index; by task or
actor in ``peak_private_mib_by_task``, ``peak_rss_mib_by_task`` and ``largest_workers``), ``precision``
and ``recall`` (pairwise, against the planted groups), the job's own counters; then a last line
``growth exponent X`` (time from the smallest to the largest size as N^X). With several
``--index-kind`` (the candidate index's lists: float32, float16 or 8-bit codes), each size's
dataset is built once and the job runs once per kind on it, back to back; each line gives
``index_kind`` and ``index_mib`` (the index on disk), and the growth exponent is per kind.
``dataset_mib`` is the dataset as built, ``peak_disk_mib`` the most disk the job took at once
(the file system's free space, sampled). A large dataset can be built once (``--build-only``
or ``--keep``, with ``--out``) and measured later (``--reuse``: its build is not timed again).
``--set`` gives every run job settings (top-level fields of the dedup YAML, e.g.
``rows_per_unit=5000``); each ``--variant`` (comma-separated settings, ``""`` for none) runs the
job once more on each dataset, back to back, named in the ``variant`` field and exponent line.

The data: descriptors are synthesised around real ones so that image decoding does not dominate
(a real photo's descriptor plus noise large enough to make an unrelated "photo"), with planted
groups of 2-5 near-identical copies (accepted on the descriptor alone) and exact copies (same
SHA-256); on top, ``--real-groups`` real COCO photos (``../shared/data/coco-mini``) with real
edits (crops, strong crops, text bands, screenshots, turned and mirrored combinations) whose
pairs the job must verify with ORB + RANSAC on the real images. What this leaves out, and the
cost of real verification per pair, is in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
import pyarrow as pa

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import curation  # noqa: E402,F401  (Ray environment defaults)
from curation.schema import SAMPLES_SCHEMA, VEC_DESC_DIM, VEC_REGIONS, VEC_VISUAL  # noqa: E402
from engines.vector.dedup import has_content_box  # noqa: E402
from engines.vector.descriptor import CONTENT_REGION, to_int8  # noqa: E402

COCO = ROOT.parent / "shared" / "data" / "coco-mini" / "images"
REAL_KINDS = ("crop", "strong_crop", "banner", "frame", "mirror_combo", "rotate_combo")
NOISE = 0.8  # noise norm around a real descriptor: unrelated rows end up at cosine ~0.6-0.78


def real_part(n_groups: int) -> tuple[list[dict], np.ndarray, np.ndarray]:
    """Rows of real photos and their real edits (bytes, descriptors), computed once."""
    from engines.profiling.decode import decode_image
    from engines.vector.descriptor import describe, working_gray
    from engines.vector.synth import near_dup_variants

    rows, full, reg = [], [], []
    for g, p in enumerate(sorted(COCO.glob("*.jpg"))[:n_groups]):
        data = p.read_bytes()
        for kind, b in [("orig", data), *near_dup_variants(data, REAL_KINDS, seed=g)]:
            arr = decode_image(b).array
            f, r = describe(working_gray(arr))
            rows.append({"image": b, "width": arr.shape[1], "height": arr.shape[0], "group": f"real-{g}", "kind": kind})
            full.append(f)
            reg.append(r.ravel())
    return rows, np.stack(full), np.stack(reg)


def _noisy(base: np.ndarray, rng, scale: float) -> np.ndarray:
    x = base + rng.standard_normal(base.shape).astype(np.float32) * (scale / np.sqrt(VEC_DESC_DIM))
    return x


def _normed(x: np.ndarray, parts: int) -> np.ndarray:
    y = x.reshape(len(x), parts, VEC_DESC_DIM)
    y = y / np.linalg.norm(y, axis=2, keepdims=True)
    return y.reshape(len(x), -1)


class DescriptorSampler:
    """Vectors synthesised around real descriptors, for the benches of the index alone
    (``bench/list_router.py``, ``bench/index_training.py``): the pool is every non-zero full-frame
    and regional descriptor of ``n_groups`` coco-mini photos and their edits; ``sample`` gives
    unrelated "photos" (a pool vector plus ``NOISE``), ``near`` noisy copies of given vectors."""

    def __init__(self, n_groups: int = 20, seed: int = 0):
        _, pf, pr = real_part(n_groups)
        pool = np.concatenate([pf, pr.reshape(-1, VEC_DESC_DIM)])
        self.pool = pool[np.linalg.norm(pool, axis=1) > 0]
        self.rng = np.random.default_rng(seed)

    def near(self, base: np.ndarray, noise: float) -> np.ndarray:
        return _normed(_noisy(base, self.rng, noise), 1).astype(np.float32)

    def sample(self, n: int, chunk: int = 1 << 18) -> np.ndarray:
        out = np.empty((n, VEC_DESC_DIM), np.float32)
        for s in range(0, n, chunk):  # chunks: bounded temporaries for millions of vectors
            out[s : s + chunk] = self.near(self.pool[self.rng.integers(0, len(self.pool), min(chunk, n - s))], NOISE)
        return out


def synthetic_batch(start: int, m: int, pool_f: np.ndarray, pool_r: np.ndarray, rng, tiny: bytes) -> tuple[pa.Table, np.ndarray]:
    """``m`` synthetic rows from position ``start``: unrelated rows, 2% of them near-identical copies
    of an earlier row of the batch (groups of 2-5), 0.2% exact copies. Returns (table, group labels)."""
    base = rng.integers(0, len(pool_f), m)
    full = _normed(_noisy(pool_f[base], rng, NOISE), 1)
    reg = _normed(_noisy(pool_r[base], rng, NOISE), VEC_REGIONS)
    group = np.arange(start, start + m).astype(np.int64)
    sha = [hashlib.sha256(str(start + i).encode()).hexdigest() for i in range(m)]
    n_src = max(1, m // 150)
    src = rng.choice(m // 2, n_src, replace=False)
    dst = m // 2 + rng.choice(m - m // 2, min(m - m // 2, n_src * 3), replace=False)
    owner = src[rng.integers(0, n_src, len(dst))]
    full[dst] = _normed(_noisy(full[owner], rng, 0.05), 1)
    reg[dst] = _normed(_noisy(reg[owner].reshape(len(dst), VEC_REGIONS, -1).reshape(len(dst), -1), rng, 0.05), VEC_REGIONS)
    group[dst] = group[owner]
    # a photo with no surroundings has its full frame as its content box (``describe``): so here
    origin = base.copy()
    origin[dst] = base[owner]
    plain = ~has_content_box(pool_f, pool_r.reshape(len(pool_r), VEC_REGIONS, VEC_DESC_DIM))[origin]
    reg.reshape(m, VEC_REGIONS, VEC_DESC_DIM)[plain, CONTENT_REGION] = full[plain]
    for k in dst[: max(1, len(dst) // 10)]:  # some copies are byte-identical: the exact path
        sha[k] = sha[owner[np.flatnonzero(dst == k)[0]]]
    t = _table([f"s{start + i}" for i in range(m)], [tiny] * m, sha, rng.integers(200, 2000, m), rng.integers(200, 2000, m), full, reg)
    return t, group


def _table(ids, images, sha, w, h, full, reg) -> pa.Table:
    n = len(ids)
    cols = {f.name: pa.nulls(n, f.type) for f in SAMPLES_SCHEMA}
    cols.update(
        {
            "id": pa.array(ids, pa.string()),
            "source": pa.array(["bench"] * n),
            "source_key": pa.array(ids),
            "image": pa.array(images, pa.large_binary()),
            "image_sha256": pa.array(sha, pa.string()),
            "width": pa.array(np.asarray(w, np.int32)),
            "height": pa.array(np.asarray(h, np.int32)),
        }
    )
    t = pa.table([cols[f.name].cast(f.type) for f in SAMPLES_SCHEMA], schema=SAMPLES_SCHEMA)
    vt = VEC_VISUAL.schema
    desc = pa.FixedSizeListArray.from_arrays(pa.array(full.astype(np.float16).ravel()), VEC_DESC_DIM)
    regs = pa.FixedSizeListArray.from_arrays(pa.array(to_int8(reg.reshape(-1, VEC_DESC_DIM)).ravel()), VEC_DESC_DIM * VEC_REGIONS)
    return (
        t.append_column(vt.field("vec_desc"), desc)
        .append_column(vt.field("vec_regions"), regs)
        .append_column(vt.field("vec_error"), pa.nulls(n, pa.string()))
    )


def build(uri: str, n: int, real, seed: int = 0, rows_per_file: int = 50_000) -> np.ndarray:
    """Write the dataset (batches of 50k rows: bounded memory; files of ``rows_per_file``: a unit
    of the job is whole files, so smaller units need smaller files); returns the true group per row."""
    import io

    import lance
    from PIL import Image

    rows, rf, rr = real
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (120, 120, 120)).save(buf, "JPEG")
    tiny = buf.getvalue()
    groups = []

    def batches():
        k = len(rows)
        t = _table(
            [f"r{i}" for i in range(k)],
            [r["image"] for r in rows],
            [hashlib.sha256(r["image"]).hexdigest() for r in rows],
            [r["width"] for r in rows],
            [r["height"] for r in rows],
            rf,
            rr,
        )
        groups.append(np.array([-1 - int(r["group"].split("-")[1]) for r in rows], np.int64))
        yield from t.to_batches()
        for s in range(k, n, 50_000):
            bt, g = synthetic_batch(s, min(50_000, n - s), rf, rr, rng, tiny)
            groups.append(g)
            yield from bt.to_batches()

    schema = _table(["x"], [tiny], ["x"], [1], [1], rf[:1], rr[:1]).schema
    lance.write_dataset(
        pa.RecordBatchReader.from_batches(schema, batches()),
        uri,
        max_rows_per_file=rows_per_file,
        max_rows_per_group=min(10_000, rows_per_file),
    )
    return np.concatenate(groups)


def task_of(cmd: str) -> str:
    """What a Ray worker process runs, from its title (Ray's setproctitle): the task's function
    (``ray::_train``), the actor's class (``ray::MapWorker(MapBatches(_ShardWorker)).submit`` ->
    ``_ShardWorker``: a Ray Data actor holds its memory between units too) or ``IDLE`` (a task
    worker between tasks: ``largest_workers`` says which task it ran before)."""
    name = cmd[len("ray::") :].split(" ", 1)[0] or "?"
    m = re.fullmatch(r"MapWorker\(MapBatches\((\w+)\)\)(\..*)?", name)
    return m.group(1) if m else name.split(".", 1)[0]


def run_job(uri: str, interval: float = 0.25, config: Path | None = None) -> dict:
    """``python -m cli dedup --dataset URI`` with its driver and Ray workers' RSS sampled, and the
    disk it takes at its peak (the file system's free space, sampled: nothing else should write).

    Private memory is RSS less file-backed and shared-memory pages (psutil's ``rss - shared``,
    i.e. the process's anonymous pages): what it holds itself, not the memory-mapped index nor
    the Ray object store. Each worker sample is attributed to what the process runs at that
    moment (its title), so ``peak_private_mib_by_task`` says which task or actor the peak belongs to; ``largest_workers``
    lists each worker process with the titles it had in order and its own peak, so memory kept
    by a process after its task (shown as ``IDLE``) can be traced back to that task."""
    t0 = time.perf_counter()
    log = tempfile.TemporaryFile("w+")  # a file, not a pipe: a job that prints more than a pipe holds never blocks
    proc = subprocess.Popen(
        [sys.executable, "-m", "cli", "dedup", "--dataset", uri, *(["--config", str(config)] if config else [])],
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
    )
    driver = psutil.Process(proc.pid)
    peak_driver = peak_worker = anon_driver = anon_worker = 0
    by_task: dict[str, int] = {}  # task/actor title -> peak private bytes while it ran
    rss_by_task: dict[str, int] = {}
    workers: dict[int, dict] = {}  # pid -> {"tasks": [titles in order], "peak_private": bytes, "peak_task": title}
    free0 = min_free = shutil.disk_usage(uri).free  # the job's disk: its columns, index, shards, spills
    at_peak: dict[str, int] = {}
    last_walk = 0.0
    while proc.poll() is None:
        free = shutil.disk_usage(uri).free
        if free < min_free:
            min_free = free
            if time.perf_counter() - last_walk > 20:  # what holds it (a walk of the job's folders, at most every 20 s)
                at_peak, last_walk = _disk_by_folder(uri), time.perf_counter()
        try:
            m = driver.memory_info()
            peak_driver, anon_driver = max(peak_driver, m.rss), max(anon_driver, m.rss - m.shared)
            # the job's own Ray processes only (its raylet is the driver's child): another Ray
            # session on the machine (a test run) is not counted
            for p in driver.children(recursive=True):
                try:
                    cmd = " ".join(p.cmdline())
                    m = p.memory_info()
                except psutil.Error:
                    continue
                if cmd.startswith("ray::"):
                    own = m.rss - m.shared
                    peak_worker, anon_worker = max(peak_worker, m.rss), max(anon_worker, own)
                    task = task_of(cmd)
                    by_task[task] = max(by_task.get(task, 0), own)
                    rss_by_task[task] = max(rss_by_task.get(task, 0), m.rss)
                    w = workers.setdefault(p.pid, {"tasks": [], "peak_private": 0, "peak_task": task})
                    if not w["tasks"] or w["tasks"][-1] != task:
                        w["tasks"].append(task)
                    if own > w["peak_private"]:
                        w["peak_private"], w["peak_task"] = own, task
        except psutil.Error:
            pass
        time.sleep(interval)
    log.seek(0)
    out = log.read()
    log.close()
    if proc.returncode:
        raise SystemExit(f"dedup failed ({proc.returncode}):\n{out[-4000:]}")
    big = sorted(workers.items(), key=lambda kv: -kv[1]["peak_private"])[:8]
    return {
        "seconds": round(time.perf_counter() - t0, 1),
        "peak_rss_mib": {"driver": peak_driver >> 20, "largest_worker": peak_worker >> 20},
        "peak_disk_mib": (free0 - min_free) >> 20,  # the most disk the job took at once (sampled)
        "disk_near_peak_mib": at_peak,  # by folder, at the last walk before the peak
        # RSS less file-backed pages (psutil's ``shared``): what a process holds itself; the rest is
        # memory-mapped files (the candidate index) that the kernel can drop and re-read
        "peak_private_mib": {"driver": anon_driver >> 20, "largest_worker": anon_worker >> 20},
        "peak_private_mib_by_task": {k: v >> 20 for k, v in sorted(by_task.items(), key=lambda kv: -kv[1])},
        "peak_rss_mib_by_task": {k: v >> 20 for k, v in sorted(rss_by_task.items(), key=lambda kv: -kv[1])},
        "largest_workers": [
            {"pid": pid, "peak_private_mib": w["peak_private"] >> 20, "at": w["peak_task"], "tasks": w["tasks"]} for pid, w in big
        ],
        "log": out,
    }


def _disk_by_folder(uri: str) -> dict[str, int]:
    """MiB in each folder of the job's state (``_curation/vector/*``), the dataset's data and
    versions, and Ray's session folder (spilled objects, logs).

    Counted in allocated blocks, not file sizes: the merged lists file is sparse until every
    shard is copied in (``ondisk.merge_deleting``), so its size overstates the disk it takes
    (15.8 GB of sizes against 10.9 GB taken at 3M, session 18)."""

    def used(f: Path) -> int:
        return f.stat().st_blocks * 512

    def du(p: Path) -> int:
        try:
            return sum(used(f) for f in p.rglob("*") if f.is_file()) >> 20 if p.is_dir() else used(p) >> 20
        except OSError:  # a file removed while walked
            return -1

    vec = Path(uri, "_curation", "vector")
    out = {f"vector/{p.name}": du(p) for p in (vec.iterdir() if vec.is_dir() else [])}
    out = {k: v for k, v in out.items() if v}
    out.update({"data": du(Path(uri, "data")), "ray": du(Path(tempfile.gettempdir(), "ray"))})
    return out


def pair_scores(pred: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """Pairwise precision and recall from label vectors (counts of pairs per group, no n^2 matrix)."""

    def pairs(labels):
        _, c = np.unique(labels, return_counts=True, axis=0)
        return int((c * (c - 1) // 2).sum())

    both = pairs(np.stack([pred, truth], 1))
    return both / max(pairs(pred), 1), both / max(pairs(truth), 1)


def machine() -> str:
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), platform.processor())
    return f"{os.cpu_count()} cores ({cpu}), {psutil.virtual_memory().total / 2**30:.0f} GiB RAM, {platform.system()}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, nargs="+", default=[100_000, 300_000])
    ap.add_argument("--real-groups", type=int, default=40, help="real COCO photos edited (7 rows each) to verify for real")
    ap.add_argument("--out", default=None, help="folder for the datasets (default: a temporary one)")
    ap.add_argument("--keep", action="store_true", help="keep the datasets (and each one's true groups, ds-N.truth.npy)")
    ap.add_argument("--reuse", action="store_true", help="run on a dataset kept by an earlier --keep run in --out instead of building it")
    ap.add_argument("--build-only", action="store_true", help="build (and keep) the datasets, run no job")
    ap.add_argument(
        "--index-kind",
        nargs="+",
        default=["auto"],
        choices=["auto", "ivfflat", "ivffp16", "ivfsq8"],
        help="candidate index kinds to compare on each dataset (auto: the job's default, IVF-Flat at these sizes)",
    )
    ap.add_argument("--rows-per-file", type=int, default=50_000, help="rows per file of a built dataset (a job unit is whole files)")
    ap.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", help="job settings for every run (dedup YAML fields)")
    ap.add_argument(
        "--variant", nargs="+", default=[""], metavar="K=V,K=V", help='settings compared side by side on each dataset ("": none)'
    )
    a = ap.parse_args()
    common = settings(a.set)
    out = Path(a.out or tempfile.mkdtemp(prefix="dedup-scale-"))
    out.mkdir(parents=True, exist_ok=True)
    print(json.dumps({"machine": machine(), "real_groups": a.real_groups, "real_kinds": REAL_KINDS}), flush=True)
    t0 = time.perf_counter()
    real = real_part(a.real_groups)
    print(json.dumps({"real_rows": len(real[0]), "describe_seconds": round(time.perf_counter() - t0, 1)}), flush=True)
    results: dict[tuple[str, str], list[dict]] = {(k, v): [] for k in a.index_kind for v in a.variant}
    for n in a.rows:
        uri, truth_file = str(out / f"ds-{n}.lance"), out / f"ds-{n}.truth.npy"
        if a.reuse and truth_file.exists():
            truth, build_s, ds_mib = np.load(truth_file), None, None  # built (and measured) by the earlier run
        else:
            shutil.rmtree(uri, ignore_errors=True)
            t1 = time.perf_counter()
            truth = build(uri, n, real, rows_per_file=a.rows_per_file)
            build_s = round(time.perf_counter() - t1, 1)
            ds_mib = round(sum(f.stat().st_size for f in Path(uri).rglob("*") if f.is_file()) / 2**20, 1)
            if a.keep or a.build_only:
                np.save(truth_file, truth)
            print(json.dumps({"built": n, "seconds": build_s, "dataset_mib": ds_mib}), flush=True)
        if a.build_only:
            continue
        for kind in a.index_kind:
            for variant in a.variant:
                res = measure(uri, n, truth, kind, out, {**common, **settings(variant.split(",") if variant else [])})
                res["variant"] = variant
                res["build_dataset_seconds"] = build_s
                res["dataset_mib"] = ds_mib  # as built, before the job's columns: its disk per row
                results[(kind, variant)].append(res)
                print(json.dumps(res), flush=True)
        if not (a.keep or a.reuse):
            shutil.rmtree(uri, ignore_errors=True)
    for (kind, variant), rs in results.items():
        if len(rs) > 1:
            a0, a1 = rs[0], rs[-1]
            x = np.log(a1["seconds"] / a0["seconds"]) / np.log(a1["rows"] / a0["rows"])
            named = ([f"index {kind}"] if len(a.index_kind) > 1 else []) + ([f"variant {variant!r}"] if len(a.variant) > 1 else [])
            print(f"growth exponent {x:.2f}" + (f" ({', '.join(named)})" if named else ""), flush=True)


def settings(pairs: list[str]) -> dict:
    """``KEY=VALUE`` pairs as job settings (values read as YAML: numbers, null, true)."""
    import yaml

    out = {}
    for p in pairs:
        key, eq, value = p.partition("=")
        if not eq or not key.strip():
            raise SystemExit(f"--set/--variant: {p!r} is not KEY=VALUE (e.g. rows_per_unit=5000)")
        out[key.strip()] = yaml.safe_load(value)
    return out


def measure(uri: str, n: int, truth: np.ndarray, kind: str, out: Path, extra: dict | None = None) -> dict:
    """One run of the job on the dataset at ``uri`` with the candidate index ``kind`` and the
    settings ``extra``; scored against ``truth``. A dataset deduplicated before gets its
    ``dup_*`` columns replaced."""
    import lance
    import yaml

    config = None
    if kind != "auto" or extra:
        doc = {**({"index": {"kind": kind}} if kind != "auto" else {}), **(extra or {})}
        tag = hashlib.sha1(json.dumps(extra or {}, sort_keys=True).encode()).hexdigest()[:8] if extra else ""
        config = out / f"dedup-{kind}{'-' + tag if tag else ''}.yaml"
        config.write_text(yaml.safe_dump(doc, sort_keys=False))
    job = run_job(uri, config=config)
    ds = lance.dataset(uri)
    t = ds.to_table(columns=["dup_group"]).column("dup_group")
    pred = np.where(t.is_null().to_numpy(zero_copy_only=False), -(10**12) - np.arange(len(t)), t.fill_null(0).to_numpy())
    p, r = pair_scores(pred, truth)
    runs = Path(uri, "_curation", "vector").glob("dedup-v*.json")
    latest = max(runs, key=lambda f: int(f.stem.split("-v")[1]))  # this run's (the dataset's version before it)
    stats = json.loads(latest.read_text())["stats"]
    (out / f"dedup-{n}-{kind}{'-' + config.stem.split('-')[-1] if extra else ''}.log").write_text(job["log"])  # phase by phase
    return {
        "rows": n,
        "index_kind": kind,
        "settings": extra or {},
        "seconds": job["seconds"],
        "index_mib": stats.get("index_mib"),
        "peak_rss_mib": job["peak_rss_mib"],
        "peak_disk_mib": job["peak_disk_mib"],
        "disk_near_peak_mib": job["disk_near_peak_mib"],
        "peak_private_mib": job["peak_private_mib"],
        "peak_private_mib_by_task": job["peak_private_mib_by_task"],
        "peak_rss_mib_by_task": job["peak_rss_mib_by_task"],
        "largest_workers": job["largest_workers"],
        "precision": round(p, 4),
        "recall": round(r, 4),
        "counters": {k: stats.get(k) for k in ("desc_candidates", "verified_pairs", "accepted_pairs", "groups", "removed")},
        "phase_seconds": {
            k: stats.get(k)
            for k in ("exact_seconds", "index_seconds", "candidates_seconds", "verify_seconds", "semantic_seconds", "groups_seconds")
        },
    }


if __name__ == "__main__":
    main()
