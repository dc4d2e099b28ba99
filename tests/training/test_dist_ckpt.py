"""Sharded (DCP) checkpoints of FSDP2 runs and sharded loading of released weights, on 2 gloo ranks
spawned with ``torch.multiprocessing`` (no Ray): a checkpoint of 2 ranks resumes on 1 process with
the same weights, Adam moments and EMA, and a 1-process checkpoint resumes on 2 sharded ranks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.training.gloo import spawn
from training import dist_ckpt, loop
from training.loop import BatchList, TrainConfig, train
from training.model import S3DiT, load_safetensors, tiny

WORLD = 2


def _batches(rank: int, n: int = 4) -> BatchList:
    """``n`` small batches of random latents and caption features, different on each rank."""
    g = torch.Generator().manual_seed(100 + rank)
    return BatchList(
        [
            {
                "latents": [torch.randn(16, 8, 8, generator=g), torch.randn(16, 6, 10, generator=g)],
                "cap_feats": [torch.randn(7, 32, generator=g), torch.randn(33, 32, generator=g)],
            }
            for _ in range(n)
        ]
    )


def _cfg(out: Path, steps: int) -> TrainConfig:
    return TrainConfig(
        model="tiny",
        steps=steps,
        lr=1e-3,
        warmup_steps=1,
        log_every=1,
        ckpt_every=1,
        keep_ckpts=5,
        fsdp="on",
        ema_decay=0.9,
        sample_count=0,
        out_dir=str(out),
    )


def _full(run) -> dict:
    """The run's model, Adam state and EMA gathered whole (a collective; only tests do this)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_optimizer_state_dict

    opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
    optim = get_optimizer_state_dict(run.model, run.opt, options=opts)
    return {
        "model": get_model_state_dict(run.model, options=opts),
        "optim": {
            k: {m: v[m].clone() for m in ("exp_avg", "exp_avg_sq", "step")} for k, v in optim.get("state", {}).items()
        },  # rank 0 only
        "ema": run.ema.full(),
    }


def _train_and_record(rank: int, out: str, steps: int) -> None:
    """Train on 2 FSDP2 ranks; at every checkpoint rank 0 also writes the gathered state (the reference).
    The loop itself must gather nothing: the full-state helpers and ``EMA.full`` refuse to run."""
    save, ema_full, gathering = loop._save_checkpoint, loop.EMA.full, []
    full_state, full_optim = loop._full_state, loop._full_optim

    def refuse(*_a, **_k):
        raise AssertionError("the checkpoint gathered a full state")

    def guarded_ema_full(self):
        assert gathering, "the checkpoint gathered the EMA"
        return ema_full(self)

    loop._full_state = loop._full_optim = refuse
    loop.EMA.full = guarded_ema_full

    def recording(run, step, extra):
        path = save(run, step, extra)
        gathering.append(step)
        full = _full(run)  # the test's reference, after the checkpoint
        gathering.clear()
        if rank == 0:
            torch.save(full, Path(out) / f"ref_{step}.pt")
        return path

    loop._save_checkpoint = recording
    try:
        train(_cfg(Path(out), steps), _batches(rank), log=lambda _m: None)
    finally:
        loop._save_checkpoint, loop.EMA.full, loop._full_state, loop._full_optim = save, ema_full, full_state, full_optim


def _resume_and_record(rank: int, out: str, steps: int) -> None:
    """Resume on 2 FSDP2 ranks and write the resumed state (rank 0, gathered) to ``resumed_on_2.pt``;
    train to ``steps`` (recorded as in ``_train_and_record``); resume that DCP checkpoint on the same
    2 ranks and write it to ``resumed_dcp_on_2.pt``."""

    def refuse(*_a, **_k):
        raise AssertionError("the whole file was loaded on one rank")

    loop.load_safetensors = refuse  # the checkpoint's model.safetensors is read row-sliced per rank
    _record_resumed(rank, _cfg(Path(out), steps), Path(out) / "resumed_on_2.pt")
    _train_and_record(rank, out, steps)
    _record_resumed(rank, _cfg(Path(out), steps + 1), Path(out) / "resumed_dcp_on_2.pt")


def _record_resumed(rank: int, cfg: TrainConfig, path: Path) -> None:
    run = loop._setup(cfg, _batches(rank), encoders=None, device="cpu", log=lambda _m: None)
    assert run.use_fsdp and hasattr(next(run.raw.parameters()), "full_tensor")
    step, _, _ = loop._resume(run)
    full = _full(run)
    if rank == 0:
        torch.save({**full, "step": step}, path)


def _names_to_optim(run) -> dict:
    names = {id(p): n for n, p in run.raw.named_parameters()}
    return {names[id(p)]: s for p, s in run.opt.state.items()}


def _assert_state_equal(got: dict, want: dict) -> None:
    assert got["model"].keys() == want["model"].keys()
    for k, v in want["model"].items():
        assert torch.equal(got["model"][k].cpu(), v), k
    assert got["optim"].keys() == want["optim"].keys()
    for k, moments in want["optim"].items():
        for m in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(got["optim"][k][m].cpu(), moments[m]), (k, m)
        assert float(got["optim"][k]["step"]) == float(moments["step"]), k
    for k, v in want["ema"].items():
        assert torch.equal(got["ema"][k].cpu(), v), k


def test_fsdp2_dcp_checkpoint_resumes_on_one_process_and_back_on_two(tmp_path):
    out = tmp_path / "run"
    spawn(_train_and_record, str(out), 2)
    ckpts = out / "checkpoints"
    step1, step2 = ckpts / "step_00000001", ckpts / "step_00000002"
    assert (ckpts / "latest").read_text() == "step_00000002"

    # each rank wrote its own shards; no full model in the intermediate checkpoint, only at the end
    files = sorted(p.name for p in (step2 / "dcp").iterdir())
    assert files == [".metadata", "__0_0.distcp", "__1_0.distcp"], files
    sizes = [(step2 / "dcp" / f).stat().st_size for f in files[1:]]
    ref2 = torch.load(out / "ref_2.pt", weights_only=False)
    full_bytes = 4 * 4 * sum(v.numel() for v in ref2["model"].values())  # model + 2 moments + EMA, fp32
    assert all(0.3 * full_bytes < s < 0.7 * full_bytes for s in sizes), (sizes, full_bytes)  # half each
    assert not (step1 / "model.safetensors").exists() and not (step1 / "ema.safetensors").exists()
    assert torch.load(step1 / "trainer.pt", weights_only=False)["optimizer"] is None
    final = load_file(str(step2 / "model.safetensors"))  # the released layout, consolidated at the last step
    assert final.keys() == ref2["model"].keys() and all(torch.equal(final[k], v) for k, v in ref2["model"].items())
    ema = load_file(str(step2 / "ema.safetensors"))
    assert all(torch.equal(ema[k], v) for k, v in ref2["ema"].items())

    # one process, no process group: export any DCP checkpoint to safetensors
    dist_ckpt.export_safetensors(step1 / "dcp", tmp_path)
    ref1 = torch.load(out / "ref_1.pt", weights_only=False)
    exported = load_file(str(tmp_path / "model.safetensors"))
    assert all(torch.equal(exported[k], v) for k, v in ref1["model"].items())
    assert not all(torch.equal(exported[k], ref2["model"][k]) for k in exported)  # step 1 is not step 2

    # resume the 2-rank checkpoint on 1 process: same weights, Adam moments, EMA, step
    cfg3 = _cfg(out, 3)
    run = loop._setup(cfg3, _batches(0), encoders=None, device="cpu", log=lambda _m: None)
    assert run.world == 1 and not run.use_fsdp
    step, _, _ = loop._resume(run)
    assert step == 2
    got = {"model": dict(run.raw.state_dict()), "optim": _names_to_optim(run), "ema": run.ema.full()}
    _assert_state_equal(got, ref2)
    assert run.sched.last_epoch == 2

    # and train on from there, in this process
    assert train(cfg3, _batches(0), log=lambda _m: None)["step"] == 3
    steps = [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3], steps
    step3 = ckpts / "step_00000003"
    assert (step3 / "model.safetensors").exists() and not (step3 / "dcp").exists()  # one process: full files

    # the reverse: that 1-process checkpoint resumes on 2 FSDP2 ranks, each reading its rows
    ref3 = loop.latest_checkpoint(out)
    saved_model = load_file(str(ref3 / "model.safetensors"))
    saved_ema = load_file(str(ref3 / "ema.safetensors"))
    tr = torch.load(ref3 / "trainer.pt", weights_only=False)
    spawn(_resume_and_record, str(out), 4)
    resumed = torch.load(out / "resumed_on_2.pt", weights_only=False)
    assert resumed["step"] == 3
    order = _param_order(tiny())  # a plain AdamW's state is keyed by index in its groups' order
    want_optim = {order[i]: s for i, s in tr["optimizer"]["state"].items()}
    _assert_state_equal(resumed, {"model": saved_model, "optim": want_optim, "ema": saved_ema})
    assert (ckpts / "step_00000004" / "dcp" / ".metadata").exists()
    resumed = torch.load(out / "resumed_dcp_on_2.pt", weights_only=False)  # DCP of 2 ranks on 2 ranks
    assert resumed["step"] == 4
    _assert_state_equal(resumed, torch.load(out / "ref_4.pt", weights_only=False))
    steps = [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4], steps


def _param_order(mcfg) -> list[str]:
    """Parameter names in the optimizer's order (``loop._optimizer``: decayed group, then the rest)."""
    model = S3DiT(mcfg)
    decay = [n for n, p in model.named_parameters() if not (p.ndim < 2 or "pad_token" in n)]
    return decay + [n for n, p in model.named_parameters() if p.ndim < 2 or "pad_token" in n]


def _load_sharded_and_record(rank: int, path: str, out: str) -> None:
    """Build the FSDP2 model from a bf16 file (and from a seed), write each rank's view."""
    from torch.distributed.tensor import DTensor

    def refuse(*_a, **_k):
        raise AssertionError("the whole file was loaded on one rank")

    loop.load_safetensors = refuse  # the sharded path must never read the full model
    cfg = TrainConfig(model="tiny", fsdp="on", init_from=path, out_dir=out)
    raw, model, use_fsdp = loop._build_wrapped(cfg, tiny(), None, torch.device("cpu"), False, WORLD)
    assert use_fsdp and model is raw
    report = {"local": {}, "full": {}}
    for n, p in raw.named_parameters():
        assert isinstance(p, DTensor) and p.dtype == torch.float32, n
        report["local"][n] = tuple(p.to_local().shape)
        report["full"][n] = p.full_tensor().clone()
    with torch.no_grad():  # the forward (FSDP2 all-gathers the shards) runs on the loaded weights
        report["out"] = [v.clone() for v in raw(*_probe())]
    if rank != 0:  # random init: only rank 0 builds the whole model; the others get its weights
        loop.seeded_model = refuse
    raw_rand, _, _ = loop._build_wrapped(
        cfg.model_copy(update={"init_from": None, "seed": 3}), tiny(), None, torch.device("cpu"), False, WORLD
    )
    report["random"] = {n: p.full_tensor().clone() for n, p in raw_rand.named_parameters()}
    torch.save(report, Path(out) / f"rank_{rank}.pt")


def _probe() -> tuple:
    g = torch.Generator().manual_seed(9)
    return [torch.randn(16, 8, 8, generator=g)], torch.tensor([0.3]), [torch.randn(5, 32, generator=g)]


def test_init_from_loads_each_rank_its_shards_in_fp32(tmp_path):
    g = torch.Generator().manual_seed(5)  # every tensor random (a fresh model's output layer is zero)
    file = {k: (0.1 * torch.randn(v.shape, generator=g)).to(torch.bfloat16) for k, v in S3DiT(tiny()).state_dict().items()}
    assert file["x_pad_token"].shape == (1, 64)  # one row: rank 1 holds none of it
    save_file(file, str(tmp_path / "w.safetensors"))
    spawn(_load_sharded_and_record, str(tmp_path / "w.safetensors"), str(tmp_path))
    reports = [torch.load(tmp_path / f"rank_{r}.pt", weights_only=False) for r in range(WORLD)]
    torch.manual_seed(3)
    seeded = S3DiT(tiny()).state_dict()
    for k, v in file.items():
        rows = [r["local"][k][0] for r in reports]
        assert sum(rows) == v.shape[0] and max(rows) == -(-v.shape[0] // WORLD), (k, rows)  # sharded on dim 0
        for r in reports:
            assert torch.equal(r["full"][k], v.float()), k  # the file's values, cast to fp32
            assert torch.equal(r["random"][k], seeded[k]), k  # random init: the seed's, broadcast to every rank
    with torch.no_grad():
        want = load_safetensors(tmp_path / "w.safetensors", tiny())(*_probe())
    for r in reports:
        torch.testing.assert_close(r["out"], want, rtol=1e-5, atol=1e-6)


def test_a_file_of_another_layout_is_refused_with_the_keys(tmp_path):
    torch.manual_seed(0)
    sd = S3DiT(tiny()).state_dict()
    sd.pop("x_pad_token")
    save_file(sd, str(tmp_path / "w.safetensors"))
    with pytest.raises(ValueError, match=r"missing \['x_pad_token'\]"):
        dist_ckpt.load_file_into_shards(S3DiT(tiny()), tmp_path / "w.safetensors")
    sd["x_pad_token"] = torch.zeros(2, 64)
    save_file(sd, str(tmp_path / "w.safetensors"))
    with pytest.raises(ValueError, match=r"x_pad_token: shape \(2, 64\) in the file, \(1, 64\) in the model"):
        dist_ckpt.load_file_into_shards(S3DiT(tiny()), tmp_path / "w.safetensors")


def test_a_dcp_checkpoint_of_another_model_is_refused_with_the_keys(tmp_path):
    model = S3DiT(tiny())
    opt = torch.optim.AdamW(model.parameters())
    dist_ckpt.save(tmp_path / "dcp", model, opt, None)  # one process, no process group
    with pytest.raises(ValueError, match=r"another model: missing \['layers.2"):
        dist_ckpt.load_model(tmp_path / "dcp", S3DiT(tiny(n_layers=3)))
    with pytest.raises(ValueError, match=r"x_pad_token has shape \(1, 64\) in the checkpoint, \(1, 96\) in the model"):
        dist_ckpt.load_model(tmp_path / "dcp", S3DiT(tiny(dim=96, n_heads=3, n_kv_heads=3)))
    with pytest.raises(FileNotFoundError, match="not a DCP checkpoint folder"):
        dist_ckpt.export_safetensors(tmp_path, tmp_path)
    dist_ckpt.load_model(tmp_path / "dcp", fresh := S3DiT(tiny()))
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), model.state_dict().values()))
