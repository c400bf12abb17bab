"""The per-GPU SLO families beyond mean compute: TPOT at the percentile and LoRA batch slots.

Mean compute load under a utilization limit (:mod:`loraserve.profiles.capacity`) is not
enough for a plan to meet its SLO. Two more mechanisms break it in the simulator, and each
is a constraint *family* here, with a name that ``binding``, ``verify`` and infeasibility
messages use:

``tpot_tail`` -- TPOT at the SLO percentile.
    A decode step with ``b`` running sequences takes ``d(b) ~ d0 + d1 * b`` (the secant of
    the profile's decode table between one sequence and the tier's operating batch, which
    lies above the table wherever the table is convex, so the row errs on the safe side).
    With a share ``phi`` of the GPU's time spent on prefill chunks and ``D`` decode tokens
    per second, the batch settles where ``b / d(b) = D / (1 - phi)``, which gives the mean
    TPOT ``d0 / (1 - phi - d1 * D)``. A request's TPOT varies with the prefill chunks that
    land in its own decode steps, so the tail grows with the prefill share; the percentile
    is modelled as ``d0 * (1 + kappa * phi) / (1 - phi - d1 * D)``, with ``kappa`` fitted
    against the simulator (:mod:`loraserve.profiles.calibrate`). Keeping it under the SLO
    ``S`` is *linear* in the traffic shares:
    ``phi * (S + kappa * d0) + S * d1 * D <= S - d0``, and ``phi`` and ``D`` are sums over
    the adapters routed to the GPU. Each adapter's coefficient on that row is
    :meth:`SloFamilies.tpot_coefficient`.

``batch_slots`` -- LoRA batch slots (``max_loras``).
    A batch runs at most ``max_loras`` distinct adapters; when more of a GPU's adapters have
    requests in flight, the others wait for a slot, and in the simulator that wait starves
    them for tens of seconds. Adapter ``a`` has ``m_a = rate x time in system`` requests in
    flight (Little's law) and is busy with probability ``c_a = 1 - exp(-m_a)``; the count of
    busy adapters is a Poisson-binomial with mean ``E = sum c_a`` and variance
    ``V = sum c_a (1 - c_a)``. Asking that the count stay within ``max_loras`` but for a small
    probability (normal approximation, quantile ``z``) means ``E + z sqrt(V) <= max_loras +
    1/2``; since ``z sqrt(V) <= z^2 / (4 t) + t V`` for any ``t > 0`` (AM-GM), the row
    ``sum (c_a + t c_a (1 - c_a)) <= max_loras * (1 - margin)`` is sufficient, and *linear* in
    which adapters a GPU hosts (a hosted adapter's weight is taken at its whole traffic, an
    upper bound for any share of it), so the exact models keep it. ``t`` (the variance
    weight) and ``margin`` are fitted against the simulator; the time in the system is
    priced at the TPOT of a GPU at its utilization limit, which overstates it on lighter
    GPUs, so the fitted margin comes out negative (the row may exceed ``max_loras``).

The fitted values live in ``data/slo_calibration.yaml`` beside the profiles, with the
command that fits them; :func:`load_calibration` reads them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from loraserve.models import ConfigError
from loraserve.models.io import read_yaml

#: Names of the SLO families, as ``binding``, ``verify`` and messages spell them.
TPOT_TAIL = "tpot_tail"
BATCH_SLOTS = "batch_slots"

CALIBRATION_FILE = Path(__file__).parent / "data" / "slo_calibration.yaml"


@dataclass(frozen=True)
class SloCalibration:
    """Fitted parameters of the SLO families for one profile.

    Attributes
    ----------
    tpot_tail_kappa : float
        Growth of the TPOT percentile with the GPU's prefill share (``kappa`` above), for
        tiers without their own value.
    kappa_by_tier : tuple of (int, float)
        ``kappa`` fitted per rank tier (:meth:`kappa`).
    slot_variance_weight : float
        ``t`` of the ``batch_slots`` row: how much of each adapter's busy variance counts.
    slot_margin : float
        How far under ``max_loras`` the row's limit sits, as a share of ``max_loras``
        (negative: above it): the limit is ``max_loras * (1 - slot_margin)``.
    tail_exponent : float
        Exponent ``g`` of :func:`tail_scale`: ``(P / 1024 * 256 / O) ** (g / 2)``.
    source : str
        How the values were fitted (the command), or ``default``.
    """

    tpot_tail_kappa: float = 1.0
    kappa_by_tier: tuple[tuple[int, float], ...] = ()
    slot_variance_weight: float = 1.0
    slot_margin: float = 0.0
    tail_exponent: float = 1.0
    source: str = "default"

    def __post_init__(self) -> None:
        if not (math.isfinite(self.tpot_tail_kappa) and self.tpot_tail_kappa >= 0):
            raise ConfigError(f"slo calibration: tpot_tail_kappa must be a number >= 0, got "
                              f"{self.tpot_tail_kappa!r}")
        for tier, kappa in self.kappa_by_tier:
            if not (math.isfinite(kappa) and kappa >= 0):
                raise ConfigError(f"slo calibration: kappa of tier {tier} must be a number "
                                  f">= 0, got {kappa!r}")
        if not (math.isfinite(self.tail_exponent) and 0.0 <= self.tail_exponent <= 4.0):
            raise ConfigError(f"slo calibration: tail_exponent must lie in [0, 4], got "
                              f"{self.tail_exponent!r}")
        if not (math.isfinite(self.slot_variance_weight)
                and 0.0 <= self.slot_variance_weight <= 4.0):
            raise ConfigError(f"slo calibration: slot_variance_weight must lie in [0, 4], got "
                              f"{self.slot_variance_weight!r}")
        if not (math.isfinite(self.slot_margin) and -1.0 <= self.slot_margin < 1.0):
            raise ConfigError(f"slo calibration: slot_margin must lie in [-1, 1), got "
                              f"{self.slot_margin!r}")

    def kappa(self, tier: int) -> float:
        """``kappa`` of ``tier``: its own where fitted, else ``tpot_tail_kappa``."""
        return dict(self.kappa_by_tier).get(tier, self.tpot_tail_kappa)

    def slot_limit(self, max_loras: int) -> float:
        """The ``batch_slots`` row's limit for ``max_loras`` batch slots."""
        return max_loras * (1.0 - self.slot_margin)


@lru_cache(maxsize=8)
def _read_calibration(path: Path, mtime: float) -> dict[str, Any]:
    del mtime  # part of the cache key only
    raw = read_yaml(path, "the SLO calibration")
    if not isinstance(raw, dict):
        raise ConfigError(f"{path.name}: the SLO calibration must be a mapping")
    return raw


def load_calibration(gpu_type: str, base_model: str,
                     path: Path = CALIBRATION_FILE) -> SloCalibration:
    """The fitted SLO-family parameters for ``gpu_type`` and ``base_model``.

    The file holds a ``default`` entry and entries keyed ``<gpu_type>/<base_model>``; a
    missing key takes the default (fitted on the shipped H100 profile), a missing file the
    built-in :class:`SloCalibration` defaults.
    """
    if not path.exists():
        return SloCalibration()
    raw = _read_calibration(path, path.stat().st_mtime)
    entry = raw.get(f"{gpu_type}/{base_model}", raw.get("default", {}))
    if not isinstance(entry, dict):
        raise ConfigError(f"{path.name}: entry for {gpu_type}/{base_model} must be a mapping")
    fitted = {k: entry[k] for k in ("tpot_tail_kappa", "tail_exponent",
                                    "slot_variance_weight", "slot_margin") if k in entry}
    by_tier = entry.get("kappa_by_tier", {})
    if not isinstance(by_tier, dict):
        raise ConfigError(f"{path.name}: kappa_by_tier must map tiers to numbers")
    try:
        return SloCalibration(**{k: float(v) for k, v in fitted.items()},
                              kappa_by_tier=tuple(sorted((int(t), float(k))
                                                         for t, k in by_tier.items())),
                              source=str(entry.get("source", raw.get("source", "file"))))
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{path.name}: entry for {gpu_type}/{base_model}: {exc}") from None


@dataclass(frozen=True)
class TpotRow:
    """The ``tpot_tail`` row of one ``(gpu_type, tier)``: coefficients per token.

    An adapter's whole traffic takes ``rate * (prefill * P + decode * O)`` of the row, whose
    limit is 1 (``P`` and ``O`` its mean prompt and output tokens).

    Attributes
    ----------
    d0_ms, d1_ms : float
        The decode-step secant ``d(b) ~ d0 + d1 * b``.
    prefill_tokens_per_s : float
    kappa : float
    slo_ms : float
        The TPOT SLO.
    prefill, decode : float
        Per-token coefficients (seconds of row per prompt, per output token).
    exponent : float
        :func:`tail_scale`'s exponent.
    """

    d0_ms: float
    d1_ms: float
    prefill_tokens_per_s: float
    kappa: float
    slo_ms: float
    prefill: float
    decode: float
    exponent: float = 1.0

    @classmethod
    def build(cls, d1_batch_ms: float, dn_ms: float, batch: float,
              prefill_tokens_per_s: float, kappa: float, slo_ms: float,
              exponent: float = 1.0) -> TpotRow:
        """The row from the decode step at one sequence and at the operating batch."""
        d1 = max(0.0, (dn_ms - d1_batch_ms) / (batch - 1.0)) if batch > 1.0 else 0.0
        d0 = max(1e-9, d1_batch_ms - d1)
        room = slo_ms - d0
        if room <= 0:
            return cls(d0, d1, prefill_tokens_per_s, kappa, slo_ms, math.inf, math.inf,
                       exponent)
        prefill = (slo_ms + kappa * d0) / prefill_tokens_per_s / room
        decode = slo_ms * d1 / 1e3 / room
        return cls(d0, d1, prefill_tokens_per_s, kappa, slo_ms, prefill, decode, exponent)

    def coefficient(self, rate: float, prompt_tokens: float, output_tokens: float) -> float:
        """Share of the row that ``rate`` req/s of these token means take.

        The prefill term's ``kappa`` is scaled by :func:`tail_scale` of the adapter's output,
        so the row is exact for a GPU of one adapter and a traffic-weighted mean for a mix.
        """
        room = self.slo_ms - self.d0_ms
        if room <= 0:
            return math.inf
        scale = tail_scale(prompt_tokens, output_tokens, self.exponent)
        prefill = ((self.slo_ms + self.kappa * scale * self.d0_ms)
                   / self.prefill_tokens_per_s / room)
        return rate * (prefill * prompt_tokens + self.decode * output_tokens)

    def tail_ms(self, prefill_busy: float, decode_tokens_per_s: float,
                scaled_prefill_busy: float | None = None) -> float:
        """TPOT at the percentile for a prefill share and a decode token rate.

        ``scaled_prefill_busy`` is the prefill share with each adapter's part scaled by
        :func:`tail_scale` (defaults to ``prefill_busy``).
        """
        denominator = 1.0 - prefill_busy - self.d1_ms * decode_tokens_per_s / 1e3
        if denominator <= 0:
            return math.inf
        scaled = prefill_busy if scaled_prefill_busy is None else scaled_prefill_busy
        return self.d0_ms * (1.0 + self.kappa * scaled) / denominator


#: Prompt and output lengths at which an adapter's TPOT tail takes ``kappa`` as fitted.
TAIL_REFERENCE_PROMPT = 1024.0
TAIL_REFERENCE_OUTPUT = 256.0


def tail_scale(prompt_tokens: float, output_tokens: float, exponent: float = 1.0) -> float:
    """How much of ``kappa`` an adapter's requests feel: ``(P / 1024 * 256 / O) ** (g / 2)``.

    A request's TPOT averages the steps of its own decode, and the prefill time that lands
    in them varies like a compound Poisson sum: its spread relative to the mean grows with
    the size of each prompt's chunks and shrinks with the square root of the steps the
    request averages over (``g`` = 1, the square root; the calibration fits ``g``).
    """
    ratio = (max(1.0, prompt_tokens) / TAIL_REFERENCE_PROMPT
             * TAIL_REFERENCE_OUTPUT / max(2.0, output_tokens))
    return float(ratio ** (exponent / 2.0))


def busy_probability(in_flight: float) -> float:
    """Probability that an adapter with ``in_flight`` mean requests has one at an instant."""
    return 1.0 - math.exp(-max(0.0, in_flight))


def slot_weight(in_flight: float, variance_weight: float = 1.0) -> float:
    """An adapter's weight on the ``batch_slots`` row: ``c + t c (1 - c)``, ``c`` busy prob."""
    c = busy_probability(in_flight)
    return c + variance_weight * c * (1.0 - c)
