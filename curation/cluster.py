"""Ray setup: an embedded local cluster by default, a real cluster by address.

The embedded default is sized for a laptop: a bounded object store (Ray otherwise reserves a
large share of /dev/shm), and a node on 127.0.0.1 whose servers listen on loopback only
(``_loopback_only``): Ray has no authentication by default, so anything listening beyond
loopback lets whoever reaches the machine run code on it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from collections.abc import Iterator

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["RayConfig", "init_ray"]

LOOPBACK_NODE_IP = "127.0.0.1"


class RayConfig(BaseModel):
    """Where jobs run. ``address`` (or ``RAY_ADDRESS``) joins a cluster; otherwise a local one starts."""

    model_config = ConfigDict(extra="forbid")

    address: str | None = Field(None, description="ray://host:10001, host:6379 or 'auto'; null = embedded")
    num_cpus: int | None = Field(None, ge=1, description="CPUs of the embedded cluster (default: all)")
    num_gpus: int | None = Field(None, ge=0)
    object_store_memory_mb: int = Field(512, ge=64, description="object store of the embedded cluster")
    node_ip: str = Field(LOOPBACK_NODE_IP, description="the embedded node's address; 127.0.0.1 = loopback only")


def init_ray(config: RayConfig | None = None) -> None:
    """Start or join Ray once per process; a second call reuses the running instance."""
    import ray

    if ray.is_initialized():
        return
    config = config or RayConfig()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    os.environ.setdefault("LANCE_LOG", "error")  # workers inherit: no "dataset will be created" chatter
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", message="lance is not fork-safe")
    address = config.address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, logging_level=logging.WARNING, log_to_driver=True)
    else:
        with _loopback_only(config.node_ip):
            _init_embedded(config)


def _init_embedded(config: RayConfig) -> None:
    import ray

    ray.init(
        num_cpus=config.num_cpus or os.cpu_count(),
        num_gpus=config.num_gpus,
        object_store_memory=config.object_store_memory_mb * 1024 * 1024,
        _node_ip_address=config.node_ip,
        include_dashboard=False,
        logging_level=logging.WARNING,
        # our jobs report progress and counters themselves; worker exceptions still propagate
        log_to_driver=False,
    )


@contextlib.contextmanager
def _loopback_only(node_ip: str) -> Iterator[None]:
    """Keep an embedded node on 127.0.0.1 while ``ray.init`` starts it.

    Why: Ray's servers (GCS, raylet, workers, agents) listen on every interface unless the node's
    address is 127.0.0.1, and ``ray.init`` turns 127.0.0.1 into the machine's external address
    unless Ray believes clusters are off, its single-machine mode for laptops
    (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``). The environment variable cannot be used: it is read
    when Ray is imported, and ``ray start`` in a child process would inherit it and refuse to
    join a cluster. So the mode is on in this process while the node starts, then restored, so
    that a later ``ray.init(address=...)`` behaves as Ray's default.
    tests/curation/test_cluster_loopback.py checks every listening socket of the node."""
    if node_ip != LOOPBACK_NODE_IP:
        yield
        return
    from ray._private import ray_constants

    before = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = before


TRAIN_THREADS_MAX = 16
"""The most CPUs an index training task asks for (``largest_node_cpus``)."""


def largest_node_cpus(cap: int = TRAIN_THREADS_MAX) -> int:
    """CPUs for a task that runs alone and uses a whole node (index training): the largest
    live node's CPUs, up to ``cap`` (asking for more than a node has would never schedule)."""
    import ray

    cpus = [n.get("Resources", {}).get("CPU", 0) for n in ray.nodes() if n.get("Alive")]
    return int(max(1, min(cap, max(cpus, default=1))))
