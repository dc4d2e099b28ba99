"""LoRA fine-tuning (``lora_rank``): only the adapters train and are saved, the base stays bit for bit;
the saved adapter loads into diffusers' ZImageTransformer2DModel through ``ZImagePipeline.load_lora_weights``
and gives our outputs; a resumed run continues the adapter exactly; bad settings name their field."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from curation.config import ConfigError, validate
from training import loop
from training.config import TrainConfig
from training.loop import BatchList, latest_checkpoint, train
from training.lora import DEFAULT_TARGETS, apply_lora, check_targets, load_adapter, set_adapter
from training.model import S3DiT, load_safetensors, tiny, z_image_6b

TINY = dict(
    in_channels=16,
    dim=64,
    n_layers=2,
    n_refiner_layers=1,
    n_heads=2,
    n_kv_heads=2,
    cap_feat_dim=32,
    axes_dims=[8, 12, 12],
    axes_lens=[256, 64, 64],
)


def _base(folder) -> dict[str, torch.Tensor]:
    """Random non-zero tiny weights (gates open, so every block matters) saved like the released
    ``transformer/`` folder; returns them."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    sd = {k: torch.randn(v.shape, generator=g) * 0.05 for k, v in S3DiT(tiny()).state_dict().items()}
    folder.mkdir()
    save_file(sd, str(folder / "diffusion_pytorch_model.safetensors"))
    (folder / "config.json").write_text(json.dumps({"_class_name": "ZImageTransformer2DModel", **TINY}))
    return sd


def _batches() -> BatchList:
    g = torch.Generator().manual_seed(2)
    lat = [torch.randn(16, 8, 12, generator=g), torch.randn(16, 6, 6, generator=g)]
    feats = [torch.randn(5, 32, generator=g), torch.randn(40, 32, generator=g)]
    return BatchList([{"latents": lat, "cap_feats": feats}])


def _inputs():
    g = torch.Generator().manual_seed(3)
    lat = [torch.randn(16, 8, 12, generator=g), torch.randn(16, 6, 6, generator=g), torch.randn(16, 10, 4, generator=g)]
    cap = [torch.randn(5, 32, generator=g), torch.randn(40, 32, generator=g), torch.randn(33, 32, generator=g)]
    return lat, cap, torch.tensor([0.3, 0.7, 0.9])


def _cfg(tmp_path, **kw) -> TrainConfig:
    base = dict(
        model="tiny",
        init_from=str(tmp_path / "transformer"),
        out_dir=str(tmp_path / "run"),
        steps=3,
        lr=1e-2,
        warmup_steps=0,
        ema_decay=0.9,
        caption_dropout=0.0,
        precision="fp32",
        log_every=1,
        sample_count=0,
        lora_rank=4,
        lora_alpha=8.0,
    )
    return TrainConfig(**{**base, **kw})


def _n_blocks() -> int:
    c = tiny()
    return 2 * c.n_refiner_layers + c.n_layers


def test_only_adapters_train_and_the_base_stays_bit_identical(tmp_path, monkeypatch):
    stored = _base(tmp_path / "transformer")
    runs = []
    setup = loop._setup
    monkeypatch.setattr(loop, "_setup", lambda *a, **k: runs.append(setup(*a, **k)) or runs[-1])
    logs: list[str] = []
    train(_cfg(tmp_path), _batches(), log=logs.append)
    run, raw = runs[0], runs[0].raw
    assert any("LoRA rank 4 alpha 8" in line and f"on {_n_blocks() * len(DEFAULT_TARGETS)} linear layers" in line for line in logs)

    trained = {n: p for n, p in raw.named_parameters() if p.requires_grad}
    assert len(trained) == 2 * _n_blocks() * len(DEFAULT_TARGETS)
    assert all(n.endswith((".lora_A.weight", ".lora_B.weight")) for n in trained)
    # the optimizer and the EMA hold the adapters and nothing else
    assert {id(p) for g in run.opt.param_groups for p in g["params"]} == {id(p) for p in trained.values()}
    assert len(run.opt.state) == len(trained) and set(run.ema.names) == set(trained)
    # base: frozen, the released names, bit for bit the file's values after 3 steps at lr 1e-2
    sd = raw.state_dict()
    assert all(torch.equal(sd[k], v) for k, v in stored.items())
    assert all(not p.requires_grad for n, p in raw.named_parameters() if n in stored)
    # every adapter moved: B away from zero, A away from its seeded init
    fresh = load_safetensors(tmp_path / "transformer")
    apply_lora(fresh, 4, 8.0, seed=0)
    init = dict(fresh.named_parameters())
    assert all(not torch.equal(p, init[n]) for n, p in trained.items())

    # the checkpoint holds only the adapters (and their EMA), as diffusers' LoRA files
    ckpt = latest_checkpoint(tmp_path / "run")
    assert not (ckpt / "model.safetensors").exists() and not (ckpt / "ema.safetensors").exists()
    saved = load_file(str(ckpt / "adapter.safetensors"))
    assert set(saved) == {"transformer." + n for n in trained}
    assert all(torch.equal(saved["transformer." + n], p.detach()) for n, p in trained.items())
    with safe_open(str(ckpt / "adapter.safetensors"), framework="pt") as f:
        meta = json.loads(f.metadata()["lora_adapter_metadata"])
    assert meta["transformer.r"] == 4 and meta["transformer.lora_alpha"] == 8.0
    assert len(meta["transformer.target_modules"]) == _n_blocks() * len(DEFAULT_TARGETS)
    assert set(load_adapter(ckpt / "ema_adapter.safetensors")[0]) == set(trained)


def test_bf16_run_keeps_the_frozen_base_in_bf16(tmp_path, monkeypatch):
    """Under bf16 autocast the frozen base is held in bf16 (no fp32 copy: half the memory), the
    adapters stay fp32 masters and train."""
    stored = _base(tmp_path / "transformer")
    runs = []
    setup = loop._setup
    monkeypatch.setattr(loop, "_setup", lambda *a, **k: runs.append(setup(*a, **k)) or runs[-1])
    logs: list[str] = []
    train(_cfg(tmp_path, precision="bf16", steps=2), _batches(), log=logs.append)
    raw = runs[0].raw
    assert any("base frozen in bfloat16" in line for line in logs)
    for n, p in raw.named_parameters():
        assert p.dtype == (torch.float32 if ".lora_" in n else torch.bfloat16), n
    sd = raw.state_dict()
    assert all(torch.equal(sd[k], v.to(torch.bfloat16)) for k, v in stored.items())
    assert all(p.abs().sum() > 0 for n, p in raw.named_parameters() if n.endswith(".lora_B.weight"))


def test_adapter_round_trip_through_diffusers(tmp_path):
    """Our trained adapter file -> ZImagePipeline.load_lora_weights (diffusers + peft) on the same
    base weights -> the same outputs as our model with the adapter, on a mixed batch."""
    from training.encoders import ensure_hf_importable

    ensure_hf_importable()  # a CUDA torchvision next to CPU torch would break diffusers' import
    diffusers = pytest.importorskip("diffusers")
    pytest.importorskip("peft", reason="diffusers loads LoRA adapters through peft")
    stored = _base(tmp_path / "transformer")
    train(_cfg(tmp_path), _batches(), log=lambda _m: None)
    ckpt = latest_checkpoint(tmp_path / "run")

    ours = load_safetensors(tmp_path / "transformer").eval()
    apply_lora(ours, 4, 8.0)
    set_adapter(ours, load_adapter(ckpt / "adapter.safetensors")[0])
    ref = diffusers.ZImageTransformer2DModel(**TINY).eval()
    ref.load_state_dict(stored, strict=True)
    lat, cap, t = _inputs()
    with torch.no_grad():
        plain = ref([x[:, None] for x in lat], t, cap, return_dict=False)[0]
    pipe = diffusers.ZImagePipeline(
        scheduler=diffusers.FlowMatchEulerDiscreteScheduler(), vae=None, text_encoder=None, tokenizer=None, transformer=ref
    )
    pipe.load_lora_weights(str(ckpt), weight_name="adapter.safetensors")
    with torch.no_grad():
        expect = ref([x[:, None] for x in lat], t, cap, return_dict=False)[0]
        got = ours(lat, t, cap)
    for e, o, p in zip(expect, got, plain):
        assert (e - p).abs().max() > 1e-3  # the adapter was applied and matters
        assert torch.allclose(e[:, 0], o, atol=1e-5), (e[:, 0] - o).abs().max()


def test_resume_keeps_training_the_adapter(tmp_path):
    """3 steps, stop, resume to 5 == 5 steps straight: adapters and their EMA bit for bit."""
    _base(tmp_path / "transformer")
    logs: list[str] = []
    train(_cfg(tmp_path), _batches(), log=logs.append)
    at3 = load_file(str(latest_checkpoint(tmp_path / "run") / "adapter.safetensors"))
    logs.clear()
    train(_cfg(tmp_path, steps=5), _batches(), log=logs.append)
    assert any("resumed" in line and "step 3" in line for line in logs)
    ckpt = latest_checkpoint(tmp_path / "run")
    assert ckpt.name == "step_00000005"
    at5 = load_file(str(ckpt / "adapter.safetensors"))
    assert all(not torch.equal(at3[k], at5[k]) for k in at3)  # still training every adapter
    train(_cfg(tmp_path, steps=5, out_dir=str(tmp_path / "straight")), _batches(), log=lambda _m: None)
    straight = latest_checkpoint(tmp_path / "straight")
    for name in ("adapter.safetensors", "ema_adapter.safetensors"):
        a, b = load_file(str(ckpt / name)), load_file(str(straight / name))
        assert all(torch.equal(a[k], b[k]) for k in a), name


def test_bad_lora_settings_fail_naming_the_field(tmp_path):
    with pytest.raises(ConfigError) as e:
        validate(TrainConfig, {"lora_rank": 0})
    lines = str(e.value).splitlines()[1:]
    assert len(lines) == 1 and lines[0].strip().startswith("lora_rank:"), lines
    with pytest.raises(ConfigError, match="lora_alpha"):
        validate(TrainConfig, {"lora_alpha": 4})  # LoRA settings without a rank
    with pytest.raises(ValueError) as e:
        check_targets(tiny(), ["to_q", "to_x"])
    msg = str(e.value)
    assert msg.startswith("lora_targets: 'to_x' names no linear layer") and "\n" not in msg and "to_out.0" in msg
    _base(tmp_path / "transformer")
    with pytest.raises(ValueError, match="^lora_targets: 'attention'"):  # a module, but not a linear one
        train(_cfg(tmp_path, lora_targets=["attention"]), _batches(), log=lambda _m: None)
    check_targets(z_image_6b(), DEFAULT_TARGETS)  # the defaults name layers of the released model (meta device)


def test_6b_on_one_rank_defaults_to_lora():
    from pipelines.train import TrainRunConfig, single_rank_default

    notes: list[str] = []
    cfg = single_rank_default(TrainRunConfig(shards="s", model="6b"), notes.append)
    assert cfg.lora_rank == 32 and len(notes) == 1 and "--full-finetune" in notes[0]
    kept = [
        TrainRunConfig(shards="s", model="6b", lora_rank=None),  # explicit full fine-tune
        TrainRunConfig(shards="s", model="6b", lora_rank=8),
        TrainRunConfig(shards="s", model="6b", num_workers=2),
        TrainRunConfig(shards="s", model="small"),
    ]
    assert [single_rank_default(c, notes.append).lora_rank for c in kept] == [None, 8, None, None]
    assert len(notes) == 1


def test_cli_lora_options(tmp_path):
    """``curate train --lora R`` sets lora_rank (0 is refused naming the field); ``--full-finetune``
    excludes it."""
    from typer.testing import CliRunner

    from cli.main import app

    missing = str(tmp_path / "no-shards")
    res = CliRunner().invoke(app, ["train", "--shards", missing, "--lora", "0"])
    assert res.exit_code == 2 and "lora_rank:" in res.output and "Traceback" not in res.output, res.output
    res = CliRunner().invoke(app, ["train", "--shards", missing, "--lora", "4", "--full-finetune"])
    assert res.exit_code == 2 and "exclude each other" in res.output
    res = CliRunner().invoke(app, ["train", "--shards", missing, "--lora", "4"])  # valid LoRA settings: on to the shards check
    assert res.exit_code == 2 and "no training shards" in res.output
