"""Import-time compatibility fixes that every process of the platform needs (drivers, Ray workers,
subprocesses), installed once from ``curation/__init__``.

torchvision: the registry's torchvision for torch 2.13 is a CUDA build whose compiled ops do not
load next to the CPU torch, and ``import torchvision`` then fails with ``operator torchvision::nms
does not exist``. transformers, sentence-transformers, diffusers and open_clip all import
torchvision when it is installed, so one broken import takes them all down (e.g. transformers'
``PreTrainedModel``). Only open_clip needs torchvision (the ``clip`` extra installs it), but once
it is in the environment everything must keep working. The hook below makes the first
``import torchvision`` try the real thing; only if the compiled ops fail does it declare the two op
schemas torchvision's Python code registers fake kernels for, then import again. Transforms and
models work; ``torchvision.ops`` stays unusable (nothing here uses it). A working torchvision (a
GPU machine with a matching build) is imported untouched.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import threading

__all__ = ["install_torchvision_hook", "import_torchvision"]

_lock = threading.RLock()
_busy = threading.local()
_shim = None  # the torch.library.Library that declares the schemas; kept alive for the process


def _declare_schemas() -> None:
    global _shim
    import torch

    if _shim is not None:
        return
    lib = torch.library.Library("torchvision", "DEF")
    for schema in (
        "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
        "qnms(Tensor qdets, Tensor scores, float iou_threshold) -> Tensor",
    ):
        try:
            lib.define(schema)
        except RuntimeError:  # declared already, e.g. by another copy of this shim
            pass
    _shim = lib


def import_torchvision():
    """``import torchvision``, declaring the op schemas first only when its compiled ops fail."""
    with _lock:
        _busy.on = True
        try:
            try:
                return importlib.import_module("torchvision")
            except RuntimeError as e:
                if "torchvision::" not in str(e):
                    raise
            for k in [k for k in sys.modules if k == "torchvision" or k.startswith("torchvision.")]:
                del sys.modules[k]
            _declare_schemas()
            return importlib.import_module("torchvision")
        finally:
            _busy.on = False


class _AlreadyLoaded(importlib.abc.Loader):
    def __init__(self, module):
        self.module, self.spec = module, module.__spec__

    def create_module(self, spec):
        return self.module

    def exec_module(self, module) -> None:
        module.__spec__, module.__loader__ = self.spec, self.spec.loader  # its own, not ours


class _TorchvisionFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name != "torchvision" or getattr(_busy, "on", False):
            return None
        module = import_torchvision()
        spec = importlib.machinery.ModuleSpec(name, _AlreadyLoaded(module), origin=module.__spec__.origin, is_package=True)
        spec.submodule_search_locations = module.__spec__.submodule_search_locations
        return spec


def install_torchvision_hook() -> None:
    """Idempotent; cheap (imports nothing until something imports torchvision)."""
    if "torchvision" in sys.modules or any(isinstance(f, _TorchvisionFinder) for f in sys.meta_path):
        return
    sys.meta_path.insert(0, _TorchvisionFinder())
