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
    # native code writing to fd 2: Ray's core worker and raylet lines (units on warm tasks leave
    # none on a clean run), Lance's Rust log (asked for here, so there is some for sure)
    env = {**os.environ, "TMPDIR": str(tmp), "LANCE_LOG": "info"}
    p = subprocess.run([CURATE, "ingest", str(src), "--dataset", str(tmp_path / "d.lance")], capture_output=True, text=True, env=env)
    assert p.returncode == 0, p.stderr
    both = p.stdout + p.stderr
    for noise in ("core_worker.cc", "Progress bars disabled", "max_restarts", "lance::"):
        assert noise not in both, both
    assert "ingest" in both and re.search(r"rows/s", both)  # our own summary is still there
    logs = list((tmp / "zcurate-logs").glob("native-*.log"))
    assert logs and "lance::" in logs[0].read_text()  # kept, not lost

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
