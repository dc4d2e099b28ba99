"""`curate demo-data`: the corpus is written in the three layouts, the manifest tells the truth
about the files (checked against the bytes, not against itself), and a re-run is byte-identical."""

from __future__ import annotations

import hashlib
import io
import json
import re
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter, ImageOps
from typer.testing import CliRunner

from cli.main import app
from curation.text import detect_lang
from democorpus.corpus import DemoDataError, build_corpus

CJK = re.compile(r"[\u4e00-\u9fff]")


def words(text: str) -> str:
    """Letters, digits and CJK only: OCR drops spaces and full-width punctuation."""
    return re.sub(r"[\W_]+", "", text)


def flat(output: str) -> str:
    """CLI output without rich's line wrapping."""
    return " ".join(output.split())


def run_cli(*args: str):
    return CliRunner().invoke(app, ["demo-data", *args])


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demo") / "corpus"
    r = run_cli(str(out), "--seed", "0")
    assert r.exit_code == 0, r.output
    assert "near-duplicate groups" in flat(r.output) and "webdataset" in r.output
    return out


@pytest.fixture(scope="module")
def manifest(corpus) -> dict:
    return json.loads((corpus / "manifest.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def items(manifest) -> dict[str, dict]:
    return {i["id"]: i for i in manifest["items"]}


@pytest.fixture(scope="module")
def image_bytes(corpus, manifest) -> dict[str, bytes]:
    """Every item's bytes, read from where the manifest says it is (folder file, jsonl image, tar member)."""
    with tarfile.open(corpus / "webdataset" / "shard-00000.tar") as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
    out = {}
    for i in manifest["items"]:
        out[i["id"]] = members[f"{i['key']}.jpg"] if i["layout"] == "webdataset" else (corpus / i["path"]).read_bytes()
    return out


def open_image(data: bytes) -> Image.Image:
    im = Image.open(io.BytesIO(data))
    im.load()
    return im


def tree_hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def test_writes_the_three_layouts(corpus, manifest):
    folder = corpus / "folder"
    assert {p.suffix for p in folder.iterdir()} >= {".jpg", ".png", ".json", ".txt"}
    with tarfile.open(corpus / "webdataset" / "shard-00000.tar") as tar:
        names = tar.getnames()
    keys = {n.rsplit(".", 1)[0] for n in names}
    assert names and all(f"{k}.{e}" in names for k in keys for e in ("jpg", "txt", "json"))
    rows = (corpus / "jsonl" / "captions.jsonl").read_text(encoding="utf-8").splitlines()
    assert rows and (corpus / "jsonl" / "images").is_dir()
    n = len(manifest["items"])
    assert 100 <= n <= 150
    by_layout = {k: sum(i["layout"] == k for i in manifest["items"]) for k in ("folder", "webdataset", "jsonl")}
    assert by_layout == {
        "folder": len([p for p in folder.iterdir() if p.suffix in (".jpg", ".png")]),
        "webdataset": len(keys),
        "jsonl": len(rows),
    }
    total = sum(p.stat().st_size for p in corpus.rglob("*") if p.is_file())
    assert total < 20e6  # "a few MB"


def test_manifest_matches_files(corpus, manifest, image_bytes):
    listed = {i["path"] for i in manifest["items"] if i["layout"] != "webdataset"}
    on_disk = {str(p.relative_to(corpus)) for p in corpus.rglob("*") if p.suffix in (".jpg", ".png")}
    assert listed == on_disk  # no orphan files, no missing ones
    with tarfile.open(corpus / "webdataset" / "shard-00000.tar") as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
    rows = {json.loads(line)["image"]: json.loads(line) for line in (corpus / "jsonl" / "captions.jsonl").read_text("utf-8").splitlines()}
    for i in manifest["items"]:
        data = image_bytes[i["id"]]
        im = open_image(data)
        assert hashlib.sha256(data).hexdigest() == i["sha256"] and len(data) == i["bytes"], i["id"]
        assert (im.width, im.height, im.format) == (i["width"], i["height"], i["format"]), i["id"]
        if i["layout"] == "folder":
            stem = corpus / i["path"].rsplit(".", 1)[0]
            if i["sidecar"] == "json":
                assert json.loads(stem.with_suffix(".json").read_text("utf-8"))["captions"] == i["captions"]
            elif i["sidecar"] == "txt":
                assert stem.with_suffix(".txt").read_text("utf-8").strip() == i["captions"][0]["text"]
            else:
                assert not stem.with_suffix(".json").exists() and not stem.with_suffix(".txt").exists() and i["captions"] == []
        elif i["layout"] == "webdataset":
            meta = json.loads(members[f"{i['key']}.json"])
            assert members[f"{i['key']}.txt"].decode("utf-8") == meta["caption"] == i["captions"][0]["text"]
            assert (meta["key"], meta["width"], meta["height"]) == (i["key"], im.width, im.height)
        else:
            row = rows[i["path"].removeprefix("jsonl/")]
            assert [row["caption"], row["caption_zh"]] == [c["text"] for c in i["captions"]]
    sidecars = {p.suffix for p in (corpus / "folder").iterdir()}
    assert sidecars == {".jpg", ".png", ".json", ".txt"}
    assert {i["sidecar"] for i in manifest["items"] if i["layout"] == "folder"} == {"json", "txt", None}


def test_captions_are_utf8_and_bilingual(corpus, manifest):
    for p in list((corpus / "folder").glob("*.txt")) + list((corpus / "folder").glob("*.json")) + [corpus / "jsonl" / "captions.jsonl"]:
        p.read_bytes().decode("utf-8")  # strict: raises on anything else
    caps = [c for i in manifest["items"] for c in i["captions"]]
    assert {c["lang"] for c in caps} == {"en", "zh"}
    assert {c["kind"] for c in caps} == {"short", "long", "tags", "alt"}
    for c in caps:
        if c["kind"] in ("short", "long"):
            assert detect_lang(c["text"]) in (c["lang"], "mixed"), c
        if c["lang"] == "zh":
            assert CJK.search(c["text"]), c
        else:  # English captions hold Chinese only when they quote rendered text
            assert not CJK.search(c["text"]) or '"' in c["text"], c
    for c in ("en", "zh"):  # nearly all captions are plainly one language
        own = [x for x in caps if x["lang"] == c and x["kind"] in ("short", "long")]
        assert sum(detect_lang(x["text"]) == c for x in own) >= 0.85 * len(own)
    for i in manifest["items"]:
        if i["layout"] == "jsonl" or i["sidecar"] == "json":  # these carry both languages
            assert {c["lang"] for c in i["captions"]} == {"en", "zh"}, i["id"]
    webdataset_langs = {c["lang"] for i in manifest["items"] if i["layout"] == "webdataset" for c in i["captions"]}
    assert webdataset_langs == {"en", "zh"}


def _thumb(im: Image.Image) -> np.ndarray:
    a = np.asarray(im.convert("L").resize((32, 32), Image.BILINEAR), dtype=np.float64).ravel()
    return (a - a.mean()) / (a.std() + 1e-6)


def test_near_duplicate_groups_match_the_pixels(manifest, items, image_bytes):
    groups = manifest["near_dup_groups"]
    assert len(groups) >= 8 and all(len(v) >= 2 for v in groups.values())
    ops = {t["op"] for i in manifest["items"] if i["role"] == "near_duplicate" for t in i["transforms"]}
    assert ops >= {"crop", "resize", "jpeg", "watermark", "colour", "hflip", "frame"}
    originals = {i["origin"]: i["id"] for i in manifest["items"] if i["role"] == "original"}
    thumbs = {o: _thumb(open_image(image_bytes[i])) for o, i in originals.items()}
    checked = 0
    for gid, ids in groups.items():
        assert all(items[i]["near_dup_group"] == gid for i in ids)
        assert len({items[i]["origin"] for i in ids}) == 1, gid
        origin = items[ids[0]]["origin"]
        if origin not in originals or originals[origin] not in ids:
            continue
        base = open_image(image_bytes[originals[origin]])
        for i in ids:
            item = items[i]
            src = items[item["exact_dup_of"]] if item["exact_dup_of"] else item
            if src["role"] == "original":
                continue
            # undo the recorded geometry on the original; drop a recorded frame from the copy
            ref, im = base, open_image(image_bytes[i])
            for t in src["transforms"]:
                if t["op"] == "crop":
                    ref = ref.crop(tuple(t["box"]))
                elif t["op"] == "hflip":
                    ref = ImageOps.mirror(ref)
                elif t["op"] == "frame":
                    b = t["border"]
                    im = im.crop((b, b, im.width - b, im.height - b))
            own = float(_thumb(ref) @ _thumb(im)) / 1024
            others = [float(thumbs[o] @ _thumb(im)) / 1024 for o in thumbs if o != origin]
            assert own > 0.6 and own > max(others), (i, src["transforms"], own, max(others))
            checked += 1
    assert checked >= 40
    # region crops share an origin but are not near-duplicates
    assert all(i["near_dup_group"] is None for i in manifest["items"] if i["role"] == "region_crop")


def test_exact_duplicates_are_exactly_the_byte_copies(manifest, items):
    by_sha: dict[str, list[str]] = {}
    for i in manifest["items"]:
        by_sha.setdefault(i["sha256"], []).append(i["id"])
    copies = {frozenset(v) for v in by_sha.values() if len(v) > 1}
    declared = {frozenset((i["id"], i["exact_dup_of"])) for i in manifest["items"] if i["exact_dup_of"]}
    assert len(declared) >= 4 and copies == declared
    for i in manifest["items"]:
        if i["exact_dup_of"]:
            src = items[i["exact_dup_of"]]
            assert src["near_dup_group"] == i["near_dup_group"] is not None
            assert (i["path"], i["key"]) != (src["path"], src["key"])


def test_rendered_text_and_caption_mentions(manifest, corpus):
    texted = [i for i in manifest["items"] if i["text"]]
    assert len(texted) >= 12
    assert {lang for i in texted for lang in i["text"]["langs"]} == {"en", "zh"}
    assert any(i["text"]["langs"] == ["en", "zh"] for i in texted)
    mentions = [i["text"]["caption_mentions_text"] for i in texted]
    assert any(mentions) and not all(mentions)
    for i in texted:  # the flag is exactly "a caption quotes one of the rendered lines"
        quoted = any(line in c["text"] for line in i["text"]["lines"] for c in i["captions"])
        assert quoted == i["text"]["caption_mentions_text"], i["id"]
        assert i["text"]["content"] == "\n".join(i["text"]["lines"])
    assert {i["text"]["kind"] for i in texted} == {"rendered", "watermark"}


def test_rendered_text_is_legible_to_ocr(manifest, image_bytes):
    rapidocr = pytest.importorskip("rapidocr")
    engine = rapidocr.RapidOCR()
    cards = [
        i
        for i in manifest["items"]
        if i["role"] == "text" and i["origin"] == "rendered" and i["text"]["langs"] == ["en", "zh"] and len(i["text"]["lines"]) == 2
    ]
    assert len(cards) >= 2
    for i in cards[:2]:
        arr = np.asarray(open_image(image_bytes[i["id"]]).convert("RGB"))[:, :, ::-1]  # BGR like cv2
        read = words("".join(engine(arr).txts or ()))
        for line in i["text"]["lines"]:
            assert words(line) in read, (i["id"], line, read)


def test_sizes_aspects_and_degradations(manifest, items, image_bytes):
    sides = [(i["width"], i["height"]) for i in manifest["items"]]
    aspects = [w / h for w, h in sides]
    assert min(aspects) <= 0.5 and max(aspects) >= 3.0
    assert min(min(s) for s in sides) <= 32 and max(max(s) for s in sides) >= 1000
    kinds = {d for i in manifest["items"] for d in i["degradations"]}
    assert kinds >= {"blurred", "noisy", "dark", "low_res", "jpeg_artifacts"}
    originals = {i["origin"]: i["id"] for i in manifest["items"] if i["role"] == "original"}

    def sharpness(im):
        return float(np.asarray(im.convert("L").filter(ImageFilter.FIND_EDGES), dtype=np.float64).var())

    for i in manifest["items"]:
        if i["role"] != "degraded":
            continue
        ref, im = open_image(image_bytes[originals[i["origin"]]]), open_image(image_bytes[i["id"]])
        if "blurred" in i["degradations"]:
            assert sharpness(im) < 0.5 * sharpness(ref), i["id"]
        if "dark" in i["degradations"]:
            assert np.asarray(im.convert("L")).mean() < 0.5 * np.asarray(ref.convert("L")).mean(), i["id"]


def test_same_seed_same_bytes_other_seed_differs(corpus, tmp_path):
    again = tmp_path / "again"
    assert run_cli(str(again), "--seed", "0").exit_code == 0
    assert tree_hashes(again) == tree_hashes(corpus)
    seed0 = sorted(i["sha256"] for i in json.loads((corpus / "manifest.json").read_text("utf-8"))["items"])
    assert sorted(i.sha256 for i in build_corpus(seed=1).items) != seed0


def test_formats_subset_puts_everything_in_one_layout(tmp_path, manifest):
    out = tmp_path / "only-folder"
    r = run_cli(str(out), "--formats", "folder")
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in out.iterdir()) == ["folder", "manifest.json"]
    m = json.loads((out / "manifest.json").read_text("utf-8"))
    assert {i["layout"] for i in m["items"]} == {"folder"} and len(m["items"]) == len(manifest["items"])


def test_rerun_replaces_own_corpus_and_refuses_a_foreign_folder(corpus, tmp_path):
    mine = tmp_path / "mine"
    shutil.copytree(corpus, mine)
    r = run_cli(str(mine), "--formats", "jsonl")
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in mine.iterdir()) == ["jsonl", "manifest.json"]
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    r = run_cli(str(foreign))
    assert r.exit_code == 2 and "holds no demo corpus" in flat(r.output)
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]


def test_bad_formats_and_missing_font_are_clear_errors(tmp_path):
    r = run_cli(str(tmp_path / "x"), "--formats", "folder,zip")
    assert r.exit_code == 2 and "folder, webdataset, jsonl" in flat(r.output)
    with pytest.raises(DemoDataError, match="fonts-wqy-microhei"):
        build_corpus(font_path=tmp_path / "no-such-font.ttc")
