"""The profile job on Ray + Lance: every row accounted for, resume after a crash, CLI, report."""

from __future__ import annotations

import lance
import numpy as np
import pyarrow as pa
import pytest

from curation.schema import sample_id, sha256_hex
from curation.store import Store
from tests.helpers import coco_rows, samples_table
from tests.images import encode, hostile_set, text_image


def _rows(coco_dir):
    rows = coco_rows(coco_dir, limit=8)
    extra = dict(hostile_set())
    extra["sign_en"] = encode(text_image("OPEN 24 HOURS"), "JPEG", quality=92)
    for k, v in extra.items():
        rows.append(
            {
                "id": sample_id("crafted", k),
                "image": v,
                "image_uri": None,
                "image_sha256": sha256_hex(v),
                "source": "crafted",
                "source_key": k,
                "width": None,
                "height": None,
                "format": None,
                "error": None,
                "captions": [{"text": f"a sign reading open 24 hours ({k})", "kind": "short", "lang": "en"}],
            }
        )
    return rows


@pytest.fixture
def mixed_store(tmp_path, coco_dir):
    uri = tmp_path / "mixed.lance"
    lance.write_dataset(samples_table(_rows(coco_dir)), str(uri), max_rows_per_file=7)
    return Store(str(uri))


def test_profile_all_rows_accounted_then_report(ray_session, mixed_store, tmp_path):
    import torch

    from engines.profiling.aesthetics import build_head, save_head
    from pipelines.profile import ProfileConfig, run_profile
    from pipelines.report import build_report

    torch.manual_seed(0)
    head = save_head(build_head(32), tmp_path / "head.safetensors")
    cfg = ProfileConfig(
        stages=["meta", "hash", "entropy", "degradation", "nsfw", "clip", "aesthetic", "scores"],
        clip={"model": {"backend": "hf_clip", "random_init": True}, "dtype": "float16"},
        aesthetic={"weights": str(head)},
    )
    results = run_profile(mixed_store, cfg, show_progress=False)
    assert [r.stage for r in results] == ["prof_cheap", "prof_nsfw", "prof_clip", "prof_aesthetic", "prof_scores"]
    assert all(r.status == "committed" for r in results)
    t = mixed_store.to_arrow()
    n = t.num_rows
    err = t.column("prof_error").to_pylist()
    # every row: a profile, or an error reason
    for i in range(n):
        assert (err[i] is None) == (t.column("prof_phash")[i].as_py() is not None)
        assert (err[i] is None) == (t.column("prof_clip_image")[i].as_py() is not None)
    reasons = sorted(e.split(":")[0] for e in err if e)
    assert reasons == ["decompression_bomb", "no_image", "truncated", "undecodable"]
    assert t.schema.field("prof_clip_image").type == pa.list_(pa.float16(), 32)
    assert t.schema.field("prof_phash").type == pa.uint64()
    ok = [i for i in range(n) if err[i] is None]
    assert all(0 <= t.column("prof_quality")[i].as_py() <= 1 for i in ok)
    assert all(0 <= t.column("prof_nsfw")[i].as_py() <= 1 for i in ok)
    bins = [t.column("prof_curriculum")[i].as_py() for i in ok]
    assert min(bins) == 0 and max(bins) == 4
    assert all(t.column("prof_aesthetic")[i].as_py() is not None for i in ok)

    out = build_report(mixed_store, tmp_path / "report.html", examples=3)
    page = out.read_text()
    assert "RANDOM WEIGHTS" in page and "decompression_bomb" in page and "truncated" in page
    assert page.count("data:image/png;base64") >= 20  # a histogram per signal
    assert "prof_sharpness" in page and "data:image/jpeg;base64" in page


def test_resume_after_a_crash_gives_the_same_values(ray_session, mixed_store, tmp_path):
    from curation.runner import run_stage
    from pipelines.profile import CheapStage

    marker = tmp_path / "crashed"

    class Crashing(CheapStage):
        name = "prof_cheap"

        def process_batch(self, batch):
            keys = batch.column("id").to_pylist() if "id" in batch.schema.names else []
            if sample_id("crafted", "one_pixel") in keys and not marker.exists():
                marker.touch()
                raise RuntimeError("simulated crash")
            return super().process_batch(batch)

    Crashing.input_columns = ["image", "image_uri", "id"]
    cfg = {"families": ["meta", "hash", "degradation"]}
    with pytest.raises(Exception, match="simulated crash"):
        run_stage(mixed_store, Crashing(cfg), concurrency=1, show_progress=False)
    assert marker.exists() and "prof_phash" not in mixed_store.open().schema.names
    resumed = run_stage(mixed_store, Crashing(cfg), concurrency=1, show_progress=False)
    assert resumed.status == "committed" and resumed.fragments_resumed >= 1
    # the same values as an uninterrupted computation (in-process, no Ray)
    direct = CheapStage(cfg)
    src = mixed_store.to_arrow(columns=["id", "image", "image_uri"])
    expect = pa.Table.from_batches([direct.run_batch(b) for b in src.to_batches(max_chunksize=5)])
    got = mixed_store.to_arrow(columns=["id", *expect.column_names])
    assert got.column("id").equals(src.column("id"))
    for c in expect.column_names:
        assert got.column(c).to_pylist() == expect.column(c).to_pylist(), c


def test_ocr_and_caption_stages_on_a_fragment(mixed_store):
    """The OCR stage is slow on CPU (~0.5 s/image): its logic is tested in-process on real rows."""
    from pipelines.profile import CaptionStage, OcrStage

    t = mixed_store.to_arrow(columns=["id", "source_key", "image", "image_uri", "captions"])
    keep = [i for i, k in enumerate(t.column("source_key").to_pylist()) if k in ("sign_en", "very_wide", "truncated", "one_pixel")]
    batch = t.take(keep).to_batches()[0]
    ocr = OcrStage({"max_side": 960})
    ocr.setup()
    out = ocr.run_batch(batch)
    keys = batch.column("source_key").to_pylist()
    texts = dict(zip(keys, out.column("prof_ocr_text").to_pylist()))
    assert "OPEN" in texts["sign_en"] and "HOURS" in texts["sign_en"]
    assert texts["truncated"] is None and texts["very_wide"] == "" and texts["one_pixel"] == ""
    assert ocr.stats.counters["error_truncated"] == 1
    cap = CaptionStage()
    cap.input_columns = ["captions", "prof_ocr_text"]
    joined = pa.RecordBatch.from_arrays([batch.column("captions"), out.column("prof_ocr_text")], ["captions", "prof_ocr_text"])
    c = cap.run_batch(joined)
    overlap = dict(zip(keys, c.column("prof_cap_ocr_overlap").to_pylist()))
    assert overlap["sign_en"] == 1.0 and overlap["truncated"] is None


def test_cli_profile_only_and_report(ray_session, mixed_store, tmp_path):
    from typer.testing import CliRunner

    from cli.main import app

    runner = CliRunner()
    r = runner.invoke(app, ["profile", "--dataset", mixed_store.uri, "--only", "meta,hash,text_emb"])
    assert r.exit_code == 0, r.output
    names = mixed_store.open().schema.names
    assert {"prof_phash", "prof_dhash", "prof_error", "prof_caption_emb"} <= set(names)
    assert "prof_sharpness" not in names and "prof_clip_image" not in names
    emb = mixed_store.to_arrow(columns=["prof_caption_emb"]).column(0)
    v = np.stack(emb.to_numpy(zero_copy_only=False)).astype(np.float32)
    assert v.shape[1] == 384 and np.allclose(np.linalg.norm(v, axis=1), 1, atol=2e-3)
    bad = runner.invoke(app, ["profile", "--dataset", mixed_store.uri, "--only", "meta,nope"])
    assert bad.exit_code != 0 and "nope" in (bad.output + str(bad.exception))
    r = runner.invoke(app, ["report", "--dataset", mixed_store.uri, "--out", str(tmp_path / "r.html")])
    assert r.exit_code == 0, r.output
    page = (tmp_path / "r.html").read_text()
    assert "No aesthetic score" in page and "No image embeddings" in page and "RANDOM WEIGHTS" not in page
