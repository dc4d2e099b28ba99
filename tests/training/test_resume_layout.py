"""Resuming on another layout: an optimizer state keyed by parameter name (what an FSDP2 run saves)
loads into a one-process optimizer by name, not by position; and a resume on another number of
ranks says which ranks start their data and noise fresh and whose positions are dropped."""

from __future__ import annotations

import pytest
import torch

from training import loop
from training.lora import apply_lora
from training.model import S3DiT, tiny


def _lora_optimizer(seed: int):
    torch.manual_seed(seed)
    raw = S3DiT(tiny())
    apply_lora(raw, 2, None, ["to_q", "to_k"], seed=seed)
    opt = torch.optim.AdamW([p for p in raw.parameters() if p.requires_grad], lr=1e-3)
    return raw, opt


def _step(raw, opt) -> None:
    """One step with a gradient of a different size on every adapter, so each has its own moments."""
    for i, p in enumerate(p for p in raw.parameters() if p.requires_grad):
        p.grad = torch.full_like(p, float(i + 1))
    opt.step()


def _adapted(raw) -> set[str]:
    return {n.rsplit(".lora_", 1)[0] for n, _ in raw.named_parameters() if ".lora_" in n}


def _named(raw, opt) -> dict:
    """``opt.state_dict()`` keyed by parameter name, the order of names reversed (as a sharded
    checkpoint may list them): what ``get_optimizer_state_dict(full_state_dict=True)`` gives."""
    names = {id(p): n for n, p in raw.named_parameters()}
    order = [names[id(p)] for g in opt.param_groups for p in g["params"]]
    sd = opt.state_dict()
    state = {order[i]: v for i, v in reversed(list(sd["state"].items()))}
    groups = [{**g, "params": [order[i] for i in reversed(g["params"])]} for g in sd["param_groups"]]
    return {"state": state, "param_groups": groups}


def test_a_name_keyed_optimizer_state_loads_by_name_on_one_process():
    raw, opt = _lora_optimizer(0)
    _step(raw, opt)
    named = _named(raw, opt)
    raw2, opt2 = _lora_optimizer(0)
    loop._load_optim(raw2, opt2, named, use_fsdp=False)
    by_name = {n: p for n, p in raw2.named_parameters()}
    for n, p in raw.named_parameters():
        if p.requires_grad:  # every adapter got its own moments back, whatever the saved order
            assert torch.equal(opt2.state[by_name[n]]["exp_avg"], opt.state[p]["exp_avg"]), n
    assert len(opt2.state) == len(opt.state) == 2 * len(_adapted(raw)) > 0  # lora_A and lora_B of each layer


def test_a_name_keyed_state_of_another_model_is_refused_with_the_names():
    raw, opt = _lora_optimizer(0)
    _step(raw, opt)
    named = _named(raw, opt)
    other = S3DiT(tiny())
    apply_lora(other, 2, None, ["to_q"], seed=0)
    opt_other = torch.optim.AdamW([p for p in other.parameters() if p.requires_grad], lr=1e-3)
    with pytest.raises(ValueError, match="another model: its extra .*to_k"):
        loop._load_optim(other, opt_other, named, use_fsdp=False)


def test_a_resume_on_another_number_of_ranks_says_what_restarts(tmp_path):
    for r in range(2):
        (tmp_path / f"rank_{r}.pt").write_bytes(b"")
    assert loop._ranks_changed(tmp_path, 2) is None
    assert loop._ranks_changed(tmp_path, 4) == "checkpoint of 2 rank(s) resumed on 4; data and noise restart fresh on rank(s) 2, 3"
    assert loop._ranks_changed(tmp_path, 1) == "checkpoint of 2 rank(s) resumed on 1; the data positions of rank(s) 1 are dropped"
