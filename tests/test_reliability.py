"""Issue 20's reproductions: each bad input gets exit 2 (1 where infeasible) and one line.

Every test runs the real CLI entry point in-process and checks the exit code, that stderr
is one ``error:`` line naming the problem, and that no input file changed.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from loraserve import PlacementPlan, load_config
from loraserve.cli import main
from loraserve.models import GPUPlacement
from loraserve.models.io import MAX_ALIAS_EXPANSION
from tests.conftest import QUICKSTART, REPO_ROOT, base_raw
from tests.runtime.helpers import make_adapter, write_inventory


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """Exit code, stdout and stderr of ``loraserve argv``."""
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def one_error(err: str, *fragments: str) -> None:
    """``err`` is one ``error:`` line that contains every fragment."""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: "), err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


@pytest.fixture(scope="module")
def plan_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("reliability") / "plan.yaml"
    assert main(["plan", str(QUICKSTART), "-o", str(path), "--solver", "greedy", "-q"]) == 0
    return path


def config_file(tmp_path: Path, raw: dict[str, object] | None = None,
                name: str = "c.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(raw if raw is not None else base_raw()), encoding="utf-8")
    return path


# ---- 1: a NaN routing weight -----------------------------------------------------------------


def test_nan_share_is_refused_by_verify_and_apply(plan_file: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    raw = yaml.safe_load(plan_file.read_text())
    adapter = next(iter(raw["routes"]))
    gpu = next(iter(raw["routes"][adapter]))
    text = plan_file.read_text().replace(f"{gpu}: {raw['routes'][adapter][gpu]}",
                                         f"{gpu}: .nan", 1)
    bad = tmp_path / "nan.yaml"
    bad.write_text(text)
    code, _, err = run(["verify", str(QUICKSTART), str(bad)], capsys)
    assert code == 2
    one_error(err, "routes", "not a finite number")
    inventory = write_inventory(tmp_path, [{"gpu_id": "g0", "url": "http://127.0.0.1:1",
                                            "tier": 8}], {})
    (tmp_path / "adapters").mkdir(exist_ok=True)
    code, _, err = run(["apply", str(bad), "--workers", str(inventory)], capsys)
    assert code == 2
    one_error(err, "not a finite number")
    assert not (tmp_path / "routes.yaml").exists()


def test_nan_share_built_in_python_fails_verify(plan_file: Path) -> None:
    plan = PlacementPlan.load(plan_file)
    adapter, split = next(iter(plan.routes.items()))
    routes = dict(plan.routes)
    routes[adapter] = {g: float("nan") for g in split}
    broken = plan.model_copy(update={"routes": routes})
    problems = broken.verify(load_config(QUICKSTART))
    assert any(p.constraint == "routing" and p.subject == adapter for p in problems)


# ---- 3: alias bombs --------------------------------------------------------------------------


def _bomb(levels: int = 9) -> str:
    lines = ["x0: &x0 [a, a, a, a, a, a, a, a, a, a]"]
    for level in range(1, levels):
        lines.append(f"x{level}: &x{level} [" + ", ".join([f"*x{level - 1}"] * 10) + "]")
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("use", ["target_modules", "adapters"])
def test_alias_bombs_are_refused_in_one_short_line(tmp_path: Path, use: str,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    raw = base_raw()
    text = _bomb() + yaml.safe_dump({k: v for k, v in raw.items() if k != "adapters"})
    if use == "adapters":
        text += "adapters: [*x8]\n"
    else:
        text += "adapters:\n- {id: a0, rank: 8, request_rate: 1.0, target_modules: *x8}\n"
    path = tmp_path / "bomb.yaml"
    path.write_text(text)
    code, _, err = run(["validate", str(path)], capsys)
    assert code == 2
    one_error(err, "aliases expand to more than", f"{MAX_ALIAS_EXPANSION:,}")
    assert len(err) < 300


# ---- 4: outputs that would overwrite inputs --------------------------------------------------


def test_plan_refuses_to_write_over_its_config(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    config = config_file(tmp_path)
    before = config.read_bytes()
    code, _, err = run(["plan", str(config), "-o", str(config), "-q"], capsys)
    assert code == 2
    one_error(err, "-o", "is an input of this command")
    assert config.read_bytes() == before


def test_simulate_refuses_to_write_its_csv_over_the_config(
        plan_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "c.yaml"
    config.write_bytes(QUICKSTART.read_bytes())
    before = config.read_bytes()
    code, _, err = run(["simulate", str(config), "--plan", str(plan_file), "--requests-csv",
                        str(config), "--duration", "1", "-q"], capsys)
    assert code == 2
    one_error(err, "--requests-csv", "is an input")
    assert config.read_bytes() == before


def test_output_and_migration_may_not_share_a_file(plan_file: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "x.yaml"
    code, _, err = run(["plan", str(QUICKSTART), "--current", str(plan_file), "-o", str(target),
                        "--migration", str(target), "-q"], capsys)
    assert code == 2
    one_error(err, "--migration", "writes there too")
    assert not target.exists()


# ---- 5: tracebacks ---------------------------------------------------------------------------

ENCODINGS = {
    "latin-1": "# caf\xe9\n".encode("latin-1"),
    "utf-16": "a: 1\n".encode("utf-16"),
    "binary": bytes(range(256)),
}


@pytest.mark.parametrize("kind", sorted(ENCODINGS))
@pytest.mark.parametrize("role", ["config", "plan", "inventory", "profile", "adapters_csv"])
def test_inputs_that_are_not_utf8_get_one_line(tmp_path: Path, plan_file: Path, kind: str,
                                               role: str,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.bin"
    data = ENCODINGS[kind]
    if role == "config":
        bad.write_bytes(data + QUICKSTART.read_bytes() if kind == "latin-1" else data)
        argv = ["validate", str(bad)]
    elif role == "plan":
        bad.write_bytes(data)
        argv = ["verify", str(QUICKSTART), str(bad)]
    elif role == "inventory":
        bad.write_bytes(data)
        argv = ["apply", str(plan_file), "--workers", str(bad), "--dry-run"]
    else:
        bad.write_bytes(data)
        key = "profiles" if role == "profile" else "adapters_csv"
        value: object = [str(bad)] if role == "profile" else str(bad)
        argv = ["validate", str(config_file(tmp_path, base_raw(**{key: value})))]
    code, _, err = run(argv, capsys)
    assert code == 2
    one_error(err, "bad.bin")
    assert any(word in err for word in ("UTF-8", "UTF-16", "binary")), err


def test_adapters_csv_naming_a_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["validate", str(config_file(tmp_path, base_raw(adapters_csv=".")))],
                       capsys)
    assert code == 2
    one_error(err, "adapters_csv", "is a folder")


@pytest.mark.parametrize("flag", ["-o", "--migration"])
@pytest.mark.parametrize("target", ["folder", "missing"])
def test_bad_output_targets_are_refused_before_the_solve(
        tmp_path: Path, plan_file: Path, flag: str, target: str,
        capsys: pytest.CaptureFixture[str]) -> None:
    place = tmp_path / "out"
    if target == "folder":
        place.mkdir()
    else:
        place = tmp_path / "missing" / "plan.yaml"
    argv = ["plan", str(QUICKSTART), "-q", "--solver", "greedy", flag, str(place)]
    if flag == "--migration":
        argv += ["--current", str(plan_file)]
    code, out, err = run(argv, capsys)
    assert code == 2
    one_error(err, flag, "is a folder" if target == "folder" else "does not exist")
    assert "status" not in out  # refused before solving
    assert not list(tmp_path.rglob("*.tmp"))


@pytest.mark.parametrize("flag", ["--requests-csv", "--gpus-csv"])
def test_simulate_csv_into_a_folder(plan_file: Path, tmp_path: Path, flag: str,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["simulate", str(QUICKSTART), "--plan", str(plan_file), flag,
                        str(tmp_path), "--duration", "1", "-q"], capsys)
    assert code == 2
    one_error(err, flag, "is a folder")


def test_compare_csv_into_a_missing_folder(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["compare", str(QUICKSTART), "--csv", str(tmp_path / "no" / "t.csv"),
                        "--duration", "1", "-q"], capsys)
    assert code == 2
    one_error(err, "--csv", "does not exist")


def test_trace_row_with_absurd_tokens(plan_file: Path, tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    trace = tmp_path / "trace.csv"
    trace.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n"
                     "2023-11-16 18:15:46.6805900,1000000000000,10\n"
                     "2023-11-16 18:15:47.6805900,100,10\n")
    code, _, err = run(["simulate", str(QUICKSTART), "--plan", str(plan_file), "--trace",
                        str(trace), "-q"], capsys)
    assert code == 2
    one_error(err, "line 2", "ContextTokens", "more than")


@pytest.mark.parametrize(("argv", "fragment"), [
    (["simulate", "--rate-scale", "1e6"], "rate scale"),
    (["simulate", "--seed", "-1"], "--seed"),
    (["capacity", "--rates", "1e7"], "rate scale"),
    (["simulate", "--cold-load-ms", "-1"], "--cold-load-ms"),
    (["plan", "--threads", "0"], "--threads"),
    (["compare", "--gpus", "100000"], "--gpus"),
])
def test_flags_out_of_range(plan_file: Path, argv: list[str], fragment: str,
                            capsys: pytest.CaptureFixture[str]) -> None:
    command, *flags = argv
    full = [command, str(QUICKSTART), *flags, "-q"]
    if command == "simulate":
        full += ["--plan", str(plan_file), "--duration", "1"]
    if command in ("compare", "capacity"):
        full += ["--duration", "1"]
    code, _, err = run(full, capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0], err


@pytest.mark.parametrize("pools", [1, 2])
def test_infinite_cost_per_hour(tmp_path: Path, pools: int,
                                capsys: pytest.CaptureFixture[str]) -> None:
    raw = base_raw()
    text = yaml.safe_dump(raw)
    if pools == 2:
        raw["pools"].append({"gpu_type": "A100-80GB", "count": 4, "memory_gib": 80.0,
                             "cost_per_hour": 1.0})
        text = yaml.safe_dump(raw)
    text = text.replace("cost_per_hour: 4.0", "cost_per_hour: .inf")
    path = tmp_path / "c.yaml"
    path.write_text(text)
    code, _, err = run(["plan", str(path), "-q"], capsys)
    assert code == 2
    one_error(err, "pools[0].cost_per_hour", "not a finite number")


@pytest.mark.parametrize(("flag", "value", "fragment"), [
    ("--listen", "127.0.0.1:99999", "between 0 and 65535"),
    ("--health-interval", "0", "at least 0.05"),
])
def test_route_flags_out_of_range(flag: str, value: str, fragment: str,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["route", "--plan", "p.yaml", "--workers", "w.yaml", flag, value],
                       capsys)
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and fragment in err


def test_inventory_routes_file_that_is_a_folder(tmp_path: Path, plan_file: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "adapters").mkdir()
    (tmp_path / "routes").mkdir()
    inventory = write_inventory(tmp_path, [{"gpu_id": "g0", "url": "http://127.0.0.1:1",
                                            "tier": 8}], {}, routes_file="routes")
    code, _, err = run(["apply", str(plan_file), "--workers", str(inventory), "--dry-run"],
                       capsys)
    assert code == 2
    one_error(err, "routes_file", "is a folder")


@pytest.mark.parametrize("reader", ["head -1", "true"])
def test_verify_into_a_closed_pipe(plan_file: Path, tmp_path: Path, reader: str) -> None:
    # `loraserve verify ... | head -1`: the reader leaves early. Against another config the
    # plan has a violation per adapter, lines enough to write after the reader is gone.
    other = config_file(tmp_path)
    result = subprocess.run(
        f"{sys.executable} -m loraserve.cli verify {other} {plan_file} | {reader}",
        shell=True, capture_output=True, text=True, cwd=REPO_ROOT, timeout=120, check=False)
    assert "Traceback" not in result.stderr and "BrokenPipe" not in result.stderr, \
        result.stderr


# ---- 6: simulate checks the plan it is given -------------------------------------------------


def _edited_plan(plan_file: Path, tmp_path: Path, how: str) -> Path:
    plan = PlacementPlan.load(plan_file)
    if how == "tier":
        config = load_config(QUICKSTART)
        rank = {a.id: a.rank for a in config.adapters}
        gpu = next(g for g in plan.gpus if max(rank[a] for a in g.adapters) >= 64)
        gpus = [g.model_copy(update={"tier": 8}) if g.gpu_id == gpu.gpu_id else g
                for g in plan.gpus]
        plan = plan.model_copy(update={"gpus": gpus})
    else:
        adapter, split = next((a, s) for a, s in plan.routes.items() if len(s) == 1)
        routes = dict(plan.routes)
        routes[adapter] = {g: 1.5 for g in split}
        plan = plan.model_copy(update={"routes": routes})
    path = tmp_path / f"{how}.yaml"
    path.write_text(plan.to_yaml())
    return path


@pytest.mark.parametrize("how", ["tier", "share"])
def test_simulate_refuses_an_unsound_plan(plan_file: Path, tmp_path: Path, how: str,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    bad = _edited_plan(plan_file, tmp_path, how)
    code, out, err = run(["simulate", str(QUICKSTART), "--plan", str(bad), "--duration", "1",
                          "-q"], capsys)
    assert code == 2
    one_error(err, str(bad), "tier" if how == "tier" else "between 0 and 1")
    assert "SLO attainment" not in out


# ---- 7: --current with another config's plan -------------------------------------------------


def test_current_from_another_config_is_refused_unless_forced(
        plan_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    other = config_file(tmp_path, base_raw([{"id": f"other-{i}", "rank": 8,
                                             "request_rate": 0.5} for i in range(5)]))
    code, _, err = run(["plan", str(other), "--current", str(plan_file), "-q"], capsys)
    assert code == 2
    one_error(err, "--current", "only 0 of its 200 adapters", "--force")
    code, out, _ = run(["plan", str(other), "--current", str(plan_file), "-q", "--force"],
                       capsys)
    assert code == 0 and "migration:" in out


# ---- 8: accepted without a word --------------------------------------------------------------


def test_duplicate_keys_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(base_raw()) + "base_model: llama-2-7b\n")
    code, _, err = run(["validate", str(path)], capsys)
    assert code == 2
    one_error(err, "base_model", "given twice")


def test_route_refuses_a_plan_with_no_worker_of_the_inventory(
        plan_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_adapter(tmp_path / "adapters", "a", 8)
    inventory = write_inventory(tmp_path, [{"gpu_id": "elsewhere-0", "url":
                                            "http://127.0.0.1:1", "tier": 8}], {})
    code, _, err = run(["route", "--plan", str(plan_file), "--workers", str(inventory)], capsys)
    assert code == 2
    one_error(err, "none of its", "has a worker in the inventory")


@pytest.mark.parametrize("problem", ["gpu_type", "profile"])
def test_validate_refuses_what_plan_would(tmp_path: Path, problem: str,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    raw = base_raw()
    if problem == "gpu_type":
        raw["pools"][0]["gpu_type"] = "TPU-v9"
    else:
        profile = tmp_path / "p.yaml"
        profile.write_text("gpu_type: [unclosed\n")
        raw["profiles"] = [str(profile)]
    code, _, err = run(["validate", str(config_file(tmp_path, raw))], capsys)
    code_plan, _, err_plan = run(["plan", str(tmp_path / "c.yaml"), "-q"], capsys)
    assert code == 2 and code_plan == 2
    one_error(err)
    assert err == err_plan


# ---- 9: misleading messages ------------------------------------------------------------------


def test_nan_rate_names_the_field(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(base_raw()).replace("request_rate: 1.0",
                                                       "request_rate: .nan"))
    code, _, err = run(["validate", str(path)], capsys)
    assert code == 2
    one_error(err, "adapters[0].request_rate", "not a finite number")
    assert "1000000" not in err


def test_plan_given_as_config_is_named(plan_file: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["validate", str(plan_file)], capsys)
    assert code == 2
    one_error(err, "is a plan, not a config")


def test_profiles_naming_a_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["validate", str(config_file(tmp_path, base_raw(profiles=["."])))],
                       capsys)
    assert code == 2
    one_error(err, "profiles", "is a folder")


def test_a_huge_id_is_not_echoed_whole(tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    huge = "x" * 100_000
    code, _, err = run(["validate", str(config_file(
        tmp_path, base_raw([{"id": huge, "rank": 8, "request_rate": 1.0}])))], capsys)
    assert code == 2
    one_error(err, "adapters[0].id")
    assert len(err) < 500


# ---- 10: large inputs ------------------------------------------------------------------------


def test_large_yaml_of_comments_validates(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    # 5 MB here (benchmarks/input_scale.py measures 50 MB): the C loader is the one used.
    path = tmp_path / "c.yaml"
    path.write_text(("# " + "x" * 98 + "\n") * 50_000 + yaml.safe_dump(base_raw()))
    code, out, _ = run(["validate", str(path)], capsys)
    assert code == 0 and "valid" in out


def test_gpu_placement_keeps_non_finite_predictions_in_python() -> None:
    # Only files are held to finite numbers; an overloaded GPU's prediction may be inf.
    gpu = GPUPlacement(gpu_id="g", gpu_type="H100-80GB", tier=8,
                       predicted_ttft_ms=float("inf"))
    assert gpu.predicted_ttft_ms == float("inf")


# ---- 13: a preset's name on other shapes -----------------------------------------------------


def test_other_shapes_under_a_preset_name_do_not_get_its_profile(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from loraserve.models import PRESETS
    from loraserve.profiles import CostModel

    shapes = PRESETS["llama-3-8b"].model_dump(exclude_none=True)
    shapes["num_layers"] = 4 * shapes["num_layers"]
    config = load_config(config_file(tmp_path, base_raw(base_model=shapes)))
    with caplog.at_level("WARNING"):
        model = CostModel.from_config(config)
    assert "shapes other than the preset" in caplog.text
    assert model.profiles["H100-80GB"].source == "analytic"
    preset = CostModel.from_config(load_config(config_file(tmp_path, base_raw(), "p.yaml")))
    # Four times the layers: each step costs more than on the shipped profile's shapes.
    assert (model.capacity("H100-80GB", 8).decode_tokens_per_s
            < preset.capacity("H100-80GB", 8).decode_tokens_per_s)
