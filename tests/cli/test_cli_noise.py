"""What a user's terminal shows from a real `curate` process: our lines only. Ray's C++ core
worker lines and Ray Data's warnings go to a log file, which is named when a command fails."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

CURATE = str(Path(sys.executable).parent / "curate")


def test_ray_noise_stays_out_of_the_terminal(coco_dir, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for p in sorted((coco_dir / "images").glob("*.jpg"))[:4]:
        shutil.copy(p, src / p.name)
    tmp = Path(tempfile.mkdtemp(prefix="zn", dir="/tmp"))  # short: Ray's socket paths must fit 107 bytes
    env = {**os.environ, "TMPDIR": str(tmp)}
    p = subprocess.run([CURATE, "ingest", str(src), "--dataset", str(tmp_path / "d.lance")], capture_output=True, text=True, env=env)
    assert p.returncode == 0, p.stderr
    both = p.stdout + p.stderr
    for noise in ("core_worker.cc", "Progress bars disabled", "max_restarts"):
        assert noise not in both, both
    assert "ingest" in both and re.search(r"rows/s", both)  # our own summary is still there
    logs = list((tmp / "zcurate-logs").glob("native-*.log"))
    assert logs and "core_worker.cc" in logs[0].read_text()  # kept, not lost

    bad = subprocess.run([CURATE, "dedup", "--dataset", str(tmp_path / "d.lance"), "--dry-run"], capture_output=True, text=True, env=env)
    assert bad.returncode != 0 and "curate stage vec_visual" in " ".join(bad.stderr.split()) and "Traceback" not in bad.stderr
    shutil.rmtree(tmp, ignore_errors=True)


def test_a_ray_that_cannot_start_is_one_line_not_a_traceback(coco_dir, tmp_path):
    deep = tmp_path / ("x" * 90)  # Ray's socket paths under it exceed the 107 bytes AF_UNIX allows
    deep.mkdir()
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(sorted((coco_dir / "images").glob("*.jpg"))[0], src / "a.jpg")
    env = {**os.environ, "TMPDIR": str(deep)}
    p = subprocess.run([CURATE, "ingest", str(src), "--dataset", str(tmp_path / "d.lance")], capture_output=True, text=True, env=env)
    assert p.returncode == 2 and "could not start or join an embedded Ray cluster" in p.stderr
    assert "Traceback" not in p.stderr + p.stdout


def test_ray_data_advice_goes_to_its_session_log_not_the_terminal(ray_session):
    """Ray Data's issue detector logs a 15-line memory advice every 30 s while an actor pool
    outgrows its default guess (a 3M-row dedup): kept in ``ray-data.log``, off the terminal."""
    import io
    import logging

    from ray.data._internal.logging import SessionFileHandler

    handlers = logging.getLogger("ray.data").handlers
    (file,) = [h for h in handlers if isinstance(h, SessionFileHandler)]
    consoles = [h for h in handlers if isinstance(h, logging.StreamHandler)]
    assert consoles  # Ray Data's console handler (a StreamHandler on the terminal's stderr)
    terminal = io.StringIO()
    old = [h.setStream(terminal) for h in consoles]
    try:
        token = f"zcurate-noise-probe-{os.getpid()}"
        log = logging.getLogger("ray.data._internal.issue_detection.issue_detector_manager")
        log.warning(token)
        log.error(f"{token} error")
    finally:
        for h, stream in zip(consoles, old):
            h.setStream(stream)
    assert f"{token} error" in terminal.getvalue()  # errors still reach the user
    assert f"{token}\n" not in terminal.getvalue()
    assert f"{token}\n" in Path(file._path).read_text()  # kept, not lost
