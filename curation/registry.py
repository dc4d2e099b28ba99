"""Registries: column stages and pipeline steps by name, so configs can name them.

A *stage* adds columns to the samples table and runs through ``curation.runner.run_stage``.
A *step* is anything a pipeline YAML can list (ingest, a stage, index build, export, train...):
a function ``run(ctx, config) -> StageResult | dict``. Every registered stage is a step too.

Job modules register on import (``pipelines.load_jobs`` imports them all: the core never names a
job); ``load_plugins`` imports the user modules a pipeline names under ``plugins:``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from curation.stage import Stage, StageConfig

__all__ = ["StepSpec", "STEPS", "STAGES", "register_stage", "register_step", "get_stage", "load_plugins"]


@dataclass
class StepSpec:
    name: str
    config_model: type[BaseModel]
    run: Callable[[Any, Any], Any]
    doc: str = ""
    # the dataset columns the step writes, given its config and the columns there before it; None:
    # not known before it runs (a pipeline's checks of later steps then stop at it)
    writes: Callable[[Any, set[str]], set[str]] | None = None


STAGES: dict[str, type[Stage]] = {}
STEPS: dict[str, StepSpec] = {}


def _summary(doc: str | None) -> str:
    """A docstring's first paragraph on one line: its first sentence often wraps onto a second
    line, and cutting at the first line left "... and the" in ``curate stages``."""
    return " ".join((doc or "").strip().split("\n\n")[0].split())


def register_step(name: str, config_model: type[BaseModel] = StageConfig, doc: str = "", writes=None):
    """Decorator: ``@register_step("ingest", IngestConfig)`` on ``def run(ctx, cfg)``. ``writes``:
    ``(cfg, columns before) -> columns written`` (``StepSpec.writes``); a set, for a step that
    writes the same columns (or none) whatever its config."""

    def deco(fn):
        if name in STEPS and STEPS[name].run is not fn:
            raise ValueError(f"step {name!r} registered twice")
        w = (lambda _cfg, _have, _cols=frozenset(writes): set(_cols)) if isinstance(writes, (set, frozenset)) else writes
        STEPS[name] = StepSpec(name, config_model, fn, doc or _summary(fn.__doc__), w)
        return fn

    return deco


def register_stage(cls: type[Stage]) -> type[Stage]:
    """Class decorator: the stage becomes runnable by name, from the CLI and from pipelines."""
    STAGES[cls.name] = cls

    def run(ctx, cfg, _cls=cls):
        from curation.runner import run_stage

        return run_stage(ctx.store, _cls(cfg), overwrite=ctx.overwrite, show_progress=ctx.show_progress)

    def writes(cfg, _have, _cls=cls) -> set[str]:
        return set(_cls(cfg).output_schema.names)

    STEPS[cls.name] = StepSpec(cls.name, cls.config_model, run, _summary(cls.__doc__), writes)
    return cls


def get_stage(name: str) -> type[Stage]:
    if name not in STAGES:
        raise KeyError(f"unknown stage {name!r}; registered: {', '.join(sorted(STAGES)) or 'none'}")
    return STAGES[name]


def load_plugins(extra: list[str] | None = None) -> None:
    """Import user plugin modules (errors raise); their stages then travel to Ray workers by value."""
    for mod in extra or []:
        m = importlib.import_module(mod)
        # user stages travel to Ray workers by value: no need to ship the module to every node
        from ray import cloudpickle

        cloudpickle.register_pickle_by_value(m)
