"""Smoothed per-adapter request rates and token means from counters.

The router (and any gateway) exports per-adapter *cumulative* counters: requests, prompt
tokens and generated tokens. :class:`RateEstimator` turns successive readings into
exponentially weighted moving averages with a stated half-life, so a burst of a few seconds
does not trigger a re-plan and a shift that lasts does within a few half-lives.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Counters:
    """Cumulative per-adapter counters at one moment (as a Prometheus scrape gives them).

    Attributes
    ----------
    time : float
        Seconds on any monotonic clock shared by successive readings.
    requests, prompt_tokens, output_tokens : mapping of str to float
        Totals since the counter's start, per adapter id.
    usage_requests : mapping of str to float, optional
        The requests whose tokens the token counters hold, where that is not all of them (a
        router sees the usage of a streamed answer only when the client asked for it); the
        token means divide by these. All requests when omitted.
    """

    time: float
    requests: Mapping[str, float]
    prompt_tokens: Mapping[str, float]
    output_tokens: Mapping[str, float]
    usage_requests: Mapping[str, float] | None = None


class RateEstimator:
    """EWMA of each adapter's request rate and mean prompt and output tokens.

    Parameters
    ----------
    half_life_s : float
        Seconds after which an old observation weighs half: the weight of an interval of
        length ``dt`` is ``1 - 2 ** (-dt / half_life_s)``, so irregular scrape intervals are
        weighted by their length.

    Notes
    -----
    A counter that goes down (a worker or router restarted) counts as restarted from zero:
    its new value is the interval's count. The first interval starts each adapter at its own
    rate; an adapter that first appears later (a counter is exported only once it has
    counted something) had no requests before, so it starts at zero and rises with the
    half-life like any other change. Token means move only with intervals that counted
    tokens (requests whose usage was seen, see ``Counters.usage_requests``); an adapter that
    stops receiving traffic keeps its last means and its rate decays toward zero.
    """

    def __init__(self, half_life_s: float = 300.0) -> None:
        if not half_life_s > 0:
            raise ValueError(f"half_life_s must be positive, not {half_life_s}")
        self.half_life_s = half_life_s
        self._last: Counters | None = None
        self._rate: dict[str, float] = {}
        self._prompt: dict[str, float] = {}
        self._output: dict[str, float] = {}
        self.intervals = 0

    def observe(self, counters: Counters) -> None:
        """Fold in one reading; the first one only sets the baseline."""
        last = self._last
        self._last = counters
        if last is None:
            return
        dt = counters.time - last.time
        if dt <= 0:
            logger.warning("ignoring a reading %.3f s after the previous one", dt)
            self._last = last
            return
        weight = 1.0 - math.pow(2.0, -dt / self.half_life_s)
        self.intervals += 1
        for adapter in set(counters.requests) | set(self._rate):
            requests = _delta(counters.requests, last.requests, adapter)
            rate = requests / dt
            if adapter not in self._rate and self.intervals == 1:
                # The first interval starts every adapter at its own rate, not at zero.
                self._rate[adapter] = rate
            elif adapter not in self._rate:
                # Unseen until now: its counter did not exist, so it had no requests, and a
                # burst of a new adapter is smoothed like any other change.
                self._rate[adapter] = weight * rate
            else:
                self._rate[adapter] += weight * (rate - self._rate[adapter])
            counted = requests
            if counters.usage_requests is not None:
                counted = _delta(counters.usage_requests, last.usage_requests or {}, adapter)
            if counted > 0:
                prompt = _delta(counters.prompt_tokens, last.prompt_tokens, adapter) / counted
                output = _delta(counters.output_tokens, last.output_tokens, adapter) / counted
                for means, value in ((self._prompt, prompt), (self._output, output)):
                    if value > 0:
                        old = means.get(adapter)
                        means[adapter] = value if old is None else old + weight * (value - old)

    def rates(self) -> dict[str, float]:
        """Smoothed requests per second per adapter seen so far."""
        return dict(self._rate)

    def token_means(self) -> dict[str, tuple[float, float]]:
        """Smoothed (prompt, output) tokens per request, for adapters that had requests."""
        return {a: (self._prompt[a], self._output[a])
                for a in self._prompt if a in self._output}

    @property
    def ready(self) -> bool:
        """Whether at least two readings (one interval) have been folded in."""
        return self.intervals > 0


def _delta(now: Mapping[str, float], before: Mapping[str, float], key: str) -> float:
    current = float(now.get(key, 0.0))
    previous = float(before.get(key, 0.0))
    return current if current < previous else current - previous
