"""Running the inventory's launcher commands (start, restart at a new tier, stop a worker)."""

from __future__ import annotations

import asyncio
import logging
import os

from loraserve.runtime_adapter.errors import MigrationError
from loraserve.runtime_adapter.inventory import LauncherSpec, WorkerSpec

logger = logging.getLogger(__name__)


def launcher_values(worker: WorkerSpec, tier: int) -> dict[str, str]:
    """The placeholder values for ``worker`` started at ``tier``."""
    return {
        "gpu_id": worker.gpu_id, "url": worker.url, "host": worker.host,
        "port": str(worker.port), "node": worker.node,
        "gpu": "" if worker.gpu is None else str(worker.gpu), "tier": str(tier),
        "max_loras": str(worker.max_loras), "max_cpu_loras": str(worker.slots),
    }


async def run_launcher(spec: LauncherSpec, action: str, worker: WorkerSpec, tier: int) -> None:
    """Run the ``action`` command (``start``, ``restart`` or ``stop``) for ``worker``.

    The arguments' placeholders are filled in and the values are also exported as
    ``LORASERVE_<NAME>`` variables. No shell is involved.

    Raises
    ------
    MigrationError
        When no command is configured, it cannot be run, times out or exits non-zero (with
        the last line it wrote to stderr).
    """
    template: tuple[str, ...] | None = getattr(spec, action)
    if template is None:
        raise MigrationError(f"worker {worker.gpu_id} needs a {action} but the inventory has no "
                             f"launcher.{action} command; add one (see docs/runtime.md)")
    values = launcher_values(worker, tier)
    argv = [part.format(**values) for part in template]
    env = {**os.environ, **{f"LORASERVE_{k.upper()}": v for k, v in values.items()}}
    logger.info("launcher %s for %s: %s", action, worker.gpu_id, argv)
    try:
        process = await asyncio.create_subprocess_exec(
            *argv, env=env, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    except OSError as exc:
        raise MigrationError(f"launcher.{action} for {worker.gpu_id}: cannot run {argv[0]}: "
                             f"{exc.strerror}") from None
    try:
        _, stderr = await asyncio.wait_for(process.communicate(), spec.command_timeout_s)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise MigrationError(f"launcher.{action} for {worker.gpu_id} did not finish within "
                             f"{spec.command_timeout_s:g} s") from None
    if process.returncode != 0:
        lines = stderr.decode(errors="replace").strip().splitlines()
        last = lines[-1] if lines else "no output"
        raise MigrationError(f"launcher.{action} for {worker.gpu_id} exited "
                             f"{process.returncode}: {last}")
