"""Aspect-ratio buckets, resolution levels, token counts."""

from __future__ import annotations

import math

import pytest

from curation.buckets import PATCH, RESOLUTIONS, assign_bucket, choose_resolution, crop_sizes, estimate_caption_tokens, image_tokens


@pytest.mark.parametrize("res", RESOLUTIONS)
def test_crop_sizes_are_patch_multiples_of_about_the_target_area(res):
    sizes = crop_sizes(res)
    assert len(sizes) == len(set(sizes)) > 10
    for w, h in sizes:
        assert w % PATCH == 0 and h % PATCH == 0
        assert 0.85 * res * res <= w * h <= res * res
        assert max(w / h, h / w) <= 4.0
    assert (res, res) in sizes  # the square is always a bucket


# Largest relative aspect error allowed after bucketing: the buckets' log-aspect spacing is
# ~0.12 at 256, ~0.06 at 512, ~0.03 at 1024; the nearest bucket is within half a gap.
TOLERANCE = {256: 0.06, 512: 0.031, 1024: 0.016}


@pytest.mark.parametrize("res", RESOLUTIONS)
def test_buckets_keep_aspect_ratio_within_tolerance(res, coco_sample_rows):
    sizes = crop_sizes(res)
    shapes = {(r["width"], r["height"]) for r in coco_sample_rows}  # real photo shapes
    shapes |= {(round(1000 * a), 1000) for a in [0.26, 0.3, 0.5, 0.5625, 0.75, 1.0, 1.33, 1.5, 1.78, 2.0, 2.4, 3.0, 3.9]}
    for w, h in shapes:
        bw, bh = assign_bucket(w, h, sizes)
        err = abs(math.log((bw / bh) / (w / h)))
        assert err <= TOLERANCE[res], (res, w, h, bw, bh, err)
        # and no other bucket would have kept the aspect better
        assert err <= min(abs(math.log((cw / ch) / (w / h))) for cw, ch in sizes) + 1e-12


def test_extreme_aspect_goes_to_the_most_elongated_bucket():
    assert assign_bucket(20000, 10, crop_sizes(512)) == (1024, 256)
    assert assign_bucket(10, 20000, crop_sizes(512)) == (256, 1024)


def test_resolution_level_avoids_upscaling():
    assert choose_resolution(640, 480, 1024) == 512  # a COCO photo does not train at 1024
    assert choose_resolution(640, 480, 256) == 256
    assert choose_resolution(4000, 3000, 1024) == 1024
    assert choose_resolution(500, 333, 512) == 256  # would need 1.26x upscaling
    assert choose_resolution(100, 100, 512) == 256  # nothing fits: smallest level


def test_image_tokens_and_caption_estimate():
    assert image_tokens(1024, 1024) == 4096
    assert image_tokens(592, 432) == 37 * 27
    assert estimate_caption_tokens("") == 0
    assert estimate_caption_tokens("A dog runs on the beach.") == 7  # 6 words + full stop
    assert estimate_caption_tokens("一只猫坐在窗台上") == 8  # one per CJK character
    assert estimate_caption_tokens("2024") == 4  # digits split
    assert estimate_caption_tokens("antidisestablishmentarianism") == 4
