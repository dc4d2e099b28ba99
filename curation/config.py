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
from curation.errors import UserError

__all__ = ["ConfigError", "StepConfig", "PipelineConfig", "RunContext", "load_yaml", "validate", "load_pipeline", "describe_fields"]

M = TypeVar("M", bound=BaseModel)


class ConfigError(UserError, ValueError):
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


def _fields_at(model: type[BaseModel] | None, loc: tuple) -> list[str]:
    """The field names the model accepts at ``loc``'s parent (descending through nested models
    and lists of models), so an unknown field can be answered with what is allowed there."""
    import typing

    for part in loc[:-1]:
        if model is None or isinstance(part, int):
            continue
        field = model.model_fields.get(part)
        if field is None:
            return []
        ann = field.annotation
        candidates = [ann, *typing.get_args(ann)] + [a for x in typing.get_args(ann) for a in typing.get_args(x)]
        model = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
    return list(model.model_fields) if model is not None else []


def _unknown_field(name: Any, allowed: list[str], help_hint: str) -> str:
    import difflib

    close = difflib.get_close_matches(str(name), allowed, n=1, cutoff=0.6)
    msg = "unknown field" + (f" (did you mean {close[0]!r}?)" if close else "")
    return msg + (f"; allowed: {', '.join(allowed)}" if allowed else "") + help_hint


def _format_errors(err: ValidationError, prefix: str = "", model: type[BaseModel] | None = None, help_hint: str = "") -> str:
    lines = []
    for e in err.errors():
        loc = prefix
        for part in e["loc"]:
            loc += f"[{part}]" if isinstance(part, int) else (f".{part}" if loc else str(part))
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = _unknown_field(e["loc"][-1], _fields_at(model, e["loc"]), help_hint)
        elif e["type"] == "missing":
            msg = "required field is missing"
        inp = e.get("input")
        shown = "" if e["type"] in ("missing",) or isinstance(inp, dict) else f" (got {inp!r})"
        lines.append(f"  {loc or '<root>'}: {msg}{shown}")
    return "\n".join(lines)


def validate(model: type[M], data: Any, *, where: str = "", prefix: str = "", step: str | None = None) -> M:
    """``model.model_validate(data)`` with a ConfigError that names each bad field, and for an
    unknown one the closest allowed name and the list (``step``: where the fields are described)."""
    try:
        return model.model_validate(data)
    except ValidationError as e:
        hint = f" (described by `curate stages {step}`)" if step else ""
        raise ConfigError(f"invalid config{(' in ' + where) if where else ''}:\n{_format_errors(e, prefix, model, hint)}") from None


def load_yaml(path: str | Path) -> Any:
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"config file not found: {p}")
    if not p.is_file():
        raise ConfigError(f"{p} is a directory, not a config file: name the YAML file inside it")
    try:
        return yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{p} is not valid YAML: {e}") from None
    except (UnicodeDecodeError, OSError) as e:
        raise ConfigError(f"{p} cannot be read as a UTF-8 YAML file: {e}") from None


def load_pipeline(path: str | Path) -> tuple[PipelineConfig, list[tuple[str, BaseModel]]]:
    """Read a pipeline file and validate every step's params against its registered model."""
    from curation.registry import STEPS, load_plugins

    raw = load_yaml(path)
    problems = []
    try:
        cfg = validate(PipelineConfig, raw, where=str(path))
    except ConfigError as e:  # go on to the steps: every bad field in one round, not one section a run
        problems.append(str(e).split(":\n", 1)[1])
        cfg = None
    load_plugins(cfg.plugins if cfg else _listed(raw, "plugins", str))
    steps: list[tuple[str, BaseModel]] = []
    for i, step in enumerate(cfg.steps if cfg else _raw_steps(raw)):
        if step is None:  # a malformed step: already in the problems above
            continue
        if not step.enabled:
            continue
        if step.stage not in STEPS:
            problems.append(f"  steps[{i}].stage: unknown step {step.stage!r}; allowed: {', '.join(sorted(STEPS))}")
            continue
        try:
            model = STEPS[step.stage].config_model
            steps.append((step.stage, validate(model, step.params, prefix=f"steps[{i}].params", step=step.stage)))
        except ConfigError as e:
            problems.append(str(e).split(":\n", 1)[1])
    if problems:
        raise ConfigError(f"invalid config in {path}:\n" + "\n".join(problems))
    return cfg, steps


def _listed(raw: Any, key: str, kind: type) -> list:
    """``raw[key]`` when it is a list of ``kind`` (a pipeline file that failed validation)."""
    got = raw.get(key) if isinstance(raw, dict) else None
    return got if isinstance(got, list) and all(isinstance(x, kind) for x in got) else []


def _raw_steps(raw: Any) -> list[StepConfig | None]:
    """The steps of a pipeline file whose other fields failed validation, so their params are
    checked in the same round; None for a step that is itself malformed."""
    out: list[StepConfig | None] = []
    for item in _listed(raw, "steps", object):
        try:
            out.append(StepConfig.model_validate(item))
        except ValidationError:
            out.append(None)
    return out


def _type_name(ann: Any) -> str:
    """``Optional[Literal['a', 'b']]`` -> ``'a' | 'b' | None``: a type as a YAML writer reads it."""
    import types
    import typing

    origin, args = typing.get_origin(ann), typing.get_args(ann)
    if origin is typing.Literal:
        return " | ".join(repr(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " | ".join("None" if a is type(None) else _type_name(a) for a in args)
    if origin in (list, dict):
        return f"{origin.__name__}[{', '.join(_type_name(a) for a in args)}]"
    return getattr(ann, "__name__", str(ann).replace("typing.", ""))


def describe_fields(model: type[BaseModel], prefix: str = "") -> list[tuple[str, str, str, str]]:
    """(name, type, default, description) of every field, nested models flattened as ``near.k``:
    what ``curate stages NAME`` prints, from the same models that validate the YAML."""
    import typing

    rows = []
    for name, f in model.model_fields.items():
        ann = f.annotation
        nested = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None
        if nested is not None:
            rows += describe_fields(nested, f"{prefix}{name}.")
            continue
        kind = _type_name(ann)
        default = "required" if f.is_required() else repr(f.get_default(call_default_factory=True))
        rows.append((prefix + name, kind, default if len(default) <= 60 else default[:57] + "...", f.description or ""))
        item = (typing.get_args(ann) or (None,))[0] if typing.get_origin(ann) is list else None
        if isinstance(item, type) and issubclass(item, BaseModel):  # e.g. export's rules: their fields too
            rows += describe_fields(item, f"{prefix}{name}[].")
    return rows
