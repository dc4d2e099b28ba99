"""``curate train``: S3-DiT training on exported shards."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape

from cli.common import AddressOpt, console, fail, start_ray
from pipelines.train import TrainRunConfig, check_training_inputs, run_training


def register(app) -> None:

    @app.command("train")
    def train_cmd(
        shards: str = typer.Option(..., "--shards", "-s", help="training shards from `curate export`"),
        model: Optional[str] = typer.Option(None, "--model", "-m", help="tiny | small | 6b (default: tiny or the config's)"),
        config: Optional[Path] = typer.Option(None, "--config", "-c", help="train.yaml: any TrainRunConfig field"),
        steps: Optional[int] = typer.Option(None, help="optimizer steps (total, counting resumed ones)"),
        out: Optional[str] = typer.Option(None, "--out", "-o", help="run folder: checkpoints, metrics.jsonl, samples"),
        workers: Optional[int] = typer.Option(None, help="Ray Train workers (ranks)"),
        gpu: bool = typer.Option(False, "--gpu", help="one GPU per worker"),
        lora: Optional[int] = typer.Option(
            None, "--lora", help="LoRA fine-tuning at this rank (lora_rank): base frozen, adapters saved for diffusers"
        ),
        full_finetune: bool = typer.Option(
            False, "--full-finetune", help="train every weight (lora_rank: null); --model 6b on one worker defaults to LoRA"
        ),
        pairs: Optional[str] = typer.Option(
            None, "--pairs", help="pair shards from `curate pairs export`, mixed in as editing batches (omni mode)"
        ),
        edit_ratio: Optional[float] = typer.Option(None, "--edit-ratio", help="with --pairs: share of editing batches (default 0.25)"),
        tiny_encoders: bool = typer.Option(
            False,
            "--tiny-encoders",
            help="random tiny VAE and text encoder of the production classes, for a smoke run without weights "
            "(every code path, meaningless outputs)",
        ),
        address: Optional[str] = AddressOpt,
    ):
        """Train S3-DiT on training shards; re-running the same command resumes from the last checkpoint."""
        from curation.config import ConfigError, load_yaml, validate
        from pipelines.train import already_trained
        from training.loop import duration

        params = load_yaml(config) if config else {}
        if not isinstance(params, dict):
            validate(TrainRunConfig, params, where=str(config))  # not a mapping: the file's fault
        given = {"shards": shards, "model": model, "steps": steps, "out_dir": out, "num_workers": workers}
        given |= {"pairs": pairs, "edit_ratio": edit_ratio}
        cli_keys = {k for k, v in given.items() if v is not None}
        params.update({k: v for k, v in given.items() if v is not None})
        if gpu:
            params["use_gpu"] = True
            cli_keys.add("use_gpu")
        if tiny_encoders:
            params["tiny_encoders"] = True
            cli_keys.add("tiny_encoders")
        if lora is not None and full_finetune:
            fail("--lora and --full-finetune exclude each other")
        if lora is not None or full_finetune:
            params["lora_rank"] = lora  # explicit, also as None: overrides the 6b single-rank LoRA default
            cli_keys.add("lora_rank")
        cfg = _validated(params, cli_keys, config)
        try:
            check_training_inputs(cfg, log=_say)
            done = already_trained(cfg)
        except (ValueError, FileNotFoundError, ConfigError) as e:
            fail(str(e))
        if done is not None:  # nothing to do: say so without starting Ray
            _say(f"already at step {done['metrics']['step']} in {done['out_dir']}; nothing to train (raise --steps to go on)")
            return
        start_ray(address, num_cpus=None)
        try:
            res = run_training(cfg, log=_say)
        except (ValueError, FileNotFoundError, ConfigError) as e:  # also a worker's, unwrapped by run_training
            fail(str(e))
        m = res["metrics"]
        console.print(
            f"[bold]trained[/] to step {m.get('step')}  loss {m.get('loss')}  in {duration(res.get('elapsed_s') or 0)}  "
            f"checkpoint {escape(str(res['checkpoint']))}\nmetrics {escape(str(res['metrics_log']))}  samples {escape(str(res['samples']))}"
        )


def _say(message: str) -> None:
    """A job's line as it is: paths and values may hold brackets that rich would read as markup."""
    console.print(message, markup=False, highlight=False)


def _validated(params, cli_keys: set[str], config: Optional[Path]) -> TrainRunConfig:
    """The run's config; an error is said to be in the config file or on the command line after
    where its fields' values came from (a bad ``--edit-ratio`` is not the file's fault)."""
    from pydantic import ValidationError

    from curation.config import validate

    try:
        return TrainRunConfig.model_validate(params)
    except ValidationError as e:
        fields = {str(err["loc"][0]) for err in e.errors() if err["loc"]}
    where = "command line"
    if config and not (fields and fields <= cli_keys):
        where = str(config) if fields and not fields & cli_keys else f"{config} or the command line"
    return validate(TrainRunConfig, params, where=where)
