"""Typed configs loaded from YAML, rejected with the field and the fix when wrong.

A pipeline file names a dataset, where Ray runs, and an ordered list of steps, each with its own
typed params (the step's pydantic model, registered next to the step). Errors name the exact
path of the bad field (``steps[2].params.k``) and what is allowed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from curation.cluster import RayConfig

__all__ = ["ConfigError", "StepConfig", "PipelineConfig", "RunContext", "load_yaml", "validate", "load_pipeline"]

M = TypeVar("M", bound=BaseModel)


class ConfigError(ValueError):
    """A config that cannot be used; the message lists every bad field and what it accepts."""


class StepConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    stage: str = Field(description="registered step name, e.g. ingest, caption_stats, profile")
    params: dict[str, Any] = Field(default_factory=dict)
    enabled: bool = True


class PipelineConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    dataset: str = Field(description="Lance dataset path or s3:// URI")
    ray: RayConfig = Field(default_factory=RayConfig)
    plugins: list[str] = Field(default_factory=list, description="extra modules that register stages")
    overwrite: bool = False
    steps: list[StepConfig] = Field(min_length=1)


@dataclass
class RunContext:
    """What a step gets besides its own config: the dataset and how to behave."""

    store: Any  # curation.store.Store
    overwrite: bool = False
    show_progress: bool = True
    pipeline: PipelineConfig | None = None


def _format_errors(err: ValidationError, prefix: str = "") -> str:
    lines = []
    for e in err.errors():
        loc = prefix
        for part in e["loc"]:
            loc += f"[{part}]" if isinstance(part, int) else (f".{part}" if loc else str(part))
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown field (check the spelling; see the step's --help for allowed fields)"
        elif e["type"] == "missing":
            msg = "required field is missing"
        inp = e.get("input")
        shown = "" if e["type"] in ("missing",) or isinstance(inp, dict) else f" (got {inp!r})"
        lines.append(f"  {loc or '<root>'}: {msg}{shown}")
    return "\n".join(lines)


def validate(model: type[M], data: Any, *, where: str = "", prefix: str = "") -> M:
    """``model.model_validate(data)`` with a ConfigError that names each bad field."""
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise ConfigError(f"invalid config{(' in ' + where) if where else ''}:\n{_format_errors(e, prefix)}") from None


def load_yaml(path: str | Path) -> Any:
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"config file not found: {p}")
    try:
        return yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{p} is not valid YAML: {e}") from None


def load_pipeline(path: str | Path) -> tuple[PipelineConfig, list[tuple[str, BaseModel]]]:
    """Read a pipeline file and validate every step's params against its registered model."""
    from curation.registry import STEPS, load_plugins

    raw = load_yaml(path)
    cfg = validate(PipelineConfig, raw, where=str(path))
    load_plugins(cfg.plugins)
    steps: list[tuple[str, BaseModel]] = []
    problems = []
    for i, step in enumerate(cfg.steps):
        if not step.enabled:
            continue
        if step.stage not in STEPS:
            problems.append(f"  steps[{i}].stage: unknown step {step.stage!r}; allowed: {', '.join(sorted(STEPS))}")
            continue
        try:
            steps.append((step.stage, validate(STEPS[step.stage].config_model, step.params, prefix=f"steps[{i}].params")))
        except ConfigError as e:
            problems.append(str(e).split(":\n", 1)[1])
    if problems:
        raise ConfigError(f"invalid config in {path}:\n" + "\n".join(problems))
    return cfg, steps
