"""A private Ray head on 127.0.0.1 for the job-submission tests, stopped by process id.

``ray stop`` stops every Ray process on the machine (other people's too), so the
head runs as ``ray start --head --block`` in its own session: terminating that
process shuts its cluster down; whatever is left (in its process group, or with
its temp dir in the command line or working directory) is killed by pid.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

RAY = str(Path(sys.executable).with_name("ray"))


def free_ports(n: int) -> list[int]:
    """``n`` distinct ports that are free on 127.0.0.1 right now."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@dataclass
class RayHead:
    """A running head: its job-submission address, temp dir and environment, and the
    address a driver joins it at (``ray.init(address=...)``)."""

    address: str
    temp_dir: str
    env: dict[str, str]
    log: Path
    gcs_address: str


def _pids_using(temp_dir: str) -> list[int]:
    """Processes whose command line or working directory mentions ``temp_dir``."""
    out = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit() or int(p.name) == os.getpid():
            continue
        try:
            cmd = (p / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            cwd = os.readlink(p / "cwd")
        except OSError:
            continue
        if temp_dir in cmd or cwd.startswith(temp_dir):
            out.append(int(p.name))
    return out


def _stop(proc: subprocess.Popen, temp_dir: str) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)  # its own session: only its children
    for pid in _pids_using(temp_dir):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


@contextlib.contextmanager
def ray_head(num_cpus: int = 2, timeout: float = 120.0) -> Iterator[RayHead]:
    """Start a head bound to 127.0.0.1 with every port chosen free; stop it afterwards."""
    temp_dir = tempfile.mkdtemp(prefix="nibt-rayhead-", dir="/tmp")
    (gcs, dash, agent_http, agent_grpc, rt_env, metrics, node_mgr, obj_mgr,
     client) = free_ports(9)
    env = {
        **os.environ,
        "RAY_AUTH_MODE": "disabled",  # loopback only, no token to keep anywhere
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
        "RAY_USAGE_STATS_ENABLED": "0",
        "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
    }
    env.pop("RAY_ADDRESS", None)
    log = Path(temp_dir) / "ray-start.log"
    cmd = [
        RAY, "start", "--head", "--block", "--disable-usage-stats",
        "--node-ip-address=127.0.0.1", f"--port={gcs}", f"--num-cpus={num_cpus}",
        "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
        f"--dashboard-agent-listen-port={agent_http}", f"--dashboard-agent-grpc-port={agent_grpc}",
        f"--runtime-env-agent-port={rt_env}", f"--metrics-export-port={metrics}",
        f"--node-manager-port={node_mgr}", f"--object-manager-port={obj_mgr}",
        f"--ray-client-server-port={client}", f"--temp-dir={temp_dir}",
    ]
    with open(log, "wb") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True, cwd=temp_dir)
    address = f"http://127.0.0.1:{dash}"
    try:
        deadline = time.time() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"ray start exited {proc.returncode}: {log.read_text()[-3000:]}")
            if _ready(address, agent_http):
                break
            if time.time() > deadline:
                raise RuntimeError(f"Ray head not ready in {timeout}s: {log.read_text()[-3000:]}")
            time.sleep(0.5)
        yield RayHead(address, temp_dir, env, log, f"127.0.0.1:{gcs}")
    finally:
        _stop(proc, temp_dir)
        import shutil

        shutil.rmtree(temp_dir, ignore_errors=True)


def _ready(address: str, agent_port: int) -> bool:
    """The job API answers and the node's agent (which runs submitted jobs) listens."""
    try:
        with urllib.request.urlopen(f"{address}/api/jobs/", timeout=2) as r:
            return r.status == 200 and _listening(agent_port)
    except OSError:
        return False


def _listening(port: int) -> bool:
    """Something accepts connections on 127.0.0.1:``port`` (the node agent, for job submission)."""
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def serve(address_file: str) -> None:
    """Start a head, write its address to ``address_file``, stop it on SIGTERM / SIGINT."""
    def stop(*_: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    with contextlib.suppress(KeyboardInterrupt), ray_head() as head:
        Path(address_file).write_text(head.address)
        while True:
            time.sleep(1)


if __name__ == "__main__":
    serve(sys.argv[1])
