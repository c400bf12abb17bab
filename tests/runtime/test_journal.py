from __future__ import annotations

import random
from pathlib import Path

import pytest

from loraserve.models import MigrationPlan, MigrationStep, PlacementPlan, plan_migration
from loraserve.runtime_adapter.journal import (
    Journal,
    check_journal,
    last_tiers,
    read_records,
    read_runs,
    unfinished_run,
)
from loraserve.runtime_adapter.reconciler import dependencies, migration_config
from tests.runtime.helpers import even_routes, make_plan

OLD = {"g0": (16, ["a", "b"]), "g1": (16, ["c"])}
NEW = {"g0": (16, ["a"]), "g1": (16, ["b", "c"])}


def _begin(journal: Journal, run: str, old: PlacementPlan, new: PlacementPlan,
           steps: list[MigrationStep]) -> None:
    journal.append({"event": "begin", "run": run, "slots": 4,
                    "observed": old.model_dump(mode="json"), "target": new.model_dump(mode="json"),
                    "steps": [s.model_dump(mode="json", exclude_defaults=True) for s in steps]})


def _migration(old: PlacementPlan, new: PlacementPlan) -> MigrationPlan:
    ranks = {a: 8 for g in (*old.gpus, *new.gpus) for a in g.adapters}
    return plan_migration(old, new, migration_config("tiny-llama", ranks, 4, 2))


def test_a_complete_run_replays_clean_and_a_torn_line_is_skipped(tmp_path: Path) -> None:
    old, new = make_plan(OLD, even_routes(OLD)), make_plan(NEW, even_routes(NEW))
    steps = _migration(old, new).steps
    path = tmp_path / "journal.jsonl"
    with Journal(path) as journal:
        _begin(journal, "r1", old, new, steps)
        for index in range(len(steps)):
            journal.append({"event": "step", "run": "r1", "index": index, "phase": "start"})
            journal.append({"event": "step", "run": "r1", "index": index, "phase": "done",
                            "outcome": "ok"})
        journal.append({"event": "end", "run": "r1", "status": "complete"})
    with path.open("a") as handle:
        handle.write('{"event": "step", "run"')  # a crash in the middle of a write
    assert len(read_records(path)) == 2 + 2 * len(steps)
    assert check_journal(path) == []
    assert unfinished_run(path) is None
    assert [s.action for s in steps] == ["load", "route", "unload"]


def test_an_unload_before_the_route_moves_is_reported(tmp_path: Path) -> None:
    old, new = make_plan(OLD, even_routes(OLD)), make_plan(NEW, even_routes(NEW))
    steps = _migration(old, new).steps
    assert [s.action for s in steps] == ["load", "route", "unload"]
    path = tmp_path / "journal.jsonl"
    with Journal(path) as journal:
        _begin(journal, "r1", old, new, steps)
        for index in (0, 2):  # load, then unload while g0 still carries b's traffic
            journal.append({"event": "step", "run": "r1", "index": index, "phase": "done"})
    run = unfinished_run(path)
    assert run is not None and run.status == "interrupted" and run.done == [0, 2]
    problems = check_journal(path)
    assert len(problems) == 1
    assert "(e) g0 still gets 1 of b's traffic" in problems[0]


def test_last_tiers_follow_done_restarts(tmp_path: Path) -> None:
    old = make_plan({"g0": (16, ["a"]), "g1": (16, ["a"])}, {"a": {"g0": 0.5, "g1": 0.5}})
    new = make_plan({"g0": (64, ["a"]), "g1": (16, ["a"])}, {"a": {"g0": 0.5, "g1": 0.5}})
    steps = _migration(old, new).steps
    restart = next(i for i, s in enumerate(steps) if s.action == "restart_gpu")
    path = tmp_path / "journal.jsonl"
    with Journal(path) as journal:
        _begin(journal, "r1", old, new, steps)
        for index in range(restart):
            journal.append({"event": "step", "run": "r1", "index": index, "phase": "done"})
    assert last_tiers(path) == {}
    with Journal(path) as journal:
        journal.append({"event": "step", "run": "r1", "index": restart, "phase": "done"})
    assert last_tiers(path) == {"g0": 64}
    assert read_runs(path)[0].steps[restart].tier == 64


def _random_plan(rng: random.Random, gpus: int, adapters: list[str], slots: int) -> PlacementPlan:
    hosting: dict[str, tuple[int, list[str]]] = {f"g{i}": (16, []) for i in range(gpus)}
    for adapter in adapters:
        free = [g for g, (_, held) in hosting.items() if len(held) < slots]
        for gpu_id in rng.sample(free, min(len(free), rng.choice((1, 1, 2)))):
            hosting[gpu_id][1].append(adapter)
    routes = {a: {g: rng.uniform(0.2, 1.0) for g, (_, held) in hosting.items() if a in held}
              for a in adapters}
    routes = {a: {g: w / sum(s.values()) for g, w in s.items()} for a, s in routes.items() if s}
    return make_plan(hosting, routes)


@pytest.mark.parametrize("seed", range(12))
def test_any_order_the_dependencies_allow_keeps_make_before_break(seed: int) -> None:
    # apply runs steps concurrently as far as dependencies() allows; every such order must
    # pass the same replay as the planned sequential order.
    rng = random.Random(seed)
    adapters = [f"a{i}" for i in range(10)]
    old = _random_plan(rng, 4, adapters[:8], 4)
    new = _random_plan(rng, 4, adapters[2:], 4)
    try:
        steps = _migration(old, new).steps
    except ValueError:
        pytest.skip("no safe migration for this random pair")
    waits = dependencies(steps, old.routes)
    for _ in range(20):
        order: list[int] = []
        pending = set(range(len(steps)))
        while pending:
            ready = [i for i in pending if waits[i] <= set(order)]
            chosen = rng.choice(ready)
            order.append(chosen)
            pending.discard(chosen)
        shuffled = MigrationPlan(steps=[steps[i] for i in order])
        assert shuffled.replay(old, 4, new=new) == []
