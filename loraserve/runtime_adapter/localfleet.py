r"""A local vLLM fleet on loopback ports, for tests, benchmarks and trying loraserve on a laptop.

Nothing here imports vLLM: the workers run as subprocesses of a Python that has it (a
separate virtual environment, because vLLM pins its own torch), named by the
``LORASERVE_VLLM_PYTHON`` environment variable or passed explicitly. The model and the
adapters are built locally by :mod:`loraserve.runtime_adapter._tiny_assets` (random weights,
a tokenizer trained on a few sentences; nothing is downloaded).

Each worker's process id is kept in ``<state_dir>/worker-<port>.pid`` so that the launcher
command (``python -m loraserve.runtime_adapter.localfleet restart ...``) can replace a worker
started by someone else, and whoever started the fleet can stop what runs at the end::

    python -m loraserve.runtime_adapter.localfleet restart --state-dir DIR --port 8101 \\
        --tier 128 --max-loras 4 --max-cpu-loras 8
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from loraserve.models import BaseModelSpec

#: Environment variable naming the Python of the vLLM environment.
VLLM_PYTHON_ENV = "LORASERVE_VLLM_PYTHON"

#: The model name the local workers serve (the plans' ``base_model``).
SERVED_NAME = "tiny-llama"

_ASSETS_SCRIPT = Path(__file__).with_name("_tiny_assets.py")


def tiny_model_spec() -> BaseModelSpec:
    """The shapes of the tiny Llama the local workers serve (for profiles and configs)."""
    from loraserve.runtime_adapter import _tiny_assets as tiny

    return BaseModelSpec(name=SERVED_NAME, num_layers=tiny.LAYERS, hidden_size=tiny.HIDDEN,
                         intermediate_size=tiny.INTERMEDIATE, num_attention_heads=tiny.HEADS,
                         num_kv_heads=tiny.KV_HEADS, vocab_size=tiny.VOCAB, dtype_bytes=4)


def vllm_python() -> Path | None:
    """The vLLM environment's Python from ``LORASERVE_VLLM_PYTHON``, when set and present."""
    value = os.environ.get(VLLM_PYTHON_ENV)
    if not value:
        return None
    path = Path(value)
    return path if path.exists() else None


@dataclass(frozen=True)
class Assets:
    """The tiny model and adapters built by :func:`build_assets`."""

    model: Path
    adapters: dict[str, tuple[Path, int]]

    @property
    def root(self) -> Path:
        """The adapters' common directory (an adapter root for the inventory)."""
        return self.model.parent / "adapters"


def build_assets(python: Path, out: Path, ranks: tuple[int, ...] = (8, 16, 64, 128),
                 per_rank: int = 2, seed: int = 0) -> Assets:
    """Build (or reuse, when already built with the same arguments) the model and adapters."""
    manifest = out / "assets.json"
    stamp = out / "assets.args"
    args = [str(out), "--ranks", *map(str, ranks), "--per-rank", str(per_rank),
            "--seed", str(seed)]
    if not (manifest.exists() and stamp.exists() and stamp.read_text() == " ".join(args)):
        out.mkdir(parents=True, exist_ok=True)
        subprocess.run([str(python), str(_ASSETS_SCRIPT), *args], check=True,
                       capture_output=True, text=True)
        stamp.write_text(" ".join(args))
    data = json.loads(manifest.read_text())
    adapters = {name: (Path(entry["path"]), int(entry["rank"]))
                for name, entry in data["adapters"].items()}
    return Assets(Path(data["model"]), adapters)


@dataclass(frozen=True)
class WorkerSettings:
    """How one local worker is started."""

    port: int
    tier: int
    max_loras: int = 4
    max_cpu_loras: int = 8
    api_key: str | None = None
    runtime_updates: bool = True
    dev_mode: bool = False
    host: str = "127.0.0.1"
    lora_resolver_dir: Path | None = None
    #: More server arguments, after the defaults (a later flag wins in vLLM's parser).
    extra_args: tuple[str, ...] = ()
    #: CPUs the worker is pinned to (a ``taskset -c`` list); unpinned when None.
    cpus: str | None = None

    @property
    def url(self) -> str:
        """The worker's base URL."""
        return f"http://{self.host}:{self.port}"


def worker_command(python: Path, model: Path, settings: WorkerSettings) -> list[str]:
    """The command line of a vLLM OpenAI server for ``settings``."""
    command = [
        str(python), "-m", "vllm.entrypoints.openai.api_server",
        "--model", str(model), "--served-model-name", SERVED_NAME,
        "--host", settings.host, "--port", str(settings.port),
        "--enable-lora", "--max-lora-rank", str(settings.tier),
        "--max-loras", str(settings.max_loras), "--max-cpu-loras", str(settings.max_cpu_loras),
        "--max-model-len", "512", "--max-num-seqs", "16", "--dtype", "float32",
    ]
    if settings.api_key:
        command += ["--api-key", settings.api_key]
    command += list(settings.extra_args)
    if settings.cpus:
        command = ["taskset", "-c", settings.cpus, *command]
    return command


def worker_env(settings: WorkerSettings) -> dict[str, str]:
    """The environment of a local worker (1 GiB of CPU KV cache, one unpinned thread)."""
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_CONFIGURE_LOGGING": "1",
           "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    # vLLM's automatic binding pins every worker to the same first core (and keeps the
    # other for itself), so local workers queue on one core while the rest idle; one
    # unpinned thread each lets the OS spread them. A caller's own settings win.
    env.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
    env.setdefault("OMP_NUM_THREADS", "1")
    env.pop("VLLM_ALLOW_RUNTIME_LORA_UPDATING", None)
    if settings.runtime_updates:
        env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] = "True"
    if settings.dev_mode:
        env["VLLM_SERVER_DEV_MODE"] = "1"
    # vLLM's filesystem resolver loads an adapter named in a request from this directory.
    env.pop("VLLM_LORA_RESOLVER_CACHE_DIR", None)
    if settings.lora_resolver_dir is not None:
        env["VLLM_LORA_RESOLVER_CACHE_DIR"] = str(settings.lora_resolver_dir)
    return env


def _pid_file(state_dir: Path, port: int) -> Path:
    return state_dir / f"worker-{port}.pid"


def start_worker(python: Path, model: Path, settings: WorkerSettings,
                 state_dir: Path) -> subprocess.Popen[bytes]:
    """Start a worker in its own process group; its log goes to ``worker-<port>.log``."""
    state_dir.mkdir(parents=True, exist_ok=True)
    log = (state_dir / f"worker-{settings.port}.log").open("ab")
    process = subprocess.Popen(worker_command(python, model, settings), env=worker_env(settings),
                               stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                               start_new_session=True)
    log.close()
    _pid_file(state_dir, settings.port).write_text(str(process.pid))
    return process


def stop_worker(state_dir: Path, port: int, timeout_s: float = 30.0) -> None:
    """Stop the worker whose pid file is in ``state_dir`` (its whole process group)."""
    pid_file = _pid_file(state_dir, port)
    if not pid_file.exists():
        return
    pid = int(pid_file.read_text())
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        pid_file.unlink(missing_ok=True)
        return
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        _reap(pid)
        if not _group_alive(pid):
            break
        time.sleep(0.2)
    else:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
    _reap(pid)
    pid_file.unlink(missing_ok=True)


def _group_alive(pgid: int) -> bool:
    """Whether a process of group ``pgid`` still runs (zombies, not yet reaped, do not count).

    A worker started by another process stays a zombie until that parent reaps it, and
    ``killpg(pgid, 0)`` would report it alive; ``/proc`` tells the states apart.
    """
    proc = Path("/proc")
    if not proc.is_dir():
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        return True
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # Fields after the command (which may hold spaces) start after the last ')'.
        fields = stat[stat.rfind(")") + 2:].split()
        if len(fields) > 2 and int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            return True
    return False


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def wait_healthy(url: str, timeout_s: float = 180.0,
                 process: subprocess.Popen[bytes] | None = None) -> float:
    """Wait until ``url/health`` answers 200; return the seconds waited.

    Raises
    ------
    RuntimeError
        When the process exits first or the time runs out.
    """
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the worker at {url} exited with code {process.returncode}")
        try:
            if httpx.get(f"{url}/health", timeout=2.0).status_code == 200:
                return time.monotonic() - started
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"the worker at {url} was not healthy after {timeout_s:g} s")


def main(argv: list[str] | None = None) -> int:
    """``restart``/``start``/``stop`` one local worker (a launcher for the inventory)."""
    parser = argparse.ArgumentParser(prog="python -m loraserve.runtime_adapter.localfleet",
                                     description="Start, restart or stop a local vLLM worker.")
    parser.add_argument("action", choices=("start", "restart", "stop"))
    parser.add_argument("--state-dir", type=Path, required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--tier", type=int, default=16)
    parser.add_argument("--max-loras", type=int, default=4)
    parser.add_argument("--max-cpu-loras", type=int, default=8)
    parser.add_argument("--model", type=Path, help="model directory (default: from the "
                        "state dir's assets.json)")
    parser.add_argument("--api-key-env", help="variable holding the worker's --api-key")
    parser.add_argument("--lora-resolver-dir", type=Path,
                        help="directory the worker loads adapters from on demand (remote "
                             "pairs)")
    args = parser.parse_args(argv)
    if args.action in ("restart", "stop"):
        stop_worker(args.state_dir, args.port)
    if args.action == "stop":
        return 0
    python = vllm_python()
    if python is None:
        sys.stderr.write(f"error: set {VLLM_PYTHON_ENV} to the vLLM environment's python\n")
        return 2
    model = args.model or Path(json.loads((args.state_dir / "assets.json").read_text())["model"])
    key = os.environ.get(args.api_key_env) if args.api_key_env else None
    start_worker(python, model, WorkerSettings(args.port, args.tier, args.max_loras,
                                               args.max_cpu_loras, key,
                                               lora_resolver_dir=args.lora_resolver_dir),
                 args.state_dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
