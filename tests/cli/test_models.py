"""`curate models list | pull | verify` against a real HTTP server on 127.0.0.1 that serves the
hub's endpoints for tiny repositories, the ones huggingface_hub's snapshot_download calls:

- ``GET  /api/models/{repo}/revision/{rev}``   (HfApi.repo_info: ``sha``, ``siblings``)
- ``GET  /api/models/{repo}/tree/{commit}``     (HfApi.list_repo_tree: ``path``, ``size``, ``oid``, ``lfs``)
- ``HEAD /{repo}/resolve/{commit}/{file}``      (metadata: ``X-Repo-Commit``, ``ETag``, ``Content-Length``)
- ``GET  /{repo}/resolve/{commit}/{file}``      (the bytes)

huggingface_hub reads HF_ENDPOINT / HF_HOME / HF_HUB_OFFLINE when it is imported, so every command
runs in a fresh process with its own environment (the models command group alone: it is the real
command code, without the start-up of the whole CLI).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

ROOT = Path(__file__).resolve().parents[2]

CONFIG = b'{"model_type": "tiny", "hidden_size": 8}\n'
WEIGHTS = bytes(range(256)) * 64  # 16 KiB
REPOS = {
    "zc-test/tiny-model": {
        "commit": "1" * 40,
        "files": {"config.json": CONFIG, "weights/model.safetensors": WEIGHTS, "README.md": b"# tiny\n"},
    },
    "zc-test/pinned": {"commit": "2" * 40, "files": {"config.json": CONFIG}},
    "zc-test/bad-lfs": {"commit": "3" * 40, "files": {"model.safetensors": WEIGHTS}, "lfs_sha256": {"model.safetensors": "0" * 64}},
}
CATALOGUE = f"""
replace: true
models:
  - name: tiny
    repo_id: zc-test/tiny-model
    files: [config.json, "weights/*"]
    path_in_repo: weights
    used_for: a test model
    config_field: nothing
  - name: pinned-wrong
    repo_id: zc-test/pinned
    files: [config.json]
    sha256: {{config.json: "{"f" * 64}"}}
  - name: bad-lfs
    repo_id: zc-test/bad-lfs
    files: ["*.safetensors"]
"""


def _lfs(path: str) -> bool:
    return path.endswith(".safetensors")


class FakeHub(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    requests: list[str] = []

    def log_message(self, *args):  # quiet
        pass

    def _send(self, code: int, body: bytes = b"", headers: dict | None = None, head: bool = False) -> None:
        self.send_response(code)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _json(self, obj) -> None:
        self._send(200, json.dumps(obj).encode(), {"Content-Type": "application/json"})

    def _not_found(self, code: str, head: bool = False) -> None:
        self._send(404, b'{"error": "not found"}', {"X-Error-Code": code, "Content-Type": "application/json"}, head)

    def _repo(self, parts: list[str]):
        repo_id = "/".join(parts[:2])
        return repo_id, REPOS.get(repo_id)

    def _route(self, head: bool) -> None:
        path = unquote(urlsplit(self.path).path)
        FakeHub.requests.append(f"{self.command} {path}")
        parts = path.strip("/").split("/")
        if parts[:2] == ["api", "models"] and len(parts) >= 6:
            repo_id, repo = self._repo(parts[2:])
            kind, rev = parts[4], parts[5]
            if repo is None:
                return self._not_found("RepoNotFound", head)
            if rev not in ("main", repo["commit"]):
                return self._not_found("RevisionNotFound", head)
            if kind == "revision":
                return self._json({"id": repo_id, "sha": repo["commit"], "siblings": [{"rfilename": f} for f in repo["files"]]})
            if kind == "tree":
                out = []
                for f, data in repo["files"].items():
                    item = {"type": "file", "path": f, "size": len(data), "oid": hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()}
                    if _lfs(f):
                        sha = repo.get("lfs_sha256", {}).get(f) or hashlib.sha256(data).hexdigest()
                        item["lfs"] = {"oid": sha, "size": len(data), "pointerSize": 134}
                    out.append(item)
                return self._json(out)
        if len(parts) >= 5 and parts[2] == "resolve":
            repo_id, repo = self._repo(parts)
            if repo is None:
                return self._not_found("RepoNotFound", head)
            if parts[3] not in ("main", repo["commit"]):
                return self._not_found("RevisionNotFound", head)
            f = "/".join(parts[4:])
            if f not in repo["files"]:
                return self._send(404, b"", {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": repo["commit"]}, head)
            data = repo["files"][f]
            etag = hashlib.sha256(data).hexdigest() if _lfs(f) else hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
            return self._send(200, data, {"X-Repo-Commit": repo["commit"], "ETag": f'"{etag}"'}, head)
        self._send(404, b"no such endpoint")

    def do_GET(self):
        self._route(head=False)

    def do_HEAD(self):
        self._route(head=True)


@pytest.fixture(scope="module")
def hub():
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeHub)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


CLI = "import typer; from cli import models; app = typer.Typer(); models.register(app); app(prog_name='curate')"


def _env(tmp_path: Path, endpoint: str, **extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_", "TRANSFORMERS_")) and "proxy" not in k.lower()}
    cat = tmp_path / "catalogue.yaml"
    cat.write_text(CATALOGUE)
    env |= {"HF_HOME": str(tmp_path / "hf"), "HF_ENDPOINT": endpoint, "ZCURATE_MODELS_CATALOGUE": str(cat)}
    env |= {"HF_HUB_DISABLE_TELEMETRY": "1", "COLUMNS": "250", "PYTHONPATH": str(ROOT)}
    return env | extra


def curate(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", CLI, "models", *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)


def _row(out: str, name: str) -> list[str]:
    line = next(ln for ln in out.splitlines() if f" {name} " in ln)
    return [c.strip() for c in re.split(r"[│┃|]", line.strip("│┃| "))]


def _errors(r: subprocess.CompletedProcess) -> list[str]:
    return [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]


def test_pull_list_verify_and_a_corrupted_file(tmp_path, hub):
    env = _env(tmp_path, hub)
    r = curate(env, "list")
    assert r.returncode == 0, r.stderr
    assert _row(r.stdout, "tiny")[4:6] == ["no", "-"]

    FakeHub.requests.clear()
    r = curate(env, "pull", "tiny")
    assert r.returncode == 0, r.stderr
    assert "recorded hash on first pull" in r.stderr and "sha256 weights/model.safetensors" in r.stderr
    snap = tmp_path / "hf" / "hub" / "models--zc-test--tiny-model" / "snapshots" / ("1" * 40)
    assert (snap / "weights" / "model.safetensors").read_bytes() == WEIGHTS
    assert not (snap / "README.md").exists()  # only the entry's files
    assert f"-> {snap / 'weights'}" in r.stdout
    assert "GET /api/models/zc-test/tiny-model/revision/main" in FakeHub.requests
    assert any(q.startswith("GET /zc-test/tiny-model/resolve/") for q in FakeHub.requests)
    lock = json.loads((tmp_path / "hf" / "assets" / "zcurate" / "models" / "default" / "lock.json").read_text())
    assert lock["models"]["tiny"]["commit"] == "1" * 40
    assert lock["models"]["tiny"]["files"]["weights/model.safetensors"]["sha256"] == hashlib.sha256(WEIGHTS).hexdigest()

    r = curate(env, "list")
    assert r.returncode == 0, r.stderr
    row = _row(r.stdout, "tiny")
    assert row[1] == "zc-test/tiny-model" and row[4:6] == ["yes", "yes"] and row[3].endswith("kB")

    r = curate(env, "verify", "tiny")
    assert r.returncode == 0, r.stderr
    assert "tiny: 2 of 2 file(s) match their sha256" in r.stdout

    py = "from curation.models import local_path; print(local_path('tiny')); print(local_path('pinned-wrong'))"
    out = subprocess.run([sys.executable, "-c", py], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.stdout.split() == [str(snap / "weights"), "None"], out.stderr

    blob = (snap / "weights" / "model.safetensors").resolve()
    blob.chmod(0o644)
    blob.write_bytes(WEIGHTS[:-1] + b"\x00")  # one byte changed, same size
    r = curate(env, "verify")
    assert r.returncode == 1
    errs = _errors(r)
    assert len(errs) == 1 and errs[0].startswith("error: tiny: weights/model.safetensors: sha256 "), r.stderr
    assert "differs from the hub's LFS sha256" in errs[0] and "Traceback" not in r.stderr
    assert _row(curate(env, "list").stdout, "tiny")[5] == "changed"


def test_offline_pull_of_an_absent_model_fails_with_one_line(tmp_path, hub):
    r = curate(_env(tmp_path, hub, HF_HUB_OFFLINE="1"), "pull", "tiny")
    assert r.returncode == 1
    assert "Traceback" not in r.stderr + r.stdout
    assert _errors(r) == ["error: tiny: not in the cache, and HF_HUB_OFFLINE is set, so nothing can be downloaded"], r.stderr


def test_unreachable_hub_fails_with_one_line(tmp_path, hub):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    r = curate(_env(tmp_path, dead), "pull", "tiny")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    errs = _errors(r)
    assert len(errs) == 1 and f"the hub at {dead} cannot be reached" in errs[0], r.stderr


def test_hash_mismatches_on_pull_are_refused(tmp_path, hub):
    env = _env(tmp_path, hub)
    r = curate(env, "pull", "pinned-wrong")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    errs = _errors(r)
    assert len(errs) == 1 and "pinned-wrong: config.json: sha256 " in errs[0], r.stderr
    assert "differs from the pinned sha256 ffffffffffffffff" in errs[0] and "refused and removed from the cache" in errs[0]
    assert not (tmp_path / "hf" / "hub" / "models--zc-test--pinned" / "snapshots" / ("2" * 40) / "config.json").exists()
    assert _row(curate(env, "list").stdout, "pinned-wrong")[4] == "no"

    r = curate(env, "pull", "bad-lfs")  # the bytes do not match the hub's own LFS sha256
    assert r.returncode == 1 and "differs from the hub's LFS sha256 0000000000000000" in r.stderr


def test_unknown_model_and_bad_catalogue(tmp_path, hub):
    env = _env(tmp_path, hub)
    r = curate(env, "pull", "nope")
    assert r.returncode == 2 and _errors(r) == ["error: unknown model 'nope'; the catalogue has: bad-lfs, pinned-wrong, tiny"]
    bad = tmp_path / "bad.yaml"
    bad.write_text("models:\n  - name: x\n    repo_id: a/b\n    files: [x]\n    colour: red\n")
    r = curate(env, "list", "--catalogue", str(bad))
    assert r.returncode == 2 and "unknown key(s) ['colour']" in r.stderr


def test_builtin_catalogue_is_complete():
    from curation.models import BUILTIN

    names = {e.name for e in BUILTIN}
    assert {"clip-vit-l14-laion2b", "chinese-clip-vit-b16", "laion-aesthetic-l14", "siglip2-base-p16-224"} <= names
    assert {"qwen3-4b", "flux-vae", "z-image-turbo"} <= names
    for e in BUILTIN:
        assert e.files and e.used_for and e.config_field and "/" in e.repo_id
        assert "://" not in e.repo_id  # repo ids only: the endpoint is huggingface_hub's (HF_ENDPOINT)
