"""Device errors an actor cannot recover from, and how the actor ends on one.

After an illegal memory access, a device-side assert and their kin, the process's
CUDA context is broken: every later call fails too. Retrying pair by pair on it
only turns every row into ``error``. So such an error ends the worker process
(``end_process``): Ray restarts the actor (``max_restarts=-1``) with a fresh
context, and the dispatcher retries the task it held (``ActorLost``), elsewhere
or on the restarted actor. An error is fatal when its message names one of these
errors, or when the device no longer runs a trivial kernel after it.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import NoReturn

import torch

log = logging.getLogger(__name__)

#: Exit status of a worker that ended on a fatal device error (Ray restarts it).
EXIT_DEVICE_LOST = 75
#: Messages of CUDA errors that leave the context unusable (sticky errors).
FATAL_SIGNS = (
    "illegal memory access", "device-side assert", "misaligned address",
    "unspecified launch failure", "illegal instruction", "uncorrectable ecc",
    "hardware stack error", "an illegal address", "cuda error: launch failure",
)


class DeviceLost(RuntimeError):
    """The device failed beyond repair in this process: the actor must end."""


def device_usable(device: torch.device) -> bool:
    """Whether ``device`` still runs a kernel and synchronises without an error."""
    try:
        torch.ones(1, device=device).add_(1).cpu()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return True
    except Exception:
        return False


def is_fatal(e: BaseException, device: torch.device) -> bool:
    """Whether ``e``, raised by work on ``device``, left that device unusable. Only a
    CUDA device can be lost: on a CPU every error is the pair's or the batch's."""
    if isinstance(e, DeviceLost):
        return True
    if device.type != "cuda" or isinstance(e, torch.OutOfMemoryError):
        return False
    text = str(e).lower()
    return any(s in text for s in FATAL_SIGNS) or not device_usable(device)


def check(e: BaseException, device: torch.device) -> None:
    """Raise ``DeviceLost`` (from ``e``) when ``e`` is fatal on ``device``."""
    if isinstance(e, DeviceLost):
        raise e
    if is_fatal(e, device):
        raise DeviceLost(f"{device}: {type(e).__name__}: {e}") from e


def end_process(e: BaseException) -> NoReturn:
    """Report ``e`` and end this process at once (no cleanup on a broken context):
    Ray restarts the actor, and the tasks it held are retried."""
    log.critical("fatal device error; ending this worker (pid %d) so that it restarts "
                 "with a fresh device context: %s", os.getpid(), e)
    print(f"nibt-audit worker {os.getpid()}: fatal device error, exiting "
          f"{EXIT_DEVICE_LOST}: {e}", file=sys.stderr, flush=True)
    for h in logging.getLogger().handlers:
        h.flush()
    os._exit(EXIT_DEVICE_LOST)
