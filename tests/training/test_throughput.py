"""Honest throughput: peak FLOPs by GPU name, the log window without checkpoints and samples,
tokens and MFU summed over ranks (2 gloo ranks), the fused EMA update, the caption-dropout draw."""

from __future__ import annotations

import json
import math
import time

import pytest
import torch

from tests.training.gloo import spawn
from training.loop import EMA, BatchList, TrainConfig, _caption_drop, _over_ranks, peak_tflops, train, window_throughput
from training.model import S3DiT, flops_per_sample, tiny


@pytest.mark.parametrize(
    "name, peak",
    [
        ("NVIDIA H100 80GB HBM3", 989.0),  # SXM5
        ("NVIDIA H100 PCIe", 756.0),
        ("NVIDIA H100 NVL", 835.0),
        ("NVIDIA H800", 989.0),
        ("NVIDIA H800 PCIe", 756.0),
        ("NVIDIA H200", 989.0),
        ("NVIDIA H200 NVL", 835.0),
        ("NVIDIA GH200 480GB", 989.0),
        ("NVIDIA A100-SXM4-80GB", 312.0),
        ("NVIDIA A100-PCIE-40GB", 312.0),
        ("NVIDIA A100 80GB PCIe", 312.0),
        ("NVIDIA L40S", 362.0),
        ("NVIDIA GeForce RTX 4090", 165.0),
        ("NVIDIA A10", 125.0),
        ("NVIDIA A10G", None),  # not the A10
        ("NVIDIA L40", None),
        ("NVIDIA H100 80GB HBM3 MIG 3g.40gb", None),  # a slice: its peak is not known
        ("NVIDIA B200", None),
        ("Tesla V100-SXM2-16GB", None),
    ],
)
def test_peak_by_device_name(name, peak):
    assert peak_tflops(name) == peak


def test_window_excludes_checkpoint_and_sample_time():
    """10.5 s since the window opened, 10 s of them in a checkpoint: 0.5 s of training."""
    m = window_throughput(samples=8, tokens=800, flops=5e11, data_wait_s=0.1, elapsed_s=10.5, excluded_s=10.0, world=2, peak_tflops_sum=2.0)
    assert m["samples_per_s"] == 16.0 and m["tokens_per_s"] == 1600.0 and m["train_s"] == 0.5 and m["ckpt_sample_s"] == 10.0
    assert m["mfu"] == 0.5  # 5e11 FLOP / 0.5 s / (2 ranks x 1 TFLOPS)
    assert m["data_wait_fraction"] == 0.1  # 0.1 s over 2 ranks x 0.5 s
    for unknown in (None, math.nan, 0.0):
        assert "mfu" not in window_throughput(
            samples=8, tokens=800, flops=5e11, data_wait_s=0, elapsed_s=1, excluded_s=0, world=2, peak_tflops_sum=unknown
        )


def _latent_batches(sizes: list[tuple[int, int]], n_batches: int = 3) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    return [
        {"latents": [torch.randn(16, h, w, generator=g) for h, w in sizes], "cap_feats": [torch.randn(5, 32, generator=g) for _ in sizes]}
        for _ in range(n_batches)
    ]


def test_slow_checkpoint_is_not_training_time(tmp_path):
    """A checkpoint that takes 0.5 s (its log line is slow) lands in ``ckpt_sample_s`` of the next
    window, not in the training time that tokens/s and MFU divide by."""

    def log(line: str) -> None:
        if line.startswith("checkpoint "):
            time.sleep(0.5)

    cfg = TrainConfig(
        model="tiny", steps=3, log_every=1, ckpt_every=1, sample_count=0, ema_decay=0, caption_dropout=0, out_dir=str(tmp_path)
    )
    train(cfg, BatchList(_latent_batches([(8, 8), (4, 6)])), log=log)
    m = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert m[0]["ckpt_sample_s"] == 0  # the first window saw no checkpoint
    for rec in m[1:]:  # each follows a 0.5 s checkpoint
        assert rec["ckpt_sample_s"] >= 0.5 > rec["train_s"]
        assert rec["samples_per_s"] * rec["train_s"] == pytest.approx(2, rel=0.02)  # 2 samples per step


RANK_SIZES = {0: [(8, 8)], 1: [(8, 8), (4, 6), (6, 6)]}  # 1 sample on rank 0, 3 on rank 1


def _rank_main(rank: int, out_dir: str) -> None:
    """One of 2 gloo ranks (``tests.training.gloo.spawn``)."""
    got = _over_ranks([rank + 1.0, 10.0 * (rank + 1), math.nan if rank else 5.0], "sum", torch.device("cpu"))
    assert got[:2] == [3.0, 30.0] and math.isnan(got[2]), got
    assert _over_ranks([float(rank), 2.0 - rank], "max", torch.device("cpu")) == [1.0, 2.0]
    cfg = TrainConfig(
        model="tiny",
        steps=2,
        log_every=2,
        ckpt_final=False,
        sample_count=0,
        ema_decay=0,
        caption_dropout=0,
        peak_tflops=1.0,
        out_dir=out_dir,
    )
    train(cfg, BatchList(_latent_batches(RANK_SIZES[rank])), log=lambda _m: None)


def test_throughput_and_mfu_are_summed_over_two_gloo_ranks(tmp_path):
    """Rank 0 trains on 1 sample per step, rank 1 on 3: the log line counts 4 per step (it used to
    count rank 0's share times the world size: 2), and the FLOPs of both ranks."""
    spawn(_rank_main, str(tmp_path))
    (rec,) = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    steps, mcfg = 2, tiny()
    samples = steps * sum(len(v) for v in RANK_SIZES.values())
    img = steps * sum(h * w // 4 for v in RANK_SIZES.values() for h, w in v)
    flops = steps * sum(flops_per_sample(mcfg, h * w // 4, 5) for v in RANK_SIZES.values() for h, w in v)
    dt = rec["train_s"]
    assert rec["samples_per_s"] * dt == pytest.approx(samples, rel=0.02)
    assert rec["tokens_per_s"] * dt == pytest.approx(img + samples * 5, rel=0.02)
    assert rec["mfu"] * dt * 2e12 == pytest.approx(flops, rel=0.02)  # 2 ranks x peak_tflops 1.0


def test_fused_ema_update_equals_the_per_parameter_update():
    torch.manual_seed(0)
    model = S3DiT(tiny())
    ema = EMA(model, 0.999)
    old = [e.clone() for e in ema.shadow]
    g = torch.Generator().manual_seed(1)
    for step in range(3):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn(p.shape, generator=g))
        ema.update(step)
        d = min(0.999, (1 + step) / (10 + step))
        for e, p in zip(old, model.parameters()):  # the update before it was fused
            e.lerp_(p.detach().float(), 1 - d)
        assert all(torch.equal(a, b) for a, b in zip(ema.shadow, old))
    assert not torch.equal(ema.shadow[0], model.all_x_embedder["2-1"].weight)  # an average, not a copy


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU"))])
def test_caption_drop_draws_the_same_numbers(device):
    """The draw (on a side stream on CUDA) is ``rand < p`` from the run's generator, as before,
    and leaves the generator where the old draw left it."""
    a, b = torch.Generator(device).manual_seed(7), torch.Generator(device).manual_seed(7)
    for n in (1, 5, 64):
        got = _caption_drop(a, n, 0.3)
        assert got == (torch.rand(n, generator=b, device=device) < 0.3).tolist()
    assert torch.equal(torch.rand(4, generator=a, device=device), torch.rand(4, generator=b, device=device))
