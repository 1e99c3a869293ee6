"""Decode a batch of rows in threads or in worker processes.

Both decoders turn a batch's image and caption cells into ``DecodedRows``: a
status per row and the ok rows' pixels stacked in one tensor (in pinned memory
when the batch goes to a GPU). They differ in where the image work runs:

* ``ThreadDecoder``: threads of the worker's own process. Right beside CPU
  compute, whose operations are long enough that sharing the GIL costs little.
* ``ProcessDecoder``: processes of its own. Beside a GPU the compute thread
  launches thousands of short kernels per batch and every launch releases and
  retakes the GIL; decode threads in the same process hold it for their Python
  work (PIL's header parsing, array conversion), so the launcher can queue
  behind them: the suspected cause of the mostly idle GPU in README
  "Performance", not yet measured on a GPU. Worker processes share no GIL with
  it. They also isolate the codecs: a row that crashes its decoding process
  costs that row only (status ``bad_image``), not the worker.
"""

from __future__ import annotations

import contextlib
import logging
import math
import multiprocessing
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from multiprocessing import shared_memory
from typing import Any, NamedTuple

import numpy as np
import torch

from pipeline.io.images import BAD_IMAGE, OK, Decoded, decode_pair

log = logging.getLogger(__name__)

#: Seconds a decode process may take to start (import torch, unpickle the transform).
START_TIMEOUT_S = 300
#: The message of a row whose decoding killed its process twice.
CRASHED = "decoding this image crashed its decode process twice (a codec crash); row skipped"


@dataclass
class DecodedRows:
    """One batch after decoding: every row's status, the ok rows' pixels stacked."""

    rows: list[Decoded]  # per input row; ``pixels`` is None (they are in ``pixels``)
    ok: list[int] = field(default_factory=list)  # indices of the rows that decoded
    pixels: torch.Tensor | None = None  # [len(ok), ...] in ok order
    # the ok rows' token ids [len(ok), context] and truncation flags, when the
    # decoder tokenises (processes do); else the caller tokenises the captions
    tokens: np.ndarray | None = None
    truncated: list[bool] = field(default_factory=list)


class Gather:
    """Copies decoded pixels into one batch tensor as they arrive, straight into
    pinned memory when ``pin`` (the GPU copy is then asynchronous). Sized for every
    row up front, so each piece is copied once and its buffer freed at once."""

    def __init__(self, rows: int, pin: bool) -> None:
        self.rows, self.pin = rows, pin
        self.out: torch.Tensor | None = None
        self.at = 0

    def add(self, piece: np.ndarray | torch.Tensor) -> None:
        t = torch.as_tensor(piece)
        if self.out is None:
            self.out = torch.empty((self.rows, *t.shape[1:]), dtype=t.dtype, pin_memory=self.pin)
        k = int(t.shape[0])
        self.out[self.at : self.at + k].copy_(t)
        self.at += k

    def result(self) -> torch.Tensor | None:
        return None if self.out is None else self.out[: self.at]


class ThreadDecoder:
    """Decodes rows in a thread pool of the calling process."""

    def __init__(self, preprocess: Callable, max_pixels: int, max_chars: int, threads: int,
                 pin: bool = False, one_torch_thread: bool = False) -> None:
        self.preprocess, self.max_pixels, self.max_chars = preprocess, max_pixels, max_chars
        self.pin = pin
        self.threads = threads
        self.pool = ThreadPoolExecutor(
            max_workers=threads, thread_name_prefix="nibt-decode",
            initializer=torch.set_num_threads if one_torch_thread else None,
            initargs=(1,) if one_torch_thread else (),
        )

    def decode(self, images: Sequence[Any], captions: Sequence[Any]) -> DecodedRows:
        """Decode one batch; every row gets a status."""
        rows = list(self.pool.map(
            lambda ic: decode_pair(ic[0], ic[1], self.preprocess, self.max_pixels,
                                   self.max_chars),
            zip(images, captions),
        ))
        out = DecodedRows(rows, [i for i, r in enumerate(rows) if r.status == OK])
        pixels = Gather(len(out.ok), self.pin)
        for i in out.ok:
            pixels.add(torch.as_tensor(rows[i].pixels)[None])
            rows[i].pixels = None
        out.pixels = pixels.result()
        return out

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


# ---------------------------------------------------------------- worker side
_WORKER: dict[str, Any] = {}


def _exit_with_parent(parent: int) -> None:
    """Exit once ``parent`` is gone: a worker killed outright (SIGKILL, OOM killer)
    must not leave its decode processes behind."""
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(0)


def _init_worker(parent: int, started: Any, buffers: list[str], preprocess: Callable,
                 max_pixels: int, max_chars: int, tokenize: Callable | None) -> None:
    # ``parent`` is passed, not read here: the parent may already be gone
    threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True).start()
    torch.set_num_threads(1)
    # attached before the parent unlinks their names (it waits on ``started``)
    shm = [shared_memory.SharedMemory(name=n) for n in buffers]
    _WORKER.update(preprocess=preprocess, max_pixels=max_pixels, max_chars=max_chars, shm=shm,
                   tokenize=tokenize)
    started.wait(timeout=START_TIMEOUT_S)


def _decode_chunk(
    images: list[Any], captions: list[Any], slot: int | None = None,
    shape: tuple[int, ...] = (), dtype: str = "uint8",
) -> tuple[list[tuple[str, str | None, str]], np.ndarray | int | None, tuple | None]:
    """In a decode process: (status, error, caption) per row; the ok rows' pixels,
    written into shared buffer ``slot`` when given and they fit it (returns their
    count), else stacked into one array (pickled back); and their token ids and
    truncation flags when the process tokenises."""
    rows, arrays, texts = [], [], []
    for image, caption in zip(images, captions):
        d = decode_pair(image, caption, _WORKER["preprocess"], _WORKER["max_pixels"],
                        _WORKER["max_chars"])
        if d.status == OK:
            arrays.append(np.asarray(d.pixels))
            texts.append(d.caption)
        rows.append((d.status, d.error, d.caption))
    if not arrays:
        return rows, None, None
    tokens = _WORKER["tokenize"](texts) if _WORKER["tokenize"] is not None else None
    if slot is not None and all(a.shape == shape and a.dtype == np.dtype(dtype) for a in arrays):
        view = np.ndarray((len(arrays), *shape), dtype=dtype, buffer=_WORKER["shm"][slot].buf)
        for j, a in enumerate(arrays):
            view[j] = a
        return rows, len(arrays), tokens
    return rows, np.stack(arrays), tokens


def _probe(preprocess: Callable) -> np.ndarray | None:
    """What ``preprocess`` makes of a plain photo-sized image (its output shape and
    dtype, when it does not depend on the input's size), or None if it fails."""
    from PIL import Image

    try:
        return np.asarray(preprocess(Image.new("RGB", (640, 480), (128, 128, 128))))
    except Exception:
        return None


class _Buffers:
    """One pool's shared-memory buffers (one chunk each). Made before its processes
    start; each process attaches them all, then their names are unlinked, so no
    name outlives the pool, even if everything is SIGKILLed (Ray kills a dead
    worker's children, multiprocessing's resource tracker among them). The memory
    goes when the last process holding it unmaps it."""

    def __init__(self, count: int, nbytes: int) -> None:
        self.shm = [shared_memory.SharedMemory(create=True, size=nbytes) for _ in range(count)]
        self.names = [m.name for m in self.shm]
        self.free = list(range(count))
        self.lock = threading.Lock()
        self.retired = False

    def unlink(self) -> None:
        for m in self.shm:
            with contextlib.suppress(FileNotFoundError):
                m.unlink()

    def take(self) -> int | None:
        """A free slot, or None (the chunk's pixels are then pickled back)."""
        with self.lock:
            return None if self.retired or not self.free else self.free.pop()

    def give(self, slot: int) -> None:
        with self.lock:
            self.free.append(slot)
            if self.retired and len(self.free) == len(self.shm):
                self._close()

    def retire(self) -> None:
        """No new chunks; unmap once the chunks in flight are back."""
        with self.lock:
            self.retired = True
            if len(self.free) == len(self.shm):
                self._close()

    def _close(self) -> None:
        for m in self.shm:
            with contextlib.suppress(BufferError):  # a view still alive: unmapped at exit
                m.close()


class _Chunk(NamedTuple):
    """One submitted chunk: its rows, the pool and buffers it went to, its buffer
    slot (None: pixels pickled back) and its future."""

    images: list
    captions: list
    pool: ProcessPoolExecutor
    buffers: _Buffers | None
    slot: int | None
    future: Future


def _release(buffers: _Buffers | None, slot: int | None) -> None:
    """Give a chunk's buffer slot back (a chunk that had none needs nothing)."""
    if slot is not None and buffers is not None:
        buffers.give(slot)


class ProcessDecoder:
    """Decodes rows in worker processes (spawned: the caller has threads, Ray's among
    them, and forking a threaded process can deadlock). Pixels come back through
    shared memory, so the caller's only per-image work is one copy into the batch
    (which releases the GIL); a batch keeps at most two chunks per process in flight."""

    def __init__(self, preprocess: Callable, max_pixels: int, max_chars: int, processes: int,
                 pin: bool = False, chunk_rows: int = 32, shared: bool = True,
                 tokenize: Callable | None = None) -> None:
        # ``tokenize``: captions -> (int64 ids [B, context], truncated flags), picklable
        # (model.CaptionEncoder); the processes then tokenise too
        self.init_args = (preprocess, max_pixels, max_chars, tokenize)
        self.tokenizes = tokenize is not None
        self.processes = max(1, int(processes))
        self.pin = pin
        self.chunk_rows = chunk_rows
        self.in_flight = 2 * self.processes
        self._lock = threading.Lock()
        self.restarts = 0
        self.buffer_bytes = 0
        probe = _probe(preprocess) if shared else None
        if probe is not None:
            self.shape, self.dtype = tuple(probe.shape), str(probe.dtype)
            nbytes = chunk_rows * probe.nbytes
            st = os.statvfs("/dev/shm") if os.path.isdir("/dev/shm") else None
            # buffers for two decode calls (two tasks) in flight, with room to spare
            if st is not None and st.f_bavail * st.f_frsize > 2 * self._buffers() * nbytes:
                self.buffer_bytes = nbytes
            else:
                log.warning("/dev/shm is too small for decode buffers; pixels are pickled")
        self.pool: ProcessPoolExecutor | None
        self.buffers: _Buffers | None
        self.pool, self.buffers = self._start()

    def _buffers(self) -> int:
        return 2 * self.in_flight  # two decode calls (two tasks in flight) at a time

    def _start(self) -> tuple[ProcessPoolExecutor, _Buffers | None]:
        ctx = multiprocessing.get_context("spawn")
        started = ctx.Barrier(self.processes + 1)
        buffers = _Buffers(self._buffers(), self.buffer_bytes) if self.buffer_bytes else None
        pool = ProcessPoolExecutor(
            max_workers=self.processes, mp_context=ctx, initializer=_init_worker,
            initargs=(os.getpid(), started, buffers.names if buffers else [], *self.init_args),
        )
        # start every process now and wait until each has initialised: their
        # imports take seconds, which belong to the worker's start, not to its first
        # batch (a pool starts its processes as tasks arrive: send one each)
        futures = [pool.submit(int) for _ in range(self.processes)]
        try:
            started.wait(timeout=START_TIMEOUT_S)
        except threading.BrokenBarrierError:
            pool.shutdown(wait=False, cancel_futures=True)
            raise RuntimeError(f"decode processes did not start within {START_TIMEOUT_S} s") from None
        finally:
            if buffers is not None:
                buffers.unlink()
        for f in futures:
            f.result()
        return pool, buffers

    def _restart(self, broken: ProcessPoolExecutor) -> ProcessPoolExecutor:
        """A fresh pool in place of ``broken`` (once, however many callers saw it break)."""
        with self._lock:
            if self.pool is broken:
                broken.shutdown(wait=False, cancel_futures=True)
                if self.buffers is not None:
                    self.buffers.retire()
                self.restarts += 1
                log.warning("a decode process died; starting a new pool (restart %d)",
                            self.restarts)
                self.pool, self.buffers = self._start()
            return self.pool

    def _submit(self, images: list, captions: list) -> _Chunk:
        """Submit one chunk to the current pool, with a buffer slot when one is free."""
        with self._lock:
            pool, buffers = self.pool, self.buffers
        slot = buffers.take() if buffers is not None else None
        args = (images, captions) + ((slot, self.shape, self.dtype) if slot is not None else ())
        try:
            return _Chunk(images, captions, pool, buffers, slot, pool.submit(_decode_chunk, *args))
        except BrokenProcessPool:
            _release(buffers, slot)
            self._restart(pool)
            return self._submit(images, captions)

    def _one_by_one(self, images: list, captions: list) -> list[tuple]:
        """A chunk whose process died: each row alone; a row that kills its process
        again is reported instead of retried."""
        out = []
        for image, caption in zip(images, captions):
            c = self._submit([image], [caption])
            try:
                out.append((c.future.result(), c.buffers, c.slot))
            except BrokenProcessPool:
                _release(c.buffers, c.slot)
                self._restart(c.pool)
                out.append((([(BAD_IMAGE, CRASHED, "")], None, None), None, None))
        return out

    def _collect(self, c: _Chunk, out: list[Decoded], pixels: Gather, tokens: list) -> None:
        try:
            results = [(c.future.result(), c.buffers, c.slot)]
        except BrokenProcessPool:
            _release(c.buffers, c.slot)
            self._restart(c.pool)
            results = self._one_by_one(c.images, c.captions)
        except BaseException:
            _release(c.buffers, c.slot)
            raise
        for (chunk_rows, arr, toks), bufs, sl in results:
            try:
                out.extend(Decoded(st, err, None, cap) for st, err, cap in chunk_rows)
                if toks is not None:
                    tokens.append(toks)
                if isinstance(arr, int):  # that many rows in the shared buffer
                    pixels.add(np.ndarray((arr, *self.shape), self.dtype, buffer=bufs.shm[sl].buf))
                elif arr is not None:
                    pixels.add(arr)
            finally:
                _release(bufs, sl)

    def decode(self, images: Sequence[Any], captions: Sequence[Any]) -> DecodedRows:
        """Decode one batch in chunks spread over the processes; every row gets a status."""
        images, captions = list(images), list(captions)
        n = len(images)
        size = max(1, min(self.chunk_rows, math.ceil(n / self.processes)))
        rows: list[Decoded] = []
        pixels = Gather(n, self.pin)
        tokens: list[tuple[np.ndarray, list[bool]]] = []
        jobs: deque[_Chunk] = deque()
        try:
            for s in range(0, n, size):
                if len(jobs) >= self.in_flight:
                    self._collect(jobs.popleft(), rows, pixels, tokens)
                jobs.append(self._submit(images[s : s + size], captions[s : s + size]))
            while jobs:
                self._collect(jobs.popleft(), rows, pixels, tokens)
        finally:
            for c in jobs:  # an error left these: wait for them, then free their slots
                with contextlib.suppress(Exception):
                    c.future.result()
                _release(c.buffers, c.slot)
        out = DecodedRows(rows, [i for i, r in enumerate(rows) if r.status == OK],
                          pixels.result())
        if self.tokenizes and out.ok:
            out.tokens = np.concatenate([ids for ids, _ in tokens])
            out.truncated = [t for _, flags in tokens for t in flags]
        return out

    def close(self) -> None:
        """Stop the processes; once this object's pool is collected, multiprocessing
        unlinks its named semaphores (a SIGKILLed owner leaves those few behind)."""
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
        if self.buffers is not None:
            self.buffers.retire()
        self.pool, self.buffers = None, None
