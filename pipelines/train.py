"""``curate train``: S3-DiT on training shards with Ray Train (TorchTrainer; DDP or FSDP2).

Ray Train starts one worker per rank, sets up ``torch.distributed`` (gloo on CPU, NCCL on GPU)
and calls ``_worker`` on each; the worker opens its rank's slice of the shards with the
sequence-length-aware loader (``training.loader``) and runs the plain loop of
``training.loop.train``. Checkpoints and metrics live in ``out_dir`` (a path every worker can
reach: local for one machine, a shared filesystem for a cluster); running the same command again
resumes from the latest checkpoint. Metrics are also reported to Ray Train, so they show in the
Ray dashboard.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from pydantic import Field

from curation.registry import register_step
from training.config import TrainConfig

__all__ = ["TrainRunConfig", "already_trained", "run_training", "single_rank_default"]

SINGLE_RANK_6B_LORA_RANK = 32
"""``--model 6b`` on one rank trains a LoRA of this rank unless ``lora_rank`` is given (even as null):
a full fine-tune needs ~123 GB for fp32 weights, grads, Adam and EMA alone (docs/training.md)."""


class TrainRunConfig(TrainConfig):
    """The loop's settings plus where the data is and how many workers train."""

    shards: str = Field(description="training shards written by `curate export` (path or s3:// URI), or pair shards alone")
    pairs: str | None = Field(None, description="pair shards from `curate pairs export`, mixed in as editing batches (omni-pre-training)")
    edit_ratio: float = Field(0.25, gt=0, lt=1, description="with `pairs`: the probability that a batch is an editing batch")
    loader: dict[str, Any] = Field(default_factory=dict, description="training.loader.LoaderConfig fields (token_budget, ...)")
    loader_workers: int = Field(2, ge=0, description="decode processes per rank (0: decode in the training process)")
    num_workers: int = Field(1, ge=1, description="Ray Train workers = ranks")
    use_gpu: bool = Field(False, description="one GPU per worker")
    cpus_per_worker: float = Field(1.0, gt=0)


def _worker(config: dict) -> None:
    """One rank: loader for this rank, then the loop; metrics reported to Ray Train."""
    import ray.train
    import ray.train.torch

    from training.loader import Loader, ShardDataset
    from training.loop import train

    cfg = TrainRunConfig.model_validate(config)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    if device.type == "cuda":
        import torch

        torch.cuda.set_device(device)
    loader_cfg = _loader_config(cfg)
    ds = ShardDataset(cfg.shards, loader_cfg, rank=rank, world_size=world)
    data = Loader(ds, num_workers=cfg.loader_workers, pin_memory=device.type == "cuda")
    if cfg.pairs:  # omni: editing batches from the pair shards, mixed in at edit_ratio
        from training.loader import MixedLoader

        pair_ds = ShardDataset(cfg.pairs, {**loader_cfg, "pre_encoded": None}, rank=rank, world_size=world)  # images only
        edits = Loader(pair_ds, num_workers=cfg.loader_workers)
        data = MixedLoader(data, edits, cfg.edit_ratio, seed=cfg.seed)
    log = print if rank == 0 else (lambda _msg: None)
    try:
        train(
            TrainConfig.model_validate({k: v for k, v in config.items() if k in TrainConfig.model_fields}),
            data,
            device=device,
            report=lambda m: ray.train.report(m),
            log=log,
        )
    finally:
        data.close()  # stop the persistent decode workers


def _loader_config(cfg: TrainRunConfig) -> dict:
    """The loader's settings: budget by packed length when the model packs (its default), unless the
    user set ``loader: {packing: ...}``; padded batches of a packing model waste what packing saves."""
    packing = (cfg.model_overrides or {}).get("packing", True)
    return {"seed": cfg.seed, "packing": bool(packing), **cfg.loader}


def run_training(cfg: TrainRunConfig, log=None) -> dict:
    """Run ``cfg.num_workers`` ranks on the current Ray cluster; returns the last metrics. A run
    already at ``steps`` returns at once (``trained: False``). Ctrl+C aborts the Ray Train run and
    raises ``KeyboardInterrupt``; a worker's error is raised as itself (``_worker_error``)."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    log = log or print
    cfg = single_rank_default(cfg, log)
    check_training_inputs(cfg, log)
    done = already_trained(cfg)
    if done is not None:
        log(f"already at step {done['metrics'].get('step')} in {done['out_dir']}; nothing to train (raise --steps to go on)")
        return done
    out = Path(cfg.out_dir).resolve()
    # Ray Train runs workers in their own working directory: hand them absolute paths
    shards = cfg.shards if "://" in cfg.shards else str(Path(cfg.shards).resolve())
    local = {k: str(Path(v).resolve()) for k in ("vae_path", "text_encoder_path") if (v := getattr(cfg, k, None)) and "://" not in v}
    cfg = cfg.model_copy(update={"out_dir": str(out), "shards": shards, **local})
    out.mkdir(parents=True, exist_ok=True)
    trainer = TorchTrainer(
        _worker,
        train_loop_config=cfg.model_dump(),
        scaling_config=ScalingConfig(
            num_workers=cfg.num_workers,
            use_gpu=cfg.use_gpu,
            resources_per_worker={"CPU": cfg.cpus_per_worker, **({"GPU": 1} if cfg.use_gpu else {})},
        ),
        run_config=RunConfig(name="train", storage_path=str(out / "ray")),
    )
    t0 = time.monotonic()
    try:
        _fit_showing_metrics(trainer, out / "metrics.jsonl", cfg.steps, log)
    except KeyboardInterrupt:
        ckpt = _run_result(out)["checkpoint"]
        log(f"training stopped; {f'the last checkpoint {ckpt} is kept' if ckpt else 'no checkpoint was written yet'}: re-run to resume")
        raise
    return {**_run_result(out), "trained": True, "elapsed_s": round(time.monotonic() - t0, 1)}


def _run_result(out: Path) -> dict:
    """What a run folder holds: its last metrics line, latest checkpoint, samples and metrics log."""
    from training.loop import latest_checkpoint

    ckpt = latest_checkpoint(out)
    metrics_log = out / "metrics.jsonl"
    lines = metrics_log.read_text().splitlines() if metrics_log.exists() else []
    return {
        "out_dir": str(out),
        "metrics": json.loads(lines[-1]) if lines else {},
        "checkpoint": str(ckpt) if ckpt else None,
        "samples": str(out / "samples"),
        "metrics_log": str(metrics_log),
    }


def already_trained(cfg: TrainRunConfig) -> dict | None:
    """The run folder's result (``trained: False``) when its latest checkpoint is already at or past
    ``steps``, else None: re-running a finished command must say so at once, not start Ray (~25 s)
    for a loop that runs no step."""
    from training.loop import latest_checkpoint

    ckpt = latest_checkpoint(cfg.out_dir) if cfg.resume else None
    step = _checkpoint_step(ckpt)
    if step is None or step < cfg.steps:
        return None
    res = _run_result(Path(cfg.out_dir).resolve())
    return {**res, "metrics": {**res["metrics"], "step": step}, "trained": False, "elapsed_s": 0.0}


def _checkpoint_step(ckpt: Path | None) -> int | None:
    """The step of a checkpoint folder, from its name (``step_00000025``), without loading it."""
    if ckpt is None or not ckpt.name.removeprefix("step_").isdigit():
        return None
    return int(ckpt.name.removeprefix("step_"))


def single_rank_default(cfg: TrainRunConfig, log) -> TrainRunConfig:
    """The 6B model on one rank defaults to LoRA (with a note saying so and how to opt out): a full
    fine-tune does not fit one 80 GB GPU and barely one 141 GB one. An explicit ``lora_rank``
    (``--lora R``, or ``lora_rank: null`` / ``--full-finetune``) is kept as given."""
    if cfg.model != "6b" or cfg.num_workers != 1 or "lora_rank" in cfg.model_fields_set:
        return cfg
    r = SINGLE_RANK_6B_LORA_RANK
    log(
        f"note: --model 6b on one rank trains a LoRA adapter (rank {r}) by default: a full fine-tune needs ~123 GB "
        "for fp32 weights, grads, Adam and EMA before activations (docs/training.md). "
        "--full-finetune (lora_rank: null) trains every weight; --lora R sets the rank."
    )
    return cfg.model_copy(update={"lora_rank": r})


def check_training_inputs(cfg: TrainRunConfig, log=None) -> None:
    """What can be wrong with the inputs, found in the driver before Ray starts (seconds, not a
    cluster start-up): loader fields, the shards' existence, that they are Lance and not empty, their
    columns, pre-encoded features, and that ``out_dir``'s checkpoint is of this run's kind (LoRA or full)."""
    from curation.config import validate
    from training.loader import LoaderConfig, ShardDataset

    validate(LoaderConfig, {"seed": cfg.seed, **cfg.loader}, where="loader")
    if cfg.lora_rank:
        from training.loop import model_config
        from training.lora import check_targets

        check_targets(model_config(cfg), cfg.lora_targets)  # a target naming no linear layer: fail before Ray starts
    if "://" not in cfg.shards and not Path(cfg.shards).exists():
        raise FileNotFoundError(f"no training shards at {cfg.shards!r}; write them with `curate export --out {cfg.shards}`")
    if _open_lance(cfg.shards, "a training shard dataset written by `curate export`").count_rows() == 0:
        raise ValueError(f"{cfg.shards} holds 0 rows: nothing to train on (did the export's rules exclude every sample?)")
    probe = ShardDataset(cfg.shards, {"seed": cfg.seed, **cfg.loader}, rank=0, world_size=1)
    _check_checkpoint_kind(cfg)
    if "edit_ratio" in cfg.model_fields_set and not cfg.pairs:
        raise ValueError("edit_ratio (--edit-ratio) mixes in pair shards: give them with --pairs")
    if cfg.pairs:
        _check_pair_shards(cfg, probe)
    if probe.pairs or cfg.pairs:
        _check_vae(cfg)
    elif not probe.pre_latents and not (cfg.vae_path or cfg.tiny_encoders):
        raise ValueError(
            f"{cfg.shards} holds images, not pre-encoded latents, and no VAE is configured to encode them: set vae_path "
            "in --config, export the shards with latents (docs/training.md), or pass --tiny-encoders for a smoke run "
            "(random tiny encoders: every code path, meaningless outputs)"
        )
    _check_pre_encoded(cfg, probe, log or print)


def _check_pair_shards(cfg: TrainRunConfig, main) -> None:
    """``pairs`` must be pair shards and ``shards`` single-image ones (pair shards alone: give them as ``shards``)."""
    from training.loader import ShardDataset

    if main.pairs:
        raise ValueError(f"{cfg.shards} holds pairs too: give single-image shards as --shards, or the pair shards alone as --shards")
    if "://" not in cfg.pairs and not Path(cfg.pairs).exists():
        raise FileNotFoundError(f"no pair shards at {cfg.pairs!r}; write them with `curate pairs export --out {cfg.pairs}`")
    _open_lance(cfg.pairs, "a pair shard dataset")
    pairs = ShardDataset(cfg.pairs, {"seed": cfg.seed, **cfg.loader, "pre_encoded": None}, rank=0, world_size=1)
    if not pairs.pairs:
        raise ValueError(f"{cfg.pairs} holds single images, not pairs: write pair shards with `curate pairs export`")


def _check_vae(cfg: TrainRunConfig) -> None:
    """Pair shards hold images only (no pre-encoded latents), so editing needs a VAE in the loop."""
    if not (cfg.vae_path or cfg.tiny_encoders):
        raise ValueError("editing pairs hold images, not latents: set vae_path (or tiny_encoders: true) to encode them")


def _check_pre_encoded(cfg: TrainRunConfig, ds, log) -> None:
    """Pre-encoded shards: say which encoders made them, and refuse text features the model cannot take."""
    from training.loop import model_config

    enc = ds.manifest.get("encoders") or {}
    if ds.pre_text:
        dim, want = (enc.get("text_encoder") or {}).get("hidden_size"), model_config(cfg).cap_feat_dim
        if dim is not None and dim != want:
            raise ValueError(
                f"the shards' caption features are {dim}-d ({enc['text_encoder'].get('path')}) but the "
                f"{cfg.model} model takes cap_feat_dim={want}: re-export with the matching text encoder, "
                "set model_overrides: {cap_feat_dim: ...}, or use loader: {pre_encoded: false}"
            )
    parts = [
        f"latents from {enc.get('vae', {}).get('path', '?')}" if ds.pre_latents else "",
        f"caption features from {enc.get('text_encoder', {}).get('path', '?')}" if ds.pre_text else "",
    ]
    if any(parts):
        log("pre-encoded shards: " + ", ".join(p for p in parts if p) + " (those encoders are not run in the loop)")


def _open_lance(uri: str, what: str):
    """The Lance dataset at ``uri``, or one line saying it is not ``what``. Lance says so with a
    ValueError (not an OSError) whose text drops the path's leading '/' and names Rust source
    lines: not shown."""
    import lance

    from training.loader import clean_native_message

    try:
        return lance.dataset(uri)
    except (OSError, ValueError) as e:
        why = "not a Lance dataset" if "was not found" in str(e) else clean_native_message(str(e))
        raise ValueError(f"{uri} is not {what}: {why}") from None


def _check_checkpoint_kind(cfg: TrainRunConfig) -> None:
    """A LoRA run cannot resume a full fine-tune's checkpoint, nor a full run a LoRA one (different
    files, different trained parameters): say so before Ray starts, not as a worker's traceback."""
    from training.loop import ADAPTER_FILE, latest_checkpoint

    ckpt = latest_checkpoint(cfg.out_dir) if cfg.resume else None
    if ckpt is None:
        return
    lora = single_rank_default(cfg, lambda _m: None).lora_rank  # the 6b one-rank default counts
    has_adapter = (ckpt / ADAPTER_FILE).exists()
    if lora and not has_adapter:
        raise ValueError(
            f"{cfg.out_dir} holds a full fine-tune checkpoint ({ckpt.name}): a LoRA run (--lora) cannot resume it; use another --out"
        )
    if not lora and has_adapter:
        raise ValueError(
            f"{cfg.out_dir} holds a LoRA checkpoint ({ckpt.name}): resume it with --lora and its rank, or use another --out for a full fine-tune"
        )
    _check_checkpoint_model(cfg, ckpt)


def _check_checkpoint_model(cfg: TrainRunConfig, ckpt: Path) -> None:
    """A full run resumes weights of the model its config builds (``--model``, ``model_overrides``):
    another size or layer count is said here, naming what differs, not as a worker's
    ``load_state_dict`` traceback after Ray started. Headers only: the model on the meta device,
    the checkpoint's tensor names and shapes."""
    import torch
    from safetensors import safe_open

    from training.loop import model_config
    from training.model import S3DiT

    f = ckpt / "model.safetensors"
    if not f.exists():  # a LoRA run's adapters, or an FSDP2 run's dcp/ shards: checked when loaded
        return
    with torch.device("meta"):
        want = {k: tuple(v.shape) for k, v in S3DiT(model_config(cfg)).state_dict().items()}
    with safe_open(str(f), framework="pt") as h:
        have = {k: tuple(h.get_slice(k).get_shape()) for k in h.keys()}
    if want == have:
        return
    missing, extra = sorted(set(want) - set(have)), sorted(set(have) - set(want))
    shape = [f"{k} {have[k]} -> {want[k]}" for k in sorted(set(want) & set(have)) if want[k] != have[k]]
    what = "; ".join(
        f"{name} {', '.join(keys[:3])}{', ...' if len(keys) > 3 else ''}"
        for name, keys in (("not in the checkpoint:", missing), ("only in the checkpoint:", extra), ("other shape:", shape))
        if keys
    )
    raise ValueError(
        f"{cfg.out_dir} holds a checkpoint ({ckpt.name}) of another model than --model {cfg.model} with these "
        f"model_overrides builds ({what}): resume it with the run's own model settings, or use another --out"
    )


def _fit_showing_metrics(trainer, metrics_log: Path, steps: int, log) -> None:
    """``trainer.fit()`` in a daemon thread while the driver prints rank 0's new metrics lines
    (worker stdout does not reach the driver on the embedded cluster). The main thread keeps the
    signals: on Ctrl+C it aborts the run (``_abort_training``) instead of waiting for the last step,
    which a ``ThreadPoolExecutor`` would (its exit joins the thread). A failed fit raises the
    worker's own exception (``_worker_error``)."""
    import threading

    box: dict = {}
    pos = [metrics_log.stat().st_size if metrics_log.exists() else 0]

    def fit() -> None:
        try:
            box["result"] = trainer.fit()
        except BaseException as e:  # noqa: BLE001 - handed to the main thread
            box["error"] = e

    thread = threading.Thread(target=fit, name="ray-train-fit", daemon=True)
    thread.start()
    try:
        while thread.is_alive():
            thread.join(0.5)
            _tail_metrics(metrics_log, pos, steps, log)
    except KeyboardInterrupt:
        _abort_training()
        raise
    _tail_metrics(metrics_log, pos, steps, log)
    if "error" in box:
        raise _worker_error(box["error"])


def _tail_metrics(metrics_log: Path, pos: list[int], steps: int, log) -> None:
    """Print the complete lines written to ``metrics_log`` since ``pos[0]`` (advanced past them)."""
    from training.loop import format_metrics

    if not metrics_log.exists():
        return
    with metrics_log.open("rb") as f:
        f.seek(pos[0])
        chunk = f.read()
    done = chunk[: chunk.rfind(b"\n") + 1]
    pos[0] += len(done)
    for line in done.decode().splitlines():
        log(format_metrics(json.loads(line), steps))


def _abort_training() -> None:
    """Stop the Ray Train run now: shutting Ray down ends the embedded cluster (workers included), or
    on a joined cluster ends this driver's job, whose controller and workers Ray then kills. Ray
    Train's own SIGINT abort only exists when ``fit`` runs in the main thread, which here prints
    metrics. Checkpoints are published by an atomic rename, so the last complete one is kept."""
    import ray

    try:
        ray.shutdown()
    except Exception:  # noqa: BLE001 - already interrupted: leave as fast as possible
        pass


def _worker_error(err: BaseException) -> BaseException:
    """The exception a worker raised, out of Ray Train's ``WorkerGroupError`` (lowest rank first),
    so that the command shows its message ("shard fragment 3 ... is unreadable") and not "worker
    errors ... a bug in zcurate"; the WorkerGroupError, with every rank's traceback, is its cause."""
    failures = getattr(err, "worker_failures", None) or {}
    if not failures:
        return err
    exc = failures[min(failures)]
    exc.__cause__ = err
    return exc


@register_step("train", TrainRunConfig, doc="train S3-DiT on training shards (Ray Train; DDP/FSDP2)", writes=frozenset())
def _train_step(ctx, cfg: TrainRunConfig):
    return run_training(cfg, log=print if ctx.show_progress else (lambda _m: None))
