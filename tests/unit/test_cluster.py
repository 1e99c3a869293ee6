"""How many actors a job starts and what each reserves (hand-computed expectations)."""

from __future__ import annotations

import pytest

from pipeline.config import ClusterSettings
from pipeline.job.cluster import plan_actors


@pytest.mark.parametrize(
    ("cpus", "gpus", "expected"),
    [
        # (actors, CPUs each, GPU share each)
        (16, 1, (4, 4.0, 0.25)),   # the H200 machine: 4 decoding processes on one GPU
        (8, 1, (2, 4.0, 0.5)),
        (4, 1, (1, 4.0, 1.0)),
        (2, 1, (1, 2.0, 1.0)),     # fewer CPUs than one actor's share: still one actor
        (96, 8, (24, 4.0, 0.3333)),  # 12 CPUs per GPU: 3 actors each
        (256, 8, (32, 8.0, 0.25)),   # capped at 4 per GPU; spare CPUs decode
    ],
)
def test_gpu_actors_follow_cpus_per_gpu(cpus, gpus, expected):
    p = plan_actors(ClusterSettings(), {"CPU": cpus, "GPU": gpus}, tasks=1000)
    assert (p.num_actors, p.num_cpus, p.num_gpus) == expected
    assert p.num_actors * p.num_gpus <= gpus and p.num_actors * p.num_cpus <= cpus


def test_gpu_settings_override_the_default():
    p = plan_actors(ClusterSettings(gpus_per_actor=1.0), {"CPU": 16, "GPU": 1}, tasks=1000)
    assert (p.num_actors, p.num_cpus, p.num_gpus) == (1, 16.0, 1.0)
    p = plan_actors(ClusterSettings(num_actors=2), {"CPU": 16, "GPU": 2}, tasks=1000)
    assert (p.num_actors, p.num_cpus) == (2, 8.0)


def test_cpu_actors_and_task_cap():
    p = plan_actors(ClusterSettings(), {"CPU": 16}, tasks=1000)
    assert (p.num_actors, p.num_cpus, p.num_gpus, p.threads) == (4, 4.0, 0.0, 4)
    p = plan_actors(ClusterSettings(), {"CPU": 2}, tasks=1000)
    assert (p.num_actors, p.num_cpus, p.threads) == (1, 2.0, 2)
    p = plan_actors(ClusterSettings(), {"CPU": 16, "GPU": 1}, tasks=2)
    assert p.num_actors == 2  # never more actors than tasks


def test_tasks_in_flight_per_actor():
    """Two beside a GPU (decoding overlaps the device), one on CPU (it would take
    cores from the compute: measured 8% slower by `python -m benchmarks overlap`)."""
    assert plan_actors(ClusterSettings(), {"CPU": 16, "GPU": 1}, tasks=9).slots == 2
    assert plan_actors(ClusterSettings(), {"CPU": 16}, tasks=9).slots == 1
    assert plan_actors(ClusterSettings(tasks_per_actor=3), {"CPU": 2}, tasks=9).slots == 3



def test_memory_each_actor_declares():
    """A node's memory, as Ray counts it, shared among the actors it holds (the smallest
    share over the nodes); or as set."""
    gb = 2**30
    assert plan_actors(ClusterSettings(), {"CPU": 16, "memory": 32 * gb}, tasks=9).memory_mb \
        == 32 * 1024 / 4  # four 4-CPU actors
    assert plan_actors(ClusterSettings(), {"CPU": 16, "GPU": 2, "memory": 64 * gb},
                       tasks=9).memory_mb == 64 * 1024 / 4  # two per GPU
    nodes = [{"CPU": 4, "memory": 8 * gb}, {"CPU": 8, "memory": 64 * gb}]
    assert plan_actors(ClusterSettings(), {"CPU": 12, "memory": 72 * gb}, tasks=9,
                       nodes=nodes).memory_mb == 8 * 1024
    assert plan_actors(ClusterSettings(memory_per_actor_mb=3000), {"CPU": 16}, tasks=9) \
        .memory_mb == 3000
    assert plan_actors(ClusterSettings(), {"CPU": 16}, tasks=9).memory_mb is None
    odd = 14751891456  # a node's memory as Ray counted it: the share must not round up past it
    p = plan_actors(ClusterSettings(), {"CPU": 2, "memory": odd}, tasks=9)
    assert p.num_actors == 1 and p.memory_mb * 2**20 <= odd


def test_decode_processes_beside_a_gpu_threads_on_cpu():
    """Beside a GPU the actor's CPUs less one decode in processes (decode threads
    would share the GIL with the kernel launches); CPU actors decode in threads."""
    assert plan_actors(ClusterSettings(), {"CPU": 16, "GPU": 1}, tasks=9).decode_processes == 3
    one = ClusterSettings(gpus_per_actor=1.0)
    assert plan_actors(one, {"CPU": 16, "GPU": 1}, tasks=9).decode_processes == 15
    assert plan_actors(ClusterSettings(), {"CPU": 2, "GPU": 1}, tasks=9).decode_processes == 1
    assert plan_actors(ClusterSettings(), {"CPU": 16}, tasks=9).decode_processes == 0
    threads = ClusterSettings(decode_processes=0)
    assert plan_actors(threads, {"CPU": 16, "GPU": 1}, tasks=9).decode_processes == 0
    assert plan_actors(ClusterSettings(decode_processes=2), {"CPU": 2}, tasks=9).decode_processes == 2


@pytest.mark.parametrize(
    ("nodes", "expected"),
    [
        # (each node's CPUs) -> (actors, CPUs each): an actor fits on one node
        ([0, 1, 1], (2, 1.0)),     # a head without CPUs and two 1-CPU workers
        ([2, 2], (2, 2.0)),        # not one 4-CPU actor that no node could place
        ([16, 16], (8, 4.0)),
        ([0, 8, 2], (2, 4.0)),     # 2 on the 8-CPU node; the 2-CPU node holds none of 4
    ],
)
def test_cpu_actors_are_sized_node_by_node(nodes, expected):
    resources = {"CPU": float(sum(nodes))}
    p = plan_actors(ClusterSettings(), resources, tasks=1000,
                    nodes=[{"CPU": float(c)} for c in nodes])
    assert (p.num_actors, p.num_cpus) == expected


def test_gpu_actors_ask_no_more_cpus_than_a_node_has():
    nodes = [{"CPU": 8.0, "GPU": 1.0}, {"CPU": 8.0, "GPU": 1.0}]
    p = plan_actors(ClusterSettings(), {"CPU": 16.0, "GPU": 2.0}, tasks=1000, nodes=nodes)
    assert (p.num_actors, p.num_cpus, p.num_gpus) == (4, 4.0, 0.5)
    one = ClusterSettings(gpus_per_actor=1.0)
    p = plan_actors(one, {"CPU": 16.0, "GPU": 2.0}, tasks=1000, nodes=nodes)
    assert (p.num_actors, p.num_cpus) == (2, 8.0)
