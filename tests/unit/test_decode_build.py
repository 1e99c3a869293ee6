"""Which decoder a worker gets, decided in one place, and handed to the runner.

Oracles: the rule stated by hand (processes beside a GPU, threads on a CPU, the
setting over both); a hand-built Parquet file's captions, which must reach the
decoder the runner was given, in order.
"""

from __future__ import annotations

import subprocess
import sys

import pyarrow as pa

from pipeline.config import DataSettings, ModelSettings, StorageSettings
from pipeline.decode.build import build_decoder
from pipeline.decode.pool import ProcessDecoder, ThreadDecoder
from pipeline.decode.where import decode_processes
from pipeline.engine.model import load_clip
from pipeline.io.storage import list_inputs
from pipeline.job.plan import plan
from pipeline.job.worker import TaskRunner
from tests.data import png, write_table
from tests.jobutil import TEST_MODEL


def test_processes_beside_a_gpu_threads_on_a_cpu_the_setting_over_both():
    assert decode_processes(None, threads=4, gpus=1) == 3
    assert decode_processes(None, threads=1, gpus=0.25) == 1
    assert decode_processes(None, threads=4, gpus=0) == 0
    assert decode_processes(2, threads=4, gpus=0) == 2
    assert decode_processes(0, threads=4, gpus=1) == 0


def test_planning_the_cluster_imports_no_torch():
    """nibt-report plans its Ray workers with job.cluster: that must not load torch."""
    code = ("import sys, pipeline.job.cluster; "
            "sys.exit(1 if 'torch' in sys.modules or 'open_clip' in sys.modules else 0)")
    assert subprocess.run([sys.executable, "-c", code], timeout=120).returncode == 0


def test_the_builder_gives_threads_or_processes_as_asked():
    clip = load_clip("nibt-demo", None)
    threads = build_decoder(clip, DataSettings(), processes=0)
    processes = build_decoder(clip, DataSettings(), processes=1)
    try:
        assert type(threads.decoder) is ThreadDecoder
        assert type(processes.decoder) is ProcessDecoder
        assert threads.split is not None  # normalised as a batch, after decoding
    finally:
        threads.decoder.close()
        processes.decoder.close()


def test_the_runner_decodes_with_the_decoder_it_is_given(tmp_path):
    captions = [f"caption {i}".encode() for i in range(5)]
    (tmp_path / "in").mkdir()
    write_table(pa.table({"image": pa.array([png(i) for i in range(5)], pa.binary()),
                          "caption": pa.array(captions, pa.binary())}),
                str(tmp_path / "in" / "a.parquet"))
    storage = StorageSettings()
    tasks = plan(list_inputs(str(tmp_path / "in"), storage), storage, 100, "fp")
    seen: list = []

    def recording(clip, data, *args):
        decoding = build_decoder(clip, data, *args)
        inner = decoding.decoder.decode

        def decode(images, caps):
            seen.extend(caps)
            return inner(images, caps)

        decoding.decoder.decode = decode
        return decoding

    runner = TaskRunner(ModelSettings(**TEST_MODEL), DataSettings(), storage,
                        str(tmp_path / "out"), {}, threads=1, decoders=recording)
    try:
        res = runner.run(tasks[0])
    finally:
        runner.close()
    assert res.ok and res.status_counts == {"ok": 5}, res
    assert seen == captions
