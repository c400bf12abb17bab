"""Keep a running plan matched to drifting traffic: estimate rates, decide, re-plan."""

from loraserve.drift.controller import (
    Decision,
    DriftController,
    DriftMetrics,
    DriftPolicy,
    predicted_utilization,
    with_rates,
)
from loraserve.drift.estimator import Counters, RateEstimator

__all__ = [
    "Counters",
    "Decision",
    "DriftController",
    "DriftMetrics",
    "DriftPolicy",
    "RateEstimator",
    "predicted_utilization",
    "with_rates",
]
