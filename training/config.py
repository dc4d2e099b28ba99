"""The settings of a training run (``curate train --config train.yaml``), free of torch imports so
the CLI can validate them without loading PyTorch. The loop is ``training.loop``."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["TrainConfig"]


class TrainConfig(BaseModel):
    """Everything the loop needs; ``curate train --config train.yaml`` reads these fields."""

    model_config = ConfigDict(extra="forbid")

    model: Literal["tiny", "small", "6b"] = "tiny"
    model_overrides: dict[str, Any] = Field(default_factory=dict, description="S3DiTConfig fields to change")
    init_from: str | None = Field(None, description="released weights: a .safetensors file or a transformer/ folder")
    out_dir: str = Field("runs/train", description="checkpoints, metrics.jsonl, samples")
    steps: int = Field(1000, ge=1)
    lr: float = Field(1e-4, gt=0)
    warmup_steps: int = Field(100, ge=0)
    schedule: Literal["constant", "cosine"] = "constant"
    weight_decay: float = Field(0.0, ge=0)
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = Field(1.0, ge=0, description="max global grad norm; 0 = off")
    ema_decay: float = Field(0.9999, ge=0, lt=1, description="0 = no EMA")
    caption_dropout: float = Field(0.1, ge=0, le=1, description="share of captions replaced by the null caption (for CFG)")
    t_mean: float = 0.0
    t_std: float = Field(1.0, gt=0)
    seed: int = 0
    precision: Literal["auto", "bf16", "fp32"] = Field("auto", description="auto: bf16 autocast on GPU, fp32 on CPU")
    compile: bool = Field(False, description="torch.compile each block")
    grad_checkpoint: bool = Field(False, description="recompute block activations in backward")
    fsdp: Literal["auto", "on", "off"] = Field("auto", description="auto: FSDP2 when > 1B params on > 1 rank")
    log_every: int = Field(10, ge=1)
    ckpt_every: int = Field(500, ge=1)
    keep_ckpts: int = Field(3, ge=1)
    ckpt_final: bool = Field(True, description="also save at the last step (benchmarks turn it off)")
    resume: bool = Field(True, description="continue from the latest checkpoint in out_dir")
    sample_every: int = Field(0, ge=0, description="write sample images every N steps; 0 = only at the end")
    sample_count: int = Field(4, ge=0, description="first N captions of the first batch are the sample prompts")
    sample_steps: int = Field(20, ge=1)
    sample_guidance: float = Field(4.0, ge=0)
    vae_path: str | None = Field(None, description="AutoencoderKL folder (Flux VAE); None: tiny random if tiny_encoders")
    text_encoder_path: str | None = Field(None, description="Qwen3 folder (model + tokenizer)")
    tiny_encoders: bool = Field(False, description="random tiny VAE + Qwen3 (tests, smoke runs)")
    log_sample_ids: bool = Field(
        False,
        description="each rank appends the ids it trained on per step to <out_dir>/ranks/rank_<r>.jsonl (audit which data every rank saw)",
    )
    peak_tflops: float | None = Field(None, description="device peak for MFU (default: known GPUs)")
