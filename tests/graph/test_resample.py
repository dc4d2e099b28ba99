"""Resampling moves the concept marginal toward the prior and hits the requested size."""

from __future__ import annotations

import json

import numpy as np
import pytest

from graph.resample import ResampleConfig, ResampleError, read_prior, resample


@pytest.fixture(scope="module")
def coco_tags(coco_tagger, coco_captions):
    _, rows, _ = coco_captions
    out = coco_tagger.tag_rows(rows)
    return out["tag_concepts"].to_pylist(), out["tag_scores"].to_pylist(), out["tag_direct"].to_pylist()


@pytest.mark.parametrize("target", [None, 50, 200])
def test_balance_flattens_the_marginal_and_hits_target(coco_tags, target):
    T, S, D = coco_tags
    r = resample(T, S, D, ResampleConfig(target_size=target, max_upsample=4))
    n = target or len(T)
    assert r.copies.sum() == n and abs(r.expected.sum() - n) < 1e-6
    assert r.copies.max() <= 4 and r.expected.max() <= 4 + 1e-9  # bounded up-sampling
    assert r.after["entropy"] > r.before["entropy"]
    assert r.after["max_over_median"] < r.before["max_over_median"]
    assert np.all(np.abs(r.copies - r.expected) < 1)  # systematic sampling: floor or ceil


def test_rare_rows_up_common_rows_down(coco_tags):
    T, S, D = coco_tags
    r = resample(T, S, D, ResampleConfig())
    f = np.asarray(r.before["frequencies"])
    rarity = np.asarray(r.incidence @ (1 / f)).ravel() / np.maximum(r.incidence.sum(axis=1).A.ravel(), 1)
    assert np.corrcoef(rarity, r.expected)[0, 1] > 0.3


def test_cap_method_solves_t_for_target_size(coco_tags):
    T, S, D = coco_tags
    r = resample(T, S, D, ResampleConfig(method="cap", target_size=40))
    assert r.copies.sum() == 40 and r.copies.max() <= 1 and r.cap_t is not None
    assert r.after["max_over_median"] <= r.before["max_over_median"]
    fixed = resample(T, S, D, ResampleConfig(method="cap", cap_t=r.cap_t))
    assert abs(fixed.expected.sum() - 40) < 0.5  # MetaCLIP's fixed-t run gives the same size
    with pytest.raises(ResampleError, match="--method balance"):
        resample(T, S, D, ResampleConfig(method="cap", target_size=1000))


def test_prior_file_raises_a_concept(coco_tags, tmp_path, wordnet_graph):
    T, S, D = coco_tags
    (giraffe,) = wordnet_graph.resolve("giraffe")
    p = tmp_path / "prior.json"
    p.write_text(json.dumps({"giraffe": 20.0}))
    prior = read_prior(p)
    uni = resample(T, S, D, ResampleConfig())
    up = resample(T, S, D, ResampleConfig(), prior=prior, aliases={"giraffe": [giraffe]})
    i = uni.concepts.index(giraffe)
    assert up.after["frequencies"][i] > uni.after["frequencies"][i]
    bad = tmp_path / "bad.csv"
    bad.write_text("concept,weight\ngiraffe,lots\n")
    with pytest.raises(ResampleError, match="not a number"):
        read_prior(bad)


def test_impossible_requests_are_clear_errors(coco_tags):
    T, S, D = coco_tags
    with pytest.raises(ResampleError, match="raise --max-upsample or lower --target-size"):
        resample(T, S, D, ResampleConfig(target_size=10_000, max_upsample=2))
    with pytest.raises(ResampleError, match="no rows"):
        resample([], [], [], ResampleConfig())
    r = resample([[], None, ["a"], ["b"]], [[], None, [1.0], [2.0]], None, ResampleConfig(untagged_weight=0.5))
    assert r.copies.sum() == 4 and r.expected[0] < r.expected[2]


@pytest.mark.parametrize(
    "cfg", [ResampleConfig(target_size=60, max_upsample=3), ResampleConfig(method="cap", target_size=40), ResampleConfig(inherited=False)]
)
def test_a_solve_over_blocks_gives_the_weights_of_one_in_memory(coco_tags, cfg):
    """The job solves over one block of tags per Lance fragment, kept on workers; the driver only
    adds up concept-length vectors. Split anyhow (an empty block too: a fragment whose rows are
    all left out), the rows get the weights, copies and report of the in-memory solve."""
    from graph.resample import LocalBlocks, TagBlock, solve

    T, S, D = coco_tags
    whole = resample(T, S, D, cfg)
    cuts = [0, 7, 7, 30, 61, len(T)]
    blocks = [TagBlock(T[a:b], S[a:b], D[a:b]) for a, b in zip(cuts, cuts[1:])]
    split = solve(LocalBlocks(blocks), cfg)
    np.testing.assert_allclose(split.expected, whole.expected, rtol=1e-9)
    assert np.array_equal(split.copies, whole.copies) and split.concepts == whole.concepts
    assert split.before == whole.before
    assert split.after["head"] == whole.after["head"] and split.after["entropy"] == whole.after["entropy"]
    assert split.cap_t == pytest.approx(whole.cap_t) if whole.cap_t else split.cap_t is None


def test_cap_t_without_the_cap_method_is_refused():
    """`curate resample --cap-t 5` under the default balance method was ignored without a word."""
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=r"cap_t \(--cap-t\) is the cap method's t"):
        ResampleConfig(cap_t=5)
    assert ResampleConfig(method="cap", cap_t=5).cap_t == 5
