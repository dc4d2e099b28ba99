"""Dedup quality: the dedup job's pairwise precision and recall per edit kind on the development
set, side by side with imagededup's hashes (PHash, DHash, WHash, AHash) and cleanvision's near
duplicates. Prints a markdown table per measure and one JSON line per method; no assertions.

    .venv/bin/python bench/dedup_quality.py                 # ~5-10 min on 2 cores
    .venv/bin/python bench/dedup_quality.py --originals 8 --negatives 12 --no-peers   # quick look
    .venv/bin/python bench/dedup_quality.py --no-peers --also '{"k": 8}'   # a setting against the defaults

Development set: real photos (COCO-mini and the photos shipped in scikit-image / scikit-learn),
each with one copy per edit kind of ``engines.vector.synth.ALL_VARIANT_KINDS``, among other
COCO photos left untouched (hard negatives: the same kinds of scenes). Ground truth: an original
and its edits form one group; every negative is alone.

The peers run in their own virtualenv, ``bench/.venv-peers`` (created on first use: torch's CPU
build first, torchvision --no-deps, then imagededup and cleanvision), as one subprocess per
method over a folder of the same images named ``<row id>.jpg``; their groups come back as JSON.
Our job runs in this process on an embedded 2-CPU Ray (``find_duplicates``: nothing committed).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# bench/ holds a profile.py that would shadow the standard library's (cProfile imports it)
sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]

import numpy as np  # noqa: E402

import curation  # noqa: E402, F401  (first: sets Ray's environment)
from engines.vector.synth import ALL_VARIANT_KINDS, encode_jpeg, near_dup_variants  # noqa: E402

COCO = ROOT.parent / "shared" / "data" / "coco-mini"
PEER_VENV = ROOT / "bench" / ".venv-peers"
PEER_PACKAGES = [["torch==2.13.0"], ["--no-deps", "torchvision==0.28.0"], ["imagededup==0.3.3", "cleanvision==0.3.7"]]
"""Install order matters: torch first (the CPU build; a bare resolve pulls GBs of CUDA), then
torchvision without deps (its wheel would pull torch again), then the peers."""
PEER_RUNS = [("imagededup", m, [10, 4, 16]) for m in ("PHash", "DHash", "WHash", "AHash")] + [("cleanvision", "phash", [8, 4])]
"""(peer, method, settings): the first setting is the library default (imagededup: Hamming
distance <= 10 of 64 bits; cleanvision: identical 8x8 pHash), the others are cheap extras."""
PACKAGE_PHOTOS = ["astronaut", "chelsea", "coffee", "rocket", "stereo_motorcycle", "hubble_deep_field"]
"""scikit-image photos (files inside the package); of the stereo pair only the left view is used."""


def machine() -> dict:
    """nproc, CPU model, RAM and load: the figures only mean something next to these."""
    model = next(
        (ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("model name")),
        platform.processor() or platform.machine(),
    )
    mem_kib = int(next(ln.split()[1] for ln in Path("/proc/meminfo").read_text().splitlines() if ln.startswith("MemTotal")))
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu": model,
        "ram_gib": round(mem_kib / 2**20, 1),
        "load_avg_1m": round(os.getloadavg()[0], 1),
        "python": platform.python_version(),
        "date": dt.datetime.now().strftime("%Y-%m-%d %H:%M"),
    }


def ensure_peer_venv() -> Path:
    """Create ``bench/.venv-peers`` with the peers when it is not there (a minute or two, once).
    A separate environment, so imagededup's and cleanvision's pins never touch the project's."""
    py = PEER_VENV / "bin" / "python"
    if py.exists() and subprocess.run([str(py), "-c", "import imagededup, cleanvision"], capture_output=True).returncode == 0:
        return py
    print(f"creating {PEER_VENV} (torch CPU, torchvision, imagededup 0.3.3, cleanvision 0.3.7)", flush=True)
    subprocess.run([getattr(sys, "_base_executable", sys.executable), "-m", "venv", str(PEER_VENV)], check=True)
    for pkgs in PEER_PACKAGES:
        subprocess.run([str(py), "-m", "pip", "install", "-q", *pkgs], check=True)
    return py


def package_photos() -> list[tuple[str, bytes]]:
    """Photos shipped inside scikit-image and scikit-learn (no download), as JPEG (quality 95)."""
    from PIL import Image
    from skimage import data as skdata
    from sklearn.datasets import load_sample_images

    arrays = {n: getattr(skdata, n)() for n in PACKAGE_PHOTOS}
    arrays["stereo_motorcycle"] = arrays["stereo_motorcycle"][0]
    out = [(n, encode_jpeg(Image.fromarray(a), 95)) for n, a in arrays.items()]
    sk = load_sample_images()
    out += [(Path(f).stem, encode_jpeg(Image.fromarray(im), 95)) for f, im in zip(sk.filenames, sk.images)]
    return out


def build_dev_set(n_coco_originals: int, n_negatives: int, with_packages: bool) -> tuple[list[dict], np.ndarray, np.ndarray]:
    """Rows (samples schema) + truth group + kind per row. Originals: the first COCO photos and the
    package photos, each followed by its edits (seed = group number, as in the tests); negatives:
    the next COCO photos, untouched."""
    from tests.helpers import sample_row

    files = sorted((COCO / "images").glob("*.jpg"))
    if n_coco_originals + n_negatives > len(files):
        raise SystemExit(f"only {len(files)} COCO photos: originals + negatives must fit")
    originals = [(p.name, p.read_bytes(), "coco-mini") for p in files[:n_coco_originals]]
    if with_packages:
        originals += [(n, b, "packages") for n, b in package_photos()]
    rows, group, kind = [], [], []
    for g, (name, data, source) in enumerate(originals):
        rows.append(sample_row(data, source, name))
        group.append(g)
        kind.append("orig")
        for k, v in near_dup_variants(data, ALL_VARIANT_KINDS, seed=g):
            rows.append(sample_row(v, "edits", f"{g}-{k}"))
            group.append(g)
            kind.append(k)
    for i, p in enumerate(files[n_coco_originals : n_coco_originals + n_negatives]):
        rows.append(sample_row(p.read_bytes(), "coco-mini", p.name))
        group.append(10_000 + i)
        kind.append("negative")
    return rows, np.array(group), np.array(kind)


def labels_from_groups(ids: list[str], groups: list[list[str]]) -> np.ndarray:
    """One label per row: its group's number, or a label of its own when it is in no group."""
    pos = {x: i for i, x in enumerate(ids)}
    labels = -1 - np.arange(len(ids))
    for g, members in enumerate(groups):
        labels[[pos[m] for m in members]] = g
    return labels


def score(labels: np.ndarray, truth: np.ndarray, kinds: np.ndarray) -> dict:
    """Pairwise precision / recall over all rows; recall per edit kind = share of that kind's
    copies grouped with their original; false pairs counted by the kinds of their two rows."""
    iu = np.triu_indices(len(labels), 1)
    pred = (labels[:, None] == labels[None, :])[iu]
    true = (truth[:, None] == truth[None, :])[iu]
    tp = int((pred & true).sum())
    origs = {int(truth[i]): i for i in np.flatnonzero(kinds == "orig")}
    per_kind = {}
    for k in ALL_VARIANT_KINDS:
        rows = np.flatnonzero(kinds == k)
        per_kind[k] = round(float(np.mean([labels[r] == labels[origs[int(truth[r])]] for r in rows])), 4)
    false = {}
    for a, b in zip(iu[0][pred & ~true], iu[1][pred & ~true]):
        key = "~".join(sorted((str(kinds[a]), str(kinds[b]))))
        false[key] = false.get(key, 0) + 1
    return {
        "precision": round(tp / max(int(pred.sum()), 1), 4),
        "recall": round(tp / int(true.sum()), 4),
        "true_pairs": int(true.sum()),
        "predicted_pairs": int(pred.sum()),
        "false_pairs": int((pred & ~true).sum()),
        "false_pairs_by_kinds": dict(sorted(false.items(), key=lambda kv: -kv[1])),
        "per_kind_recall": per_kind,
    }


def score_reported_pairs(ids: list[str], pairs: list[list[str]], truth: np.ndarray) -> dict:
    """Precision / recall of the pairs a peer reported itself, before the transitive closure: a
    loose threshold can chain unrelated images into one group through a few links, which the
    closure turns into many false pairs. (Our job's groups are Leiden communities, not a closure.)"""
    pos = {x: i for i, x in enumerate(ids)}
    same = [truth[pos[a]] == truth[pos[b]] for a, b in pairs]
    n_true = int(sum(c * (c - 1) // 2 for c in np.unique(truth, return_counts=True)[1]))
    return {
        "reported_pairs": len(pairs),
        "reported_precision": round(float(np.mean(same)) if same else 1.0, 4),
        "reported_recall": round(int(np.sum(same)) / n_true, 4),
    }


def misses(labels: np.ndarray, truth: np.ndarray, kinds: np.ndarray, names: list[str]) -> dict[str, list[str]]:
    """Per edit kind, the originals whose copy of that kind was not grouped with them, marked
    "alone" when the copy is in no group (no pair found) or "split" when it is grouped elsewhere
    (pairs found, but the communities put it apart from its original)."""
    origs = {int(truth[i]): i for i in np.flatnonzero(kinds == "orig")}
    out: dict[str, list[str]] = {}
    for r in np.flatnonzero(np.isin(kinds, ALL_VARIANT_KINDS)):
        o = origs[int(truth[r])]
        if labels[r] != labels[o]:
            out.setdefault(str(kinds[r]), []).append(f"{names[o]} ({'alone' if labels[r] < 0 else 'split'})")
    return out


def run_ours(rows: list[dict], tmp: Path, cpus: int, near: dict | None = None) -> dict:
    """The dedup job with its defaults on a Lance dataset of the rows. Its cost counts Ray's start
    and the whole job (descriptors, candidates, verification, groups); writing the dataset, the
    input, is reported apart (as writing the image folder is for the peers)."""
    import lance
    import ray

    from curation.cluster import RayConfig, init_ray
    from curation.store import Store
    from pipelines.dedup import DedupConfig, find_duplicates
    from tests.helpers import samples_table

    t = time.perf_counter()
    uri = str(tmp / "dev.lance")
    lance.write_dataset(samples_table(rows), uri, max_rows_per_file=64)
    write_s = time.perf_counter() - t
    t = time.perf_counter()
    init_ray(RayConfig(num_cpus=cpus, object_store_memory_mb=256))
    ray_s = time.perf_counter() - t
    t = time.perf_counter()
    res = find_duplicates(Store(uri), DedupConfig(near=near or {}), show_progress=False)
    find_s = time.perf_counter() - t
    ray.shutdown()
    plan = res["plan"].to_pydict()
    groups: dict[int, list[str]] = {}
    for rid, g in zip(plan["id"], plan["dup_group"]):
        if g is not None:
            groups.setdefault(g, []).append(rid)
    return {
        "method": "ours: dedup job",
        "setting": f"near: {near}" if near else "DedupConfig() defaults",
        "default": not near,
        "groups": list(groups.values()),
        "seconds": ray_s + find_s,
        "detail": {
            "ray_start_s": round(ray_s, 1),
            "find_duplicates_s": round(find_s, 1),
            "lance_write_s": round(write_s, 1),
            "stats": res["stats"],
        },
    }


def run_peer(py: Path, image_dir: Path, peer: str, method: str, settings: list[int]) -> list[dict]:
    """One peer method in its own process over the image folder. Its default setting's cost is the
    whole process (interpreter, imports, hashing, search) less the extra settings' own work; an
    extra setting's cost is the same start-up and shared work plus its own."""
    cmd = [str(py), str(ROOT / "bench" / "peers_dedup.py"), peer, method, str(image_dir), "--settings", ",".join(map(str, settings))]
    t = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    wall = time.perf_counter() - t
    out = [json.loads(ln) for ln in p.stdout.splitlines() if ln.startswith("{")]
    if p.returncode or not out:
        return [
            {"method": f"{peer} {method}", "setting": "failed", "default": True, "groups": [], "seconds": wall, "error": p.stderr[-3000:]}
        ]
    startup = wall - out[0]["shared_s"] - sum(r["setting_s"] for r in out)
    return [
        {
            "method": f"{r['peer']} {r['method']}",
            "setting": r["setting"] + (" (default)" if i == 0 else ""),
            "default": i == 0,
            "groups": r["groups"],
            "pairs": r["pairs"],
            "seconds": startup + r["shared_s"] + r["setting_s"],
            "detail": {"process_s": round(wall, 1), "shared_s": round(r["shared_s"], 2), "setting_s": round(r["setting_s"], 2)},
        }
        for i, r in enumerate(out)
    ]


def print_tables(results: list[dict]) -> None:
    """Markdown: one summary row per method and setting, then recall per edit kind (defaults)."""
    print(
        "\n| method | setting | precision | recall | false pairs | groups | reported pairs: P / R | seconds |\n"
        "|---|---|---:|---:|---:|---:|---:|---:|"
    )
    for r in results:
        if "error" in r:
            print(f"| {r['method']} | failed (see its JSON line) | - | - | - | - | - | {r['seconds']:.1f} |")
            continue
        rep = f"{r['reported_precision']:.3f} / {r['reported_recall']:.3f}" if "reported_pairs" in r else "-"
        print(
            f"| {r['method']} | {r['setting']} | {r['precision']:.3f} | {r['recall']:.3f} | {r['false_pairs']} "
            f"| {len(r['groups'])} | {rep} | {r['seconds']:.1f} |"
        )
    cols = [r for r in results if r["default"] and "per_kind_recall" in r]
    print("\nrecall per edit kind (share of the kind's copies grouped with their original), default settings:\n")
    print("| edit kind | " + " | ".join(r["method"] for r in cols) + " |\n|---|" + "---:|" * len(cols))
    for k in ALL_VARIANT_KINDS:
        print(f"| {k} | " + " | ".join(f"{r['per_kind_recall'][k]:.2f}" for r in cols) + " |")
    for name, key in (("pairwise precision", "precision"), ("pairwise recall", "recall")):
        print(f"| **{name}** | " + " | ".join(f"**{r[key]:.3f}**" for r in cols) + " |")
    print("\nfalse pairs by kinds (default settings; the 6 most frequent kind pairs):")
    for r in cols:
        top = dict(list(r["false_pairs_by_kinds"].items())[:6])
        print(f"  {r['method']}: {r['false_pairs']} false pairs {top or ''}")
    if "missed" in results[0]:
        print(f"\nours, copies not grouped with their original (kind: originals): {results[0]['missed']}")


def run_all(rows: list[dict], cpus: int, peers: bool, also: list[dict] = ()) -> list[dict]:
    """Our job (with its defaults, then with each ``also`` near-duplicate setting), then each
    peer method over the same images written as ``<row id>.jpg``."""
    with tempfile.TemporaryDirectory(prefix="dedup-quality-") as tmp:
        results = [run_ours(rows, Path(tmp), cpus)]
        for k, near in enumerate(also):
            (Path(tmp) / f"also-{k}").mkdir()
            results.append(run_ours(rows, Path(tmp) / f"also-{k}", cpus, near))
        if peers:
            py, image_dir = ensure_peer_venv(), Path(tmp) / "images"
            image_dir.mkdir()
            for r in rows:
                (image_dir / f"{r['id']}.jpg").write_bytes(r["image"])
            for peer, method, settings in PEER_RUNS:
                results += run_peer(py, image_dir, peer, method, settings)
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--originals", type=int, default=32, help="COCO photos edited (plus the package photos)")
    ap.add_argument("--negatives", type=int, default=48, help="other COCO photos, untouched")
    ap.add_argument("--no-packages", action="store_true", help="leave out the scikit-image / scikit-learn photos")
    ap.add_argument("--no-peers", action="store_true", help="our job only (no peer virtualenv)")
    ap.add_argument("--cpus", type=int, default=2, help="CPUs of the embedded Ray")
    ap.add_argument(
        "--also",
        action="append",
        default=[],
        metavar="JSON",
        help="our job again with these near settings, e.g. --also '{\"k\": 8}' (repeatable)",
    )
    a = ap.parse_args()
    t_all = time.perf_counter()
    print(json.dumps({"machine": machine()}), flush=True)
    t = time.perf_counter()
    rows, truth, kinds = build_dev_set(a.originals, a.negatives, not a.no_packages)
    ids, names = [r["id"] for r in rows], [r["source_key"] for r in rows]
    print(
        json.dumps(
            {
                "dataset": {
                    "images": len(rows),
                    "originals": int((kinds == "orig").sum()),
                    "edited_copies": int(np.isin(kinds, ALL_VARIANT_KINDS).sum()),
                    "negatives": int((kinds == "negative").sum()),
                    "build_s": round(time.perf_counter() - t, 1),
                }
            }
        ),
        flush=True,
    )
    results = run_all(rows, a.cpus, not a.no_peers, [json.loads(x) for x in a.also])
    for r in results:
        if "error" not in r:
            labels = labels_from_groups(ids, r["groups"])
            r.update(score(labels, truth, kinds))
            if "pairs" in r:
                r.update(score_reported_pairs(ids, r["pairs"], truth))
    results[0]["missed"] = misses(labels_from_groups(ids, results[0]["groups"]), truth, kinds, names)
    print_tables(results)
    for r in results:
        print(json.dumps({k: v for k, v in r.items() if k not in ("groups", "pairs")}, default=str))
    print(f"\ntotal {time.perf_counter() - t_all:.0f} s; load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
