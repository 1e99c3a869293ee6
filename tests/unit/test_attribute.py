"""The out-of-memory batch limit: learnt from a split, grown back once batches fit again."""

from __future__ import annotations

import pytest
import torch

from pipeline.engine.nibt import NIBT
from pipeline.job.attribute import GROW_AFTER, Attributor
from tests.conftest import CAPTIONS, random_images


class TightEngine:
    """The real engine, refusing batches over ``capacity`` pairs as a full device would."""

    def __init__(self, engine: NIBT, capacity: int) -> None:
        self.engine, self.capacity = engine, capacity
        self.sizes: list[int] = []  # every batch size the engine was asked for

    def __getattr__(self, name):
        return getattr(self.engine, name)

    def attribute(self, pixels, tokens):
        self.sizes.append(int(pixels.shape[0]))
        if pixels.shape[0] > self.capacity:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return self.engine.attribute(pixels, tokens)


def test_the_batch_limit_grows_back_after_pressure_passes(tiny):
    engine = TightEngine(NIBT(tiny, image_layer=1, text_layer=1, steps=2), capacity=2)
    att = Attributor(tiny, engine)
    pixels = random_images(tiny, 8)
    tokens = tiny.tokenize((CAPTIONS * 2)[:8])
    first = att.compute(pixels, tokens)
    assert len(first) == 4 and att.max_pairs == 2  # 8 -> 4 -> 2 pairs per call
    assert engine.sizes == [8, 4, 2, 2, 2, 2]
    engine.capacity = 8  # the pressure passed (another task's batch ended)
    engine.sizes.clear()
    # Hand count: 4 calls of 2 already fitted; 4 more at 2 (one compute) make GROW_AFTER
    # (8): the limit doubles to 4; 8 calls of 4 (four computes) double it to 8, the
    # largest batch: no limit, and the last two computes go whole.
    assert GROW_AFTER == 8
    for _ in range(7):
        att.compute(pixels, tokens)
    assert engine.sizes[:4] == [2, 2, 2, 2]
    assert engine.sizes[4:12] == [4] * 8
    assert engine.sizes[12:] == [8] * 2
    assert att.max_pairs is None and att.splits == 2


def test_a_limit_that_fails_again_is_grown_less_often(tiny):
    engine = TightEngine(NIBT(tiny, image_layer=1, text_layer=1, steps=2), capacity=4)
    att = Attributor(tiny, engine)
    pixels = random_images(tiny, 8)
    tokens = tiny.tokenize((CAPTIONS * 2)[:8])
    att.compute(pixels, tokens)  # 8 fails, 4 fits twice
    assert att.max_pairs == 4 and att.grow_after == GROW_AFTER
    # 2 + 6 calls of 4 (three computes): the limit grows to 8 = no limit; the next
    # compute's 8 fails again: back to 4, and growing now needs twice as many fits
    for _ in range(4):
        att.compute(pixels, tokens)
    assert att.splits == 2 and att.max_pairs == 4 and att.grow_after == 2 * GROW_AFTER


def test_results_are_the_same_whatever_the_split(tiny):
    """Splitting changes how many pairs go through at once, never the values."""
    plain = Attributor(tiny, NIBT(tiny, image_layer=1, text_layer=1, steps=2))
    tight = Attributor(tiny, TightEngine(NIBT(tiny, image_layer=1, text_layer=1, steps=2), 3))
    pixels = random_images(tiny, 4)
    tokens = tiny.tokenize(CAPTIONS)
    for a, b in zip(plain(pixels, tokens), tight(pixels, tokens)):
        assert abs(a.score - b.score) < 1e-5
        assert torch.allclose(torch.from_numpy(a.image_attr), torch.from_numpy(b.image_attr),
                              atol=1e-5)


class BrokenDevice:
    """The real engine, failing as a CUDA device does after an illegal memory access:
    every call from the first failure on raises."""

    def __init__(self, engine: NIBT, message: str) -> None:
        self.engine, self.message, self.calls = engine, message, 0

    def __getattr__(self, name):
        return getattr(self.engine, name)

    def attribute(self, pixels, tokens):
        self.calls += 1
        raise RuntimeError(self.message)


def test_a_fatal_device_error_ends_the_batch_without_retries(tiny):
    from pipeline.engine.device_health import DeviceLost

    engine = BrokenDevice(NIBT(tiny, image_layer=1, text_layer=1, steps=2),
                          "CUDA error: device-side assert triggered")
    att = Attributor(tiny, engine)
    att.device = torch.device("cuda")  # as on a GPU
    with pytest.raises(DeviceLost, match="device-side assert"):
        att.compute(random_images(tiny, 4), tiny.tokenize(CAPTIONS))
    assert engine.calls == 1  # not retried pair by pair on a broken context


def test_an_error_the_device_survives_is_retried_pair_by_pair(tiny, monkeypatch):
    from pipeline.engine import device_health

    engine = BrokenDevice(NIBT(tiny, image_layer=1, text_layer=1, steps=2),
                          "CUDA error: invalid argument")
    att = Attributor(tiny, engine)
    att.device = torch.device("cuda")
    monkeypatch.setattr(device_health, "device_usable", lambda device: True)
    out = att.compute(random_images(tiny, 4), tiny.tokenize(CAPTIONS))
    assert engine.calls == 5 and all(isinstance(e, RuntimeError) for e in out)
    # the same message, but the device no longer runs a kernel: fatal
    monkeypatch.setattr(device_health, "device_usable", lambda device: False)
    with pytest.raises(device_health.DeviceLost):
        att.compute(random_images(tiny, 4), tiny.tokenize(CAPTIONS))
    # on a CPU no error is a lost device
    att.device = torch.device("cpu")
    assert len(att.compute(random_images(tiny, 2), tiny.tokenize(CAPTIONS[:2]))) == 2


def test_a_lost_device_ends_the_process_with_its_status(tmp_path):
    """end_process reports and exits at once, whatever other threads are doing."""
    import subprocess
    import sys

    from pipeline.engine.device_health import EXIT_DEVICE_LOST

    code = ("import threading, time\n"
            "from pipeline.engine.device_health import DeviceLost, end_process\n"
            "threading.Thread(target=time.sleep, args=(60,)).start()\n"
            "end_process(DeviceLost('cuda:0: CUDA error: an illegal memory access'))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == EXIT_DEVICE_LOST
    assert "fatal device error" in r.stderr and "illegal memory access" in r.stderr


def test_results_come_back_in_one_copy_unchanged(tiny):
    """Oracle: the engine and the metrics called directly, field by field."""
    from pipeline.engine.metrics import confidence

    engine = NIBT(tiny, image_layer=1, text_layer=1, steps=2)
    pixels, tokens = random_images(tiny, 4), tiny.tokenize(CAPTIONS)
    attr = engine.attribute(pixels, tokens)
    conf = confidence(tiny, pixels, tokens, attr)
    out = Attributor(tiny, engine)(pixels, tokens)
    for i, r in enumerate(out):
        n = int(attr.eot[i]) + 1
        assert r.score == float(attr.score[i]) and r.image_cls_attr == float(attr.image_cls[i])
        assert torch.equal(torch.from_numpy(r.image_attr), attr.image[i].flatten())
        assert torch.equal(torch.from_numpy(r.text_attr), attr.text[i, :n])
        assert r.tokens == tiny.pieces(tokens[i, :n].tolist())
        for k in ("img_conf_drop", "img_conf_incr", "txt_conf_drop", "txt_conf_incr"):
            assert getattr(r, k) == float(getattr(conf, k)[i])
