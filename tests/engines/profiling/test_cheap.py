"""Model-free signals on crafted and real images with a known ordering, and the hostile set."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

from engines.profiling import cheap
from engines.profiling.decode import Decoded, DecodeFailure, DecodeOptions, decode_image
from tests.images import CJK_FONT, blurred, encode, hostile_set, photo


def profile(data: bytes) -> dict:
    r = [decode_image(data)]
    out = {**cheap.meta_columns(r), **cheap.hash_columns(r), **cheap.entropy_columns(r), **cheap.degradation_columns(r)}
    return {k: v[0] for k, v in out.items()}


@pytest.fixture(scope="module")
def coco_jpegs(coco_dir):
    return [p.read_bytes() for p in sorted((coco_dir / "images").glob("*.jpg"))[:6]]


def test_hostile_set_gives_a_profile_or_a_reason():
    expected_errors = {"decompression_bomb": "decompression_bomb", "truncated": "truncated", "garbage": "undecodable", "empty": "no_image"}
    for name, data in hostile_set().items():
        p = profile(data)
        if name in expected_errors:
            assert p["prof_error"].startswith(expected_errors[name] + ":"), (name, p["prof_error"])
            assert p["prof_phash"] is None and p["prof_sharpness"] is None
        else:
            assert p["prof_error"] is None, (name, p["prof_error"])
            assert p["prof_width"] >= 1 and p["prof_phash"] is not None and 0 <= p["prof_phash"] < 2**64
            assert all(v is None or np.isfinite(v) for k, v in p.items() if isinstance(v, float)), name


def test_bomb_is_refused_before_decoding():
    bomb = hostile_set()["decompression_bomb"]
    r = decode_image(bomb, DecodeOptions(max_pixels=1000))
    assert isinstance(r, DecodeFailure) and r.reason == "decompression_bomb"
    # the cap is ours, not only PIL's: a 60x60 image is refused under a 1000-pixel cap
    r = decode_image(encode(photo(0, (60, 60))), DecodeOptions(max_pixels=1000))
    assert isinstance(r, DecodeFailure) and "3600" in r.detail


def test_hostile_specifics():
    hs = hostile_set()
    rot = profile(hs["exif_rotated"])
    assert (rot["prof_orientation"], rot["prof_width"], rot["prof_height"]) == (6, 100, 200)
    d = decode_image(hs["exif_rotated"])
    assert d.rgb.size == (100, 200)  # pixels are upright before any signal
    deep = decode_image(hs["png16"])
    assert deep.meta["bit_depth"] == 16 and deep.gray.max() >= 250 and deep.gray.min() <= 5  # scaled, not clipped
    pal = profile(hs["palette_transparency"])
    assert pal["prof_has_alpha"] is True and pal["prof_mode"] == "P"
    assert decode_image(hs["palette_transparency"]).array[0, 0].tolist() == [255, 255, 255]  # transparent -> white
    assert profile(hs["animated_gif"])["prof_frames"] == 3
    assert profile(hs["cmyk_jpeg"])["prof_mode"] == "CMYK"
    wide = profile(hs["very_wide"])
    assert (wide["prof_width"], wide["prof_height"]) == (20000, 10) and wide["prof_aspect"] == 2000


def test_blurred_is_less_sharp_and_less_complex(coco_jpegs):
    for data in coco_jpegs[:3]:
        im = Image.open(io.BytesIO(data)).convert("RGB")
        sharp = profile(encode(im, "PNG"))
        soft = profile(encode(blurred(im, 3), "PNG"))
        assert soft["prof_sharpness"] < sharp["prof_sharpness"] - 0.3
        assert soft["prof_sharpness_coarse"] < sharp["prof_sharpness_coarse"]
        assert soft["prof_jpeg_bpp"] < sharp["prof_jpeg_bpp"]


def test_low_jpeg_quality_compresses_more(coco_jpegs):
    im = Image.open(io.BytesIO(coco_jpegs[0])).convert("RGB")
    q10, q95 = profile(encode(im, "JPEG", quality=10)), profile(encode(im, "JPEG", quality=95))
    assert q10["prof_compression"] > 3 * q95["prof_compression"]
    assert q10["prof_file_bytes"] < q95["prof_file_bytes"]


def test_framed_image_has_low_border_variance(coco_jpegs):
    im = Image.open(io.BytesIO(coco_jpegs[1])).convert("RGB")
    framed = Image.new("RGB", (im.width + 80, im.height + 80), (250, 250, 250))
    framed.paste(im, (40, 40))
    assert profile(encode(framed))["prof_border_var"] < 0.05 * profile(encode(im))["prof_border_var"]


def test_phash_survives_resize_but_separates_images(coco_jpegs):
    a = Image.open(io.BytesIO(coco_jpegs[0])).convert("RGB")
    small = a.resize((a.width // 2, a.height // 2), Image.Resampling.LANCZOS)
    pa_, ps = profile(encode(a, "JPEG", quality=90)), profile(encode(small, "JPEG", quality=70))
    assert cheap.hamming(pa_["prof_phash"], ps["prof_phash"]) <= 6
    assert cheap.hamming(pa_["prof_dhash"], ps["prof_dhash"]) <= 8
    other = profile(coco_jpegs[2])
    assert cheap.hamming(pa_["prof_phash"], other["prof_phash"]) > 16


def test_noise_cast_exposure_colourfulness_orderings(coco_jpegs):
    im = np.asarray(Image.open(io.BytesIO(coco_jpegs[3])).convert("RGB")).astype(np.float32)
    rng = np.random.default_rng(0)
    clean = profile(encode(Image.fromarray(im.astype(np.uint8))))
    noisy = profile(encode(Image.fromarray(np.clip(im + rng.normal(0, 20, im.shape), 0, 255).astype(np.uint8))))
    assert noisy["prof_noise"] > clean["prof_noise"] + 2
    tinted = profile(encode(Image.fromarray(np.clip(im * [1.0, 0.8, 0.45] + [40, 10, 0], 0, 255).astype(np.uint8))))
    assert tinted["prof_color_cast"] > clean["prof_color_cast"] + 0.5
    dark = profile(encode(Image.fromarray((im * 0.05).astype(np.uint8))))
    assert dark["prof_shadows_clipped"] > clean["prof_shadows_clipped"] and dark["prof_brightness"] < clean["prof_brightness"]
    gray = profile(encode(Image.fromarray(im.astype(np.uint8)).convert("L").convert("RGB")))
    assert gray["prof_colorfulness"] < 1.0 < clean["prof_colorfulness"]
    flat = profile(encode(Image.new("RGB", (200, 200), (90, 90, 90))))
    assert flat["prof_contrast"] == 0 and flat["prof_gray_entropy"] == 0 and flat["prof_watermark"] == 0


def test_corner_text_raises_watermark_likelihood():
    base = blurred(photo(5, (480, 360)), 4)
    marked = base.copy()
    ImageDraw.Draw(marked).text((300, 320), "© stockphoto 2025", font=ImageFont.truetype(CJK_FONT, 20), fill=(30, 30, 30))
    assert profile(encode(marked))["prof_watermark"] > profile(encode(base))["prof_watermark"] + 0.3


def test_working_copy_is_bounded():
    big = encode(photo(0, (3000, 2000)), "JPEG", quality=85)
    d = decode_image(big, DecodeOptions(max_side=512))
    assert isinstance(d, Decoded) and max(d.rgb.size) <= 512 and d.meta["width"] == 3000
