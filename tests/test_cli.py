from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from loraserve import PlacementPlan, load_config
from loraserve.cli import build_parser, main
from tests.conftest import QUICKSTART, adapter, base_raw, rate_for_load


@pytest.fixture(scope="module")
def quickstart_plan(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cli") / "plan.yaml"
    assert main(["plan", str(QUICKSTART), "-o", str(path), "--solver", "greedy",
                 "--time-limit", "20"]) == 0
    return path


def compute_only_quickstart(tmp_path: Path) -> Path:
    """The quickstart with the SLO families off (the compute-only model), written out."""
    raw = yaml.safe_load(QUICKSTART.read_text())
    raw["serving"]["slo_families"] = False
    return write_config(tmp_path, raw)


def write_config(tmp_path: Path, raw: dict[str, object], name: str = "c.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return path


def test_plan_writes_verifiable_file(quickstart_plan: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    assert quickstart_plan.is_file()
    plan = PlacementPlan.load(quickstart_plan)
    config = load_config(QUICKSTART)
    assert plan.verify(config) == []
    assert set(plan.routes) == {a.id for a in config.adapters}
    assert main(["verify", str(QUICKSTART), str(quickstart_plan)]) == 0
    out = capsys.readouterr().out
    assert f"valid for {QUICKSTART}" in out
    assert f"({plan.num_gpus} GPUs)" in out


def test_plan_prints_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out_file = tmp_path / "p.yaml"
    assert main(["plan", str(QUICKSTART), "--solver", "greedy", "-o", str(out_file)]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split() == ["gpu_type", "tier", "gpus", "adapters", "mean",
                                           "util", "max", "util"]
    assert "status " in out
    assert "solver greedy" in out
    assert f"plan written to {out_file}" in out
    plan = PlacementPlan.load(out_file)
    total = next(line for line in out.splitlines() if line.startswith("total"))
    assert total.split()[1] == str(plan.num_gpus)
    # The batch_slots family keeps every GPU's busy adapters to what meets the SLO in
    # simulation (a little over max_loras at times): nothing is said.
    table = plan.slot_table(load_config(QUICKSTART))
    assert (table["expected_active"] <= 16.5).all()
    assert not any(line.startswith("slot contention") for line in out.splitlines())


def test_compute_only_plan_warns_of_slot_contention(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    # With the SLO families off (the compute-only model), the quickstart's GPUs host up to
    # 32 busy adapters for 16 batch slots: said, with the GPU count the slot table gives.
    path = compute_only_quickstart(tmp_path)
    out_file = tmp_path / "p.yaml"
    assert main(["plan", str(path), "--solver", "greedy", "-o", str(out_file)]) == 0
    out = capsys.readouterr().out
    config = load_config(path)
    crowded = PlacementPlan.load(out_file).slot_table(config).query("overflow > 0.05")
    warning = next(line for line in out.splitlines() if line.startswith("slot contention"))
    assert warning.startswith(f"slot contention: {len(crowded)} GPU(s)")
    assert len(crowded) > 0 and "max_loras (16)" in warning


def test_plan_without_slot_contention_says_nothing(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    raw = base_raw([adapter(f"a{i}", 8, 0.01) for i in range(6)])
    assert main(["plan", str(write_config(tmp_path, raw)), "-o", str(tmp_path / "p.yaml")]) == 0
    assert "slot contention" not in capsys.readouterr().out


def test_corrupted_weights_fail_verify(quickstart_plan: Path, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    raw = yaml.safe_load(quickstart_plan.read_text(encoding="utf-8"))
    victim = sorted(raw["routes"])[0]
    raw["routes"][victim] = {g: w * 0.25 for g, w in raw["routes"][victim].items()}
    bad = tmp_path / "bad-plan.yaml"
    bad.write_text(yaml.safe_dump(raw), encoding="utf-8")
    capsys.readouterr()
    assert main(["verify", str(QUICKSTART), str(bad)]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1] == f"{bad}: 1 violation(s)"
    assert lines[0].startswith(f"routing: {victim}: routing weights sum to 0.250000")


def test_verify_against_other_config_fails(quickstart_plan: Path, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    doubled = load_config(QUICKSTART).scaled(2.0)
    path = tmp_path / "hot.yaml"
    path.write_text(doubled.to_yaml(), encoding="utf-8")
    assert main(["verify", str(path), str(quickstart_plan)]) == 1
    out = capsys.readouterr().out
    assert "compute: " in out


def test_verify_missing_plan_is_usage_error(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["verify", str(QUICKSTART), str(tmp_path / "none.yaml")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1
    assert err[0].startswith("error: ")
    assert "none.yaml: file not found" in err[0]


def test_verify_malformed_plan_is_usage_error(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "plan.yaml"
    bad.write_text("base_model: llama-3-8b\ngpus: [{gpu_id: x}]\n", encoding="utf-8")
    assert main(["verify", str(QUICKSTART), str(bad)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1
    assert "gpus[0].gpu_type: is required" in err[0]


def test_verify_plan_with_foreign_tier(quickstart_plan: Path, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    raw = yaml.safe_load(quickstart_plan.read_text(encoding="utf-8"))
    raw["gpus"][0]["tier"] = 512
    bad = tmp_path / "tier.yaml"
    bad.write_text(yaml.safe_dump(raw), encoding="utf-8")
    assert main(["verify", str(QUICKSTART), str(bad)]) == 1
    assert "tier 512 is not in serving.tiers" in capsys.readouterr().out


def test_schema_to_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert "adapters" in schema["properties"]
    assert {"base_model", "slo", "pools", "adapters"} <= set(schema["required"])


def test_schema_to_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "schema.json"
    assert main(["schema", "-o", str(path)]) == 0
    assert capsys.readouterr().out == ""
    schema = json.loads(path.read_text(encoding="utf-8"))
    assert "adapters" in schema["properties"]
    assert "serving" in schema["properties"]


def test_infeasible_plan_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rate = rate_for_load(0.4)
    raw = base_raw([adapter(f"s{i}", 8, rate) for i in range(6)], count=2)
    path = write_config(tmp_path, raw)
    out_file = tmp_path / "never.yaml"
    assert main(["plan", str(path), "--solver", "greedy", "-o", str(out_file)]) == 1
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("infeasible:")
    assert "short by 1" in lines[0]
    assert not out_file.exists()


def test_plan_bad_config_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    raw = base_raw([{"id": "a", "rank": 12, "request_rate": 1.0}])
    path = write_config(tmp_path, raw)
    assert main(["plan", str(path)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1
    assert "adapters[0].rank" in err[0]


@pytest.mark.parametrize("argv", [
    ["plan", str(QUICKSTART), "--time-limit", "-3"],
    ["plan", str(QUICKSTART), "--solver", "magic"],
    ["frobnicate"],
    [],
])
def test_bad_arguments_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    assert "error:" in capsys.readouterr().err


def test_parser_lists_subcommands() -> None:
    help_text = build_parser().format_help()
    for command in ("plan", "validate", "verify", "schema"):
        assert command in help_text


# ---- re-planning from a running plan ---------------------------------------------------------


def drifted_quickstart(tmp_path: Path, factor: float) -> Path:
    raw = yaml.safe_load(QUICKSTART.read_text(encoding="utf-8"))
    for entry in raw["adapters"][::10]:
        entry["request_rate"] = entry["request_rate"] * factor
    return write_config(tmp_path, raw, "drifted.yaml")


def test_replan_writes_plan_and_migration(quickstart_plan: Path, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    from loraserve.models.migration import MigrationPlan

    config_path = drifted_quickstart(tmp_path, 2.5)
    out_plan, out_moves = tmp_path / "next.yaml", tmp_path / "moves.yaml"
    assert main(["plan", str(config_path), "--current", str(quickstart_plan), "-o",
                 str(out_plan), "--migration", str(out_moves), "-q"]) == 0
    out = capsys.readouterr().out
    assert "solver incremental" in out
    assert "migration: " in out
    new = PlacementPlan.load(out_plan)
    assert new.verify(load_config(config_path)) == []
    migration = MigrationPlan.load(out_moves)
    old = PlacementPlan.load(quickstart_plan)
    slots = load_config(config_path).serving.adapters_per_gpu
    assert migration.replay(old, slots, new=new) == []
    assert f"migration written to {out_moves}" in out


def test_replan_move_cap_too_small_exits_1(quickstart_plan: Path, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    config_path = drifted_quickstart(tmp_path, 3.0)
    out_plan = tmp_path / "never.yaml"
    code = main(["plan", str(config_path), "--current", str(quickstart_plan), "--max-moves",
                 "0", "-o", str(out_plan)])
    out = capsys.readouterr().out
    assert code == 1
    assert out.startswith("infeasible: carrying the new rates needs")
    assert not out_plan.exists()


@pytest.mark.parametrize("extra", [["--max-moves", "3"], ["--migration", "m.yaml"]])
def test_replan_options_need_current(extra: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", str(QUICKSTART), *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --")
    assert "--current" in err
    assert len(err.strip().splitlines()) == 1


def test_replan_missing_current_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", str(QUICKSTART), "--current", str(tmp_path / "nope.yaml")]) == 2
    assert "file not found" in capsys.readouterr().err


def test_progress_lines_on_request(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", str(QUICKSTART), "--progress", "--solver", "greedy"]) == 0
    err = capsys.readouterr().err
    assert re.search(r"greedy: incumbent \d+", err)
    assert "bound 14" in err


def test_plan_simulate_checks_and_keeps_the_planned_quickstart(
        quickstart_plan: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # With the SLO families the planned quickstart meets the SLO in simulation as it is.
    out_plan = tmp_path / "checked.yaml"
    assert main(["plan", str(QUICKSTART), "--solver", "greedy", "--simulate",
                 "--sim-duration", "60", "-o", str(out_plan)]) == 0
    out = capsys.readouterr().out
    planned = PlacementPlan.load(quickstart_plan)
    assert f"the plan ({planned.num_gpus} GPUs) meets the SLO" in out
    assert PlacementPlan.load(out_plan).num_gpus == planned.num_gpus


def test_plan_simulate_tightens_the_gpus_that_miss(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    # The compute-only model's quickstart plan misses the SLO in simulation; --simulate says
    # which GPUs and why, tightens their adapters' families and keeps a re-solved plan that
    # meets it, still valid for the config.
    path = compute_only_quickstart(tmp_path)
    out_plan = tmp_path / "sized.yaml"
    assert main(["plan", str(path), "--solver", "greedy", "--simulate",
                 "--sim-duration", "60", "-o", str(out_plan)]) == 0
    out = capsys.readouterr().out
    assert "(14 GPUs) misses the SLO" in out and "tightening" in out
    worst = next(line for line in out.splitlines() if line.startswith("worst GPUs"))
    assert worst.count("%") >= 3 and "p99 TTFT" in worst
    assert "kept the re-solved plan" in out
    sized = PlacementPlan.load(out_plan)
    assert sized.num_gpus > 14
    config = load_config(path)
    assert sized.verify(config) == []
    # The kept plan does meet the SLO on the same traffic.
    from loraserve.sim import Scenario, deployment_from_plan, generate_requests

    scenario = Scenario(config, lambda s: generate_requests(config, 60.0, seed=0, rate_scale=s))
    assert scenario.simulate(deployment_from_plan(sized, config)).meets_slo


def test_plan_simulate_keeps_a_plan_that_meets_the_slo(tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    rate = rate_for_load(0.3)
    path = write_config(tmp_path, base_raw([adapter(f"a{i}", 8, rate) for i in range(3)], None,
                                           8))
    out_plan = tmp_path / "p.yaml"
    assert main(["plan", str(path), "--simulate", "-o", str(out_plan)]) == 0
    out = capsys.readouterr().out
    assert re.search(r"the plan \(\d+ GPUs\) meets the SLO", out)
    assert "fewest GPUs" not in out
    assert PlacementPlan.load(out_plan).num_gpus == 1


def test_plan_simulate_is_not_for_replans(quickstart_plan: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", str(QUICKSTART), "--current", str(quickstart_plan), "--simulate"]) == 2
    assert "--simulate sizes a fresh plan" in capsys.readouterr().err
