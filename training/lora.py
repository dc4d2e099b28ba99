"""LoRA adapters for S3-DiT, written in-repo rather than with peft, saved in diffusers' LoRA format.

Why in-repo: peft is not a dependency of this project, and its ``LoraModel`` moves every target's
weight under a ``base_layer`` submodule (``to_q.weight`` becomes ``to_q.base_layer.weight``), so the
model's state dict would leave the released layout that ``load_safetensors``, the EMA and the
checkpoints rely on. Here a target ``nn.Linear`` is replaced by :class:`LoRALinear`, a subclass that
keeps the very same ``weight`` / ``bias`` Parameters under the same names and adds ``lora_A`` and
``lora_B``; the adapter's parameter names are therefore exactly the keys peft and diffusers use
(``layers.0.attention.to_q.lora_A.weight``). The forward is peft's: ``base(x) + B(A(x)) * alpha / r``,
A Kaiming-uniform and B zero at the start, so a fresh adapter changes nothing.

Files (:func:`save_adapter`): safetensors with keys ``transformer.<module path>.lora_A.weight`` /
``.lora_B.weight`` and diffusers' ``lora_adapter_metadata`` header (``transformer.r``,
``transformer.lora_alpha``, ``transformer.target_modules``), which is what
``ZImagePipeline.load_lora_weights`` (``ZImageLoraLoaderMixin`` -> ``load_lora_adapter`` -> peft)
reads. ``lora_alpha`` defaults to the rank (scale 1), the convention of loaders that ignore the
metadata, so the file means the same thing to them too.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from training.config import LORA_DEFAULT_TARGETS

__all__ = [
    "DEFAULT_TARGETS",
    "LoRALinear",
    "apply_lora",
    "match_targets",
    "adapter_numel",
    "check_targets",
    "adapter_state",
    "set_adapter",
    "save_adapter",
    "load_adapter",
]

# attention projections and the SwiGLU MLP of every block (refiners included), the usual Z-Image LoRA set
DEFAULT_TARGETS = LORA_DEFAULT_TARGETS

PREFIX = "transformer."  # diffusers' key prefix for the pipeline's transformer
METADATA_KEY = "lora_adapter_metadata"  # diffusers.loaders.lora_base.LORA_ADAPTER_METADATA_KEY


class LoRALinear(nn.Linear):
    """A frozen linear plus a trainable low-rank update; still an ``nn.Linear`` with the base's
    ``weight`` / ``bias`` objects, so names, sharing and ``isinstance`` checks are unchanged."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, generator: torch.Generator | None = None):
        nn.Module.__init__(self)
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight = base.weight
        self.register_parameter("bias", base.bias)
        self.rank, self.alpha, self.scaling = rank, float(alpha), float(alpha) / rank
        self.lora_A = nn.Linear(self.in_features, rank, bias=False)  # fp32 on the CPU: seeded init, then moved
        self.lora_B = nn.Linear(rank, self.out_features, bias=False)
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5), generator=generator)  # peft's init
        nn.init.zeros_(self.lora_B.weight)
        if base.weight.device.type != "meta":  # a meta base (sharded build): keep the seeded values to copy out
            self.lora_A.to(base.weight.device)
            self.lora_B.to(base.weight.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias) + self.lora_B(self.lora_A(x)) * self.scaling

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, rank={self.rank}, alpha={self.alpha:g}"


def _short(name: str) -> str:
    """``layers.3.attention.to_out.0`` -> ``to_out.0``: a linear's name as a target would spell it."""
    parts = name.split(".")
    return ".".join(parts[-2:]) if not re.search(r"[A-Za-z]", parts[-1]) and len(parts) > 1 else parts[-1]


def match_targets(model: nn.Module, targets) -> list[str]:
    """The linear layers that ``targets`` name (peft's rule: the full module path, or its ending after
    a dot). A target that names no linear layer is an error naming the field, so a typo cannot train
    an adapter on nothing."""
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and not isinstance(m, LoRALinear)]
    linears = [n for n in linears if ".lora_" not in n]
    hits: list[str] = []
    for t in targets:
        found = [n for n in linears if n == t or n.endswith("." + t)]
        if not found:
            known = ", ".join(sorted({_short(n) for n in linears}))
            raise ValueError(f"lora_targets: {t!r} names no linear layer of the model (linear layers: {known})")
        hits += [n for n in found if n not in hits]
    return hits


def adapter_numel(model: nn.Module, rank: int, targets) -> int:
    """How many parameters ``apply_lora`` would add to ``model`` (a meta-device one costs nothing):
    the loop sizes the run (FSDP2 or DDP) before it builds anything."""
    return sum(rank * (m.in_features + m.out_features) for m in map(model.get_submodule, match_targets(model, targets)))


def check_targets(cfg, targets) -> None:
    """Validate ``targets`` against a model of config ``cfg`` built on the meta device (no memory),
    so a bad name fails before any weights are read or workers start."""
    from training.model import S3DiT

    with torch.device("meta"):
        model = S3DiT(cfg)
    match_targets(model, targets)


def apply_lora(
    model: nn.Module,
    rank: int,
    alpha: float | None = None,
    targets=DEFAULT_TARGETS,
    seed: int = 0,
    base_dtype: torch.dtype | None = None,
) -> list[str]:
    """Freeze every parameter of ``model`` (cast to ``base_dtype`` if given: a frozen base needs no
    fp32 master copy) and wrap the ``targets`` linears in :class:`LoRALinear`. The adapters' initial
    values come from ``seed`` alone, so every rank and a resumed run build the same ones. On a
    meta-device model (FSDP2 builds) the adapters stay on the CPU with those values, for the caller
    to keep before it materialises the model. Returns the wrapped module paths."""
    if rank < 1:
        raise ValueError(f"lora_rank: must be >= 1, got {rank}")
    if alpha is not None and alpha <= 0:
        raise ValueError(f"lora_alpha: must be > 0, got {alpha}")
    names = match_targets(model, targets)
    for p in model.parameters():
        p.requires_grad_(False)
        if base_dtype is not None and p.dtype != base_dtype and p.is_floating_point():
            p.data = p.data.to(base_dtype)
    gen = torch.Generator().manual_seed(seed)
    for name in names:
        parent_name, _, leaf = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, leaf, LoRALinear(model.get_submodule(name), rank, alpha or rank, gen))
    return names


def adapter_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter parameters by name (``<module path>.lora_A.weight`` ...), as they are in the model."""
    return {n: p for n, p in model.named_parameters() if ".lora_A." in n or ".lora_B." in n}


@torch.no_grad()
def set_adapter(model: nn.Module, state: dict[str, torch.Tensor], source: str = "the adapter file") -> None:
    """Copy ``state`` (our names, no prefix) into the model's adapters; any missing, extra or
    reshaped key is an error saying which, since a silently partial adapter would train wrong.
    Under FSDP2 each rank copies its shard's rows of the whole tensors in ``state``."""
    own = adapter_state(model)
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or unexpected:
        raise ValueError(
            f"{source} does not match this run's LoRA layers (lora_rank / lora_targets changed?): "
            f"missing {missing[:4]}, unexpected {unexpected[:4]}"
        )
    for n, p in own.items():
        if state[n].shape != p.shape:
            raise ValueError(f"{source}: {n} has shape {tuple(state[n].shape)}, this run's lora_rank gives {tuple(p.shape)}")
        p.copy_(_placed(state[n], p))


def _placed(t: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """``t`` in ``p``'s dtype and layout: under FSDP2 (``p`` a DTensor) this rank's rows of it, cut
    locally (``src_data_rank=None``: every rank holds the same whole adapter, nothing is sent)."""
    if not hasattr(p, "device_mesh"):
        return t.to(p.device, p.dtype)
    from torch.distributed.tensor import distribute_tensor

    return distribute_tensor(t.to(p.device, p.dtype), p.device_mesh, p.placements, src_data_rank=None)


def save_adapter(path: str | Path, state: dict[str, torch.Tensor], rank: int, alpha: float) -> None:
    """Write adapters as diffusers' ``save_lora_weights`` does for the Z-Image transformer: prefixed
    peft keys plus the ``lora_adapter_metadata`` that makes ``load_lora_weights`` use our alpha."""
    from safetensors.torch import save_file

    modules = sorted({n.rsplit(".lora_", 1)[0] for n in state})
    meta = {"transformer.r": rank, "transformer.lora_alpha": alpha, "transformer.target_modules": modules}
    tensors = {PREFIX + n: t.detach().cpu().contiguous() for n, t in state.items()}
    save_file(tensors, str(path), metadata={"format": "pt", METADATA_KEY: json.dumps(meta, sort_keys=True)})


def load_adapter(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """(adapter tensors by our names, the metadata dict) from a file :func:`save_adapter` wrote."""
    from safetensors import safe_open

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: the checkpoint was not written by a LoRA run (lora_rank unset?)")
    with safe_open(str(path), framework="pt") as f:
        meta = json.loads((f.metadata() or {}).get(METADATA_KEY) or "{}")
        state = {k.removeprefix(PREFIX): f.get_tensor(k) for k in f.keys()}
    return state, meta
