"""Beyond one machine: the job on a multi-node Ray cluster (``cluster=existing``), and a
worker node lost mid-run: no row lost, none duplicated, exit 0.

The node is lost while both actors are inside a task: every task attempt first
stalls a few seconds (the test hook ``NIBT_TEST_FAULTS``, set before the cluster
starts so that its workers see it), each attempt leaves the pid of its worker in
the hook's marker files, and the node goes once two different workers have
started one. Without the stall a task takes a fraction of a second, and one
actor may run them all before the other is up."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from pipeline.io.results import read_results
from pipeline.job import faults
from pipeline.job.cluster import patched_env
from tests.data import write_shards
from tests.reliability.raycluster import ray_cluster

#: Seconds each task attempt stalls before its read while the test waits for both actors.
STALL_S = 5


@pytest.fixture(scope="module")
def fault_file(tmp_path_factory):
    return tmp_path_factory.mktemp("faults") / "faults.json"


@pytest.fixture(scope="module")
def cluster(fault_file):
    """A head (no CPUs) and two 1-CPU worker nodes on 127.0.0.1, the hook's variable set."""
    with patched_env({faults.ENV: str(fault_file)}), \
            ray_cluster(workers=2, cpus_per_worker=1) as c:
        yield c


def test_lost_node(cluster, fault_file, tmp_path, figure):
    root = tmp_path / "in"
    root.mkdir()
    tables = write_shards(root, 4, 16, seed=140)
    out = tmp_path / "out"
    args = [sys.executable, "-m", "pipeline", f"input={root}", f"output={out}",
            "cluster=existing", f"cluster.address={cluster.address}",
            "cluster.actor_start_timeout_s=120", "model=demo", "model.pretrained=null", "model.steps=6",
            "model.image_layer=1", "model.text_layer=1", "data.id_column=id",
            "run.rows_per_task=8", "run.task_timeout_s=90", "run.progress=false"]
    env = dict(cluster.env, NIBT_LOG_DIR=str(tmp_path / "logs"))
    fault_file.write_text(json.dumps({"stall": {"times": 99, "seconds": STALL_S}}))
    t0 = time.monotonic()
    driver = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=env)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and driver.poll() is None:
        if len(faults.fired_in(fault_file, "stall")) >= 2:  # both actors are inside a task
            break
        time.sleep(0.05)
    both_at_work = len(faults.fired_in(fault_file, "stall")) >= 2
    parts_before = len(list((out / "parts").glob("*.parquet")))
    t_kill = time.monotonic()
    cluster.kill_worker(0)
    fault_file.write_text("{}")  # no more stalls: the rest runs at full speed
    stdout, stderr = driver.communicate(timeout=600)
    ended = time.monotonic()
    # the summary from its file: Ray prints its own news of the lost node on stdout too
    summary = json.loads((out / "_summary.json").read_text()) if driver.returncode in (0, 3) \
        else {}
    ids = read_results(str(out), columns=["id"]).column("id").to_pylist()
    expected = sorted(i for t in tables for i in t.column("id").to_pylist())
    figure(nodes="head (0 CPU) + 2 workers (1 CPU each), 127.0.0.1", actors=summary.get("actors"),
           parts_before_node_lost=parts_before, exit_code=driver.returncode,
           rows_in=len(expected), rows_out=len(ids), duplicates=len(ids) - len(set(ids)),
           tasks_retried=summary.get("tasks_retried"), node_lost_to_end_s=round(ended - t_kill, 1),
           seconds=round(ended - t0, 1))
    assert both_at_work, "the two actors never had a task each"
    assert driver.returncode == 0, stderr[-3000:]
    # Ray's news may come first; the summary is still stdout's last line (docs/operations.md)
    assert json.loads(stdout.strip().splitlines()[-1]) == summary
    assert summary["actors"] == 2  # one on each worker node: sized node by node
    assert parts_before < 8
    assert sorted(ids) == expected and len(ids) == len(set(ids))
    assert summary["tasks_retried"] >= 1  # the lost node's task ran again elsewhere
