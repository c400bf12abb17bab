"""Progress reports from long solves: incumbent, bound and elapsed time."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Progress:
    """One progress report.

    Attributes
    ----------
    solver : str
        The algorithm running (``milp``, ``cpsat``, ...).
    incumbent : float
        Cost of the best plan so far (``inf`` before the first).
    bound : float
        Best proven lower bound so far.
    elapsed : float
        Seconds since the solve started.
    """

    solver: str
    incumbent: float
    bound: float
    elapsed: float

    @property
    def gap(self) -> float:
        """Relative gap of the incumbent to the bound (``inf`` without an incumbent)."""
        if not math.isfinite(self.incumbent):
            return math.inf
        return max(0.0, (self.incumbent - self.bound) / self.incumbent) if self.incumbent else 0.0

    def __str__(self) -> str:
        incumbent = f"{self.incumbent:g}" if math.isfinite(self.incumbent) else "-"
        gap = f"{self.gap:.1%}" if math.isfinite(self.gap) else "-"
        return (f"{self.solver}: incumbent {incumbent}  bound {self.bound:g}  gap {gap}  "
                f"{self.elapsed:.1f} s")


ProgressCallback = Callable[[Progress], None]


class Reporter:
    """Forward reports to a callback, throttled.

    Every improvement goes out at once, anything else at most every ``interval`` seconds, so
    a solver's per-node events do not flood a terminal.

    Parameters
    ----------
    callback : callable or None
        Receives :class:`Progress`; ``None`` makes the reporter a no-op.
    started : float
        ``time.perf_counter()`` at the start of the solve.
    interval : float
        Seconds between reports that carry no improvement.
    """

    def __init__(self, callback: ProgressCallback | None, started: float,
                 interval: float = 1.0) -> None:
        self.callback = callback
        self.started = started
        self.interval = interval
        self._last = -math.inf
        self._best = (math.inf, -math.inf)

    def __call__(self, solver: str, incumbent: float, bound: float) -> None:
        """Report the solver's current incumbent and bound (a best-so-far is kept)."""
        if self.callback is None:
            return
        now = time.perf_counter()
        best = (min(self._best[0], incumbent), max(self._best[1], bound))
        improved = best != self._best
        self._best = best
        if improved or now - self._last >= self.interval:
            self._last = now
            self.callback(Progress(solver, best[0], best[1], now - self.started))
