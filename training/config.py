"""The settings of a training run (``curate train --config train.yaml``), free of torch imports so
the CLI can validate them without loading PyTorch. The loop is ``training.loop``."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["TrainConfig", "LORA_DEFAULT_TARGETS"]

LORA_DEFAULT_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "w1", "w2", "w3")  # training.lora's default adapters


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
    # Time shift, sigma' = s sigma / (1 + (s - 1) sigma): a constant s, or s = exp(mu) with mu linear in the image
    # token count (diffusers' FlowMatchEulerDiscreteScheduler, same field names). See training.flow.TimeShift.
    train_shift: float = Field(1.0, gt=0, description="constant shift s of the training noise levels when train_dynamic_shift is false")
    train_dynamic_shift: bool = Field(True, description="training t: resolution-dependent shift s = exp(mu(tokens)) (Flux / SD3)")
    sample_shift: float = Field(
        3.0, gt=0, description="constant shift s of the sampling schedule; 3.0 = the released Z-Image-Turbo scheduler config; 1 = none"
    )
    sample_dynamic_shift: bool = Field(False, description="sampling: resolution-dependent shift instead of sample_shift (Turbo: false)")
    base_shift: float = Field(0.5, description="dynamic shift: mu at base_image_seq_len image tokens")
    max_shift: float = Field(1.15, description="dynamic shift: mu at max_image_seq_len image tokens")
    base_image_seq_len: int = Field(256, ge=1)
    max_image_seq_len: int = Field(4096, ge=2)
    seed: int = 0
    precision: Literal["auto", "bf16", "fp32"] = Field("auto", description="auto: bf16 autocast on GPU, fp32 on CPU")
    compile: bool = Field(False, description="torch.compile each block")
    grad_checkpoint: bool | None = Field(
        None,
        description="recompute block activations in backward; None (auto): on for models of >= 1B parameters or the 6b config, off below",
    )
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
    lora_rank: int | None = Field(
        None,
        ge=1,
        description="LoRA fine-tuning at this rank: base weights frozen, only adapters trained and saved (diffusers LoRA format); "
        "None = full fine-tune",
    )
    lora_alpha: float | None = Field(None, gt=0, description="LoRA scale is lora_alpha / lora_rank; None = the rank (scale 1)")
    lora_targets: list[str] = Field(
        default_factory=lambda: list(LORA_DEFAULT_TARGETS),
        min_length=1,
        description="linear layers that get adapters: a module path or its ending (peft's rule), e.g. to_q, to_out.0, w1",
    )
    peak_tflops: float | None = Field(
        None, gt=0, description="dense bf16 TFLOPS of one device, for MFU (default: looked up by GPU name; unknown GPUs get no MFU)"
    )

    @model_validator(mode="after")
    def _shift_range(self) -> TrainConfig:
        if self.max_image_seq_len <= self.base_image_seq_len:
            raise ValueError(f"max_image_seq_len ({self.max_image_seq_len}) must exceed base_image_seq_len ({self.base_image_seq_len})")
        return self

    @model_validator(mode="after")
    def _lora_fields(self) -> TrainConfig:
        """LoRA settings without ``lora_rank`` would silently run a full fine-tune: refuse them."""
        if any(not t.strip() for t in self.lora_targets):
            raise ValueError("lora_targets: empty module name")
        if self.lora_rank is None and (self.lora_alpha is not None or tuple(self.lora_targets) != LORA_DEFAULT_TARGETS):
            raise ValueError("lora_alpha / lora_targets are set but lora_rank is not: set lora_rank to train LoRA adapters")
        return self
