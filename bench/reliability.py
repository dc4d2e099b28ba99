"""The fault cases of issue 21, each run as a user would (the real ``curate`` CLI in fresh processes,
real files) and printed as one line: case, what happened, what should happen, ok or FAIL.

    .venv/bin/python bench/reliability.py [--dir D] [--only NAME ...]

Uses /work/shared/data/coco-mini (or ``--coco``) for real photos. Each case builds its own inputs
under ``--dir`` (a temporary folder by default). Exit status 1 when any case fails, so the script
doubles as a smoke check; docs/reliability.md records a run.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CURATE = str(Path(sys.executable).parent / "curate")
CASES: dict[str, Callable[[Path, Path], tuple[str, str, bool]]] = {}


def case(fn):
    CASES[fn.__name__] = fn
    return fn


def last_line(p: subprocess.CompletedProcess) -> str:
    lines = [x for x in (p.stderr + p.stdout).splitlines() if x.strip()]
    return lines[-1][:200] if lines else "(no output)"


def curate(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([CURATE, *args], capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=900)


def start(*args: str) -> subprocess.Popen:
    return subprocess.Popen([CURATE, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def rows(uri: Path, columns: list[str] | None = None) -> list[dict]:
    import lance

    return lance.dataset(str(uri)).to_table(columns=columns).to_pylist() if uri.exists() else []


def photos(coco: Path, n: int) -> list[Path]:
    return sorted((coco / "images").glob("*.jpg"))[:n]


def traceback_in(p: subprocess.CompletedProcess | str) -> bool:
    text = p if isinstance(p, str) else p.stdout + p.stderr
    return "Traceback (most recent call last)" in text


# --- cases ---------------------------------------------------------------------------------------


@case
def two_ingests_create_one_dataset(work: Path, coco: Path):
    a, b = work / "a", work / "b"
    for i, p in enumerate(photos(coco, 40)):
        dst = a if i % 2 else b
        dst.mkdir(exist_ok=True)
        shutil.copy(p, dst / p.name)
    ds = work / "x.lance"
    procs = [start("ingest", str(a), "--dataset", str(ds)), start("ingest", str(b), "--dataset", str(ds))]
    codes = [p.wait(timeout=900) for p in procs]
    ids = [r["id"] for r in rows(ds, ["id"])]
    ok = len(ids) == len(set(ids)) == 40
    return f"exit {codes}, {len(set(ids))} of 40 rows in the latest version ({len(ids) - len(set(ids))} twice)", "40 rows, once each", ok


@case
def same_stage_twice_at_once(work: Path, coco: Path):
    src = work / "src"
    src.mkdir()
    for p in photos(coco, 20):
        shutil.copy(p, src / p.name)
    ds = work / "x.lance"
    curate("ingest", str(src), "--dataset", str(ds))
    procs = [start("stage", "caption_stats", "--dataset", str(ds)) for _ in range(2)]
    outs = [p.communicate(timeout=900)[0] for p in procs]
    codes = [p.returncode for p in procs]
    filled = sum(r["caption_count"] is not None for r in rows(ds, ["caption_count"])) if ds.exists() else 0
    clear = all(c == 0 or ("already running" in o and not traceback_in(o)) for c, o in zip(codes, outs))
    return (
        f"exit {codes}, {filled} of 20 rows filled, tracebacks {[traceback_in(o) for o in outs]}",
        "both land or one refuses clearly",
        (clear and filled == 20),
    )


@case
def poison_records(work: Path, coco: Path):
    src = work / "src"
    src.mkdir()
    good = photos(coco, 6)
    shutil.copy(good[0], src / "ok.jpg")
    bad_name = os.fsencode(str(src)) + b"/bad\xff.jpg"
    with open(bad_name, "wb") as f:
        f.write(good[1].read_bytes())
    shutil.copy(good[2], src / "num.jpg")
    (src / "num.json").write_text('{"captions": 5, "lang": 5}')
    shutil.copy(good[3], src / "sur.jpg")
    (src / "sur.json").write_text('{"caption": "a \\udc80 b \\ud800"}')
    jl = work / "recs.jsonl"
    jl.write_text(
        "\n".join(
            [
                json.dumps({"image": str(good[4]), "caption": "fine"}),
                json.dumps({"image": str(good[5]), "captions": 5, "lang": 5}),
                '{"image": "' + str(good[5]) + '", "caption": "\\ud800"}',
            ]
        )
        + "\n"
    )
    ds = work / "x.lance"
    p1 = curate("ingest", str(src), "--dataset", str(ds), "--allow-paths-outside-source")
    p2 = curate("ingest", str(jl), "--dataset", str(ds), "--allow-paths-outside-source")
    got = rows(ds, ["source_key", "error"])
    errors = sum(r["error"] is not None for r in got)
    ok = p1.returncode == 0 and p2.returncode == 0 and len(got) >= 7 and not traceback_in(p1) and not traceback_in(p2)
    return f"exit {[p1.returncode, p2.returncode]}, {len(got)} rows ({errors} with a reason) from 7 inputs", "7 rows, none lost", ok


@case
def symlink_out_of_the_source(work: Path, coco: Path):
    src = work / "src"
    src.mkdir()
    shutil.copy(photos(coco, 1)[0], src / "ok.jpg")
    os.symlink("/etc/passwd", src / "x.jpg")
    ds = work / "x.lance"
    curate("ingest", str(src), "--dataset", str(ds))
    row = next((r for r in rows(ds, ["source_key", "image", "error"]) if r["source_key"] == "x.jpg"), None)
    stored = row is not None and row["image"] is not None
    why = row["error"] if row else "no row"
    return (
        f"bytes stored: {stored}, reason {why!r}",
        "refused, nothing stored",
        (row is not None and not stored and "outside" in (why or "")),
    )


@case
def max_pixels_can_be_raised(work: Path, coco: Path):
    from PIL import Image

    src = work / "src"
    src.mkdir()
    Image.new("L", (13000, 13000), 128).save(src / "huge.png")
    ds = work / "x.lance"
    p = curate("ingest", str(src), "--dataset", str(ds), "--max-pixels", "500000000")
    got = rows(ds, ["width", "error"])
    err = got[0]["error"] if got else "no row"
    return f"exit {p.returncode}, error {err!r}", "stored, no error", bool(got) and err is None


@case
def error_texts_are_deterministic(work: Path, coco: Path):
    from democorpus.hostile import write_hostile_corpus

    src = work / "hostile"
    write_hostile_corpus(src, photos(coco, 1)[0].read_bytes())
    outs = []
    for name in ("a", "b"):
        curate("ingest", str(src), "--dataset", str(work / f"{name}.lance"))
        outs.append(sorted((r["source_key"], r["error"]) for r in rows(work / f"{name}.lance", ["source_key", "error"])))
    differ = sum(x != y for x, y in zip(*outs)) + abs(len(outs[0]) - len(outs[1]))
    return f"{differ} of {len(outs[0])} rows differ between two ingests", "0 differ", differ == 0 and len(outs[0]) > 0


@case
def empty_source(work: Path, coco: Path):
    src = work / "empty"
    src.mkdir()
    ds = work / "x.lance"
    p = curate("ingest", str(src), "--dataset", str(ds))
    msg = " ".join((p.stdout + p.stderr).split())
    msg = msg[msg.find("error:") :][:90] if "error:" in msg else msg[:90]
    return (
        f"exit {p.returncode}, dataset created: {ds.exists()}, says {msg!r}",
        "non-zero exit, no dataset, a message",
        (p.returncode != 0 and not ds.exists() and not traceback_in(p)),
    )


@case
def exif_rotated_sizes(work: Path, coco: Path):
    from PIL import Image

    src = work / "src"
    src.mkdir()
    im = Image.open(photos(coco, 1)[0]).convert("RGB")
    exif = Image.Exif()
    exif[0x0112] = 6
    im.save(src / "rot.jpg", exif=exif.tobytes())
    ds = work / "x.lance"
    curate("ingest", str(src), "--dataset", str(ds))
    curate("stage", "prof_meta", "--dataset", str(ds))
    r = rows(ds, ["width", "height", "prof_width", "prof_height"])[0]
    same = (r["width"], r["height"]) == (r["prof_width"], r["prof_height"]) == (im.height, im.width)
    return f"ingest {r['width']}x{r['height']}, profile {r['prof_width']}x{r['prof_height']}", f"both {im.height}x{im.width}", same


@case
def export_normalises_modes(work: Path, coco: Path):
    from PIL import Image

    src = work / "src"
    src.mkdir()
    base = Image.open(photos(coco, 1)[0]).convert("RGB")
    base.convert("CMYK").save(src / "cmyk.jpg")
    base.convert("P").save(src / "pal.png")
    base.save(src / "anim.gif", save_all=True, append_images=[base.rotate(90)])
    for f in src.iterdir():
        f.with_suffix(".txt").write_text(f"a photo saved as {f.suffix}")
    ds, out = work / "x.lance", work / "out.lance"
    curate("ingest", str(src), "--dataset", str(ds))
    p = curate("export", "--dataset", str(ds), "--out", str(out), "--resolution", "256", "--optional-rules")
    modes = []
    for r in rows(out, ["image"]):
        with Image.open(io.BytesIO(r["image"])) as im:
            modes.append(f"{im.format}/{im.mode}")
    ok = p.returncode == 0 and len(modes) == 3 and all(m.endswith("/RGB") and m.split("/")[0] in ("JPEG", "PNG") for m in modes)
    return f"exit {p.returncode}, shard images {sorted(modes)}", "3 RGB JPEG/PNG", ok


@case
def dedup_counts_ingest_exact_copies(work: Path, coco: Path):
    src = work / "src"
    src.mkdir()
    for i, p in enumerate(photos(coco, 10)):
        shutil.copy(p, src / p.name)
        if i < 3:
            shutil.copy(p, src / f"copy-{p.name}")
    ds = work / "x.lance"
    curate("ingest", str(src), "--dataset", str(ds))
    p = curate("dedup", "--dataset", str(ds))
    line = next((x for x in (p.stdout + p.stderr).splitlines() if x.startswith("exact copies")), "no line")
    return line[:100], "exact copies: 3 ... (ingest flagged 3)", "exact copies: 3 " in line and "flagged 3" in line


@case
def kill_9_driver_mid_stage(work: Path, coco: Path):
    import signal

    src = work / "src"
    src.mkdir()
    for p in photos(coco, 80):
        shutil.copy(p, src / p.name)
    ds, clean = work / "x.lance", work / "clean.lance"
    for d in (ds, clean):
        made = curate("ingest", str(src), "--dataset", str(d), "--shard-size", "8")
        if made.returncode != 0:  # a setup failure is reported as such, not as a failed resume
            return f"setup: ingest exit {made.returncode}: {last_line(made)}", "resumes, same values as a clean run", False
    curate("stage", "prof_hash", "--dataset", str(clean))
    job = start("stage", "prof_hash", "--dataset", str(ds))
    ckpts = ds / "_curation" / "checkpoints"
    deadline = time.time() + 300
    while time.time() < deadline and not any(ckpts.glob("prof_hash-*/*.json")):
        time.sleep(0.2)
    done_before = len(list(ckpts.glob("prof_hash-*/*.json")))
    job.send_signal(signal.SIGKILL)
    job.wait()
    again = curate("stage", "prof_hash", "--dataset", str(ds))
    cols = ["id", "prof_phash", "prof_dhash"]
    same = sorted(map(str, rows(ds, cols))) == sorted(map(str, rows(clean, cols)))
    resumed = "resuming" in again.stdout + again.stderr
    outcome = (
        f"killed with {done_before} of 10 fragments checkpointed; re-run resumed: {resumed}, exit {again.returncode}, same values: {same}"
    )
    return outcome, "resumes, same values as a clean run", same and again.returncode == 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", type=Path, default=None)
    ap.add_argument("--coco", type=Path, default=ROOT.parent / "shared" / "data" / "coco-mini")
    ap.add_argument("--only", nargs="*", default=None, choices=sorted(CASES))
    args = ap.parse_args()
    base = args.dir or Path(tempfile.mkdtemp(prefix="zc-reliability-"))
    print(f"# {platform.node()} {os.cpu_count()} cores, python {platform.python_version()}, {time.strftime('%Y-%m-%d %H:%M')}")
    print(f"{'case':36} {'ok':4} {'seconds':>7}  outcome | expected")
    failed = 0
    for name, fn in CASES.items():
        if args.only and name not in args.only:
            continue
        work = base / name
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        t0 = time.perf_counter()
        try:
            outcome, expected, ok = fn(work, args.coco)
        except Exception as e:  # a case that cannot even run is a failed case, not a crashed script
            outcome, expected, ok = f"{type(e).__name__}: {e}", "runs", False
        failed += not ok
        print(f"{name:36} {'ok' if ok else 'FAIL':4} {time.perf_counter() - t0:7.1f}  {outcome} | {expected}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
