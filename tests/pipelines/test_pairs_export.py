"""``curate pairs export``: pair shards from real pair tables (``curate pairs render`` and ``curate
pairs synth`` on a few coco-mini photos, through the CLI, on Ray).

- Both images are in the shard, decode, and are the pair table's bytes exactly.
- Token counts: the target's bucket and tokens equal a hand computation from the image size
  (``HAND``), the source's too, and each instruction's tokens are the export's caption arithmetic.
- A re-run is skipped, another option needs --overwrite, and bad input (no pair table, a misspelt
  option, an unknown language, an export that keeps nothing) is a one-line error before Ray.
"""

from __future__ import annotations

import io
from pathlib import Path

import lance
import pyarrow as pa
import pytest
from PIL import Image
from typer.testing import CliRunner

from curation.buckets import estimate_caption_tokens
from curation.store import Store
from pipelines.pairs import PAIRS_SCHEMA, PairExportConfig, export_pairs
from tests.helpers import samples_table

PHOTOS = 8
RENDERED, SYNTHESISED = 6, 4
_GRIDS = {(640, 480): (36, 27), (500, 500): (32, 32), **{(640, h): (39, 26) for h in (422, 424, 426, 427)}}
HAND = {k: (16 * w, 16 * h, w * h) for k, (w, h) in _GRIDS.items()} | {k[::-1]: (16 * h, 16 * w, w * h) for k, (w, h) in _GRIDS.items()}
"""(width, height) -> (bucket w, bucket h, tokens) at 512 for the first photos of coco-mini, by hand:
512² px is 32 x 32 = 1024 patches of 16 px, and a bucket is a patch grid of at most 1024 patches
near the budget. 4:3 has an exact grid, 36 x 27 = 972 patches (576 x 432); 1:1 is 32 x 32; 640 x
422..427 (1.50-1.52) is nearest to 39 x 26 = 1014 patches (1.5; 38 x 26 is 1.46, 40 x 25 is 1.6).
Portrait photos take the transposed grid. Tokens are (w / 16) x (h / 16)."""


def _cli(*args: str):
    from cli.main import app

    return CliRunner().invoke(app, list(args))


def make_pair_tables(root: Path, rows: list[dict], coco_dir: Path, *, synth: bool = True) -> Store:
    """``PHOTOS`` coco-mini photos (2 fragments) with ``RENDERED`` text pairs and, with ``synth``,
    ``SYNTHESISED`` object pairs in the dataset's default pair tables, made by the CLI commands."""
    uri = root / "photos.lance"
    lance.write_dataset(samples_table(rows[:PHOTOS]), str(uri), max_rows_per_file=PHOTOS // 2)
    res = _cli("pairs", "render", "--dataset", str(uri), "--n", str(RENDERED))
    assert res.exit_code == 0, res.output
    if synth:
        ann = str(coco_dir / "instances_train2017.json")
        res = _cli("pairs", "synth", "--dataset", str(uri), "--annotations", ann, "--n", str(SYNTHESISED), "--kinds", "recolour,remove")
        assert res.exit_code == 0, res.output
    return Store(str(uri))


@pytest.fixture(scope="module")
def made(tmp_path_factory, coco_sample_rows, coco_dir, ray_session):
    root = tmp_path_factory.mktemp("pairs-export")
    store = make_pair_tables(root, coco_sample_rows, coco_dir)
    out = root / "pair-shards.lance"
    res = _cli("pairs", "export", "--dataset", store.uri, "--out", str(out))
    assert res.exit_code == 0, res.output
    return store, out, res.output


@pytest.fixture(scope="module")
def shard_rows(made):
    return lance.dataset(str(made[1])).to_table().to_pylist()


@pytest.fixture(scope="module")
def table_rows(made):
    store = made[0]
    rows = {}
    for name in ("pairs.lance", "synth.lance"):
        rows |= {r["pair_id"]: r for r in lance.dataset(str(store.state_dir / "pairs" / name)).to_table().to_pylist()}
    return rows


def test_every_pair_of_both_tables_is_in_the_shards_once(made, shard_rows, table_rows):
    assert len(table_rows) >= RENDERED + 1  # synth made at least one object pair
    assert sorted(r["id"] for r in shard_rows) == sorted(table_rows)
    assert lance.dataset(str(made[1])).version == 1
    assert f"{len(table_rows)} pairs kept, 0 excluded" in " ".join(made[2].split())
    kinds = {r["kind"] for r in shard_rows}
    assert {"replace", "remove", "add"} <= kinds and kinds & {"recolour"}


def test_both_images_decode_and_are_the_pair_tables_bytes(shard_rows, table_rows):
    for r in shard_rows:
        p = table_rows[r["id"]]
        assert r["src_image"] == p["src_image"] and r["image"] == p["tgt_image"]
        assert r["source_id"] == p["source_id"] and r["kind"] == p["kind"]
        for data, w, h in ((r["src_image"], r["src_width"], r["src_height"]), (r["image"], r["width"], r["height"])):
            with Image.open(io.BytesIO(data)) as im:
                im.load()
                assert im.size == (w, h) == (p["width"], p["height"]) and im.mode == "RGB"


def test_token_counts_match_a_hand_computation(shard_rows, table_rows):
    checked = 0
    for r in shard_rows:
        for side in ("", "src_"):
            assert r[f"{side}image_tokens"] == (r[f"{side}bucket_w"] // 16) * (r[f"{side}bucket_h"] // 16)
            size = (r[f"{side}width"], r[f"{side}height"])
            if size in HAND:
                assert (r[f"{side}bucket_w"], r[f"{side}bucket_h"], r[f"{side}image_tokens"]) == HAND[size], size
                checked += 1
        assert r["resolution"] == 512 and r["weight"] == 1.0
        p = table_rows[r["id"]]
        assert [c["text"] for c in r["captions"]] == [p["instruction_en"], p["instruction_zh"]]
        assert [(c["kind"], c["lang"]) for c in r["captions"]] == [("instruction_en", "en"), ("instruction_zh", "zh")]
        assert r["caption_tokens"] == [estimate_caption_tokens(c["text"]) for c in r["captions"]]
    assert checked == 2 * len(shard_rows)  # every image of every pair


def test_a_rerun_is_skipped_another_option_needs_overwrite_and_a_killed_export_resumes(made, monkeypatch):
    import curation.runner as runner
    import pipelines.pairs.export as job

    store, out, _ = made
    again = export_pairs(store, PairExportConfig(out=str(out)), show_progress=False)
    assert again.status == "skipped" and lance.dataset(str(out)).version == 1
    with pytest.raises(ValueError, match="--overwrite"):
        export_pairs(store, PairExportConfig(out=str(out), langs=["en"]), show_progress=False)
    cfg = PairExportConfig(out=str(out), langs=["en"], overwrite=True, rows_per_unit=4)
    ran, real = [], runner.execute_units  # what execute_resumable runs: the units not checkpointed
    monkeypatch.setattr(runner, "execute_units", lambda units, *a, **kw: (ran.append(len(units)), real(units, *a, **kw)))
    with monkeypatch.context() as m:  # killed after the units, before the commit
        m.setattr(job, "_commit_pair_shards", lambda *a: (_ for _ in ()).throw(KeyboardInterrupt()))
        with pytest.raises(KeyboardInterrupt):
            export_pairs(store, cfg, show_progress=False)
    assert lance.dataset(str(out)).version == 1 and ran[0] >= 3  # nothing committed
    redo = export_pairs(store, cfg, show_progress=False)
    assert ran[1] == 0  # every unit came from its checkpoint
    assert redo.status == "committed" and lance.dataset(str(out)).version == 2
    assert sorted(lance.dataset(str(out)).to_table(columns=["id"]).column("id").to_pylist()) == sorted(
        lance.dataset(str(out), version=1).to_table(columns=["id"]).column("id").to_pylist()
    )
    caps = lance.dataset(str(out)).to_table(columns=["captions"]).column("captions").to_pylist()
    assert all([c["lang"] for c in row] == ["en"] for row in caps)
    assert not any((out / "_curation" / "checkpoints").glob("pairs-export-*/unit-*.json"))  # cleared after the commit


def _one_line_error(res, *needles: str) -> None:
    text = " ".join(res.output.split())
    assert res.exit_code == 2 and res.output.count("error:") == 1 and "Traceback" not in res.output, res.output
    for n in needles:
        assert n in text, text


def test_bad_input_is_a_one_line_error(made, coco_sample_rows, tmp_path):
    store, _, _ = made
    bare = tmp_path / "bare.lance"
    lance.write_dataset(samples_table(coco_sample_rows[:2]), str(bare))
    out = tmp_path / "o.lance"
    _one_line_error(_cli("pairs", "export", "--dataset", str(bare), "--out", str(out)), "no pair table", "curate pairs render")
    _one_line_error(_cli("pairs", "export", "--dataset", str(bare), "--out", str(out), "--table", str(bare)), "not a pair table")
    _one_line_error(_cli("pairs", "export", "--dataset", store.uri, "--out", str(out), "--langs", "en,fr"), "langs", "'en' or 'zh'")
    res = _cli("pairs", "export", "--dataset", store.uri, "--out", str(out), "--resolutoin", "256")
    assert res.exit_code == 2 and "No such option" in res.output and "--resolution" in res.output
    assert not out.exists()

    empty = tmp_path / "empty-pairs.lance"
    lance.write_dataset(pa.Table.from_pylist([], schema=PAIRS_SCHEMA), str(empty))
    args = ["pairs", "export", "--dataset", store.uri, "--out", str(out), "--table", str(empty)]
    _one_line_error(_cli(*args), "would keep no pair", "--allow-empty")
    res = _cli(*args, "--allow-empty")
    assert res.exit_code == 0, res.output
    assert lance.dataset(str(out)).count_rows() == 0


def test_curate_export_pairs_writes_the_same_pair_shards(made, tmp_path):
    """``curate export --pairs`` is ``curate pairs export`` under the export command; the options
    of single-image exports are refused with it, by name."""
    store, out, _ = made
    alias = tmp_path / "alias.lance"
    res = _cli("export", "--dataset", store.uri, "--out", str(alias), "--pairs")
    assert res.exit_code == 0, res.output
    ids = lambda uri: sorted(lance.dataset(str(uri)).to_table(columns=["id"]).column("id").to_pylist())  # noqa: E731
    assert ids(alias) == ids(out) and len(ids(out)) > 0
    _one_line_error(_cli("export", "--dataset", store.uri, "--out", str(tmp_path / "x.lance"), "--pairs", "--vae-path", "v"), "--vae-path")
