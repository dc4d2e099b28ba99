"""``curate export`` on real COCO rows: selection with reasons, buckets, weights, manifest, CLI, step."""

from __future__ import annotations

import json
import shutil

import lance
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from typer.testing import CliRunner

from curation.buckets import PATCH
from curation.shards import MANIFEST_KEY
from curation.store import Store
from pipelines.export import ExportConfig, export
from tests.helpers import sample_row, samples_table
from training.loader import Loader, LoaderConfig, ShardDataset


@pytest.fixture(scope="module")
def curated_store(tmp_path_factory, coco_sample_rows):
    """COCO rows plus what the engines add: an ingest error, a profiling decode error, an exact duplicate, near-duplicate
    keep flags, review decisions and a reviewed caption, an NSFW score, weights, curriculum."""
    rows = [dict(r) for r in coco_sample_rows[:30]]
    dup = sample_row(rows[0]["image"], "copy", "dup.jpg", ["a copy"])
    broken = {**sample_row(rows[1]["image"], "bad", "bad.jpg", ["x"]), "image": None, "error": "truncated: cut at 100 bytes"}
    late_dup = sample_row(rows[2]["image"], "copy", "late.jpg", ["added after dedup ran"])
    rows += [dup, broken, late_dup]
    n = len(rows)

    t = samples_table(rows)
    ids = t.column("id").to_pylist()
    extra = {
        "prof_error": ["truncated: image file is truncated" if i == 12 else None for i in range(n)],
        "exact_dup_of": [ids[0] if i == 30 else ids[2] if i == 32 else None for i in range(n)],
        # the vector engine kept row 30 (say, better quality) over its exact copy row 0; row 32 came later
        "dup_keep": [None if i == 32 else False if i in (0, 3, 4) else True for i in range(n)],
        "dup_reason": ["exact" if i == 0 else "near" if i == 3 else None for i in range(n)],
        "rev_decision": ["drop" if i == 5 else "keep" if i == 6 else "disputed" if i == 7 else None for i in range(n)],
        "rev_caption": ["A reviewed caption." if i == 7 else None for i in range(n)],
        "prof_nsfw": [0.95 if i in (6, 8) else 0.01 for i in range(n)],  # row 6 was accepted by a reviewer
        "rs_weight": [0.0 if i == 9 else 2.5 if i == 10 else 1.0 for i in range(n)],
        "prof_curriculum": pa.array([i % 3 for i in range(n)], pa.int16()),
    }
    for k, v in extra.items():
        t = t.append_column(k, pa.array(v) if not isinstance(v, pa.Array) else v)
    uri = tmp_path_factory.mktemp("curated") / "src.lance"
    lance.write_dataset(t, str(uri), max_rows_per_file=8)
    return Store(str(uri)), ids


def test_export_selects_with_reasons_and_writes_a_training_set(ray_session, curated_store, tmp_path):
    store, ids = curated_store
    out = tmp_path / "train.lance"
    result = export(store, ExportConfig(out=str(out), resolution=256, rows_per_unit=10), show_progress=False)
    expected_excluded = {
        ids[31]: "error: truncated",
        ids[0]: "duplicate: exact",
        ids[32]: "exact_duplicate",
        ids[3]: "duplicate: near",
        ids[4]: "near_duplicate",
        ids[5]: "review_rejected",
        ids[8]: "rule:nsfw",
        ids[9]: "zero_weight",
        ids[12]: "decode_error: truncated",
    }
    excluded = pq.read_table(out / "_curation" / "export" / "excluded.parquet").to_pylist()
    assert {r["id"]: r["reason"] for r in excluded} == expected_excluded

    shards = lance.dataset(str(out))
    t = shards.to_table()
    assert t.num_rows == 33 - len(expected_excluded) == result.extra["kept"]
    assert set(t.column("id").to_pylist()) | set(expected_excluded) == set(ids)  # every row accounted for
    rows = {r["id"]: r for r in t.to_pylist()}
    assert ids[6] in rows and ids[30] in rows  # NSFW rule overridden by a reviewer's keep; the kept copy
    assert [c["text"] for c in rows[ids[7]]["captions"]] == ["A reviewed caption."]
    assert rows[ids[7]]["captions"][0]["kind"] == "reviewed"
    assert rows[ids[10]]["weight"] == 2.5 and rows[ids[11]]["weight"] == 1.0
    assert rows[ids[11]]["curriculum_stage"] == 11 % 3
    for r in rows.values():
        assert r["bucket_w"] % PATCH == 0 and r["bucket_h"] % PATCH == 0
        assert r["image_tokens"] == (r["bucket_w"] // PATCH) * (r["bucket_h"] // PATCH)
        assert r["resolution"] == 256 and 0.85 * 256**2 <= r["bucket_w"] * r["bucket_h"] <= 256**2
        assert len(r["caption_tokens"]) == len(r["captions"]) >= 1 and min(r["caption_tokens"]) > 0
        assert (r["bucket_w"] > r["bucket_h"]) == (r["width"] > r["height"]) or r["width"] == r["height"]

    manifest = json.loads(shards.schema.metadata[MANIFEST_KEY.encode()])
    assert manifest["source"] == {"uri": store.uri, "version": store.open().version, "rows": 33}
    assert manifest["excluded"]["error"] == 1 and manifest["excluded"]["rule:nsfw"] == 1
    assert manifest["columns_used"]["weight"] == "rs_weight" and manifest["columns_used"]["dedup_keep"] == "dup_keep"
    assert manifest["checks_skipped"] == []
    assert '<img src="data:image/png;base64,' in (out / "_curation" / "export" / "report.html").read_text()

    # the loader reads it: weights, curriculum filter, manifest
    ds = ShardDataset(str(out), LoaderConfig(token_budget=2048, filter="curriculum_stage = 0", weighted=False))
    assert ds.manifest["source"]["uri"] == store.uri
    got = [i for b in Loader(ds, num_workers=0) for i in b["ids"]]
    assert sorted(got) == sorted(r["id"] for r in rows.values() if r["curriculum_stage"] == 0)

    again = export(store, ExportConfig(out=str(out), resolution=256, rows_per_unit=10), show_progress=False)
    assert again.status == "skipped" and lance.dataset(str(out)).version == shards.version  # a re-run pipeline
    assert again.extra["by_resolution"] == result.extra["by_resolution"] != {}  # said as the first run said it
    with pytest.raises(ValueError, match="--overwrite"):
        export(store, ExportConfig(out=str(out)), show_progress=False)  # a different config
    # a pipeline re-run after upstream changes writes a new version instead (history keeps the old)
    redo = export(store, ExportConfig(out=str(out), resolution=512, rows_per_unit=10), show_progress=False, replace_stale=True)
    assert redo.status == "committed" and redo.version == shards.version + 1
    assert json.loads(lance.dataset(str(out)).schema.metadata[MANIFEST_KEY.encode()])["config"]["resolution"] == 512


def test_export_works_on_a_bare_dataset_and_from_the_cli(ray_session, coco_store, tmp_path):
    from cli.main import app

    out = tmp_path / "bare.lance"
    # the default NSFW rule needs profiling: an unprofiled dataset is refused, not exported unfiltered
    res = CliRunner().invoke(app, ["export", "--dataset", coco_store.uri, "--out", str(out), "--resolution", "1024"])
    assert res.exit_code != 0 and "needs column prof_nsfw" in res.output and "--optional-rules" in res.output
    assert not out.exists()
    res = CliRunner().invoke(app, ["export", "--dataset", coco_store.uri, "--out", str(out), "--resolution", "1024", "--optional-rules"])
    assert res.exit_code == 0, res.output
    t = lance.dataset(str(out)).to_table(columns=["resolution", "weight", "curriculum_stage", "image_tokens"])
    assert t.num_rows == 80
    # 640x480 COCO photos are not upscaled to 1024: they train at 512 (or 256 when smaller)
    assert set(t.column("resolution").to_pylist()) <= {256, 512} and 512 in t.column("resolution").to_pylist()
    assert set(t.column("weight").to_pylist()) == {1.0} and set(t.column("curriculum_stage").to_pylist()) == {None}
    manifest = json.loads((out / "_curation" / "export" / "manifest.json").read_text())
    skipped = " ".join(manifest["checks_skipped"])
    for check in ("exact_duplicate", "near_duplicate", "review", "rule:nsfw"):
        assert check in skipped

    res = CliRunner().invoke(app, ["export", "--dataset", coco_store.uri, "--out", str(out), "--resolution", "333"])
    assert res.exit_code == 2 and "resolution: Input should be 256, 512 or 1024" in " ".join(res.output.split()), res.output


def test_export_as_a_pipeline_step_with_rules(ray_session, coco_store, tmp_path):
    from pipelines.pipeline import run_pipeline

    src = tmp_path / "src.lance"
    shutil.copytree(coco_store.uri, src)
    out = tmp_path / "p.lance"
    pipeline = {
        "dataset": str(src),
        "steps": [
            {
                "stage": "export",
                "params": {
                    "out": str(out),
                    "resolution": 256,
                    "rules": [
                        {"name": "portrait", "where": "height > width"},
                        {"name": "needs_profile", "where": "prof_quality < 0.2", "optional": True},
                    ],
                },
            },
        ],
    }
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(pipeline))
    run_pipeline(path, show_progress=False)
    portrait = lance.dataset(str(src)).count_rows(filter="height > width")
    assert 0 < portrait < 80
    assert lance.dataset(str(out)).count_rows() == 80 - portrait

    manifest = json.loads((out / "_curation" / "export" / "manifest.json").read_text())
    assert manifest["excluded"] == {"rule:portrait": portrait}
    assert any("needs_profile" in n and "prof_quality" in n for n in manifest["checks_skipped"])

    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**pipeline, "steps": [{"stage": "export", "params": {"out": str(out), "rulez": []}}]}))
    from curation.config import ConfigError

    with pytest.raises(ConfigError, match="rulez"):
        run_pipeline(bad, show_progress=False)

    # `optional_rules: true` in a step is --optional-rules: the default nsfw rule on an unprofiled
    # dataset is skipped with a note (it was an unknown field, so a pipeline could not say it)
    lenient = tmp_path / "lenient.yaml"
    step = {"stage": "export", "params": {"out": str(tmp_path / "l.lance"), "resolution": 256, "optional_rules": True}}
    lenient.write_text(yaml.safe_dump({**pipeline, "steps": [step]}))
    run_pipeline(lenient, show_progress=False)
    manifest = json.loads((tmp_path / "l.lance" / "_curation" / "export" / "manifest.json").read_text())
    assert lance.dataset(str(tmp_path / "l.lance")).count_rows() == 80 and any("nsfw" in n for n in manifest["checks_skipped"])


def test_a_misspelt_rule_column_or_an_empty_export_fails_with_the_fix(ray_session, coco_store, tmp_path):
    from cli.main import app

    prof = tmp_path / "prof.lance"
    shutil.copytree(coco_store.uri, prof)
    ds = lance.dataset(str(prof))
    ds.add_columns({"prof_sharpness": "CAST(width AS DOUBLE) / 100.0"})
    cfg = tmp_path / "rules.yaml"
    cfg.write_text(yaml.safe_dump({"rules": [{"name": "blurry", "where": "prof_sharpnes < 1.2"}]}))
    out = tmp_path / "o.lance"
    res = CliRunner().invoke(app, ["export", "--dataset", str(prof), "--out", str(out), "-c", str(cfg)])
    assert res.exit_code == 2 and "needs column prof_sharpnes" in res.output and "did you mean prof_sharpness" in res.output
    assert not out.exists()

    cfg.write_text(yaml.safe_dump({"rules": [{"name": "everything", "where": "width > 0"}]}))
    res = CliRunner().invoke(app, ["export", "--dataset", str(prof), "--out", str(out), "-c", str(cfg)])
    assert res.exit_code == 2 and "would keep no row (excluded: rule:everything 80)" in res.output and "--allow-empty" in res.output
    assert not out.exists()
    res = CliRunner().invoke(app, ["export", "--dataset", str(prof), "--out", str(out), "-c", str(cfg), "--allow-empty"])
    assert res.exit_code == 0, res.output
    assert lance.dataset(str(out)).count_rows() == 0


def _odd_encodings(photo: bytes) -> dict[str, bytes]:
    """One COCO photo in the modes and formats real piles hold, each as the bytes a file would have."""
    import io

    import numpy as np
    from PIL import Image

    base = Image.open(io.BytesIO(photo)).convert("RGB").resize((320, 240))

    def enc(im, fmt, **kw) -> bytes:
        buf = io.BytesIO()
        im.save(buf, fmt, **kw)
        return buf.getvalue()

    rotated = base.copy()
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, shown portrait
    grey16 = Image.fromarray(np.asarray(base.convert("L"), np.uint16) * 257)  # mode I;16
    rgba = base.convert("RGBA")
    rgba.putalpha(128)
    adaptive = Image.Palette.ADAPTIVE
    frames = [base.convert("P", palette=adaptive), base.transpose(Image.Transpose.FLIP_LEFT_RIGHT).convert("P", palette=adaptive)]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:])
    return {
        "rgb_jpeg": enc(base, "JPEG", quality=90),
        "cmyk_jpeg": enc(base.convert("CMYK"), "JPEG", quality=90),
        "grey_jpeg": enc(base.convert("L"), "JPEG", quality=90),
        "palette_png": enc(base.convert("P", palette=adaptive), "PNG"),
        "png16": enc(grey16, "PNG"),
        "rgba_png": enc(rgba, "PNG"),
        "animated_gif": buf.getvalue(),
        "tiff": enc(base, "TIFF"),
        "bmp": enc(base, "BMP"),
        "exif_rotated": enc(rotated, "JPEG", quality=90, exif=exif.tobytes()),
    }


def test_export_writes_only_rgb_jpeg_png_webp_that_the_loader_decodes_as_the_source_looks(ray_session, coco_sample_rows, tmp_path):
    import io

    import numpy as np
    from PIL import Image

    from curation.shards import SHARD_IMAGE_FORMATS
    from training.loader import decode_and_crop

    photo = coco_sample_rows[0]["image"]
    odd = _odd_encodings(photo)
    rows = [sample_row(data, "odd", f"{name}.img", [f"a {name} photo"]) for name, data in odd.items()]
    broken = sample_row(odd["rgb_jpeg"], "odd", "cut.jpg", ["cut short"])
    broken["image"] = odd["png16"][:60]  # a header and nothing else
    uri = tmp_path / "odd.lance"
    lance.write_dataset(samples_table([*rows, broken]), str(uri))
    out = tmp_path / "shards.lance"
    result = export(Store(str(uri)), ExportConfig(out=str(out), resolution=256, min_side=32, rules=[]), show_progress=False)

    got = {r["id"]: r for r in lance.dataset(str(out)).to_table().to_pylist()}
    by_name = {name: got[row["id"]] for name, row in zip(odd, rows)}
    assert len(got) == len(odd) and result.extra["excluded"] == 1
    excluded = pq.read_table(out / "_curation" / "export" / "excluded.parquet").to_pylist()
    assert [r["reason"].split(":")[0] for r in excluded] == ["unreadable_image"]
    assert by_name["rgb_jpeg"]["image"] == odd["rgb_jpeg"]  # conforming bytes are copied, not re-encoded
    reference = np.asarray(Image.open(io.BytesIO(odd["rgb_jpeg"])).convert("RGB"), np.float32)
    for name, r in by_name.items():
        with Image.open(io.BytesIO(r["image"])) as im:
            assert im.format in SHARD_IMAGE_FORMATS and im.mode == "RGB", name
            assert im.getexif().get(0x0112, 1) == 1 and getattr(im, "n_frames", 1) == 1, name
            assert (im.width, im.height) == (r["width"], r["height"]), name
        pixels = decode_and_crop(r["image"], r["width"], r["height"]).astype(np.float32)
        if name == "exif_rotated":
            assert (r["width"], r["height"]) == (240, 320)  # the orientation is in the pixels now
            pixels = np.rot90(pixels, 1)  # back to the stored landscape frame
        if name in ("grey_jpeg", "png16"):
            pixels = np.repeat(pixels.mean(axis=2, keepdims=True), 3, axis=2)
            want = np.repeat(reference.mean(axis=2, keepdims=True), 3, axis=2)
        else:
            want = reference
        if name != "rgba_png":  # half-transparent on white is lighter by design
            assert np.abs(pixels - want).mean() < 12, (name, np.abs(pixels - want).mean())
    manifest = json.loads((out / "_curation" / "export" / "manifest.json").read_text())
    assert manifest["reencoded"] == {
        "CMYK JPEG": 1,
        "L JPEG": 1,
        "P PNG": 1,
        "I;16 PNG": 1,
        "RGBA PNG": 1,
        "GIF": 1,
        "TIFF": 1,
        "BMP": 1,
        "EXIF orientation 6": 1,
    }
    assert "CMYK JPEG" in (out / "_curation" / "export" / "report.html").read_text()
    assert Image.open(io.BytesIO(by_name["png16"]["image"])).format == "PNG"  # lossless stays lossless
    assert Image.open(io.BytesIO(by_name["cmyk_jpeg"]["image"])).format == "JPEG"


def test_a_missing_version_and_a_rule_of_constants_are_understood(ray_session, coco_store, tmp_path):
    """`--version 999` names the versions there are (not Lance's Rust error), and `where: 1 = 1` is
    valid SQL that matches every row (its check once read no column and failed)."""
    from cli.main import app
    from pipelines.export import ExportRule, check_rules

    out = tmp_path / "o.lance"
    res = CliRunner().invoke(app, ["export", "--dataset", coco_store.uri, "--out", str(out), "--version", "999"], env={"COLUMNS": "250"})
    assert res.exit_code == 2 and "has no version 999; its versions are" in " ".join(res.output.split()), res.output
    assert not out.exists()
    rule = ExportRule(name="all", where="1 = 1")
    assert check_rules(coco_store.open(), [rule]) == [rule]
    bad = ExportRule(name="sharp", where="width <<< 1.2")  # a typo: the parser's words, not Lance's source file
    with pytest.raises(ValueError, match=r"export rule 'sharp' \('width <<< 1.2'\) is not valid SQL here: .*sql parser error") as e:
        check_rules(coco_store.open(), [bad])
    assert ".rs:" not in str(e.value) and "/home/" not in str(e.value)


def test_a_pipeline_whose_export_rule_no_step_can_satisfy_is_refused_before_step_one(tmp_path, coco_dir):
    """ingest -> profile without the nsfw stage -> export with its default nsfw rule failed at the
    export step, after the profiling; now the file is refused before anything runs, naming the
    rule, the column and the fixes. The same pipeline with `optional_rules: true` passes the check."""
    from curation.config import ConfigError
    from pipelines.pipeline import run_pipeline

    src = tmp_path / "src"
    src.mkdir()
    for p in sorted((coco_dir / "images").glob("*.jpg"))[:2]:
        shutil.copy(p, src / p.name)
    steps = [
        {"stage": "ingest", "params": {"source": [str(src)]}},
        {"stage": "profile", "params": {"stages": ["meta", "hash", "scores"]}},
        {"stage": "export", "params": {"out": str(tmp_path / "out.lance")}},
    ]
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump({"dataset": str(tmp_path / "ds.lance"), "steps": steps}))
    with pytest.raises(ConfigError) as e:
        run_pipeline(path, show_progress=False)
    msg = " ".join(str(e.value).split())
    assert "step 3: export rule 'nsfw' ('prof_nsfw >= 0.8') needs column prof_nsfw (group prof_nsfw)" in msg, msg
    assert "optional_rules: true" in msg and not (tmp_path / "ds.lance").exists()  # nothing ran
    from curation.config import load_pipeline
    from curation.store import Store
    from pipelines.pipeline import check_rule_columns

    steps[1]["params"]["stages"].append("nsfw")  # a profile that writes it: the check passes
    path.write_text(yaml.safe_dump({"dataset": str(tmp_path / "ds.lance"), "steps": steps}))
    check_rule_columns(Store(tmp_path / "ds.lance"), load_pipeline(path)[1])
