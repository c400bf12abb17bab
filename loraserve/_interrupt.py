"""Ctrl-C and SIGTERM stop any phase of a command within a second.

Python runs a signal handler only between bytecodes of the main thread, so a native solver
that holds the main thread (CP-SAT, HiGHS) would finish its whole time limit first; CP-SAT
even catches SIGINT itself by default and reports it as a time limit, which is how LNS,
made of many short CP-SAT solves, used to swallow Ctrl-C. While :func:`signals_interrupt`
is active, the signal's C-level handler also writes to a wake-up pipe that a small thread
watches: it asks every running native solve (registered with :func:`stoppable`) to stop, and
when the solve returns the main thread raises :class:`Interrupted` at its next bytecode.

This module imports nothing from loraserve, so every layer may use it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Callable, Iterator
from types import FrameType

#: Signals that stop a command.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
#: The byte that tells the watcher thread to end (no signal has this number).
_QUIT = 255

_lock = threading.Lock()
_stoppers: list[Callable[[], None]] = []
_requested = threading.Event()


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM arrived; ``signum`` says which."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def name(self) -> str:
        """``SIGINT`` or ``SIGTERM``."""
        return signal.Signals(self.signum).name


def requested() -> bool:
    """Whether a stop signal has arrived inside :func:`signals_interrupt`."""
    return _requested.is_set()


def _stop_all() -> None:
    with _lock:
        stoppers = list(_stoppers)
    for stop in stoppers:
        # A solver that already finished may refuse; the main thread raises anyway.
        with contextlib.suppress(Exception):
            stop()


@contextlib.contextmanager
def stoppable(stop: Callable[[], None]) -> Iterator[None]:
    """Call ``stop`` (from another thread) if a stop signal arrives while the block runs.

    Parameters
    ----------
    stop : callable
        Makes a native solve return early (``CpSolver.stop_search``, ``Highs.cancelSolve``);
        it must be safe to call from another thread.
    """
    with _lock:
        _stoppers.append(stop)
    try:
        if _requested.is_set():
            stop()
        yield
    finally:
        with _lock:
            _stoppers.remove(stop)


def _raise(signum: int, frame: FrameType | None) -> None:
    _requested.set()
    raise Interrupted(signum)


def _watch(read_fd: int) -> None:
    while True:
        try:
            data = os.read(read_fd, 64)
        except OSError:
            return
        if not data or _QUIT in data:
            return
        if any(byte in (int(s) for s in STOP_SIGNALS) for byte in data):
            _requested.set()
            _stop_all()


@contextlib.contextmanager
def signals_interrupt() -> Iterator[None]:
    """Make SIGINT and SIGTERM raise :class:`Interrupted` and stop native solves, in the block.

    Outside the main thread (where Python allows no signal handlers) this does nothing.
    Handlers and the wake-up descriptor are restored on exit.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    previous = {s: signal.getsignal(s) for s in STOP_SIGNALS}
    old_wakeup = -1
    watcher = threading.Thread(target=_watch, args=(read_fd,), name="loraserve-signals",
                               daemon=True)
    _requested.clear()
    try:
        for s in STOP_SIGNALS:
            signal.signal(s, _raise)
        old_wakeup = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
        watcher.start()
        yield
    finally:
        signal.set_wakeup_fd(old_wakeup)
        for s, handler in previous.items():
            signal.signal(s, handler)
        with contextlib.suppress(OSError):
            os.write(write_fd, bytes([_QUIT]))
        if watcher.is_alive():
            watcher.join(timeout=1.0)
        os.close(write_fd)
        os.close(read_fd)
        _requested.clear()
