"""A multi-node Ray cluster on 127.0.0.1 (``ray.cluster_utils.Cluster``), in a process of its own.

A head without CPUs and ``workers`` worker nodes, each with its own raylet and
resources, so that a job's actors land on the workers and one worker node can be
lost mid-run. The cluster runs in a launcher subprocess whose environment keeps
it on loopback (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``: Ray would otherwise
swap 127.0.0.1 for the machine's address) and its session files and address file
under a private ``RAY_TMPDIR`` (not the machine-wide /tmp/ray). The test talks
to the launcher over its stdin / stdout: ``kill <i>`` removes worker node i at
once, end of input stops everything.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path


def cluster_env(temp_dir: str) -> dict[str, str]:
    """Environment for the cluster and for drivers that join it (loopback, no token)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", RAY_AUTH_MODE="disabled",
               RAY_USAGE_STATS_ENABLED="0", RAY_TMPDIR=temp_dir)
    return env


@dataclass
class RayCluster:
    address: str  # the GCS address, for cluster.address
    env: dict[str, str]  # for a driver joining it
    launcher: subprocess.Popen

    def kill_worker(self, i: int) -> None:
        """Lose worker node ``i`` at once (its raylet and workers killed, no drain)."""
        self.launcher.stdin.write(f"kill {i}\n")
        self.launcher.stdin.flush()
        line = self.launcher.stdout.readline()
        assert line.startswith("killed"), line


@contextlib.contextmanager
def ray_cluster(workers: int = 2, cpus_per_worker: int = 1) -> Iterator[RayCluster]:
    temp_dir = tempfile.mkdtemp(prefix="nibt-raycluster-", dir="/tmp")
    env = cluster_env(temp_dir)
    launcher = subprocess.Popen(
        [sys.executable, "-m", "tests.reliability.raycluster", str(workers), str(cpus_per_worker)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
        start_new_session=True, cwd=str(Path(__file__).resolve().parents[2]))
    try:
        line = launcher.stdout.readline()
        if not line.startswith("address "):
            raise RuntimeError(f"the cluster did not start: {line!r}")
        yield RayCluster(line.split()[1], env, launcher)
    finally:
        with contextlib.suppress(Exception):
            launcher.stdin.close()
        try:
            launcher.wait(timeout=120)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(launcher.pid, signal.SIGKILL)
        shutil.rmtree(temp_dir, ignore_errors=True)


def serve(workers: int, cpus_per_worker: int) -> None:
    """Start the cluster, print its address, obey ``kill <i>``, stop at end of input."""
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 0, "include_dashboard": False, "node_ip_address": "127.0.0.1"})
    nodes = [cluster.add_node(num_cpus=cpus_per_worker, node_ip_address="127.0.0.1")
             for _ in range(workers)]
    cluster.wait_for_nodes()
    print("address", cluster.address, flush=True)
    try:
        for line in sys.stdin:
            cmd = line.split()
            if cmd and cmd[0] == "kill":
                cluster.remove_node(nodes[int(cmd[1])], allow_graceful=False)
                print("killed", cmd[1], flush=True)
    finally:
        cluster.shutdown()


if __name__ == "__main__":
    serve(int(sys.argv[1]), int(sys.argv[2]))
