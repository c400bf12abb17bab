"""Request streams for the simulator: generated, or replayed from an Azure LLM trace.

A :class:`Requests` value is what the simulator replays: arrival times, each request's
adapter (an index into ``config.adapters``), and its prompt and output token counts. It comes
from

* :func:`generate_requests`: Poisson or Gamma arrivals (a given coefficient of variation) at
  the config's total rate, each request's adapter drawn by the adapters' rates, lognormal
  token counts around each adapter's means; no data file needed;
* :func:`requests_from_trace`: the rows of an Azure trace (``TIMESTAMP,ContextTokens,
  GeneratedTokens``), rate-scaled by superposing shifted copies, assigned to the config's
  adapters by their rates;
* :func:`trace_workload`: adapters *and* requests from a trace (Zipf popularity and a rank
  mix, as :func:`loraserve.models.trace.adapters_from_trace` builds them), so the planner sees
  exactly the rates and token means of the requests the simulator replays.

Popularity can drift: every ``drift_every_s`` seconds a share of the adapters swap popularity
with a random partner (:class:`Drift`), and :attr:`Requests.epoch_rates` records each epoch's
expected rates, for the drift detector's tests. Every random choice goes through a
``numpy.random.Generator`` seeded from the ``seed`` argument.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd

from loraserve.models import Adapter, Config, ConfigError
from loraserve.models.trace import (
    TRACE_RANK_MIX,
    adapters_from_trace,
    assign_adapters,
    scale_trace,
)

logger = logging.getLogger(__name__)

ArrivalProcess = Literal["poisson", "gamma"]


@dataclass(frozen=True)
class Drift:
    """Popularity that changes over time.

    Parameters
    ----------
    every_s : float
        Length of an epoch in seconds; popularity is constant within one.
    fraction : float
        Share of adapters that, at each epoch boundary, swap their popularity with a random
        partner (in (0, 1]). The multiset of rates, and so the total rate, never changes.
    """

    every_s: float
    fraction: float

    def __post_init__(self) -> None:
        if not (self.every_s > 0 and math.isfinite(self.every_s)):
            raise ConfigError(f"drift every_s must be a positive number, got {self.every_s!r}")
        if not 0 < self.fraction <= 1:
            raise ConfigError(f"drift fraction must be in (0, 1], got {self.fraction!r}")


@dataclass(frozen=True)
class Requests:
    """Requests to replay, sorted by arrival.

    Attributes
    ----------
    arrival : numpy.ndarray
        Arrival times in seconds from the start, non-decreasing (float64).
    adapter : numpy.ndarray
        Index of each request's adapter in ``config.adapters`` (int64).
    prompt_tokens, output_tokens : numpy.ndarray
        Token counts, at least 1 each (int64): a server always generates one token.
    duration : float
        Length of the window the requests arrive in (seconds); rates are counts over it.
    epoch_s : float or None
        With drift, the epoch length; ``epoch_rates[e, a]`` is adapter ``a``'s expected rate
        in epoch ``e``.
    epoch_rates : numpy.ndarray or None
    """

    arrival: np.ndarray
    adapter: np.ndarray
    prompt_tokens: np.ndarray
    output_tokens: np.ndarray
    duration: float
    epoch_s: float | None = None
    epoch_rates: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.arrival.shape[0])

    @property
    def rate(self) -> float:
        """Mean request rate over the window (requests per second)."""
        return len(self) / self.duration if self.duration > 0 else math.inf

    def frame(self) -> pd.DataFrame:
        """One row per request: ``arrival``, ``adapter``, ``prompt_tokens``, ``output_tokens``."""
        return pd.DataFrame({"arrival": self.arrival, "adapter": self.adapter,
                             "prompt_tokens": self.prompt_tokens,
                             "output_tokens": self.output_tokens})

    def head(self, seconds: float) -> Requests:
        """The requests arriving in the first ``seconds`` seconds (drift epochs kept)."""
        keep = self.arrival < seconds
        return Requests(self.arrival[keep], self.adapter[keep], self.prompt_tokens[keep],
                        self.output_tokens[keep], min(self.duration, seconds), self.epoch_s,
                        self.epoch_rates)


def _check_rates(config: Config) -> np.ndarray:
    rates = np.array([a.request_rate for a in config.adapters], dtype=float)
    if not rates.sum() > 0:
        raise ConfigError("adapters: every request_rate is 0; give at least one adapter traffic")
    return rates


def _epoch_rates(rates: np.ndarray, epochs: int, drift: Drift | None,
                 rng: np.random.Generator) -> np.ndarray:
    """Expected per-adapter rates in each epoch: pairs of adapters swap popularity."""
    table = np.empty((epochs, rates.size))
    current = rates.copy()
    for e in range(epochs):
        if e > 0 and drift is not None and rates.size > 1:
            movers = rng.permutation(rates.size)[: max(2, round(drift.fraction * rates.size))]
            # Each mover swaps with the next one in a random order: a fixed-point-free shuffle
            # of the movers' rates, so every mover's popularity really changes.
            current[movers] = current[np.roll(movers, 1)]
        table[e] = current
    return table


def _assign(arrival: np.ndarray, table: np.ndarray, epoch_s: float,
            rng: np.random.Generator) -> np.ndarray:
    """Each request's adapter, drawn by the rates of the epoch it arrives in."""
    owner = np.empty(arrival.size, dtype=np.int64)
    epoch = np.minimum((arrival // epoch_s).astype(np.int64), table.shape[0] - 1)
    for e in range(table.shape[0]):
        mask = epoch == e
        count = int(mask.sum())
        if count:
            p = table[e] / table[e].sum()
            owner[mask] = rng.choice(p.size, size=count, p=p)
    return owner


def _arrivals(rate: float, duration: float, process: ArrivalProcess, cv: float,
              rng: np.random.Generator) -> np.ndarray:
    if process == "poisson":
        shape = 1.0
    elif process == "gamma":
        if not (cv > 0 and math.isfinite(cv)):
            raise ConfigError(f"arrival cv must be a positive number, got {cv!r}")
        shape = 1.0 / cv**2
    else:
        raise ConfigError(f"arrival process must be 'poisson' or 'gamma', not {process!r}")
    expected = rate * duration
    times: list[np.ndarray] = []
    now = 0.0
    # Draw gaps in blocks until the window is covered: the count is random, not fixed.
    block = max(64, int(expected * 1.1) + 64)
    while now < duration:
        gaps = rng.gamma(shape, 1.0 / (rate * shape), size=block)
        stamps = now + np.cumsum(gaps)
        times.append(stamps)
        now = float(stamps[-1])
    arrival = np.concatenate(times)
    return arrival[arrival < duration]


def _lognormal_tokens(means: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    if sigma == 0:
        drawn = np.asarray(means, dtype=float)
    else:
        # mu chosen so the lognormal's mean, not its median, is the adapter's mean.
        drawn = rng.lognormal(np.log(means) - 0.5 * sigma**2, sigma)
    tokens: np.ndarray = np.maximum(1, np.rint(drawn)).astype(np.int64)
    return tokens


#: Most requests :func:`generate_requests` draws (about 1 GB of arrays at that size).
MAX_GENERATED_REQUESTS = 20_000_000


def generate_requests(
    config: Config,
    duration_s: float,
    seed: int = 0,
    arrival: ArrivalProcess = "poisson",
    cv: float = 1.0,
    token_sigma: float = 0.6,
    rate_scale: float = 1.0,
    drift: Drift | None = None,
) -> Requests:
    """Requests at the config's rates, with no data file.

    Parameters
    ----------
    config : Config
        Adapters with their request rates and token means.
    duration_s : float
        Length of the window in seconds.
    seed : int
        Seeds the arrivals, the adapter draws, the token counts and the drift.
    arrival : {"poisson", "gamma"}
        Arrival process of the whole stream; ``gamma`` gaps have coefficient of variation
        ``cv`` (1 is Poisson, above 1 is burstier).
    cv : float
        Coefficient of variation of the gaps for ``gamma``.
    token_sigma : float
        Sigma of the lognormal token counts (0: every request has its adapter's means).
    rate_scale : float
        Multiplies the total rate.
    drift : Drift, optional
        Popularity drift.

    Returns
    -------
    Requests
    """
    if not (duration_s > 0 and math.isfinite(duration_s)):
        raise ConfigError(f"duration must be a positive number of seconds, got {duration_s!r}")
    if not (rate_scale > 0 and math.isfinite(rate_scale)):
        raise ConfigError(f"rate scale must be a positive number, got {rate_scale!r}")
    if not (token_sigma >= 0 and math.isfinite(token_sigma)):
        raise ConfigError(f"token sigma must be a number >= 0, got {token_sigma!r}")
    rates = _check_rates(config) * rate_scale
    expected = float(rates.sum()) * duration_s
    if expected > MAX_GENERATED_REQUESTS:
        # Checked before drawing: numpy would try to allocate it all and fail after minutes.
        raise ConfigError(f"{duration_s:g} s at {float(rates.sum()):g} req/s is "
                          f"{expected:.3g} requests; at most {MAX_GENERATED_REQUESTS:,} are "
                          "generated: shorten the duration or lower the rate scale")
    arrival_rng, assign_rng, token_rng, drift_rng = (
        np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(4))
    times = _arrivals(float(rates.sum()), duration_s, arrival, cv, arrival_rng)
    epoch_s = drift.every_s if drift is not None else duration_s
    epochs = max(1, math.ceil(duration_s / epoch_s))
    table = _epoch_rates(rates, epochs, drift, drift_rng)
    owner = _assign(times, table, epoch_s, assign_rng)
    prompt_means = np.array([a.prompt_tokens for a in config.adapters])
    output_means = np.array([a.output_tokens for a in config.adapters])
    prompts = _lognormal_tokens(prompt_means[owner], token_sigma, token_rng)
    outputs = _lognormal_tokens(output_means[owner], token_sigma, token_rng)
    logger.info("generated %d requests over %g s (%.1f req/s, %s arrivals)", times.size,
                duration_s, times.size / duration_s, arrival)
    return Requests(times, owner, prompts, outputs, float(duration_s),
                    epoch_s if drift is not None else None,
                    table if drift is not None else None)


def _trace_span(trace: pd.DataFrame) -> tuple[np.ndarray, float]:
    missing = [c for c in ("t", "prompt_tokens", "output_tokens") if c not in trace.columns]
    if missing:
        raise ConfigError(f"trace lacks column(s) {', '.join(missing)}; read it with "
                          "load_azure_trace")
    times = trace["t"].to_numpy(dtype=float)
    if times.size < 2 or not times[-1] > times[0]:
        raise ConfigError(f"trace: {times.size} requests over no time; a rate needs at least "
                          "two requests spanning a positive duration")
    times = times - times[0]
    # The window ends one mean gap after the last request, so count / duration is the rate.
    return times, float(times[-1] * times.size / (times.size - 1))


def requests_from_trace(
    trace: pd.DataFrame,
    config: Config,
    seed: int = 0,
    rate_scale: float | None = None,
    drift: Drift | None = None,
) -> Requests:
    """Replay a trace's requests as traffic of the config's adapters.

    Parameters
    ----------
    trace : pandas.DataFrame
        Requests as from :func:`loraserve.models.trace.load_azure_trace`.
    config : Config
        Its adapters' rates set each request's adapter probabilities (their ranks and
        popularity); the trace sets the arrival times and token counts.
    seed : int
        Seeds the rate scaling and the adapter draws.
    rate_scale : float, optional
        Multiplies the trace's rate (superposing shifted copies, see
        :func:`loraserve.models.trace.scale_trace`). By default the trace is scaled to the
        config's total request rate, so the plan and the replay describe the same traffic.
    drift : Drift, optional
        Popularity drift over the trace's time.

    Returns
    -------
    Requests
    """
    rates = _check_rates(config)
    _, span = _trace_span(trace)
    native = len(trace) / span
    factor = float(rates.sum()) / native if rate_scale is None else rate_scale
    scale_seed, assign_seed, drift_seed = np.random.SeedSequence(seed).spawn(3)
    scaled = scale_trace(trace, factor, seed=int(scale_seed.generate_state(1)[0]))
    times, _ = _trace_span(scaled) if len(scaled) >= 2 else (np.zeros(len(scaled)), span)
    epoch_s = drift.every_s if drift is not None else span
    epochs = max(1, math.ceil(span / epoch_s))
    table = _epoch_rates(rates, epochs, drift, np.random.default_rng(drift_seed))
    owner = _assign(times, table, epoch_s, np.random.default_rng(assign_seed))
    prompts = np.maximum(1, scaled["prompt_tokens"].to_numpy(dtype=np.int64))
    outputs = np.maximum(1, scaled["output_tokens"].to_numpy(dtype=np.int64))
    logger.info("trace: %d requests over %.0f s, x%.3g -> %d requests (%.1f req/s)",
                len(trace), span, factor, times.size, times.size / span)
    return Requests(times, owner, prompts, outputs, span,
                    epoch_s if drift is not None else None,
                    table * factor * native / rates.sum() if drift is not None else None)


def trace_workload(
    trace: pd.DataFrame,
    n_adapters: int,
    rate_scale: float = 1.0,
    zipf: float = 1.0,
    rank_mix: Mapping[int, float] | None = None,
    seed: int = 0,
) -> tuple[list[Adapter], Requests]:
    """Adapters built from a rate-scaled trace, and that trace's requests assigned to them.

    The trace is scaled first (:func:`~loraserve.models.trace.scale_trace`), then
    :func:`~loraserve.models.trace.adapters_from_trace` derives adapters (Zipf popularity,
    ranks from ``rank_mix``, per-adapter token means) from the scaled rows, and every row
    goes to the adapter that derivation assigned it to. Plan and replay therefore describe the
    same requests.

    Parameters
    ----------
    trace : pandas.DataFrame
        As from :func:`~loraserve.models.trace.load_azure_trace`.
    n_adapters : int
    rate_scale : float
        Rate multiplier (1 keeps the trace's rate).
    zipf : float
        Popularity exponent.
    rank_mix : mapping, optional
        Relative weight per rank; :data:`~loraserve.models.trace.TRACE_RANK_MIX` by default.
    seed : int

    Returns
    -------
    (list of Adapter, Requests)
    """
    _trace_span(trace)
    scaled = scale_trace(trace, rate_scale, seed=seed)
    adapters = adapters_from_trace(scaled, n_adapters, zipf=zipf,
                                   rank_mix=TRACE_RANK_MIX if rank_mix is None else rank_mix,
                                   seed=seed)
    owner = assign_adapters(scaled, n_adapters, zipf=zipf, seed=seed)
    times, span = _trace_span(scaled)
    requests = Requests(times, owner.astype(np.int64),
                        np.maximum(1, scaled["prompt_tokens"].to_numpy(dtype=np.int64)),
                        np.maximum(1, scaled["output_tokens"].to_numpy(dtype=np.int64)), span)
    return adapters, requests


def peak_factor(requests: Requests, window_s: float = 300.0, percentile: float = 95.0) -> float:
    """The ``percentile`` of a stream's rate over ``window_s`` windows, over its mean rate.

    Real traffic is not stationary over an hour (the Azure conv trace peaks 10 % above its
    mean for a quarter of an hour); a plan made for the mean rate runs its GPUs that much
    hotter at the peak. Planning for ``config.scaled(peak_factor(requests))`` covers it.
    Incomplete trailing windows are left out; 1.0 for streams shorter than two windows.
    """
    if len(requests) < 2:
        return 1.0
    arrival = requests.arrival - float(requests.arrival.min())
    span = max(float(requests.duration), float(arrival.max()))
    full = int(span / window_s + 1e-9)
    if full < 2:
        return 1.0
    counts = np.bincount((arrival // window_s).astype(np.int64), minlength=full + 1)[:full]
    mean = len(requests) / span
    return max(1.0, float(np.percentile(counts / window_s, percentile)) / mean)


def scale_requests(requests: Requests, factor: float, seed: int = 0) -> Requests:
    """The same requests times ``factor`` in rate, over the same window.

    Like :func:`~loraserve.models.trace.scale_trace`, but each request keeps its adapter:
    ``floor(factor)`` copies, each but the first shifted circularly in time by a seeded
    offset, plus a seeded random share ``factor - floor(factor)`` of one more copy.

    Parameters
    ----------
    requests : Requests
    factor : float
        Rate multiplier, > 0.
    seed : int
    """
    if not (factor > 0 and math.isfinite(factor)):
        raise ConfigError(f"rate scale must be a positive number, got {factor!r}")
    if factor == 1.0:
        return requests
    rng = np.random.default_rng(seed)
    period = requests.duration
    whole = math.floor(factor)
    parts: list[np.ndarray] = []
    times: list[np.ndarray] = []
    for copy in range(whole + 1):
        keep = factor - whole if copy == whole else 1.0
        if keep <= 0:
            break
        shift = float(rng.uniform(0.0, period)) if copy else 0.0
        index = np.arange(len(requests))
        if keep < 1.0:
            index = index[rng.random(index.size) < keep]
        parts.append(index)
        times.append((requests.arrival[index] + shift) % period if shift
                     else requests.arrival[index])
    index = np.concatenate(parts)
    arrival = np.concatenate(times)
    order = np.argsort(arrival, kind="stable")
    pick = index[order]
    return Requests(arrival[order], requests.adapter[pick], requests.prompt_tokens[pick],
                    requests.output_tokens[pick], requests.duration, requests.epoch_s,
                    None if requests.epoch_rates is None else requests.epoch_rates * factor)


def fit_token_means(config: Config, requests: Requests) -> Config:
    """The config with each adapter's token means measured from its requests.

    Adapters without a request keep their means; rates are left as they are. The planner
    then prices the traffic the simulator replays.
    """
    n = len(config.adapters)
    counts = np.bincount(requests.adapter, minlength=n)
    prompt = np.bincount(requests.adapter, weights=requests.prompt_tokens, minlength=n)
    output = np.bincount(requests.adapter, weights=requests.output_tokens, minlength=n)
    adapters = []
    for i, a in enumerate(config.adapters):
        if counts[i]:
            a = a.model_copy(update={"prompt_tokens": float(prompt[i] / counts[i]),
                                     "output_tokens": float(output[i] / counts[i])})
        adapters.append(a)
    return config.with_adapters(adapters)
