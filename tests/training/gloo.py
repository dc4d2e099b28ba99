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
prints every thread's Python stack on such a signal, so a crash during the work shows where it was."""

from __future__ import annotations

import faulthandler
import os
import socket
import sys
from collections.abc import Callable

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


def spawn(fn: Callable, *args, world: int = 2) -> None:
    """``fn(rank, *args)`` on ranks ``0 .. world - 1`` of a fresh gloo group; returns when all are done."""
    torch.multiprocessing.start_processes(_entry, args=(fn, _free_port(), world, args), nprocs=world, start_method="spawn")
