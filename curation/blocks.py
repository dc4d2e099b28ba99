"""Blocks: the rows of a job cut into pieces that answer method calls, wherever they are kept.

An engine that must look at every row several times (resampling's solve, review mining's
criteria and look-alikes) is written against :class:`Blocks`: ``map`` calls one method on every
block and returns the results in block order, and the engine only combines what comes back. In
memory (tests, a Python caller) the blocks are :class:`LocalBlocks`; in a job they are kept by
Ray actors, one block a Lance fragment (``curation.holders.Holders``), so the driver holds what
the blocks return, not the rows.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

__all__ = ["Blocks", "LocalBlocks"]


class Blocks(Protocol):
    """``map(method, *args, each=None, into=None)``: ``block.method(*args[, each[k]])`` for every
    block ``k``, the results in block order; with ``into``, each result is handed to ``into`` in
    block order as it comes and none is kept (the driver merges as it goes: one block's answer at
    a time, not every block's at once)."""

    def map(self, method: str, *args, each: Sequence | None = None, into: Callable[[Any], None] | None = None) -> list: ...


class LocalBlocks:
    def __init__(self, blocks: list[Any]):
        self.blocks = blocks

    def map(self, method: str, *args, each: Sequence | None = None, into: Callable[[Any], None] | None = None) -> list:
        out = []
        for k, b in enumerate(self.blocks):
            r = getattr(b, method)(*args, *(() if each is None else (each[k],)))
            if into is None:
                out.append(r)
            else:
                into(r)
        return out
