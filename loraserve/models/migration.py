"""Moving a running fleet from one placement plan to another without dropping an adapter.

:func:`plan_migration` turns a pair of plans into ordered *make-before-break* steps: new
replicas are loaded and traffic is moved onto them before old replicas are unloaded, so every
adapter that is served keeps at least one loaded replica carrying its traffic at every step.
:meth:`MigrationPlan.replay` re-executes the steps on a model of the fleet and reports every
broken invariant, so a migration can be checked without trusting the planner.
:func:`relabel` renames a freshly solved plan's GPUs to overlap the running plan as much as
possible (the LoRAServe paper's final relabelling), which is what keeps a migration short.

Step semantics
--------------
``start_gpu``
    Start a worker with ``--max-lora-rank`` ``tier``; it runs with no adapter loaded.
``load`` / ``unload``
    Load or unload one adapter on a running worker. ``temporary`` loads only keep an adapter
    live while its GPU restarts or while two full GPUs swap adapters; they are unloaded once
    the adapter's final route is in place.
``route``
    Replace an adapter's whole routing split (``gpu_id -> share``, summing to 1). An empty
    split ``{}`` *retires* the adapter: it is no longer served. Only adapters absent from the
    new plan are retired, after which their remaining replicas may be unloaded.
``drain``
    Take a worker out of service once no traffic is routed to it (wait for in-flight
    requests); it then only accepts ``restart_gpu`` or ``stop_gpu``.
``restart_gpu``
    Restart a drained worker at a new tier (or GPU type); everything it had loaded is dropped.
``stop_gpu``
    Stop a drained worker; everything it had loaded is dropped.

Only adapter slots (``serving.adapters_per_gpu``) and ranks (a temporary replica needs a GPU
whose tier is at least the adapter's rank) are respected while migrating; the extra compute
load a GPU takes while it briefly serves more traffic than planned, and the adapter cache
bytes of temporary replicas, are not modelled.
"""

from __future__ import annotations

import heapq
import logging
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Literal

import pandas as pd
import pulp
import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from loraserve.models.config import Config
from loraserve.models.io import parse_model, read_text, write_atomic
from loraserve.models.plan import TOLERANCE, GPUPlacement, PlacementPlan, _natural_key

logger = logging.getLogger(__name__)

#: Restart orders :func:`plan_migration` tries before it gives up.
_RESTART_ORDERS = 8

Action = Literal["start_gpu", "load", "route", "unload", "drain", "restart_gpu", "stop_gpu"]

#: Fields each action needs; checked when a step is built or read back from YAML.
_REQUIRED: dict[str, tuple[str, ...]] = {
    "start_gpu": ("gpu_id", "tier", "gpu_type"),
    "load": ("gpu_id", "adapter"),
    "route": ("adapter", "weights"),
    "unload": ("gpu_id", "adapter"),
    "drain": ("gpu_id",),
    "restart_gpu": ("gpu_id", "tier", "gpu_type"),
    "stop_gpu": ("gpu_id",),
}

# libyaml's emitter and parser when PyYAML was built with them: migrations of large fleets
# run to tens of thousands of steps, which the pure-Python ones take seconds over.
_Dumper: Any = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


def _gpu_key(gpu_id: str) -> tuple[str, int]:
    return _natural_key(gpu_id)


def _format_split(weights: dict[str, float]) -> str:
    return ", ".join(f"{g} {100 * w:.4g}%" for g, w in weights.items())


def _format_bytes(count: int) -> str:
    if count >= 2**30:
        return f"{count / 2**30:.2f} GiB"
    return f"{count / 2**20:.1f} MiB"


class MigrationStep(BaseModel):
    """One operation on the fleet; see the module docstring for each action's meaning.

    Parameters
    ----------
    action : {"start_gpu", "load", "route", "unload", "drain", "restart_gpu", "stop_gpu"}
        What to do.
    gpu_id : str, optional
        The worker acted on (every action but ``route``).
    adapter : str, optional
        The adapter loaded, unloaded or routed.
    tier : int, optional
        ``--max-lora-rank`` of a started or restarted worker.
    gpu_type : str, optional
        GPU type of a started or restarted worker.
    weights : dict, optional
        For ``route``: the adapter's complete new split, ``gpu_id -> share`` summing to 1;
        ``{}`` retires the adapter.
    bytes : int
        For ``load``: bytes of the adapter's weights.
    temporary : bool
        For ``load``: a replica that only keeps the adapter live during a restart or swap.
    reason : str
        Why the step is there, for people reading the plan.
    """

    model_config = ConfigDict(allow_inf_nan=False, frozen=True, extra="forbid")

    action: Action
    gpu_id: str | None = None
    adapter: str | None = None
    tier: int | None = None
    gpu_type: str | None = None
    weights: dict[str, float] | None = None
    bytes: int = Field(default=0, ge=0)
    temporary: bool = False
    reason: str = ""

    @model_validator(mode="after")
    def _fields_for_action(self) -> MigrationStep:
        missing = [name for name in _REQUIRED[self.action] if getattr(self, name) is None]
        if missing:
            raise ValueError(f"a {self.action} step needs {', '.join(missing)}")
        return self

    def __str__(self) -> str:
        text = self._describe()
        return f"{text} ({self.reason})" if self.reason else text

    def _describe(self) -> str:
        if self.action == "start_gpu":
            return f"start {self.gpu_id} ({self.gpu_type}, tier {self.tier})"
        if self.action == "load":
            extra = ", temporary" if self.temporary else ""
            return f"load {self.adapter} on {self.gpu_id} [{_format_bytes(self.bytes)}{extra}]"
        if self.action == "route":
            if not self.weights:
                return f"retire {self.adapter}: route no traffic to it"
            return f"route {self.adapter}: {_format_split(self.weights)}"
        if self.action == "unload":
            return f"unload {self.adapter} from {self.gpu_id}"
        if self.action == "drain":
            return f"drain {self.gpu_id}"
        if self.action == "restart_gpu":
            return f"restart {self.gpu_id} as {self.gpu_type} at tier {self.tier}"
        return f"stop {self.gpu_id}"


class MigrationPlan(BaseModel):
    """Ordered steps that take a fleet from one placement plan to another.

    Build it with :func:`plan_migration`; check it with :meth:`replay`.

    Parameters
    ----------
    steps : list of MigrationStep
        The operations, to be executed in order.
    """

    model_config = ConfigDict(allow_inf_nan=False, extra="forbid")

    format_version: Literal[1] = 1
    steps: list[MigrationStep] = Field(default_factory=list)

    def _count(self, action: str) -> int:
        return sum(1 for step in self.steps if step.action == action)

    @property
    def bytes_moved(self) -> int:
        """Bytes of adapter weights loaded, temporary replicas included."""
        return sum(step.bytes for step in self.steps if step.action == "load")

    @property
    def loads(self) -> int:
        """Number of ``load`` steps, temporary replicas included."""
        return self._count("load")

    @property
    def temporary_loads(self) -> int:
        """Number of ``load`` steps that only keep an adapter live during a restart or swap."""
        return sum(1 for step in self.steps if step.action == "load" and step.temporary)

    @property
    def reloads(self) -> int:
        """Loads, temporary ones aside, of an adapter back onto a GPU it was unloaded from.

        The planner unloads a final replica only as a last resort to make room for a
        temporary one during a restart; it is loaded again later. Together with
        :attr:`temporary_loads` these are the loads beyond :func:`migration_cost`'s.
        """
        unloaded: dict[str, set[str]] = defaultdict(set)
        count = 0
        for step in self.steps:
            gpu_id, adapter = step.gpu_id or "", step.adapter or ""
            if step.action in ("start_gpu", "restart_gpu", "stop_gpu"):
                unloaded.pop(gpu_id, None)
            elif step.action == "unload":
                unloaded[gpu_id].add(adapter)
            elif step.action == "load" and not step.temporary and adapter in unloaded[gpu_id]:
                unloaded[gpu_id].discard(adapter)
                count += 1
        return count

    @property
    def unloads(self) -> int:
        """Number of ``unload`` steps (restarts and stops drop adapters without one)."""
        return self._count("unload")

    @property
    def tier_changes(self) -> int:
        """Number of workers restarted at another tier or GPU type."""
        return self._count("restart_gpu")

    @property
    def gpus_started(self) -> int:
        """Number of workers started."""
        return self._count("start_gpu")

    @property
    def gpus_stopped(self) -> int:
        """Number of workers stopped."""
        return self._count("stop_gpu")

    def summary(self) -> dict[str, int | float]:
        """The migration's figures: steps, GPUs started/stopped/restarted, loads, bytes.

        Returns
        -------
        dict
            ``steps``, ``gpus_started``, ``gpus_stopped``, ``tier_changes``, ``loads``,
            ``temporary_loads``, ``reloads``, ``unloads``, ``routes``, ``bytes_moved`` (int)
            and ``gib_moved`` (float).
        """
        return {
            "steps": len(self.steps),
            "gpus_started": self.gpus_started,
            "gpus_stopped": self.gpus_stopped,
            "tier_changes": self.tier_changes,
            "loads": self.loads,
            "temporary_loads": self.temporary_loads,
            "reloads": self.reloads,
            "unloads": self.unloads,
            "routes": self._count("route"),
            "bytes_moved": self.bytes_moved,
            "gib_moved": round(self.bytes_moved / 2**30, 3),
        }

    def table(self) -> pd.DataFrame:
        """One row per step: number, action, GPU, adapter, tier, type, split, bytes, reason."""
        rows = [
            {
                "step": index,
                "action": step.action,
                "gpu_id": step.gpu_id,
                "adapter": step.adapter,
                "tier": step.tier,
                "gpu_type": step.gpu_type,
                "weights": None if step.weights is None else _format_split(step.weights),
                "bytes": step.bytes,
                "temporary": step.temporary,
                "reason": step.reason,
            }
            for index, step in enumerate(self.steps, start=1)
        ]
        return pd.DataFrame(rows, columns=[
            "step", "action", "gpu_id", "adapter", "tier", "gpu_type", "weights", "bytes",
            "temporary", "reason",
        ])

    # ---- serialisation -------------------------------------------------------------------

    def to_yaml(self) -> str:
        """Serialise to YAML (fields at their defaults are left out of each step)."""
        data = {
            "format_version": self.format_version,
            "steps": [step.model_dump(mode="json", exclude_defaults=True) for step in self.steps],
        }
        # One line per step (flow style for mappings of scalars) keeps long migrations legible.
        text: str = yaml.dump(data, Dumper=_Dumper, sort_keys=False, default_flow_style=None)
        return text

    @classmethod
    def from_yaml(cls, text: str, source: str = "migration") -> MigrationPlan:
        """Parse a migration from YAML text.

        Parameters
        ----------
        text : str
            What :meth:`to_yaml` wrote.
        source : str
            Name used at the start of error messages.

        Returns
        -------
        MigrationPlan

        Raises
        ------
        ConfigError
            One line naming the field when the text is not a valid migration.
        """
        return parse_model(cls, text, source, "a migration must be a mapping with a steps list")

    def save(self, path: str | Path) -> None:
        """Write the migration to ``path`` atomically (a failed write leaves the old file).

        Parameters
        ----------
        path : str or Path
            Destination file.
        """
        write_atomic(path, self.to_yaml())

    @classmethod
    def load(cls, path: str | Path) -> MigrationPlan:
        """Read a migration written by :meth:`save`.

        Parameters
        ----------
        path : str or Path
            The YAML file.

        Returns
        -------
        MigrationPlan

        Raises
        ------
        ConfigError
            When the file is missing or not a valid migration.
        """
        return cls.from_yaml(read_text(path), source=str(path))

    # ---- checking ------------------------------------------------------------------------

    def replay(
        self, old: PlacementPlan, slots: int, new: PlacementPlan | None = None
    ) -> list[str]:
        """Execute the steps on a model of the fleet running ``old``; return what breaks.

        The state is, per GPU, its tier, type, loaded adapters and whether it runs, drains or
        is stopped, and per adapter its routing split. After every step these invariants are
        checked (only what the step touched, which is equivalent to checking them all):

        (a) every adapter still served keeps a routing split summing to 1 whose GPUs all have
            it loaded; only a ``route`` to ``{}`` (retirement) ends that, and with ``new``
            given, retiring an adapter the new plan serves is reported too;
        (b) weight only points at running (started, not drained) GPUs that have the adapter
            loaded;
        (c) no GPU holds more than ``slots`` adapters;
        (d) ``restart_gpu``/``stop_gpu`` only act on a drained GPU that no traffic is routed
            to, and drop everything it had loaded;
        (e) an adapter is only unloaded from a GPU that no longer gets its traffic.

        Parameters
        ----------
        old : PlacementPlan
            The plan the fleet runs before the first step.
        slots : int
            Adapters one GPU may hold (``config.serving.adapters_per_gpu``).
        new : PlacementPlan, optional
            The plan the migration should reach; when given, differences between the end
            state and it (hosted adapters, tiers, types, running GPUs, routes within 1e-6) are
            reported as well.

        Returns
        -------
        list of str
            One line per problem, naming the step; empty when the migration is sound.
        """
        fleet = _Replay(old, slots)
        for index, step in enumerate(self.steps, start=1):
            fleet.apply(index, step, new)
        if new is not None:
            fleet.compare(new)
        return fleet.problems


# ---- replay ----------------------------------------------------------------------------------


class _Replay:
    """A literal model of the fleet, independent of the planner's bookkeeping."""

    def __init__(self, old: PlacementPlan, slots: int) -> None:
        self.slots = slots
        self.problems: list[str] = []
        self.status: dict[str, str] = {}  # running, draining or stopped
        self.tier: dict[str, int] = {}
        self.gpu_type: dict[str, str] = {}
        self.loaded: dict[str, set[str]] = {}
        self.routes: dict[str, dict[str, float]] = {}
        self.weighted: dict[str, set[str]] = defaultdict(set)
        for gpu in old.gpus:
            if gpu.gpu_id in self.status:
                self.problems.append(f"initial state: GPU {gpu.gpu_id} appears twice")
            self.status[gpu.gpu_id] = "running"
            self.tier[gpu.gpu_id] = gpu.tier
            self.gpu_type[gpu.gpu_id] = gpu.gpu_type
            self.loaded[gpu.gpu_id] = set(gpu.adapters)
            if len(self.loaded[gpu.gpu_id]) > slots:
                self.problems.append(f"initial state: (c) {gpu.gpu_id} holds "
                                     f"{len(self.loaded[gpu.gpu_id])} adapters; slots is {slots}")
        for adapter, split in sorted(old.routes.items()):
            positive = {g: w for g, w in split.items() if w > 0}
            if not positive:
                continue
            self.problems += [f"initial state: {p}" for p in self._split_problems(adapter, split)]
            self.routes[adapter] = positive
            for gpu_id in positive:
                self.weighted[gpu_id].add(adapter)

    def _split_problems(self, adapter: str, split: dict[str, float]) -> list[str]:
        problems: list[str] = []
        for gpu_id, weight in split.items():
            if weight < 0:
                problems.append(f"(a) {adapter} has negative weight {weight} on {gpu_id}")
            if weight <= 0:
                continue
            if self.status.get(gpu_id) != "running":
                state = self.status.get(gpu_id, "unknown")
                problems.append(f"(b) {adapter} is routed to {gpu_id}, which is {state}")
            elif adapter not in self.loaded[gpu_id]:
                problems.append(f"(b) {adapter} is routed to {gpu_id}, which does not have it "
                                "loaded")
        total = sum(w for w in split.values() if w > 0)
        if abs(total - 1.0) > TOLERANCE:
            problems.append(f"(a) {adapter}'s weights sum to {total:.6f}, not 1")
        return problems

    def apply(self, index: int, step: MigrationStep, new: PlacementPlan | None) -> None:
        where = f"step {index} ({step._describe()})"
        found: list[str] = []
        gpu_id = step.gpu_id or ""
        state = self.status.get(gpu_id, "unknown")
        if step.action == "start_gpu":
            if state in ("running", "draining"):
                found.append(f"{gpu_id} is already {state}")
            self.status[gpu_id] = "running"
            self.tier[gpu_id] = step.tier or 0
            self.gpu_type[gpu_id] = step.gpu_type or ""
            self.loaded[gpu_id] = set()
        elif step.action == "load":
            adapter = step.adapter or ""
            if state != "running":
                found.append(f"{gpu_id} is {state}; only a running GPU loads adapters")
            else:
                if adapter in self.loaded[gpu_id]:
                    found.append(f"{adapter} is already loaded on {gpu_id}")
                self.loaded[gpu_id].add(adapter)
                if len(self.loaded[gpu_id]) > self.slots:
                    found.append(f"(c) {gpu_id} now holds {len(self.loaded[gpu_id])} adapters; "
                                 f"slots is {self.slots}")
        elif step.action == "unload":
            adapter = step.adapter or ""
            if state not in ("running", "draining"):
                found.append(f"{gpu_id} is {state}")
            elif adapter not in self.loaded[gpu_id]:
                found.append(f"{adapter} is not loaded on {gpu_id}")
            else:
                weight = self.routes.get(adapter, {}).get(gpu_id, 0.0)
                if weight > 0:
                    found.append(f"(e) {gpu_id} still gets {weight:.4g} of {adapter}'s traffic")
                self.loaded[gpu_id].discard(adapter)
        elif step.action == "route":
            self._route(step, new, found)
        elif step.action == "drain":
            if state != "running":
                found.append(f"{gpu_id} is {state}; only a running GPU drains")
            else:
                self.status[gpu_id] = "draining"
            if self.weighted.get(gpu_id):
                found.append(f"(b) {gpu_id} is drained while it still gets traffic of "
                             f"{', '.join(sorted(self.weighted[gpu_id]))}")
        else:  # restart_gpu, stop_gpu
            if state != "draining":
                found.append(f"(d) {gpu_id} is {state}, not drained")
            if self.weighted.get(gpu_id):
                found.append(f"(d) {gpu_id} still gets traffic of "
                             f"{', '.join(sorted(self.weighted[gpu_id]))}")
            if state in ("running", "draining"):
                self.loaded[gpu_id] = set()
                if step.action == "restart_gpu":
                    self.status[gpu_id] = "running"
                    self.tier[gpu_id] = step.tier or 0
                    self.gpu_type[gpu_id] = step.gpu_type or ""
                else:
                    self.status[gpu_id] = "stopped"
        self.problems += [f"{where}: {problem}" for problem in found]

    def _route(self, step: MigrationStep, new: PlacementPlan | None, found: list[str]) -> None:
        adapter = step.adapter or ""
        split = step.weights or {}
        if split:
            found += self._split_problems(adapter, split)
        elif new is not None and any(w > 0 for w in new.routes.get(adapter, {}).values()):
            found.append(f"(a) {adapter} is retired but the new plan serves it")
        for gpu_id in self.routes.get(adapter, {}):
            self.weighted[gpu_id].discard(adapter)
        positive = {g: w for g, w in split.items() if w > 0}
        self.routes[adapter] = positive
        for gpu_id in positive:
            self.weighted[gpu_id].add(adapter)

    def compare(self, new: PlacementPlan) -> None:
        wanted = {gpu.gpu_id: gpu for gpu in new.gpus}
        for gpu_id in sorted(set(self.status) | set(wanted), key=_gpu_key):
            state = self.status.get(gpu_id, "absent")
            target = wanted.get(gpu_id)
            if target is None:
                if state in ("running", "draining"):
                    self.problems.append(f"final state: {gpu_id} is still {state}; the new "
                                         "plan does not use it")
                continue
            if state != "running":
                self.problems.append(f"final state: {gpu_id} is {state}; the new plan runs it")
                continue
            if (self.tier[gpu_id], self.gpu_type[gpu_id]) != (target.tier, target.gpu_type):
                self.problems.append(
                    f"final state: {gpu_id} runs {self.gpu_type[gpu_id]} at tier "
                    f"{self.tier[gpu_id]}; the new plan has {target.gpu_type} at tier "
                    f"{target.tier}")
            missing = set(target.adapters) - self.loaded[gpu_id]
            extra = self.loaded[gpu_id] - set(target.adapters)
            if missing:
                self.problems.append(f"final state: {gpu_id} lacks {', '.join(sorted(missing))}")
            if extra:
                self.problems.append(f"final state: {gpu_id} still holds "
                                     f"{', '.join(sorted(extra))}")
        for adapter in sorted(set(self.routes) | set(new.routes)):
            want = {g: w for g, w in new.routes.get(adapter, {}).items() if w > 0}
            have = self.routes.get(adapter, {})
            if set(want) != set(have) or any(abs(want[g] - have[g]) > TOLERANCE for g in want):
                self.problems.append(
                    f"final state: {adapter} is routed {{{_format_split(have)}}}; the new plan "
                    f"routes it {{{_format_split(want)}}}")


# ---- planning --------------------------------------------------------------------------------


def _positive(split: dict[str, float]) -> dict[str, float]:
    return {g: w for g, w in split.items() if w > 0}


def _same_split(a: dict[str, float], b: dict[str, float]) -> bool:
    return set(a) == set(b) and all(abs(a[g] - b[g]) <= TOLERANCE for g in a)


def _check_plan(plan: PlacementPlan, name: str) -> dict[str, GPUPlacement]:
    """Index ``plan``'s GPUs by id after checking that its routes point at hosting GPUs."""
    gpus: dict[str, GPUPlacement] = {}
    for gpu in plan.gpus:
        if gpu.gpu_id in gpus:
            raise ValueError(f"{name} plan: GPU {gpu.gpu_id} appears twice")
        gpus[gpu.gpu_id] = gpu
    hosted = {gpu_id: set(gpu.adapters) for gpu_id, gpu in gpus.items()}
    for adapter, split in plan.routes.items():
        for gpu_id, weight in split.items():
            if weight < 0:
                raise ValueError(f"{name} plan: {adapter} has negative weight on {gpu_id}")
            if weight > 0 and adapter not in hosted.get(gpu_id, ()):
                raise ValueError(f"{name} plan: {adapter} is routed to {gpu_id}, which does "
                                 "not host it")
        total = sum(_positive(split).values())
        if total > 0 and abs(total - 1.0) > TOLERANCE:
            raise ValueError(f"{name} plan: {adapter}'s weights sum to {total:.6f}, not 1")
    return gpus


class _NoRoomError(ValueError):
    """No slot for a replica that must stay live; ``restarting`` names the GPU restarting."""

    def __init__(self, message: str, restarting: str | None) -> None:
        super().__init__(message)
        self.restarting = restarting


class _FreeSlots:
    """Running GPUs with a free slot, cheapest first: (stays in the new plan, load, id).

    One lazy heap per tier, so that a temporary replica of a rank-``r`` adapter finds the
    best GPU of tier >= ``r`` without scanning the fleet; stale entries are dropped when
    they surface.
    """

    def __init__(self, planner: _Planner) -> None:
        self.planner = planner
        self.heaps: dict[int, list[tuple[int, int, tuple[str, int], str]]] = defaultdict(list)

    def _entry(self, gpu_id: str) -> tuple[int, int, tuple[str, int], str] | None:
        p = self.planner
        if gpu_id not in p.running or gpu_id in p.draining:
            return None
        count = len(p.loaded[gpu_id])
        if count >= p.slots:
            return None
        return (0 if gpu_id in p.ready else 1, count, _gpu_key(gpu_id), gpu_id)

    def update(self, gpu_id: str) -> None:
        entry = self._entry(gpu_id)
        if entry is not None:
            heapq.heappush(self.heaps[self.planner.tier[gpu_id]], entry)

    def best(self, rank: int) -> str | None:
        found: tuple[int, int, tuple[str, int], str] | None = None
        for tier, heap in self.heaps.items():
            if tier < rank:
                continue
            while heap and (self._entry(heap[0][3]) != heap[0]
                            or self.planner.tier[heap[0][3]] != tier):
                heapq.heappop(heap)
            if heap and (found is None or heap[0] < found):
                found = heap[0]
        return None if found is None else found[3]


class _Planner:
    """Greedy make-before-break planner; its state mirrors what :class:`_Replay` models.

    Work is driven by a queue of GPUs that miss target adapters. *Urgent* loads come first:
    a replica of the final split of an adapter that is relocating (not yet on its final split
    and holding a slot elsewhere) when none of that split's GPUs waits for a restart, because
    it lets the adapter switch and free its old slot at once. Other loads (extra replicas,
    zero-weight ones, splits that wait for a restart) wait until nothing else is left, so
    free slots stay available to break swap cycles and to host adapters while a GPU
    restarts. When the queue is empty: restart the next GPU, else break a swap cycle, else
    allow the other loads, else finish.
    """

    def __init__(self, old: PlacementPlan, new: PlacementPlan, config: Config,
                 postponed: frozenset[str] = frozenset()) -> None:
        self.slots = config.serving.adapters_per_gpu
        self.postponed = postponed
        self.steps: list[MigrationStep] = []
        old_gpus = _check_plan(old, "old")
        new_gpus = _check_plan(new, "new")
        if old.base_model != new.base_model:
            raise ValueError(f"the old plan serves {old.base_model} and the new one "
                             f"{new.base_model}; a migration cannot change the base model")
        for gpu_id, gpu in new_gpus.items():
            if len(set(gpu.adapters)) > self.slots:
                raise ValueError(f"new plan: {gpu_id} hosts {len(set(gpu.adapters))} adapters; "
                                 f"the config allows {self.slots} per GPU")

        # Targets: what the new plan hosts and how it routes.
        self.new_gpus = new_gpus
        self.target: dict[str, frozenset[str]] = {
            gpu_id: frozenset(gpu.adapters) for gpu_id, gpu in new_gpus.items()}
        self.final: dict[str, dict[str, float]] = {
            a: _positive(split) for a, split in new.routes.items() if _positive(split)}
        self.targets_of: dict[str, set[str]] = defaultdict(set)
        for gpu_id, hosted in self.target.items():
            for adapter in hosted:
                self.targets_of[adapter].add(gpu_id)
        known = {a.id: a for a in config.adapters}
        self.size: dict[str, int] = {}
        self.rank: dict[str, int] = {}
        for adapter in sorted(self.targets_of):
            if adapter not in known:
                raise ValueError(f"new plan: adapter {adapter} is not in the config")
            self.size[adapter] = config.adapter_bytes(known[adapter])
            self.rank[adapter] = known[adapter].rank

        # The fleet as it runs now.
        self.running: set[str] = set(old_gpus)
        self.tier: dict[str, int] = {g: gpu.tier for g, gpu in old_gpus.items()}
        self.gpu_type: dict[str, str] = {g: gpu.gpu_type for g, gpu in old_gpus.items()}
        self.loaded: dict[str, set[str]] = {g: set(gpu.adapters) for g, gpu in old_gpus.items()}
        self.holders: dict[str, set[str]] = defaultdict(set)
        for gpu_id, hosted_now in self.loaded.items():
            for adapter in hosted_now:
                self.holders[adapter].add(gpu_id)
        self.weights: dict[str, dict[str, float]] = {
            a: _positive(split) for a, split in old.routes.items() if _positive(split)}
        self.weighted_on: dict[str, set[str]] = defaultdict(set)
        for adapter, split in self.weights.items():
            for gpu_id in split:
                self.weighted_on[gpu_id].add(adapter)

        # Which GPUs keep running as they are, which restart, start or stop.
        self.added = sorted(set(new_gpus) - set(old_gpus), key=_gpu_key)
        self.removed = sorted(set(old_gpus) - set(new_gpus), key=_gpu_key)
        self.changed: set[str] = {
            g for g in set(old_gpus) & set(new_gpus)
            if (old_gpus[g].tier, old_gpus[g].gpu_type) != (new_gpus[g].tier, new_gpus[g].gpu_type)
        }
        # ready: running at its final tier and type, in the new plan.
        self.ready: set[str] = (set(old_gpus) & set(new_gpus)) - self.changed
        self.draining: set[str] = set()
        self.missing: dict[str, set[str]] = {
            g: set(self.target[g] - self.loaded[g]) for g in self.ready}
        # stray[a]: a's replicas that are not final (wrong GPU, or a GPU still to restart).
        self.stray: dict[str, int] = defaultdict(int)
        for gpu_id, hosted_now in self.loaded.items():
            for adapter in hosted_now:
                if self._is_stray(gpu_id, adapter):
                    self.stray[adapter] += 1
        # waiting[a]: GPUs of a's final split that do not serve it yet.
        self.waiting: dict[str, int] = {
            a: sum(1 for g in split if not (g in self.ready and a in self.loaded[g]))
            for a, split in self.final.items()}
        self.finalized: set[str] = set()
        # unrestarted[a]: GPUs of a's final split still to restart.
        self.unrestarted: dict[str, int] = {
            a: sum(1 for g in split if g in self.changed) for a, split in self.final.items()}

        self.queue: list[tuple[tuple[str, int], str]] = []
        self.queued: set[str] = set()
        self.blocked: set[str] = set()
        self.displaced: set[tuple[str, str]] = set()
        self.allow_extra = False
        self.free = _FreeSlots(self)
        for gpu_id in self.running:
            self.free.update(gpu_id)
        # Restart order: GPUs whose adapters need no temporary replica first.
        self.homeless: dict[str, int] = {}
        self.restart_heap: list[tuple[bool, int, tuple[str, int], str]] = []
        self.dirty: set[str] = set(self.changed)

    # ---- bookkeeping -----------------------------------------------------------------------

    def _is_stray(self, gpu_id: str, adapter: str) -> bool:
        return gpu_id not in self.ready or adapter not in self.target[gpu_id]

    def _relocating(self, adapter: str) -> bool:
        return (adapter in self.final and adapter not in self.finalized
                and self.stray[adapter] > 0)

    def _urgent(self, adapter: str, gpu_id: str) -> bool:
        # A replica the adapter's final split needs, while it still holds a slot elsewhere,
        # and no GPU of that split waits for a restart: loading it lets the adapter switch
        # at once and free that slot. Other loads only take a slot for now.
        return (self._relocating(adapter) and self.final[adapter].get(gpu_id, 0.0) > 0
                and self.unrestarted[adapter] == 0)

    def _push(self, gpu_id: str) -> None:
        if gpu_id in self.ready and self.missing[gpu_id] and gpu_id not in self.queued:
            self.queued.add(gpu_id)
            heapq.heappush(self.queue, (_gpu_key(gpu_id), gpu_id))

    def _touch(self, adapter: str) -> None:
        for gpu_id in self.weights.get(adapter, {}):
            if gpu_id in self.changed:
                self.dirty.add(gpu_id)

    def _emit(self, **fields: Any) -> None:
        self.steps.append(MigrationStep.model_construct(**fields))

    # ---- the steps, applied to the state ----------------------------------------------------

    def _start(self, gpu_id: str) -> None:
        gpu = self.new_gpus[gpu_id]
        self._emit(action="start_gpu", gpu_id=gpu_id, tier=gpu.tier, gpu_type=gpu.gpu_type,
                   reason="new in the plan")
        self.running.add(gpu_id)
        self.tier[gpu_id] = gpu.tier
        self.gpu_type[gpu_id] = gpu.gpu_type
        self.loaded[gpu_id] = set()
        self.ready.add(gpu_id)
        self.missing[gpu_id] = set(self.target[gpu_id])
        self.free.update(gpu_id)
        self._push(gpu_id)

    def _load(self, gpu_id: str, adapter: str, reason: str, temporary: bool = False) -> None:
        self._emit(action="load", gpu_id=gpu_id, adapter=adapter, bytes=self.size[adapter],
                   temporary=temporary, reason=reason)
        self.loaded[gpu_id].add(adapter)
        self.holders[adapter].add(gpu_id)
        self.free.update(gpu_id)
        self._touch(adapter)
        if self._is_stray(gpu_id, adapter):
            self.stray[adapter] += 1
            if self.stray[adapter] == 1:
                # Now relocating: its missing final replicas take priority.
                for target in self.targets_of[adapter]:
                    if target in self.ready and adapter in self.missing[target]:
                        self._push(target)
        # A second replica makes it cheap to evict wherever it blocks a GPU.
        for holder in self.holders[adapter]:
            if holder in self.blocked:
                self._push(holder)
        if gpu_id in self.ready and adapter in self.missing[gpu_id]:
            self.missing[gpu_id].discard(adapter)
            if self.final.get(adapter, {}).get(gpu_id, 0.0) > 0:
                self.waiting[adapter] -= 1
                if self.waiting[adapter] == 0:
                    self._finalize(adapter)

    def _unload(self, gpu_id: str, adapter: str, reason: str) -> None:
        self._emit(action="unload", gpu_id=gpu_id, adapter=adapter, reason=reason)
        self.loaded[gpu_id].discard(adapter)
        self.holders[adapter].discard(gpu_id)
        if self._is_stray(gpu_id, adapter):
            self.stray[adapter] -= 1
        self._touch(adapter)
        self.free.update(gpu_id)
        self._push(gpu_id)

    def _route(self, adapter: str, split: dict[str, float], reason: str) -> None:
        split = dict(sorted(_positive(split).items(), key=lambda kv: _gpu_key(kv[0])))
        self._emit(action="route", adapter=adapter, weights=split, reason=reason)
        self._touch(adapter)
        for gpu_id in self.weights.get(adapter, {}):
            self.weighted_on[gpu_id].discard(adapter)
        self.weights[adapter] = split
        for gpu_id in split:
            self.weighted_on[gpu_id].add(adapter)
        self._touch(adapter)

    def _finalize(self, adapter: str) -> None:
        """Route ``adapter`` to its final split and unload the replicas it no longer needs."""
        self.finalized.add(adapter)
        if not _same_split(self.weights.get(adapter, {}), self.final[adapter]):
            self._route(adapter, self.final[adapter], "final split")
        for gpu_id in sorted(self.holders[adapter], key=_gpu_key):
            # Workers about to restart or stop drop their adapters anyway.
            if gpu_id in self.ready and adapter not in self.target[gpu_id]:
                self._unload(gpu_id, adapter, "not in the new plan here")

    # ---- choices ------------------------------------------------------------------------

    def _split_without(self, adapter: str, gpu_id: str) -> dict[str, float] | None:
        """A split for ``adapter`` on its other live replicas, or None if it has none."""
        others = [h for h in self.holders[adapter]
                  if h != gpu_id and h in self.running and h not in self.draining]
        if not others:
            return None
        targets = self.targets_of.get(adapter, set())
        best = ([h for h in others if h in self.ready and h in targets]
                or [h for h in others if h in self.ready] or others)
        current = self.weights.get(adapter, {})
        base = {h: current.get(h, 0.0) for h in best}
        if sum(base.values()) <= 0:
            final = self.final.get(adapter, {})
            base = {h: final.get(h, 0.0) for h in best}
        if sum(base.values()) <= 0:
            base = dict.fromkeys(best, 1.0)
        total = sum(base.values())
        return {h: w / total for h, w in base.items() if w > 0}

    def _try_evict(self, gpu_id: str, adapter: str, reason: str) -> bool:
        """Unload ``adapter`` from ``gpu_id`` if its traffic can go elsewhere.

        Elsewhere is another live replica, or else a replica the new plan needs anyway, on a
        GPU with a free slot; nothing temporary is loaded.
        """
        if self.weights.get(adapter, {}).get(gpu_id, 0.0) > 0:
            split = self._split_without(adapter, gpu_id)
            if split is None and adapter in self.final:
                home = self._free_target(adapter)
                if home is None:
                    return False
                self._load(home, adapter, "new replica")
                split = self._split_without(adapter, gpu_id)
            # The load may have completed the adapter's final split, which moved it already.
            if gpu_id in self.weights.get(adapter, {}):
                if split is None:
                    self._route(adapter, {}, "retired: not in the new plan")
                else:
                    self._route(adapter, split, f"move traffic off {gpu_id}")
        if adapter in self.loaded[gpu_id]:
            self._unload(gpu_id, adapter, reason)
        return True

    def _evict(self, gpu_id: str, reason: str) -> bool:
        """Free one slot on ``gpu_id`` without loading anything; False if none is cheap."""
        leaving = [a for a in self.loaded[gpu_id] if self._is_stray(gpu_id, a)]
        leaving.sort(key=lambda a: (self.weights.get(a, {}).get(gpu_id, 0.0) > 0,
                                    a in self.final, a))
        return any(self._try_evict(gpu_id, adapter, reason) for adapter in leaving)

    def _free_target(self, adapter: str) -> str | None:
        """A GPU of the new plan that misses ``adapter`` and has a free slot, if any."""
        for gpu_id in sorted(self.targets_of.get(adapter, ()), key=_gpu_key):
            if (gpu_id in self.ready and adapter in self.missing[gpu_id]
                    and len(self.loaded[gpu_id]) < self.slots):
                return gpu_id
        return None

    def _temporary_host(self, adapter: str, displace: bool = False) -> str | None:
        """A running GPU with a free slot for an extra replica, emptying one if needed.

        A GPU of the new plan that is to host the adapter anyway comes first: the replica is
        then final, not temporary. With ``displace``, a last resort before giving up may
        unload a final replica whose adapter has another live one (it is loaded again later).
        """
        home = self._free_target(adapter)
        if home is not None:
            return home
        rank = self.rank[adapter]
        host = self.free.best(rank)
        if host is not None:
            return host
        # Every slot is taken: free one on a GPU whose surplus adapter can leave cheaply.
        candidates = sorted(
            (g for g in self.running
             if g not in self.draining and self.tier[g] >= rank and adapter not in self.loaded[g]),
            key=lambda g: (g not in self.ready, _gpu_key(g)))
        for gpu_id in candidates:
            while (len(self.loaded[gpu_id]) >= self.slots
                   and self._evict(gpu_id, f"make room for a temporary {adapter}")):
                pass
            if len(self.loaded[gpu_id]) < self.slots:
                return gpu_id
        if displace:
            for gpu_id in candidates:
                if len(self.loaded[gpu_id]) == self.slots and self._displace(gpu_id, adapter):
                    return gpu_id
        return None

    def _displace(self, gpu_id: str, adapter: str) -> bool:
        """Unload a final replica from ``gpu_id`` whose adapter stays live elsewhere."""
        if gpu_id not in self.ready:
            return False
        hosted = sorted(self.loaded[gpu_id] & self.target[gpu_id],
                        key=lambda a: (self.weights.get(a, {}).get(gpu_id, 0.0) > 0, a))
        for other in hosted:
            split = self._split_without(other, gpu_id)
            if split is None:
                continue
            if self.weights.get(other, {}).get(gpu_id, 0.0) > 0:
                self._route(other, split, f"move traffic off {gpu_id}")
            self._unload(gpu_id, other, f"make room for a temporary {adapter}; reloaded later")
            self.missing[gpu_id].add(other)
            self.displaced.add((gpu_id, other))
            if self.final.get(other, {}).get(gpu_id, 0.0) > 0:
                self.waiting[other] += 1
                self.finalized.discard(other)
            return True
        return False

    def _park(self, host: str, adapter: str, reason: str) -> None:
        if host in self.ready and adapter in self.target[host]:
            self._load(host, adapter, "new replica")  # a final replica, as it happens
        else:
            self._load(host, adapter, reason, temporary=True)

    def _no_room(self, adapter: str, gpu_id: str, why: str) -> _NoRoomError:
        rank = self.rank.get(adapter, 0)
        restarting = gpu_id if why == "restarts" else None
        others = sum(1 for g in self.running
                     if g != gpu_id and g not in self.draining and self.tier[g] >= rank)
        if others == 0:
            return _NoRoomError(
                f"no free adapter slot to keep {adapter} live while {gpu_id} {why}: no other "
                f"running GPU has tier >= {rank}; add one to the new plan (or leave {gpu_id} as "
                "it is) and plan the migration again", restarting)
        return _NoRoomError(
            f"no free adapter slot to keep {adapter} live while {gpu_id} {why}: every other "
            f"running GPU of tier >= {rank} holds {self.slots} adapters that cannot move yet; "
            "free one slot (a spare GPU, or a larger serving.max_cpu_loras) and plan the "
            "migration again", restarting)

    # ---- phases -------------------------------------------------------------------------

    def _fill(self, gpu_id: str) -> None:
        """Load the target adapters ``gpu_id`` misses, evicting surplus ones to make room."""
        wanted = [a for a in self.missing[gpu_id] if self.allow_extra or self._urgent(a, gpu_id)]
        wanted.sort(key=lambda a: (not self._urgent(a, gpu_id), a))
        for adapter in wanted:
            if adapter not in self.missing[gpu_id]:
                continue
            while len(self.loaded[gpu_id]) >= self.slots:
                if not self._evict(gpu_id, f"make room for {adapter}"):
                    self.blocked.add(gpu_id)
                    return
            displaced = (gpu_id, adapter) in self.displaced
            self._load(gpu_id, adapter, "reload" if displaced else "new replica")
        self.blocked.discard(gpu_id)

    def _run_queue(self) -> None:
        while self.queue:
            _, gpu_id = heapq.heappop(self.queue)
            self.queued.discard(gpu_id)
            self._fill(gpu_id)

    def _break_cycle(self, gpu_id: str) -> None:
        """Park one surplus adapter of the full ``gpu_id`` on a temporary replica."""
        self.blocked.discard(gpu_id)
        self._fill(gpu_id)
        if gpu_id not in self.blocked:
            return
        leaving = sorted(a for a in self.loaded[gpu_id] if a not in self.target[gpu_id])
        for adapter in leaving:
            if adapter not in self.final:
                continue
            host = self._temporary_host(adapter)
            if host is None:
                continue
            self._park(host, adapter, f"keep {adapter} live while {gpu_id} swaps adapters")
            # The load may have completed the adapter's final split, which moves it already.
            if self.weights.get(adapter, {}).get(gpu_id, 0.0) > 0:
                split = self._split_without(adapter, gpu_id)
                assert split is not None
                self._route(adapter, split, f"move traffic off {gpu_id}")
            if adapter in self.loaded[gpu_id]:
                self._unload(gpu_id, adapter, "make room for the new plan's adapters")
            self.blocked.discard(gpu_id)
            self._push(gpu_id)
            return
        raise self._no_room(leaving[0] if leaving else "an adapter", gpu_id,
                            "swaps adapters with other full GPUs")

    def _homeless(self, gpu_id: str) -> int:
        return sum(1 for a in self.weighted_on[gpu_id]
                   if not any(h != gpu_id and h in self.running for h in self.holders[a]))

    def _next_restart(self) -> str:
        for gpu_id in self.dirty:
            if gpu_id in self.changed:
                count = self._homeless(gpu_id)
                if self.homeless.get(gpu_id) != count:
                    self.homeless[gpu_id] = count
                    heapq.heappush(self.restart_heap, (gpu_id in self.postponed, count,
                                                       _gpu_key(gpu_id), gpu_id))
        self.dirty.clear()
        while True:
            _, count, _, gpu_id = self.restart_heap[0]
            if gpu_id in self.changed and self.homeless[gpu_id] == count:
                return gpu_id
            heapq.heappop(self.restart_heap)

    def _restart(self, gpu_id: str) -> None:
        """Move traffic off ``gpu_id``, drain it and restart it at its new tier."""
        self.draining.add(gpu_id)
        for adapter in sorted(self.weighted_on[gpu_id]):
            split = self._split_without(adapter, gpu_id)
            if split is None and adapter in self.final:
                host = self._temporary_host(adapter, displace=True)
                if host is None:
                    raise self._no_room(adapter, gpu_id, "restarts")
                self._park(host, adapter, f"keep {adapter} live while {gpu_id} restarts")
                split = self._split_without(adapter, gpu_id)
            # Making room or a completed final split may have moved its traffic already.
            if gpu_id not in self.weights.get(adapter, {}):
                continue
            if split is None:
                self._route(adapter, {}, "retired: not in the new plan")
            else:
                self._route(adapter, split, f"move traffic off {gpu_id} before its restart")
        old_tier, old_type = self.tier[gpu_id], self.gpu_type[gpu_id]
        gpu = self.new_gpus[gpu_id]
        self._emit(action="drain", gpu_id=gpu_id, reason="before its restart")
        change = (f"tier {old_tier} -> {gpu.tier}" if old_type == gpu.gpu_type
                  else f"{old_type} -> {gpu.gpu_type}")
        self._emit(action="restart_gpu", gpu_id=gpu_id, tier=gpu.tier, gpu_type=gpu.gpu_type,
                   reason=change)
        for adapter in self.loaded[gpu_id]:
            self.holders[adapter].discard(gpu_id)
            self.stray[adapter] -= 1
            self._touch(adapter)
        self.loaded[gpu_id] = set()
        self.tier[gpu_id], self.gpu_type[gpu_id] = gpu.tier, gpu.gpu_type
        self.changed.discard(gpu_id)
        self.draining.discard(gpu_id)
        self.ready.add(gpu_id)
        self.missing[gpu_id] = set(self.target[gpu_id])
        self.free.update(gpu_id)
        self._push(gpu_id)
        for adapter in sorted(self.target[gpu_id]):
            if self.final.get(adapter, {}).get(gpu_id, 0.0) > 0:
                self.unrestarted[adapter] -= 1
                if self.unrestarted[adapter] == 0:
                    for other in self.final[adapter]:
                        self._push(other)

    def _stop(self, gpu_id: str) -> None:
        self.draining.add(gpu_id)
        for adapter in sorted(self.weighted_on[gpu_id]):
            # By now only adapters absent from the new plan can still be routed here.
            split = self._split_without(adapter, gpu_id)
            if split is None:
                self._route(adapter, {}, "retired: not in the new plan")
            else:
                self._route(adapter, split, f"move traffic off {gpu_id}")
        self._emit(action="drain", gpu_id=gpu_id, reason="not in the new plan")
        self._emit(action="stop_gpu", gpu_id=gpu_id, reason="not in the new plan")
        for adapter in self.loaded[gpu_id]:
            self.holders[adapter].discard(gpu_id)
            self.stray[adapter] -= 1
            self._touch(adapter)
        self.loaded[gpu_id] = set()
        self.running.discard(gpu_id)
        self.draining.discard(gpu_id)

    def run(self) -> MigrationPlan:
        for gpu_id in self.added:
            self._start(gpu_id)
        # Adapters whose final replicas are already in place switch right away, freeing slots.
        for adapter in sorted(self.final):
            if self.waiting[adapter] == 0:
                self._finalize(adapter)
        for gpu_id in sorted(self.ready, key=_gpu_key):
            self._push(gpu_id)
        while True:
            self._run_queue()
            if self.changed:
                self._restart(self._next_restart())
            elif self.blocked:
                self._break_cycle(min(self.blocked, key=_gpu_key))
            elif not self.allow_extra:
                self.allow_extra = True
                for gpu_id in sorted(self.ready, key=_gpu_key):
                    self._push(gpu_id)
            else:
                break
        for adapter in sorted(self.weights):
            if adapter not in self.final and self.weights[adapter]:
                self._route(adapter, {}, "retired: not in the new plan")
        for gpu_id in sorted(self.ready, key=_gpu_key):
            for adapter in sorted(self.loaded[gpu_id] - self.target[gpu_id]):
                self._unload(gpu_id, adapter, "not in the new plan here")
        for gpu_id in self.removed:
            self._stop(gpu_id)
        unfinished = sorted(set(self.final) - self.finalized)
        if unfinished or any(self.missing.values()):
            raise RuntimeError(f"migration planner left {unfinished[:5]} unfinished; "
                               "this is a bug")
        return MigrationPlan(steps=self.steps)


def plan_migration(old: PlacementPlan, new: PlacementPlan, config: Config) -> MigrationPlan:
    """Ordered make-before-break steps that take the fleet from ``old`` to ``new``.

    The order is: start the GPUs new in ``new``; load missing replicas, moving an adapter's
    traffic to its final split as soon as all of its final replicas are loaded and then
    unloading the replicas it no longer needs (temporary ones included); where a GPU's slots
    are full of adapters that leave, shift their traffic to their other live replicas (or to a
    replica ``new`` needs anyway) and unload them first. Loads that let an adapter switch and
    free a slot come before loads that only add a replica, so free slots stay available for
    the steps below. GPUs whose tier or type changes are drained (traffic moved to other live
    replicas, on a temporary replica where an adapter has no other), restarted and loaded,
    one at a time, those needing the fewest temporary replicas first. Adapters absent from
    ``new`` keep being served until their slot is needed or the end, then are retired (routed
    to ``{}``). GPUs absent from ``new`` are drained and stopped last; a stop or restart drops
    what the worker had loaded without ``unload`` steps.

    Swap cycles between full GPUs are broken by parking one adapter on a temporary replica on
    the running GPU with a free slot that is cheapest to borrow (one that stays in ``new``
    first, then the least loaded, then the lowest id), of a tier at least the adapter's rank;
    when no slot is free, one is made by moving a surplus replica that has somewhere to go.
    Only to keep an adapter live during a restart may a final replica whose adapter has
    another live one be unloaded and loaded again later (:attr:`MigrationPlan.reloads`).
    The plan is greedy: when a restart finds no room, planning starts again with that restart
    postponed (up to 8 orders) before giving up.

    Throughout, the fleet runs at most the GPUs of ``old`` and ``new`` together; the pool must
    hold them (:func:`relabel` keeps their union small).

    Parameters
    ----------
    old : PlacementPlan
        The plan the fleet runs now.
    new : PlacementPlan
        The plan to reach, with GPU ids matched to ``old`` (see :func:`relabel`).
    config : Config
        Gives adapter sizes and ranks and the slots per GPU; adapters of ``new`` must be in it
        (adapters only in ``old`` need not be).

    Returns
    -------
    MigrationPlan
        Deterministic steps (ties broken by ids); empty when the plans are the same.

    Raises
    ------
    ValueError
        When a plan routes an adapter to a GPU that does not host it, a GPU id appears twice,
        the plans are for different base models, a GPU of ``new`` hosts more adapters than
        the config allows, an adapter of ``new`` is not in the config, or, rarely, a restart
        or swap needs a slot for a temporary replica and every other running GPU that could
        take it (tier at least the adapter's rank) is full of adapters that cannot move yet;
        the message says which adapter and GPU. Without tier limits this happens when every
        GPU of both plans is full, or when a restart leaves no more slots than the adapters
        both plans serve (then only a perfect packing would do, which is not searched for).
    """
    started = time.perf_counter()
    postponed: frozenset[str] = frozenset()
    while True:
        try:
            plan = _Planner(old, new, config, postponed).run()
            break
        except _NoRoomError as exc:
            # The restart order is greedy; a restart that found no room may well find it
            # once others (raising a tier, say) went first. Plan again with it postponed.
            if (exc.restarting is None or exc.restarting in postponed
                    or len(postponed) + 1 >= _RESTART_ORDERS):
                raise
            logger.info("migration: %s; planning again with that restart postponed", exc)
            postponed |= {exc.restarting}
    logger.info("migration: %d steps in %.3f s", len(plan.steps), time.perf_counter() - started)
    return plan


def migration_cost(old: PlacementPlan, new: PlacementPlan, config: Config) -> dict[str, int]:
    """What any migration from ``old`` to ``new`` must do, computed without planning steps.

    Counts the loads of replicas ``new`` needs that are not already running (every adapter of
    a GPU that is started or restarted, and the new adapters of a GPU that keeps its tier and
    type), the restarts and the GPUs started and stopped: the least any migration loads.
    Temporary replicas, which depend on the order of steps, are not included:
    :func:`plan_migration`'s ``loads`` and ``bytes_moved`` are these plus its temporary loads
    and its (rare) reloads (see :attr:`MigrationPlan.reloads`).

    Parameters
    ----------
    old, new : PlacementPlan
        The plan running now and the plan to reach.
    config : Config
        Gives adapter sizes; adapters of ``new`` must be in it.

    Returns
    -------
    dict
        ``bytes_to_load``, ``loads``, ``tier_changes``, ``gpus_started``, ``gpus_stopped``.

    Raises
    ------
    ValueError
        When an adapter ``new`` hosts is not in the config.
    """
    known = {a.id: a for a in config.adapters}
    before = {gpu.gpu_id: gpu for gpu in old.gpus}
    after_ids = {gpu.gpu_id for gpu in new.gpus}
    loads = 0
    size = 0
    restarts = 0
    started = 0
    for gpu in new.gpus:
        previous = before.get(gpu.gpu_id)
        if previous is None:
            started += 1
            present: set[str] = set()
        elif (previous.tier, previous.gpu_type) != (gpu.tier, gpu.gpu_type):
            restarts += 1
            present = set()
        else:
            present = set(previous.adapters)
        for adapter in set(gpu.adapters) - present:
            if adapter not in known:
                raise ValueError(f"new plan: adapter {adapter} is not in the config")
            loads += 1
            size += config.adapter_bytes(known[adapter])
    return {
        "bytes_to_load": size,
        "loads": loads,
        "tier_changes": restarts,
        "gpus_started": started,
        "gpus_stopped": sum(1 for gpu_id in before if gpu_id not in after_ids),
    }


# ---- relabelling ---------------------------------------------------------------------------


def _match(weights: dict[tuple[int, int], float]) -> list[tuple[int, int]]:
    """Maximum-weight bipartite matching over the given (left, right) pairs, exactly.

    Solved as the LP relaxation on HiGHS: the bipartite matching polytope is integral, so a
    vertex solution is a matching. Connected components of one pair need no solver.
    """
    parent: dict[tuple[str, int], tuple[str, int]] = {}

    def find(node: tuple[str, int]) -> tuple[str, int]:
        parent.setdefault(node, node)
        while parent[node] != node:
            parent[node] = parent[parent[node]]
            node = parent[node]
        return node

    for left, right in weights:
        a, b = find(("n", left)), find(("p", right))
        if a != b:
            parent[a] = b
    components: dict[tuple[str, int], list[tuple[int, int]]] = defaultdict(list)
    for pair in weights:
        components[find(("n", pair[0]))].append(pair)
    chosen = [pairs[0] for pairs in components.values() if len(pairs) == 1]
    rest = [pair for pairs in components.values() if len(pairs) > 1 for pair in pairs]
    if not rest:
        return chosen

    scale = max(weights[pair] for pair in rest)
    model = pulp.LpProblem("relabel", pulp.LpMaximize)
    share = {pair: model.add_variable(f"x_{k}", lowBound=0, upBound=1)
             for k, pair in enumerate(rest)}
    model += pulp.lpSum((weights[pair] / scale) * var for pair, var in share.items())
    by_left: dict[int, list[pulp.LpVariable]] = defaultdict(list)
    by_right: dict[int, list[pulp.LpVariable]] = defaultdict(list)
    for (left, right), var in share.items():
        by_left[left].append(var)
        by_right[right].append(var)
    for side, groups in (("n", by_left), ("p", by_right)):
        for index, group in groups.items():
            if len(group) > 1:
                model += (pulp.lpSum(group) <= 1, f"{side}_{index}")
    _quiet_highs()
    # One thread, as every HiGHS solve in loraserve: HiGHS sizes its global scheduler on the
    # first solve of the process and refuses ("Not Solved") a later solve with another count.
    model.solve(pulp.HiGHS(msg=False, threads=1))
    if pulp.LpStatus[model.status] != "Optimal":
        raise RuntimeError(f"relabel: HiGHS ended with status {pulp.LpStatus[model.status]}")
    values = {pair: float(var.value() or 0.0) for pair, var in share.items()}
    if any(0.01 < v < 0.99 for v in values.values()):
        # Only an interior-point answer without crossover could be fractional; make it a
        # vertex by solving the (still exact) integer version.
        logger.warning("relabel: fractional matching; solving it as an integer program")
        for var in share.values():
            var.cat = pulp.LpBinary
        model.solve(pulp.HiGHS(msg=False, threads=1))
        values = {pair: float(var.value() or 0.0) for pair, var in share.items()}
    return chosen + [pair for pair, value in values.items() if value > 0.5]


def _quiet_highs() -> None:
    # Imported here: the solver package sits above models/ in the import order.
    from loraserve.solver._highs import quiet_banner

    quiet_banner()


def relabel(new: PlacementPlan, previous: PlacementPlan, config: Config) -> PlacementPlan:
    """Rename ``new``'s GPUs so that they overlap ``previous`` as much as possible.

    The LoRAServe paper's final relabelling: a freshly solved plan numbers its GPUs
    arbitrarily, and matching them to the running GPUs turns most of the difference into
    adapters that simply stay where they are. A new GPU ``n`` may take the id of a previous
    GPU ``p`` of the same GPU type *and tier*: a tier change restarts the worker, which then
    reloads every adapter, so a pair at different tiers saves no load at all (in effect, the
    same-tier bonus is unbounded). A candidate pair is worth the bytes of the adapters both
    host, plus half the smallest adapter's bytes for keeping a worker, which breaks ties
    towards more kept GPUs but never buys one with an extra load; so the matching minimises
    exactly the bytes :func:`migration_cost` counts. Only pairs sharing an adapter are
    candidates (a sparse set, which keeps large fleets fast), and the maximum-weight matching
    is solved exactly as an LP on HiGHS (the assignment polytope is integral); connected
    components of a single pair are matched without the solver.

    Unmatched new GPUs get fresh ``<gpu_type>-<i>`` ids (lowest ``i`` not used by ``previous``
    or by another new GPU), except where the pool could not hold the previous GPUs and the
    fresh ones at once during the migration: then leftovers of the same type are paired (same
    tier first, in id order) so that the migration restarts a worker instead of needing a GPU
    the pool lacks.

    Parameters
    ----------
    new : PlacementPlan
        The plan to rename.
    previous : PlacementPlan
        The plan the fleet runs.
    config : Config
        Gives adapter sizes, slots per GPU and pool sizes.

    Returns
    -------
    PlacementPlan
        ``new`` with GPU ids and route keys renamed, normalized.

    Raises
    ------
    ValueError
        When ``new`` repeats a GPU id or routes to a GPU it does not have.
    """
    started = time.perf_counter()
    new_gpus = list(new.gpus)
    if len({g.gpu_id for g in new_gpus}) != len(new_gpus):
        raise ValueError("new plan: a GPU id appears twice")
    known_ids = {g.gpu_id for g in new_gpus}
    for adapter, split in new.routes.items():
        for gpu_id in split:
            if gpu_id not in known_ids:
                raise ValueError(f"new plan: {adapter} is routed to unknown GPU {gpu_id}")
    sizes = {a.id: config.adapter_bytes(a) for a in config.adapters}
    mean_size = sum(sizes.values()) / len(sizes)
    # Less than any adapter's bytes: a kept worker breaks ties between matchings that load
    # the same bytes, but is never bought with an extra load.
    bonus = min(sizes.values()) / 2
    prev_gpus = sorted(previous.gpus, key=lambda g: _gpu_key(g.gpu_id))
    on_previous: dict[str, list[int]] = defaultdict(list)
    for j, gpu in enumerate(prev_gpus):
        for adapter in sorted(set(gpu.adapters)):
            on_previous[adapter].append(j)

    shared: dict[tuple[int, int], float] = defaultdict(float)
    for i, gpu in enumerate(new_gpus):
        # Sorted: float sums in set order would depend on string hashing, and so would the
        # matching's tie-breaks.
        for adapter in sorted(set(gpu.adapters)):
            size = sizes.get(adapter, mean_size)
            for j in on_previous.get(adapter, ()):
                other = prev_gpus[j]
                if other.gpu_type == gpu.gpu_type and other.tier == gpu.tier:
                    shared[i, j] += size
    weights = {pair: overlap + bonus for pair, overlap in shared.items()}
    mapping: dict[int, str] = {i: prev_gpus[j].gpu_id for i, j in _match(weights)}

    _pair_for_pool(new_gpus, prev_gpus, mapping, config)
    previous_ids = {g.gpu_id for g in prev_gpus}
    used = set(previous_ids)
    counters: dict[str, int] = defaultdict(int)
    for i in sorted(set(range(len(new_gpus))) - set(mapping),
                    key=lambda i: _gpu_key(new_gpus[i].gpu_id)):
        gpu_type = new_gpus[i].gpu_type
        while f"{gpu_type}-{counters[gpu_type]}" in used:
            counters[gpu_type] += 1
        mapping[i] = f"{gpu_type}-{counters[gpu_type]}"
        used.add(mapping[i])

    rename = {gpu.gpu_id: mapping[i] for i, gpu in enumerate(new_gpus)}
    gpus = [gpu.model_copy(update={"gpu_id": rename[gpu.gpu_id]}) for gpu in new_gpus]
    routes = {a: {rename[g]: w for g, w in split.items()} for a, split in new.routes.items()}
    kept = sum(1 for name in mapping.values() if name in previous_ids)
    logger.info("relabel: %d of %d GPUs keep a previous id (%d candidate pairs) in %.3f s",
                kept, len(new_gpus), len(weights), time.perf_counter() - started)
    return new.model_copy(update={"gpus": gpus, "routes": routes}).normalized()


def _pair_for_pool(new_gpus: list[GPUPlacement], prev_gpus: list[GPUPlacement],
                   mapping: dict[int, str], config: Config) -> None:
    """Pair leftover GPUs of a type whose pool cannot run the old and fresh ones together."""
    taken = set(mapping.values())
    for pool in sorted(config.pools, key=lambda p: p.gpu_type):
        left = sorted((i for i in range(len(new_gpus))
                       if i not in mapping and new_gpus[i].gpu_type == pool.gpu_type),
                      key=lambda i: _gpu_key(new_gpus[i].gpu_id))
        free = [g for g in prev_gpus if g.gpu_type == pool.gpu_type and g.gpu_id not in taken]
        excess = sum(1 for g in prev_gpus if g.gpu_type == pool.gpu_type) + len(left) - pool.count
        for same_tier in (True, False):
            for i in left:
                if excess <= 0 or i in mapping:
                    continue
                match = next((g for g in free if not same_tier or g.tier == new_gpus[i].tier),
                             None)
                if match is not None:
                    mapping[i] = match.gpu_id
                    free.remove(match)
                    excess -= 1
