"""Run a function on several CPU ranks of a gloo process group, spawned with ``torch.multiprocessing``
(no Ray): the pattern of ``tests/training/test_dist_ckpt.py``, shared for new multi-rank tests.

``spawn(fn, *args)`` starts ``world`` fresh interpreters; each joins the group and calls
``fn(rank, *args)``. ``fn`` must be a module-level function (it is pickled by reference), and what
it reports comes back through files, since a spawned process returns nothing. An exception in any
rank fails the call with that rank's traceback."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable

import torch


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank: int, fn: Callable, port: int, world: int, args: tuple) -> None:
    """One gloo rank: join the group, run ``fn(rank, *args)``, leave."""
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        fn(rank, *args)
    finally:
        dist.destroy_process_group()


def spawn(fn: Callable, *args, world: int = 2) -> None:
    """``fn(rank, *args)`` on ranks ``0 .. world - 1`` of a fresh gloo group; returns when all are done."""
    torch.multiprocessing.start_processes(_entry, args=(fn, _free_port(), world, args), nprocs=world, start_method="spawn")
