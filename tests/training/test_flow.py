"""Flow matching: interpolation and target, the shifted logit-normal t, Euler + CFG, t-bins."""

from __future__ import annotations

import math

import torch

from training.flow import TBins, euler_sample, flow_loss, sample_t, shift_mu, timesteps


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


def test_sampling_schedule_spends_more_steps_at_high_noise_for_large_images():
    small, large = timesteps(10, 256), timesteps(10, 4096)
    assert small[0] == 0.0 and small[-1] == 1.0 and all(a < b for a, b in zip(small, small[1:]))
    assert large[5] < small[5] < 0.5


def test_loss_per_t_bin():
    b = TBins(4)
    b.add(torch.tensor([0.1, 0.2, 0.9, 0.99]), torch.tensor([1.0, 3.0, 0.5, 0.7]))
    m = b.means()
    assert m.keys() == {"loss_t0.00-0.25", "loss_t0.75-1.00"}
    assert math.isclose(m["loss_t0.00-0.25"], 2.0) and math.isclose(m["loss_t0.75-1.00"], 0.6, rel_tol=1e-6)
