"""S3-DiT omni mode (issue #17): editing samples carry their source latent in the sequence.

Checked: the layout puts the source one step before the target on the temporal RoPE axis; a
text-to-image sample in a mixed batch runs exactly as alone; the packed and padded paths agree
with sources; the state dict is the released one (no new parameters); the source reaches the target's
output; and a tiny model learns a toy edit (target = source shifted by the colour the instruction
names) far better with the source in its sequence than the same model trained without it.
"""

from __future__ import annotations

from functools import partial

import pytest
import torch

from training.flow import NO_SHIFT, euler_sample, flow_loss
from training.model import S3DiT, make_layout, tiny
from training.packing import pack_layout


def _model(**kw) -> S3DiT:
    torch.manual_seed(0)
    m = S3DiT(tiny(in_channels=4, **kw))
    with torch.no_grad():  # released init zeroes the output layer and gates: give them weight
        for p in m.parameters():
            if p.abs().sum() == 0:
                p.normal_(std=0.05)
    return m.eval()


def test_source_sits_one_temporal_step_before_its_target():
    lay = make_layout([(2, 3), (2, 2)], [5, 7], src_grids=[(3, 3), None])
    Lc = lay.cap_len[0]
    assert lay.img_len == [64, 32]  # target 6 -> 32, source 9 -> 32; the second sample has no source
    tgt, src = lay.img_pos[0, :6], lay.img_pos[0, 32:41]
    assert set(tgt[:, 0].tolist()) == {Lc + 2} and set(src[:, 0].tolist()) == {Lc + 1}
    assert src[:, 1:].tolist() == [[h, w] for h in range(3) for w in range(3)]
    assert set(lay.img_pos[1, :4, 0].tolist()) == {lay.cap_len[1] + 1}  # text-to-image: as released
    assert lay.img_pad[0, 6:32].all() and not lay.img_pad[0, 32:41].any() and lay.img_pad[0, 41:64].all()
    packed = pack_layout([(2, 3), (2, 2)], [5, 7], src_grids=[(3, 3), None])
    assert packed.img.lengths == [64, 32]
    assert torch.equal(packed.img_pos[0, :64], lay.img_pos[0]) and torch.equal(packed.img_pos[0, 64:96], lay.img_pos[1, :32])


def test_a_text_to_image_sample_runs_as_alone_in_a_mixed_batch():
    m = _model()
    g = torch.Generator().manual_seed(1)
    lat = [torch.randn(4, 8, 8, generator=g), torch.randn(4, 6, 4, generator=g)]
    caps = [torch.randn(5, 32, generator=g), torch.randn(9, 32, generator=g)]
    src = torch.randn(4, 8, 6, generator=g)
    t = torch.tensor([0.3, 0.7])
    with torch.no_grad():
        for packing in (True, False):
            m.packing = packing
            mixed = m(lat, t, caps, sources=[src, None])
            alone = m(lat[1:], t[1:], caps[1:])
            assert torch.allclose(mixed[1], alone[0], atol=1e-5)
            assert mixed[0].shape == lat[0].shape  # the target's velocity only


def test_packed_equals_padded_with_sources():
    m = _model()
    g = torch.Generator().manual_seed(2)
    lat = [torch.randn(4, 8, 8, generator=g), torch.randn(4, 4, 6, generator=g), torch.randn(4, 6, 6, generator=g)]
    caps = [torch.randn(n, 32, generator=g) for n in (3, 40, 8)]
    srcs = [torch.randn(4, 6, 8, generator=g), None, torch.randn(4, 6, 6, generator=g)]
    t = torch.tensor([0.2, 0.5, 0.9])
    with torch.no_grad():
        m.packing = False
        padded = m(lat, t, caps, sources=srcs)
        m.packing = True
        packed = m(lat, t, caps, sources=srcs)
    for a, b in zip(padded, packed):
        assert torch.allclose(a, b, atol=1e-5)


def test_no_new_parameters_and_the_source_reaches_the_output():
    m = _model()
    assert set(m.state_dict()) == set(S3DiT(tiny(in_channels=4)).state_dict())
    g = torch.Generator().manual_seed(3)
    lat, cap = [torch.randn(4, 8, 8, generator=g)], [torch.randn(4, 32, generator=g)]
    t = torch.tensor([0.5])
    with torch.no_grad():
        a = m(lat, t, cap, sources=[torch.randn(4, 8, 8, generator=g)])[0]
        b = m(lat, t, cap, sources=[torch.randn(4, 8, 8, generator=g)])[0]
        c = m(lat, t, cap)[0]
    assert (a - b).abs().max() > 1e-3 and (a - c).abs().max() > 1e-3


COLOURS = 4


def _toy(n: int, g: torch.Generator, words: torch.Tensor, shifts: torch.Tensor):
    """Sources (a flat random colour, 4x4 latents), instructions (a colour word's features) and
    targets = source + that colour's shift. Only the source tells the source's colour: a model that
    does not see it can at best predict each instruction's mean target."""
    src = (torch.randn(n, 4, 1, 1, generator=g) * 0.7).expand(n, 4, 4, 4).clone()
    k = torch.randint(0, COLOURS, (n,), generator=g)
    caps = [words[i] for i in k.tolist()]
    return list(src), caps, [s + shifts[i][:, None, None] for s, i in zip(src, k.tolist())]


def _train(use_source: bool, words, shifts, steps: int = 200) -> S3DiT:
    torch.manual_seed(0)
    m = S3DiT(tiny(in_channels=4))
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3, weight_decay=0.0)
    g = torch.Generator().manual_seed(10)
    for _ in range(steps):
        src, caps, tgt = _toy(16, g, words, shifts)
        t = torch.rand(16, generator=g)
        model = partial(m, sources=src) if use_source else m
        loss, _ = flow_loss(model, tgt, caps, t, generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return m.eval()


@pytest.mark.timeout(600)
def test_a_tiny_omni_model_learns_a_toy_edit_better_than_without_the_source():
    g = torch.Generator().manual_seed(0)
    words = torch.randn(COLOURS, 3, 32, generator=g)
    shifts = torch.randn(COLOURS, 4, generator=g)
    omni, blind = _train(True, words, shifts), _train(False, words, shifts)
    src, caps, tgt = _toy(64, torch.Generator().manual_seed(99), words, shifts)  # held out
    noise = [torch.randn(4, 4, 4, generator=torch.Generator().manual_seed(i)) for i in range(64)]
    outs = {
        "omni": euler_sample(partial(omni, sources=src), noise, caps, steps=10, shift=NO_SHIFT),
        "blind": euler_sample(blind, noise, caps, steps=10, shift=NO_SHIFT),
    }
    errs = {k: torch.stack([(o - t).pow(2).mean() for o, t in zip(v, tgt)]).mean().item() for k, v in outs.items()}
    # measured: omni 0.18, blind 1.17 (a blind model's floor is the source colour's variance, 0.49)
    assert errs["omni"] < 0.5 * errs["blind"], errs
    # and the edit is the named one: the mean shift per channel of the output matches the colour's
    got = torch.stack([(o - s).mean(dim=(1, 2)) for o, s in zip(outs["omni"], src)])
    want = torch.stack([(t - s).mean(dim=(1, 2)) for t, s in zip(tgt, src)])
    assert (got - want).abs().mean() < 0.5 * want.abs().mean(), ((got - want).abs().mean(), want.abs().mean())
