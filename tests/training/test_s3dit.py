"""S3-DiT: layout of mixed batches, RoPE positions, zero-init gates, released layout, reference parity."""

from __future__ import annotations

import json

import pytest
import torch

from training.model import (
    Block,
    Layout,
    S3DiT,
    apply_rope,
    load_safetensors,
    make_layout,
    param_count,
    patchify,
    rope_cos_sin,
    small,
    tiny,
    unpatchify,
    z_image_6b,
)


def _inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    lat = [torch.randn(16, 8, 12, generator=g), torch.randn(16, 6, 6, generator=g), torch.randn(16, 10, 4, generator=g)]
    cap = [torch.randn(5, 32, generator=g), torch.randn(40, 32, generator=g), torch.randn(33, 32, generator=g)]
    return lat, cap, torch.tensor([0.3, 0.7, 0.9])


def _randomise(model, std=0.05, seed=0):
    """Non-zero gates and output layer, so blocks and masks actually matter."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)
    return model


def test_layout_mixed_resolutions_and_caption_lengths():
    lay = make_layout([(4, 6), (3, 3), (5, 2)], [5, 40, 33])
    assert lay.img_len == [32, 32, 32] and lay.cap_len == [32, 64, 64] and lay.uni_len == [64, 96, 96]
    assert lay.img_pad.sum(1).tolist() == [32 - 24, 32 - 9, 32 - 10]  # learned pad tokens per sample
    assert lay.cap_pad.sum(1).tolist() == [32 - 5, 64 - 40, 64 - 33]
    assert lay.img_pos.shape == (3, 32, 3) and lay.cap_pos.shape == (3, 64, 3) and lay.uni_pos.shape == (3, 96, 3)
    m = Layout.key_mask(lay.uni_len, 96, "cpu")
    assert m.shape == (3, 1, 1, 96)
    assert m[0, 0, 0].sum() == 64 and m[1, 0, 0].all() and m[2, 0, 0].all()
    assert Layout.key_mask([64, 64], 64, "cpu") is None  # no padding, no mask
    # the stream holds the image segment, then the text segment; batch padding points at the zero row
    sentinel = 3 * (32 + 64)
    assert (lay.uni_index[0, 64:] == sentinel).all() and (lay.uni_index[1] != sentinel).all()
    with pytest.raises(ValueError, match="at least one token"):
        make_layout([(2, 2)], [0])


def test_rope_positions_text_then_image():
    lay = make_layout([(3, 5)], [7])  # caption padded to 32
    cap = lay.cap_pos[0]
    assert cap[:, 0].tolist() == list(range(1, 33)) and (cap[:, 1:] == 0).all()  # text at (1..L, 0, 0)
    img = lay.img_pos[0, :15]
    assert (img[:, 0] == 33).all()  # image at (L + 1, h, w)
    assert img[:, 1].tolist() == [h for h in range(3) for _ in range(5)]
    assert img[:, 2].tolist() == list(range(5)) * 3
    assert (lay.img_pos[0, 15:] == 0).all()  # pad tokens at (0, 0, 0)
    assert torch.equal(lay.uni_pos[0, :32], lay.img_pos[0]) and torch.equal(lay.uni_pos[0, 32:64], cap)


def test_rope_is_relative_on_every_axis():
    """q.k after rotation depends only on the position difference, separately per axis."""
    g = torch.Generator().manual_seed(1)
    q, k = torch.randn(1, 1, 1, 32, generator=g), torch.randn(1, 1, 1, 32, generator=g)
    axes = (8, 12, 12)

    def score(pq, pk):
        cq, sq = rope_cos_sin(torch.tensor([[pq]]), axes, 256.0)
        ck, sk = rope_cos_sin(torch.tensor([[pk]]), axes, 256.0)
        return (apply_rope(q, cq, sq) * apply_rope(k, ck, sk)).sum()

    base = score([3, 2, 5], [1, 4, 4])
    assert torch.allclose(base, score([13, 9, 7], [11, 11, 6]), atol=1e-4)  # same differences
    assert not torch.allclose(base, score([3, 2, 5], [1, 4, 5]), atol=1e-3)  # one w step apart


def test_patchify_roundtrip():
    x = torch.randn(16, 6, 10)
    tok = patchify(x, 2)
    assert tok.shape == (15, 64)
    assert torch.equal(tok[1], x[:, 0:2, 2:4].permute(1, 2, 0).reshape(-1))  # features ordered (ph, pw, c)
    assert torch.equal(unpatchify(tok, (3, 5), 2, 16), x)


def test_fresh_block_is_identity_and_fresh_model_predicts_zero():
    cfg = tiny()
    blk = Block(cfg, modulation=True)
    model = S3DiT(cfg)
    blk.load_state_dict(model.layers[0].state_dict())
    x = torch.randn(2, 32, cfg.dim)
    cos, sin = rope_cos_sin(torch.zeros(2, 32, 3, dtype=torch.long), cfg.axes_dims, cfg.rope_theta)
    c = torch.randn(2, cfg.adaln_dim)
    assert torch.equal(blk(x, None, cos, sin, c), x)
    with torch.no_grad():
        blk.adaLN_modulation[0].bias[cfg.dim : 2 * cfg.dim] = 0.5  # open the attention gate
    assert not torch.allclose(blk(x, None, cos, sin, c), x)
    lat, cap, t = _inputs()
    out = model(lat, t, cap)
    assert [o.shape for o in out] == [x.shape for x in lat] and all((o == 0).all() for o in out)


def test_mixed_batch_equals_samples_alone():
    """Masks and pad tokens are right: a sample's output does not depend on its batch mates."""
    model = _randomise(S3DiT(tiny())).eval()
    lat, cap, t = _inputs()
    with torch.no_grad():
        together = model(lat, t, cap)
        for i in range(3):
            alone = model([lat[i]], t[i : i + 1], [cap[i]])[0]
            assert together[i].shape == lat[i].shape
            assert torch.allclose(together[i], alone, atol=2e-5), (i, (together[i] - alone).abs().max())


def test_reference_parity_with_diffusers(tmp_path):
    """diffusers' ZImageTransformer2DModel, tiny config, random weights -> safetensors folder ->
    our loader -> the same outputs on a mixed batch."""
    from training.encoders import ensure_hf_importable

    ensure_hf_importable()  # a CUDA torchvision next to CPU torch would break diffusers' import
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    ref = diffusers.ZImageTransformer2DModel(
        in_channels=16,
        dim=64,
        n_layers=2,
        n_refiner_layers=1,
        n_heads=2,
        n_kv_heads=2,
        cap_feat_dim=32,
        axes_dims=[8, 12, 12],
        axes_lens=[256, 64, 64],
    ).eval()
    _randomise(ref)
    ref.save_pretrained(tmp_path / "transformer")
    ours = load_safetensors(tmp_path / "transformer").eval()
    assert ours.cfg == tiny()
    lat, cap, t = _inputs(3)
    with torch.no_grad():
        expect = ref([x[:, None] for x in lat], t, cap, return_dict=False)[0]
        got = ours(lat, t, cap)
    for e, o in zip(expect, got):
        assert e.abs().mean() > 0.05
        assert torch.allclose(e[:, 0], o, atol=1e-5), (e[:, 0] - o).abs().max()


def test_load_safetensors_rejects_a_foreign_layout(tmp_path):
    from safetensors.torch import save_file

    sd = S3DiT(tiny()).state_dict()
    sd["layers.0.attention.wq.weight"] = sd.pop("layers.0.attention.to_q.weight")
    save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp_path / "m.safetensors"))
    with pytest.raises(ValueError, match="to_q"):
        load_safetensors(tmp_path / "m.safetensors", tiny())


def test_size_factories():
    with torch.device("meta"):
        n6 = param_count(S3DiT(z_image_6b()))
        ns = param_count(S3DiT(small()))
    assert 6.0e9 < n6 < 6.3e9  # the report's 6.15B
    assert 2e8 < ns < 9e8
    cfg = z_image_6b()
    assert (cfg.dim, cfg.n_layers, cfg.n_heads, cfg.n_refiner_layers, cfg.cap_feat_dim) == (3840, 30, 30, 2, 2560)
    assert cfg.axes_dims == (32, 48, 48) and cfg.rope_theta == 256.0 and cfg.patch_size == 2
    with pytest.raises(ValueError, match="axes_dims"):
        tiny(axes_dims=(8, 8, 8))
    json.dumps(cfg.__dict__)
