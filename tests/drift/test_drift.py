from __future__ import annotations

import math

import pytest

from loraserve.drift import (
    Counters,
    Decision,
    DriftController,
    DriftPolicy,
    RateEstimator,
    predicted_utilization,
    with_rates,
)
from loraserve.models import Config, PlacementPlan
from loraserve.models.synthetic import synthetic_config
from loraserve.solver import solve

# ---- the estimator -------------------------------------------------------------------------


def readings(rates: dict[str, float], start: float, steps: int, dt: float,
             totals: dict[str, float] | None = None,
             tokens: dict[str, tuple[float, float]] | None = None) -> list[Counters]:
    """Cumulative counters of adapters at constant rates and token means (100 and 10 unless
    ``tokens`` says otherwise)."""
    totals = dict(totals or {})
    tokens = tokens or {}
    out = []
    for i in range(steps + 1):
        if i:
            for a, r in rates.items():
                totals[a] = totals.get(a, 0.0) + r * dt
        out.append(Counters(start + i * dt, dict(totals),
                            {a: tokens.get(a, (100, 10))[0] * n for a, n in totals.items()},
                            {a: tokens.get(a, (100, 10))[1] * n for a, n in totals.items()}))
    return out


def test_constant_rate_is_recovered_with_token_means() -> None:
    est = RateEstimator(half_life_s=60)
    for c in readings({"a": 2.0, "b": 0.5}, 0.0, 5, 15.0):
        est.observe(c)
    assert est.ready and est.intervals == 5
    assert est.rates() == pytest.approx({"a": 2.0, "b": 0.5})
    assert est.token_means()["a"] == pytest.approx((100.0, 10.0))


def test_step_change_moves_halfway_in_one_half_life() -> None:
    est = RateEstimator(half_life_s=60)
    first = readings({"a": 1.0}, 0.0, 4, 30.0)
    for c in first:
        est.observe(c)
    # Rate jumps from 1 to 3: after 60 s (one half-life, two 30 s intervals) the estimate
    # is halfway, 2.0, whatever the interval length.
    for c in readings({"a": 3.0}, 120.0, 2, 30.0, dict(first[-1].requests))[1:]:
        est.observe(c)
    assert est.rates()["a"] == pytest.approx(2.0)


def test_counter_reset_counts_from_zero_and_bad_times_are_ignored() -> None:
    est = RateEstimator(half_life_s=1e-9)  # no memory: each interval's own rate
    est.observe(Counters(0.0, {"a": 100.0}, {}, {}))
    est.observe(Counters(10.0, {"a": 120.0}, {}, {}))
    assert est.rates()["a"] == pytest.approx(2.0)
    est.observe(Counters(20.0, {"a": 30.0}, {}, {}))  # the router restarted
    assert est.rates()["a"] == pytest.approx(3.0)
    est.observe(Counters(15.0, {"a": 99.0}, {}, {}))  # clock went back: ignored
    assert est.rates()["a"] == pytest.approx(3.0)
    with pytest.raises(ValueError, match="half_life_s"):
        RateEstimator(0.0)


# ---- the controller ------------------------------------------------------------------------

DriftFleet = tuple[Config, PlacementPlan]


@pytest.fixture(scope="module")
def fleet() -> DriftFleet:
    # max_loras = max_cpu_loras: batch slots never bind, so a quarter of the traffic fits on
    # fewer GPUs (with 8 batch slots for 16 hosted, every adapter stays busy enough that the
    # fleet is set by slots at any rate, and no saving exists).
    config = synthetic_config(40, 60.0, gpu_count=40, seed=2,
                              serving={"max_loras": 16, "max_cpu_loras": 16})
    plan = solve(config, solver="greedy").plan
    assert plan is not None
    return config, plan


def feed(controller: DriftController, rates: dict[str, float], start: float, steps: int,
         dt: float, totals: dict[str, float]) -> list[Decision]:
    tokens = {a.id: (a.prompt_tokens, a.output_tokens) for a in controller.config.adapters}
    decisions = []
    for c in readings(rates, start, steps, dt, totals, tokens)[1:]:
        decisions.append(controller.step(c))
    totals.update(c.requests)
    return decisions


def test_steady_traffic_keeps_the_plan(fleet: DriftFleet) -> None:
    config, plan = fleet
    controller = DriftController(config, plan, DriftPolicy(half_life_s=30, time_limit=2))
    rates = {a.id: a.request_rate for a in config.adapters}
    totals: dict[str, float] = {}
    controller.step(readings(rates, 0.0, 0, 10.0)[0])
    decisions = feed(controller, rates, 0.0, 4, 10.0, totals)
    assert all(d.action == "keep" for d in decisions)
    assert max(decisions[-1].utilization.values()) <= 1.0 + 1e-6
    assert "keep" in decisions[-1].reason


def test_a_hot_shift_replans_at_once_and_the_new_plan_holds(fleet: DriftFleet) -> None:
    config, plan = fleet
    policy = DriftPolicy(half_life_s=1.0, time_limit=2, cooldown_s=1e9, patience=100)
    controller = DriftController(config, plan, policy)
    rates = {a.id: a.request_rate for a in config.adapters}
    # The five coldest adapters get three times the hottest one's rate.
    coldest = sorted(rates, key=rates.get)[:5]  # type: ignore[arg-type]
    shifted = {**rates, **{a: 3 * max(rates.values()) for a in coldest}}
    totals: dict[str, float] = {}
    controller.step(readings(rates, 0.0, 0, 10.0)[0])
    decision = feed(controller, shifted, 0.0, 1, 60.0, totals)[-1]
    # The cooldown and patience do not hold back an SLO breach.
    assert decision.action == "replan" and decision.trigger == "slo"
    assert decision.plan is not None and decision.migration is not None
    assert decision.plan.verify(decision.config) == []
    assert max(predicted_utilization(decision.plan, decision.config).values()) <= 1.0 + 1e-6
    assert decision.migration.replay(plan, decision.config.serving.adapters_per_gpu,
                                     decision.plan) == []
    controller.commit(decision)
    assert controller.plan is decision.plan
    text = controller.metrics.registry.get_sample_value(
        "loraserve_replans_total", {"trigger": "slo"})
    assert text == 1.0
    assert controller.metrics.registry.get_sample_value("loraserve_adapters_moved_total") \
        == decision.migration.loads > 0


def test_a_margin_plans_and_guards_for_more_than_is_seen(fleet: DriftFleet) -> None:
    config, plan = fleet
    rates = {a.id: a.request_rate for a in config.adapters}
    # The plan was made for these rates: it fits them, and 1.5x them breaks some GPU.
    for margin, expected in ((1.0, "keep"), (1.5, "replan")):
        policy = DriftPolicy(half_life_s=30, time_limit=2, margin=margin, patience=100)
        controller = DriftController(config, plan, policy)
        controller.step(readings(rates, 0.0, 0, 10.0)[0])
        decision = feed(controller, rates, 0.0, 2, 10.0, {})[-1]
        assert decision.action == expected, decision.reason
        seen = {a.id: a.request_rate for a in decision.config.adapters}
        assert seen[config.adapters[0].id] == pytest.approx(margin * rates[config.adapters[0].id],
                                                            rel=1e-6)
    assert decision.plan is not None and decision.trigger == "slo"
    # The new plan carries the margin: at the rates really seen, every GPU has room.
    assert max(predicted_utilization(decision.plan, config).values()) <= 1 / 1.5 + 1e-6
    with pytest.raises(ValueError, match="margin"):
        DriftPolicy(margin=0)


def test_a_saving_waits_for_patience_and_cooldown(fleet: DriftFleet) -> None:
    config, plan = fleet
    policy = DriftPolicy(half_life_s=1.0, time_limit=2, patience=3, cooldown_s=0.0)
    controller = DriftController(config, plan, policy)
    rates = {a.id: a.request_rate * 0.25 for a in config.adapters}
    totals: dict[str, float] = {}
    controller.step(readings(rates, 0.0, 0, 10.0)[0])
    decisions = feed(controller, rates, 0.0, 3, 60.0, totals)
    assert [d.action for d in decisions] == ["keep", "keep", "replan"]
    assert all(d.saving >= 1 for d in decisions)
    assert decisions[-1].trigger == "saving"
    new = decisions[-1].plan
    assert new is not None and new.num_gpus <= plan.num_gpus - 1
    controller.commit(decisions[-1])
    # Right after: the saving is gone, nothing flaps.
    after = feed(controller, rates, 180.0, 3, 60.0, totals)
    assert all(d.action == "keep" for d in after)


def test_with_rates_and_policy_checks(fleet: DriftFleet) -> None:
    config, _ = fleet
    first = config.adapters[0].id
    changed = with_rates(config, {first: 7.0}, {first: (50.0, 5.0)})
    assert changed.adapters[0].request_rate == 7.0
    assert (changed.adapters[0].prompt_tokens, changed.adapters[0].output_tokens) == (50, 5)
    assert changed.adapters[1] == config.adapters[1]
    with pytest.raises(ValueError, match="headroom"):
        DriftPolicy(headroom=0.0)
    with pytest.raises(ValueError, match="patience"):
        DriftPolicy(patience=0)
    assert math.isfinite(DriftPolicy().cooldown_s)


def test_a_shift_no_plan_can_carry_is_reported_and_the_fleet_kept(fleet: DriftFleet) -> None:
    config, plan = fleet
    controller = DriftController(config, plan, DriftPolicy(half_life_s=1.0, time_limit=2))
    rates = {a.id: a.request_rate for a in config.adapters}
    hottest = max(rates, key=rates.get)  # type: ignore[arg-type]
    totals: dict[str, float] = {}
    controller.step(readings(rates, 0.0, 0, 10.0)[0])
    decision = feed(controller, {**rates, hottest: 50 * rates[hottest]}, 0.0, 1, 60.0,
                    totals)[-1]
    assert decision.action == "keep" and decision.trigger == "slo"
    assert "max_replicas" in decision.reason and hottest in decision.reason
    assert controller.plan is plan


def test_an_adapter_first_seen_later_rises_with_the_half_life() -> None:
    est = RateEstimator(half_life_s=10)
    est.observe(Counters(0.0, {"a": 0.0}, {}, {}))
    est.observe(Counters(10.0, {"a": 10.0}, {}, {}))
    # The first interval starts every adapter at its own rate.
    assert est.rates() == pytest.approx({"a": 1.0})
    # "b" appears only once it has requests (a router exports a counter from its first
    # count): it had none before, so one half-life of 4 req/s reads 2, not 4.
    est.observe(Counters(20.0, {"a": 20.0, "b": 40.0}, {}, {}))
    assert est.rates() == pytest.approx({"a": 1.0, "b": 2.0})


def test_token_means_divide_by_the_requests_whose_usage_was_seen() -> None:
    est = RateEstimator(half_life_s=1e-9)
    est.observe(Counters(0.0, {"a": 0.0, "b": 0.0}, {}, {}, {}))
    # Ten requests of "a", four of which reported 50 prompt and 5 generated tokens each;
    # none of "b"'s did, so "b" has no means (it keeps the configured ones).
    est.observe(Counters(10.0, {"a": 10.0, "b": 3.0}, {"a": 200.0}, {"a": 20.0}, {"a": 4.0}))
    assert est.token_means() == {"a": pytest.approx((50.0, 5.0))}


def test_traffic_outside_the_config_is_warned_about_once_per_adapter(
        fleet: DriftFleet, caplog: pytest.LogCaptureFixture) -> None:
    config, plan = fleet
    controller = DriftController(config, plan, DriftPolicy(half_life_s=30, time_limit=2))
    known = config.adapters[0].id
    caplog.set_level("WARNING", logger="loraserve.drift.controller")
    for step, extra in enumerate([{"x": 1.0}, {"x": 2.0}, {"x": 3.0, "y": 1.0}, {"x": 4.0}]):
        controller.observe(Counters(10.0 * step, {known: 5.0 * step, **extra}, {}, {}))
    warnings = [r.getMessage() for r in caplog.records if "not in the config" in r.getMessage()]
    assert len(warnings) == 2
    assert "(x)" in warnings[0] and "(y)" in warnings[1]
