"""Encoders: the production loading code (from local folders) on tiny random models of the real classes."""

from __future__ import annotations

import numpy as np
import torch

from training.encoders import VAE_SCALE, VAE_SHIFT, Encoders, to_pixels


def test_encoders_load_from_local_folders(tmp_path, tiny_encoders, coco_small):
    images, captions = coco_small
    enc = tiny_encoders
    # the released repository's layout: vae/, text_encoder/, tokenizer/
    enc.vae.vae.save_pretrained(tmp_path / "vae")
    enc.text.model.save_pretrained(tmp_path / "text_encoder")
    enc.text.tok.save_pretrained(tmp_path / "tokenizer")
    loaded = Encoders.load(str(tmp_path), str(tmp_path))
    assert (loaded.vae.scale, loaded.vae.shift) == (VAE_SCALE, VAE_SHIFT)

    lat = loaded.vae.encode(images[:2])
    assert [tuple(z.shape) for z in lat] == [(16, 6, 8)] * 2  # 64x48 pixels -> 16 x 6 x 8
    raw = loaded.vae.vae.encode(to_pixels(images[0])[None]).latent_dist.mode()[0]
    assert torch.allclose(lat[0], (raw - VAE_SHIFT) * VAE_SCALE, atol=1e-5)  # the released normalisation
    assert torch.allclose(lat[0], enc.vae.encode(images[:1])[0], atol=1e-6)
    back = loaded.vae.decode(lat[:1])[0]
    assert back.shape == (48, 64, 3) and back.dtype == np.uint8

    feats = loaded.text.encode(captions[:3])
    n_tok = [len(enc.text.tok(c)["input_ids"]) for c in captions[:3]]
    assert [tuple(f.shape) for f in feats] == [(n, 32) for n in n_tok]  # one vector per real token
    hs = enc.text.model(**enc.text.tok(captions[:1], return_tensors="pt"), output_hidden_states=True).hidden_states
    assert torch.allclose(feats[0], hs[-2][0], atol=1e-5)  # second-to-last hidden state
    assert not torch.allclose(feats[0][-1], hs[-1][0][-1], atol=1e-3)


def test_to_pixels_accepts_the_loader_layout(coco_small):
    im = coco_small[0][0]
    hwc = to_pixels(np.asarray(im))
    chw = to_pixels(torch.from_numpy(np.array(im)).permute(2, 0, 1).contiguous())  # what training.loader yields
    assert hwc.shape == (3, 48, 64) and torch.equal(hwc, chw) and torch.equal(hwc, to_pixels(im))
    assert -1 <= hwc.min() and hwc.max() <= 1
