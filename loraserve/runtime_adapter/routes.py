"""The live routing table: a plan file that apply keeps current and the router reads.

The file is an ordinary :class:`~loraserve.models.PlacementPlan`: ``gpus`` lists the workers
in service (a worker being drained is left out, so it gets no new request of any kind) with
the adapters they have loaded, ``routes`` each adapter's split. It is replaced atomically, so
a reader sees the old table or the new one, never a mix; its *version* is a digest of the
bytes, which the router reports so that apply knows when a change has taken effect.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from loraserve.models import ConfigError, PlacementPlan
from loraserve.models.io import read_text, write_atomic


def digest(text: str) -> str:
    """The version of a routing table's text."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


@dataclass(frozen=True)
class RoutingTable:
    """What the router needs from a plan: who serves what, with which weights.

    Parameters
    ----------
    version : str
        Digest of the file's text.
    base_model : str
        The plan's base model.
    workers : tuple of str
        GPU ids in service.
    routes : dict
        ``adapter -> {gpu_id: weight}``, positive weights on workers in service only.
    """

    version: str
    base_model: str = ""
    workers: tuple[str, ...] = ()
    routes: dict[str, dict[str, float]] = field(default_factory=dict)

    @classmethod
    def from_plan(cls, plan: PlacementPlan, version: str) -> RoutingTable:
        """Build the table of ``plan``."""
        workers = tuple(g.gpu_id for g in plan.gpus)
        serving = set(workers)
        routes = {a: {g: w for g, w in split.items() if w > 0 and g in serving}
                  for a, split in plan.routes.items()}
        return cls(version, plan.base_model, workers, {a: s for a, s in routes.items() if s})


def read_table(path: str | Path) -> RoutingTable:
    """Read the routing table from a plan file.

    Raises
    ------
    ConfigError
        When the file is missing or not a valid plan.
    """
    path = Path(path)
    try:
        text = read_text(path, "a plan file")
    except ConfigError as exc:
        if str(exc) != f"{path}: file not found":
            raise
        raise ConfigError(f"{path}: file not found; run loraserve apply first, or give a "
                          "plan file") from None
    plan = PlacementPlan.from_yaml(text, source=str(path))
    return RoutingTable.from_plan(plan, digest(text))


def write_table(path: str | Path, plan: PlacementPlan) -> str:
    """Replace the routing table at ``path`` with ``plan``, atomically; return its version."""
    text = plan.to_yaml()
    write_atomic(path, text)
    return digest(text)
