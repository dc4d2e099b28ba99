"""Flow matching: interpolation and target, the shifted logit-normal t, Euler + CFG, t-bins."""

from __future__ import annotations

import math

import pytest
import torch

from training.flow import (
    SAMPLE_SHIFT,
    TRAIN_SHIFT,
    TBins,
    TimeShift,
    euler_sample,
    flow_loss,
    sample_t,
    shift_mu,
    shift_sigma,
    timesteps,
)


def test_shift_is_linear_in_tokens_from_256_to_4096():
    assert math.isclose(shift_mu(256), 0.5) and math.isclose(shift_mu(4096), 1.15)
    assert math.isclose(shift_mu(1024), 0.5 + 0.65 * 768 / 3840)


def test_logit_normal_t_is_noisier_for_larger_images():
    g = torch.Generator().manual_seed(0)
    for tokens, mu in ((256, 0.5), (4096, 1.15)):
        t = sample_t(torch.full((20000,), tokens), g)
        assert 0 < t.min() and t.max() < 1
        sigma = 1 - t
        assert abs(sigma.median().item() - 1 / (1 + math.exp(-mu))) < 0.01  # median noise = sigmoid(mu)
        logit = torch.log(sigma / (1 - sigma))
        assert abs(logit.std().item() - 1.0) < 0.03


def test_flow_loss_interpolates_and_targets_the_velocity():
    x1 = [torch.randn(16, 4, 6), torch.randn(16, 2, 2)]
    t = torch.tensor([0.25, 0.8])
    seen = {}

    def model(xt, tt, caps):
        seen["xt"] = xt
        return [torch.zeros_like(x) for x in xt]

    loss, per = flow_loss(model, x1, [torch.zeros(1, 8)] * 2, t, torch.Generator().manual_seed(5))
    g = torch.Generator().manual_seed(5)
    x0 = [torch.randn(x.shape, generator=g) for x in x1]
    for i in range(2):
        assert torch.allclose(seen["xt"][i], t[i] * x1[i] + (1 - t[i]) * x0[i])
        assert torch.isclose(per[i], (x1[i] - x0[i]).pow(2).mean())  # zero prediction: |v|^2
    assert torch.isclose(loss, per.mean())


def test_euler_follows_the_straight_path_to_the_target():
    """With the exact velocity of the straight path, v = (x1 - x) / (1 - t), Euler lands on x1."""
    target = [torch.randn(16, 8, 8), torch.randn(16, 4, 6)]

    def model(x, t, caps):
        return [(target[i % 2] - xi) / (1 - t[i]) for i, xi in enumerate(x)]

    out = euler_sample(model, [torch.randn(16, 8, 8), torch.randn(16, 4, 6)], [torch.zeros(1, 4)] * 2, steps=7)
    for o, x in zip(out, target):
        assert torch.allclose(o, x, atol=1e-4)


def test_classifier_free_guidance_combination():
    cond, null = torch.ones(1, 4), torch.zeros(1, 4)

    def model(x, t, caps):  # v = 1 for the caption, 0 for the null caption
        return [torch.full_like(xi, float(c.sum() > 0)) for xi, c in zip(x, caps)]

    noise = [torch.zeros(16, 2, 2)]
    plain = euler_sample(model, noise, [cond], [null], steps=1, guidance=0.0)[0]
    guided = euler_sample(model, noise, [cond], [null], steps=1, guidance=3.0)[0]
    assert torch.allclose(plain, torch.ones_like(plain)) and torch.allclose(guided, 4 * torch.ones_like(guided))


def test_dynamic_sampling_schedule_spends_more_steps_at_high_noise_for_large_images():
    dyn = TimeShift(dynamic=True)
    small, large = timesteps(10, 256, dyn), timesteps(10, 4096, dyn)
    assert small[0] == 0.0 and small[-1] == 1.0 and all(a < b for a, b in zip(small, small[1:]))
    assert large[5] < small[5] < 0.5
    assert timesteps(10, 256) == timesteps(10, 4096)  # the default (static) shift ignores the size


def _old_timesteps(steps: int, image_tokens: int) -> list[float]:
    """``timesteps`` before the shift was configurable (always resolution-dependent)."""
    out = []
    for i in range(steps + 1):
        sigma = 1 - i / steps
        if 0 < sigma < 1:
            sigma = shift_sigma(sigma, shift_mu(image_tokens))
        out.append(1 - sigma)
    return out


@pytest.mark.parametrize("steps", [1, 8, 9, 30])
@pytest.mark.parametrize("tokens", [256, 1024, 4096])
def test_shift_modes_closed_form(steps, tokens):
    """Static: sigma' = 3 sigma / (1 + 2 sigma) (the released Turbo scheduler); dynamic: exactly
    the schedule this module always had."""
    want = [1 - 3 * s / (1 + 2 * s) for s in (1 - i / steps for i in range(steps + 1))]
    assert timesteps(steps, tokens) == pytest.approx(want, abs=1e-12)
    assert SAMPLE_SHIFT == TimeShift(shift=3.0, dynamic=False)
    assert timesteps(steps, tokens, TimeShift(dynamic=True)) == _old_timesteps(steps, tokens)
    assert timesteps(steps, tokens, None) == pytest.approx([i / steps for i in range(steps + 1)], abs=1e-12)
    with pytest.raises(TypeError, match="TimeShift"):
        timesteps(steps, tokens, True)  # the old boolean is refused, not read as s = 1


def test_schedules_equal_diffusers_z_image_pipeline():
    """The sigmas ``ZImagePipeline`` gets from ``FlowMatchEulerDiscreteScheduler.set_timesteps``:
    it passes ``sigmas=linspace(1, 1/n, n)`` and ``mu`` for the image size. Static shift 3.0
    (``use_dynamic_shifting: false``, the released Turbo config) and the dynamic mode."""
    from training.encoders import ensure_hf_importable

    ensure_hf_importable()
    pytest.importorskip("diffusers")
    from diffusers import FlowMatchEulerDiscreteScheduler
    from diffusers.pipelines.z_image.pipeline_z_image import calculate_shift, get_default_z_image_sigmas

    static = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=False)
    dynamic = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True)
    for steps in (8, 9, 30):
        for tokens in (256, 1024, 4096):
            for sched, ours in ((static, SAMPLE_SHIFT), (dynamic, TimeShift(dynamic=True))):
                sched.set_timesteps(sigmas=get_default_z_image_sigmas(steps), mu=calculate_shift(tokens))
                ref = [1 - s for s in sched.sigmas.tolist()]  # t = 1 - sigma, a terminal sigma 0 appended
                assert timesteps(steps, tokens, ours) == pytest.approx(ref, abs=1e-6), (steps, tokens, ours)


def test_euler_sample_uses_the_given_schedule():
    seen = []

    def model(x, t, caps):
        seen.append(float(t[0]))
        return [torch.zeros_like(xi) for xi in x]

    noise, caps = [torch.zeros(16, 4, 4)], [torch.zeros(1, 4)]
    euler_sample(model, noise, caps, steps=5)
    assert seen == pytest.approx(timesteps(5, 4, SAMPLE_SHIFT)[:-1], abs=1e-7)
    seen.clear()
    euler_sample(model, noise, caps, steps=5, shift=TimeShift(dynamic=True))
    assert seen == pytest.approx(_old_timesteps(5, 4)[:-1], abs=1e-7)


def test_training_t_default_is_unchanged_and_static_shift_moves_the_median():
    tok = torch.tensor([256, 1024, 4096] * 1000)
    a = sample_t(tok, torch.Generator().manual_seed(3), 0.1, 0.9)
    g = torch.Generator().manual_seed(3)
    z = torch.randn(tok.shape, generator=g)
    old = 1.0 - torch.sigmoid(z * 0.9 + 0.1 + shift_mu(tok.float()))  # the formula before shifts were configurable
    assert torch.equal(a, old) and TRAIN_SHIFT.dynamic
    t = sample_t(torch.full((20000,), 4096), torch.Generator().manual_seed(0), shift=TimeShift(shift=3.0))
    assert abs((1 - t).median().item() - 0.75) < 0.01  # sigmoid(log 3)


def test_loss_per_t_bin():
    b = TBins(4)
    b.add(torch.tensor([0.1, 0.2, 0.9, 0.99]), torch.tensor([1.0, 3.0, 0.5, 0.7]))
    m = b.means()
    assert m.keys() == {"loss_t0.00-0.25", "loss_t0.75-1.00"}
    assert math.isclose(m["loss_t0.00-0.25"], 2.0) and math.isclose(m["loss_t0.75-1.00"], 0.6, rel_tol=1e-6)
