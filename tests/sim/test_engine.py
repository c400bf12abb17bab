"""The event engine: hand-computed timelines, a step-by-step reference, queueing theory, limits."""

from __future__ import annotations

import math
from collections import deque

import numpy as np
import pytest

from loraserve import Config, CostModel
from loraserve.sim.engine import SimOptions, Worker, run
from loraserve.sim.workload import Requests
from tests.conftest import GPU, make_config


def one_adapter(**serving: object) -> Config:
    return make_config([{"id": "a0", "rank": 8, "request_rate": 1.0, "prompt_tokens": 512,
                         "output_tokens": 64}], serving=dict(serving))


def requests(arrival: list[float], prompt: list[int], output: list[int],
             adapter: list[int] | None = None) -> Requests:
    n = len(arrival)
    return Requests(np.array(arrival, dtype=float),
                    np.array(adapter or [0] * n, dtype=np.int64),
                    np.array(prompt, dtype=np.int64), np.array(output, dtype=np.int64),
                    float(max(arrival) + 1e-3))


def test_two_requests_follow_the_hand_computed_timeline() -> None:
    config = one_adapter()
    model = CostModel.from_config(config)
    profile = model.profiles[GPU]

    def dec(b: int) -> float:
        return profile.decode_ms(8, b) / 1e3

    pf_tok = profile.prefill_ms(8, 2048) / 1e3 / 2048
    # r0 alone: a prefill-only step, then 4 decode steps at batch 1. r1 arrives during the
    # second of those, so the run of decode steps is cut at the next step boundary, where r1
    # is prefilled together with r0's decode; then both decode at batch 2 and finish together.
    reqs = requests([0.0, 0.010], [100, 200], [5, 3])
    result = run(config, [Worker("g0", GPU, 8, (0,))], reqs, [[(0, 1.0)]], cost_model=model)
    first0 = profile.prefill_ms(8, 100) / 1e3
    cut = first0 + dec(1) * math.ceil((0.010 - first0) / dec(1))
    first1 = cut + dec(1) + 200 * pf_tok
    end = first1 + 2 * dec(2)
    assert result.first[0] == pytest.approx(first0, rel=1e-12)
    assert result.start[1] == pytest.approx(cut, rel=1e-12)
    assert result.first[1] == pytest.approx(first1, rel=1e-12)
    assert result.done[0] == pytest.approx(end, rel=1e-12)
    assert result.done[1] == pytest.approx(end, rel=1e-12)
    # Busy the whole time from the first arrival to the end: 1 + 4 + 1 + ... steps.
    assert result.busy_s[0] == pytest.approx(end, rel=1e-9)
    assert not result.stopped


def reference(config: Config, reqs: Requests) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One GPU, one warm adapter, stepped one iteration at a time (no event skipping)."""
    model = CostModel.from_config(config)
    profile = model.profiles[GPU]
    serving = config.serving
    chunk, max_seqs = serving.max_num_batched_tokens, serving.max_num_seqs
    kv_cap = int(model.capacity(GPU, 8).kv_cache_bytes // config.base_model.kv_bytes_per_token)
    pf_tok = profile.prefill_ms(8, chunk) / 1e3 / chunk
    n = len(reqs)
    arrival, prompt, output = reqs.arrival, reqs.prompt_tokens, reqs.output_tokens
    start, first, done = (np.full(n, np.nan) for _ in range(3))
    waiting: deque[int] = deque()
    decoding: dict[int, int] = {}
    prefilling: list[list[int]] = []
    kv, now, i = 0, 0.0, 0
    while i < n or waiting or decoding or prefilling:
        if not (waiting or decoding or prefilling):
            now = max(now, float(arrival[i]))
        while i < n and arrival[i] <= now:
            waiting.append(i)
            i += 1
        b = len(decoding)
        budget, tokens, new_first, keep = chunk - b, 0, [], []
        for item in prefilling:
            take = min(item[1], max(budget, 0))
            budget, tokens, item[1] = budget - take, tokens + take, item[1] - take
            (keep if item[1] else new_first).append(item if item[1] else item[0])
        prefilling = keep
        running = b + len(prefilling) + len(new_first)
        while budget > 0 and waiting and running < max_seqs:
            r = waiting[0]
            if kv + prompt[r] + output[r] > kv_cap:
                break
            waiting.popleft()
            kv += prompt[r] + output[r]
            start[r] = now
            take = min(int(prompt[r]), budget)
            budget, tokens, running = budget - take, tokens + take, running + 1
            if take == prompt[r]:
                new_first.append(r)
            else:
                prefilling.append([r, int(prompt[r]) - take])
        if tokens:
            now += (profile.decode_ms(8, b) / 1e3 + tokens * pf_tok if b
                    else profile.prefill_ms(8, tokens) / 1e3)
        elif b:
            now += profile.decode_ms(8, b) / 1e3
        else:
            continue
        for r in list(decoding):
            decoding[r] -= 1
            if decoding[r] == 0:
                del decoding[r]
                done[r] = now
                kv -= prompt[r] + output[r]
        for r in new_first:
            first[r] = now
            if output[r] <= 1:
                done[r] = now
                kv -= prompt[r] + output[r]
            else:
                decoding[r] = int(output[r]) - 1
    return start, first, done


@pytest.mark.parametrize("serving", [
    {"max_num_seqs": 6, "max_num_batched_tokens": 256},
    {"max_num_seqs": 256, "max_num_batched_tokens": 512},
])
def test_event_skipping_matches_a_step_by_step_reference(serving: dict[str, int]) -> None:
    config = one_adapter(**serving)
    rng = np.random.default_rng(3)
    n = 400
    arrival = np.cumsum(rng.exponential(0.03, n))
    prompt = np.maximum(1, rng.lognormal(5.5, 0.8, n).astype(int))
    output = np.maximum(1, rng.lognormal(3.5, 0.8, n).astype(int))
    reqs = Requests(arrival, np.zeros(n, dtype=np.int64), prompt, output, float(arrival[-1]))
    result = run(config, [Worker("g0", GPU, 8, (0,))], reqs, [[(0, 1.0)]])
    start, first, done = reference(config, reqs)
    np.testing.assert_allclose(result.start, start, rtol=1e-9)
    np.testing.assert_allclose(result.first, first, rtol=1e-9)
    np.testing.assert_allclose(result.done, done, rtol=1e-9)
    # The engine took far fewer events than the reference took steps.
    assert result.steps[0] > 0


def test_one_sequence_at_a_time_is_an_md1_queue() -> None:
    # With max_num_seqs 1 each request holds the GPU for prefill + (O - 1) decode steps at
    # batch 1: deterministic service, Poisson arrivals, so the mean wait is
    # Pollaczek-Khinchine's rho * S / (2 (1 - rho)).
    config = one_adapter(max_num_seqs=1)
    profile = CostModel.from_config(config).profiles[GPU]
    service = profile.prefill_ms(8, 512) / 1e3 + 63 * profile.decode_ms(8, 1) / 1e3
    rho = 0.7
    rng = np.random.default_rng(0)
    n = 20_000
    arrival = np.cumsum(rng.exponential(service / rho, n))
    reqs = Requests(arrival, np.zeros(n, dtype=np.int64), np.full(n, 512), np.full(n, 64),
                    float(arrival[-1]))
    result = run(config, [Worker("g0", GPU, 8, (0,))], reqs, [[(0, 1.0)]])
    wait = float(np.mean(result.start - arrival))
    expected = rho * service / (2 * (1 - rho))
    assert wait == pytest.approx(expected, rel=0.05)
    busy = result.busy_s[0] / result.done.max()
    assert busy == pytest.approx(rho, rel=0.03)


def test_mg1_with_lognormal_outputs() -> None:
    # Random output lengths: Pollaczek-Khinchine with the service time's second moment.
    config = one_adapter(max_num_seqs=1)
    profile = CostModel.from_config(config).profiles[GPU]
    rng = np.random.default_rng(1)
    n = 20_000
    output = np.maximum(1, rng.lognormal(3.5, 0.7, n).astype(np.int64))
    service = profile.prefill_ms(8, 256) / 1e3 + (output - 1) * profile.decode_ms(8, 1) / 1e3
    rho = 0.6
    lam = rho / service.mean()
    arrival = np.cumsum(rng.exponential(1 / lam, n))
    reqs = Requests(arrival, np.zeros(n, dtype=np.int64), np.full(n, 256), output,
                    float(arrival[-1]))
    result = run(config, [Worker("g0", GPU, 8, (0,))], reqs, [[(0, 1.0)]])
    expected = lam * float(np.mean(service**2)) / (2 * (1 - rho))
    assert float(np.mean(result.start - arrival)) == pytest.approx(expected, rel=0.08)


def test_max_loras_holds_back_a_second_adapter() -> None:
    config = make_config([{"id": "a0", "rank": 8, "request_rate": 1.0},
                          {"id": "a1", "rank": 8, "request_rate": 1.0}],
                         serving={"max_loras": 1, "max_cpu_loras": 2})
    reqs = requests([0.0, 0.001, 0.002], [100, 100, 100], [50, 50, 50], [0, 1, 0])
    worker = Worker("g0", GPU, 8, (0, 1))
    result = run(config, [worker], reqs, [[(0, 1.0)], [(0, 1.0)]])
    # a0's second request joins the batch at once; a1 waits for every a0 sequence to end.
    assert result.start[2] < result.done[0]
    assert result.start[1] == pytest.approx(max(result.done[0], result.done[2]))
    # a1 was in the CPU cache but not in the only GPU slot: one host-to-GPU load.
    assert result.loads[0] == 1 and result.cold_loads[0] == 0

    wide = make_config([{"id": "a0", "rank": 8, "request_rate": 1.0},
                        {"id": "a1", "rank": 8, "request_rate": 1.0}],
                       serving={"max_loras": 2, "max_cpu_loras": 2})
    together = run(wide, [worker], reqs, [[(0, 1.0)], [(0, 1.0)]])
    assert together.start[1] < together.done[0]


def test_cold_loads_cost_disk_time_and_count() -> None:
    config = make_config([{"id": f"a{i}", "rank": 64, "request_rate": 1.0} for i in range(3)],
                         serving={"max_loras": 1, "max_cpu_loras": 1})
    model = CostModel.from_config(config)
    profile = model.profiles[GPU]
    # One request at a time, far apart: a0 is warm, a1 and a2 are cold, a0 again is cold.
    reqs = requests([0.0, 10.0, 20.0, 30.0], [64] * 4, [2] * 4, [0, 1, 2, 0])
    options = SimOptions(cold_load_ms=25.0, disk_gb_per_s=1.0)
    result = run(config, [Worker("g0", GPU, 64, (0, 1, 2))], reqs, None, options, model)
    assert int(result.cold_loads[0]) == 3
    assert int(result.loads[0]) == 3
    bytes_ = config.adapter_bytes(config.adapters[1])
    load_s = profile.load_ms(64) / 1e3 + 0.025 + bytes_ / 1e9
    ttft = result.first - reqs.arrival
    assert ttft[0] == pytest.approx(profile.prefill_ms(64, 64) / 1e3)
    assert ttft[1] == pytest.approx(profile.prefill_ms(64, 64) / 1e3 + load_s)
    assert result.load_s[0] == pytest.approx(3 * load_s)


def test_kv_cache_serialises_sequences_that_do_not_fit_together() -> None:
    serving = {"min_kv_cache_gib": 0.1}
    probe = make_config(serving=serving)
    probe = probe.model_copy(update={"pools": (probe.pools[0].model_copy(
        update={"memory_gib": 20.6}),)})
    model = CostModel.from_config(probe)
    kv_tokens = int(model.capacity(GPU, 8).kv_cache_bytes
                    // probe.base_model.kv_bytes_per_token)
    assert 2000 < kv_tokens < 100_000
    context = int(0.6 * kv_tokens)
    reqs = requests([0.0, 0.001, 0.002], [context - 20, context - 20, kv_tokens + 1],
                    [20, 20, 20])
    result = run(probe, [Worker("g0", GPU, 8, (0,))], reqs, [[(0, 1.0)]], cost_model=model)
    assert result.start[1] == pytest.approx(result.done[0])
    # The third can never fit: rejected, never started.
    assert result.rejected == 1 and math.isnan(result.first[2])


def test_least_outstanding_routing_spreads_a_burst() -> None:
    config = one_adapter()
    workers = [Worker(f"g{i}", GPU, 8, (0,)) for i in range(4)]
    reqs = requests([0.0] * 8, [100] * 8, [10] * 8)
    result = run(config, workers, reqs, None)
    assert result.gpu.tolist() == [0, 1, 2, 3, 0, 1, 2, 3]


def test_weighted_routing_follows_the_weights_and_the_seed() -> None:
    config = one_adapter()
    workers = [Worker(f"g{i}", GPU, 8, (0,)) for i in range(2)]
    rng = np.random.default_rng(5)
    n = 4000
    arrival = np.sort(rng.uniform(0, 400, n))
    reqs = Requests(arrival, np.zeros(n, dtype=np.int64), np.full(n, 200), np.full(n, 20),
                    400.0)
    routes = [[(0, 0.25), (1, 0.75)]]
    first = run(config, workers, reqs, routes, SimOptions(seed=1))
    share = float(np.mean(first.gpu == 1))
    assert share == pytest.approx(0.75, abs=4 * math.sqrt(0.75 * 0.25 / n))
    again = run(config, workers, reqs, routes, SimOptions(seed=1))
    np.testing.assert_array_equal(first.gpu, again.gpu)
    np.testing.assert_array_equal(first.done, again.done)
    other = run(config, workers, reqs, routes, SimOptions(seed=2))
    assert not np.array_equal(first.gpu, other.gpu)


def test_stop_on_slo_failure_stops_an_overloaded_run() -> None:
    config = one_adapter()
    n = 5000
    reqs = Requests(np.linspace(0, 10, n), np.zeros(n, dtype=np.int64), np.full(n, 2000),
                    np.full(n, 200), 10.0)
    full = run(config, [Worker("g0", GPU, 8, (0,))], reqs, [[(0, 1.0)]],
               SimOptions(max_drain_s=5.0))
    stopped = run(config, [Worker("g0", GPU, 8, (0,))], reqs, [[(0, 1.0)]],
                  SimOptions(stop_on_slo_failure=True))
    assert full.stopped and stopped.stopped
    assert np.isnan(full.done).any()
    assert stopped.end < full.end


def test_a_request_for_an_adapter_beyond_the_config_is_refused() -> None:
    from loraserve import ConfigError

    reqs = requests([0.0], [10], [10], [3])
    with pytest.raises(ConfigError, match="beyond the config"):
        run(one_adapter(), [Worker("g0", GPU, 8, (0,))], reqs, [[(0, 1.0)]])


def test_the_warm_cache_evicts_the_least_popular_first() -> None:
    # Three adapters hosted most popular first, room for two: a0 and a1 start warm, and a
    # cold load of a2 evicts a1 (less popular), not a0.
    config = make_config([{"id": f"a{i}", "rank": 8, "request_rate": 1.0} for i in range(3)],
                         serving={"max_loras": 2, "max_cpu_loras": 2})
    reqs = requests([0.0, 10.0, 20.0], [64] * 3, [2] * 3, [2, 0, 1])
    result = run(config, [Worker("g0", GPU, 8, (0, 1, 2))], reqs, None)
    # a2 cold; a0 still resident (no load); a1 was evicted: cold again.
    assert result.cold_loads[0] == 2
    ttft = result.first - reqs.arrival
    assert ttft[1] < ttft[0] and ttft[1] < ttft[2]


def test_a_profiles_request_overhead_delays_each_request_by_exactly_it() -> None:
    config = one_adapter()
    model = CostModel.from_config(config)
    profile = model.profiles[GPU]
    slow = profile.model_copy(update={"request_overhead_ms": 7.5})
    reqs = requests([0.0, 0.010, 0.5], [100, 200, 50], [5, 3, 4])
    worker = [Worker("g0", GPU, 8, (0,))]
    plain = run(config, worker, reqs, [[(0, 1.0)]], cost_model=model)
    shifted = run(config, worker, reqs, [[(0, 1.0)]],
                  cost_model=CostModel.from_config(config, {GPU: slow}))
    # The whole timeline moves by the overhead; the steps themselves do not change.
    assert shifted.first == pytest.approx(plain.first + 0.0075, rel=1e-12)
    assert shifted.done == pytest.approx(plain.done + 0.0075, rel=1e-12)
    assert shifted.busy_s == pytest.approx(plain.busy_s, rel=1e-12)
