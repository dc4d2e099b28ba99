"""The embedded Ray cluster listens on loopback only.

Ray has no authentication by default: a GCS or raylet port reachable from the network lets anyone
run code on the machine. The embedded default must keep every server of the node (GCS, raylet,
object manager, workers, agents) on 127.0.0.1. Checked in a fresh process, since the test
session's own Ray is already running."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

PROBE = textwrap.dedent(
    """
    import json, os, psutil, ray
    from curation.cluster import RayConfig, init_ray

    init_ray(RayConfig(num_cpus=1, object_store_memory_mb=128))

    @ray.remote
    class Actor:
        def pid(self):
            return os.getpid()

    a = Actor.remote()
    ray.get(a.pid.remote())
    ray.get(ray.remote(lambda: 1).remote())
    from ray._private import ray_constants
    procs = [psutil.Process()] + psutil.Process().children(recursive=True)
    listening = []
    for p in procs:
        try:
            conns = p.net_connections(kind="inet")
        except psutil.Error:
            continue
        listening += [[p.name(), c.laddr.ip, c.laddr.port] for c in conns if c.status == psutil.CONN_LISTEN]
    print(json.dumps({
        "node_ip": ray.util.get_node_ip_address(),
        "cluster_mode_restored": ray_constants.ENABLE_RAY_CLUSTER,
        "processes": len(procs),
        "listening": listening,
    }))
    ray.shutdown()
    """
)


def test_embedded_ray_listens_on_loopback_only():
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["node_ip"] == "127.0.0.1"
    assert got["cluster_mode_restored"] is True  # a later ray.init(address=...) is not affected
    names = {name for name, _, _ in got["listening"]}
    # the node's servers were seen (else the check below would pass on nothing)
    assert "gcs_server" in names and "raylet" in names, got
    wide = [s for s in got["listening"] if s[1] not in ("127.0.0.1", "::ffff:127.0.0.1", "::1")]
    assert not wide, f"listening beyond loopback: {wide}"
