"""Applies placement plans to live vLLM workers: client, inventory, reconciler, journal, router.

``loraserve apply PLAN --workers INVENTORY`` makes a running fleet match a plan,
make-before-break, journaled; ``loraserve route`` runs the LoRA-aware router in front of it.
"""

import importlib.util
import sys

# httpcore (under httpx) tries ``import sniffio`` on every request; where sniffio is not
# installed the failed import is not cached, so each request scanned sys.path: 30 % of the
# router's CPU at 300 req/s (benchmarks/router_load.py). A None entry in sys.modules is
# Python's record that a module cannot be imported: the same ImportError, from a lookup.
if "sniffio" not in sys.modules and importlib.util.find_spec("sniffio") is None:
    sys.modules["sniffio"] = None  # type: ignore[assignment]

from loraserve.runtime_adapter.client import ModelsInfo, Timeouts, WorkerClient
from loraserve.runtime_adapter.errors import (
    AdapterNotFoundError,
    AuthError,
    MigrationError,
    RankTooHighError,
    RuntimeAdapterError,
    RuntimeUpdatesDisabledError,
    UnreachableError,
    WorkerError,
)
from loraserve.runtime_adapter.inventory import Inventory, WorkerSpec, load_inventory
from loraserve.runtime_adapter.journal import check_journal, read_runs
from loraserve.runtime_adapter.metrics import WorkerMetrics, parse_metrics
from loraserve.runtime_adapter.reconciler import ApplyResult, StepEvent, apply_plan
from loraserve.runtime_adapter.routes import RoutingTable, read_table, write_table

__all__ = [
    "AdapterNotFoundError",
    "ApplyResult",
    "AuthError",
    "Inventory",
    "MigrationError",
    "ModelsInfo",
    "RankTooHighError",
    "RoutingTable",
    "RuntimeAdapterError",
    "RuntimeUpdatesDisabledError",
    "StepEvent",
    "Timeouts",
    "UnreachableError",
    "WorkerClient",
    "WorkerError",
    "WorkerMetrics",
    "WorkerSpec",
    "apply_plan",
    "check_journal",
    "load_inventory",
    "parse_metrics",
    "read_runs",
    "read_table",
    "write_table",
]
