"""SIGINT and SIGTERM stop every phase of a command, write nothing, and say so.

Each test starts ``loraserve`` in a subprocess with ``-vv``, waits for the log lines that say
the phase under test is running (for the native solvers: that the solve itself started),
sends the signal and checks the exit code, the message,
that the output file is untouched and that no temporary file is left. The time allowed
after the signal is generous (a loaded CI machine), the promise is a second.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from loraserve.models.synthetic import synthetic_config
from tests.conftest import QUICKSTART, REPO_ROOT
from tests.runtime.helpers import make_adapter, write_inventory

#: Seconds a command may take to stop after the signal (the target is one).
STOP_WITHIN_S = 5.0
#: Seconds to wait for a phase to start.
START_WITHIN_S = 120.0
OLD = "old contents\n"


@pytest.fixture(scope="module")
def slot_bound(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """400 adapters, 16 slots per GPU: the greedy lands above the bound, so LNS, column
    generation and the exact models all have seconds of work to do."""
    # 320 req/s: with the SLO families the greedy is optimal at 160 (26 GPUs, the slot
    # bound); here it lands one above the bound (27 against 26).
    config = synthetic_config(400, 320.0, gpu_count=40,
                              serving={"max_cpu_loras": 16, "max_replicas": 64})
    path = tmp_path_factory.mktemp("interrupts") / "slots.yaml"
    path.write_text(config.to_yaml())
    return path


def interrupt(argv: list[str], marker: list[str] | threading.Event, signum: int,
              output: Path) -> tuple[int, str, float]:
    """Run ``loraserve -vv argv``; once ``marker``'s lines are logged in order (or the event
    is set) send ``signum``.

    Returns the exit code, stderr, and the seconds from the signal to the exit.
    """
    output.write_text(OLD)
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    process = subprocess.Popen([sys.executable, "-m", "loraserve.cli", "-vv", *argv],
                               cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    assert process.stderr is not None
    lines: list[str] = []
    if isinstance(marker, threading.Event):
        deadline = time.monotonic() + START_WITHIN_S
        while not marker.wait(0.1):
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"never reached the worker: {process.communicate()[1]}")
    else:
        deadline = time.monotonic() + START_WITHIN_S
        waiting = list(marker)
        for line in process.stderr:
            lines.append(line)
            if waiting[0] in line:
                waiting.pop(0)
            if not waiting or time.monotonic() > deadline:
                break
        assert not waiting, "".join(lines[-20:])
    sent = time.monotonic()
    process.send_signal(signum)
    try:
        _, rest = process.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        pytest.fail(f"{marker}: still running 60 s after {signal.Signals(signum).name}")
    return process.returncode, "".join(lines) + rest, time.monotonic() - sent


def assert_stopped(result: tuple[int, str, float], signum: int, output: Path) -> None:
    code, err, seconds = result
    name = signal.Signals(signum).name
    assert code == 128 + signum, err
    assert f"interrupted ({name}); no files were written" in err, err
    assert "Traceback" not in err, err
    assert seconds < STOP_WITHIN_S, seconds
    assert output.read_text() == OLD
    assert not list(output.parent.glob(".*.tmp"))


@pytest.mark.parametrize(("solver", "limit", "marker"), [
    ("greedy", "30", ["greedy: started"]),
    # The later phases start after column generation's third of the time: a short limit
    # gets there sooner.
    ("lns", "9", ["lns: started", "cp-sat: solving"]),
    ("auto", "30", ["colgen: started", "highs: solving"]),
    ("cpsat", "9", ["cpsat: started", "cp-sat: solving"]),
    ("milp", "9", ["milp: started", "highs: solving loraserve_placement"]),
])
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_plan_stops_in_every_phase(slot_bound: Path, tmp_path: Path, solver: str, limit: str,
                                   marker: list[str], signum: int) -> None:
    output = tmp_path / "plan.yaml"
    result = interrupt(["plan", str(slot_bound), "--solver", solver, "--time-limit", limit,
                        "-o", str(output)], marker, signum, output)
    assert_stopped(result, signum, output)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_simulate_stops(tmp_path: Path, signum: int) -> None:
    plan = tmp_path / "plan.yaml"
    subprocess.run([sys.executable, "-m", "loraserve.cli", "plan", str(QUICKSTART), "-q",
                    "--solver", "greedy", "-o", str(plan)], cwd=REPO_ROOT, check=True,
                   capture_output=True)
    output = tmp_path / "requests.csv"
    result = interrupt(["simulate", str(QUICKSTART), "--plan", str(plan), "--duration",
                        "3000", "--progress", "--requests-csv", str(output)],
                       ["simulating"], signum, output)
    assert_stopped(result, signum, output)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_compare_with_worker_processes_stops(tmp_path: Path, signum: int) -> None:
    output = tmp_path / "table.csv"
    result = interrupt(["compare", str(QUICKSTART), "--duration", "3000", "--jobs", "2",
                        "--csv", str(output)], ["compare: "], signum, output)
    assert_stopped(result, signum, output)


class _Silent(BaseHTTPRequestHandler):
    """A worker that accepts requests and answers none (apply waits on it)."""

    reached = threading.Event()

    def do_GET(self) -> None:
        self.reached.set()
        time.sleep(60)

    def log_message(self, format: str, *args: object) -> None:
        return


@pytest.fixture
def silent_worker() -> Iterator[str]:
    _Silent.reached.clear()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Silent)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_apply_stops(tmp_path: Path, silent_worker: str, signum: int) -> None:
    make_adapter(tmp_path / "adapters", "a0", 8)
    inventory = write_inventory(tmp_path, [{"gpu_id": "cpu-0", "url": silent_worker,
                                            "tier": 8}], {"a0": "adapters/a0"},
                                timeouts={"connect_s": 30, "read_s": 30})
    plan = tmp_path / "plan.yaml"
    plan.write_text(yaml.safe_dump({"base_model": "tiny-llama", "gpus": [
        {"gpu_id": "cpu-0", "gpu_type": "cpu", "tier": 8, "adapters": ["a0"]}],
        "routes": {"a0": {"cpu-0": 1.0}}}))
    untouched = tmp_path / "untouched.txt"
    result = interrupt(["apply", str(plan), "--workers", str(inventory)], _Silent.reached,
                       signum, untouched)
    assert_stopped(result, signum, untouched)
    assert not (tmp_path / "routes.yaml").exists()
