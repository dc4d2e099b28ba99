"""`curate resample --prior FILE` with a concept that names nothing is refused before Ray starts
(audit: the refusal came from the stage, after a cluster start and seconds of waiting), with the
message the stage gives: file, line and concept. Real typer app, real Lance dataset of COCO-mini
rows with tag columns, a real graph folder; Ray and the stage runner are recorded, not run."""

from __future__ import annotations

import lance
import networkx as nx
import pyarrow as pa
import pytest
from typer.testing import CliRunner

import cli.graph
import curation.runner
from cli.main import app
from tests.helpers import coco_rows, samples_table

TAGS = [["wn:02439033", "wn:02391049"], ["wn:02391049"], ["wn:02439033"], ["wn:02084071"], [], ["wn:02084071"]]
NAMES = {"wn:02439033": "giraffe", "wn:02391049": "zebra", "wn:02084071": "dog"}


class StageRan(BaseException):
    """Raised by the recorded stage runner: the command got past every check."""


@pytest.fixture
def setup(tmp_path, coco_dir, monkeypatch):
    """(dataset with tags, dataset without, graph folder, what was started)."""
    from graph.concepts import ConceptGraph

    rows = coco_rows(coco_dir, limit=len(TAGS))
    plain = samples_table(rows)
    tagged = plain.append_column("tag_concepts", pa.array(TAGS, pa.list_(pa.string())))
    tagged = tagged.append_column("tag_scores", pa.array([[1.0] * len(t) for t in TAGS], pa.list_(pa.float32())))
    tagged = tagged.append_column("tag_direct", pa.array([[True] * len(t) for t in TAGS], pa.list_(pa.bool_())))
    lance.write_dataset(tagged, str(tmp_path / "tagged.lance"))
    lance.write_dataset(plain, str(tmp_path / "plain.lance"))
    g = ConceptGraph(nx.DiGraph())
    for nid, label in NAMES.items():
        g.add_concept(nid, label, source="user")
    g.finalize().save(tmp_path / "graph", graphml=False)
    started: list[str] = []
    monkeypatch.setattr(cli.graph, "start_ray", lambda *a, **k: started.append("ray"))

    def run_stage(*a, **k):
        started.append("stage")
        raise StageRan

    monkeypatch.setattr(curation.runner, "run_stage", run_stage)
    return tmp_path / "tagged.lance", tmp_path / "plain.lance", tmp_path / "graph", started


def _resample(*args: str):
    res = CliRunner().invoke(app, ["resample", *map(str, args)])
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    return res.exit_code, " ".join(res.output.split())


def test_an_unknown_prior_concept_is_refused_before_ray_starts(setup, tmp_path):
    tagged, plain, graph, started = setup
    prior = tmp_path / "prior.csv"
    prior.write_text("concept,weight\ngiraffe,5\ngiraffee,5\nwn:02084071,2\n")
    # with a graph: names are ids, labels or terms of its nodes
    code, out = _resample("--dataset", tagged, "--graph", graph, "--prior", prior)
    assert code == 2 and f"error: prior concept matches no node of the graph (id, label or term): {prior}:3: 'giraffee'" in out, out
    assert "giraffe'" not in out.replace("'giraffee'", "")  # the known ones are not named
    # a dataset still to be tagged: refused before the tagging stage too
    code, out = _resample("--dataset", plain, "--graph", graph, "--prior", prior)
    assert code == 2 and f"{prior}:3: 'giraffee'" in out, out
    # without a graph: ids tagged in the data
    code, out = _resample("--dataset", tagged, "--prior", prior)
    assert code == 2, out
    assert (
        f"prior concept matches no concept id tagged in the data (pass --graph to name concepts by label): {prior}:2: 'giraffe'; {prior}:3: 'giraffee'"
        in out
    )
    assert started == []


def test_a_prior_that_names_known_concepts_goes_on_to_ray(setup, tmp_path):
    tagged, plain, graph, started = setup
    prior = tmp_path / "prior.json"
    prior.write_text('{"giraffe": 5, "wn:02084071": 2}')
    with pytest.raises(StageRan):
        CliRunner().invoke(app, ["resample", "--dataset", str(tagged), "--graph", str(graph), "--prior", str(prior)])
    assert started == ["ray", "stage"]


def test_the_pipeline_step_checks_the_prior_before_tagging(setup, tmp_path):
    """``run_resample`` (the `resample` step of `curate run`) refuses before its tagging stage."""
    from curation.config import RunContext
    from curation.store import Store
    from graph.resample import ResampleError
    from pipelines.graph import ResampleStepConfig, run_resample

    tagged, plain, graph, started = setup
    prior = tmp_path / "prior.csv"
    prior.write_text("concept,weight\nzebraa,3\n")
    with pytest.raises(ResampleError, match=rf"{prior}:2: 'zebraa'"):
        run_resample(RunContext(store=Store(str(plain))), ResampleStepConfig(graph=str(graph), prior=str(prior)))
    assert started == []
