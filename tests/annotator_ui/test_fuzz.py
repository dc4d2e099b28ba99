"""Fuzz the real server's HTTP API with schemathesis, logged in, from its own openapi.json.

Why: hand-written bad-input tests cover the cases someone thought of; the fuzzer derives valid and
invalid requests for every operation from the schema and checks every answer: no 5xx, every status
and content type documented, schema-invalid input refused, schema-valid input not refused, and an
operation that declares the session cookie refuses a request without it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import lance
import pytest

from annotator_ui.app import AppSettings, create_app
from curation.reviewdb import ReviewDB
from tests.helpers import PASSWORD, coco_rows, samples_table, served

SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")


@pytest.fixture
def live(tmp_path, coco_dir):

    rows = coco_rows(coco_dir, limit=6)
    uri = str(tmp_path / "ds.lance")
    lance.write_dataset(samples_table(rows), uri)
    db = ReviewDB(tmp_path / "review.sqlite")
    db.set_meta("dataset", uri)
    db.add_user("admin", PASSWORD, "admin")
    db.enqueue(
        [
            {
                "row_id": r["id"],
                "priority": float(10 - i),
                "payload": {"row_id": r["id"], "pos": i, "version": 1, "caption": r["captions"][0]["text"]},
            }
            for i, r in enumerate(rows)
        ],
        "b1",
    )
    with served(create_app(AppSettings(db_url=str(tmp_path / "review.sqlite"), dataset=uri), db)) as base:
        yield base, db
    db.close()


def test_schemathesis_finds_no_server_errors_nor_schema_violations(live, tmp_path):
    if not SCHEMATHESIS.exists() and shutil.which("schemathesis") is None:
        pytest.skip("schemathesis is not installed (it is in the dev extra)")
    base, db = live
    r = httpx.post(f"{base}/api/login", json={"username": "admin", "password": PASSWORD})
    assert r.status_code == 200
    cookie, csrf = r.cookies["rev_session"], r.json()["csrf"]
    assert httpx.get(f"{base}/openapi.json").status_code == 401  # the schema needs a session too
    # the schema needs a session too: fetch it logged in, and let schemathesis send the session
    # cookie as the schema's security scheme (so its auth check can also try requests without it)
    schema = httpx.get(f"{base}/openapi.json", cookies={"rev_session": cookie})
    assert schema.status_code == 200 and "session" in schema.json()["components"]["securitySchemes"]
    (tmp_path / "openapi.json").write_text(schema.text)
    (tmp_path / "schemathesis.toml").write_text(f'[auth.openapi.session]\napi_key = "{cookie}"\n')
    cmd = [
        str(SCHEMATHESIS) if SCHEMATHESIS.exists() else "schemathesis",
        "--config-file",
        str(tmp_path / "schemathesis.toml"),
        "run",
        str(tmp_path / "openapi.json"),
        "--url",
        base,
        "-H",
        f"X-CSRF-Token: {csrf}",
        "--max-examples",
        "20",
        "--seed",
        "1",
        "--workers",
        "1",
        "--no-color",
        "--exclude-path",
        "/logout",
    ]  # a fuzzed logout would end the session the run uses
    env = {**os.environ, "SCHEMATHESIS_HOOKS": "", "NO_COLOR": "1"}
    t0 = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    out = res.stdout + res.stderr
    Path(os.environ.get("FUZZ_LOG", tmp_path / "schemathesis.txt")).write_text(out)
    assert res.returncode == 0, out[-6000:]
    assert "No issues found" in out or "passed" in out.lower()
    print(f"schemathesis: {time.perf_counter() - t0:.1f} s")
