from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from loraserve.runtime_adapter.inventory import load_inventory
from loraserve.runtime_adapter.router import Router, _ReplyError
from loraserve.runtime_adapter.routes import write_table
from tests.runtime.helpers import make_adapter, make_plan, write_inventory

HOSTING = {"g0": (16, ["a", "b"]), "g1": (16, ["a"]), "g2": (16, ["b"])}
ROUTES = {"a": {"g0": 0.25, "g1": 0.75}, "b": {"g0": 0.5, "g2": 0.5}}


@pytest.fixture
def router(tmp_path: Path) -> Router:
    make_adapter(tmp_path / "adapters", "a", 8)
    workers = [{"gpu_id": g, "url": f"http://127.0.0.1:{9100 + i}", "tier": 16}
               for i, g in enumerate(HOSTING)]
    inventory = load_inventory(write_inventory(tmp_path, workers, {"a": "adapters/a"}))
    write_table(inventory.routes_file, make_plan(HOSTING, ROUTES))
    return Router(inventory.routes_file, inventory, seed=1)


def test_choice_follows_the_weights_when_idle(router: Router) -> None:
    picks = Counter(router.choose("a") for _ in range(4000))
    assert set(picks) == {"g0", "g1"}
    # Two draws by weight, ties (all idle) to the first: shares stay 1:3.
    assert picks["g1"] / 4000 == pytest.approx(0.75, abs=0.03)


def test_choice_leans_to_the_replica_with_fewer_requests(router: Router) -> None:
    router.outstanding["g1"] = 5
    picks = Counter(router.choose("a") for _ in range(4000))
    # The two draws are without replacement, so with two replicas both are always drawn and
    # the idle one wins every time.
    assert picks["g0"] == 4000


def test_unhealthy_and_unknown(router: Router) -> None:
    router.healthy["g1"] = False
    assert {router.choose("a") for _ in range(50)} == {"g0"}
    router.healthy["g0"] = False
    # Every replica marked down: the marks may be stale, so they are tried all the same,
    # and only when each has been tried is the answer 503.
    assert {router.choose("a") for _ in range(50)} == {"g0", "g1"}
    assert router.choose("a", {"g0"}) == "g1"
    with pytest.raises(_ReplyError) as info:
        router.choose("a", {"g0", "g1"})
    assert info.value.status == 503
    with pytest.raises(_ReplyError) as info:
        router.choose("nope")
    assert info.value.status == 404
    # The base model goes to any worker in service.
    router.healthy.clear()
    assert {router.choose("tiny-llama") for _ in range(200)} == {"g0", "g1", "g2"}


def test_reload_swaps_the_table_and_keeps_it_on_a_broken_file(router: Router) -> None:
    before = router.table
    moved = make_plan({"g0": (16, ["a", "b"]), "g2": (16, ["b"])},
                      {"a": {"g0": 1.0}, "b": {"g0": 0.5, "g2": 0.5}})
    version = write_table(router.table_path, moved)
    assert router.reload()
    assert router.table.version == version != before.version
    assert router.table.routes["a"] == {"g0": 1.0}
    assert router.table.workers == ("g0", "g2")
    assert {router.choose("tiny-llama") for _ in range(100)} == {"g0", "g2"}
    router.table_path.write_text("gpus: [oops")
    assert not router.reload()
    assert router.table.version == version


def test_a_missing_table_routes_nothing_until_it_appears(router: Router) -> None:
    router.table_path.unlink()
    empty = Router(router.table_path, router.inventory, seed=1)
    assert empty.table.version == "none"
    with pytest.raises(_ReplyError):
        empty.choose("a")
    write_table(router.table_path, make_plan(HOSTING, ROUTES))
    assert empty.reload()
    assert empty.choose("a") in {"g0", "g1"}
