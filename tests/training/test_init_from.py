"""Fine-tuning from released (bf16) weights: fp32 master weights and Adam moments whatever the
file's dtype, in bf16-autocast and fp32 modes; activation checkpointing on by default at scale."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from training.loop import BatchList, TrainConfig, _build_model, grad_checkpointing, latest_checkpoint, train
from training.model import S3DiT, load_safetensors, param_count, small, tiny, z_image_6b


def _released_bf16(folder) -> dict[str, torch.Tensor]:
    """A tiny model with random (non-zero gate) weights saved like the released ``transformer/``
    folder: bf16 shards + a diffusers config.json. Returns the stored weights."""
    torch.manual_seed(0)
    sd = S3DiT(tiny()).state_dict()
    g = torch.Generator().manual_seed(1)
    sd = {k: (torch.randn(v.shape, generator=g) * 0.05).to(torch.bfloat16) for k, v in sd.items()}
    keys = sorted(sd)
    folder.mkdir()
    for i, part in enumerate((keys[: len(keys) // 2], keys[len(keys) // 2 :])):
        save_file({k: sd[k] for k in part}, str(folder / f"diffusion_pytorch_model-0000{i + 1}-of-00002.safetensors"))
    conf = dict(
        dim=64, n_layers=2, n_refiner_layers=1, n_heads=2, n_kv_heads=2, cap_feat_dim=32, axes_dims=[8, 12, 12], axes_lens=[256, 64, 64]
    )
    (folder / "config.json").write_text(json.dumps({"_class_name": "ZImageTransformer2DModel", "in_channels": 16, **conf}))
    return sd


def _batches() -> BatchList:
    g = torch.Generator().manual_seed(2)
    lat = [torch.randn(16, 8, 12, generator=g), torch.randn(16, 6, 6, generator=g)]
    feats = [torch.randn(5, 32, generator=g), torch.randn(40, 32, generator=g)]
    return BatchList([{"latents": lat, "cap_feats": feats}])


def test_load_safetensors_gives_fp32_from_bf16_files(tmp_path):
    stored = _released_bf16(tmp_path / "transformer")
    model = load_safetensors(tmp_path / "transformer")  # cfg from config.json
    assert model.cfg == tiny()
    assert all(p.dtype == torch.float32 and p.device.type == "cpu" for p in model.parameters())
    assert all(torch.equal(v, stored[k].float()) for k, v in model.state_dict().items())
    kept = load_safetensors(tmp_path / "transformer", tiny(), dtype=None)  # the file's dtype, on request
    assert all(p.dtype == torch.bfloat16 for p in kept.parameters())


@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_init_from_bf16_trains_fp32_masters(tmp_path, precision):
    stored = _released_bf16(tmp_path / "transformer")
    cfg = TrainConfig(
        model="tiny",
        init_from=str(tmp_path / "transformer"),
        out_dir=str(tmp_path / "run"),
        steps=3,
        lr=1e-4,
        warmup_steps=0,
        ema_decay=0.9,
        caption_dropout=0.0,
        precision=precision,
        log_every=1,
        sample_count=0,
    )
    logs: list[str] = []
    train(cfg, _batches(), log=logs.append)
    assert any(f"{precision} on cpu" in line and "activation checkpointing off (auto)" in line for line in logs)
    ckpt = latest_checkpoint(tmp_path / "run")
    final = load_file(str(ckpt / "model.safetensors"))
    assert all(v.dtype == torch.float32 for v in final.values())  # fp32 master weights
    ema = load_file(str(ckpt / "ema.safetensors"))
    assert all(v.dtype == torch.float32 for v in ema.values())
    opt = torch.load(ckpt / "trainer.pt", map_location="cpu", weights_only=False)["optimizer"]
    moments = [s[m] for s in opt["state"].values() for m in ("exp_avg", "exp_avg_sq")]
    assert len(moments) == 2 * len(final) and all(m.dtype == torch.float32 for m in moments)  # fp32 Adam moments
    changed = sum(int((final[k] != stored[k].float()).sum()) for k in final)
    total = sum(v.numel() for v in final.values())
    assert changed / total > 0.95, f"only {changed / total:.1%} of the elements moved (bf16 masters: ~31%)"

    # resuming reads the run's (fp32) checkpoint instead of init_from, and continues
    logs.clear()
    train(cfg.model_copy(update={"steps": 4}), _batches(), log=logs.append)
    assert any("resumed" in line and "step 3" in line for line in logs)


def test_grad_checkpoint_auto():
    with torch.device("meta"):  # no memory: parameter counts only
        n6, ns = param_count(S3DiT(z_image_6b())), param_count(S3DiT(small()))
    n_tiny = param_count(S3DiT(tiny()))
    assert not grad_checkpointing(TrainConfig(model="tiny"), n_tiny)
    assert not grad_checkpointing(TrainConfig(model="small"), ns)
    assert grad_checkpointing(TrainConfig(model="6b"), n6)
    assert grad_checkpointing(TrainConfig(model="small", model_overrides={"n_layers": 40}), 1.2e9)  # >= 1B
    assert grad_checkpointing(TrainConfig(model="tiny", grad_checkpoint=True), n_tiny)  # explicit wins
    assert not grad_checkpointing(TrainConfig(model="6b", grad_checkpoint=False), n6)
    # the loop's model build applies it (6B built on the meta device)
    with torch.device("meta"):
        raw = _build_model(TrainConfig(model="6b"), z_image_6b(), None, torch.device("meta"))
    assert raw.gradient_checkpointing and raw.layers[0].attention.to_q.weight.is_meta
    assert not _build_model(TrainConfig(model="tiny"), tiny(), None, torch.device("cpu")).gradient_checkpointing
