"""SIGTERM / SIGINT during a run: raise before dispatch, a flag after, 128 + n as exit code."""

from __future__ import annotations

import os
import signal

import pytest

from pipeline.job.stop import Stopped, StopSignals


def test_before_dispatch_a_signal_raises_after_it_sets_the_flag():
    before = signal.getsignal(signal.SIGTERM)
    with StopSignals() as stop:
        with pytest.raises(Stopped):
            os.kill(os.getpid(), signal.SIGTERM)
            signal.sigtimedwait([], 0)  # let the handler run
        assert stop.event.is_set() and stop.exit_code == 143 and stop.name == "SIGTERM"
    assert signal.getsignal(signal.SIGTERM) is before  # put back


@pytest.fixture
def sigint_default():
    """SIGINT as an interactive shell gives it, whatever this test process inherited."""
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, old)


def test_during_dispatch_a_signal_only_sets_the_flag_and_a_second_is_ignored(sigint_default):
    with StopSignals() as stop:
        stop.interruptible = False
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGTERM)
        signal.sigtimedwait([], 0)
        assert stop.event.is_set() and stop.exit_code == 130  # the first signal counts
        assert stop.repeated == 1
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # put back


def test_a_signal_ignored_at_the_start_stays_ignored():
    """A background job's SIGINT (ignored by its shell) does not stop the audit."""
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with StopSignals() as stop:
            stop.interruptible = False
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
            os.kill(os.getpid(), signal.SIGINT)
            signal.sigtimedwait([], 0)
            assert not stop.event.is_set()
            os.kill(os.getpid(), signal.SIGTERM)  # SIGTERM still stops it
            signal.sigtimedwait([], 0)
            assert stop.event.is_set() and stop.exit_code == 143
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, old)


def test_ray_init_does_not_keep_its_sigterm_handler():
    """``ray.init`` installs a handler calling sys.exit (exit 134 from inside Ray);
    the caller's handler is put back."""
    from pipeline.job.cluster import kept_sigterm_handler

    def mine(signum, frame):
        return None

    def theirs(signum, frame):
        raise SystemExit(signum)

    old = signal.signal(signal.SIGTERM, mine)
    try:
        with kept_sigterm_handler():
            signal.signal(signal.SIGTERM, theirs)  # what ray.init does
        assert signal.getsignal(signal.SIGTERM) is mine
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        with kept_sigterm_handler():  # nobody's handler to keep: Ray's stays
            signal.signal(signal.SIGTERM, theirs)
        assert signal.getsignal(signal.SIGTERM) is theirs
    finally:
        signal.signal(signal.SIGTERM, old)
