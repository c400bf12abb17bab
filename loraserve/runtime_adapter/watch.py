"""``loraserve watch``: observe the router, decide with the drift policy, apply re-plans.

Each interval the watcher scrapes the router's ``/metrics`` (per-adapter request counters, and
the token counts the answers reported: vLLM's own ``/metrics`` carries no per-adapter
counts), feeds them to :class:`~loraserve.drift.DriftController`, and when the controller
decides to re-plan, applies the new plan through the reconciler (make-before-break,
journaled) and commits it. Token means follow the observed ones where the router saw usage
(every non-streamed completion; streamed ones whose client asked for
``stream_options.include_usage``) and stay as configured elsewhere.

The plan the fleet runs is the inventory's routes file, which ``loraserve apply`` keeps
current, so a restarted watcher picks up where the last one left off.
"""

from __future__ import annotations

import asyncio
import contextlib
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

#: The router's per-adapter counters (see ``router.py``): requests, and the requests whose
#: token usage was seen with their prompt and generated tokens.
REQUESTS = "loraserve_router_requests"
USAGE_REQUESTS = "loraserve_router_usage_requests"
PROMPT_TOKENS = "loraserve_router_prompt_tokens"
COMPLETION_TOKENS = "loraserve_router_completion_tokens"


#: The router's labels for requests that name the base model or no routed adapter: traffic
#: of no adapter, which the controller would otherwise warn about as unknown adapters.
NOT_ADAPTERS = frozenset({"base", "unknown"})


def parse_counters(text: str, at: float) -> Counters:
    """Per-adapter totals from a router's ``/metrics`` page, summed over workers and statuses.

    Parameters
    ----------
    text : str
        The page (Prometheus text format).
    at : float
        The time of the scrape (monotonic seconds).
    """
    totals: dict[str, dict[str, float]] = {
        name: {} for name in (REQUESTS, USAGE_REQUESTS, PROMPT_TOKENS, COMPLETION_TOKENS)}
    for family in text_string_to_metric_families(text):
        into = totals.get(family.name)
        if into is None:
            continue
        for sample in family.samples:
            if sample.name != f"{family.name}_total":
                continue
            adapter = sample.labels.get("adapter", "")
            if adapter in NOT_ADAPTERS:
                continue
            into[adapter] = into.get(adapter, 0.0) + float(sample.value)
    return Counters(at, totals[REQUESTS], totals[PROMPT_TOKENS], totals[COMPLETION_TOKENS],
                    totals[USAGE_REQUESTS])


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
    return parse_counters(response.text, time.monotonic())


async def watch(config: Config, inventory: Inventory, policy: DriftPolicy, interval_s: float,
                *, steps: int | None = None, dry_run: bool = False,
                report: Callable[[Decision], None] | None = None,
                controller: DriftController | None = None,
                stop: asyncio.Event | None = None) -> DriftController:
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
        Decisions to make before returning (``--once`` is 1); forever when omitted, and then
        a scrape that fails after the first is logged and skipped instead of raised.
    dry_run : bool
        Decide and report, never apply.
    report : callable, optional
        Receives every decision.
    controller : DriftController, optional
        An existing controller (its metrics and estimates carry over).
    stop : asyncio.Event, optional
        Set it to end the loop: a migration under way is finished and committed first, a
        wait for the next scrape ends at once (a clean shutdown on SIGTERM, say).

    Returns
    -------
    DriftController
        The controller, with the plan the fleet runs at the end.

    Raises
    ------
    RuntimeAdapterError
        The router cannot be read (at the first scrape, or at any with ``steps``), or a
        re-plan could not be applied (the fleet is consistent and the journal says how far
        it got; ``loraserve apply`` resumes it).
    """
    if inventory.router_url is None:
        raise ConfigError("inventory: router_url is not set; watch reads the per-adapter "
                          "request counts from the router, so give its URL")
    if controller is None:
        plan = PlacementPlan.load(inventory.routes_file)
        controller = DriftController(config, plan, policy)
    stop = asyncio.Event() if stop is None else stop
    made = 0
    async with httpx.AsyncClient(timeout=httpx.Timeout(10.0)) as client:
        controller.estimator.observe(await scrape(client, inventory.router_url))
        while (steps is None or made < steps) and not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval_s)
            if stop.is_set():
                break
            try:
                counters = await scrape(client, inventory.router_url)
            except RuntimeAdapterError as exc:
                if steps is not None:
                    raise
                # A router restarting, say: a later scrape answers again (its counters then
                # start from zero, which the estimator reads as a reset).
                logger.warning("skipping this reading: %s", exc)
                continue
            # Solving takes a while: off the event loop, so that whatever else runs on it
            # (a router in the same process, a stop signal) is not held up.
            decision = await asyncio.to_thread(controller.step, counters)
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
