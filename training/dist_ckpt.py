"""Sharded checkpoints for FSDP2 runs (``torch.distributed.checkpoint``, DCP) and sharded loading
of released weights straight into FSDP2 shards.

Why: gathering a full state dict to one rank (fp32 model, two AdamW moments, EMA: 16 bytes per
parameter, ~98 GB for the 6B model) at every checkpoint costs minutes and a full copy in host memory, and
``EMA.full()`` gathered on *every* rank. Here each rank writes only its own shards:

* ``save(folder, model, opt, ema)``: one ``dcp.save`` of ``{"model", "optim", "ema"}`` (sharded
  ``get_model_state_dict`` / ``get_optimizer_state_dict`` and the EMA's DTensor shards). Every rank
  writes ``__<rank>_0.distcp``, the coordinator ``.metadata``.
* ``load_model`` / ``load_optim_ema``: load into whatever layout the resuming run has (FSDP2 on any
  number of ranks, DDP, or one process with no process group): DCP reshards on load from the
  metadata, so a checkpoint of 2 ranks resumes on 1 or on 4.
* ``export_safetensors(folder, out)``: one process, no process group, reads the shards from disk
  and writes ``model.safetensors`` / ``ema.safetensors`` in the released layout (for export; the
  loop does it for the final checkpoint only). Peak host memory: the full model in fp32 once.
* ``load_file_into_shards(model, path, skip)``: released safetensors (a file or a folder of shards) into a
  ``fully_shard``-ed model built on the meta device and ``to_empty``-ed: each rank reads only its
  rows of each tensor (``safe_open(...).get_slice``) and casts them to the parameter's dtype. Peak per rank: its
  shards plus one slice as stored; no rank ever holds the full model. LoRA runs under FSDP2 read
  their frozen base this way too (``skip``: the adapters, which the file does not hold).
"""

from __future__ import annotations

import warnings
from collections.abc import Collection, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import torch

__all__ = ["DCP_DIR", "is_dcp", "save", "load_model", "load_optim_ema", "export_safetensors", "load_file_into_shards"]

DCP_DIR = "dcp"
"""The DCP folder inside ``checkpoints/step_XXXXXXXX/`` (``.metadata`` + one ``.distcp`` per rank)."""


def is_dcp(ckpt: Path | None) -> bool:
    """Whether a checkpoint folder holds sharded (DCP) training state."""
    return ckpt is not None and (ckpt / DCP_DIR / ".metadata").is_file()


def save(folder: Path, model: torch.nn.Module, opt: torch.optim.Optimizer, ema: Any | None) -> None:
    """Every rank writes its own shards of model, optimizer and EMA to ``folder`` (collective)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    state = {"model": get_model_state_dict(model), "optim": get_optimizer_state_dict(model, opt)}
    if ema is not None:
        state["ema"] = ema.state_dict()
    with _one_process_is_intended():
        dcp.save(state, checkpoint_id=str(folder))


def load_model(folder: Path, model: torch.nn.Module) -> None:
    """The model's weights from ``folder`` into the current layout (resharded as needed)."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, set_model_state_dict

    state = {"model": get_model_state_dict(model)}
    _check_layout(folder, state["model"])
    _load(state, folder)
    set_model_state_dict(model, state["model"])


def _check_layout(folder: Path, model_state: dict[str, torch.Tensor]) -> None:
    """Refuse, with the offending names, a checkpoint of another model (DCP would fail deep inside)."""
    md = _metadata(folder).state_dict_metadata
    saved = {k.removeprefix("model."): v for k, v in md.items() if k.startswith("model.")}
    missing, unexpected = sorted(set(model_state) - set(saved)), sorted(set(saved) - set(model_state))
    if missing or unexpected:
        raise ValueError(f"{folder} holds another model: missing {missing[:8]}, unexpected {unexpected[:8]}")
    for k, t in model_state.items():
        if tuple(saved[k].size) != tuple(t.shape):
            raise ValueError(f"{folder}: {k} has shape {tuple(saved[k].size)} in the checkpoint, {tuple(t.shape)} in the model")


def load_optim_ema(folder: Path, model: torch.nn.Module, opt: torch.optim.Optimizer, ema: Any | None) -> bool:
    """Optimizer moments and (if the run keeps one) the EMA from ``folder``. Returns whether the
    checkpoint had an EMA; without one the caller restarts the average from the weights."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict

    has_ema = ema is not None and any(k.startswith("ema.") for k in _metadata(folder).state_dict_metadata)
    state: dict[str, Any] = {"optim": get_optimizer_state_dict(model, opt)}
    if has_ema:
        state["ema"] = ema.state_dict()
    _load(state, folder)
    set_optimizer_state_dict(model, opt, state["optim"])
    if has_ema:
        ema.load_shards(state["ema"])
    return has_ema


def _load(state: dict, folder: Path, no_dist: bool = False) -> None:
    """``dcp.load`` in place; with no process group (or ``no_dist``) this process reads alone."""
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp

    no_dist = no_dist or not (dist.is_available() and dist.is_initialized())
    with _one_process_is_intended():
        dcp.load(state, checkpoint_id=str(folder), no_dist=no_dist)


@contextmanager
def _one_process_is_intended() -> Iterator[None]:
    """Without a process group DCP warns that it assumes one process: here that is the intent."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


def _metadata(folder: Path):
    from torch.distributed.checkpoint import FileSystemReader

    if not (Path(folder) / ".metadata").is_file():
        raise FileNotFoundError(f"{folder} is not a DCP checkpoint folder (no .metadata): pass a checkpoint's dcp/ folder")
    return FileSystemReader(str(folder)).read_metadata()


def export_safetensors(folder: Path, out: Path) -> list[Path]:
    """``model.safetensors`` (and ``ema.safetensors`` when there is an EMA) in the released layout
    from a DCP folder, in this process alone (no process group, no collective). Returns the files."""
    from safetensors.torch import save_file
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    md = _metadata(folder).state_dict_metadata
    written = []
    for prefix, name in (("model.", "model.safetensors"), ("ema.", "ema.safetensors")):
        keys = [k for k, v in md.items() if k.startswith(prefix) and isinstance(v, TensorStorageMetadata)]
        if not keys:
            continue
        state = {k: torch.empty(md[k].size, dtype=md[k].properties.dtype) for k in keys}
        _load(state, folder, no_dist=True)
        save_file({k.removeprefix(prefix): v.contiguous() for k, v in state.items()}, str(out / name))
        written.append(out / name)
        del state
    return written


def load_file_into_shards(model: torch.nn.Module, path: str | Path, skip: Collection[str] = ()) -> None:
    """Released-layout weights into a sharded model's (``to_empty``-ed) parameters, each rank reading
    only its own rows of each tensor, cast to the parameter's dtype (fp32 masters from bf16 files, or
    a LoRA run's bf16 frozen base). Names and shapes must match exactly, as for
    ``training.model.load_safetensors``, except the model's tensors named in ``skip``, which no
    released file holds (a LoRA run's adapters: the caller sets them)."""
    from safetensors import safe_open

    path = Path(path)
    files = sorted(path.glob("*.safetensors")) if path.is_dir() else [path]
    if not files or not files[0].exists():
        raise FileNotFoundError(f"no .safetensors files at {path}")
    targets = {k: v for k, v in model.state_dict().items() if k not in skip}
    with ExitStack() as stack:
        where = {}
        for f in files:
            h = stack.enter_context(safe_open(str(f), framework="pt", device="cpu"))
            where.update({k: h for k in h.keys()})
        missing, unexpected = set(targets) - set(where), set(where) - set(targets)
        if missing or unexpected:
            raise ValueError(f"{path} does not match the S3-DiT layout: missing {sorted(missing)[:8]}, unexpected {sorted(unexpected)[:8]}")
        with torch.no_grad():
            for k, t in targets.items():
                _copy_slice(k, where[k].get_slice(k), t)


def _copy_slice(name: str, sl, target: torch.Tensor) -> None:
    """Copy this rank's part of a stored tensor (``sl``: a safetensors slice) into ``target``, a
    DTensor shard (``Shard(d)`` or ``Replicate`` on a 1-D mesh) or a plain tensor."""
    shape = tuple(sl.get_shape())
    if shape != tuple(target.shape):
        raise ValueError(f"{name}: shape {shape} in the file, {tuple(target.shape)} in the model")
    local = target.to_local() if hasattr(target, "to_local") else target
    dim, start, stop = _local_rows(target, shape)
    if local.numel() == 0:
        return
    index = tuple(slice(start, stop) if d == dim else slice(None) for d in range(len(shape)))
    local.copy_(sl[index])


def _local_rows(target: torch.Tensor, shape: tuple[int, ...]) -> tuple[int, int, int]:
    """(dim, start, stop) of the rows this rank holds: ``torch.chunk`` over the mesh, as FSDP2 and
    ``distribute_tensor`` split ``Shard(dim)``; (-1, 0, 0) for a whole tensor."""
    from torch.distributed.tensor import Shard

    if not hasattr(target, "placements"):
        return -1, 0, 0
    mesh, placements = target.device_mesh, target.placements
    shards = [p for p in placements if isinstance(p, Shard)]
    if mesh.ndim != 1 or len(shards) > 1:
        raise NotImplementedError(f"sharded loading supports a 1-D mesh with one Shard placement, not {placements} on {mesh}")
    if not shards:
        return -1, 0, 0
    dim, n, world, rank = shards[0].dim, shape[shards[0].dim], mesh.size(), mesh.get_local_rank()
    chunk = -(-n // world)
    start, stop = min(rank * chunk, n), min((rank + 1) * chunk, n)
    if stop - start != target.to_local().shape[dim]:
        raise RuntimeError(f"unexpected shard of {tuple(shape)} on rank {rank} of {world}: {tuple(target.to_local().shape)}")
    return dim, start, stop
