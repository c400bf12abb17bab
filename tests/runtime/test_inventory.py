from __future__ import annotations

from pathlib import Path

import pytest

from loraserve.models import ConfigError, PlacementPlan
from loraserve.runtime_adapter.inventory import adapter_rank, load_inventory
from loraserve.runtime_adapter.reconciler import (
    check_plan_against_inventory,
    hosting_view,
    served_remotely,
)
from tests.runtime.helpers import make_adapter, make_plan, write_inventory

WORKER = {"gpu_id": "cpu-0", "url": "http://127.0.0.1:8101", "tier": 64, "max_loras": 2,
          "max_cpu_loras": 4}


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    make_adapter(tmp_path / "adapters", "a8", 8)
    make_adapter(tmp_path / "adapters", "a128", 128)
    return tmp_path


def test_valid_inventory_resolves_paths_against_its_folder(folder: Path) -> None:
    path = write_inventory(folder, [WORKER], {"a8": "adapters/a8"}, router_url="http://x:1")
    inventory = load_inventory(path)
    assert inventory.adapters["a8"] == (folder / "adapters" / "a8").resolve()
    assert inventory.routes_file == (folder / "routes.yaml").resolve()
    assert inventory.journal == (folder / "journal.jsonl").resolve()
    worker = inventory.worker("cpu-0")
    assert (worker.host, worker.port, worker.slots) == ("127.0.0.1", 8101, 4)
    assert adapter_rank(inventory.adapter_path("a8")) == 8


@pytest.mark.parametrize(("change", "message"), [
    ({"adapters": {"a8": "../elsewhere/a8"}}, "adapters.a8: '"),
    ({"adapter_roots": ["missing"]}, "adapter_roots[0]: directory"),
    ({"workers": [WORKER, WORKER]}, "workers[1].gpu_id 'cpu-0' appears twice"),
    ({"workers": [{**WORKER, "url": "localhost:8000"}]}, "is not an http(s) URL"),
    ({"workers": [{**WORKER, "tier": 12}]}, "workers[0].tier"),
    ({"workers": [{**WORKER, "max_cpu_loras": 1}]}, "below max_loras"),
    ({"workers": [{**WORKER, "colour": "red"}]}, "workers[0].colour: is not a known field"),
    ({"launcher": {"restart": "relaunch {gpu_id} {rank}"}}, "unknown placeholder 'rank'"),
])
def test_bad_inventory_is_one_line_naming_the_field(folder: Path, change: dict[str, object],
                                                    message: str) -> None:
    raw = {"workers": [WORKER], "adapters": {"a8": "adapters/a8"}}
    raw.update(change)
    workers = raw.pop("workers")
    adapters = raw.pop("adapters")
    path = write_inventory(folder, workers, adapters, **raw)
    with pytest.raises(ConfigError) as info:
        load_inventory(path)
    text = str(info.value)
    assert message in text
    assert "\n" not in text


def test_outside_roots_names_the_fix(folder: Path) -> None:
    outside = make_adapter(folder / "elsewhere", "a8", 8)
    path = write_inventory(folder, [WORKER], {"a8": outside})
    with pytest.raises(ConfigError, match="outside the adapter roots; move it under one of"):
        load_inventory(path)


def test_api_key_env_must_be_set(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LS_TEST_KEY", raising=False)
    path = write_inventory(folder, [{**WORKER, "api_key_env": "LS_TEST_KEY"}], {})
    worker = load_inventory(path).worker("cpu-0")
    with pytest.raises(ConfigError, match="variable LS_TEST_KEY is not set"):
        worker.api_key()
    monkeypatch.setenv("LS_TEST_KEY", "secret")
    assert worker.api_key() == "secret"


def test_plan_checks_without_network(folder: Path) -> None:
    (folder / "adapters" / "empty").mkdir()
    path = write_inventory(folder, [WORKER], {"a8": "adapters/a8", "a128": "adapters/a128",
                                              "gone": "adapters/gone", "empty": "adapters/empty"})
    inventory = load_inventory(path)
    good = make_plan({"cpu-0": (64, ["a8"])}, {"a8": {"cpu-0": 1.0}})
    assert check_plan_against_inventory(good, inventory) == {"a8": 8}
    cases = [
        (make_plan({"cpu-9": (64, ["a8"])}, {"a8": {"cpu-9": 1.0}}),
         "GPU 'cpu-9', which has no worker in the inventory"),
        (make_plan({"cpu-0": (64, ["a128"])}, {"a128": {"cpu-0": 1.0}}),
         "adapter a128 has rank 128 (its adapter_config.json) but GPU cpu-0 is at tier 64"),
        (make_plan({"cpu-0": (128, ["a128"])}, {"a128": {"cpu-0": 1.0}}),
         "set launcher.restart in the inventory"),
        (make_plan({"cpu-0": (64, ["gone"])}, {"gone": {"cpu-0": 1.0}}),
         "adapters.gone: directory"),
        (make_plan({"cpu-0": (64, ["empty"])}, {"empty": {"cpu-0": 1.0}}),
         "has no adapter_config.json"),
        (make_plan({"cpu-0": (64, ["x"])}, {"x": {"cpu-0": 1.0}}),
         "'x' is in the plan but not in the inventory"),
        (make_plan({"cpu-0": (64, ["a8", "a128", "b", "c", "d"])}, {}),
         "hosts 5 adapters but its worker holds at most 4"),
        (make_plan({"cpu-0": (64, ["a8"])}, {"a8": {"cpu-0": 0.5, "cpu-1": 0.5}}),
         "routes.a8 sends traffic to cpu-1, which neither hosts it nor serves it remotely"),
    ]
    for plan, message in cases:
        with pytest.raises(ConfigError) as info:
            check_plan_against_inventory(plan, inventory)
        assert message in str(info.value)


def remote_plan(tier: int = 64) -> PlacementPlan:
    """cpu-0 hosts a8 and a16; cpu-1 hosts a16 and serves a8 remotely, fetched from cpu-0."""
    plan = make_plan({"cpu-0": (64, ["a8", "a16"]), "cpu-1": (tier, ["a16"])},
                     {"a8": {"cpu-0": 0.25, "cpu-1": 0.75}, "a16": {"cpu-0": 0.5, "cpu-1": 0.5}})
    return plan.model_copy(update={"remote": {"a8": {"cpu-1": "cpu-0"}}})


def test_remote_pairs_need_a_worker_that_resolves_them(folder: Path) -> None:
    make_adapter(folder / "adapters", "a16", 16)
    make_adapter(folder / "store", "a8", 8)
    (folder / "empty-store").mkdir()
    second = {**WORKER, "gpu_id": "cpu-1", "url": "http://127.0.0.1:8102"}
    adapters: dict[str, str | Path] = {"a8": "adapters/a8", "a16": "adapters/a16"}
    plan = remote_plan()
    with_store = load_inventory(write_inventory(
        folder, [WORKER, {**second, "lora_resolver_dir": "store"}], adapters))
    assert with_store.worker("cpu-1").lora_resolver_dir == (folder / "store").resolve()
    assert check_plan_against_inventory(plan, with_store) == {"a8": 8, "a16": 16}
    cases = [
        ([WORKER, second], "plan: cpu-1 serves a8 remotely (fetched from cpu-0) but its worker "
                           "has no lora_resolver_dir"),
        ([WORKER, {**second, "lora_resolver_dir": "empty-store"}],
         "lora_resolver_dir '" + str((folder / "empty-store").resolve()) + "' has no "
         "a8/adapter_config.json; copy or link the adapter there"),
    ]
    for workers, message in cases:
        inventory = load_inventory(write_inventory(folder, workers, adapters))
        with pytest.raises(ConfigError) as info:
            check_plan_against_inventory(plan, inventory)
        assert message in str(info.value) and "\n" not in str(info.value)
    # The store's copy decides the rank, as vLLM reads it there.
    make_adapter(folder / "store", "a8", 128)
    with pytest.raises(ConfigError, match=r"adapter a8 has rank 128 .* but cpu-1, which serves "
                                          r"it remotely, is at tier 64"):
        check_plan_against_inventory(plan, with_store)
    with pytest.raises(ConfigError, match=r"workers\[1\]\.lora_resolver_dir: directory"):
        load_inventory(write_inventory(folder, [WORKER, {**second, "lora_resolver_dir": "no"}],
                                       adapters))


def test_hosting_view_moves_remote_shares_to_hosted_replicas() -> None:
    plan = remote_plan()
    view = hosting_view(plan)
    assert view.remote == {}
    assert view.routes["a8"] == {"cpu-0": 1.0}
    assert view.routes["a16"] == {"cpu-0": 0.5, "cpu-1": 0.5}
    assert [g.adapters for g in view.gpus] == [["a16", "a8"], ["a16"]]
    assert served_remotely(plan) == {"cpu-1": {"a8"}}
    plain = make_plan({"cpu-0": (64, ["a8"])}, {"a8": {"cpu-0": 1.0}})
    assert hosting_view(plain) is plain and served_remotely(plain) == {}
