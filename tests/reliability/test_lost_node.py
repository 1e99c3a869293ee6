"""Beyond one machine: the job on a multi-node Ray cluster (``cluster=existing``), and a
worker node lost mid-run: no row lost, none duplicated, exit 0."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from pipeline.io.results import read_results
from tests.data import write_shards
from tests.reliability.raycluster import ray_cluster


@pytest.fixture(scope="module")
def cluster():
    """A head (no CPUs) and two 1-CPU worker nodes on 127.0.0.1."""
    with ray_cluster(workers=2, cpus_per_worker=1) as c:
        yield c


def test_lost_node(cluster, tmp_path, figure):
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
    t0 = time.monotonic()
    driver = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=env)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and driver.poll() is None:
        if list((out / "parts").glob("*.parquet")):  # both actors are at work by now
            break
        time.sleep(0.1)
    parts_before = len(list((out / "parts").glob("*.parquet")))
    t_kill = time.monotonic()
    cluster.kill_worker(0)
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
    assert driver.returncode == 0, stderr[-3000:]
    # Ray's news may come first; the summary is still stdout's last line (docs/operations.md)
    assert json.loads(stdout.strip().splitlines()[-1]) == summary
    assert summary["actors"] == 2  # one on each worker node: sized node by node
    assert 1 <= parts_before < 8
    assert sorted(ids) == expected and len(ids) == len(set(ids))
    assert summary["tasks_retried"] >= 1  # the lost node's task ran again elsewhere
