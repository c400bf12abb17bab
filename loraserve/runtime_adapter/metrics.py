"""A vLLM worker's ``/metrics``, parsed with ``prometheus_client``'s text parser.

vLLM labels every series with the base model's name, so nothing here is per adapter except
``vllm:lora_requests_info``, whose labels list the adapters running and waiting right now
(per-adapter request rates come from the router's own metrics instead).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families


@dataclass(frozen=True)
class Histogram:
    """A Prometheus histogram summed over its label sets.

    Parameters
    ----------
    buckets : tuple of (float, float)
        ``(upper bound, cumulative count)`` pairs in increasing bound order, ``+Inf`` last.
    count : float
        Observations.
    total : float
        Sum of the observations.
    """

    buckets: tuple[tuple[float, float], ...] = ()
    count: float = 0.0
    total: float = 0.0

    @property
    def mean(self) -> float:
        """Mean observation (NaN when empty)."""
        return self.total / self.count if self.count else math.nan

    def quantile(self, q: float) -> float:
        """The ``q`` quantile by linear interpolation inside buckets (as PromQL does).

        Returns NaN when the histogram is empty; the largest finite bound when the quantile
        falls in the ``+Inf`` bucket.
        """
        if not self.count or not self.buckets:
            return math.nan
        rank = q * self.count
        lower_bound, lower_count = 0.0, 0.0
        for bound, cumulative in self.buckets:
            if cumulative >= rank:
                if math.isinf(bound):
                    return lower_bound
                if cumulative == lower_count:
                    return bound
                return lower_bound + (bound - lower_bound) * (rank - lower_count) / (
                    cumulative - lower_count)
            lower_bound, lower_count = bound, cumulative
        return lower_bound


@dataclass(frozen=True)
class WorkerMetrics:
    """What the runtime adapter reads from a worker's ``/metrics``.

    Parameters
    ----------
    running, waiting : float
        ``vllm:num_requests_running`` and ``vllm:num_requests_waiting``.
    kv_cache_usage : float
        ``vllm:kv_cache_usage_perc`` (a fraction in [0, 1]).
    ttft : Histogram
        ``vllm:time_to_first_token_seconds``.
    max_loras : int or None
        ``--max-loras`` as ``vllm:lora_requests_info`` reports it (None before the first
        scheduler step, or without LoRA).
    running_adapters, waiting_adapters : frozenset of str
        Adapters with requests running or waiting, from the latest ``lora_requests_info``.
    """

    running: float = 0.0
    waiting: float = 0.0
    kv_cache_usage: float = 0.0
    ttft: Histogram = field(default_factory=Histogram)
    max_loras: int | None = None
    running_adapters: frozenset[str] = frozenset()
    waiting_adapters: frozenset[str] = frozenset()

    @property
    def busy_adapters(self) -> frozenset[str]:
        """Adapters with requests running or waiting."""
        return self.running_adapters | self.waiting_adapters


def _names(text: str) -> frozenset[str]:
    return frozenset(name for name in text.split(",") if name)


def parse_metrics(text: str) -> WorkerMetrics:
    """Parse a vLLM ``/metrics`` page.

    Parameters
    ----------
    text : str
        The Prometheus text exposition.

    Returns
    -------
    WorkerMetrics
        Gauges summed over engines; missing families read as zero.
    """
    gauges: dict[str, float] = {}
    ttft_buckets: dict[float, float] = {}
    ttft_count = ttft_sum = 0.0
    lora_stamp = -math.inf
    lora_labels: dict[str, str] = {}
    for family in text_string_to_metric_families(text):
        if family.name in ("vllm:num_requests_running", "vllm:num_requests_waiting",
                           "vllm:kv_cache_usage_perc"):
            gauges[family.name] = sum(s.value for s in family.samples)
        elif family.name == "vllm:time_to_first_token_seconds":
            for sample in family.samples:
                if sample.name.endswith("_bucket"):
                    bound = float(sample.labels["le"])
                    ttft_buckets[bound] = ttft_buckets.get(bound, 0.0) + sample.value
                elif sample.name.endswith("_count"):
                    ttft_count += sample.value
                elif sample.name.endswith("_sum"):
                    ttft_sum += sample.value
        elif family.name == "vllm:lora_requests_info":
            # vLLM creates a new series for every label combination it sees and stamps it
            # with the time; the latest stamp is the current state.
            for sample in family.samples:
                if sample.value > lora_stamp:
                    lora_stamp, lora_labels = sample.value, dict(sample.labels)
    max_lora = lora_labels.get("max_lora", "")
    return WorkerMetrics(
        running=gauges.get("vllm:num_requests_running", 0.0),
        waiting=gauges.get("vllm:num_requests_waiting", 0.0),
        kv_cache_usage=gauges.get("vllm:kv_cache_usage_perc", 0.0),
        ttft=Histogram(tuple(sorted(ttft_buckets.items())), ttft_count, ttft_sum),
        max_loras=int(max_lora) if max_lora.isdigit() else None,
        running_adapters=_names(lora_labels.get("running_lora_adapters", "")),
        waiting_adapters=_names(lora_labels.get("waiting_lora_adapters", "")),
    )
