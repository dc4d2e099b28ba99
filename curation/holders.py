"""Workers that keep what they load between calls: the shape of an iterative solve over every row.

:func:`curation.runner.execute_units` hands each unit to whichever worker is free and forgets it:
right for a pass over the data. A solve that goes over all rows many times (resampling's weights,
60 rounds) would read every fragment 60 times that way, or hold every row on the driver. Here
each unit is loaded once by one of a few Ray actors, which keep the loaded objects; the driver
then calls a method on every object (``Holders.map``) and gets their results in unit order, so it
holds what the objects return (vectors of concept length), never the rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pyarrow as pa

from curation.errors import UserError

__all__ = ["Holders", "HolderLost"]


class HolderLost(UserError, RuntimeError):
    """A worker keeping loaded units stopped mid-job (out of memory, a node lost): what it held is
    gone, so the job stops and says to re-run it (the solve is short next to its loading)."""


class _Holder:
    """A Ray actor: builds ``worker_cls(**ctor_kwargs)`` once, loads units with it (``worker(unit)``,
    the unit as a one-row Arrow table like ``execute_units`` gives it) and keeps each result."""

    def __init__(self, worker_cls: type, ctor_kwargs: dict[str, Any]):
        self.worker = worker_cls(**ctor_kwargs)
        self.held: dict[int, Any] = {}

    def load(self, key: int, unit: dict[str, Any]) -> None:
        self.held[key] = self.worker(pa.Table.from_pylist([unit]))

    def call(self, keys: list[int], method: str, args: tuple, each: list | None) -> list:
        return [getattr(self.held[k], method)(*args, *(() if each is None else (each[i],))) for i, k in enumerate(keys)]


class Holders:
    """``n`` actors (one per slot of ``ray_options``, at most ``concurrency``, at most one per
    unit) holding the loaded units, unit ``k`` on actor ``k % n``. Use as a context manager: the
    actors (and their reserved CPUs) are freed on exit, before the job's next phase needs them."""

    def __init__(
        self,
        units: list[dict[str, Any]],
        worker_cls: type,
        ctor_kwargs: dict[str, Any],
        *,
        ray_options: dict[str, Any],
        description: str,
        concurrency: int | None = None,
        show_progress: bool = True,
    ):
        import ray

        from curation.runner import _cluster_slots

        self.description = description
        n = max(1, min(len(units), concurrency or _cluster_slots(ray_options)))
        named = type(worker_cls.__name__, (_Holder,), {"__qualname__": worker_cls.__qualname__})
        opts = {"scheduling_strategy": "SPREAD", **ray_options}
        self.actors = [ray.remote(named).options(**opts).remote(worker_cls, ctor_kwargs) for _ in range(n)]
        self.keys = [list(range(i, len(units), n)) for i in range(n)]
        self._load(units, show_progress)

    def _load(self, units: list[dict[str, Any]], show_progress: bool) -> None:
        """Every unit loaded by its actor, in rows of progress (units) with rate and ETA."""
        import ray

        from curation.runner import _progress

        refs = [self.actors[k % len(self.actors)].load.remote(k, u) for k, u in enumerate(units)]
        with _progress(not show_progress) as progress:
            task = progress.add_task(self.description, total=len(refs))
            pending = refs
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                self._get(done)
                progress.advance(task)

    def _get(self, refs):
        import ray

        try:
            return ray.get(refs)
        except ray.exceptions.RayActorError as e:
            first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
            raise HolderLost(f"{self.description}: a worker keeping loaded rows stopped ({first}); re-run the job") from None

    def map(self, method: str, *args, each: Sequence | None = None) -> list:
        """``held.method(*args[, each[k]])`` for every loaded unit ``k``; the results in unit order."""
        import ray

        shared = ray.put(args) if len(self.actors) > 1 else args  # sent once, not once per actor
        refs = [
            a.call.remote(keys, method, shared, None if each is None else [each[k] for k in keys])
            for a, keys in zip(self.actors, self.keys)
        ]
        out: list = [None] * sum(len(k) for k in self.keys)
        for keys, got in zip(self.keys, self._get(refs)):
            for k, r in zip(keys, got):
                out[k] = r
        return out

    def close(self) -> None:
        import ray

        for a in self.actors:
            ray.kill(a)
        self.actors = []

    def __enter__(self) -> Holders:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
