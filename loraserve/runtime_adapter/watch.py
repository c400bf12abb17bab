"""``loraserve watch``: observe the router, decide with the drift policy, apply re-plans.

Each interval the watcher scrapes the router's ``/metrics`` (per-adapter request counters:
vLLM's own ``/metrics`` carries no per-adapter counts), feeds them to
:class:`~loraserve.drift.DriftController`, and when the controller decides to re-plan, applies
the new plan through the reconciler (make-before-break, journaled) and commits it. Token means
stay as configured: the router counts requests, not tokens.

The plan the fleet runs is the inventory's routes file, which ``loraserve apply`` keeps
current, so a restarted watcher picks up where the last one left off.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import httpx
from prometheus_client.parser import text_string_to_metric_families

from loraserve.drift import Counters, Decision, DriftController, DriftPolicy
from loraserve.models import Config, ConfigError, PlacementPlan
from loraserve.runtime_adapter.errors import RuntimeAdapterError
from loraserve.runtime_adapter.inventory import Inventory
from loraserve.runtime_adapter.reconciler import apply_plan

logger = logging.getLogger(__name__)

#: The router's per-adapter request counter (see ``router.py``).
REQUESTS = "loraserve_router_requests"


def parse_requests(text: str, at: float) -> Counters:
    """Per-adapter request totals from a router's ``/metrics`` page, summed over workers."""
    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name != REQUESTS:
            continue
        for sample in family.samples:
            if sample.name != f"{REQUESTS}_total":
                continue
            adapter = sample.labels.get("adapter", "")
            totals[adapter] = totals.get(adapter, 0.0) + float(sample.value)
    return Counters(at, totals, {}, {})


async def scrape(client: httpx.AsyncClient, router_url: str) -> Counters:
    """Read the router's counters now.

    Raises
    ------
    RuntimeAdapterError
        When the router cannot be reached or does not answer 200.
    """
    url = router_url.rstrip("/") + "/metrics"
    try:
        response = await client.get(url)
    except httpx.TransportError as exc:
        raise RuntimeAdapterError(f"router {router_url}: unreachable ({exc.__class__.__name__}); "
                                  "start it with loraserve route, or fix router_url in the "
                                  "inventory") from None
    if response.status_code != 200:
        raise RuntimeAdapterError(f"router {router_url}: /metrics answered "
                                  f"{response.status_code}")
    return parse_requests(response.text, time.monotonic())


async def watch(config: Config, inventory: Inventory, policy: DriftPolicy, interval_s: float,
                *, steps: int | None = None, dry_run: bool = False,
                report: Callable[[Decision], None] | None = None,
                controller: DriftController | None = None) -> DriftController:
    """Run the observe-decide-act loop; see the module notes.

    Parameters
    ----------
    config : Config
        The fleet's config; its adapter rates are replaced by the observed ones.
    inventory : Inventory
        The fleet; ``router_url`` is required.
    policy : DriftPolicy
    interval_s : float
        Seconds between scrapes.
    steps : int, optional
        Decisions to make before returning (``--once`` is 1); forever when omitted.
    dry_run : bool
        Decide and report, never apply.
    report : callable, optional
        Receives every decision.
    controller : DriftController, optional
        An existing controller (its metrics and estimates carry over).

    Returns
    -------
    DriftController
        The controller, with the plan the fleet runs at the end.
    """
    if inventory.router_url is None:
        raise ConfigError("inventory: router_url is not set; watch reads the per-adapter "
                          "request counts from the router, so give its URL")
    if controller is None:
        plan = PlacementPlan.load(inventory.routes_file)
        controller = DriftController(config, plan, policy)
    made = 0
    async with httpx.AsyncClient(timeout=httpx.Timeout(10.0)) as client:
        controller.estimator.observe(await scrape(client, inventory.router_url))
        while steps is None or made < steps:
            await asyncio.sleep(interval_s)
            decision = controller.step(await scrape(client, inventory.router_url))
            made += 1
            if report is not None:
                report(decision)
            if decision.action != "replan" or dry_run or decision.plan is None:
                continue
            result = await apply_plan(decision.plan, inventory)
            if result.problems:
                logger.error("re-plan applied with mismatches: %s", "; ".join(result.problems))
                raise RuntimeAdapterError("the fleet does not match the re-plan after apply: "
                                          + result.problems[0])
            controller.commit(decision)
    return controller
