"""LoRA fine-tuning under FSDP2 on 2 gloo ranks (spawned with ``torch.multiprocessing``, no Ray).

* Only the adapters train: the sharded frozen base stays bit for bit the ``init_from`` file, and the
  checkpoint holds diffusers' LoRA files (``adapter.safetensors``, ``ema_adapter.safetensors``) with
  the keys, shapes and metadata of a 1-process run, no model files and no ``dcp/`` folder.
* With the same batches and the same noise on both ranks, FSDP2's mean gradient is the 1-process
  gradient, so 2 ranks train the same adapters (and EMA) as 1 process: bit for bit here.
* A 2-rank LoRA checkpoint resumes on 1 process with the saved adapters, Adam moments and EMA and
  trains on; a 1-process checkpoint resumes on 2 ranks the same way, and so does a 2-rank one on 2.

Each test spawns 2 ranks once (most of its time: two fresh interpreters importing torch).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from tests.training.gloo import spawn
from training import loop
from training.loop import ADAPTER_FILE, EMA_ADAPTER_FILE, BatchList, TrainConfig, latest_checkpoint, train
from training.lora import apply_lora, load_adapter, save_adapter, set_adapter
from training.model import S3DiT, load_safetensors, tiny

WORLD = 2


def _save_base(path: Path) -> dict[str, torch.Tensor]:
    """Random non-zero tiny weights (gates open, so every block matters) as one safetensors file."""
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in S3DiT(tiny()).state_dict().items()}
    g = torch.Generator().manual_seed(1)
    sd = {k: torch.randn(s, generator=g) * 0.05 for k, s in shapes.items()}
    save_file(sd, str(path))
    return sd


def _batches(seed: int, n: int = 3) -> BatchList:
    g = torch.Generator().manual_seed(seed)
    return BatchList(
        [
            {
                "latents": [torch.randn(16, 8, 8, generator=g), torch.randn(16, 6, 10, generator=g)],
                "cap_feats": [torch.randn(7, 32, generator=g), torch.randn(33, 32, generator=g)],
            }
            for _ in range(n)
        ]
    )


def _cfg(base: str | Path, out: str | Path, steps: int, lora_rank: int = 4, precision: str = "fp32") -> TrainConfig:
    return TrainConfig(
        model="tiny",
        init_from=str(base),
        out_dir=str(out),
        steps=steps,
        lr=1e-2,
        warmup_steps=1,
        caption_dropout=0.0,
        precision=precision,
        log_every=1,
        ckpt_every=1,
        keep_ckpts=5,
        fsdp="on",  # ignored by a 1-process run
        ema_decay=0.9,
        sample_count=0,
        lora_rank=lora_rank,
        lora_alpha=8.0,
        grad_checkpoint=True,  # as a multi-GPU 6B LoRA run has it (auto); the same numbers, recomputed
    )


def _state(run) -> dict:
    """The run's parameters, adapter Adam state and EMA, whole on the CPU by parameter name. Under
    FSDP2 each DTensor is gathered with ``full_tensor`` (a collective: every rank calls this, in the
    same order), independently of the loop's own checkpoint code."""

    def whole(t: torch.Tensor) -> torch.Tensor:
        return (t.full_tensor() if hasattr(t, "full_tensor") else t).detach().cpu().clone()

    params = dict(run.raw.named_parameters())
    names = {id(p): n for n, p in params.items()}
    optim = {}
    for p, s in run.opt.state.items():
        optim[names[id(p)]] = {"exp_avg": whole(s["exp_avg"]), "exp_avg_sq": whole(s["exp_avg_sq"]), "step": float(s["step"])}
    return {
        "params": {n: whole(p) for n, p in params.items()},
        "trained": sorted(n for n, p in params.items() if p.requires_grad),
        "optimizer_holds_trained": {id(p) for g in run.opt.param_groups for p in g["params"]}
        == {id(p) for p in params.values() if p.requires_grad},
        "optim": optim,
        "ema": run.ema.full(),
        "ema_names": sorted(run.ema.names),
        "use_fsdp": run.use_fsdp,
        "dtensors": all(hasattr(p, "full_tensor") for p in params.values()),
    }


def _train_lora(rank: int, base: str, out: str, steps: int, same_noise: bool, lora_rank: int = 4, precision: str = "fp32") -> None:
    """One rank of a 2-rank LoRA run; writes ``_state`` of the finished run to ``live_<steps>_<rank>.pt``.
    ``same_noise``: every rank trains on the 1-process run's batches with its noise generator
    (rank 0's seed), so the ranks' gradients are equal; else each rank has its own data and noise."""
    setup, runs, logs = loop._setup, [], []

    def capture(*a, **k):
        run = setup(*a, **k)
        if same_noise:
            run.gen = torch.Generator(run.device).manual_seed(run.cfg.seed * 1000 + 1)
        runs.append(run)
        return run

    loop._setup = capture
    try:
        train(_cfg(base, out, steps, lora_rank, precision), _batches(0 if same_noise else 100 + rank), log=logs.append)
    finally:
        loop._setup = setup
    torch.save({**_state(runs[0]), "logs": logs}, Path(out) / f"live_{steps}_{rank}.pt")


def _record_resumed(rank: int, cfg: TrainConfig, path: Path) -> None:
    """Set up and resume ``cfg``'s latest checkpoint on this rank; rank 0 writes the resumed state."""
    run = loop._setup(cfg, _batches(100 + rank), encoders=None, device="cpu", log=lambda _m: None)
    step, _, _ = loop._resume(run)
    state = {**_state(run), "step": step, "last_epoch": run.sched.last_epoch}  # a collective: every rank
    if rank == 0:
        torch.save(state, path)


def _resume_lora(rank: int, base: str, out: str, steps: int, lora_rank: int) -> None:
    """On 2 ranks: resume the latest checkpoint (-> ``resumed.pt``), train on to ``steps``
    (-> ``live_<steps>_<rank>.pt``), and resume that 2-rank checkpoint (-> ``resumed_again.pt``)."""
    _record_resumed(rank, _cfg(base, out, steps, lora_rank), Path(out) / "resumed.pt")
    _train_lora(rank, base, out, steps, False, lora_rank)
    _record_resumed(rank, _cfg(base, out, steps + 1, lora_rank), Path(out) / "resumed_again.pt")


def _one_process_run(cfg: TrainConfig, data: BatchList, monkeypatch):
    """Train ``cfg`` in this process; returns the finished run."""
    runs = []
    setup = loop._setup
    monkeypatch.setattr(loop, "_setup", lambda *a, **k: runs.append(setup(*a, **k)) or runs[-1])
    train(cfg, data, log=lambda _m: None)
    monkeypatch.setattr(loop, "_setup", setup)
    return runs[0]


def _file(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()


def _fresh_lora(base: Path) -> S3DiT:
    model = load_safetensors(base, tiny())
    apply_lora(model, 4, 8.0, seed=0)
    return model


def _probe() -> tuple:
    g = torch.Generator().manual_seed(9)
    return [torch.randn(16, 8, 8, generator=g)], torch.tensor([0.4]), [torch.randn(5, 32, generator=g)]


def _assert_same_state(got: dict, want_adapters: dict, want_optim: dict, want_ema: dict) -> None:
    """``got`` (a ``_state``) holds exactly these adapters, Adam moments and steps, and EMA."""
    assert sorted(want_adapters) == got["trained"]
    for n, v in want_adapters.items():
        assert torch.equal(got["params"][n], v), n
    assert got["optim"].keys() == want_optim.keys()
    for n, s in want_optim.items():
        for m in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(got["optim"][n][m], s[m]), (n, m)
        assert float(got["optim"][n]["step"]) == float(s["step"]), n
    assert got["ema"].keys() == want_ema.keys()
    for n, v in want_ema.items():
        assert torch.equal(got["ema"][n], v), n


def _metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _steps(out: Path) -> list[int]:
    return [m["step"] for m in _metrics(out)]


def test_lora_on_two_fsdp2_ranks_trains_the_adapters_of_one_process(tmp_path, monkeypatch):
    """Same batches and noise on both ranks: FSDP2 averages two equal adapter gradients (g / 2 + g / 2
    or (g + g) / 2: exact in fp32 for 2 ranks), clipping is inactive (the norm is far below
    ``grad_clip``), and AdamW and the EMA are elementwise on the shards, so the 2-rank adapters and
    EMA equal the 1-process ones bit for bit (tolerance 0). A sum instead of a mean, a rank's
    gradient dropped or a shard misplaced would show (Adam's eps makes even a gradient's scale
    visible; the logged grad norm shows it directly)."""
    base = tmp_path / "base.safetensors"
    stored = _save_base(base)
    two, one = tmp_path / "two", tmp_path / "one"
    spawn(_train_lora, str(base), str(two), 3, True, world=WORLD)
    reports = [torch.load(two / f"live_3_{r}.pt", weights_only=False) for r in range(WORLD)]
    ref = _one_process_run(_cfg(base, one, 3), _batches(0), monkeypatch)
    assert ref.world == 1 and not ref.use_fsdp
    trained = sorted(n for n, p in ref.raw.named_parameters() if p.requires_grad)
    ref_params, ref_ema = {n: p.detach() for n, p in ref.raw.named_parameters()}, ref.ema.full()
    init = dict(_fresh_lora(base).named_parameters())

    assert any("FSDP2" in line for line in reports[0]["logs"])
    assert any("LoRA rank 4 alpha 8" in line for line in reports[0]["logs"])
    for r in reports:
        assert r["use_fsdp"] and r["dtensors"]  # really sharded: every parameter, frozen or not, a DTensor
        assert r["trained"] == trained and all(n.endswith((".lora_A.weight", ".lora_B.weight")) for n in trained)
        assert r["optimizer_holds_trained"] and sorted(r["optim"]) == trained and r["ema_names"] == trained
        # the frozen base: bit for bit the file after 3 steps at lr 1e-2
        assert r["params"].keys() == set(stored) | set(trained)
        assert all(torch.equal(r["params"][k], v) for k, v in stored.items())
        for n in trained:
            assert not torch.equal(r["params"][n], init[n].detach()), n  # every adapter moved
            assert torch.equal(r["params"][n], ref_params[n]), n  # ... as in one process
            assert torch.equal(r["ema"][n], ref_ema[n]), n
    loss_gn = [[(m["loss"], m["grad_norm"]) for m in _metrics(out)] for out in (two, one)]
    assert loss_gn[0] == loss_gn[1] and len(loss_gn[0]) == 3  # loss (mean over ranks) and grad norm, every step

    # the checkpoint: the adapters only, as a 1-process run writes them
    ckpt2, ckpt1 = latest_checkpoint(two), latest_checkpoint(one)
    assert ckpt2.name == ckpt1.name == "step_00000003"
    files = sorted(p.name for p in ckpt2.iterdir())
    assert files == [ADAPTER_FILE, EMA_ADAPTER_FILE, "rank_0.pt", "rank_1.pt", "trainer.pt"], files
    for name, want in ((ADAPTER_FILE, reports[0]["params"]), (EMA_ADAPTER_FILE, reports[0]["ema"])):
        got, meta = _file(ckpt2 / name)
        ref_file, ref_meta = _file(ckpt1 / name)
        assert meta == ref_meta and json.loads(meta["lora_adapter_metadata"])["transformer.r"] == 4
        assert got.keys() == ref_file.keys() == {"transformer." + n for n in trained}
        for k, v in got.items():
            assert v.shape == ref_file[k].shape and v.dtype == ref_file[k].dtype == torch.float32, k
            assert torch.equal(v, want[k.removeprefix("transformer.")]), k  # the shards, gathered whole
            assert torch.equal(v, ref_file[k]), k
    optim = torch.load(ckpt2 / "trainer.pt", weights_only=False)["optimizer"]
    assert sorted(optim["state"]) == trained  # gathered, keyed by name; the frozen base has no moments

    # the file loads into a fresh model like the 1-process run's and gives its outputs
    outs = []
    for ckpt in (ckpt2, ckpt1):
        model = _fresh_lora(base).eval()
        set_adapter(model, load_adapter(ckpt / ADAPTER_FILE)[0])
        with torch.no_grad():
            outs.append(model(*_probe()))
    assert all(torch.equal(a, b) for a, b in zip(*outs))


def test_two_rank_lora_checkpoint_resumes_on_one_process(tmp_path, monkeypatch):
    """A 2-rank checkpoint (optimizer gathered and keyed by name) resumes on 1 process with the
    adapters, Adam moments, EMA and schedule it saved, and that process trains the same adapters on.
    lora_rank 1: every ``lora_A`` (1 x in) is sharded into its row and an empty shard, as lora_rank
    4 is on 8 GPUs. bf16, as on GPUs: the frozen base is held in bf16 next to fp32 adapters in the
    same FSDP2 groups (mixed-dtype all-gathers; fp32 gradient reduction)."""
    base = tmp_path / "base.safetensors"
    stored = _save_base(base)
    out = tmp_path / "run"
    spawn(_train_lora, str(base), str(out), 2, False, 1, "bf16", world=WORLD)
    live = torch.load(out / "live_2_0.pt", weights_only=False)  # gathered from the live run after step 2
    assert live["use_fsdp"] and live["dtensors"]
    assert all(torch.equal(live["params"][k], v.to(torch.bfloat16)) for k, v in stored.items())  # frozen, in bf16
    assert all(live["params"][n].dtype == torch.float32 for n in live["trained"])
    ckpt = latest_checkpoint(out)
    assert ckpt.name == "step_00000002"
    adapters = load_adapter(ckpt / ADAPTER_FILE)[0]
    assert sorted(adapters) == live["trained"] and adapters["layers.0.attention.to_q.lora_A.weight"].shape == (1, 64)
    assert all(torch.equal(v, live["params"][n]) for n, v in adapters.items())

    cfg3 = _cfg(base, out, 3, lora_rank=1, precision="bf16")
    run = loop._setup(cfg3, _batches(100), encoders=None, device="cpu", log=lambda _m: None)
    step, _, _ = loop._resume(run)
    assert run.world == 1 and not run.use_fsdp and step == 2 and run.sched.last_epoch == 2
    got = _state(run)
    _assert_same_state(got, adapters, live["optim"], live["ema"])
    assert all(s["step"] == 2 for s in got["optim"].values())
    assert all(torch.equal(got["params"][k], v.to(torch.bfloat16)) for k, v in stored.items())  # re-read from init_from

    # ... and trains on from there: the same adapters, one more Adam step each
    one = _state(_one_process_run(cfg3, _batches(100), monkeypatch))
    ckpt3 = latest_checkpoint(out)
    assert ckpt3.name == "step_00000003"
    at3 = load_adapter(ckpt3 / ADAPTER_FILE)[0]
    assert all(torch.equal(v, one["params"][n]) and not torch.equal(v, adapters[n]) for n, v in at3.items())
    assert all(s["step"] == 3 for s in one["optim"].values())
    assert _steps(out) == [1, 2, 3]


def test_one_process_lora_checkpoint_resumes_on_two_ranks_and_again(tmp_path, monkeypatch):
    """A 1-process checkpoint (optimizer keyed by index) resumes on 2 FSDP2 ranks exactly, trains
    on there, and that 2-rank checkpoint resumes on 2 ranks exactly (lora_rank 1: empty shards)."""
    base = tmp_path / "base.safetensors"
    stored = _save_base(base)
    out = tmp_path / "run"
    one = _state(_one_process_run(_cfg(base, out, 3, lora_rank=1), _batches(100), monkeypatch))
    ckpt3 = latest_checkpoint(out)
    at3, ema3 = load_adapter(ckpt3 / ADAPTER_FILE)[0], load_adapter(ckpt3 / EMA_ADAPTER_FILE)[0]
    assert all(isinstance(k, int) for k in torch.load(ckpt3 / "trainer.pt", weights_only=False)["optimizer"]["state"])

    spawn(_resume_lora, str(base), str(out), 4, 1, world=WORLD)
    resumed = torch.load(out / "resumed.pt", weights_only=False)
    assert resumed["use_fsdp"] and resumed["dtensors"] and resumed["step"] == 3 and resumed["last_epoch"] == 3
    _assert_same_state(resumed, at3, one["optim"], ema3)
    assert all(torch.equal(resumed["params"][k], v) for k, v in stored.items())

    ckpt4 = latest_checkpoint(out)
    assert ckpt4.name == "step_00000004"
    live4 = torch.load(out / "live_4_0.pt", weights_only=False)
    at4 = load_adapter(ckpt4 / ADAPTER_FILE)[0]
    assert all(torch.equal(v, live4["params"][n]) and not torch.equal(v, at3[n]) for n, v in at4.items())
    assert all(s["step"] == 4 for s in live4["optim"].values())
    again = torch.load(out / "resumed_again.pt", weights_only=False)
    assert again["step"] == 4 and again["last_epoch"] == 4
    _assert_same_state(again, at4, live4["optim"], live4["ema"])
    assert _steps(out) == [1, 2, 3, 4]


def _build_lora_and_record(rank: int, base: str, ckpt: str, out: str) -> None:
    """Build the 2-rank LoRA model three ways (bf16 base from ``base``; random base; ``base`` plus the
    adapters of ``ckpt``) and write this rank's view. The whole base may be built by rank 0's random
    init only: ``load_safetensors`` refuses to run, every other ``S3DiT`` must be on the meta device."""
    from torch.distributed.tensor import DTensor

    def refuse(*_a, **_k):
        raise AssertionError("a rank built the whole base")

    built, real = [], loop.S3DiT
    loop.S3DiT = lambda mcfg: built.append(torch.get_default_device().type) or real(mcfg)
    loop.load_safetensors = refuse
    if rank != 0:
        loop.seeded_model = refuse
    cfg = _cfg(base, out, 1, precision="bf16")
    report = {}
    for case, c, at in (
        ("file", cfg, None),
        ("random", cfg.model_copy(update={"init_from": None, "seed": 3}), None),
        ("resume", cfg, Path(ckpt)),
    ):
        built.clear()
        raw, model, use_fsdp = loop._build_wrapped(c, tiny(), at, torch.device("cpu"), True, WORLD)
        assert use_fsdp and model is raw and all(isinstance(p, DTensor) for p in raw.parameters())
        report[case] = {
            "built": list(built),
            "rows": {n: p.to_local().shape[0] for n, p in raw.named_parameters()},
            "full": {n: p.full_tensor().clone() for n, p in raw.named_parameters()},
            "trained": sorted(n for n, p in raw.named_parameters() if p.requires_grad),
        }
    torch.save(report, Path(out) / f"built_{rank}.pt")


def test_fsdp2_lora_loads_only_each_rank_shards_of_the_base(tmp_path):
    """Under FSDP2 a LoRA run never holds the whole base on a rank: the model is built on the meta
    device, sharded, and each rank reads its rows of the base file (or gets them from rank 0's random
    init) and of the adapters, which equal the 1-process build's (the seed's, or the checkpoint's)
    bit for bit, base in bf16 included."""
    base = tmp_path / "base.safetensors"
    _save_base(base)
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    g = torch.Generator().manual_seed(7)
    saved = {n: torch.randn(p.shape, generator=g) for n, p in loop.adapter_state(_fresh_lora(base)).items()}
    save_adapter(ckpt / ADAPTER_FILE, saved, 4, 8.0)
    spawn(_build_lora_and_record, str(base), str(ckpt), str(tmp_path), world=WORLD)
    reports = [torch.load(tmp_path / f"built_{r}.pt", weights_only=False) for r in range(WORLD)]
    cfg = _cfg(base, tmp_path, 1, precision="bf16")
    for case, c, at in (
        ("file", cfg, None),
        ("random", cfg.model_copy(update={"init_from": None, "seed": 3}), None),
        ("resume", cfg, ckpt),
    ):
        one = dict(loop._build_model(c, tiny(), at, torch.device("cpu"), bf16=True).named_parameters())
        for rank, r in enumerate(reports):
            got = r[case]
            whole = ["cpu"] if case == "random" and rank == 0 else []  # rank 0's random init, nothing else
            assert [d for d in got["built"] if d != "meta"] == whole and "meta" in got["built"], (case, got["built"])
            assert got["full"].keys() == one.keys() and got["trained"] == sorted(n for n, p in one.items() if p.requires_grad)
            for n, p in one.items():
                assert got["full"][n].dtype == p.dtype and torch.equal(got["full"][n], p.detach()), (case, n)
                assert got["rows"][n] == min(-(-p.shape[0] // WORLD), p.shape[0] - rank * -(-p.shape[0] // WORLD)), (case, n)
    assert all(torch.equal(reports[0]["resume"]["full"][n], v) for n, v in saved.items())
