"""Silence the copyright banner HiGHS writes to stdout the first time a model is created."""

from __future__ import annotations

import os
import sys
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
