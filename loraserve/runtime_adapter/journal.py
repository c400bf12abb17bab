"""The migration journal: one JSON object per line, each line fsync'd before the step goes on.

A run of ``loraserve apply`` appends::

    {"event": "begin", "run": ID, "observed": PLAN, "target": PLAN, "steps": [...], ...}
    {"event": "step", "run": ID, "index": I, "phase": "start"}
    {"event": "step", "run": ID, "index": I, "phase": "done", "outcome": "...", "seconds": S}
    ...
    {"event": "end", "run": ID, "status": "complete" | "failed" | "superseded"}

``observed`` is the fleet as the run found it (loaded adapters per worker and the live
routes), so a run that never wrote its ``end`` line (the process was killed) can be resumed
by observing the fleet again and planning from there to the same target, or rolled back to
the state it started from. :func:`check_journal` replays every run's completed steps from its
observed state and reports any moment at which an adapter would have been routed to a worker
that did not have it loaded, or left without a routed replica.
"""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loraserve.models import MigrationPlan, MigrationStep, PlacementPlan

logger = logging.getLogger(__name__)


class Journal:
    """Append-only JSON-lines journal; every record is flushed and fsync'd before returning.

    Parameters
    ----------
    path : Path
        The file (created with its directory when missing).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        new = not self.path.exists()
        self._handle = self.path.open("a", encoding="utf-8")
        if new:
            # The file's directory entry must survive a crash too.
            dir_fd = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)

    def append(self, record: dict[str, Any]) -> None:
        """Write one record as a line and fsync it."""
        record = {"time": round(time.time(), 3), **record}
        self._handle.write(json.dumps(record, separators=(",", ":")) + "\n")
        self._handle.flush()
        os.fsync(self._handle.fileno())

    def close(self) -> None:
        """Close the file."""
        self._handle.close()

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def new_run_id() -> str:
    """A fresh run id."""
    return uuid.uuid4().hex[:12]


def read_records(path: str | Path) -> list[dict[str, Any]]:
    """Every complete record of the journal (a torn last line, from a crash, is skipped)."""
    path = Path(path)
    if not path.exists():
        return []
    records: list[dict[str, Any]] = []
    lines = path.read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            if number == len(lines):
                logger.warning("%s: last line is incomplete (a crash while writing); "
                               "ignoring it", path)
                continue
            raise ValueError(f"{path}: line {number} is not JSON; the journal is damaged") from None
        if isinstance(record, dict):
            records.append(record)
    return records


@dataclass
class JournalRun:
    """One run of ``apply`` as the journal recorded it."""

    run: str
    begin: dict[str, Any]
    started: list[int] = field(default_factory=list)
    done: list[int] = field(default_factory=list)
    outcomes: dict[int, str] = field(default_factory=dict)
    failed: dict[int, str] = field(default_factory=dict)
    end: dict[str, Any] | None = None

    @property
    def finished(self) -> bool:
        """Whether the run wrote its ``end`` record."""
        return self.end is not None

    @property
    def status(self) -> str:
        """``complete``, ``failed``, ``superseded``, or ``interrupted`` (no end record)."""
        return str(self.end["status"]) if self.end else "interrupted"

    @property
    def steps(self) -> list[MigrationStep]:
        """The run's planned steps."""
        return [MigrationStep.model_validate(s) for s in self.begin.get("steps", [])]

    @property
    def observed(self) -> PlacementPlan:
        """The fleet as the run found it."""
        return PlacementPlan.model_validate(self.begin["observed"])

    @property
    def target(self) -> PlacementPlan:
        """The plan the run was reaching for."""
        return PlacementPlan.model_validate(self.begin["target"])


def read_runs(path: str | Path) -> list[JournalRun]:
    """The journal's runs in order."""
    runs: dict[str, JournalRun] = {}
    for record in read_records(path):
        run_id = str(record.get("run", ""))
        event = record.get("event")
        if event == "begin":
            runs[run_id] = JournalRun(run_id, record)
            continue
        run = runs.get(run_id)
        if run is None:
            continue
        if event == "step":
            index = int(record["index"])
            phase = record.get("phase")
            if phase == "start":
                run.started.append(index)
            elif phase == "done":
                run.done.append(index)
                run.outcomes[index] = str(record.get("outcome", ""))
            elif phase == "failed":
                run.failed[index] = str(record.get("error", ""))
        elif event == "end":
            run.end = record
    return list(runs.values())


def unfinished_run(path: str | Path) -> JournalRun | None:
    """The last run, when it never wrote its end record (the applying process died)."""
    runs = read_runs(path)
    return runs[-1] if runs and not runs[-1].finished else None


def last_tiers(path: str | Path) -> dict[str, int]:
    """Each worker's tier after the last restart or start the journal records as done."""
    tiers: dict[str, int] = {}
    for run in read_runs(path):
        steps = run.begin.get("steps", [])
        for index in run.done:
            step = steps[index]
            if step.get("action") in ("restart_gpu", "start_gpu") and step.get("tier"):
                tiers[str(step["gpu_id"])] = int(step["tier"])
    return tiers


def check_journal(path: str | Path) -> list[str]:
    """Replay every run's completed steps from the state it observed; return what breaks.

    Steps of one run may complete out of plan order (independent steps run concurrently),
    but two steps that share a worker or an adapter never overlap, so the order of their
    ``done`` records is an order in which the steps could have run one by one; that order is
    replayed. For each run this checks (with :meth:`MigrationPlan.replay`) that the state it
    observed was consistent (every routed replica loaded), that no completed step broke
    make-before-break (an adapter routed to a worker without it, an unload of a replica
    still carrying traffic, a worker beyond its slots), and, for a complete run, that the
    end state is its target.

    Returns
    -------
    list of str
        One line per problem, naming the run; empty when the journal is sound.
    """
    problems: list[str] = []
    for run in read_runs(path):
        steps = run.steps
        slots = int(run.begin.get("slots", 1 << 30))
        done = MigrationPlan(steps=[steps[i] for i in run.done])
        target = run.target if run.status == "complete" else None
        for problem in done.replay(run.observed, slots, new=target):
            problems.append(f"run {run.run}: {problem}")
    return problems
