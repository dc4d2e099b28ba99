"""Flow matching: the training objective and an Euler sampler, separate from the network (minRF).

Convention (the released Z-Image one): ``x0`` is Gaussian noise, ``x1`` is the data latent and

    x_t = t * x1 + (1 - t) * x0,        target velocity  v = dx_t/dt = x1 - x0,

so ``t = 0`` is pure noise and ``t = 1`` is data. Any ``model(latents, t, cap_feats) -> list``
plugs in (``training.model.S3DiT`` does).

Noise levels are shifted towards noise by a *time shift* ``sigma' = s sigma / (1 + (s - 1) sigma)``
(``TimeShift``): larger images keep more signal at the same noise level, so they need noisier
samples. ``s`` is either a constant (diffusers' ``FlowMatchEulerDiscreteScheduler`` with
``use_dynamic_shifting=False``) or resolution-dependent, ``s = e^mu`` with ``mu`` linear in the image
token count from 0.5 at 256 tokens (256² pixels) to 1.15 at 4096 tokens (1024²) (Flux / SD3;
``use_dynamic_shifting=True``).

- Training t (``sample_t``) is logit-normal: ``sigma = sigmoid(N(mean, std))``, shifted, which is
  ``sigmoid(N(mean + log s, std))``. Default: the resolution-dependent shift (``TRAIN_SHIFT``).
- Sampling (``timesteps``, ``euler_sample``) follows the released pipeline: ``sigma_i = 1 - i / n``,
  shifted. Default: the static ``s = 3.0`` of the released Z-Image-Turbo scheduler config
  (``SAMPLE_SHIFT``; ``"shift": 3.0, "use_dynamic_shifting": false``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

__all__ = [
    "shift_mu",
    "shift_sigma",
    "TimeShift",
    "TRAIN_SHIFT",
    "SAMPLE_SHIFT",
    "NO_SHIFT",
    "sample_t",
    "flow_loss",
    "TBins",
    "euler_sample",
    "timesteps",
]

BASE_TOKENS, MAX_TOKENS, BASE_SHIFT, MAX_SHIFT = 256, 4096, 0.5, 1.15


def shift_mu(
    image_tokens, base_tokens: int = BASE_TOKENS, max_tokens: int = MAX_TOKENS, base_shift: float = BASE_SHIFT, max_shift: float = MAX_SHIFT
):
    """The log time-shift for an image of ``image_tokens`` tokens (linear in the token count)."""
    m = (max_shift - base_shift) / (max_tokens - base_tokens)
    return base_shift + m * (image_tokens - base_tokens)


def shift_sigma(sigma, mu):
    """Flux's time shift of a noise level: sigmoid(logit(sigma) + mu)."""
    e = math.exp(mu) if not torch.is_tensor(mu) else mu.exp()
    return e * sigma / (1 + (e - 1) * sigma)


@dataclass(frozen=True)
class TimeShift:
    """The time shift of noise levels, ``sigma' = s sigma / (1 + (s - 1) sigma)``, as diffusers'
    ``FlowMatchEulerDiscreteScheduler`` configures it.

    ``dynamic=False``: a constant ``s = shift`` (1 = no shift). ``dynamic=True``: ``s = e^mu`` with
    ``mu`` linear in the image token count, ``base_shift`` at ``base_image_seq_len`` tokens to
    ``max_shift`` at ``max_image_seq_len`` (the exponential time shift; ``shift`` is then ignored,
    as in diffusers). The field names are those of the scheduler config."""

    shift: float = 3.0
    dynamic: bool = False
    base_shift: float = BASE_SHIFT
    max_shift: float = MAX_SHIFT
    base_image_seq_len: int = BASE_TOKENS
    max_image_seq_len: int = MAX_TOKENS

    def log_shift(self, image_tokens):
        """``log s`` for images of ``image_tokens`` tokens (a number or a tensor)."""
        if self.dynamic:
            return shift_mu(image_tokens, self.base_image_seq_len, self.max_image_seq_len, self.base_shift, self.max_shift)
        return math.log(self.shift)

    def apply(self, sigma, image_tokens):
        """The shifted noise level."""
        if self.dynamic:
            return shift_sigma(sigma, self.log_shift(image_tokens))
        return self.shift * sigma / (1 + (self.shift - 1) * sigma)


TRAIN_SHIFT = TimeShift(dynamic=True)
"""Training t: the resolution-dependent shift (Flux / SD3), this module's behaviour from the start."""
SAMPLE_SHIFT = TimeShift(shift=3.0, dynamic=False)
"""Sampling: the released Z-Image-Turbo ``scheduler/scheduler_config.json`` as public
re-implementations quote it (``"shift": 3.0``, ``"use_dynamic_shifting": false``; the file itself
was not available offline). ``docs/training.md`` says how to check a local copy."""
NO_SHIFT = TimeShift(shift=1.0)


def _check_shift(shift) -> TimeShift:
    if shift is None:
        return NO_SHIFT
    if not isinstance(shift, TimeShift):
        raise TypeError(f"shift must be a TimeShift or None (no shift), not {shift!r}")
    return shift


def sample_t(
    image_tokens: torch.Tensor,
    generator: torch.Generator | None = None,
    mean: float = 0.0,
    std: float = 1.0,
    shift: TimeShift | None = TRAIN_SHIFT,
) -> torch.Tensor:
    """One training t per sample: sigma = sigmoid(N(mean + log s(tokens), std)), t = 1 - sigma."""
    shift = _check_shift(shift)
    tok = image_tokens.float()
    z = torch.randn(tok.shape, generator=generator, device=generator.device if generator else tok.device)
    sigma = torch.sigmoid(z.to(tok.device) * std + mean + shift.log_shift(tok))
    return 1.0 - sigma


def flow_loss(model, x1: Sequence[torch.Tensor], cap_feats, t: torch.Tensor, generator: torch.Generator | None = None):
    """Mean squared velocity error. Returns (loss, per-sample losses (B,)).

    Each sample's error is averaged over its own elements, then samples are averaged, so an image
    counts once whatever its resolution."""
    x1 = list(x1)
    x0 = [
        torch.randn(x.shape, generator=generator, device=generator.device if generator else x.device).to(device=x.device, dtype=x.dtype)
        for x in x1
    ]
    tt = t.to(x1[0].device)
    xt = [tt[i] * a + (1 - tt[i]) * b for i, (a, b) in enumerate(zip(x1, x0))]
    pred = model(xt, tt, cap_feats)
    per = torch.stack([(p.float() - (a - b).float()).pow(2).mean() for p, a, b in zip(pred, x1, x0)])
    return per.mean(), per.detach()


class TBins:
    """Loss per timestep bin, accumulated between log lines: which noise levels are learnt."""

    def __init__(self, n: int = 4):
        self.n = n
        self.reset()

    def reset(self):
        self.sum = [0.0] * self.n
        self.cnt = [0] * self.n

    def add(self, t: torch.Tensor, losses: torch.Tensor) -> None:
        for ti, li in zip(t.tolist(), losses.tolist()):
            k = min(int(ti * self.n), self.n - 1)
            self.sum[k] += li
            self.cnt[k] += 1

    def means(self) -> dict[str, float]:
        """``{"loss_t0.00-0.25": ..., ...}`` for the bins that saw samples."""
        return {f"loss_t{k / self.n:.2f}-{(k + 1) / self.n:.2f}": self.sum[k] / self.cnt[k] for k in range(self.n) if self.cnt[k]}


def timesteps(steps: int, image_tokens: int, shift: TimeShift | None = SAMPLE_SHIFT) -> list[float]:
    """t from 0 (noise) to 1 (data) in ``steps`` Euler steps: ``sigma_i = 1 - i / steps``, shifted.

    The released pipeline's schedule: ``ZImagePipeline`` passes ``sigmas = linspace(1, 1/steps,
    steps)`` to the scheduler's ``set_timesteps``, which shifts them and appends 0 (tested against
    diffusers)."""
    shift = _check_shift(shift)
    out = []
    for i in range(steps + 1):
        sigma = 1 - i / steps
        if 0 < sigma < 1:
            sigma = shift.apply(sigma, image_tokens)
        out.append(1 - sigma)
    return out


@torch.no_grad()
def euler_sample(
    model,
    noise: Sequence[torch.Tensor],
    cap_feats,
    null_feats=None,
    steps: int = 30,
    guidance: float = 0.0,
    shift: TimeShift | None = SAMPLE_SHIFT,
    patch: int = 2,
) -> list[torch.Tensor]:
    """Integrate dx/dt = v from noise (t = 0) to data (t = 1).

    Classifier-free guidance as in the released pipeline: v = v_c + g (v_c - v_u), where v_u uses
    ``null_feats`` (the unconditional captions); ``guidance = 0`` turns it off. Conditional and
    unconditional passes run as one batch."""
    x = [n.float() for n in noise]
    B = len(x)
    tokens = (x[0].shape[-2] // patch) * (x[0].shape[-1] // patch)
    ts = timesteps(steps, tokens, shift)
    use_cfg = guidance > 0 and null_feats is not None
    for t0, t1 in zip(ts[:-1], ts[1:]):
        if use_cfg:
            v = model(x + x, torch.full((2 * B,), t0, device=x[0].device), list(cap_feats) + list(null_feats))
            v = [v[i].float() + guidance * (v[i].float() - v[B + i].float()) for i in range(B)]
        else:
            v = [vi.float() for vi in model(x, torch.full((B,), t0, device=x[0].device), cap_feats)]
        x = [xi + (t1 - t0) * vi for xi, vi in zip(x, v)]
    return x
