"""The S3-DiT training loop (``train``), single process or one rank of many.

``train(cfg, data)`` runs AdamW with linear warm-up, gradient clipping, an EMA of the weights,
bf16 autocast on GPU, optional ``torch.compile`` of the blocks and gradient checkpointing, over
any iterable of batches. Distribution is whatever ``torch.distributed`` was initialised with (Ray
Train's TorchTrainer does it in ``pipelines/train.py``): DDP, or FSDP2 (``fully_shard`` per
block) for models too large to replicate. No Ray here.

Batches are dicts. Images come as ``images`` (uint8 3xHxW, what ``training.loader`` yields) and
are VAE-encoded on the fly, or as pre-encoded ``latents`` (16 x H/8 x W/8); captions as
``captions`` (strings, encoded by the text encoder) or pre-encoded ``cap_feats`` (L x D).

Checkpoints (``<out>/checkpoints/step_XXXXXXXX/``) hold ``model.safetensors`` and
``ema.safetensors`` in the released layout (they load with ``training.model.load_safetensors``),
``trainer.pt`` (optimizer, schedule, step, sample prompts) and ``rank_<r>.pt`` (that rank's random
generator and loader state). Resuming restores all of them, so a resumed run continues the same
loss curve step for step. FSDP2 full fine-tunes write no gathered state: every rank writes its own
shards of model, optimizer and EMA to ``dcp/`` (``torch.distributed.checkpoint``, see
``training.dist_ckpt``), ``trainer.pt`` keeps the schedule and step, and the released-layout
``model.safetensors`` / ``ema.safetensors`` are consolidated from those shards only in the final
checkpoint (``dist_ckpt.export_safetensors`` does it for any other). A ``dcp/`` checkpoint resumes on
any number of ranks, FSDP2, DDP or one process (resharded on load); ``init_from`` under FSDP2 is
read straight into each rank's shards of a meta-device model, for LoRA runs too. LoRA runs (``lora_rank``) freeze the base and checkpoint only the
adapters, ``adapter.safetensors`` / ``ema_adapter.safetensors`` in diffusers' LoRA format
(``training.lora``), instead of the model files; the base is re-read from ``init_from`` on resume. Metrics go to ``<out>/metrics.jsonl`` and the console; sample images to
``<out>/samples/``.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch

from training import dist_ckpt
from training.config import TrainConfig
from training.flow import TBins, TimeShift, euler_sample, flow_loss, sample_t
from training.lora import adapter_numel, adapter_state, apply_lora, load_adapter, save_adapter, set_adapter
from training.model import CONFIGS, S3DiT, S3DiTConfig, flops_per_sample, load_safetensors, param_count

__all__ = [
    "TrainConfig",
    "BatchList",
    "LazyEncoders",
    "param_digest",
    "train",
    "latest_checkpoint",
    "model_config",
    "duration",
    "format_metrics",
    "run_timing",
    "peak_tflops",
    "window_throughput",
    "time_shifts",
    "grad_checkpointing",
]

PEAK_BF16_TFLOPS: tuple[tuple[str, float], ...] = (
    # (regular expression searched in torch.cuda.get_device_name(), dense bf16 tensor TFLOPS of one device); the first
    # match wins, so the PCIe / NVL parts come before the SXM part of the same name. Values: NVIDIA datasheets, which
    # quote "with sparsity" figures, halved (H100 SXM 1,979 -> 989; PCIe 1,513 -> 756; NVL 1,671 -> 835).
    (r"\bH100\b.*\bPCIe\b", 756.0),
    (r"\bH100\b.*\bNVL\b", 835.0),
    (r"\bH100\b", 989.0),  # SXM5: "NVIDIA H100 80GB HBM3"
    (r"\bH800\b.*\bPCIe\b", 756.0),  # H800: the H100 with less interconnect, same compute
    (r"\bH800\b", 989.0),
    (r"H200\b.*\bNVL\b", 835.0),
    (r"H200\b", 989.0),  # "NVIDIA H200" (SXM), also GH200 (its H100 die: 989 dense)
    (r"\bA100\b|\bA800\b", 312.0),  # SXM4 and PCIe alike ("NVIDIA A100-SXM4-80GB", "NVIDIA A100 80GB PCIe")
    (r"\bL40S\b", 362.0),
    (r"\bRTX 4090$", 165.0),  # GeForce: 165.2 with fp32 accumulation (330 with fp16 accumulation), Ada whitepaper
    (r"\bA10$", 125.0),  # not the A10G
)
"""Dense bf16 peak by GPU name, for model FLOPs utilisation (MFU). A GPU not listed, or a MIG slice,
gets no MFU unless ``peak_tflops`` is set in the config."""


def peak_tflops(device_name: str) -> float | None:
    """The dense bf16 peak TFLOPS of a GPU from its ``torch.cuda.get_device_name`` (None: unknown)."""
    if re.search(r"\bMIG\b", device_name):
        return None  # a slice of a GPU: its share of the peak is not in the name
    return next((v for pat, v in PEAK_BF16_TFLOPS if re.search(pat, device_name.strip(), re.IGNORECASE)), None)


def model_config(cfg: TrainConfig) -> S3DiTConfig:
    return CONFIGS[cfg.model](**cfg.model_overrides)


def time_shifts(cfg: TrainConfig) -> tuple[TimeShift, TimeShift]:
    """The (training, sampling) time shifts that ``cfg`` configures."""
    common = dict(
        base_shift=cfg.base_shift,
        max_shift=cfg.max_shift,
        base_image_seq_len=cfg.base_image_seq_len,
        max_image_seq_len=cfg.max_image_seq_len,
    )
    return (
        TimeShift(shift=cfg.train_shift, dynamic=cfg.train_dynamic_shift, **common),
        TimeShift(shift=cfg.sample_shift, dynamic=cfg.sample_dynamic_shift, **common),
    )


class BatchList:
    """A resumable in-memory batch source (the loader protocol in miniature): iterate, and
    ``state_dict()`` / ``load_state_dict()`` / ``set_epoch()`` like ``training.loader.Loader``."""

    def __init__(self, batches: list[dict]):
        self.batches, self.epoch, self.pos = list(batches), 0, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch, self.pos = epoch, 0

    def __iter__(self):
        while self.pos < len(self.batches):
            self.pos += 1
            yield self.batches[self.pos - 1]

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "pos": self.pos}

    def load_state_dict(self, s: dict) -> None:
        self.epoch, self.pos = s["epoch"], s["pos"]


# ----------------------------------------------------------------------------- distribution


def _dist() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _barrier() -> None:
    import torch.distributed as dist

    if _dist()[1] > 1:
        dist.barrier()


def _wrap(model: S3DiT, use_fsdp: bool, device: torch.device, bf16: bool):
    """DDP, or FSDP2 with one shard group per block (params gathered block by block)."""
    if use_fsdp:
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16 if bf16 else torch.float32, reduce_dtype=torch.float32)
        for blk in model.blocks():
            fully_shard(blk, mp_policy=mp)
        fully_shard(model, mp_policy=mp)
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP

    return DDP(model, device_ids=[device.index] if device.type == "cuda" else None)


def _full_state(model, raw: S3DiT, use_fsdp: bool) -> dict[str, torch.Tensor]:
    if use_fsdp:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return {k: v.detach().cpu() for k, v in raw.state_dict().items()}


def _full_optim(model, opt, use_fsdp: bool) -> dict:
    if use_fsdp:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        return get_optimizer_state_dict(model, opt, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return opt.state_dict()


def _load_optim(model, opt, state: dict, use_fsdp: bool) -> None:
    if use_fsdp:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        state = _by_name(model, opt, state)
        set_optimizer_state_dict(model, opt, state, options=StateDictOptions(full_state_dict=True))
    else:
        opt.load_state_dict(_by_index(model, opt, state))


def _by_index(model, opt, state: dict) -> dict:
    """A full optimizer state keyed by index, as ``opt.load_state_dict`` wants it. An FSDP2 run's
    checkpoint (a LoRA run's ``trainer.pt``) is keyed by parameter name; ``load_state_dict`` would
    pair entries by position and never look at the names, so a changed order would put one
    adapter's moments on another of the same shape. Here each name goes to its own index, and a
    name this model lacks (or lacks in the state) is an error that names it."""
    if not any(isinstance(k, str) for k in state["state"]):
        return state
    names = {id(p): n.removeprefix("module.") for n, p in model.named_parameters()}
    current = [[names[id(p)] for p in g["params"]] for g in opt.param_groups]
    index = {n: i for i, n in enumerate(n for g in current for n in g)}
    saved = [n for g in state["param_groups"] for n in g["params"]]
    if sorted(saved) != sorted(index):
        extra, missing = sorted(set(saved) - set(index))[:3], sorted(set(index) - set(saved))[:3]
        raise ValueError(f"the checkpoint's optimizer is of another model: its extra {extra}, missing {missing}")
    # ``load_state_dict`` pairs the saved ids with this optimizer's params by position in each group,
    # so each group lists its ids in this optimizer's order (and must hold the same parameters)
    groups = [{**g, "params": sorted(index[n] for n in g["params"])} for g in state["param_groups"]]
    if [sorted(g["params"]) for g in state["param_groups"]] != [sorted(g) for g in current]:
        raise ValueError("the checkpoint's optimizer groups its parameters otherwise (weight decay groups differ)")
    return {"state": {index[n]: v for n, v in state["state"].items()}, "param_groups": groups}


def _by_name(model, opt, state: dict) -> dict:
    """A full optimizer state keyed by parameter name, as ``set_optimizer_state_dict`` wants it. A
    single-process or DDP checkpoint holds ``opt.state_dict()``, keyed by index in the groups'
    order; this run's optimizer has the same groups (``_optimizer``), so index i is its i-th param."""
    if not any(isinstance(k, int) for k in state["state"]):
        return state
    names = {id(p): n.removeprefix("module.") for n, p in model.named_parameters()}
    order = [names[id(p)] for g in opt.param_groups for p in g["params"]]
    saved = [i for g in state["param_groups"] for i in g["params"]]
    if len(saved) != len(order):
        raise ValueError(f"the checkpoint's optimizer has {len(saved)} parameters, this model {len(order)}: not the same model")
    groups = [{**g, "params": [order[i] for i in g["params"]]} for g in state["param_groups"]]
    return {"state": {order[i]: v for i, v in state["state"].items()}, "param_groups": groups}


class EMA:
    """An fp32 exponential moving average of the trained parameters (all of them, or a LoRA run's
    adapters: a frozen base needs no average), sharded like them under FSDP2."""

    def __init__(self, raw: S3DiT, decay: float):
        self.decay = decay
        self.names = [n for n, p in raw.named_parameters() if p.requires_grad]
        self.params = [p for _, p in raw.named_parameters() if p.requires_grad]
        self.shadow = [p.detach().float().clone() for p in self.params]

    @torch.no_grad()
    def update(self, step: int) -> None:
        """shadow += (1 - d) (param - shadow) for every parameter, in one fused call (same kernel
        arithmetic as a ``lerp_`` per parameter; DTensor shards under FSDP2 support it too)."""
        d = min(self.decay, (1 + step) / (10 + step))  # warm-up: early averages are not stuck at init
        torch._foreach_lerp_(self.shadow, [p.detach().float() for p in self.params], 1 - d)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The shadows by parameter name as they are held: this rank's DTensor shards under FSDP2
        (what ``training.dist_ckpt`` saves without any gather), whole tensors otherwise."""
        return dict(zip(self.names, self.shadow))

    @torch.no_grad()
    def load_shards(self, state: dict[str, torch.Tensor]) -> None:
        """Shadows from tensors already in this layout (what ``dcp.load`` filled in place)."""
        for n, e in zip(self.names, self.shadow):
            if state[n] is not e:
                e.copy_(state[n])

    @torch.no_grad()
    def reset(self) -> None:
        """Restart the average from the current weights (a checkpoint without an EMA)."""
        for e, p in zip(self.shadow, self.params):
            e.copy_(p.detach().float())

    def full(self) -> dict[str, torch.Tensor]:
        """Every shadow whole on the CPU: a collective gather under FSDP2, so only for what is small
        (a LoRA run's adapters) or unsharded; FSDP2 full fine-tunes save ``state_dict()`` via DCP."""
        out = {}
        for n, e in zip(self.names, self.shadow):
            t = e.full_tensor() if hasattr(e, "full_tensor") else e
            out[n] = t.detach().cpu().contiguous()
        return out

    @torch.no_grad()
    def load(self, state: dict[str, torch.Tensor]) -> None:
        for n, e in zip(self.names, self.shadow):
            src = state[n].to(e.device if not hasattr(e, "full_tensor") else "cpu", torch.float32)
            if hasattr(e, "full_tensor"):  # DTensor: copy this rank's shard
                from torch.distributed.tensor import distribute_tensor

                src = distribute_tensor(src.to(e.device_mesh.device_type), e.device_mesh, e.placements)
            e.copy_(src)


# ----------------------------------------------------------------------------- checkpoints


def latest_checkpoint(out_dir: str | Path) -> Path | None:
    """The newest complete checkpoint folder (``latest`` pointer, else the highest step)."""
    root = Path(out_dir) / "checkpoints"
    ptr = root / "latest"
    if ptr.exists() and (root / ptr.read_text().strip() / "trainer.pt").exists():
        return root / ptr.read_text().strip()
    done = sorted(p for p in root.glob("step_*") if (p / "trainer.pt").exists() and not p.name.endswith(".tmp"))
    return done[-1] if done else None


ADAPTER_FILE, EMA_ADAPTER_FILE = "adapter.safetensors", "ema_adapter.safetensors"  # a LoRA run's checkpoint weights


def _save_checkpoint(run: _Run, step: int, extra: dict) -> Path:
    """Write ``step_XXXXXXXX/`` through a ``.tmp`` folder (every rank must call: collectives)."""
    root = run.out / "checkpoints"
    final, tmp = root / f"step_{step:08d}", root / f"step_{step:08d}.tmp"
    if _sharded_ckpt(run):
        _save_sharded(run, tmp, step, extra)
    else:
        _save_full(run, tmp, extra)
    _barrier()
    digest = None if run.use_fsdp else param_digest(run.raw)
    _check_replicas(digest, step)
    torch.save(
        {
            "generator": run.gen.get_state(),
            "data": run.data.state_dict() if hasattr(run.data, "state_dict") else None,
            "param_digest": digest,
        },
        tmp / f"rank_{run.rank}.pt",
    )
    _barrier()
    if run.rank == 0:
        _publish_checkpoint(tmp, final, run.cfg.keep_ckpts)
    _barrier()
    return final


def _sharded_ckpt(run: _Run) -> bool:
    """FSDP2 full fine-tunes checkpoint through DCP, each rank its shards; LoRA runs gather their
    (small) adapters, DDP and single-process runs write the full state from rank 0."""
    return run.use_fsdp and not run.cfg.lora_rank


def _save_full(run: _Run, tmp: Path, extra: dict) -> None:
    """Rank 0 writes the full weights, EMA and optimizer (gathered first under FSDP2: a LoRA run)."""
    # collectives: every rank calls these
    model_sd = _adapter_full(run.raw) if run.cfg.lora_rank else _full_state(run.model, run.raw, run.use_fsdp)
    optim_sd = _full_optim(run.model, run.opt, run.use_fsdp)
    ema_sd = run.ema.full() if run.ema else None
    if run.rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        _write_weights(run.cfg, tmp, model_sd, ema_sd)
        torch.save({"optimizer": optim_sd, "scheduler": run.sched.state_dict(), **extra}, tmp / "trainer.pt.part")


def _save_sharded(run: _Run, tmp: Path, step: int, extra: dict) -> None:
    """Every rank writes its shards of model, optimizer and EMA to ``tmp/dcp/`` (no gather). At the
    last step rank 0 also consolidates them from disk into the released-layout ``model.safetensors``
    / ``ema.safetensors`` for export (one full fp32 copy in rank 0's host memory, once per run)."""
    if run.rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    _barrier()
    dist_ckpt.save(tmp / dist_ckpt.DCP_DIR, run.model, run.opt, run.ema)  # collective
    if run.rank == 0:
        if step == run.cfg.steps:
            dist_ckpt.export_safetensors(tmp / dist_ckpt.DCP_DIR, tmp)
        state = {"optimizer": None, "state": dist_ckpt.DCP_DIR, "scheduler": run.sched.state_dict(), **extra}
        torch.save(state, tmp / "trainer.pt.part")


def _adapter_full(raw: S3DiT) -> dict[str, torch.Tensor]:
    """A LoRA run's adapters, gathered whole on the CPU (each FSDP2 shard's ``full_tensor``: every
    rank calls this, in the same order); the frozen base is never gathered or written."""
    return {n: (p.full_tensor() if hasattr(p, "full_tensor") else p).detach().cpu() for n, p in adapter_state(raw).items()}


def _write_weights(cfg: TrainConfig, folder: Path, model_sd: dict, ema_sd: dict | None) -> None:
    """Rank 0: the model and EMA files of a checkpoint, in the released layout, or for a LoRA run
    the adapters in diffusers' LoRA format (``ZImagePipeline.load_lora_weights`` reads them as they are)."""
    from safetensors.torch import save_file

    if cfg.lora_rank:
        alpha = cfg.lora_alpha or cfg.lora_rank
        save_adapter(folder / ADAPTER_FILE, model_sd, cfg.lora_rank, alpha)
        if ema_sd is not None:
            save_adapter(folder / EMA_ADAPTER_FILE, ema_sd, cfg.lora_rank, alpha)
        return
    save_file({k: v.contiguous() for k, v in model_sd.items()}, str(folder / "model.safetensors"))
    if ema_sd is not None:
        save_file(ema_sd, str(folder / "ema.safetensors"))


def _check_replicas(digest: str | None, step: int) -> None:
    """DDP keeps replicas equal; say so loudly if they are not."""
    if digest is None or _dist()[1] <= 1:
        return
    import torch.distributed as dist

    digests: list = [None] * _dist()[1]
    dist.all_gather_object(digests, digest)
    if len(set(digests)) != 1:
        raise RuntimeError(f"DDP replicas diverged at step {step}: parameter digests per rank {digests}")


def _publish_checkpoint(tmp: Path, final: Path, keep: int) -> None:
    """Rank 0: mark ``tmp`` complete, move it to ``final``, point ``latest`` at it, prune old ones."""
    root = final.parent
    os.replace(tmp / "trainer.pt.part", tmp / "trainer.pt")  # trainer.pt last: marks the folder complete
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    (root / "latest.part").write_text(final.name)
    os.replace(root / "latest.part", root / "latest")
    for old in sorted(p for p in root.glob("step_*") if not p.name.endswith(".tmp"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def param_digest(model) -> str:
    """SHA-1 of every trained parameter's bytes, in name order: equal on all DDP ranks after every
    step (a LoRA run's frozen base cannot drift and is not hashed: gigabytes per checkpoint)."""
    import hashlib

    h = hashlib.sha1()
    for name, p in sorted((n, p) for n, p in model.named_parameters() if p.requires_grad):
        h.update(name.encode())
        h.update(p.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


# ----------------------------------------------------------------------------- batches -> model inputs


class LazyEncoders:
    """The configured encoders, each loaded on first use. Batches from pre-encoded shards carry
    ``latents`` and ``cap_feats``, so the text encoder (8 GB for Qwen3-4B) is never loaded and the
    VAE only when sample images are decoded. Tiny random encoders are built under a forked RNG so
    building them late does not move the global random state."""

    def __init__(self, cfg: TrainConfig, device, dtype):
        self.cfg, self.device, self.dtype = cfg, device, dtype
        self._vae = self._text = None

    @property
    def vae(self):
        if self._vae is None and (self.cfg.vae_path or self.cfg.tiny_encoders):
            from training.encoders import LatentEncoder, tiny_vae

            with torch.random.fork_rng(devices=[]):
                self._vae = (
                    LatentEncoder(tiny_vae(self.cfg.seed), self.device)
                    if self.cfg.tiny_encoders and not self.cfg.vae_path
                    else LatentEncoder.from_pretrained(self.cfg.vae_path, self.device, self.dtype)
                )
        return self._vae

    @property
    def text(self):
        if self._text is None and (self.cfg.text_encoder_path or self.cfg.tiny_encoders):
            from training.encoders import TextEncoder, tiny_text_encoder

            with torch.random.fork_rng(devices=[]):
                self._text = (
                    tiny_text_encoder(model_config(self.cfg).cap_feat_dim, self.cfg.seed, self.device)
                    if self.cfg.tiny_encoders and not self.cfg.text_encoder_path
                    else TextEncoder.from_pretrained(self.cfg.text_encoder_path, self.device, self.dtype)
                )
        return self._text

    @property
    def loaded(self) -> list[str]:
        return [n for n, e in (("vae", self._vae), ("text", self._text)) if e is not None]


def _to_inputs(batch: dict, encoders, device, cap_dim: int) -> tuple[list[torch.Tensor], list[torch.Tensor], list[str]]:
    captions = list(batch.get("captions") or [])
    if "latents" in batch:
        lat = [torch.as_tensor(x).float() for x in batch["latents"]]
    elif "images" in batch:
        if encoders is None or encoders.vae is None:
            raise ValueError("batches carry images but no VAE is configured: set vae_path (or tiny_encoders)")
        lat = encoders.vae.encode(batch["images"])
    else:
        raise ValueError(f"a batch needs 'latents' or 'images'; got keys {sorted(batch)}")
    if "cap_feats" in batch:
        feats = [torch.as_tensor(f).float() for f in batch["cap_feats"]]
    elif captions:
        if encoders is None or encoders.text is None:
            raise ValueError("batches carry captions but no text encoder is configured: set text_encoder_path")
        feats = encoders.text.encode(captions)
    else:
        raise ValueError(f"a batch needs 'cap_feats' or 'captions'; got keys {sorted(batch)}")
    real = next((f for f in feats if len(f)), None)
    if real is not None and real.shape[-1] != cap_dim:
        raise ValueError(f"text features are {real.shape[-1]}-d but the model expects cap_feat_dim={cap_dim}")
    feats = [f if len(f) else _null_caption(cap_dim, f.device) for f in feats]  # an empty caption is unconditional
    # non_blocking: a host-to-device copy from pageable memory is staged at once, without waiting
    # for the steps still queued on the GPU (a blocking copy synchronises the stream)
    return [x.to(device, non_blocking=True) for x in lat], [f.to(device, non_blocking=True) for f in feats], captions


def _sources(batch: dict, encoders, device) -> list[torch.Tensor] | None:
    """An editing batch's source latents (omni mode: ``S3DiT.forward(sources=...)``), None for a
    text-to-image batch. Pair shards hold images only, so sources are always encoded here."""
    if "sources" not in batch:
        return None
    if encoders is None or encoders.vae is None:
        raise ValueError("editing batches carry source images but no VAE is configured: set vae_path (or tiny_encoders)")
    return [x.to(device, non_blocking=True) for x in encoders.vae.encode(batch["sources"])]


def _null_caption(cap_dim: int, device) -> torch.Tensor:
    """The unconditional caption: one all-zero feature vector (embeds to the caption embedder's bias)."""
    return torch.zeros(1, cap_dim, device=device)


# ----------------------------------------------------------------------------- samples


def _save_samples(path: Path, images: list, captions: list[str]) -> None:
    import numpy as np
    from PIL import Image

    tiles = [Image.fromarray(np.asarray(im)) for im in images]
    w, h = sum(t.width for t in tiles), max(t.height for t in tiles)
    grid = Image.new("RGB", (w, h))
    x = 0
    for t in tiles:
        grid.paste(t, (x, 0))
        x += t.width
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)
    path.with_suffix(".json").write_text(json.dumps({"captions": captions}, ensure_ascii=False, indent=1))


def _latent_preview(z: torch.Tensor):
    """Without a VAE: the first three latent channels, min-max scaled, as an RGB picture."""
    x = z[:3].float()
    x = (x - x.amin()) / (x.amax() - x.amin() + 1e-6)
    return (x * 255).byte().permute(1, 2, 0).cpu().numpy()


# ----------------------------------------------------------------------------- the loop


@dataclass
class _Run:
    """What a training run holds from setup to the last step (the same on every step)."""

    cfg: TrainConfig
    mcfg: S3DiTConfig
    data: Iterable[dict]
    encoders: Any
    log: Callable[[str], None]
    out: Path
    device: torch.device
    rank: int
    world: int
    bf16: bool
    ckpt: Path | None  # the checkpoint resumed from, if any
    raw: S3DiT
    n_params: int
    model: Any  # ``raw``, or its DDP / FSDP2 wrapper
    use_fsdp: bool
    ema: EMA | None
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LambdaLR
    gen: torch.Generator  # noise, t, caption dropout: per rank
    autocast: Any
    null: torch.Tensor  # the unconditional caption
    peak: float | None  # this device's dense bf16 peak TFLOPS, for MFU
    train_shift: TimeShift
    sample_shift: TimeShift


@dataclass
class _Progress:
    """What changes from step to step."""

    step: int
    epoch: int
    sample_conds: dict | None
    it: Iterator[dict]
    t_last: float = field(default_factory=time.perf_counter)  # when the log window opened
    t_start: float = field(default_factory=time.perf_counter)  # when this run's loop started (elapsed, ETA)
    start_step: int = 0  # the step this run started from (resumed runs: the checkpoint's)
    wait: float = 0.0  # seconds waiting for batches in the window
    excluded: float = 0.0  # seconds of checkpoints and sample images in the window (not training)
    window: list = field(default_factory=list)
    tbins: TBins = field(default_factory=TBins)
    last: dict = field(default_factory=dict)


def train(
    cfg: TrainConfig,
    data: Iterable[dict],
    *,
    encoders=None,
    device: torch.device | str | None = None,
    report: Callable[[dict], None] | None = None,
    log: Callable[[str], None] = print,
) -> dict:
    """Train for ``cfg.steps`` optimizer steps (continuing from the latest checkpoint if any).

    ``data`` yields batch dicts; a ``state_dict``/``load_state_dict``/``set_epoch`` protocol makes it
    resumable. ``report(metrics)`` is called at every log step on every rank (Ray Train's report).
    Returns the last metrics and the paths written."""
    run = _setup(cfg, data, encoders=encoders, device=device, log=log)
    step, epoch, sample_conds = _resume(run)
    if run.rank == 0:
        log(
            f"S3-DiT {cfg.model}: {run.n_params / 1e6:.1f}M params, world {run.world}, "
            f"{'FSDP2' if run.use_fsdp else 'DDP' if run.world > 1 else 'single process'}, "
            f"{'bf16' if run.bf16 else 'fp32'} on {run.device}, activation checkpointing "
            f"{'on' if run.raw.gradient_checkpointing else 'off'}{' (auto)' if cfg.grad_checkpoint is None else ''}"
        )
        if cfg.lora_rank:
            log(_lora_line(run))
    prog = _Progress(step=step, epoch=epoch, sample_conds=sample_conds, it=iter(data), start_step=step)
    run.model.train()
    while prog.step < cfg.steps:
        _train_step(run, prog, _next_batch(run, prog))
        _after_step(run, prog, report)
    return {"step": prog.step, "metrics": prog.last, "out_dir": str(run.out), "checkpoint": str(latest_checkpoint(run.out) or "")}


def _lora_line(run: _Run) -> str:
    """The start-up line of a LoRA run: what trains and what stays frozen."""
    cfg = run.cfg
    adapters = adapter_state(run.raw)
    n_train = sum(p.numel() for p in adapters.values())
    n_layers = len({n.rsplit(".lora_", 1)[0] for n in adapters})
    base = next(p for n, p in run.raw.named_parameters() if ".lora_" not in n).dtype
    line = (
        f"LoRA rank {cfg.lora_rank} alpha {cfg.lora_alpha or cfg.lora_rank:g} on {n_layers} linear layers "
        f"({', '.join(cfg.lora_targets)}): {n_train / 1e6:.2f}M trained parameters, base frozen in {str(base).removeprefix('torch.')}"
    )
    return line if cfg.init_from else line + " (warning: no init_from, the base is a random init)"


def _use_bf16(cfg: TrainConfig, device: torch.device) -> bool:
    return cfg.precision == "bf16" or (cfg.precision == "auto" and device.type == "cuda")


def _resolve_device(device: torch.device | str | None) -> torch.device:
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def _setup(cfg: TrainConfig, data: Iterable[dict], *, encoders, device, log) -> _Run:
    """Model (same initial weights on every rank, then released weights or the checkpoint's),
    its wrapper, EMA, optimizer, schedule and random generator."""
    rank, world = _dist()
    device = _resolve_device(device)
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    bf16 = _use_bf16(cfg, device)
    if encoders is None and (cfg.vae_path or cfg.text_encoder_path or cfg.tiny_encoders):
        encoders = LazyEncoders(cfg, device, torch.bfloat16 if bf16 else torch.float32)
    mcfg = model_config(cfg)
    ckpt = latest_checkpoint(out) if cfg.resume else None
    raw, model, use_fsdp = _build_wrapped(cfg, mcfg, ckpt, device, bf16, world)
    n_params = param_count(raw)
    if cfg.compile:
        for blk in raw.blocks():
            blk.compile(dynamic=True)
    ema = EMA(raw, cfg.ema_decay) if cfg.ema_decay > 0 else None
    opt, sched = _optimizer(cfg, raw, device)
    peak, why = _device_peak(cfg, device)
    if why and rank == 0:
        log(why)
    train_shift, sample_shift = time_shifts(cfg)
    return _Run(
        cfg=cfg,
        mcfg=mcfg,
        data=data,
        encoders=encoders,
        log=log,
        out=out,
        device=device,
        rank=rank,
        world=world,
        bf16=bf16,
        ckpt=ckpt,
        raw=raw,
        n_params=n_params,
        model=model,
        use_fsdp=use_fsdp,
        ema=ema,
        opt=opt,
        sched=sched,
        gen=torch.Generator(device).manual_seed(cfg.seed * 1000 + rank + 1),
        autocast=torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext(),
        null=_null_caption(mcfg.cap_feat_dim, device),
        peak=peak,
        train_shift=train_shift,
        sample_shift=sample_shift,
    )


def _fsdp_on(cfg: TrainConfig, world: int, n_params: int) -> bool:
    return world > 1 and (cfg.fsdp == "on" or (cfg.fsdp == "auto" and n_params > 1e9))


def _build_wrapped(cfg: TrainConfig, mcfg: S3DiTConfig, ckpt: Path | None, device: torch.device, bf16: bool, world: int):
    """(model, its DDP / FSDP2 wrapper or itself, whether FSDP2). Under FSDP2 the model is sharded
    before any weight is read (``_build_sharded``, or ``_build_lora_sharded`` for a LoRA run), so no
    rank holds it whole; otherwise it is built whole (``_build_model``), then wrapped in DDP."""
    if _fsdp_on(cfg, world, _planned_params(cfg, mcfg)):
        build = _build_lora_sharded if cfg.lora_rank else _build_sharded
        raw = build(cfg, mcfg, ckpt, device, bf16)
        return raw, raw, True
    raw = _build_model(cfg, mcfg, ckpt, device, bf16=bf16)
    return raw, (_wrap(raw, False, device, bf16) if world > 1 else raw), False


def _planned_params(cfg: TrainConfig, mcfg: S3DiTConfig) -> int:
    """The run's parameter count (a LoRA run's adapters included), counted on the meta device: it
    decides FSDP2 before anything is allocated. A bad ``lora_targets`` fails here, naming the field."""
    with torch.device("meta"):
        meta = S3DiT(mcfg)
    return param_count(meta) + (adapter_numel(meta, cfg.lora_rank, cfg.lora_targets) if cfg.lora_rank else 0)


def _build_sharded(cfg: TrainConfig, mcfg: S3DiTConfig, ckpt: Path | None, device: torch.device, bf16: bool) -> S3DiT:
    """An FSDP2-sharded model whose ranks hold only their shards of the weights, in fp32.

    Weights from a file (``init_from``, or an older checkpoint's ``model.safetensors``) and from a
    DCP checkpoint never pass through a full copy: the model is built on the meta device,
    ``fully_shard``-ed, ``to_empty``-ed, then each rank reads its rows of each tensor
    (``dist_ckpt.load_file_into_shards``; a DCP checkpoint is read in ``_resume``). A random init
    is built whole on rank 0 only (``_random_sharded``) and broadcast into every rank's shards."""
    torch.manual_seed(cfg.seed)
    source = None if dist_ckpt.is_dcp(ckpt) else ckpt / "model.safetensors" if ckpt is not None else cfg.init_from
    if ckpt is not None and source is not None and not Path(source).exists():
        raise ValueError(f"{ckpt} holds LoRA adapters, not a model: resume it with its lora_rank, or use another out_dir")
    if source is None and ckpt is None:
        raw = _random_sharded(mcfg, device, bf16, cfg.seed)
    else:
        with torch.device("meta"):
            raw = S3DiT(mcfg)
        _wrap(raw, True, device, bf16)
        raw.to_empty(device=device)
        if source is not None:
            dist_ckpt.load_file_into_shards(raw, source)
    raw.gradient_checkpointing = grad_checkpointing(cfg, param_count(raw))
    return raw


def seeded_model(mcfg: S3DiTConfig) -> S3DiT:
    """The random init on the CPU generator (seeded by the caller): the same weights on any device."""
    return S3DiT(mcfg)


def _random_sharded(mcfg: S3DiTConfig, device: torch.device, bf16: bool, seed: int) -> S3DiT:
    """Random init under FSDP2 with one full copy in the job, not one per rank: every rank shards an
    empty meta-device model, then ``_broadcast_seeded`` fills the shards from rank 0's seeded model.
    The weights equal ``seeded_model``'s on every rank (tests/training/test_dist_ckpt.py)."""
    with torch.device("meta"):
        raw = S3DiT(mcfg)
    _wrap(raw, True, device, bf16)
    raw.to_empty(device=device)
    _broadcast_seeded(raw, mcfg, seed)
    return raw


def _broadcast_seeded(raw: S3DiT, mcfg: S3DiTConfig, seed: int, dtype: torch.dtype = torch.float32, strict: bool = True) -> None:
    """Rank 0 builds the model that ``torch.manual_seed(seed)`` gives on the CPU (the init of one
    process; seeded right here, as building the sharded model may have drawn), cast to ``dtype`` tensor by
    tensor, and broadcasts it one tensor at a time into every rank's shards of ``raw``
    (``set_model_state_dict(broadcast_from_rank0=True)``): the other ranks never hold it whole.
    ``strict=False`` leaves what the seeded model lacks (a LoRA run's adapters) to the caller."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    full = {}
    if _dist()[0] == 0:
        torch.manual_seed(seed)
        full = seeded_model(mcfg).to(dtype).state_dict()
    opts = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True, strict=strict)
    set_model_state_dict(raw, full, options=opts)


def _build_lora_sharded(cfg: TrainConfig, mcfg: S3DiTConfig, ckpt: Path | None, device: torch.device, bf16: bool) -> S3DiT:
    """A LoRA run under FSDP2, sharded before any weight is read as a full fine-tune is
    (``_build_sharded``): loading the whole frozen base on every rank would cost each one 12 GB
    (6B model, bf16). The adapters are those of ``_build_lora_model`` (``_meta_lora``); after
    ``fully_shard`` and ``to_empty`` each rank reads its rows of the base from ``init_from``, or
    gets them from rank 0's random init (the seed's, as in one process), then its adapter rows."""
    dtype = torch.bfloat16 if bf16 else torch.float32
    raw, adapters = _meta_lora(cfg, mcfg, ckpt, dtype)
    _wrap(raw, True, device, bf16)
    raw.to_empty(device=device)
    if cfg.init_from:
        dist_ckpt.load_file_into_shards(raw, cfg.init_from, skip=adapters)
    else:
        _broadcast_seeded(raw, mcfg, cfg.seed, dtype, strict=False)
    set_adapter(raw, adapters, source="the adapters")
    return raw


def _meta_lora(cfg: TrainConfig, mcfg: S3DiTConfig, ckpt: Path | None, dtype: torch.dtype) -> tuple[S3DiT, dict]:
    """(a meta-device model with LoRA layers, their initial values whole on the CPU). ``apply_lora``
    on a meta base keeps the adapters real, so their values are the seed's, bit for bit those of a
    1-process run, or a resumed run's ``adapter.safetensors`` (checked against the layers here,
    before any base weight is read); the adapters then go to meta too, to be sharded with the rest."""
    with torch.device("meta"):
        raw = S3DiT(mcfg)
    raw.gradient_checkpointing = grad_checkpointing(cfg, param_count(raw))
    apply_lora(raw, cfg.lora_rank, cfg.lora_alpha, cfg.lora_targets, seed=cfg.seed, base_dtype=dtype)
    if ckpt is not None:
        set_adapter(raw, load_adapter(ckpt / ADAPTER_FILE)[0], source=str(ckpt / ADAPTER_FILE))
    adapters = {n: p.detach().clone() for n, p in adapter_state(raw).items()}
    return raw.to("meta"), adapters


GRAD_CHECKPOINT_AUTO_PARAMS = 1e9
"""``grad_checkpoint: null`` (auto) turns activation checkpointing on from this many parameters (and for
the ``6b`` config): without it a block saves about 373 KiB of activations per token at the 6B size, so a
16k-token step over 34 blocks would hold about 198 GiB."""


def grad_checkpointing(cfg: TrainConfig, n_params: int) -> bool:
    """Whether blocks recompute their activations in backward: ``cfg.grad_checkpoint`` when set, else
    (auto) on for models of >= 1B parameters or the ``6b`` config, off for ``tiny`` / ``small``."""
    if cfg.grad_checkpoint is not None:
        return cfg.grad_checkpoint
    return cfg.model == "6b" or n_params >= GRAD_CHECKPOINT_AUTO_PARAMS


def _build_model(cfg: TrainConfig, mcfg: S3DiTConfig, ckpt: Path | None, device: torch.device, bf16: bool = False) -> S3DiT:
    """The model in fp32 (master weights; bf16 compute comes from autocast / FSDP's policy): random
    init, or the released weights of ``init_from``, or the checkpoint resumed from. Weights from a
    file are cast to fp32 tensor by tensor as they are assigned to a meta-device model
    (``load_safetensors``), so bf16 files give fp32 masters without a second full copy.
    With ``lora_rank``: see ``_build_lora_model``."""
    torch.manual_seed(cfg.seed)
    if cfg.lora_rank:
        return _build_lora_model(cfg, mcfg, ckpt, device, bf16)
    if dist_ckpt.is_dcp(ckpt):  # an FSDP2 run's shards, resumed here on another layout: read in _resume
        with torch.device("meta"):
            raw = S3DiT(mcfg)
        raw.to_empty(device=device)
        raw.gradient_checkpointing = grad_checkpointing(cfg, param_count(raw))
        return raw
    if ckpt is not None and not (ckpt / "model.safetensors").exists():
        raise ValueError(f"{ckpt} holds LoRA adapters, not a model: resume it with its lora_rank, or use another out_dir")
    if ckpt is not None and cfg.init_from:  # the checkpoint supersedes init_from: read only it
        raw = load_safetensors(ckpt / "model.safetensors", mcfg, device=device, dtype=torch.float32)
    elif cfg.init_from:
        raw = load_safetensors(cfg.init_from, mcfg, device=device, dtype=torch.float32)
    else:
        raw = S3DiT(mcfg)  # random init on the CPU generator: the same weights on every rank and device
        if ckpt is not None:
            from safetensors.torch import load_file

            raw.load_state_dict(load_file(str(ckpt / "model.safetensors")))
    raw.gradient_checkpointing = grad_checkpointing(cfg, param_count(raw))
    raw.to(device)
    return raw


def _build_lora_model(cfg: TrainConfig, mcfg: S3DiTConfig, ckpt: Path | None, device: torch.device, bf16: bool) -> S3DiT:
    """A frozen base with trainable adapters. The base (``init_from``, else the seed's random init:
    the same on every rank and on resume) is held in the compute dtype, bf16 under autocast: frozen
    weights need no fp32 master, which halves the 6B model's 24.6 GB. Adapters are fp32; on resume
    they come from the checkpoint's ``adapter.safetensors``. This builds the whole base: one process
    or DDP; under FSDP2 ``_build_lora_sharded`` reads only each rank's shards."""
    dtype = torch.bfloat16 if bf16 else torch.float32
    raw = load_safetensors(cfg.init_from, mcfg, device=device, dtype=dtype) if cfg.init_from else S3DiT(mcfg)
    raw.gradient_checkpointing = grad_checkpointing(cfg, param_count(raw))
    apply_lora(raw, cfg.lora_rank, cfg.lora_alpha, cfg.lora_targets, seed=cfg.seed, base_dtype=dtype)
    if ckpt is not None:
        set_adapter(raw, load_adapter(ckpt / ADAPTER_FILE)[0], source=str(ckpt / ADAPTER_FILE))
    raw.to(device)
    return raw


def _optimizer(cfg: TrainConfig, raw: S3DiT, device: torch.device):
    """AdamW over the trained parameters (a LoRA run's frozen base gets no moments; no weight decay on
    biases, norms and pad tokens) and the warm-up (+ cosine) schedule."""
    decay, no_decay = [], []
    for n, p in raw.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim < 2 or "pad_token" in n else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    opt = torch.optim.AdamW(
        [g for g in groups if g["params"]],
        lr=cfg.lr,
        betas=cfg.betas,
        fused=device.type == "cuda",
    )

    def lr_factor(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        if cfg.schedule == "cosine":
            prog = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
            return 0.5 * (1 + math.cos(math.pi * min(1.0, prog)))
        return 1.0

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)


def _device_peak(cfg: TrainConfig, device: torch.device) -> tuple[float | None, str | None]:
    """(peak TFLOPS for MFU, or None; why there is no MFU, for the log)."""
    if cfg.peak_tflops:
        return cfg.peak_tflops, None
    if device.type != "cuda":
        return None, None
    name = torch.cuda.get_device_name(device)
    peak = peak_tflops(name)
    why = None if peak else f"MFU not reported: no dense bf16 peak known for {name!r}; set peak_tflops (TFLOPS of one device) in the config"
    return peak, why


def _resume(run: _Run) -> tuple[int, int, dict | None]:
    """Optimizer, schedule, EMA and this rank's generator and data position from ``run.ckpt``.
    Returns (step, epoch, sample prompts); (0, 0, None) for a fresh run."""
    ckpt = run.ckpt
    if ckpt is None:
        if hasattr(run.data, "set_epoch"):
            run.data.set_epoch(0)
        return 0, 0, None
    tr = torch.load(ckpt / "trainer.pt", map_location="cpu", weights_only=False)
    if dist_ckpt.is_dcp(ckpt) and not run.cfg.lora_rank:
        _resume_sharded(run, ckpt / dist_ckpt.DCP_DIR)
    else:
        _load_optim(run.model, run.opt, tr["optimizer"], run.use_fsdp)
        _resume_ema(run, ckpt)
    run.sched.load_state_dict(tr["scheduler"])
    rs = ckpt / f"rank_{run.rank}.pt"
    if rs.exists():
        st = torch.load(rs, map_location="cpu", weights_only=False)
        run.gen.set_state(st["generator"])
        if st["data"] is not None and hasattr(run.data, "load_state_dict"):
            run.data.load_state_dict(st["data"])
    if run.rank == 0:
        note = _ranks_changed(ckpt, run.world)
        if note:
            run.log(f"warning: {note}")
        run.log(f"resumed from {ckpt} at step {tr['step']}")
    return tr["step"], tr["epoch"], tr.get("sample_conds")


def _ranks_changed(ckpt: Path, world: int) -> str | None:
    """What a resume on another number of ranks loses, in words (None when nothing): each rank's
    noise generator and data position live in its ``rank_<r>.pt``, so a rank without one starts
    both fresh, and the positions of ranks this run does not have are dropped (their shards' order
    starts again). Weights, optimizer, EMA and schedule resume exactly either way."""
    saved = sorted(int(p.stem.removeprefix("rank_")) for p in ckpt.glob("rank_*.pt") if p.stem.removeprefix("rank_").isdigit())
    fresh = [r for r in range(world) if r not in saved]
    dropped = [r for r in saved if r >= world]
    if not fresh and not dropped:
        return None
    what = f"checkpoint of {len(saved)} rank(s) resumed on {world}"
    if fresh:
        what += f"; data and noise restart fresh on rank(s) {_ranks(fresh)}"
    if dropped:
        what += f"; the data positions of rank(s) {_ranks(dropped)} are dropped"
    return what


def _ranks(rs: list[int]) -> str:
    return ", ".join(map(str, rs[:8])) + (f" (+{len(rs) - 8} more)" if len(rs) > 8 else "")


def _resume_sharded(run: _Run, folder: Path) -> None:
    """Weights, optimizer and EMA from a DCP folder, resharded onto this run's layout (FSDP2 on any
    number of ranks, DDP, or one process): each rank reads what it holds, nothing is gathered."""
    dist_ckpt.load_model(folder, run.model)
    if not dist_ckpt.load_optim_ema(folder, run.model, run.opt, run.ema) and run.ema is not None:
        run.ema.reset()  # saved without an EMA: restart the average from the loaded weights


def _resume_ema(run: _Run, ckpt: Path) -> None:
    """The EMA from ``ema.safetensors``, or a LoRA run's from ``ema_adapter.safetensors``."""
    if run.ema is None:
        return
    if run.cfg.lora_rank:
        if (ckpt / EMA_ADAPTER_FILE).exists():
            run.ema.load(load_adapter(ckpt / EMA_ADAPTER_FILE)[0])
    elif (ckpt / "ema.safetensors").exists():
        from safetensors.torch import load_file

        run.ema.load(load_file(str(ckpt / "ema.safetensors")))


def _next_batch(run: _Run, prog: _Progress) -> dict:
    """The next batch, starting a new epoch when the source runs out; the wait is timed."""
    t0 = time.perf_counter()
    try:
        batch = next(prog.it)
    except StopIteration:
        prog.epoch += 1
        if hasattr(run.data, "set_epoch"):
            run.data.set_epoch(prog.epoch)
        prog.it = iter(run.data)
        batch = next(prog.it, None)
        if batch is None:
            raise ValueError(
                "the data source yielded no batches: this rank's share of the shards holds no usable sample "
                "(fewer rows than ranks, a loader filter that keeps nothing, or every image skipped)"
            ) from None
    prog.wait += time.perf_counter() - t0
    return batch


def _record_sample_conds(prog: _Progress, count: int, lat, feats, caps, src) -> None:
    """The prompts the periodic samples use, from the first batch of each kind: text-to-image at
    the top level of ``prog.sample_conds`` (as checkpoints have always stored it), editing under
    ``"edit"`` with its source latents. The mixed loader draws the same kinds on every rank, so
    under FSDP every rank samples the same kinds (its forward passes are collective)."""
    k = min(count, len(lat))
    conds = {"shapes": [tuple(x.shape) for x in lat[:k]], "feats": [f.cpu() for f in feats[:k]], "captions": caps[:k]}
    have = prog.sample_conds or {}
    if src is None and "shapes" not in have:
        prog.sample_conds = {**have, **conds}
    elif src is not None and "edit" not in have:
        prog.sample_conds = {**have, "edit": {**conds, "sources": [z.cpu() for z in src[:k]]}}


def _train_step(run: _Run, prog: _Progress, batch: dict) -> None:
    """One optimizer step on ``batch``; its loss and sizes join the log window."""
    cfg, mcfg, gen = run.cfg, run.mcfg, run.gen
    lat, feats, caps = _to_inputs(batch, run.encoders, run.device, mcfg.cap_feat_dim)
    src = _sources(batch, run.encoders, run.device)
    if cfg.sample_count:
        _record_sample_conds(prog, cfg.sample_count, lat, feats, caps, src)
    if cfg.caption_dropout > 0:
        feats = [run.null if d else f for f, d in zip(feats, _caption_drop(gen, len(feats), cfg.caption_dropout))]
    n_tok = [x.shape[-2] * x.shape[-1] // mcfg.patch_size**2 for x in lat]
    t = sample_t(torch.tensor(n_tok).to(run.device, non_blocking=True), gen, cfg.t_mean, cfg.t_std, run.train_shift)
    with run.autocast:  # an editing batch: the source latents join each sample's sequence (omni mode)
        loss, per = flow_loss(run.model if src is None else partial(run.model, sources=src), lat, feats, t, gen)
    if src is not None:  # the source's tokens are computed too: they count in tokens/s and MFU
        n_tok = [n + z.shape[-2] * z.shape[-1] // mcfg.patch_size**2 for n, z in zip(n_tok, src)]
    loss.backward()
    gnorm = _optimizer_step(run, prog.step)
    prog.step += 1
    if cfg.log_sample_ids:
        _log_sample_ids(run, prog, batch, loss)
    prog.window.append(
        (
            loss.detach(),
            gnorm.detach(),
            t.detach(),
            per,
            len(lat),
            sum(n_tok),
            sum(len(f) for f in feats),
            sum(flops_per_sample(mcfg, n, len(f)) for n, f in zip(n_tok, feats)),
        )
    )


_SIDE_STREAMS: dict = {}


def _caption_drop(gen: torch.Generator, n: int, p: float) -> list[bool]:
    """Which of ``n`` captions to drop: ``rand < p`` from ``gen``, the same numbers as always.

    The answer is needed on the host (a dropped caption has another length). On CUDA the draw runs
    on a side stream, so reading it back waits for this one small kernel instead of for the previous
    step still queued on the main stream: Philox numbers depend only on the generator's seed and the
    offset reserved when the kernel is launched, not on the stream that runs it."""
    if gen.device.type != "cuda":
        return (torch.rand(n, generator=gen, device=gen.device) < p).tolist()
    side = _SIDE_STREAMS.get(gen.device)
    if side is None:
        side = _SIDE_STREAMS[gen.device] = torch.cuda.Stream(gen.device)
    with torch.cuda.stream(side):
        drop = torch.rand(n, generator=gen, device=gen.device) < p
        return drop.cpu().tolist()  # synchronises the side stream only


def _optimizer_step(run: _Run, step: int) -> torch.Tensor:
    """Clip, step, schedule, zero the gradients, update the EMA; returns the gradient norm."""
    clip = run.cfg.grad_clip if run.cfg.grad_clip > 0 else float("inf")
    gnorm = torch.nn.utils.clip_grad_norm_(run.raw.parameters(), clip)
    gnorm = gnorm.full_tensor() if hasattr(gnorm, "full_tensor") else gnorm  # FSDP2: a DTensor
    run.opt.step()
    run.sched.step()
    run.opt.zero_grad(set_to_none=True)
    if run.ema is not None:
        run.ema.update(step)
    return gnorm


def _log_sample_ids(run: _Run, prog: _Progress, batch: dict, loss: torch.Tensor) -> None:
    ranks_dir = run.out / "ranks"
    ranks_dir.mkdir(exist_ok=True)
    with (ranks_dir / f"rank_{run.rank}.jsonl").open("a") as f:
        f.write(
            json.dumps(
                {"step": prog.step, "epoch": prog.epoch, "ids": list(batch.get("ids") or []), "loss": round(float(loss.detach()), 6)}
            )
            + "\n"
        )


def _after_step(run: _Run, prog: _Progress, report: Callable[[dict], None] | None) -> None:
    """Log, checkpoint and sample when their step comes."""
    cfg, step = run.cfg, prog.step
    if step % cfg.log_every == 0 or step == cfg.steps:
        _log_metrics(run, prog, report)
    if step % cfg.ckpt_every == 0 or (cfg.ckpt_final and step == cfg.steps):
        t0 = _clock(run.device)
        extra = {"step": step, "epoch": prog.epoch, "sample_conds": prog.sample_conds, "config": cfg.model_dump()}
        path = _save_checkpoint(run, step, extra)
        if run.rank == 0:
            run.log(f"checkpoint {path}")
        prog.excluded += _clock(run.device) - t0
    if prog.sample_conds and ((cfg.sample_every and step % cfg.sample_every == 0) or step == cfg.steps):
        t0 = _clock(run.device)
        if "shapes" in prog.sample_conds:
            _sample(run, prog.sample_conds, run.out / "samples" / f"step_{step:08d}.png")
        if "edit" in prog.sample_conds:  # omni: source | edited result, side by side
            _sample(run, prog.sample_conds["edit"], run.out / "samples" / f"step_{step:08d}-edit.png")
        run.model.train()
        prog.excluded += _clock(run.device) - t0


def _clock(device: torch.device) -> float:
    """``perf_counter`` once the work queued on ``device`` is done, so that GPU time is charged to the
    code that queued it (the last training step, not the checkpoint that follows it)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def _log_metrics(run: _Run, prog: _Progress, report: Callable[[dict], None] | None) -> None:
    prog.last = _log_window(run, prog)
    prog.window, prog.wait, prog.excluded, prog.t_last = [], 0.0, 0.0, time.perf_counter()
    if run.rank == 0:
        with (run.out / "metrics.jsonl").open("a") as f:
            f.write(json.dumps(prog.last) + "\n")
        run.log(format_metrics(prog.last, run.cfg.steps))
    if report is not None:
        report(prog.last)


def _log_window(run: _Run, prog: _Progress) -> dict:
    """The metrics record for the steps since the last log line: loss and grad norm averaged over
    ranks, throughput and MFU summed over ranks (``window_throughput``)."""
    import torch.distributed as dist

    window, tbins, world = prog.window, prog.tbins, run.world
    losses = torch.stack([w[0] for w in window]).float()
    stats = torch.stack([losses.mean(), torch.stack([w[1] for w in window]).float().mean()]).to(run.device)
    if world > 1:
        dist.all_reduce(stats)
        stats /= world
    loss, gnorm = float(stats[0]), float(stats[1])  # waits for the window's last step (and for every rank)
    elapsed = time.perf_counter() - prog.t_last
    for w in window:
        tbins.add(w[2].cpu(), w[3].cpu())
    samples, img_tok, txt_tok, flops = (sum(w[i] for w in window) for i in (4, 5, 6, 7))
    peak = run.peak if run.peak else math.nan  # NaN: one unknown peak turns the MFU off
    samples, tokens, flops, wait, peak_sum = _over_ranks([samples, img_tok + txt_tok, flops, prog.wait, peak], "sum", run.device)
    elapsed, excluded = _over_ranks([elapsed, prog.excluded], "max", run.device)
    m = {
        "step": prog.step,
        "epoch": prog.epoch,
        "loss": round(loss, 6),
        "grad_norm": round(gnorm, 4),
        "lr": run.sched.get_last_lr()[0],
        **window_throughput(
            samples=samples,
            tokens=tokens,
            flops=flops,
            data_wait_s=wait,
            elapsed_s=elapsed,
            excluded_s=excluded,
            world=world,
            peak_tflops_sum=peak_sum,
        ),
        **{k: round(v, 6) for k, v in tbins.means().items()},
    }
    if run.device.type == "cuda":
        m["peak_mem_gb"] = round(torch.cuda.max_memory_allocated(run.device) / 2**30, 2)
    if hasattr(run.data, "report"):
        rep = run.data.report()
        m["padded_token_fraction"] = rep.get("padded_token_fraction")
        if "edit_batch_fraction" in rep:  # omni: the share of editing batches so far
            m["edit_batch_fraction"] = rep["edit_batch_fraction"]
    tbins.reset()
    return {**m, **run_timing(time.perf_counter() - prog.t_start, prog.step - prog.start_step, run.cfg.steps - prog.step)}


def run_timing(elapsed_s: float, steps_done: int, steps_left: int) -> dict:
    """``elapsed_s`` since this run's loop started and ``eta_s`` for the steps left at this run's
    mean pace (checkpoints and samples included: they are part of the wait)."""
    eta = elapsed_s / steps_done * steps_left if steps_done > 0 else None
    return {"elapsed_s": round(elapsed_s, 1), "eta_s": None if eta is None else round(eta, 1)}


def _over_ranks(values: list[float], op: str, device: torch.device) -> list[float]:
    """``values`` summed (``op="sum"``) or maximised (``"max"``) over ranks, in float64."""
    if _dist()[1] <= 1:
        return [float(v) for v in values]
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX)
    return t.tolist()


def window_throughput(
    *,
    samples: float,
    tokens: float,
    flops: float,
    data_wait_s: float,
    elapsed_s: float,
    excluded_s: float,
    world: int,
    peak_tflops_sum: float | None,
) -> dict:
    """Throughput of one log window, over all ranks (a pure function of the window's totals).

    ``samples``, ``tokens`` (image + text), model ``flops`` and ``data_wait_s`` are summed over
    ranks. ``elapsed_s`` is the wall time since the window opened and ``excluded_s`` the part of it
    spent writing checkpoints and sample images, each the largest over ranks (ranks wait for one
    another, so the slowest sets the pace); the training time is their difference. MFU divides the
    FLOPs by the training time and ``peak_tflops_sum``, the ranks' peaks summed (None or NaN when a
    rank's peak is unknown: no MFU)."""
    dt = max(elapsed_s - excluded_s, 1e-9)
    m = {
        "samples_per_s": round(samples / dt, 3),
        "tokens_per_s": round(tokens / dt, 1),
        "data_wait_fraction": round(data_wait_s / (world * dt), 4),
        "train_s": round(dt, 4),
        "ckpt_sample_s": round(excluded_s, 4),
    }
    if peak_tflops_sum is not None and math.isfinite(peak_tflops_sum) and peak_tflops_sum > 0:
        m["mfu"] = float(f"{flops / dt / (peak_tflops_sum * 1e12):.4g}")  # 4 significant digits: a CPU's MFU is ~1e-4
    return m


def format_metrics(m: dict, total: int) -> str:
    """One console line for a metrics record."""
    s = (
        f"step {m['step']}/{total} loss {m['loss']:.4f} gn {m['grad_norm']:.3f} lr {m['lr']:.2e} "
        f"{m['samples_per_s']:.2f} img/s {m['tokens_per_s']:.0f} tok/s wait {m['data_wait_fraction']:.0%}"
    )
    if "mfu" in m:
        s += f" mfu {m['mfu']:.1%}"
    if "peak_mem_gb" in m:
        s += f" mem {m['peak_mem_gb']:.1f}G"
    if m.get("elapsed_s") is not None:  # records of older runs have no timing
        s += f" elapsed {duration(m['elapsed_s'])}"
        s += f" eta {duration(m['eta_s'])}" if m.get("eta_s") is not None else ""
    return s


def duration(seconds: float) -> str:
    """12s, 3m05s, 2h07m: what a progress line shows for an elapsed time or an ETA."""
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def _sample(run: _Run, conds: dict, path: Path) -> None:
    """Euler + CFG from fixed noise for the saved sample prompts; rank 0 writes a PNG grid (for
    editing prompts, each source next to its edited result). Under FSDP every rank runs the
    forward (parameters are gathered collectively)."""
    if run.rank != 0 and not run.use_fsdp:
        return
    run.raw.eval()
    g = torch.Generator("cpu").manual_seed(run.cfg.seed)
    noise = [torch.randn(s, generator=g).to(run.device) for s in conds["shapes"]]
    feats = [f.to(run.device) for f in conds["feats"]]
    srcs = [z.to(run.device) for z in conds.get("sources") or []]
    model = run.raw
    if srcs:  # the conditional and the unconditional (guidance) halves both see the source
        model = partial(run.raw, sources=srcs * 2 if run.cfg.sample_guidance > 0 else srcs)
    with run.autocast:
        lat = euler_sample(
            model,
            noise,
            feats,
            [run.null] * len(feats),
            steps=run.cfg.sample_steps,
            guidance=run.cfg.sample_guidance,
            shift=run.sample_shift,
            patch=run.mcfg.patch_size,
        )
    if run.rank == 0:
        encoders = run.encoders
        decode = (
            (lambda zs: encoders.vae.decode(zs))
            if encoders is not None and encoders.vae is not None
            else (lambda zs: [_latent_preview(z) for z in zs])
        )
        imgs = decode(lat)
        if srcs:
            imgs = [im for pair in zip(decode(srcs), imgs) for im in pair]
        _save_samples(path, imgs, conds["captions"])
