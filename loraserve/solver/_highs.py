"""HiGHS process-wide quirks: its stdout banner and its global thread pool."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from functools import cache

import highspy


@cache
def quiet_banner() -> None:
    """Create one throw-away HiGHS object with stdout pointed at /dev/null.

    HiGHS prints its banner from C++ once per process, ignoring ``output_flag``; it would
    otherwise land in the middle of ``loraserve plan``'s table.
    """
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 1)
            highspy.Highs()  # type: ignore[no-untyped-call]
    finally:
        os.dup2(saved, 1)
        os.close(saved)


@contextlib.contextmanager
def thread_pool(threads: int) -> Iterator[None]:
    """Run a HiGHS solve with ``threads`` workers, restoring the one-thread pool after.

    HiGHS sizes a process-wide scheduler at its first solve and answers "not solved" to a
    later solve that asks for another size; every other solve in loraserve uses one thread.
    """
    if threads == 1:
        yield
        return
    highspy.Highs.resetGlobalScheduler(True)
    try:
        yield
    finally:
        highspy.Highs.resetGlobalScheduler(True)
