"""`curate dedup` as a user runs it: bad settings are refused before any phase runs, naming the
field; the last line says what was committed, or that a dry run committed nothing."""

from __future__ import annotations

import io

import lance
import pytest
from PIL import Image
from typer.testing import CliRunner

from cli.main import app
from tests.helpers import coco_rows, sample_row, samples_table

WIDE = {"COLUMNS": "250"}


def flat(text: str) -> str:
    return " ".join(text.split())


@pytest.fixture(scope="module")
def small(coco_dir, tmp_path_factory, ray_session):
    """Six COCO photos and a half-size copy of the first, with descriptors."""
    from curation.runner import run_stage
    from curation.store import Store
    from pipelines.descriptors import VisualStage

    rows = coco_rows(coco_dir, limit=6)
    im = Image.open(io.BytesIO(rows[0]["image"])).convert("RGB")
    buf = io.BytesIO()
    im.resize((im.width // 2, im.height // 2)).save(buf, "JPEG", quality=90)
    rows.append(sample_row(buf.getvalue(), "derived", "half"))
    store = Store(str(tmp_path_factory.mktemp("dd") / "d.lance"))
    lance.write_dataset(samples_table(rows), store.uri)
    run_stage(store, VisualStage(), show_progress=False)
    return store


def test_a_non_numeric_quality_column_is_refused_before_the_phases(small):
    res = CliRunner().invoke(app, ["dedup", "--dataset", small.uri, "--dry-run", "--quality-column", "id"], env=WIDE)
    out = flat(res.output)
    assert res.exit_code == 2, out
    assert "quality_column 'id' is not numeric" in out and "width" in out, out  # names numeric columns to pick
    assert "candidate" not in out and "bug in zcurate" not in out, out  # no phase ran


@pytest.mark.parametrize("bad", ["[0.9, 1.5]", "[]"])
def test_thresholds_out_of_range_or_empty_are_refused(small, tmp_path, bad):
    cfg = tmp_path / "dd.yaml"
    cfg.write_text(f"thresholds: {bad}\n")
    res = CliRunner().invoke(app, ["dedup", "--dataset", small.uri, "--dry-run", "-c", str(cfg)], env=WIDE)
    # a ConfigError naming the field, printed as one line, exit 2
    assert res.exit_code == 2 and "thresholds" in res.output and "Traceback" not in res.output, res.output


def test_the_last_line_says_what_was_committed(small):
    dry = CliRunner().invoke(app, ["dedup", "--dataset", small.uri, "--dry-run"], env=WIDE)
    assert dry.exit_code == 0, dry.output
    assert flat(dry.output.strip().splitlines()[-1]).startswith("dry run: nothing committed; report"), dry.output[-500:]
    before = small.open().version
    real = CliRunner().invoke(app, ["dedup", "--dataset", small.uri], env=WIDE)
    assert real.exit_code == 0, real.output
    assert small.open().version == before + 1
    assert f"committed dup_* columns as version {before + 1} in" in flat(real.output), real.output[-500:]


def test_a_dry_run_without_descriptors_is_refused_before_ray_starts(coco_store, monkeypatch):
    import cli.vector

    started = []
    monkeypatch.setattr(cli.vector, "start_ray", lambda *a, **k: started.append(a))
    res = CliRunner().invoke(app, ["dedup", "--dataset", coco_store.uri, "--dry-run"], env=WIDE)
    assert res.exit_code == 2 and "curate stage vec_visual" in flat(res.output), res.output
    assert started == []
