"""deploy/: KubeRay manifests against our schema of the v1 CRD fields, the `ray up` file against
Ray's own cluster-config schema, Dockerfiles against the repository, the cluster pipeline against
the registry. Each check is also shown to reject a broken file (a schema that accepts anything
would prove nothing)."""

from __future__ import annotations

import copy
import json
import re
import tomllib

import jsonschema
import pytest
import ray
import yaml

from tests.cluster.conftest import ROOT

DEPLOY = ROOT / "deploy"


def _kuberay_validator() -> jsonschema.Draft202012Validator:
    schema = json.loads((DEPLOY / "kuberay" / "schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def _errors(validator, doc) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)]


@pytest.mark.parametrize("name", ["raycluster.yaml", "rayjob.yaml"])
def test_kuberay_manifests_match_the_crd_schema(name):
    doc = yaml.safe_load((DEPLOY / "kuberay" / name).read_text())
    assert _errors(_kuberay_validator(), doc) == []


def test_kuberay_schema_rejects_common_mistakes():
    v = _kuberay_validator()
    cluster = yaml.safe_load((DEPLOY / "kuberay" / "raycluster.yaml").read_text())
    bad = copy.deepcopy(cluster)
    bad["spec"]["headGroupSpec"]["rayStartParams"]["num-cpus"] = 0  # must be a string
    assert any("rayStartParams/num-cpus" in e for e in _errors(v, bad))
    bad = copy.deepcopy(cluster)
    bad["spec"]["workerGroupSpec"] = bad["spec"].pop("workerGroupSpecs")  # a typo the CRD would prune
    assert any("workerGroupSpec" in e for e in _errors(v, bad))
    bad = copy.deepcopy(cluster)
    del bad["spec"]["workerGroupSpecs"][0]["groupName"]
    assert any("groupName" in e for e in _errors(v, bad))
    job = yaml.safe_load((DEPLOY / "kuberay" / "rayjob.yaml").read_text())
    bad = copy.deepcopy(job)
    del bad["spec"]["clusterSelector"]  # neither an existing cluster nor a spec for a new one
    assert _errors(v, bad)
    # the documented alternative: the RayCluster's spec embedded in the RayJob (throw-away cluster)
    alt = copy.deepcopy(job)
    del alt["spec"]["clusterSelector"]
    alt["spec"].update(rayClusterSpec=cluster["spec"], shutdownAfterJobFinishes=True, ttlSecondsAfterFinished=600)
    assert _errors(v, alt) == []


def test_kuberay_manifests_agree_with_the_project():
    cluster = yaml.safe_load((DEPLOY / "kuberay" / "raycluster.yaml").read_text())
    job = yaml.safe_load((DEPLOY / "kuberay" / "rayjob.yaml").read_text())
    assert cluster["spec"]["rayVersion"] == ray.__version__  # the images' Ray = the cluster's Ray
    assert job["spec"]["clusterSelector"]["ray.io/cluster"] == cluster["metadata"]["name"]
    images = {
        c["image"]
        for g in [cluster["spec"]["headGroupSpec"], *cluster["spec"]["workerGroupSpecs"]]
        for c in g["template"]["spec"]["containers"]
    }
    assert images == {"zcurate:0.1.0-cpu", "zcurate:0.1.0-cuda"}
    gpu = [g for g in cluster["spec"]["workerGroupSpecs"] if g["groupName"] == "gpu"][0]
    assert gpu["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    # the job runs a pipeline file shipped in the image (deploy/ is copied to /app/deploy)
    m = re.fullmatch(r"curate run /app/(\S+)", job["spec"]["entrypoint"])
    assert m and (ROOT / m.group(1)).is_file()
    assert "CURATE_STATE_DIR" in yaml.safe_load(job["spec"]["runtimeEnvYAML"])["env_vars"]


def test_cluster_pipeline_validates_against_the_registry():
    from curation.config import load_pipeline
    from pipelines import load_jobs

    load_jobs()

    cfg, steps = load_pipeline(DEPLOY / "pipeline.cluster.yaml")
    assert cfg.dataset.startswith("s3://")
    assert [n for n, _ in steps][:2] == ["ingest", "caption_stats"]


def _ray_up_config(doc):
    from ray.autoscaler._private.util import fillout_defaults, validate_config

    validate_config(fillout_defaults(copy.deepcopy(doc)))  # what `ray up` runs before touching a cloud


def test_ray_up_cluster_yaml_validates_with_rays_schema():
    doc = yaml.safe_load((DEPLOY / "ray-up" / "cluster.yaml").read_text())
    _ray_up_config(doc)
    assert doc["available_node_types"][doc["head_node_type"]]["resources"] == {"CPU": 0}
    assert sum(t.get("max_workers", 0) for t in doc["available_node_types"].values()) >= doc["max_workers"]
    bad = copy.deepcopy(doc)
    bad["idle_timeout_minute"] = 5  # misspelt key
    with pytest.raises(jsonschema.ValidationError, match="idle_timeout_minute"):
        _ray_up_config(bad)
    bad = copy.deepcopy(doc)
    bad["available_node_types"]["gpu_worker"]["min_workers"] = "none"
    with pytest.raises(jsonschema.ValidationError):
        _ray_up_config(bad)


@pytest.mark.parametrize("name", ["Dockerfile", "Dockerfile.cuda"])
def test_dockerfiles_build_what_the_repository_has(name):
    text = (DEPLOY / name).read_text()
    lines = [ln.strip() for ln in re.sub(r"\\\n", " ", text).splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    assert lines[0].startswith("FROM python:3.11")  # pyproject: requires-python >= 3.11
    for ln in lines:
        if ln.startswith("COPY"):
            for src in ln.split()[1:-1]:
                assert (ROOT / src).exists(), f"{name}: COPY {src}: not in the repository"
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    used = re.findall(r'pip install "\.\[([a-z,]+)\]"', text)
    assert used, f"{name} does not install the project"
    for group in used[0].split(","):
        assert group in extras, f"{name}: extra [{group}] is not in pyproject.toml"
    torch = re.search(r"pip install .*torch==([\d.]+)", text)
    assert torch and f"torch=={torch.group(1)}" in extras["train"]  # the same torch as the project pins
    # the Debian packages the engines need at run time: the Makefile's list, minus what only the
    # tests use (the browser for UI tests, a throwaway PostgreSQL server for the review DB tests;
    # on a cluster the review database is a service of its own, psycopg[binary] brings libpq)
    apt = re.search(r"^APT_PACKAGES := (.*)$", (ROOT / "Makefile").read_text(), re.M).group(1).split()
    for pkg in apt:
        test_only = pkg.startswith(("chromium", "postgresql"))
        assert test_only or pkg in text, f"{name}: Debian package {pkg} is not installed"
        assert not test_only or pkg not in text, f"{name}: {pkg} is only for tests, it does not belong in the image"


@pytest.mark.parametrize("name", ["Dockerfile", "Dockerfile.cuda"])
def test_dockerfiles_install_torch_before_the_project(name):
    """pip resolves the project's extras against what is installed: torch must be there first, or
    the image gets whatever torch build the index serves by default (the CUDA one, several GB)."""
    runs = [ln for ln in re.sub(r"\\\n", " ", (DEPLOY / name).read_text()).splitlines() if ln.startswith("RUN ")]
    torch_at = next(i for i, ln in enumerate(runs) if re.search(r"pip install .*torch==", ln))
    project_at = next(i for i, ln in enumerate(runs) if 'pip install ".[' in ln)
    assert torch_at < project_at
    if name == "Dockerfile":  # the CPU image: the torch index is a build argument (a CPU wheel index)
        assert "TORCH_INDEX_URL" in runs[torch_at]


def test_non_python_files_ship_in_the_installed_package():
    """The images install the project non-editable (``pip install ".[all]"``), so a template or
    static file not named in ``package-data`` would be missing there while present in a checkout."""
    from fnmatch import fnmatch

    py = tomllib.loads((ROOT / "pyproject.toml").read_text())
    include = py["tool"]["setuptools"]["packages"]["find"]["include"]
    data = py["tool"]["setuptools"].get("package-data", {})
    tops = {p.rstrip("*") for p in include}
    missing = []
    for top in tops:
        for f in (ROOT / top).rglob("*"):
            if not f.is_file() or f.suffix in (".py", ".pyc") or "__pycache__" in f.parts:
                continue
            if f.suffix in (".md", ".yaml") and f.parent == ROOT / top:
                continue  # docs and example pipelines at a package's top are read from the checkout, not imported
            rel = f.relative_to(ROOT / top).as_posix()
            if not any(fnmatch(rel, pat) for pat in data.get(top, [])):
                missing.append(f"{top}/{rel}")
    assert missing == [], f"not in [tool.setuptools.package-data]: {missing}"
