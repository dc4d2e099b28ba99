"""The S3-DiT training loop: one readable function, single process or one rank of many.

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
loss curve step for step. Metrics go to ``<out>/metrics.jsonl`` and the console; sample images to
``<out>/samples/``.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from pathlib import Path

import torch

from training.flow import TBins, euler_sample, flow_loss, sample_t
from training.model import CONFIGS, S3DiT, S3DiTConfig, flops_per_sample, load_safetensors, param_count
from training.config import TrainConfig

__all__ = ["TrainConfig", "BatchList", "LazyEncoders", "param_digest", "train", "latest_checkpoint", "model_config", "format_metrics"]

PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "H800": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0}
"""Dense bf16 peak by GPU name, for model FLOPs utilisation (MFU)."""


def model_config(cfg: TrainConfig) -> S3DiTConfig:
    return CONFIGS[cfg.model](**cfg.model_overrides)


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

        set_optimizer_state_dict(model, opt, state, options=StateDictOptions(full_state_dict=True))
    else:
        opt.load_state_dict(state)


class EMA:
    """An fp32 exponential moving average of the parameters, sharded like them under FSDP2."""

    def __init__(self, raw: S3DiT, decay: float):
        self.decay = decay
        self.names = [n for n, _ in raw.named_parameters()]
        self.params = [p for _, p in raw.named_parameters()]
        self.shadow = [p.detach().float().clone() for p in self.params]

    @torch.no_grad()
    def update(self, step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step))   # warm-up: early averages are not stuck at init
        for e, p in zip(self.shadow, self.params):
            e.lerp_(p.detach().float(), 1 - d)

    def full(self) -> dict[str, torch.Tensor]:
        out = {}
        for n, e in zip(self.names, self.shadow):
            t = e.full_tensor() if hasattr(e, "full_tensor") else e
            out[n] = t.detach().cpu().contiguous()
        return out

    @torch.no_grad()
    def load(self, state: dict[str, torch.Tensor]) -> None:
        for n, e in zip(self.names, self.shadow):
            src = state[n].to(e.device if not hasattr(e, "full_tensor") else "cpu", torch.float32)
            if hasattr(e, "full_tensor"):   # DTensor: copy this rank's shard
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


def _save_checkpoint(out: Path, step: int, model, raw, ema, opt, sched, gen, data, extra: dict, use_fsdp: bool,
                     keep: int) -> Path:
    from safetensors.torch import save_file

    rank, _ = _dist()
    root = out / "checkpoints"
    final, tmp = root / f"step_{step:08d}", root / f"step_{step:08d}.tmp"
    model_sd = _full_state(model, raw, use_fsdp)        # collectives: every rank calls these
    optim_sd = _full_optim(model, opt, use_fsdp)
    ema_sd = ema.full() if ema else None
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        save_file({k: v.contiguous() for k, v in model_sd.items()}, str(tmp / "model.safetensors"))
        if ema_sd is not None:
            save_file(ema_sd, str(tmp / "ema.safetensors"))
        torch.save({"optimizer": optim_sd, "scheduler": sched.state_dict(), **extra}, tmp / "trainer.pt.part")
    _barrier()
    digest = None if use_fsdp else param_digest(raw)
    if digest is not None and _dist()[1] > 1:   # DDP keeps replicas equal; say so loudly if they are not
        import torch.distributed as dist

        digests: list = [None] * _dist()[1]
        dist.all_gather_object(digests, digest)
        if len(set(digests)) != 1:
            raise RuntimeError(f"DDP replicas diverged at step {step}: parameter digests per rank {digests}")
    torch.save({"generator": gen.get_state(), "data": data.state_dict() if hasattr(data, "state_dict") else None,
                "param_digest": digest}, tmp / f"rank_{rank}.pt")
    _barrier()
    if rank == 0:
        os.replace(tmp / "trainer.pt.part", tmp / "trainer.pt")   # trainer.pt last: marks the folder complete
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        (root / "latest.part").write_text(final.name)
        os.replace(root / "latest.part", root / "latest")
        for old in sorted(p for p in root.glob("step_*") if not p.name.endswith(".tmp"))[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    _barrier()
    return final


def param_digest(model) -> str:
    """SHA-1 of every parameter's bytes, in name order: equal on all DDP ranks after every step."""
    import hashlib

    h = hashlib.sha1()
    for name, p in sorted(model.named_parameters()):
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
                self._vae = (LatentEncoder(tiny_vae(self.cfg.seed), self.device) if self.cfg.tiny_encoders and not self.cfg.vae_path
                             else LatentEncoder.from_pretrained(self.cfg.vae_path, self.device, self.dtype))
        return self._vae

    @property
    def text(self):
        if self._text is None and (self.cfg.text_encoder_path or self.cfg.tiny_encoders):
            from training.encoders import TextEncoder, tiny_text_encoder

            with torch.random.fork_rng(devices=[]):
                self._text = (tiny_text_encoder(model_config(self.cfg).cap_feat_dim, self.cfg.seed, self.device)
                              if self.cfg.tiny_encoders and not self.cfg.text_encoder_path
                              else TextEncoder.from_pretrained(self.cfg.text_encoder_path, self.device, self.dtype))
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
    feats = [f if len(f) else _null_caption(cap_dim, f.device) for f in feats]   # an empty caption is unconditional
    return [x.to(device) for x in lat], [f.to(device) for f in feats], captions


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

def train(cfg: TrainConfig, data: Iterable[dict], *, encoders=None, device: torch.device | str | None = None,
          report: Callable[[dict], None] | None = None, log: Callable[[str], None] = print) -> dict:
    """Train for ``cfg.steps`` optimizer steps (continuing from the latest checkpoint if any).

    ``data`` yields batch dicts; a ``state_dict``/``load_state_dict``/``set_epoch`` protocol makes it
    resumable. ``report(metrics)`` is called at every log step on every rank (Ray Train's report).
    Returns the last metrics and the paths written."""
    rank, world = _dist()
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and device.type == "cuda")
    if encoders is None and (cfg.vae_path or cfg.text_encoder_path or cfg.tiny_encoders):
        encoders = LazyEncoders(cfg, device, torch.bfloat16 if bf16 else torch.float32)

    # model: same initial weights on every rank (same seed), then released weights or a checkpoint
    torch.manual_seed(cfg.seed)
    mcfg = model_config(cfg)
    raw = load_safetensors(cfg.init_from, mcfg) if cfg.init_from else S3DiT(mcfg)
    ckpt = latest_checkpoint(out) if cfg.resume else None
    if ckpt is not None:
        from safetensors.torch import load_file

        raw.load_state_dict(load_file(str(ckpt / "model.safetensors")))
    raw.gradient_checkpointing = cfg.grad_checkpoint
    raw.to(device)
    n_params = param_count(raw)
    use_fsdp = world > 1 and (cfg.fsdp == "on" or (cfg.fsdp == "auto" and n_params > 1e9))
    model = _wrap(raw, use_fsdp, device, bf16) if world > 1 else raw
    if cfg.compile:
        for blk in raw.blocks():
            blk.compile(dynamic=True)
    ema = EMA(raw, cfg.ema_decay) if cfg.ema_decay > 0 else None

    decay, no_decay = [], []
    for n, p in raw.named_parameters():
        (no_decay if p.ndim < 2 or "pad_token" in n else decay).append(p)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=cfg.lr, betas=cfg.betas, fused=device.type == "cuda")

    def lr_factor(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        if cfg.schedule == "cosine":
            prog = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
            return 0.5 * (1 + math.cos(math.pi * min(1.0, prog)))
        return 1.0

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)
    gen = torch.Generator(device).manual_seed(cfg.seed * 1000 + rank + 1)   # noise, t, dropout: per rank
    step, epoch, sample_conds = 0, 0, None
    if ckpt is not None:
        tr = torch.load(ckpt / "trainer.pt", map_location="cpu", weights_only=False)
        _load_optim(model, opt, tr["optimizer"], use_fsdp)
        sched.load_state_dict(tr["scheduler"])
        step, epoch, sample_conds = tr["step"], tr["epoch"], tr.get("sample_conds")
        if ema is not None and (ckpt / "ema.safetensors").exists():
            from safetensors.torch import load_file

            ema.load(load_file(str(ckpt / "ema.safetensors")))
        rs = ckpt / f"rank_{rank}.pt"
        if rs.exists():
            st = torch.load(rs, map_location="cpu", weights_only=False)
            gen.set_state(st["generator"])
            if st["data"] is not None and hasattr(data, "load_state_dict"):
                data.load_state_dict(st["data"])
        elif rank == 0:
            log(f"warning: {rs.name} missing (world size changed?): data and noise restart fresh on this rank")
        if rank == 0:
            log(f"resumed from {ckpt} at step {step}")
    elif hasattr(data, "set_epoch"):
        data.set_epoch(epoch)

    if rank == 0:
        log(f"S3-DiT {cfg.model}: {n_params / 1e6:.1f}M params, world {world}, "
            f"{'FSDP2' if use_fsdp else 'DDP' if world > 1 else 'single process'}, {'bf16' if bf16 else 'fp32'} on {device}")
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext()
    null = _null_caption(mcfg.cap_feat_dim, device)
    peak = cfg.peak_tflops or (next((v for k, v in PEAK_BF16_TFLOPS.items() if k in torch.cuda.get_device_name(device)),
                                    None) if device.type == "cuda" else None)
    metrics_file = out / "metrics.jsonl"
    tbins, window = TBins(), []
    t_last, wait, last = time.perf_counter(), 0.0, {}
    it = iter(data)
    model.train()

    while step < cfg.steps:
        t0 = time.perf_counter()
        try:
            batch = next(it)
        except StopIteration:
            epoch += 1
            if hasattr(data, "set_epoch"):
                data.set_epoch(epoch)
            it = iter(data)
            batch = next(it, None)
            if batch is None:
                raise RuntimeError("the data source yielded no batches") from None
        wait += time.perf_counter() - t0
        lat, feats, caps = _to_inputs(batch, encoders, device, mcfg.cap_feat_dim)
        if sample_conds is None and cfg.sample_count:
            k = min(cfg.sample_count, len(lat))
            sample_conds = {"shapes": [tuple(x.shape) for x in lat[:k]], "feats": [f.cpu() for f in feats[:k]],
                            "captions": caps[:k]}
        if cfg.caption_dropout > 0:
            drop = torch.rand(len(feats), generator=gen, device=gen.device) < cfg.caption_dropout
            feats = [null if d else f for f, d in zip(feats, drop.tolist())]
        n_tok = [x.shape[-2] * x.shape[-1] // mcfg.patch_size**2 for x in lat]
        t = sample_t(torch.tensor(n_tok, device=device), gen, cfg.t_mean, cfg.t_std)
        with autocast:
            loss, per = flow_loss(model, lat, feats, t, gen)
        loss.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(raw.parameters(), cfg.grad_clip if cfg.grad_clip > 0 else float("inf"))
        gnorm = gnorm.full_tensor() if hasattr(gnorm, "full_tensor") else gnorm   # FSDP2: a DTensor
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        if ema is not None:
            ema.update(step)
        step += 1
        if cfg.log_sample_ids:
            ranks_dir = out / "ranks"
            ranks_dir.mkdir(exist_ok=True)
            with (ranks_dir / f"rank_{rank}.jsonl").open("a") as f:
                f.write(json.dumps({"step": step, "epoch": epoch, "ids": list(batch.get("ids") or []),
                                    "loss": round(float(loss.detach()), 6)}) + "\n")
        window.append((loss.detach(), gnorm.detach(), t.detach(), per, len(lat), sum(n_tok), sum(len(f) for f in feats),
                       sum(flops_per_sample(mcfg, n, len(f)) for n, f in zip(n_tok, feats))))

        if step % cfg.log_every == 0 or step == cfg.steps:
            last = _log_window(window, tbins, step, cfg, sched, t_last, wait, world, device, peak, data, epoch)
            window, wait, t_last = [], 0.0, time.perf_counter()
            if rank == 0:
                with metrics_file.open("a") as f:
                    f.write(json.dumps(last) + "\n")
                log(format_metrics(last, cfg.steps))
            if report is not None:
                report(last)
        save_now = step % cfg.ckpt_every == 0 or (cfg.ckpt_final and step == cfg.steps)
        if save_now:
            extra = {"step": step, "epoch": epoch, "sample_conds": sample_conds, "config": cfg.model_dump()}
            path = _save_checkpoint(out, step, model, raw, ema, opt, sched, gen, data, extra, use_fsdp, cfg.keep_ckpts)
            if rank == 0:
                log(f"checkpoint {path}")
        if sample_conds and ((cfg.sample_every and step % cfg.sample_every == 0) or step == cfg.steps):
            _sample(raw, sample_conds, encoders, cfg, mcfg, null, device, autocast, out / "samples" / f"step_{step:08d}.png",
                    rank, use_fsdp)
            model.train()
    return {"step": step, "metrics": last, "out_dir": str(out), "checkpoint": str(latest_checkpoint(out) or "")}


def _log_window(window, tbins, step, cfg, sched, t_last, wait, world, device, peak, data, epoch) -> dict:
    import torch.distributed as dist

    losses = torch.stack([w[0] for w in window]).float()
    stats = torch.stack([losses.mean(), torch.stack([w[1] for w in window]).float().mean()]).to(device)
    if world > 1:
        dist.all_reduce(stats)
        stats /= world
    for w in window:
        tbins.add(w[2].cpu(), w[3].cpu())
    dt = max(time.perf_counter() - t_last, 1e-9)
    samples, img_tok, txt_tok, flops = (sum(w[i] for w in window) for i in (4, 5, 6, 7))
    m = {"step": step, "epoch": epoch, "loss": round(float(stats[0]), 6), "grad_norm": round(float(stats[1]), 4),
         "lr": sched.get_last_lr()[0], "samples_per_s": round(samples * world / dt, 3),
         "tokens_per_s": round((img_tok + txt_tok) * world / dt, 1), "data_wait_fraction": round(wait / dt, 4),
         **{k: round(v, 6) for k, v in tbins.means().items()}}
    if peak:
        m["mfu"] = round(flops / dt / (peak * 1e12), 4)
    if device.type == "cuda":
        m["peak_mem_gb"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    if hasattr(data, "report"):
        rep = data.report()
        m["padded_token_fraction"] = rep.get("padded_token_fraction")
    tbins.reset()
    return m


def format_metrics(m: dict, total: int) -> str:
    """One console line for a metrics record."""
    s = f"step {m['step']}/{total} loss {m['loss']:.4f} gn {m['grad_norm']:.3f} lr {m['lr']:.2e} " \
        f"{m['samples_per_s']:.2f} img/s {m['tokens_per_s']:.0f} tok/s wait {m['data_wait_fraction']:.0%}"
    if "mfu" in m:
        s += f" mfu {m['mfu']:.1%}"
    if "peak_mem_gb" in m:
        s += f" mem {m['peak_mem_gb']:.1f}G"
    return s


def _sample(raw, conds, encoders, cfg, mcfg, null, device, autocast, path: Path, rank: int, use_fsdp: bool) -> None:
    """Euler + CFG from fixed noise for the saved sample prompts; rank 0 writes a PNG grid.
    Under FSDP every rank runs the forward (parameters are gathered collectively)."""
    if rank != 0 and not use_fsdp:
        return
    raw.eval()
    g = torch.Generator("cpu").manual_seed(cfg.seed)
    noise = [torch.randn(s, generator=g).to(device) for s in conds["shapes"]]
    feats = [f.to(device) for f in conds["feats"]]
    with autocast:
        lat = euler_sample(raw, noise, feats, [null] * len(feats), steps=cfg.sample_steps,
                           guidance=cfg.sample_guidance, patch=mcfg.patch_size)
    if rank == 0:
        imgs = encoders.vae.decode(lat) if encoders is not None and encoders.vae is not None else \
            [_latent_preview(z) for z in lat]
        _save_samples(path, imgs, conds["captions"])
