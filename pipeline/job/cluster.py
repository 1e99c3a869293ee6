"""Start or join Ray, and size the actor pool.

Embedded (``cluster.address`` null): a private Ray on this machine, bound to
127.0.0.1 only, with its session files and its authentication token under a
temporary directory (nothing under the home directory). On a cluster
(``cluster.address=auto`` or ``ray://...``, or inside ``ray job submit``, which
sets ``RAY_ADDRESS``): join it and leave it running.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import secrets
import shutil
import signal
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass

from pipeline.config import ClusterSettings
from pipeline.decode.where import decode_processes


@dataclass
class ActorPlan:
    """How many actors and what each one reserves."""

    num_actors: int
    num_cpus: float
    num_gpus: float
    threads: int
    slots: int = 1  # tasks in flight per actor
    decode_processes: int = 0  # per actor; 0: decode in threads
    memory_mb: float | None = None  # declared to Ray per actor; None: Ray reports no memory


#: Most actors sharing one GPU by default, and the fewest CPUs each gets.
MAX_ACTORS_PER_GPU, MIN_CPUS_PER_GPU_ACTOR = 4, 4


def default_gpu_share(cpus: float, gpus: float) -> float:
    """GPU fraction per actor when ``gpus_per_actor`` is unset: one actor per 4 CPUs
    the GPU has, 1 to 4 of them. Several actors keep several host threads launching
    kernels: on an H200 with 16 CPUs, with decoding in threads, the ViT-B-32 job ran
    855 pairs/s with one actor, 1,401 with two and 1,462 with four (docs/performance.md,
    "On a GPU"). Whether one actor decoding in processes does as well is what
    ``make bench-gpu`` measures: it runs one actor beside this default."""
    per_gpu = int(min(MAX_ACTORS_PER_GPU, max(1, (cpus / gpus) // MIN_CPUS_PER_GPU_ACTOR)))
    return round(1.0 / per_gpu, 4)


def plan_actors(cfg: ClusterSettings, resources: dict[str, float], tasks: int,
                nodes: list[dict[str, float]] | None = None) -> ActorPlan:
    """GPU actors (several per GPU, see ``default_gpu_share``) when there are GPUs,
    else CPU actors; never more actors than tasks.

    ``nodes``: each node's resources, on a cluster of several. An actor is placed on
    one node, so none asks for more CPUs than the largest node has, and CPU actors
    are counted node by node (two nodes of 2 CPUs hold two 2-CPU actors, not one
    of 4 that neither could place).
    """
    gpus = float(resources.get("GPU", 0))
    cpus = float(resources.get("CPU", 1))
    node_cpus = [float(n.get("CPU", 0)) for n in nodes or [] if float(n.get("CPU", 0)) > 0]
    largest = max(node_cpus, default=cpus)
    if gpus > 0:
        per_gpu = cfg.gpus_per_actor or default_gpu_share(cpus, gpus)
        n = cfg.num_actors or max(1, int(gpus // per_gpu))
        # a GPU actor's CPUs decode images: give it its share of the machine
        per_cpu = cfg.cpus_per_actor or min(largest, max(1.0, cpus // max(n, 1)))
        plan = ActorPlan(n, per_cpu, per_gpu, int(per_cpu))
    else:
        if cfg.num_actors:
            per_cpu = cfg.cpus_per_actor or min(largest, max(1.0, cpus // cfg.num_actors))
            n = cfg.num_actors
        else:
            per_cpu = cfg.cpus_per_actor or min(largest, 4.0)
            fits = sum(int(c // per_cpu) for c in node_cpus) if node_cpus else cpus // per_cpu
            n = max(1, int(fits))
        plan = ActorPlan(n, per_cpu, 0.0, max(1, int(per_cpu)))
    plan.num_actors = max(1, min(plan.num_actors, max(tasks, 1)))
    plan.decode_processes = decode_processes(cfg.decode_processes, plan.threads, gpus)
    # Two tasks in flight beside a GPU; one on CPU.
    plan.slots = cfg.tasks_per_actor or (2 if gpus > 0 else 1)
    plan.memory_mb = cfg.memory_per_actor_mb or _memory_share(plan, gpus, nodes, resources)
    return plan


def _memory_share(plan: ActorPlan, gpus: float, nodes: list[dict[str, float]] | None,
                  resources: dict[str, float]) -> float | None:
    """Each actor's share of its node's memory as Ray counts it (the smallest over the
    nodes that can hold an actor, so any of them can place it); None when Ray reports
    no memory."""
    shares = []
    for n in nodes or [resources]:
        memory, cpus = float(n.get("memory", 0)), float(n.get("CPU", 0))
        if gpus > 0:
            held = float(n.get("GPU", 0)) / plan.num_gpus if plan.num_gpus else 0
        else:
            held = cpus // plan.num_cpus if plan.num_cpus else 0
        held = min(held, plan.num_actors)
        if memory > 0 and held >= 1:
            shares.append(float(int(memory / 2**20 / held)))  # whole MB, rounded down: fits
    return min(shares) if shares else None


_TOKEN: dict[str, str] = {}


def _process_token() -> str:
    """This process's token file for embedded Ray clusters, made once.

    Ray's driver caches the token it first loads for the life of the process, so
    every embedded cluster this process starts must use that same token.
    """
    if "path" not in _TOKEN:
        folder = tempfile.mkdtemp(prefix="nibt-ray-token-", dir="/tmp")
        path = os.path.join(folder, "auth_token")
        with open(path, "w") as f:
            f.write(secrets.token_hex(32))
        os.chmod(path, 0o600)
        atexit.register(shutil.rmtree, folder, True)
        _TOKEN["path"] = path
    return _TOKEN["path"]


def loopback_env() -> dict[str, str]:
    """Environment that keeps an embedded Ray on loopback, with a token under /tmp.

    Ray reads the first variable when it is imported: set it before ``import ray``
    (``pipeline`` never imports Ray at module level).
    """
    env = {
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",  # "no multi-node": bind 127.0.0.1 only
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    if "RAY_AUTH_TOKEN" not in os.environ and "RAY_AUTH_TOKEN_PATH" not in os.environ:
        env.update(RAY_AUTH_TOKEN_PATH=_process_token(), RAY_AUTH_MODE="token")
    return env


@contextlib.contextmanager
def patched_env(env: dict[str, str]) -> Iterator[None]:
    """Set ``env`` for the block, then restore what was there."""
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextlib.contextmanager
def kept_sigterm_handler() -> Iterator[None]:
    """Put back the caller's SIGTERM handler after the block (``ray.init``).

    ``ray.init`` installs its own, which calls ``sys.exit`` from wherever the driver
    is (inside a blocking Ray call it ended the audit with a C++ stack trace and
    exit 134, no summary). A Python handler the caller installed (the job's stop,
    ``pipeline.job.stop``) is put back; with none, Ray's stays.
    """
    main = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGTERM) if main else None
    try:
        yield
    finally:
        if main and callable(previous):
            signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def ray_session(cfg: ClusterSettings, num_cpus: int | None = None) -> Iterator[None]:
    """Ray for the duration of the block: reuse, join, or start an embedded one."""
    import sys

    if "ray" in sys.modules and sys.modules["ray"].is_initialized():
        yield  # the caller's Ray (a test, a notebook): use it, leave it running
        return
    address = cfg.address or os.environ.get("RAY_ADDRESS")
    if address is not None:
        import ray

        with kept_sigterm_handler():
            ray.init(address=address, namespace=cfg.namespace, log_to_driver=True)
        try:
            yield
        finally:
            ray.shutdown()
        return
    temp_dir = cfg.temp_dir or tempfile.mkdtemp(prefix="nibt-ray-", dir="/tmp")
    os.makedirs(temp_dir, exist_ok=True)
    with patched_env(loopback_env()):
        import ray

        with kept_sigterm_handler():
            ray.init(
                num_cpus=num_cpus, include_dashboard=False, _temp_dir=temp_dir,
                _node_ip_address="127.0.0.1", namespace=cfg.namespace, log_to_driver=True,
            )
        try:
            yield
        finally:
            ray.shutdown()
            if cfg.temp_dir is None:
                shutil.rmtree(temp_dir, ignore_errors=True)
