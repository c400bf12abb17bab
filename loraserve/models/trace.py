"""Workloads from a request trace: the Azure LLM inference traces (2023) and adapters from them.

The Azure traces (Patel et al., *Splitwise*, ISCA 2024; CC-BY 4.0) list one request per row:
``TIMESTAMP,ContextTokens,GeneratedTokens``. They carry no adapter ids, so
:func:`adapters_from_trace` assigns requests to adapters by a seeded Zipf popularity and
draws ranks from a rank mix, independently of popularity.
"""

from __future__ import annotations

import io
import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Literal, cast

import numpy as np
import pandas as pd

from loraserve.models.config import ADMISSIBLE_RANKS, Adapter, ConfigError, Rank
from loraserve.models.io import clip, read_text

logger = logging.getLogger(__name__)

#: Columns of the Azure LLM inference trace CSV files.
AZURE_COLUMNS: tuple[str, str, str] = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")

#: Most tokens a trace row may carry: the config's own bound on an adapter's token means.
MAX_TRACE_TOKENS = 1_000_000

#: Share of adapters per rank in trace workloads: most fine-tunes are small, a few reach 256.
TRACE_RANK_MIX: dict[int, float] = {8: 0.35, 16: 0.25, 32: 0.15, 64: 0.12, 128: 0.08, 256: 0.05}


def load_azure_trace(
    path: str | Path, unsorted: Literal["sort", "error"] = "sort"
) -> pd.DataFrame:
    """Read an Azure LLM inference trace CSV into requests sorted by arrival.

    Parameters
    ----------
    path : str or Path
        A CSV with the columns ``TIMESTAMP,ContextTokens,GeneratedTokens`` (for example
        ``AzureLLMInferenceTrace_conv.csv``). Extra columns are ignored.
    unsorted : {"sort", "error"}
        What to do with rows out of time order: sort them (stable), or refuse the file with
        a one-line error naming the first row that goes back in time (the simulator's
        choice: a trace out of order is usually a merge or time-zone mistake).

    Returns
    -------
    pandas.DataFrame
        One row per request, sorted by arrival (ties keep file order), with columns ``t``
        (float seconds since the first request), ``prompt_tokens`` and ``output_tokens``
        (int), and a fresh ``RangeIndex``.

    Raises
    ------
    ConfigError
        One line naming the file and the problem: missing file, missing columns, no rows,
        timestamps that do not parse (or go back in time, with ``unsorted="error"``), or
        token counts that are not non-negative integers.
    """
    path = Path(path)
    text = read_text(path, "the trace CSV file")
    try:
        raw = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False)
    except (pd.errors.EmptyDataError, pd.errors.ParserError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"{path}: not a readable CSV ({first})") from None
    raw.columns = [str(c).strip() for c in raw.columns]
    missing = [c for c in AZURE_COLUMNS if c not in raw.columns]
    if missing:
        found = ", ".join(raw.columns) or "none"
        raise ConfigError(
            f"{path}: lacks column(s) {', '.join(missing)}; an Azure LLM trace has "
            f"{','.join(AZURE_COLUMNS)} (found: {found})"
        )
    if raw.empty:
        raise ConfigError(f"{path}: has a header but no requests")
    # The files carry seven fractional digits (100 ns); ISO8601 parsing keeps them all.
    stamps = pd.to_datetime(raw["TIMESTAMP"].str.strip(), format="ISO8601", errors="coerce")
    if bool(stamps.isna().any()):
        line = int(np.flatnonzero(stamps.isna().to_numpy())[0])
        raise ConfigError(
            f"{path}: line {line + 2}: TIMESTAMP {clip(raw['TIMESTAMP'].iloc[line])} is not a "
            "date and time"
        )
    if unsorted == "error":
        ns = stamps.to_numpy(dtype="datetime64[ns]").astype(np.int64)
        back = np.flatnonzero(np.diff(ns) < 0)
        if back.size:
            line = int(back[0]) + 1
            raise ConfigError(
                f"{path}: line {line + 2}: TIMESTAMP {clip(raw['TIMESTAMP'].iloc[line])} is "
                "earlier than the row before it; sort the file by TIMESTAMP"
            )
    tokens: dict[str, np.ndarray] = {}
    for column, name in (("ContextTokens", "prompt_tokens"), ("GeneratedTokens", "output_tokens")):
        values = pd.to_numeric(raw[column].str.strip(), errors="coerce")
        ok = values.notna() & (values >= 0) & (values == values.round())
        if not bool(ok.all()):
            line = int(np.flatnonzero(~ok.to_numpy())[0])
            raise ConfigError(
                f"{path}: line {line + 2}: {column} {clip(raw[column].iloc[line])} is not a "
                "non-negative whole number"
            )
        if bool((values > MAX_TRACE_TOKENS).any()):
            line = int(np.flatnonzero((values > MAX_TRACE_TOKENS).to_numpy())[0])
            raise ConfigError(
                f"{path}: line {line + 2}: {column} {clip(raw[column].iloc[line])} is more "
                f"than {MAX_TRACE_TOKENS:,} tokens; check the row"
            )
        tokens[name] = values.to_numpy(dtype=np.int64)
    frame = pd.DataFrame({"stamp": stamps, **tokens})
    frame = frame.sort_values("stamp", kind="stable").reset_index(drop=True)
    start = frame["stamp"].iloc[0]
    frame["t"] = (frame["stamp"] - start).dt.total_seconds()
    logger.info("%s: %d requests over %.1f s", path, len(frame), float(frame["t"].iloc[-1]))
    return frame[["t", "prompt_tokens", "output_tokens"]]


def _rank_mix(rank_mix: Mapping[int, float] | None) -> tuple[list[int], np.ndarray]:
    mix = dict(TRACE_RANK_MIX if rank_mix is None else rank_mix)
    if not mix:
        raise ConfigError("rank_mix is empty; give at least one rank with a positive weight")
    for rank, weight in mix.items():
        if rank not in ADMISSIBLE_RANKS:
            raise ConfigError(
                f"rank_mix: rank {rank} is not one vLLM accepts; use one of "
                + ", ".join(str(r) for r in ADMISSIBLE_RANKS)
            )
        if not (weight >= 0 and np.isfinite(weight)):
            raise ConfigError(f"rank_mix: rank {rank} has weight {weight!r}; use a weight >= 0")
    total = sum(mix.values())
    if total <= 0:
        raise ConfigError("rank_mix: the weights sum to 0; give at least one positive weight")
    ranks = sorted(mix)
    return ranks, np.array([mix[r] / total for r in ranks])


def _assignment(
    n_requests: int, n_adapters: int, zipf: float, seed: int
) -> tuple[np.ndarray, np.ndarray, np.random.Generator]:
    """Popularity shares, each request's adapter, and the rank stream, from one seed."""
    # Separate streams: the ranks must not move when zipf (and so the assignment) changes.
    popularity_rng, assign_rng, rank_rng = (
        np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(3)
    )
    weights = np.arange(1, n_adapters + 1, dtype=float) ** -zipf
    share = popularity_rng.permutation(weights / weights.sum())
    owner = assign_rng.choice(n_adapters, size=n_requests, p=share)
    return share, owner, rank_rng


def assign_adapters(trace: pd.DataFrame, n_adapters: int, zipf: float = 1.0,
                    seed: int = 0) -> np.ndarray:
    """Each request's adapter index, exactly as :func:`adapters_from_trace` assigns them.

    With the same ``trace``, ``n_adapters``, ``zipf`` and ``seed``, request ``i`` belongs to
    adapter ``result[i]`` of the list :func:`adapters_from_trace` returns, so a simulation can
    replay the very requests whose means and rates the adapters were built from.

    Parameters
    ----------
    trace : pandas.DataFrame
        Requests (one row each).
    n_adapters : int
        How many adapters, at least 1.
    zipf : float
        Popularity exponent, >= 0.
    seed : int
        The seed given to :func:`adapters_from_trace`.

    Returns
    -------
    numpy.ndarray
        Integer adapter indices, one per row of ``trace``.
    """
    if n_adapters < 1:
        raise ConfigError(f"n_adapters must be at least 1, got {n_adapters}")
    if not (zipf >= 0 and np.isfinite(zipf)):
        raise ConfigError(f"zipf must be a number >= 0, got {zipf!r}")
    _, owner, _ = _assignment(len(trace), n_adapters, zipf, seed)
    return owner


def scale_trace(trace: pd.DataFrame, factor: float, seed: int = 0) -> pd.DataFrame:
    """The trace's traffic times ``factor`` over the same time span.

    ``floor(factor)`` copies of the trace are superposed, each shifted circularly in time by
    a seeded offset (the first copy is not shifted), and a seeded random ``factor -
    floor(factor)`` share of the requests of one more shifted copy is added; a factor below 1
    keeps that share of the requests. Shifting rather than compressing time keeps the trace's
    duration, its burstiness within each copy, and its token-length distribution.

    Parameters
    ----------
    trace : pandas.DataFrame
        Requests with columns ``t``, ``prompt_tokens``, ``output_tokens`` (as from
        :func:`load_azure_trace`), sorted by ``t``.
    factor : float
        Rate multiplier, > 0.
    seed : int
        Seed of the shifts and the thinning.

    Returns
    -------
    pandas.DataFrame
        The same columns, sorted by ``t`` (ties keep copy order), starting at the original
        first arrival, with a fresh ``RangeIndex``.
    """
    if not (factor > 0 and np.isfinite(factor)):
        raise ConfigError(f"rate scale must be a positive number, got {factor!r}")
    times = trace["t"].to_numpy(dtype=float)
    if len(times) == 0:
        raise ConfigError("trace has no requests to scale")
    start = float(times.min())
    span = float(times.max()) - start
    # One more than the span, so a shifted copy never lands two requests on the same instant
    # at the wrap-around; a one-request trace has no span to shift within.
    period = span + (span / max(1, len(times) - 1) if span > 0 else 0.0)
    rng = np.random.default_rng(seed)
    whole = math.floor(factor)
    parts: list[pd.DataFrame] = []
    for copy in range(whole + 1):
        keep = factor - whole if copy == whole else 1.0
        if keep <= 0:
            break
        shift = 0.0 if copy == 0 else float(rng.uniform(0.0, period)) if period > 0 else 0.0
        part = trace[["t", "prompt_tokens", "output_tokens"]].copy()
        if shift:
            part["t"] = start + (times - start + shift) % period
        if keep < 1.0:
            part = part[rng.random(len(part)) < keep]
        parts.append(part)
    scaled = pd.concat(parts, ignore_index=True)
    scaled = scaled.sort_values("t", kind="stable").reset_index(drop=True)
    logger.info("trace scaled x%g: %d -> %d requests", factor, len(trace), len(scaled))
    return scaled


def adapters_from_trace(
    trace: pd.DataFrame,
    n_adapters: int,
    rate_scale: float = 1.0,
    zipf: float = 1.0,
    rank_mix: Mapping[int, float] | None = None,
    seed: int = 0,
    id_prefix: str = "adapter",
) -> list[Adapter]:
    """Adapters whose traffic is the trace's, split by a seeded Zipf popularity.

    Adapter ``i`` gets popularity weight ``p_i`` proportional to ``k_i ** -zipf``, where the
    popularity ranks ``k_i`` are a seeded permutation of ``1..n_adapters`` (so ids say nothing
    about popularity). Every request of the trace is assigned to one adapter drawn with
    probabilities ``p``.

    * ``request_rate`` of adapter ``i`` is ``p_i * len(trace) / duration * rate_scale``:
      its expected share of the trace's mean request rate, scaled. The rates therefore sum
      to exactly the trace's rate times ``rate_scale``, and cold adapters keep a small
      positive rate even when the trace happened to assign them no request (the trace is a
      sample; a rate of zero would make them free to place).
    * ``prompt_tokens`` / ``output_tokens`` are the means over the requests assigned to the
      adapter; an adapter with no request takes the whole trace's means.
    * ``rank`` is drawn from ``rank_mix`` with its own seeded stream, independent of
      popularity: changing ``zipf`` does not change any adapter's rank.

    Parameters
    ----------
    trace : pandas.DataFrame
        Requests as returned by :func:`load_azure_trace` (columns ``t``, ``prompt_tokens``,
        ``output_tokens``); at least two, spanning a positive duration.
    n_adapters : int
        How many adapters, at least 1.
    rate_scale : float
        Multiplies every rate: how many copies of the trace's traffic the fleet serves.
    zipf : float
        Popularity exponent, >= 0; 0 gives every adapter the same rate.
    rank_mix : mapping of int to float, optional
        Relative weight of each rank (normalised here); :data:`TRACE_RANK_MIX` (ranks 8 to
        256) when omitted.
    seed : int
        Seed of the popularity permutation, the request assignment and the ranks.
    id_prefix : str
        Adapter ids are ``<id_prefix>-00000``, ``<id_prefix>-00001``, ...

    Returns
    -------
    list of Adapter
        ``n_adapters`` adapters, all linear modules targeted.

    Raises
    ------
    ConfigError
        On a bad argument or a trace without a positive duration.
    """
    if n_adapters < 1:
        raise ConfigError(f"n_adapters must be at least 1, got {n_adapters}")
    if not (rate_scale > 0 and np.isfinite(rate_scale)):
        raise ConfigError(f"rate_scale must be a positive number, got {rate_scale!r}")
    if not (zipf >= 0 and np.isfinite(zipf)):
        raise ConfigError(f"zipf must be a number >= 0, got {zipf!r}")
    missing = [c for c in ("t", "prompt_tokens", "output_tokens") if c not in trace.columns]
    if missing:
        raise ConfigError(
            f"trace lacks column(s) {', '.join(missing)}; read it with load_azure_trace"
        )
    ranks, rank_p = _rank_mix(rank_mix)
    times = trace["t"].to_numpy(dtype=float)
    duration = float(times.max() - times.min()) if len(times) else 0.0
    if len(times) < 2 or not duration > 0:
        raise ConfigError(
            f"trace: {len(times)} requests over {duration:g} s; a rate needs at least two "
            "requests spanning a positive duration"
        )
    mean_rate = len(times) / duration

    share, owner, rank_rng = _assignment(len(times), n_adapters, zipf, seed)
    counts = np.bincount(owner, minlength=n_adapters)
    prompts = trace["prompt_tokens"].to_numpy(dtype=float)
    outputs = trace["output_tokens"].to_numpy(dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        prompt_mean = np.bincount(owner, weights=prompts, minlength=n_adapters) / counts
        output_mean = np.bincount(owner, weights=outputs, minlength=n_adapters) / counts
    prompt_mean = np.where(counts > 0, prompt_mean, prompts.mean())
    output_mean = np.where(counts > 0, output_mean, outputs.mean())
    rank_of = rank_rng.choice(np.array(ranks), size=n_adapters, p=rank_p)
    rates = share * mean_rate * rate_scale
    width = max(5, len(str(n_adapters - 1)))
    logger.info(
        "%d adapters from %d requests over %.0f s (%.3g req/s x %g); %d adapters got no request",
        n_adapters, len(times), duration, mean_rate, rate_scale, int((counts == 0).sum()),
    )
    # A token count of 0 is legal in a trace but not as an adapter's mean (the cost model
    # divides by it), so means floor at one token.
    return [
        Adapter(
            id=f"{id_prefix}-{i:0{width}d}",
            rank=cast(Rank, int(rank_of[i])),
            request_rate=float(rates[i]),
            prompt_tokens=max(1.0, float(prompt_mean[i])),
            output_tokens=max(1.0, float(output_mean[i])),
        )
        for i in range(n_adapters)
    ]
