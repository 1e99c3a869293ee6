"""Decode a batch of rows in threads or in worker processes.

Both decoders turn a batch's image and caption cells into ``DecodedRows``: a
status per row and the ok rows' pixels stacked in one tensor (in pinned memory
when the batch goes to a GPU). They differ in where the image work runs:

* ``ThreadDecoder``: threads of the worker's own process. Right beside CPU
  compute, whose operations are long enough that sharing the GIL costs little.
* ``ProcessDecoder``: processes of its own. Beside a GPU the compute thread
  launches thousands of short kernels per batch and every launch releases and
  retakes the GIL; decode threads in the same process would hold it for their
  Python work, so the launcher could queue behind them. Worker processes share no
  GIL with it. They also isolate the codecs: a row that crashes or hangs its
  decoding process costs that row only (status ``bad_image``), not the worker.

The processes are a ``concurrent.futures.ProcessPoolExecutor``. Their pixels come
back through shared-memory buffers made once per pool, one per chunk that can be
in flight, so a chunk's pixels are written once in the process and copied once
into the batch. That took 10-15% less CPU per image than pickling them back
(the decode bench's ``process_pool_pickled``) or returning tensors through
torch's own sharing (a fresh segment per chunk: about the cost of pickling); a
``DataLoader`` built per batch was slower still, and one with persistent
workers needs its rows when they start (docs/performance.md, "Decoding"). Every
wait is bounded: a chunk that does not come back in time has its processes
killed and is replayed like a crashed one.
"""

from __future__ import annotations

import contextlib
import logging
import math
import multiprocessing
import os
import queue
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
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
#: Seconds one image may take to decode, far more than the largest image allowed
#: needs; a chunk gets this per row, a replayed row this alone.
ROW_TIMEOUT_S = 30.0
#: Seconds ``close`` waits for the processes to exit before killing them.
CLOSE_TIMEOUT_S = 30.0
#: The message of a row whose decoding killed the process it had to itself.
CRASHED = "decoding this image crashed its decode process (a codec crash); row skipped"
#: The message of a row whose decoding did not end in time, alone in its process
#: (formatted with the seconds it had).
HUNG = ("decoding this image took over {:.0f} s alone in a decode process (a codec stuck); "
        "row skipped")


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
    fallbacks: int = 0  # JPEGs the device path refused and the CPU decoded (decode/device.py)


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


Draft = Callable[[tuple[int, int]], tuple[int, int]]


class ThreadDecoder:
    """Decodes rows in a thread pool of the calling process."""

    def __init__(self, preprocess: Callable, max_pixels: int, max_chars: int, threads: int,
                 pin: bool = False, one_torch_thread: bool = False,
                 draft: Draft | None = None) -> None:
        # ``draft``: passed to ``decode_pair`` (DCT-scaled JPEG decoding, data.decode=fast)
        self.preprocess, self.max_pixels, self.max_chars = preprocess, max_pixels, max_chars
        self.draft = draft
        self.pin = pin
        self.threads = threads
        self.tokenizes = False  # the caller tokenises
        self.pool = ThreadPoolExecutor(
            max_workers=threads, thread_name_prefix="nibt-decode",
            initializer=torch.set_num_threads if one_torch_thread else None,
            initargs=(1,) if one_torch_thread else (),
        )

    def decode(self, images: Sequence[Any], captions: Sequence[Any]) -> DecodedRows:
        """Decode one batch; every row gets a status."""
        rows = list(self.pool.map(
            lambda ic: decode_pair(ic[0], ic[1], self.preprocess, self.max_pixels,
                                   self.max_chars, self.draft),
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


def _init_worker(parent: int, started: Any, pids: Any, buffers: list[str], preprocess: Callable,
                 max_pixels: int, max_chars: int, tokenize: Callable | None,
                 draft: Draft | None) -> None:
    # ``parent`` is passed, not read here: the parent may already be gone
    threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True).start()
    torch.set_num_threads(1)
    # attached before the parent unlinks their names (it waits on ``started``)
    shm = [shared_memory.SharedMemory(name=n) for n in buffers]
    _WORKER.update(preprocess=preprocess, max_pixels=max_pixels, max_chars=max_chars,
                   tokenize=tokenize, draft=draft, shm=shm)
    pids.put(os.getpid())
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
                        _WORKER["max_chars"], _WORKER["draft"])
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


def _probe(preprocess: Callable, draft: Draft | None) -> np.ndarray | None:
    """What ``preprocess`` makes of a plain photo-sized JPEG (its output shape and
    dtype, when it does not depend on the input's size), or None if it fails."""
    import io

    from PIL import Image

    from pipeline.io.images import decode_image

    try:
        buf = io.BytesIO()
        Image.new("RGB", (640, 480), (128, 128, 128)).save(buf, format="JPEG")
        return np.asarray(preprocess(decode_image(buf.getvalue(), draft=draft)))
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

    def give(self, slot: int | None) -> None:
        if slot is None:
            return
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


# ---------------------------------------------------------------- parent side
def _started_at(pid: int) -> int | None:
    """When ``pid`` started (clock ticks since boot), None once it has ended: with
    the id, it names one process even after the id is reused."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[-1].split()
    except OSError:
        return None
    return None if fields[0] in ("Z", "X") else int(fields[19])


class _Pool(NamedTuple):
    """A started process pool, its processes as (id, start time), its buffers."""

    executor: ProcessPoolExecutor
    procs: list[tuple[int, int | None]]
    buffers: _Buffers | None = None

    def alive(self) -> list[tuple[int, int | None]]:
        return [(p, t) for p, t in self.procs if t is not None and _started_at(p) == t]

    def kill(self) -> None:
        """SIGKILL those of its processes still running (never another process
        that got one of their ids since)."""
        for pid, _ in self.alive():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)

    def stop(self, timeout: float | None = None) -> None:
        """Shut the pool down; processes still running after ``timeout`` seconds
        (default ``CLOSE_TIMEOUT_S``) are killed."""
        self.executor.shutdown(wait=False, cancel_futures=True)
        deadline = time.monotonic() + (CLOSE_TIMEOUT_S if timeout is None else timeout)
        while time.monotonic() < deadline and self.alive():
            time.sleep(0.05)
        self.kill()
        if self.buffers is not None:
            self.buffers.retire()


class _Chunk(NamedTuple):
    """One submitted chunk: its rows, the pool it went to, its buffer slot (None:
    pixels pickled back), its future and deadline."""

    images: list
    captions: list
    pool: _Pool
    slot: int | None
    future: Future
    deadline: float

    def release(self) -> None:
        if self.pool.buffers is not None:
            self.pool.buffers.give(self.slot)


class ProcessDecoder:
    """Decodes rows in worker processes (spawned: the caller has threads, Ray's among
    them, and forking a threaded process can deadlock). A batch is cut in chunks,
    at most two per process in flight.

    A chunk whose process died or did not answer in time (its pool's processes are
    then killed and the pool restarted) is replayed row by row in a process of its
    own, so only a row that crashes or hangs a process that holds nothing else is
    reported (``CRASHED``, ``HUNG``), never a row that happened to share the pool."""

    def __init__(self, preprocess: Callable, max_pixels: int, max_chars: int, processes: int,
                 pin: bool = False, chunk_rows: int = 32, tokenize: Callable | None = None,
                 draft: Draft | None = None, row_timeout_s: float = ROW_TIMEOUT_S,
                 readers: int = 1, shared: bool = True) -> None:
        # ``tokenize``: captions -> (int64 ids [B, context], truncated flags), picklable
        # (model.CaptionEncoder); the processes then tokenise too. ``readers``: decode
        # calls at once the buffers are sized for (a worker has one reader thread);
        # a chunk that finds no free buffer has its pixels pickled back instead.
        self.init_args = (preprocess, max_pixels, max_chars, tokenize, draft)
        self.tokenizes = tokenize is not None
        self.processes = max(1, int(processes))
        self.pin = pin
        self.chunk_rows = chunk_rows
        self.row_timeout_s = float(row_timeout_s)
        self.in_flight = 2 * self.processes
        self.slots = self.in_flight * max(1, int(readers))
        self._lock = threading.Lock()
        self.restarts = 0
        self.buffer_bytes = 0
        probe = _probe(preprocess, draft) if shared else None
        if probe is not None:
            self.shape, self.dtype = tuple(probe.shape), str(probe.dtype)
            nbytes = chunk_rows * probe.nbytes
            st = os.statvfs("/dev/shm") if os.path.isdir("/dev/shm") else None
            # room for a restarted pool's buffers while the old ones drain
            if st is not None and st.f_bavail * st.f_frsize > 2 * self.slots * nbytes:
                self.buffer_bytes = nbytes
            else:
                log.warning("/dev/shm is too small for decode buffers; pixels are pickled")
        self.pool: _Pool | None = self._start(self.processes, shared=True)

    def _start(self, processes: int, shared: bool) -> _Pool:
        """A pool of ``processes``, each started and initialised (their imports take
        seconds, which belong to the worker's start, not to its first batch), with
        its buffers when ``shared`` (and /dev/shm has room)."""
        ctx = multiprocessing.get_context("spawn")
        started, pids = ctx.Barrier(processes + 1), ctx.Queue()
        buffers = (_Buffers(self.slots, self.buffer_bytes) if shared and self.buffer_bytes
                   else None)
        executor = ProcessPoolExecutor(
            max_workers=processes, mp_context=ctx, initializer=_init_worker,
            initargs=(os.getpid(), started, pids, buffers.names if buffers else [],
                      *self.init_args),
        )
        # a pool starts its processes as tasks arrive: send one each
        futures = [executor.submit(int) for _ in range(processes)]
        pool = _Pool(executor, [], buffers)
        deadline = time.monotonic() + START_TIMEOUT_S
        try:
            while len(pool.procs) < processes:  # each then waits at the barrier: alive
                if time.monotonic() > deadline:
                    raise FutureTimeout
                try:
                    pid = pids.get(timeout=0.2)
                except queue.Empty:
                    for f in futures:  # done before the barrier: the pool broke
                        if f.done():
                            f.result()
                    continue
                pool.procs.append((pid, _started_at(pid)))
            started.wait(timeout=max(0.0, deadline - time.monotonic()))
            for f in futures:
                f.result(timeout=max(0.0, deadline - time.monotonic()))
        except (threading.BrokenBarrierError, FutureTimeout, BrokenProcessPool) as e:
            pool.stop(timeout=0)
            why = ("a process died while starting" if isinstance(e, BrokenProcessPool)
                   else f"not started within {START_TIMEOUT_S} s")
            raise RuntimeError(f"decode processes failed to start: {why}") from None
        finally:
            if buffers is not None:  # attached by every process by now, or never needed
                buffers.unlink()
        return pool

    def _restart(self, broken: _Pool) -> None:
        """A fresh pool in place of ``broken`` (once, however many callers saw it break)."""
        with self._lock:
            if self.pool is broken:
                broken.stop(timeout=0)  # dead already, or stuck
                self.restarts += 1
                log.warning("a decode process died or hung; starting a new pool (restart %d)",
                            self.restarts)
                self.pool = self._start(self.processes, shared=True)

    def _submit(self, images: list, captions: list) -> _Chunk:
        with self._lock:
            pool = self.pool
        if pool is None:
            raise RuntimeError("the decoder is closed")
        deadline = time.monotonic() + self.row_timeout_s * max(1, len(images))
        slot = pool.buffers.take() if pool.buffers is not None else None
        args = (images, captions) + ((slot, self.shape, self.dtype) if slot is not None else ())
        try:
            return _Chunk(images, captions, pool, slot,
                          pool.executor.submit(_decode_chunk, *args), deadline)
        except BrokenProcessPool:
            if pool.buffers is not None:
                pool.buffers.give(slot)
            self._restart(pool)
            return self._submit(images, captions)

    def _wait(self, c: _Chunk) -> tuple | None:
        """The chunk's result, or None when its pool broke or it ran past its deadline
        (that pool's processes are then killed and the pool restarted)."""
        try:
            return c.future.result(timeout=max(0.0, c.deadline - time.monotonic()))
        except BrokenProcessPool:
            pass
        except FutureTimeout:
            log.warning("a decode chunk of %d rows ran past its %.0f s", len(c.images),
                        self.row_timeout_s * len(c.images))
        self._restart(c.pool)
        return None

    def _replay(self, images: list, captions: list, solo: list[_Pool]) -> list[tuple]:
        """Rows of a chunk whose pool broke or stalled, each alone in a process of
        their own (``solo``: the one this decode call started, if any): a row that
        kills or stalls it is the one to blame."""
        out: list[tuple] = []
        for image, caption in zip(images, captions):
            if not solo:
                solo.append(self._start(1, shared=False))
            f = solo[0].executor.submit(_decode_chunk, [image], [caption])
            try:
                out.append(f.result(timeout=self.row_timeout_s))
                continue
            except BrokenProcessPool:
                out.append(([(BAD_IMAGE, CRASHED, "")], None, None))
            except FutureTimeout:
                out.append(([(BAD_IMAGE, HUNG.format(self.row_timeout_s), "")], None, None))
            solo.pop().stop(timeout=0)
        return out

    def _collect(self, c: _Chunk, out: list[Decoded], pixels: Gather, tokens: list,
                 solo: list[_Pool]) -> None:
        try:  # the slot comes back however this ends (a broken pool's processes are gone)
            result = self._wait(c)
            if result is None and self.pool is None:
                raise RuntimeError("the decoder was closed while decoding")
            results = ([result] if result is not None
                       else self._replay(c.images, c.captions, solo))
            for chunk_rows, arr, toks in results:
                out.extend(Decoded(st, err, None, cap) for st, err, cap in chunk_rows)
                if toks is not None:
                    tokens.append(toks)
                if isinstance(arr, int):  # that many rows in the chunk's shared buffer
                    buf = c.pool.buffers.shm[c.slot].buf
                    pixels.add(np.ndarray((arr, *self.shape), self.dtype, buffer=buf))
                elif arr is not None:
                    pixels.add(arr)
        finally:
            c.release()

    def decode(self, images: Sequence[Any], captions: Sequence[Any]) -> DecodedRows:
        """Decode one batch in chunks spread over the processes; every row gets a status."""
        images, captions = list(images), list(captions)
        n = len(images)
        size = max(1, min(self.chunk_rows, math.ceil(n / self.processes)))
        rows: list[Decoded] = []
        pixels = Gather(n, self.pin)
        tokens: list[tuple[np.ndarray, list[bool]]] = []
        jobs: deque[_Chunk] = deque()
        solo: list[_Pool] = []  # the process replaying broken chunks' rows, once needed
        try:
            for s in range(0, n, size):
                if len(jobs) >= self.in_flight:
                    self._collect(jobs.popleft(), rows, pixels, tokens, solo)
                jobs.append(self._submit(images[s : s + size], captions[s : s + size]))
            while jobs:
                self._collect(jobs.popleft(), rows, pixels, tokens, solo)
        finally:
            for c in jobs:  # an error left these: their slots come back when they end
                c.future.cancel()
                c.future.add_done_callback(lambda _, c=c: c.release())
            for p in solo:
                p.stop()
        out = DecodedRows(rows, [i for i, r in enumerate(rows) if r.status == OK],
                          pixels.result())
        if self.tokenizes and out.ok:
            out.tokens = np.concatenate([ids for ids, _ in tokens])
            out.truncated = [t for _, flags in tokens for t in flags]
        return out

    def close(self) -> None:
        """Stop the processes: they get ``CLOSE_TIMEOUT_S`` to exit, then are killed.
        Once this object's pool is collected, multiprocessing unlinks its named
        semaphores (a SIGKILLed owner leaves those few behind)."""
        with self._lock:
            pool, self.pool = self.pool, None
        if pool is not None:
            pool.stop()
