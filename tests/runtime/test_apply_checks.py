"""apply's up-front checks (issue 20, items 11 and 12), against a stand-in worker."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from loraserve.runtime_adapter.errors import WorkerError
from loraserve.runtime_adapter.inventory import load_inventory
from loraserve.runtime_adapter.reconciler import apply_plan
from tests.runtime.helpers import make_adapter, make_plan, write_inventory

WORKER = "http://worker.test:8000"
ROUTER = "http://router.test:9000"


class StandIn:
    """A vLLM worker that serves the base model, hides its LoRA settings (no /server_info)
    and records every request; the router host does not answer."""

    def __init__(self) -> None:
        self.requests: list[str] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(f"{request.method} {request.url.host}{request.url.path}")
        if request.url.host == "router.test":
            raise httpx.ConnectError("connection refused", request=request)
        if request.url.path == "/v1/models":
            return httpx.Response(200, json={"data": [{"id": "tiny-llama"}]})
        if request.url.path == "/v1/unload_lora_adapter":
            return httpx.Response(400, json={"error": {"message": "not loaded"}})
        return httpx.Response(404, json={"detail": "Not Found"})


def _fleet(tmp_path: Path, **extra: object) -> tuple[Path, StandIn]:
    make_adapter(tmp_path / "adapters", "a0", 8)
    path = write_inventory(tmp_path, [{"gpu_id": "cpu-0", "url": WORKER, "tier": 8}],
                           {"a0": "adapters/a0"}, **extra)
    return path, StandIn()


def test_dry_run_names_the_workers_only_the_probe_could_check(tmp_path: Path) -> None:
    inventory, worker = _fleet(tmp_path)
    plan = make_plan({"cpu-0": (8, ["a0"])}, {"a0": {"cpu-0": 1.0}})
    result = asyncio.run(apply_plan(plan, load_inventory(inventory), dry_run=True,
                                    transport=httpx.MockTransport(worker)))
    assert result.dry_run and result.unprobed == ["cpu-0"]
    assert not any("load_lora_adapter" in r and "unload" not in r for r in worker.requests)
    assert not (tmp_path / "routes.yaml").exists()


def test_apply_checks_the_router_before_the_first_step(tmp_path: Path) -> None:
    inventory, worker = _fleet(tmp_path, router_url=ROUTER)
    plan = make_plan({"cpu-0": (8, ["a0"])}, {"a0": {"cpu-0": 1.0}})
    with pytest.raises(WorkerError, match=r"the router at .* does not answer"):
        asyncio.run(apply_plan(plan, load_inventory(inventory),
                               transport=httpx.MockTransport(worker)))
    assert not any(r.endswith("/v1/load_lora_adapter") for r in worker.requests)
    assert not (tmp_path / "journal.jsonl").exists()
