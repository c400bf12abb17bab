"""What a simulation returns: per-request latencies, per-GPU figures and a summary, as tables.

Definitions (the same everywhere the simulator reports):

* ``ttft_ms``: arrival to the end of the step that computes the prompt's last token (the
  first output token); ``tpot_ms``: (completion - first token) / (output tokens - 1), blank
  for one-token outputs; ``e2e_ms``: arrival to completion; ``queue_ms``: arrival to
  admission.
* A request **meets the SLO** when it completed, its TTFT is at most ``slo.ttft_ms`` and its
  TPOT at most ``slo.tpot_ms``. **SLO attainment** is the share of requests that do; a run
  **meets the SLO** when attainment is at least ``slo.percentile`` percent. Requests that
  never got a first token (the run was stopped, or their context exceeds the KV cache) count
  as misses and as infinite latencies in the percentiles, so an overloaded run shows ``inf``
  rather than the latency of the lucky requests.
* Per GPU, ``busy`` is the share of the run (arrivals and drain) the GPU spent running
  steps (including adapter loads), and ``load`` is the work it served priced the way the
  solver prices it: ``sum(prompt / prefill_tps + output / decode_tps)`` at the GPU's tier
  over the window.
  ``load`` is what a plan's predicted ``utilization`` forecasts; ``busy`` is higher at low
  load, because a small batch costs almost as much per step as a large one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import pandas as pd

from loraserve.models import Config, PlacementPlan
from loraserve.profiles import CostModel
from loraserve.sim.engine import RunResult

#: Columns of :attr:`SimResult.summary`, in order.
SUMMARY_COLUMNS: tuple[str, ...] = (
    "policy", "gpus", "requests", "completed", "offered_rps", "throughput_rps",
    "output_tokens_per_s", "ttft_p50_ms", "ttft_p90_ms", "ttft_p99_ms", "tpot_p50_ms",
    "tpot_p99_ms", "e2e_p50_ms", "e2e_p99_ms", "slo_attainment", "meets_slo", "mean_busy",
    "mean_load", "adapter_loads", "cold_loads", "stopped", "wall_s",
)


def _percentile(values: np.ndarray, q: float) -> float:
    if values.size == 0:
        return math.nan
    # Nearest rank: no interpolation between a served latency and an infinite one.
    return float(np.percentile(values, q, method="higher"))


def _tail(table: pd.DataFrame, column: str, q: float) -> float:
    """Percentile ``q`` of a latency column, an unfinished request counting as infinite.

    TPOT leaves out finished requests of one output token (they have none).
    """
    values = table[column].to_numpy(dtype=float)
    if column == "tpot_ms":
        done = np.isfinite(table["e2e_ms"].to_numpy(dtype=float))
        values = np.where(table["output_tokens"].to_numpy() > 1, values, np.nan)
        values = values[~(np.isnan(values) & done)]
    return _percentile(np.where(np.isnan(values), np.inf, values), q)


@dataclass
class SimResult:
    """A finished simulation of one deployment on one request stream.

    Attributes
    ----------
    policy : str
        Name of the policy (or ``plan``).
    config : Config
    run : RunResult
        Raw per-request times and per-worker counters.
    cost_model : CostModel
    plan : PlacementPlan or None
        The plan the deployment came from, for predicted figures.
    """

    policy: str
    config: Config
    run: RunResult
    cost_model: CostModel
    plan: PlacementPlan | None = None

    @cached_property
    def requests(self) -> pd.DataFrame:
        """One row per request: ids, tokens, GPU, latencies (ms) and ``slo_ok``."""
        run, req = self.run, self.run.requests
        ids = np.array([a.id for a in self.config.adapters], dtype=object)
        outputs = req.output_tokens
        with np.errstate(invalid="ignore", divide="ignore"):
            ttft = (run.first - req.arrival) * 1e3
            tpot = np.where(outputs > 1, (run.done - run.first) / (outputs - 1) * 1e3, np.nan)
            e2e = (run.done - req.arrival) * 1e3
            queue = (run.start - req.arrival) * 1e3
        slo = self.config.slo
        ok = (np.isfinite(e2e) & (ttft <= slo.ttft_ms)
              & ((outputs <= 1) | (tpot <= slo.tpot_ms)))
        gpu_ids = np.array([w.gpu_id for w in run.workers] + [""], dtype=object)
        return pd.DataFrame({
            "arrival_s": req.arrival,
            "adapter": ids[req.adapter] if len(req) else np.array([], dtype=object),
            "gpu": gpu_ids[run.gpu] if len(req) else np.array([], dtype=object),
            "prompt_tokens": req.prompt_tokens,
            "output_tokens": outputs,
            "queue_ms": queue,
            "ttft_ms": ttft,
            "tpot_ms": tpot,
            "e2e_ms": e2e,
            "slo_ok": ok,
        })

    @cached_property
    def gpus(self) -> pd.DataFrame:
        """One row per GPU: tier, requests, ``busy``, ``load``, predicted utilization, loads.

        Also the GPU's own SLO figures (``slo_attainment``, and ``ttft_tail_ms`` and
        ``tpot_tail_ms`` at the SLO percentile) and, for a plan, ``expected_busy_adapters``
        (:meth:`PlacementPlan.slot_table`), so a miss can be traced to the GPUs behind it.
        """
        frame = self._counters.copy()
        quantile = self.config.slo.percentile
        per_gpu = {gpu: (float(rows["slo_ok"].mean()), _tail(rows, "ttft_ms", quantile),
                         _tail(rows, "tpot_ms", quantile))
                   for gpu, rows in self.requests.groupby("gpu", sort=False) if gpu}
        figures = [per_gpu.get(g, (math.nan,) * 3) for g in frame["gpu_id"]]
        busy_adapters: dict[str, float] = {}
        if self.plan is not None:
            slots = self.plan.slot_table(self.config, self.cost_model)
            busy_adapters = dict(zip(slots["gpu_id"], slots["expected_active"], strict=True))
        at = list(frame.columns).index("predicted_utilization") + 1
        for offset, (name, values) in enumerate((
                ("slo_attainment", [f[0] for f in figures]),
                ("ttft_tail_ms", [f[1] for f in figures]),
                ("tpot_tail_ms", [f[2] for f in figures]),
                ("expected_busy_adapters",
                 [busy_adapters.get(g, math.nan) for g in frame["gpu_id"]]))):
            frame.insert(at + offset, name, values)
        return frame

    @cached_property
    def _counters(self) -> pd.DataFrame:
        """:attr:`gpus` without the per-GPU SLO figures: all :attr:`summary` needs, and cheap.

        The GPU-count searches read the summary of dozens of runs of a whole trace each;
        grouping every request by GPU for figures they never read would slow them.
        """
        run, req, model = self.run, self.run.requests, self.cost_model
        window = max(req.duration, 1e-9)
        # Busy time runs until the last request drains, past the arrival window.
        span = max(req.duration, run.end, 1e-9)
        n = len(run.workers)
        counts = np.bincount(run.gpu[run.gpu >= 0], minlength=n) if len(req) else np.zeros(n)
        completed = np.bincount(run.gpu[np.isfinite(run.done)], minlength=n) if len(req) \
            else np.zeros(n)
        predicted: dict[str, float] = {}
        if self.plan is not None:
            predicted = {g.gpu_id: g.utilization for g in self.plan.gpus}
        rows: list[dict[str, Any]] = []
        for i, worker in enumerate(run.workers):
            try:
                cap = model.capacity(worker.gpu_type, worker.tier)
            except KeyError:
                cap = None
            mine = run.gpu == i
            if cap is not None and cap.decode_tokens_per_s > 0:
                work = (req.prompt_tokens[mine].sum() / cap.prefill_tokens_per_s
                        + req.output_tokens[mine].sum() / cap.decode_tokens_per_s)
                load = float(work) / window
            else:
                load = math.nan
            rows.append({
                "gpu_id": worker.gpu_id,
                "gpu_type": worker.gpu_type,
                "tier": worker.tier,
                "hosted": len(worker.hosted),
                "requests": int(counts[i]),
                "completed": int(completed[i]),
                "busy": min(1.0, float(run.busy_s[i]) / span),
                "load": load,
                "predicted_utilization": predicted.get(worker.gpu_id, math.nan),
                "adapter_loads": int(run.loads[i]),
                "cold_loads": int(run.cold_loads[i]),
                "load_s": float(run.load_s[i]),
                "steps": int(run.steps[i]),
            })
        return pd.DataFrame(rows)

    @cached_property
    def summary(self) -> dict[str, Any]:
        """The run's figures (see :data:`SUMMARY_COLUMNS`)."""
        table, run, req = self.requests, self.run, self.run.requests
        done = np.isfinite(table["e2e_ms"].to_numpy())
        window = max(req.duration, float(np.nanmax(run.done)) if done.any() else 0.0, 1e-9)

        attainment = float(table["slo_ok"].mean()) if len(table) else 1.0
        gpus = self._counters
        return {
            "policy": self.policy,
            "gpus": len(run.workers),
            "requests": len(req),
            "completed": int(done.sum()),
            "offered_rps": req.rate,
            "throughput_rps": float(done.sum()) / window,
            "output_tokens_per_s": float(req.output_tokens[done].sum()) / window,
            "ttft_p50_ms": _tail(table, "ttft_ms", 50),
            "ttft_p90_ms": _tail(table, "ttft_ms", 90),
            "ttft_p99_ms": _tail(table, "ttft_ms", 99),
            "tpot_p50_ms": _tail(table, "tpot_ms", 50),
            "tpot_p99_ms": _tail(table, "tpot_ms", 99),
            "e2e_p50_ms": _tail(table, "e2e_ms", 50),
            "e2e_p99_ms": _tail(table, "e2e_ms", 99),
            "slo_attainment": attainment,
            "meets_slo": attainment >= self.config.slo.percentile / 100.0 and not run.stopped,
            "mean_busy": float(gpus["busy"].mean()),
            "mean_load": float(gpus["load"].mean()),
            "adapter_loads": int(run.loads.sum()),
            "cold_loads": int(run.cold_loads.sum()),
            "stopped": run.stopped,
            "wall_s": run.wall_s,
        }

    @property
    def meets_slo(self) -> bool:
        """Whether SLO attainment reaches the SLO's percentile (and the run was not stopped)."""
        return bool(self.summary["meets_slo"])

    def summary_frame(self) -> pd.DataFrame:
        """:attr:`summary` as a one-row DataFrame."""
        return pd.DataFrame([self.summary], columns=list(SUMMARY_COLUMNS))
