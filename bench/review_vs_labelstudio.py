"""Review API vs Label Studio, side by side: next-task + submit latency at 50 concurrent annotators.

One invocation measures both servers on the same machine, with the same items and the same load:

1. Label Studio (``label-studio`` from the package registry) in its OWN virtualenv (``--ls-venv``,
   default ``~/.cache/zcurate/label-studio-venv``, never inside this repo: its pins conflict with
   ours). Created with ``python -m venv`` + ``pip install label-studio==<--ls-version>`` on first use
   (``--no-install`` makes a missing venv an error instead).
2. A fresh Label Studio data dir (``LABEL_STUDIO_BASE_DATA_DIR``), SQLite (its default for
   ``label-studio start``; Label Studio also supports PostgreSQL via ``DJANGO_DB=default`` +
   ``POSTGRE_*``, not measured here). Migrations, one admin + one user per annotator with an API
   token, created non-interactively through Label Studio's own Django models (what ``label-studio
   init --username/--password/--user-token`` does, times 51). Telemetry, Sentry and the version
   check are switched off by environment variables. The server is ``label-studio start`` (Django's
   threaded ``runserver``, what the pip package runs) on 127.0.0.1 and a free port.
3. One project with the closest labeling config to our review item (image + caption text, a
   keep/drop ``Choices`` and a caption-fix ``TextArea``); 10% of tasks need two annotations like our
   queue (``maximum_annotations=2``, ``overlap_cohort_percentage=10``); the same N items
   (``bench/review.py``'s ``make_item``: same row ids, captions, payloads; the image is our app's
   ``/image/<row_id>`` URL, never fetched) imported through ``POST /api/projects/<id>/import`` in
   batches. The import is timed.
4. Each annotator (own user, own token) loops ``GET /api/projects/<id>/next/`` (the endpoint of
   Label Studio's labeling stream, ``ProjectNextTaskAPI``: picks and locks a task for the user) ->
   ``POST /api/tasks/<id>/annotations/`` (a keep/drop choice result), with the same think-time load
   and the same no-think stress load as ``bench/review.py``.
5. Our review server (``annotator_ui``) with the same N items queued, the same two loads, through
   ``bench/review.py``'s own functions; with ``--also-1m`` also with 1,000,000 items queued.

    .venv/bin/python bench/review_vs_labelstudio.py [--items 100000] [--annotators 50] [--seconds 20]
        [--think 1.0] [--ls-venv PATH] [--ls-version 1.23.2] [--dir D] [--also-1m] [--json OUT]

Prints one side-by-side table, the p99 ratios and the machine (cores, RAM, load average).
Targets (issue 16): next+submit p99 at least 10x lower than Label Studio's at equal load;
1M queued items still under 100 ms p99 here.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import review as rb  # noqa: E402  (bench/review.py: queue, server start/stop, load, percentiles)

LS_VERSION = "1.23.2"  # the version this bench was written and run against
LS_PASSWORD = "bench-password-1"
LS_CONFIG = """<View>
  <Image name="image" value="$image"/>
  <Text name="caption" value="$caption"/>
  <Choices name="decision" toName="image" choice="single" showInline="true">
    <Choice value="keep"/>
    <Choice value="drop"/>
  </Choices>
  <TextArea name="caption_fix" toName="image" editable="true" maxSubmissions="1"/>
</View>"""

# runs inside Label Studio's venv: migrations, organisation, admin + annotators with API tokens
LS_SETUP = """
import json, os, sys
sys.argv = ["label-studio"]
from label_studio import server
server._setup_env()
server._apply_database_migrations()
from label_studio import __version__
from organizations.models import Organization
from users.models import User
pw = os.environ["BENCH_PASSWORD"]
admin = User.objects.create_user(email="admin@bench.local", password=pw)
admin.is_staff = admin.is_superuser = True
admin.save()
org = Organization.create_organization(created_by=admin, title="bench", legacy_api_tokens_enabled=True)
admin.active_organization = org
admin.save(update_fields=["active_organization"])
tokens = []
for name in json.loads(os.environ["BENCH_USERS"]):
    u = User.objects.create_user(email=name + "@bench.local", password=pw)
    org.add_user(u)
    u.active_organization = org
    u.save(update_fields=["active_organization"])
    tokens.append(u.auth_token.key)
print("BENCH_JSON=" + json.dumps({"version": __version__, "admin": admin.auth_token.key, "tokens": tokens}))
"""


def mem_total_gib() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) / 2**20
    return float("nan")


def log_tail(path: Path, n: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


# ---------------------------------------------------------------------------------------------
# Label Studio: venv, setup, server


def ensure_ls_venv(venv: Path, version: str, install: bool) -> Path:
    """The ``label-studio`` executable of ``venv``, creating the venv and installing on first use."""
    exe = venv / "bin" / "label-studio"
    if exe.exists():
        return exe
    if not install:
        raise SystemExit(
            f"label-studio is not installed in {venv} (no {exe}).\n"
            f"Install it: python3 -m venv {venv} && {venv}/bin/pip install label-studio=={version}\n"
            "or rerun without --no-install (the bench then does exactly that)."
        )
    if venv.resolve().is_relative_to(rb.ROOT):
        raise SystemExit(f"--ls-venv {venv} is inside the repository; put Label Studio's venv outside it")
    print(f"installing label-studio=={version} into {venv} (own venv; takes minutes)")
    t0 = time.perf_counter()
    py = shutil.which("python3.11") or shutil.which("python3") or sys.executable
    try:
        subprocess.run([py, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "pip"), "install", "-q", f"label-studio=={version}"], check=True)
    except subprocess.CalledProcessError as e:
        raise SystemExit(f"installing label-studio into {venv} failed: {e}") from e
    print(f"  installed in {time.perf_counter() - t0:.0f} s")
    return exe


def ls_env(data_dir: Path, wal: bool) -> dict:
    env = {
        k: v
        for k, v in os.environ.items()
        # Label Studio reads NAME, LABEL_STUDIO_NAME and HEARTEX_NAME: keep the shell's USERNAME etc. out
        if k.removeprefix("LABEL_STUDIO_").removeprefix("HEARTEX_")
        not in {"USERNAME", "PASSWORD", "USER_TOKEN", "PORT", "HOST", "DATABASE_NAME", "DJANGO_DB", "DEBUG", "BASE_DATA_DIR"}
        and k not in {"VIRTUAL_ENV", "PYTHONPATH", "DJANGO_SETTINGS_MODULE"}
    }
    env.update(
        LABEL_STUDIO_BASE_DATA_DIR=str(data_dir),
        DJANGO_DB="sqlite",
        DEBUG="false",
        LOG_LEVEL="WARNING",
        SENTRY_DSN="",
        FRONTEND_SENTRY_DSN="",
        COLLECT_ANALYTICS="false",
        LATEST_VERSION_CHECK="false",
    )
    if wal:
        env["AZURE_MOUNT_FIX"] = "1"  # Label Studio's own switch that puts its SQLite in WAL mode
    return env


def ls_setup(exe: Path, env: dict, users: list[str], log: Path) -> dict:
    """Migrations + admin + one user and token per annotator, in Label Studio's venv."""
    py = exe.parent / "python"
    env = dict(env, BENCH_PASSWORD=LS_PASSWORD, BENCH_USERS=json.dumps(users))
    with open(log, "a") as f:
        r = subprocess.run([str(py), "-c", LS_SETUP], env=env, stdout=subprocess.PIPE, stderr=f, text=True)
        f.write("".join(x + "\n" for x in r.stdout.splitlines() if not x.startswith("BENCH_JSON=")))
    line = next((x for x in r.stdout.splitlines() if x.startswith("BENCH_JSON=")), None)
    if r.returncode != 0 or line is None:
        raise SystemExit(f"Label Studio setup (migrations, users) failed, rc={r.returncode}; log {log}:\n{log_tail(log)}")
    return json.loads(line.split("=", 1)[1])


def ls_start(exe: Path, env: dict, data_dir: Path, log: Path, timeout: float = 300) -> tuple[subprocess.Popen, str]:
    import httpx

    port = rb.free_port()
    base = f"http://127.0.0.1:{port}"
    f = open(log, "a")  # noqa: SIM115 (lives as long as the server)
    cmd = [str(exe), "start", "--no-browser", "--internal-host", "127.0.0.1", "-p", str(port), "--data-dir", str(data_dir)]
    cmd += ["--log-level", "WARNING"]
    proc = subprocess.Popen(cmd, env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        if proc.poll() is not None:
            raise SystemExit(f"label-studio exited with rc={proc.returncode} while starting; log {log}:\n{log_tail(log)}")
        try:
            if httpx.get(f"{base}/health/", timeout=2).status_code == 200:
                return proc, base
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    ls_stop(proc)
    raise SystemExit(f"label-studio did not answer {base}/health/ within {timeout:.0f} s; log {log}:\n{log_tail(log)}")


def count_locked(log: Path) -> int:
    """Requests Label Studio logged as failed on 'database is locked' (then retried by its middleware)."""
    try:
        return sum("custom_exception_handler" in x and "database is locked" in x for x in log.read_text(errors="replace").splitlines())
    except OSError:
        return 0


def ls_stop(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


def ls_task(i: int, rng: random.Random) -> dict:
    """Queue entry i of bench/review.py as a Label Studio task (same row id, caption, payload)."""
    payload = rb.make_item(i, rng)["payload"]
    return {"data": {**payload, "image": f"/image/{payload['row_id']}"}}


def ls_project_and_import(base: str, admin_token: str, n: int, batch: int) -> dict:
    import httpx

    h = {"Authorization": f"Token {admin_token}"}
    with httpx.Client(base_url=base, headers=h, timeout=1800) as c:
        r = c.post(
            "/api/projects/",
            json={
                "title": "review bench",
                "label_config": LS_CONFIG,
                "maximum_annotations": 2,
                "overlap_cohort_percentage": 10,  # 10% of tasks need 2 annotations, like our queue
                "sampling": "Sequential sampling",
            },
        )
        if r.status_code != 201:
            raise SystemExit(f"creating the Label Studio project failed: {r.status_code} {r.text[:500]}")
        pid = r.json()["id"]
        rng = random.Random(0)  # same draws as bench/review.py's queue_items
        t0 = time.perf_counter()
        for start in range(0, n, batch):
            tasks = [ls_task(i, rng) for i in range(start, min(n, start + batch))]
            r = c.post(f"/api/projects/{pid}/import", params={"return_task_ids": "false"}, json=tasks)
            if r.status_code != 201:
                raise SystemExit(f"Label Studio import failed at {start:,}: {r.status_code} {r.text[:500]}")
            print(f"  imported {min(n, start + batch):,}/{n:,} ({time.perf_counter() - t0:.0f} s)", end="\r", flush=True)
        t_import = time.perf_counter() - t0
        print()
        p = c.get(f"/api/projects/{pid}/").json()
    return {"project": pid, "t_import": t_import, "task_number": p.get("task_number")}


async def ls_annotator(client, pid: int, stop: float, think: float, out: dict, rng: random.Random):
    if think:  # as bench/review.py: each starts within one think time
        await asyncio.sleep(rng.uniform(0, think))
    while time.perf_counter() < stop:
        t0 = time.perf_counter()
        try:
            r = await client.get(f"/api/projects/{pid}/next/")
            t1 = time.perf_counter()
            if r.status_code == 404:  # no task left for this user
                return
            if r.status_code != 200:
                out["errors"].append((r.status_code, None))
                continue
            tid = r.json()["id"]
            dec = "keep" if rng.random() < 0.6 else "drop"
            body = {
                "result": [{"from_name": "decision", "to_name": "image", "type": "choices", "value": {"choices": [dec]}}],
                "lead_time": round(think or 0.1, 3),
                "project": pid,
            }
            r2 = await client.post(f"/api/tasks/{tid}/annotations/", params={"project": pid}, json=body)
            t2 = time.perf_counter()
        except Exception as e:  # noqa: BLE001 (timeouts, resets: count them, keep going)
            out["errors"].append((type(e).__name__, None))
            continue
        if r2.status_code != 201:
            out["errors"].append((r.status_code, r2.status_code))
            if len(out["errors"]) <= 3:
                out.setdefault("error_samples", []).append(r2.text[:300])
            continue
        out["next"].append(t1 - t0)
        out["submit"].append(t2 - t1)
        out["pair"].append(t2 - t0)
        if think:
            await asyncio.sleep(rng.uniform(0.5, 1.5) * think)


async def ls_run_load(base: str, tokens: list[str], pid: int, seconds: float, think: float, server_pid: int, grace: float = 180) -> dict:
    """bench/review.py's run_load, against Label Studio: same pacing, same GC handling, same CPU accounting."""
    import httpx

    out: dict = {"next": [], "submit": [], "pair": [], "errors": []}
    limits = httpx.Limits(max_connections=4, max_keepalive_connections=4)
    clients = [
        httpx.AsyncClient(base_url=base, headers={"Authorization": f"Token {t}"}, limits=limits, timeout=seconds + grace) for t in tokens
    ]
    stop = time.perf_counter() + seconds
    t0 = time.perf_counter()
    gc.collect()
    gc.freeze()
    gc.disable()
    c0 = rb.cpu_seconds(server_pid)
    tasks = [asyncio.create_task(ls_annotator(c, pid, stop, think, out, random.Random(i))) for i, c in enumerate(clients)]
    # an annotator whose request is still queued long after the phase is abandoned, counted as an error;
    # its latency is then missing from the percentiles (which makes Label Studio's tail look better, not worse)
    _, pending = await asyncio.wait(tasks, timeout=seconds + grace)
    for t in pending:
        t.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    out["unfinished"] = len(pending)
    out["errors"] += [("unfinished", None)] * len(pending)
    out["cpu"] = rb.cpu_seconds(server_pid) - c0
    out["wall"] = time.perf_counter() - t0
    gc.enable()
    gc.unfreeze()
    for c in clients:
        await c.aclose()
    return out


# ---------------------------------------------------------------------------------------------
# the two sides


def loads(args) -> list[tuple[str, float, int, float]]:
    """(name, think time, annotators, seconds) of each load phase, the same on every server."""
    n = args.annotators
    out = [(f"{n} annotators, think {args.think:g} s", args.think, n, args.seconds)]
    out.append((f"{n} annotators, stress (no think time)", 0.0, n, args.seconds))
    if args.single_seconds:  # service time without contention: one annotator, back to back
        out.insert(0, ("1 annotator alone, no think time", 0.0, 1, args.single_seconds))
    return out


def run_labelstudio(args, work: Path, users: list[str]) -> dict:
    venv = Path(args.ls_venv).expanduser()
    t0 = time.perf_counter()
    exe = ensure_ls_venv(venv, args.ls_version, not args.no_install)
    t_install = time.perf_counter() - t0
    data_dir = work / "label-studio-data"
    data_dir.mkdir(parents=True, exist_ok=True)
    log = work / "label-studio.log"
    env = ls_env(data_dir, args.ls_wal)
    print(f"Label Studio: venv {venv}, data dir {data_dir}, log {log}")
    t0 = time.perf_counter()
    setup = ls_setup(exe, env, users, log)
    t_setup = time.perf_counter() - t0
    print(f"  label-studio {setup['version']}: migrations + {len(users) + 1} users in {t_setup:.1f} s")
    if setup["version"] != args.ls_version:
        print(f"  note: installed label-studio {setup['version']} differs from --ls-version {args.ls_version}")
    t0 = time.perf_counter()
    proc, base = ls_start(exe, env, data_dir, log)
    t_start = time.perf_counter() - t0
    print(f"  server up on {base} in {t_start:.1f} s (pid {proc.pid})")
    res: dict = {
        "server": f"Label Studio {setup['version']}",
        "version": setup["version"],
        "t_install": t_install,
        "t_setup": t_setup,
        "t_start": t_start,
        "loads": {},
    }
    try:
        imp = ls_project_and_import(base, setup["admin"], args.items, args.batch)
        res.update(imp)
        print(f"  imported {args.items:,} tasks in {imp['t_import']:.1f} s (project {imp['project']}: {imp['task_number']} tasks)")
        for name, think, n_ann, seconds in loads(args):
            print(f"load on Label Studio: {name}, {seconds:g} s")
            locked0 = count_locked(log)
            r = asyncio.run(ls_run_load(base, setup["tokens"][:n_ann], imp["project"], seconds, think, proc.pid, args.ls_grace))
            r["loadavg"] = os.getloadavg()
            # requests that hit "database is locked" are retried inside Label Studio (its
            # DatabaseIsLockedRetryMiddleware sleeps 1 s, 1.5 s, ... and reruns them): not client errors
            r["lock_retries"] = count_locked(log) - locked0
            print(f"  SQLite 'database is locked' retries inside Label Studio (its log): {r['lock_retries']}")
            res["loads"][name] = r
            if r.get("error_samples"):
                print("  sample errors:", *r["error_samples"], sep="\n    ")
    finally:
        ls_stop(proc)
    size = sum(p.stat().st_size for p in data_dir.glob("label_studio.sqlite3*"))
    res["db_mb"] = size / 1e6
    return res


def run_ours(args, work: Path, users: list[str], n: int) -> dict:
    qdir = work / f"review-{n}"
    qdir.mkdir(parents=True, exist_ok=True)
    q = rb.prepare_queue(qdir, n, users)
    res: dict = {"server": "this review server", "t_import": q["t_queue"], "open": q["open"], "db_mb": q["size_mb"], "loads": {}}
    t0 = time.perf_counter()
    proc, base = rb.start_server(q["db"], args.threads)
    res["t_start"] = time.perf_counter() - t0
    try:
        for name, think, n_ann, seconds in loads(args):
            print(f"load on our server ({n:,} queued): {name}, {seconds:g} s")
            r = asyncio.run(rb.run_load(base, users[:n_ann], seconds, think, proc.pid))
            r["loadavg"] = os.getloadavg()
            res["loads"][name] = r
    finally:
        rb.stop_server(proc)
    return res


def summary(r: dict) -> dict:
    n = len(r["pair"])
    return {
        "pairs": n,
        "pairs_s": n / r["wall"],
        **{f"{k}_p{q}": rb.pct(r[k], q) for k in ("next", "submit", "pair") for q in (50, 99)},
        "cpu_ms_pair": 1000 * r["cpu"] / max(n, 1),
        "errors": len(r["errors"]),
        "loadavg_1m": r["loadavg"][0],
        "lock_retries": r.get("lock_retries"),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--items", type=int, default=100_000, help="items in both queues (Label Studio tasks)")
    ap.add_argument("--annotators", type=int, default=50)
    ap.add_argument("--seconds", type=float, default=20.0, help="length of each load phase")
    ap.add_argument("--single-seconds", type=float, default=10.0, help="first, one annotator alone for this long on each server (0: skip)")
    ap.add_argument("--think", type=float, default=1.0, help="mean think time (s) of the realistic load")
    ap.add_argument("--ls-venv", default="~/.cache/zcurate/label-studio-venv", help="Label Studio's own venv (outside the repo)")
    ap.add_argument("--ls-version", default=LS_VERSION, help="label-studio version to install on first use")
    ap.add_argument("--no-install", action="store_true", help="fail if --ls-venv has no label-studio instead of installing it")
    ap.add_argument("--ls-wal", action="store_true", help="Label Studio's SQLite in WAL mode (its AZURE_MOUNT_FIX switch; default: off)")
    ap.add_argument(
        "--ls-grace", type=float, default=180, help="s after a phase's end before Label Studio requests still waiting are abandoned"
    )
    ap.add_argument("--batch", type=int, default=10_000, help="tasks per Label Studio import request")
    ap.add_argument("--threads", type=int, default=40, help="our server's handler threads (the app's default: 40)")
    ap.add_argument("--also-1m", action="store_true", help="also run our server with 1,000,000 items queued")
    ap.add_argument("--skip-ls", action="store_true", help="only our server (to check the bench itself)")
    ap.add_argument("--dir", default=None, help="work dir (default: a temp dir, removed at the end unless --keep)")
    ap.add_argument("--keep", action="store_true", help="keep the work dir (databases, Label Studio log)")
    ap.add_argument("--json", default=None, help="also write the figures as JSON here")
    args = ap.parse_args()

    work = Path(args.dir or tempfile.mkdtemp(prefix="bench-review-vs-ls-"))
    work.mkdir(parents=True, exist_ok=True)
    users = [f"ann{i:03d}" for i in range(args.annotators)]
    t_all = time.perf_counter()
    runs: list[tuple[str, dict]] = []
    try:
        if not args.skip_ls:
            runs.append((f"{args.items:,}", run_labelstudio(args, work, users)))
        runs.append((f"{args.items:,}", run_ours(args, work, users, args.items)))
        if args.also_1m:
            runs.append(("1,000,000", run_ours(args, work, users, 1_000_000)))
    finally:
        if not args.dir and not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    t_all = time.perf_counter() - t_all

    print()
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, {mem_total_gib():.0f} GiB RAM, Python {platform.python_version()}; "
        f"both servers and the load generator (one asyncio process, {args.annotators} annotators) share the machine; "
        f"{args.seconds:g} s per load; whole run {t_all:.0f} s"
    )
    for queue, r in runs:
        extra = f", install {r['t_install']:.0f} s, migrations + users {r['t_setup']:.1f} s" if "t_setup" in r else ""
        how = "HTTP import API" if "t_setup" in r else "ReviewDB.enqueue, in process"
        print(
            f"  {r['server']}, {queue} items: queued in {r['t_import']:.1f} s ({how}), database {r['db_mb']:,.0f} MB, "
            f"server start {r['t_start']:.1f} s{extra}"
        )
    print(
        "| server | queue | load | pairs | pairs/s | next p50 / p99 ms | submit p50 / p99 ms | next+submit p50 / p99 ms | "
        "server CPU ms / pair | errors | load avg (1 min) |"
    )
    print("|---|---|---|---:|---:|---|---|---|---:|---:|---:|")
    table = []
    for queue, r in runs:
        for name, lr in r["loads"].items():
            s = summary(lr)
            table.append({"server": r["server"], "queue": queue, "load": name, **s})
            locks = "" if s["lock_retries"] is None else f" ({s['lock_retries']} requests retried on SQLite lock)"
            print(
                f"| {r['server']} | {queue} | {name} | {s['pairs']:,} | {s['pairs_s']:.0f} | {s['next_p50']:.1f} / {s['next_p99']:.1f} | "
                f"{s['submit_p50']:.1f} / {s['submit_p99']:.1f} | {s['pair_p50']:.1f} / {s['pair_p99']:.1f} | "
                f"{s['cpu_ms_pair']:.2f} | {s['errors']}{locks} | {s['loadavg_1m']:.1f} |"
            )
    if not args.skip_ls:
        ls, ours = runs[0][1], runs[1][1]
        print()
        for name in ls["loads"]:
            a, b = summary(ls["loads"][name]), summary(ours["loads"][name])
            ratio = a["pair_p99"] / b["pair_p99"]
            print(
                f"{name}: next+submit p99 Label Studio {a['pair_p99']:.1f} ms / ours {b['pair_p99']:.1f} ms = {ratio:.1f}x "
                f"(target >= 10x: {'met' if ratio >= 10 else 'NOT met'}); throughput {a['pairs_s']:.0f} vs {b['pairs_s']:.0f} pairs/s"
            )
    if args.also_1m:
        for name, lr in runs[-1][1]["loads"].items():
            p99 = summary(lr)["pair_p99"]
            print(f"1M queued, {name}: next+submit p99 {p99:.1f} ms (target < 100 ms: {'met' if p99 < 100 else 'NOT met'})")
    if args.json:
        meta = {
            "cores": os.cpu_count(),
            "ram_gib": mem_total_gib(),
            "python": platform.python_version(),
            "seconds": args.seconds,
            "think": args.think,
            "annotators": args.annotators,
            "items": args.items,
            "whole_run_s": t_all,
            "setup": [{k: v for k, v in r.items() if k != "loads"} for _, r in runs],
        }
        Path(args.json).write_text(json.dumps({"meta": meta, "table": table}, indent=1, default=str))


if __name__ == "__main__":
    main()
