"""Run a function on several CPU ranks of a gloo process group, spawned with ``torch.multiprocessing``
(no Ray): the pattern of ``tests/training/test_dist_ckpt.py``, shared for new multi-rank tests.

``spawn(fn, *args)`` starts ``world`` fresh interpreters; each joins the group and calls
``fn(rank, *args)``. ``fn`` must be a module-level function (it is pickled by reference), and what
it reports comes back through files, since a spawned process returns nothing. An exception in any
rank fails the call with that rank's traceback.

A rank whose ``fn`` returned leaves with ``os._exit(0)`` after ``destroy_process_group``, skipping
interpreter finalisation: the model the rank built still holds the gloo group, whose C++ threads
then meet finalisation. That is the likely cause of one rank aborting once in CI ("terminate called
without an active exception", SIGABRT; not reproduced in 12 runs under load here). ``faulthandler``
prints every thread's Python stack on such a signal, so a crash during the work shows where it was.

A rank killed by a signal inside gloo itself (session 17's CI: "free(): invalid size" in the
``wait_tensor`` of a ``full_tensor`` gather, 0 in 70 runs here, 2 of them in parallel) is a crash of
the transport, not a wrong result: ``spawn`` then runs the ranks once more, from the folders its
arguments name as they were before the first try, with a warning that the test report shows. A
Python exception in a rank, a second crash, or wrong numbers still fail the test."""

from __future__ import annotations

import faulthandler
import os
import shutil
import socket
import sys
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

import torch


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank: int, fn: Callable, port: int, world: int, args: tuple) -> None:
    """One gloo rank: join the group, run ``fn(rank, *args)``, leave (module docstring: why ``_exit``)."""
    import torch.distributed as dist

    faulthandler.enable(all_threads=True)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        fn(rank, *args)
    finally:
        dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # only reached when fn returned: an exception still goes to spawn's error file


def _start(fn: Callable, args: tuple, world: int) -> None:
    torch.multiprocessing.start_processes(_entry, args=(fn, _free_port(), world, args), nprocs=world, start_method="spawn")


def _folders(args: tuple) -> list[Path]:
    """The absolute paths among ``args`` that are folders or do not exist yet: what ``fn`` may write."""
    paths = [Path(a) for a in args if isinstance(a, (str, Path)) and os.path.isabs(a)]
    return [p for p in paths if p.is_dir() or not p.exists()]


def spawn(fn: Callable, *args, world: int = 2) -> None:
    """``fn(rank, *args)`` on ranks ``0 .. world - 1`` of a fresh gloo group; returns when all are done.
    A rank killed by a signal: once more from the folders as they were (module docstring: why)."""
    with tempfile.TemporaryDirectory() as keep:
        folders = _folders(args)
        saved = {f: shutil.copytree(f, Path(keep) / str(i)) for i, f in enumerate(folders) if f.is_dir()}
        try:
            _start(fn, args, world)
            return
        except torch.multiprocessing.ProcessExitedException as e:
            if not e.signal_name:
                raise
            warnings.warn(
                f"gloo rank {e.error_index} died by {e.signal_name}; ran {fn.__name__} again from the saved folders", stacklevel=2
            )
        for f in folders:
            shutil.rmtree(f, ignore_errors=True)
            if f in saved:
                shutil.copytree(saved[f], f)
        _start(fn, args, world)
