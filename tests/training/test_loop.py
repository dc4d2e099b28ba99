"""The training loop on CPU: overfits real photos, resumes exactly, writes loadable checkpoints."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from training.loop import BatchList, TrainConfig, latest_checkpoint, train
from training.model import load_safetensors, tiny


def _metrics(out) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _chw(im) -> torch.Tensor:
    return torch.from_numpy(np.array(im)).permute(2, 0, 1).contiguous()  # uint8 3xHxW, as training.loader yields


def test_tiny_model_overfits_a_handful_of_real_photos(tmp_path, coco_small, tiny_encoders):
    images, captions = coco_small
    batch = {"images": [_chw(im) for im in images[:4]], "captions": captions[:4]}
    cfg = TrainConfig(
        model="tiny",
        steps=120,
        lr=2e-3,
        warmup_steps=10,
        caption_dropout=0.0,
        ema_decay=0.99,
        log_every=10,
        ckpt_every=1000,
        sample_count=2,
        sample_steps=3,
        out_dir=str(tmp_path / "run"),
    )
    res = train(cfg, BatchList([batch]), encoders=tiny_encoders, log=lambda _m: None)
    m = _metrics(tmp_path / "run")
    assert [x["step"] for x in m] == list(range(10, 121, 10))
    first, last = m[0]["loss"], m[-1]["loss"]
    assert last < 0.4 * first, [x["loss"] for x in m]  # the loss falls clearly
    assert any(k.startswith("loss_t") for k in m[-1]) and m[-1]["tokens_per_s"] > 0
    # the final checkpoint is in the released layout and holds the trained weights
    ckpt = latest_checkpoint(tmp_path / "run")
    assert res["step"] == 120 and ckpt.name == "step_00000120"
    model = load_safetensors(ckpt / "model.safetensors", tiny())
    assert model.all_final_layer["2-1"].linear.weight.abs().sum() > 0  # moved away from the zero init
    assert (ckpt / "ema.safetensors").exists()
    grid = tmp_path / "run" / "samples" / "step_00000120.png"
    assert grid.exists() and json.loads(grid.with_suffix(".json").read_text())["captions"] == captions[:2]


def test_resume_continues_the_same_loss_curve(tmp_path, coco_small, tiny_encoders):
    """6 steps straight == 3 steps, stop, a fresh process state resumes for 3 more: same losses,
    same weights. Batches mix resolutions and caption lengths, captions are dropped at random
    (RNG state must be restored) and an EMA is kept."""
    images, captions = coco_small
    lat = tiny_encoders.vae.encode(images)
    lat[1] = lat[1][:, :4, :6]  # another resolution in the batch
    feats = tiny_encoders.text.encode(captions)
    batches = [{"latents": lat[i : i + 2], "cap_feats": feats[i : i + 2]} for i in (0, 2, 4)]
    base = dict(
        model="tiny", lr=1e-3, warmup_steps=2, caption_dropout=0.3, ema_decay=0.9, log_every=1, ckpt_every=3, sample_count=1, sample_steps=2
    )

    straight = TrainConfig(**base, steps=6, out_dir=str(tmp_path / "a"))
    train(straight, BatchList(batches), log=lambda _m: None)
    first = TrainConfig(**base, steps=3, out_dir=str(tmp_path / "b"))
    train(first, BatchList(batches), log=lambda _m: None)
    logs = []
    train(first.model_copy(update={"steps": 6}), BatchList(batches), log=logs.append)
    assert any("resumed" in line and "step 3" in line for line in logs)

    a, b = _metrics(tmp_path / "a"), _metrics(tmp_path / "b")
    assert [x["step"] for x in b] == [1, 2, 3, 4, 5, 6]
    assert [x["loss"] for x in a] == [x["loss"] for x in b]
    assert len({x["loss"] for x in a}) == 6  # not a constant curve
    for name in ("model.safetensors", "ema.safetensors"):
        wa = load_file(str(tmp_path / "a" / "checkpoints" / "step_00000006" / name))
        wb = load_file(str(tmp_path / "b" / "checkpoints" / "step_00000006" / name))
        assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_bad_batches_are_rejected_with_the_fix(tmp_path):
    cfg = TrainConfig(model="tiny", steps=1, out_dir=str(tmp_path), sample_count=0)
    with pytest.raises(ValueError, match="no VAE is configured"):
        train(cfg, BatchList([{"images": [torch.zeros(3, 16, 16, dtype=torch.uint8)], "captions": ["x"]}]))
    with pytest.raises(ValueError, match="cap_feat_dim=32"):
        train(cfg, BatchList([{"latents": [torch.zeros(16, 4, 4)], "cap_feats": [torch.zeros(3, 64)]}]))
    with pytest.raises(ValueError, match="'latents' or 'images'"):
        train(cfg, BatchList([{"captions": ["x"]}]))
