"""Model wrappers on real inputs: OCR (rendered English and Chinese), NSFW, BRISQUE, embeddings
(tiny random models of the real classes + the shipped MiniLM), the aesthetic head from a file."""

from __future__ import annotations

import difflib
import io

import numpy as np
import pytest
from PIL import Image

from engines.profiling.decode import decode_image
from tests.images import blurred, encode, text_image


def char_accuracy(truth: str, got: str) -> float:
    a, b = truth.replace(" ", ""), got.replace(" ", "").replace("\n", "")
    return difflib.SequenceMatcher(None, a, b).ratio()


@pytest.fixture(scope="module")
def ocr():
    from engines.profiling.ocr import OcrEngine

    return OcrEngine()


@pytest.mark.parametrize("text", ["QUALITY DATA ENGINE 2025", "数据画像引擎与向量检索"])
def test_ocr_reads_rendered_english_and_chinese(ocr, text):
    from engines.profiling.ocr import ocr_columns

    cols = ocr_columns([decode_image(encode(text_image(text)))], ocr)
    got = cols["prof_ocr_text"][0]
    assert char_accuracy(text, got) >= 0.9, got
    assert cols["prof_ocr_lang"][0] == ("en" if text[0].isascii() else "zh")
    assert 0.05 < cols["prof_ocr_area"][0] < 0.8
    box = np.array(cols["prof_ocr_boxes"][0][0]).reshape(4, 2)
    assert box.min() >= -0.01 and box.max() <= 1.01 and cols["prof_ocr_conf"][0][0] > 0.8


def test_ocr_on_a_photo_without_text_is_empty_not_null(ocr, coco_dir):
    from engines.profiling.ocr import ocr_columns

    flat = encode(Image.new("RGB", (300, 200), (120, 160, 200)))
    cols = ocr_columns([decode_image(flat)], ocr)
    assert cols["prof_ocr_text"] == [""] and cols["prof_ocr_area"] == [0.0] and cols["prof_ocr_lang"] == ["und"]


def test_nsfw_model_loads_and_scores_in_unit_interval(coco_dir):
    from engines.profiling.nsfw import NsfwDetector, nsfw_columns

    imgs = [p.read_bytes() for p in sorted((coco_dir / "images").glob("*.jpg"))[:4]]
    results = [decode_image(b) for b in imgs] + [decode_image(b"broken")]
    cols = nsfw_columns(results, NsfwDetector())
    scores = cols["prof_nsfw"]
    assert scores[-1] is None and cols["prof_nsfw_labels"][-1] is None
    assert all(0.0 <= s <= 1.0 for s in scores[:-1])
    # batched inference equals one-by-one inference
    det = NsfwDetector()
    one = [nsfw_columns([r], det)["prof_nsfw"][0] for r in results[:4]]
    assert np.allclose(one, scores[:4], atol=1e-5)


def test_brisque_prefers_the_clean_photo(coco_dir):
    from brisque import BRISQUE

    data = sorted((coco_dir / "images").glob("*.jpg"))[0].read_bytes()
    im = Image.open(io.BytesIO(data)).convert("RGB").resize((320, 214))
    noisy = np.clip(np.asarray(im) + np.random.default_rng(0).normal(0, 25, (214, 320, 3)), 0, 255).astype(np.uint8)
    m = BRISQUE(url=False)
    assert m.score(np.asarray(im)) < m.score(noisy)
    assert m.score(np.asarray(im)) < m.score(np.asarray(blurred(im, 4)))


@pytest.mark.parametrize("backend", ["hf_clip", "hf_chinese_clip"])
def test_tiny_clip_backends_are_deterministic_and_normalised(backend, coco_dir):
    from engines.profiling.embed import EmbedModelConfig, embed_dim, load_embedder

    cfg = EmbedModelConfig(backend=backend, random_init=True)
    a, b = load_embedder(cfg), load_embedder(cfg)
    assert a.random_weights and a.dim == embed_dim(cfg)
    ims = [Image.open(p).convert("RGB") for p in sorted((coco_dir / "images").glob("*.jpg"))[:3]]
    ea, eb = a.embed_images(ims), b.embed_images(ims)
    assert ea.shape == (3, a.dim) and np.allclose(ea, eb, atol=1e-6)  # same seed: resume gives the same vectors
    assert np.allclose(np.linalg.norm(ea, axis=1), 1, atol=1e-4)
    assert not np.allclose(ea[0], ea[1], atol=1e-3)
    t = a.embed_texts(["a man riding a horse", "一只猫坐在沙发上"])
    assert t.shape == (2, a.dim) and np.allclose(np.linalg.norm(t, axis=1), 1, atol=1e-4)


def _open_clip_or_skip():
    from engines.profiling.embed import import_open_clip

    try:
        return import_open_clip()
    except ImportError as e:  # CI installs them: see docs/profiling.md (open_clip backend)
        pytest.skip(f"open_clip backend needs open-clip-torch, torchvision (--no-deps), timm and ftfy: {e}")


def test_open_clip_tiny_random_model_round_trips_through_a_local_folder(tmp_path, coco_dir):
    """A tiny RANDOMLY INITIALISED open_clip model (no real weights ship offline) is saved as
    open_clip's model folder and loaded back from that path: same vectors, still flagged random."""
    import json

    from engines.profiling.embed import TINY_OPEN_CLIP, EmbedModelConfig, embed_dim, load_embedder, save_open_clip

    _open_clip_or_skip()
    mem = load_embedder(EmbedModelConfig(backend="open_clip", random_init=True))
    assert mem.random_weights and mem.dim == 32
    folder = save_open_clip(mem, tmp_path / "oc-tiny")
    cfg = EmbedModelConfig(backend="open_clip", path=str(folder))
    disk = load_embedder(cfg)
    assert disk.random_weights and "RANDOM" in disk.name and embed_dim(cfg) == disk.dim == 32

    ims = [Image.open(p).convert("RGB") for p in sorted((coco_dir / "images").glob("*.jpg"))[:3]]
    a, b = mem.embed_images(ims), disk.embed_images(ims)
    assert a.shape == (3, 32) and np.allclose(a, b, atol=1e-5)
    assert np.allclose(np.linalg.norm(b, axis=1), 1, atol=1e-4) and not np.allclose(b[0], b[1], atol=1e-3)
    t = disk.embed_texts(["a man riding a horse", "a red square"])
    assert t.shape == (2, 32) and np.allclose(t, mem.embed_texts(["a man riding a horse", "a red square"]), atol=1e-5)

    # the other layout: a checkpoint file plus arch as a JSON model config
    (tmp_path / "tiny-arch.json").write_text(json.dumps(TINY_OPEN_CLIP))
    cfg2 = EmbedModelConfig(backend="open_clip", path=str(folder / "open_clip_model.safetensors"), arch=str(tmp_path / "tiny-arch.json"))
    assert embed_dim(cfg2) == 32 and np.allclose(load_embedder(cfg2).embed_images(ims), a, atol=1e-5)

    with pytest.raises(ValueError, match="open_clip_config.json"):
        load_embedder(EmbedModelConfig(backend="open_clip", path=str(tmp_path)))
    with pytest.raises(ValueError, match="checkpoint not found"):
        load_embedder(EmbedModelConfig(backend="open_clip", path=str(tmp_path / "nope.pt"), arch="ViT-B-32"))


def test_minilm_caption_embeddings_rank_paraphrases_first():
    from engines.profiling.embed import EmbedModelConfig, load_embedder

    e = load_embedder(EmbedModelConfig(backend="minilm"))
    v = e.embed_texts(
        ["A dog runs across the grassy park.", "A puppy running on the grass in a park.", "Stock prices fell sharply on Monday."]
    )
    assert e.dim == 384 and not e.random_weights
    assert v[0] @ v[1] > v[0] @ v[2] + 0.3


def test_aesthetic_head_round_trips_through_a_file(tmp_path):
    import torch

    from engines.profiling.aesthetics import build_head, load_head, save_head, score_embeddings

    torch.manual_seed(0)
    head = build_head(32).eval()
    emb = np.random.default_rng(0).normal(size=(5, 32)).astype(np.float32)
    with torch.no_grad():
        expect = head(torch.from_numpy(emb)).squeeze(1).numpy()
    for suffix in (".pth", ".safetensors"):
        path = save_head(head, tmp_path / f"head{suffix}")
        loaded, dim = load_head(path)
        assert dim == 32 and np.allclose(score_embeddings(loaded, emb), expect, atol=1e-5)
    torch.save({"something": torch.zeros(3)}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="LAION-style"):
        load_head(tmp_path / "bad.pth")


def test_caption_tokens_and_ocr_overlap():
    from engines.profiling.captions import caption_columns, tokenize

    assert tokenize("A red bus parked outside.") == ["A", "red", "bus", "parked", "outside"]
    assert len(tokenize("一只猫坐在沙发上")) >= 4
    caps = [
        [{"text": "A sign reading OPEN 24 HOURS", "kind": "short", "lang": "en"}],
        [{"text": "a shop front", "kind": "short", "lang": "en"}],
        [{"text": "招牌上写着欢迎光临", "kind": "short", "lang": "zh"}],
        [],
    ]
    out = caption_columns(caps, ["OPEN 24 HOURS", "OPEN 24 HOURS", "欢迎光临", None])
    assert out["prof_cap_ocr_overlap"][:2] == [1.0, 0.0] and out["prof_cap_ocr_overlap"][2] == 1.0
    assert out["prof_cap_ocr_overlap"][3] is None and out["prof_cap_tokens"][3] == 0
    assert out["prof_cap_lang"][:3] == ["en", "en", "zh"]


def test_scores_weights_and_curriculum_bins():
    from engines.profiling import scores

    cols = {
        "prof_sharpness": [3.0, 1.0, None],
        "prof_noise": [1.0, 9.0, None],
        "prof_jpeg_bpp": [0.4, 0.05, None],
        "prof_gray_entropy": [7.5, 3.0, None],
    }
    q, c = scores.quality_score(cols, 3), scores.complexity_score(cols, 3)
    assert q[0] > q[1] and q[2] is None and 0 <= q[1] <= 1
    assert c[0] > c[1] and c[2] is None
    edges = scores.curriculum_edges([0.1, 0.2, 0.3, 0.4, None], 2)
    assert scores.curriculum_bins([0.1, 0.4, None], edges) == [0, 1, None]


def test_nsfw_vectorised_pipeline_matches_nudenet_on_real_photos(coco_dir):
    """Our batched letterbox + NumPy post-processing (fast) against nudenet's own detect() on the
    same real photos: every confident detection (>= 0.3) agrees within 0.03."""
    import cv2
    from nudenet import NudeDetector

    from engines.profiling.decode import DecodeOptions
    from engines.profiling.nsfw import NsfwDetector

    files = sorted((coco_dir / "images").glob("*.jpg"))[:24]
    full = [decode_image(p.read_bytes(), DecodeOptions(max_side=None)) for p in files]
    small = [decode_image(p.read_bytes(), DecodeOptions(max_side=639)) for p in files]  # the stage's default
    ours = NsfwDetector(threads=1).detect_batch([d.array for d in small])
    ref = NudeDetector()
    compared = 0
    for d, got in zip(full, ours):
        want = ref.detect(cv2.cvtColor(d.array, cv2.COLOR_RGB2BGR))
        a, b = {}, {}
        for x in want:
            a[x["class"]] = max(a.get(x["class"], 0.0), x["score"])
        for x in got:
            b[x["class"]] = max(b.get(x["class"], 0.0), x["score"])
        for k in set(a) | set(b):
            if max(a.get(k, 0.0), b.get(k, 0.0)) >= 0.3:
                compared += 1
                assert abs(a.get(k, 0.0) - b.get(k, 0.0)) < 0.03, (k, a.get(k), b.get(k))
    assert compared >= 3  # people in COCO: faces, feet, covered parts


def test_paddleocr_backend_fails_with_an_actionable_error(tmp_path):
    import importlib.util

    from curation.config import ConfigError
    from engines.profiling.ocr import OcrEngine
    from pipelines.profile import OcrStage

    with pytest.raises(ValueError, match=r"model_dirs.det is not set.*rapidocr"):
        OcrEngine("paddleocr", {})
    with pytest.raises(ConfigError, match=r"prof_ocr: paddleocr backend: model_dirs.det: .*nope is not a directory"):
        OcrStage({"backend": "paddleocr", "model_dirs": {"det": str(tmp_path / "nope"), "rec": str(tmp_path)}})
    with pytest.raises(ValueError, match=r"model_dirs.rec: .* has no PaddleOCR inference model"):
        OcrEngine("paddleocr", {"det": str(tmp_path), "rec": str(tmp_path)})
    for k in ("det", "rec"):
        (tmp_path / k).mkdir()
        (tmp_path / k / "inference.pdiparams").write_bytes(b"\0")
        (tmp_path / k / "inference.json").write_text("{}")
    if importlib.util.find_spec("paddleocr") is None:
        with pytest.raises(ConfigError, match=r"paddleocr package is not installed \(pip install paddleocr paddlepaddle"):
            OcrStage({"backend": "paddleocr", "model_dirs": {"det": str(tmp_path / "det"), "rec": str(tmp_path / "rec")}})
