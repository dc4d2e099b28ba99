"""Annotator API latency with a million items queued: p50/p99 of next-item + submit.

Queues N items (default 1,000,000) in a fresh SQLite review database, starts the real app under
uvicorn in a separate process on loopback, logs in 50 simulated annotators (asyncio + httpx in
this process) and has each loop ``GET /api/next`` -> ``POST /api/items/{id}/decision`` for a
fixed time. Two loads: with a think time between items (annotators read the image; real ones
take seconds; each annotator starts at a random point within one think time, as a team does not
click in the same millisecond) and with none (a stress test: the server is saturated and latency
is queueing). The load generator's garbage collector is off while it measures (one process stands
in for 50 browsers: its pauses would delay them all at once). Besides the client-side latencies,
the table shows the app's own share of each pair, from the ``Server-Timing`` header.

    .venv/bin/python bench/review.py [--items 1000000] [--annotators 50] [--seconds 20]
        [--dir D [--reuse]] [--threads 40]

Prints a figures table and the machine it ran on. Target (issue 6): p99 <= 100 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import platform
import random
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PASSWORD = "bench-password-1"


def make_item(i: int, rng: random.Random) -> dict:
    """Queue entry i of the bench (payload shaped like ``mine``'s, ~600 bytes); ``rng`` draws its priority."""
    rid = f"{i:024x}"
    return {
        "row_id": rid,
        "priority": rng.random(),
        "needed": 2 if i % 10 == 0 else 1,
        "payload": {
            "row_id": rid,
            "pos": i,
            "version": 1,
            "caption": f"a photo of item {i} on a table",
            "signals": {"prof_quality": 0.44, "prof_clip_sim": 0.21, "prof_aesthetic": 4.6},
            "hard_reasons": ["near threshold: prof_quality=0.44 vs >= 0.45"],
            "pseudo": {"decision": "drop", "reasons": ["low overall quality"], "caption_fix": None, "tags": ["photo", "table"]},
            "verifier": {"verdict": "keep", "p_keep": 0.61, "method": "signal_consensus", "why": "mean margin +0.2 IQR"},
            "neighbours": [{"row_id": f"{i + 1:024x}", "pos": i + 1, "sim": 0.9, "caption": "x"}],
            "concept": "table",
            "quality_bin": 1,
        },
    }


def queue_items(db, n: int, chunk: int = 50_000) -> float:
    """Queue n items with payloads shaped like ``mine``'s (~600 bytes each)."""
    rng = random.Random(0)
    t0 = time.perf_counter()
    for start in range(0, n, chunk):
        db.enqueue([make_item(i, rng) for i in range(start, min(n, start + chunk))], "bench")
        print(f"  queued {min(n, start + chunk):,}/{n:,}", end="\r", flush=True)
    print()
    return time.perf_counter() - t0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


SERVER = """
import sys, uvicorn
sys.path.insert(0, {root!r})
from annotator_ui.app import AppSettings, create_app
uvicorn.run(create_app(AppSettings(db_url={db!r}, gold_rate=0.0, threads={threads})), host="127.0.0.1", port={port}, log_level="warning",
            access_log=False, timeout_keep_alive=120, http={http!r}, loop={loop!r})
"""


async def annotator(client, base: str, csrf: str, stop: float, think: float, out: dict, rng: random.Random, together: bool = False):
    if think and not together:  # a team does not click in the same millisecond: each starts within one think time
        await asyncio.sleep(rng.uniform(0, think))
    while time.perf_counter() < stop:
        t0 = time.perf_counter()
        r = await client.get(f"{base}/api/next")
        t1 = time.perf_counter()
        item = r.json()["item"]
        if item is None:
            return
        dec = "keep" if rng.random() < 0.6 else "drop"
        r2 = await client.post(
            f"{base}/api/items/{item['id']}/decision", json={"decision": dec, "tags": ["t"]}, headers={"x-csrf-token": csrf}
        )
        t2 = time.perf_counter()
        if r.status_code != 200 or r2.status_code != 200:
            out["errors"].append((r.status_code, r2.status_code))
        out["server"].append((_server_ms(r) + _server_ms(r2)) / 1000)
        out["next"].append(t1 - t0)
        out["submit"].append(t2 - t1)
        out["pair"].append(t2 - t0)
        if think:
            await asyncio.sleep(rng.uniform(0.5, 1.5) * think)


async def run_load(base: str, users: list[str], seconds: float, think: float, pid: int, together: bool = False) -> dict:
    import httpx

    out: dict = {"next": [], "submit": [], "pair": [], "server": [], "errors": []}
    clients = []
    limits = httpx.Limits(max_connections=4, max_keepalive_connections=4)
    for name in users:
        c = httpx.AsyncClient(limits=limits, timeout=30)
        r = await c.post(f"{base}/api/login", json={"username": name, "password": PASSWORD})
        r.raise_for_status()
        clients.append((c, r.json()["csrf"]))
    stop = time.perf_counter() + seconds
    t0 = time.perf_counter()
    # 50 browsers are 50 processes; here they share one: keep this process's garbage collector
    # out of the measured latencies (its pauses would delay every simulated annotator at once)
    gc.collect()
    gc.freeze()
    gc.disable()
    c0 = cpu_seconds(pid)
    await asyncio.gather(*(annotator(c, base, csrf, stop, think, out, random.Random(i), together) for i, (c, csrf) in enumerate(clients)))
    out["cpu"] = cpu_seconds(pid) - c0  # the server's CPU for the pairs only (not logins, not pages)
    out["wall"] = time.perf_counter() - t0
    # page loads (server-rendered annotator page) for one annotator while idle
    pages = []
    c, _ = clients[0]
    for _ in range(30):
        t = time.perf_counter()
        r = await c.get(f"{base}/", headers={"accept": "text/html"})
        pages.append(time.perf_counter() - t)
        assert r.status_code == 200
    out["page"] = pages
    gc.enable()
    gc.unfreeze()
    for c, _ in clients:
        await c.aclose()
    return out


def _server_ms(r) -> float:
    """The app's own time for a response, from its ``Server-Timing: app;dur=<ms>`` header."""
    v = r.headers.get("server-timing", "")
    return float(v.split("dur=", 1)[1]) if "dur=" in v else float("nan")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux /proc): the server's own cost, which unlike
    latency hardly depends on what else the shared machine is running."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pct(xs, q) -> float:
    return float(np.percentile(np.array(xs) * 1000, q)) if xs else float("nan")


def prepare_queue(work: Path, n: int, users: list[str], reuse: bool = False) -> dict:
    """A review database with n items queued and the bench's users in ``work`` (or the one already
    there with ``reuse``). Returns its path, open items, size on disk and queueing time."""
    from curation.reviewdb import ReviewDB

    dbfile = work / "review.sqlite"
    if reuse and dbfile.exists():
        db = ReviewDB(dbfile)
        t_queue = float("nan")
        open_now = db.counters()["items_open"]
        print(f"reusing {dbfile}: {open_now:,} items open")
    else:
        for old in work.glob("review.sqlite*"):
            old.unlink()
        print(f"queueing {n:,} items in {dbfile}")
        db = ReviewDB(dbfile)
        t_queue = queue_items(db, n)
        for u in users:
            db.add_user(u, PASSWORD)
    open_items = db.counters()["items_open"]
    db.close()
    size_mb = sum(p.stat().st_size for p in work.glob("review.sqlite*")) / 1e6
    return {"db": dbfile, "open": open_items, "size_mb": size_mb, "t_queue": t_queue}


def start_server(dbfile: Path, threads: int = 40, plain: bool = False) -> tuple[subprocess.Popen, str]:
    """The real app under uvicorn in its own process on a free loopback port, once healthy."""
    import httpx

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            SERVER.format(
                root=str(ROOT),
                db=str(dbfile),
                port=port,
                threads=threads,
                http="h11" if plain else "auto",
                loop="asyncio" if plain else "auto",
            ),
        ]
    )
    try:
        for _ in range(200):
            try:
                if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
    except BaseException:
        stop_server(proc)
        raise
    return proc, base


def stop_server(proc: subprocess.Popen) -> None:
    proc.terminate()
    proc.wait(timeout=10)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--items", type=int, default=1_000_000)
    ap.add_argument("--annotators", type=int, default=50)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--think", type=float, default=1.0, help="mean think time (s) of the realistic load")
    ap.add_argument("--dir", default=None, help="where the review database goes (default: a temp dir)")
    ap.add_argument("--reuse", action="store_true", help="reuse the queue already in --dir (skip queueing)")
    ap.add_argument(
        "--together",
        action="store_true",
        help="all annotators send their first request at the same moment (a burst test; its p99 then depends on the run's length)",
    )
    ap.add_argument("--threads", type=int, default=40, help="the server's request-handler threads (the app's default: 40)")
    ap.add_argument(
        "--plain", action="store_true", help="pure-Python uvicorn (h11 + asyncio loop) instead of httptools + uvloop, to compare"
    )
    args = ap.parse_args()

    work = Path(args.dir or tempfile.mkdtemp(prefix="bench-review-"))
    users = [f"ann{i:03d}" for i in range(args.annotators)]
    q = prepare_queue(work, args.items, users, args.reuse)
    open_items, size_mb, t_queue = q["open"], q["size_mb"], q["t_queue"]

    proc, base = start_server(q["db"], args.threads, args.plain)
    try:
        results = {}
        start = ", all starting at once" if args.together else ""
        for name, think in [(f"think {args.think:g} s{start}", args.think), ("no think time (stress)", 0.0)]:
            print(f"load: {args.annotators} annotators, {name}, {args.seconds:g} s")
            results[name] = asyncio.run(run_load(base, users, args.seconds, think, proc.pid, args.together))
    finally:
        stop_server(proc)

    print()
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"SQLite WAL; server = 1 uvicorn process ({'h11 + asyncio' if args.plain else 'httptools + uvloop when installed'}, "
        f"{args.threads} handler threads); "
        f"load generator in the same machine; load average at the end {os.getloadavg()[0]:.1f}"
    )
    print(f"queue: {open_items:,} items open ({size_mb:,.0f} MB database), queued in {t_queue:.1f} s")
    print(
        "| load | pairs | pairs/s | next p50 / p99 ms | submit p50 / p99 ms | next+submit p50 / p99 ms | "
        "of which in the app p50 / p99 ms | page p50 / p99 ms | server CPU ms / pair | errors |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, r in results.items():
        n = len(r["pair"])
        print(
            f"| {args.annotators} annotators, {name} | {n:,} | {n / r['wall']:.0f} | {pct(r['next'], 50):.1f} / "
            f"{pct(r['next'], 99):.1f} | {pct(r['submit'], 50):.1f} / {pct(r['submit'], 99):.1f} | "
            f"{pct(r['pair'], 50):.1f} / {pct(r['pair'], 99):.1f} | {pct(r['server'], 50):.1f} / {pct(r['server'], 99):.1f} | "
            f"{pct(r['page'], 50):.1f} / {pct(r['page'], 99):.1f} | "
            f"{1000 * r['cpu'] / max(n, 1):.2f} | {len(r['errors'])} |"
        )


if __name__ == "__main__":
    main()
