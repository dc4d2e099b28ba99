"""Weights pulled with `curate models pull` are picked up by the profile stages whose config names
no model, and the run says where each model came from.

The tiny repositories are served by the hub-layout HTTP server of ``tests/cli/test_models.py``;
pull and the checks run in fresh processes (huggingface_hub reads HF_HOME when it is imported).
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cli.test_models import REPOS, ROOT, curate, hub  # noqa: F401  (hub: the server fixture)

CATALOGUE = """
replace: true
models:
  - name: laion-aesthetic-l14
    repo_id: zc-test/aesthetic
    files: [aesthetic-model.pth]
    path_in_repo: aesthetic-model.pth
  - name: clip-vit-l14-laion2b
    repo_id: zc-test/open-clip
    files: [open_clip_config.json, "open_clip_*.safetensors"]
"""

OPEN_CLIP_CONFIG = {"model_cfg": {"embed_dim": 8, "vision_cfg": {}, "text_cfg": {}}, "preprocess_cfg": {}}


def _head_bytes() -> bytes:
    """A LAION-layout head over 8-d embeddings, as torch.save writes it."""
    import torch

    from engines.profiling.aesthetics import build_head

    torch.manual_seed(0)
    buf = io.BytesIO()
    torch.save(build_head(8).state_dict(), buf)
    return buf.getvalue()


@pytest.fixture(scope="module")
def repos():
    REPOS["zc-test/aesthetic"] = {"commit": "a" * 40, "files": {"aesthetic-model.pth": _head_bytes()}}
    REPOS["zc-test/open-clip"] = {
        "commit": "c" * 40,
        "files": {"open_clip_config.json": json.dumps(OPEN_CLIP_CONFIG).encode(), "open_clip_model.safetensors": b"x" * 64},
    }
    yield REPOS
    REPOS.pop("zc-test/aesthetic")
    REPOS.pop("zc-test/open-clip")


def _env(tmp_path: Path, endpoint: str) -> dict:
    from tests.cli.test_models import _env as base_env

    env = base_env(tmp_path, endpoint)
    Path(env["ZCURATE_MODELS_CATALOGUE"]).write_text(CATALOGUE)
    return env


CHECK = """
import json
from curation.config import ConfigError
from engines.profiling.aesthetics import load_head
from pipelines.profile import AestheticStage, ClipStage, ProfileConfig, plan, with_cached_models
out = {}
try:
    st = AestheticStage()
    out["aesthetic"] = [st.config.weights, st.source, load_head(st.config.weights)[1]]
except ConfigError as e:
    out["aesthetic"] = ["error", str(e)]
try:
    st = ClipStage()
    out["clip"] = [st.config.model.backend, st.config.model.path, st.source, st.dim]
except ConfigError as e:
    out["clip"] = ["error", str(e)]
cfg = ProfileConfig(stages=["clip", "aesthetic"])
stages, notes = plan(cfg, set())
out["stages"] = [s.name for s in stages]
out["notes"] = notes
out["sources"] = with_cached_models(cfg)[1]
print(json.dumps(out))
"""


def _check(env: dict) -> dict:
    r = subprocess.run([sys.executable, "-c", CHECK], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_pulled_weights_are_used_when_the_config_names_none(tmp_path, hub, repos):  # noqa: F811
    env = _env(tmp_path, hub)
    before = _check(env)  # nothing pulled: today's behaviour, the stages say what to set
    assert before["aesthetic"][0] == "error" and "set weights" in before["aesthetic"][1]
    assert before["clip"][0] == "error" and before["stages"] == []
    assert before["sources"]["aesthetic"]["source"] == "none" and before["sources"]["clip"]["source"] == "none"

    r = curate(env, "pull", "laion-aesthetic-l14", "clip-vit-l14-laion2b")
    assert r.returncode == 0, r.stderr
    snaps = tmp_path / "hf" / "hub"
    head = snaps / "models--zc-test--aesthetic" / "snapshots" / ("a" * 40) / "aesthetic-model.pth"
    clip = snaps / "models--zc-test--open-clip" / "snapshots" / ("c" * 40)
    after = _check(env)
    assert after["aesthetic"] == [str(head), "models cache", 8]  # the pulled head, loaded
    assert after["clip"] == ["open_clip", str(clip), "models cache", 8]
    assert after["stages"] == ["prof_clip", "prof_aesthetic"]
    assert any(str(head) in n and "models cache" in n for n in after["notes"])
    src = after["sources"]
    assert src["aesthetic"] == {"path": str(head), "source": "models cache", "random_weights": False, "catalogue": "laion-aesthetic-l14"}
    assert src["clip"]["source"] == "models cache" and str(clip) in src["clip"]["path"]

    # a file changed since it was hashed is no longer picked up (verify first)
    blob = head.resolve()
    blob.chmod(0o644)
    blob.write_bytes(blob.read_bytes())
    changed = _check(env)
    assert changed["aesthetic"][0] == "error" and changed["sources"]["aesthetic"]["source"] == "none"


def test_a_configured_path_wins_over_the_cache(tmp_path, hub, repos):  # noqa: F811
    env = _env(tmp_path, hub)
    assert curate(env, "pull", "laion-aesthetic-l14").returncode == 0
    mine = tmp_path / "mine.pth"
    mine.write_bytes(_head_bytes())
    py = f"from pipelines.profile import AestheticStage; st = AestheticStage(weights={str(mine)!r}); print(st.config.weights, st.source)"
    r = subprocess.run([sys.executable, "-c", py], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == [str(mine), "config"]
