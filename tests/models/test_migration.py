from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from loraserve.models import (
    ConfigError,
    GPUPlacement,
    MigrationPlan,
    MigrationStep,
    PlacementPlan,
    migration_cost,
    plan_migration,
    relabel,
)
from loraserve.models.config import Config
from tests.conftest import GPU, adapter, make_config

ADAPTER_BYTES = 41_943_040  # a rank-8 adapter of llama-3-8b on every linear module


def gid(index: int, gpu_type: str = GPU) -> str:
    return f"{gpu_type}-{index}"


def gpu(index: int, tier: int, adapters: list[str], gpu_type: str = GPU) -> GPUPlacement:
    return GPUPlacement(gpu_id=gid(index, gpu_type), gpu_type=gpu_type, tier=tier,
                        adapters=adapters)


def plan(*gpus: GPUPlacement, routes: dict[str, dict[str, float]] | None = None) -> PlacementPlan:
    """A plan whose adapters split their traffic evenly over their hosts unless routes say."""
    if routes is None:
        hosts: dict[str, list[str]] = {}
        for g in gpus:
            for a in g.adapters:
                hosts.setdefault(a, []).append(g.gpu_id)
        routes = {a: {h: 1 / len(hs) for h in hs} for a, hs in hosts.items()}
    return PlacementPlan(base_model="llama-3-8b", gpus=list(gpus), routes=routes)


def config_for(names: str | list[str], slots: int, **extra: object) -> Config:
    return make_config([adapter(a, 8, 1.0) for a in names], serving={"max_loras": slots},
                       **extra)


def actions(migration: MigrationPlan) -> list[tuple[str, str | None, str | None]]:
    return [(s.action, s.gpu_id, s.adapter) for s in migration.steps]


def check(old: PlacementPlan, new: PlacementPlan, config: Config) -> MigrationPlan:
    migration = plan_migration(old, new, config)
    assert migration.replay(old, config.serving.adapters_per_gpu, new=new) == []
    return migration


# ---- plan_migration ---------------------------------------------------------------------


def test_identical_plans_need_no_steps() -> None:
    old = plan(gpu(0, 8, ["a", "b"]), gpu(1, 16, ["b", "c"]))
    migration = check(old, old.model_copy(deep=True), config_for("abc", 2))
    assert migration.steps == []
    assert migration.summary()["steps"] == 0


def test_swap_cycle_between_two_full_gpus_uses_a_temporary_replica() -> None:
    old = plan(gpu(0, 8, ["a", "b"]), gpu(1, 8, ["c", "d"]), gpu(2, 8, ["e"]))
    new = plan(gpu(0, 8, ["c", "d"]), gpu(1, 8, ["a", "b"]), gpu(2, 8, ["e"]))
    migration = check(old, new, config_for("abcde", 2))
    temporary = [s for s in migration.steps if s.temporary]
    assert temporary and all(s.gpu_id == gid(2) for s in temporary)
    # Each temporary replica is unloaded again; the four real moves are loaded once each.
    assert migration.loads == 4 + len(temporary)
    assert migration.unloads == 4 + len(temporary)
    assert migration.tier_changes == migration.gpus_started == migration.gpus_stopped == 0


def test_swap_cycle_without_any_free_slot_is_refused() -> None:
    old = plan(gpu(0, 8, ["a", "b"]), gpu(1, 8, ["c", "d"]))
    new = plan(gpu(0, 8, ["c", "d"]), gpu(1, 8, ["a", "b"]))
    with pytest.raises(ValueError, match="no free adapter slot"):
        plan_migration(old, new, config_for("abcd", 2))


def test_tier_change_of_the_only_gpu_hosting_an_adapter() -> None:
    old = plan(gpu(0, 8, ["a"]), gpu(1, 8, ["b"]))
    new = plan(gpu(0, 16, ["a"]), gpu(1, 8, ["b"]))
    migration = check(old, new, config_for("ab", 2))
    assert [(s.action, s.gpu_id, s.adapter, s.temporary) for s in migration.steps] == [
        ("load", gid(1), "a", True),
        ("route", None, "a", False),
        ("drain", gid(0), None, False),
        ("restart_gpu", gid(0), None, False),
        ("load", gid(0), "a", False),
        ("route", None, "a", False),
        ("unload", gid(1), "a", False),
    ]
    assert migration.steps[1].weights == {gid(1): 1.0}
    assert migration.steps[3].tier == 16
    assert migration.steps[5].weights == {gid(0): 1.0}
    assert migration.tier_changes == 1


def test_temporary_replica_goes_to_a_gpu_of_high_enough_tier() -> None:
    config = make_config([adapter("a", 8, 1.0), adapter("big", 32, 1.0), adapter("c", 8, 1.0)],
                         serving={"max_loras": 2})
    old = plan(gpu(0, 8, ["a"]), gpu(1, 32, ["big"]), gpu(2, 32, ["c"]))
    new = plan(gpu(0, 8, ["a"]), gpu(1, 64, ["big"]), gpu(2, 32, ["c"]))
    migration = check(old, new, config)
    (temporary,) = [s for s in migration.steps if s.temporary]
    assert (temporary.gpu_id, temporary.adapter) == (gid(2), "big")


def test_restart_with_nowhere_to_keep_an_adapter_live_is_refused() -> None:
    old = plan(gpu(0, 8, ["a"]), gpu(1, 8, ["b", "c"]))
    new = plan(gpu(0, 16, ["a"]), gpu(1, 8, ["b", "c"]))
    with pytest.raises(ValueError, match=r"keep a live while .*-0 restarts"):
        plan_migration(old, new, config_for("abc", 2))


def test_restart_order_is_retried_when_a_restart_finds_no_room() -> None:
    # Restarting GPU 1 first (the id order) leaves the rank-32 adapter nowhere to go; GPU 6
    # must go first, to come back at tier 32 and take it.
    config = make_config([adapter("big", 32, 1.0), adapter("small", 8, 1.0)],
                         serving={"max_loras": 2})
    old = plan(gpu(1, 32, ["big"]), gpu(6, 16, ["small"]))
    new = plan(gpu(1, 8, ["small"]), gpu(4, 16, []), gpu(6, 32, ["big", "small"]))
    migration = check(old, new, config)
    restarts = [s.gpu_id for s in migration.steps if s.action == "restart_gpu"]
    assert restarts == [gid(6), gid(1)]


def test_final_replica_makes_room_for_a_restart_as_a_last_resort() -> None:
    # While GPU 6 changes type, only the new GPU 2 has the tier for a1 and a2; a0 and a3,
    # already moved there, step back to the GPU they came from and return afterwards.
    pools = [{"gpu_type": GPU, "count": 8, "memory_gib": 80.0},
             {"gpu_type": "A100-80GB", "count": 8, "memory_gib": 80.0}]
    config = make_config([adapter("a0", 8, 1.0), adapter("a1", 16, 1.0), adapter("a2", 16, 1.0),
                          adapter("a3", 8, 1.0)], serving={"max_loras": 2}, pools=pools)
    a100 = GPUPlacement(gpu_id=gid(6), gpu_type="A100-80GB", tier=32, adapters=["a1", "a2"])
    old = plan(gpu(1, 8, ["a0", "a3"]), a100)
    new = plan(gpu(2, 32, ["a0", "a3"]), gpu(6, 32, ["a1", "a2"]))
    migration = check(old, new, config)
    assert migration.reloads == 2 and migration.temporary_loads == 2
    assert any(s.action == "restart_gpu" and s.reason == f"A100-80GB -> {GPU}"
               for s in migration.steps)
    cost = migration_cost(old, new, config)
    assert cost["loads"] == migration.loads - migration.temporary_loads - migration.reloads


def test_gpu_removal_moves_adapters_first_and_stops_last() -> None:
    old = plan(gpu(0, 8, ["a"]), gpu(1, 8, ["b"]), gpu(2, 8, ["c", "d"]))
    new = plan(gpu(0, 8, ["a", "c"]), gpu(1, 8, ["b", "d"]))
    migration = check(old, new, config_for("abcd", 2))
    assert actions(migration)[-2:] == [("drain", gid(2), None), ("stop_gpu", gid(2), None)]
    assert migration.gpus_stopped == 1
    assert migration.loads == 2 and migration.temporary_loads == 0
    # Nothing is unloaded one by one from a GPU that stops anyway.
    assert migration.unloads == 0


def test_new_gpu_is_started_before_anything_is_loaded_on_it() -> None:
    old = plan(gpu(0, 8, ["a", "b"]))
    new = plan(gpu(0, 8, ["a"]), gpu(1, 16, ["b"]))
    migration = check(old, new, config_for("ab", 2))
    assert actions(migration) == [
        ("start_gpu", gid(1), None),
        ("load", gid(1), "b"),
        ("route", None, "b"),
        ("unload", gid(0), "b"),
    ]
    assert migration.gpus_started == 1


def test_added_and_deleted_adapters() -> None:
    old = plan(gpu(0, 8, ["gone", "kept"]), gpu(1, 8, ["kept"]))
    new = plan(gpu(0, 8, ["kept"]), gpu(1, 8, ["kept", "fresh"]))
    config = config_for(["kept", "fresh"], 2)  # "gone" was deleted from the config
    migration = check(old, new, config)
    retire = [s for s in migration.steps if s.action == "route" and s.adapter == "gone"]
    assert len(retire) == 1 and retire[0].weights == {}
    assert "retire gone" in str(retire[0])
    assert ("load", gid(1), "fresh") in actions(migration)
    assert ("unload", gid(0), "gone") in actions(migration)
    # The deleted adapter is retired before its last replica goes.
    steps = actions(migration)
    assert steps.index(("route", None, "gone")) < steps.index(("unload", gid(0), "gone"))


def test_full_gpu_makes_room_by_moving_traffic_to_another_replica() -> None:
    old = plan(gpu(0, 8, ["a", "b"]), gpu(1, 8, ["b"]))
    new = plan(gpu(0, 8, ["a", "c"]), gpu(1, 8, ["b"]))
    migration = check(old, new, config_for("abc", 2))
    assert migration.temporary_loads == 0
    assert actions(migration)[:3] == [("route", None, "b"), ("unload", gid(0), "b"),
                                      ("load", gid(0), "c")]


def test_migration_is_deterministic() -> None:
    old = plan(gpu(0, 8, ["a", "b"]), gpu(1, 8, ["c", "d"]), gpu(2, 16, ["e"]))
    new = plan(gpu(0, 16, ["c", "e"]), gpu(1, 8, ["a", "b"]), gpu(3, 8, ["d", "e"]))
    config = config_for("abcde", 2)
    first, second = plan_migration(old, new, config), plan_migration(old, new, config)
    assert first.to_yaml() == second.to_yaml()


def test_migration_cost_counts_the_loads_the_plan_makes() -> None:
    old = plan(gpu(0, 8, ["a", "b"]), gpu(1, 8, ["c", "d"]), gpu(2, 8, ["e"]), gpu(4, 8, ["f"]))
    new = plan(gpu(0, 16, ["c", "d"]), gpu(1, 8, ["a", "b"]), gpu(2, 8, ["e"]),
               gpu(3, 8, ["f", "b"]))
    config = config_for("abcdef", 2)
    migration = check(old, new, config)
    cost = migration_cost(old, new, config)
    temporary_bytes = sum(s.bytes for s in migration.steps if s.temporary)
    assert cost == {
        "bytes_to_load": migration.bytes_moved - temporary_bytes,
        "loads": migration.loads - migration.temporary_loads,
        "tier_changes": 1,
        "gpus_started": 1,
        "gpus_stopped": 1,
    }
    assert cost["loads"] == 6 and cost["bytes_to_load"] == 6 * ADAPTER_BYTES


def test_inconsistent_plans_are_rejected() -> None:
    good = plan(gpu(0, 8, ["a"]))
    bad = plan(gpu(0, 8, ["a"]), routes={"a": {gid(1): 1.0}})
    config = config_for("a", 2)
    with pytest.raises(ValueError, match="does not host it"):
        plan_migration(good, bad, config)
    crowded = plan(gpu(0, 8, ["a", "b", "c"]))
    with pytest.raises(ValueError, match="allows 2 per GPU"):
        plan_migration(good, crowded, config_for("abc", 2))
    with pytest.raises(ValueError, match="not in the config"):
        plan_migration(good, plan(gpu(0, 8, ["a", "z"])), config)


# ---- MigrationPlan ------------------------------------------------------------------------


def sample_migration() -> tuple[PlacementPlan, PlacementPlan, MigrationPlan]:
    old = plan(gpu(0, 8, ["a", "b"]), gpu(1, 8, ["c"]), gpu(2, 8, ["d"]))
    new = plan(gpu(0, 16, ["a", "c"]), gpu(1, 8, ["b", "d"]), gpu(3, 8, ["c"]))
    return old, new, check(old, new, config_for("abcd", 2))


def test_yaml_round_trip_and_atomic_save(tmp_path: Path) -> None:
    _, _, migration = sample_migration()
    assert MigrationPlan.from_yaml(migration.to_yaml()) == migration
    path = tmp_path / "migration.yaml"
    migration.save(path)
    assert MigrationPlan.load(path) == migration
    assert [p.name for p in tmp_path.iterdir()] == ["migration.yaml"]


def test_bad_migration_files_give_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="needs gpu_id"):
        MigrationPlan.from_yaml("steps:\n- {action: load, adapter: a}\n")
    with pytest.raises(ConfigError, match="steps"):
        MigrationPlan.from_yaml("- 1\n")
    with pytest.raises(ConfigError, match="not found"):
        MigrationPlan.load(tmp_path / "missing.yaml")


def test_summary_table_and_descriptions() -> None:
    _, _, migration = sample_migration()
    summary = migration.summary()
    assert summary["loads"] == migration.loads
    assert summary["tier_changes"] == 1
    assert summary["gpus_started"] == summary["gpus_stopped"] == 1
    assert summary["bytes_moved"] == migration.loads * ADAPTER_BYTES
    table = migration.table()
    assert len(table) == len(migration.steps)
    assert list(table["action"]) == [s.action for s in migration.steps]
    texts = [str(s) for s in migration.steps]
    assert all("\n" not in t for t in texts)
    assert any(t.startswith(f"restart {gid(0)} as {GPU} at tier 16") for t in texts)
    assert str(MigrationStep(action="route", adapter="a", weights={gid(0): 0.25, gid(1): 0.75})) \
        == f"route a: {gid(0)} 25%, {gid(1)} 75%"


def test_replay_reports_each_broken_invariant() -> None:
    old = plan(gpu(0, 8, ["a"]), gpu(1, 8, ["b"]))
    steps = [
        MigrationStep(action="unload", gpu_id=gid(0), adapter="a"),  # (e): still routed
        MigrationStep(action="load", gpu_id=gid(1), adapter="a"),
        MigrationStep(action="load", gpu_id=gid(1), adapter="c"),  # (c): 3 > 2 slots
        MigrationStep(action="route", adapter="b", weights={gid(0): 1.0}),  # (b): not loaded
        MigrationStep(action="route", adapter="a", weights={gid(1): 0.5}),  # (a): sums to 0.5
        MigrationStep(action="restart_gpu", gpu_id=gid(0), tier=16, gpu_type=GPU),  # (d)
    ]
    problems = MigrationPlan(steps=steps).replay(old, 2)
    assert [p.split("): ", 1)[1][:3] for p in problems] == ["(e)", "(c)", "(b)", "(a)", "(d)",
                                                          "(d)"]
    assert problems[0].startswith("step 1 (unload a from")


def test_replay_compares_the_end_state_with_the_new_plan() -> None:
    old = plan(gpu(0, 8, ["a"]), gpu(1, 8, ["b"]))
    new = plan(gpu(0, 16, ["a", "b"]), gpu(1, 8, ["b"]))
    problems = MigrationPlan(steps=[]).replay(old, 2, new=new)
    assert any("runs H100-80GB at tier 8; the new plan has H100-80GB at tier 16" in p
               for p in problems)
    assert any(p.endswith(f"{gid(0)} lacks b") for p in problems)
    assert any(p.startswith("final state: b is routed") for p in problems)


def test_replay_rejects_retiring_an_adapter_the_new_plan_serves() -> None:
    old = plan(gpu(0, 8, ["a"]))
    steps = [MigrationStep(action="route", adapter="a", weights={})]
    assert MigrationPlan(steps=steps).replay(old, 2) == []
    problems = MigrationPlan(steps=steps).replay(old, 2, new=old)
    assert any("retired but the new plan serves it" in p for p in problems)


# ---- relabel ------------------------------------------------------------------------------


def test_relabel_of_the_same_plan_keeps_every_id() -> None:
    previous = plan(gpu(0, 8, ["a", "b"]), gpu(1, 16, ["c"]), gpu(2, 8, ["a", "d"]))
    assert relabel(previous, previous, config_for("abcd", 4)) == previous.normalized()


def test_relabel_maximizes_overlap() -> None:
    # Greedy would give new 10 (a, c) the id of previous 0 (a, b) and leave new 11 (b)
    # unmatched; the exact matching keeps two GPUs.
    previous = plan(gpu(0, 8, ["a", "b"]), gpu(1, 8, ["c"]), gpu(2, 16, ["e"]))
    new = plan(gpu(10, 8, ["a", "c"]), gpu(11, 8, ["b"]), gpu(12, 8, ["e"]), gpu(13, 8, ["d"]))
    config = config_for("abcde", 4)
    renamed = relabel(new, previous, config)
    hosts = {g.gpu_id: g.adapters for g in renamed.gpus}
    assert hosts[gid(1)] == ["a", "c"]
    assert hosts[gid(0)] == ["b"]
    # e's GPU changes tier, so sharing e saves nothing: it and d's GPU get fresh ids.
    assert sorted(set(hosts) - {gid(0), gid(1)}) == [gid(3), gid(4)]
    assert renamed.routes["a"] == {gid(1): 1.0}
    cost = migration_cost(previous, renamed, config)
    assert cost["loads"] == 3 and cost["tier_changes"] == 0  # a, d and e
    assert migration_cost(previous, new, config)["loads"] == 5
    check(previous, renamed, config)


def test_relabel_matches_only_gpus_of_the_same_type() -> None:
    pools = [{"gpu_type": GPU, "count": 8, "memory_gib": 80.0},
             {"gpu_type": "A100-80GB", "count": 8, "memory_gib": 80.0}]
    config = config_for("ab", 4, pools=pools)
    previous = plan(gpu(0, 8, ["a", "b"]))
    new = plan(gpu(0, 8, ["a", "b"], gpu_type="A100-80GB"))
    renamed = relabel(new, previous, config)
    assert [g.gpu_id for g in renamed.gpus] == ["A100-80GB-0"]


def test_relabel_reuses_gpus_when_the_pool_is_full() -> None:
    config = config_for("abcd", 2, count=2)
    previous = plan(gpu(0, 8, ["a"]), gpu(1, 16, ["b"]))
    new = plan(gpu(5, 16, ["c"]), gpu(6, 8, ["d"]))
    renamed = relabel(new, previous, config)
    # No overlap, but the pool has no spare GPU: same tiers pair up instead of fresh ids.
    assert {g.gpu_id: g.adapters for g in renamed.gpus} == {gid(0): ["d"], gid(1): ["c"]}
    plenty = relabel(new, previous, config_for("abcd", 2, count=8))
    assert sorted(g.gpu_id for g in plenty.gpus) == [gid(2), gid(3)]


# ---- random migrations --------------------------------------------------------------------


@st.composite
def migrations(draw: st.DrawFn, churn: bool = False) -> tuple[PlacementPlan, PlacementPlan,
                                                                int, int]:
    slots = draw(st.integers(2, 4))
    ids = [gid(i) for i in range(8)]
    sizes = draw(st.integers(3, 6)), draw(st.integers(3, 6))
    # At most one adapter fewer than the smaller fleet's slots, so full fleets stay rare.
    universe = [f"a{i}" for i in range(draw(st.integers(2, min(8, min(sizes) * slots - 1))))]
    if churn:
        served = [draw(st.lists(st.sampled_from(universe), min_size=1, unique=True))
                  for _ in range(2)]
    else:
        served = [universe, universe]

    def one(size: int, adapters: list[str]) -> PlacementPlan:
        gpu_ids = draw(st.lists(st.sampled_from(ids), min_size=size, max_size=size, unique=True))
        hosted: dict[str, list[str]] = {g: [] for g in gpu_ids}
        for a in sorted(adapters):
            room = [g for g in gpu_ids if len(hosted[g]) < slots]
            hosted[draw(st.sampled_from(room))].append(a)
        for g in gpu_ids:
            for a in draw(st.lists(st.sampled_from(sorted(adapters)), max_size=2, unique=True)):
                if a not in hosted[g] and len(hosted[g]) < slots:
                    hosted[g].append(a)
        routes: dict[str, dict[str, float]] = {}
        for a in adapters:
            hosts = [g for g in gpu_ids if a in hosted[g]]
            shares = draw(st.lists(st.integers(0, 3), min_size=len(hosts), max_size=len(hosts))
                          .filter(lambda s: sum(s) > 0))
            routes[a] = {h: s / sum(shares) for h, s in zip(hosts, shares, strict=True) if s}
        gpus = [GPUPlacement(gpu_id=g, gpu_type=GPU, tier=draw(st.sampled_from([8, 16, 32])),
                             adapters=hosted[g]) for g in gpu_ids]
        return PlacementPlan(base_model="llama-3-8b", gpus=gpus, routes=routes)

    old, new = one(sizes[0], served[0]), one(sizes[1], served[1])
    return old, new, slots, len(set(served[0]) & set(served[1]))


def assert_sound_or_justly_refused(old: PlacementPlan, new: PlacementPlan, slots: int,
                                   both: int) -> None:
    config = config_for([f"a{i}" for i in range(8)], slots)
    try:
        migration = plan_migration(old, new, config)
    except ValueError as exc:
        assert "no free adapter slot" in str(exc)
        full = all(len(g.adapters) == slots for g in old.gpus + new.gpus)
        # A restart takes one GPU's slots away while every adapter served by both plans
        # stays live; when those adapters fill the other GPUs' slots exactly, only a perfect
        # packing would do, which the greedy planner does not search for.
        tiers = {g.gpu_id: g.tier for g in old.gpus}
        restarts = any(tiers.get(g.gpu_id, g.tier) != g.tier for g in new.gpus)
        fleet = len({g.gpu_id for g in old.gpus + new.gpus})
        assert full or (restarts and both >= slots * (fleet - 1)), str(exc)
        return
    assert migration.replay(old, slots, new=new) == []
    cost = migration_cost(old, new, config)
    assert cost["loads"] == migration.loads - migration.temporary_loads - migration.reloads


@settings(max_examples=60, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(migrations())
def test_random_migrations_keep_every_adapter_live(
        case: tuple[PlacementPlan, PlacementPlan, int, int]) -> None:
    assert_sound_or_justly_refused(*case)


@settings(max_examples=40, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(migrations(churn=True))
def test_random_migrations_with_added_and_deleted_adapters(
        case: tuple[PlacementPlan, PlacementPlan, int, int]) -> None:
    assert_sound_or_justly_refused(*case)
