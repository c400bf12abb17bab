"""``loraserve simulate``, ``compare`` and ``capacity`` end to end, and their bad input."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from loraserve import PlacementPlan
from loraserve.cli import main
from tests.conftest import QUICKSTART

HEADER = "TIMESTAMP,ContextTokens,GeneratedTokens\n"


def test_compare_prints_the_table(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    csv, png = tmp_path / "t.csv", tmp_path / "p.png"
    code = main(["compare", str(QUICKSTART), "--duration", "10", "--policies",
                 "vllm-default", "loraserve", "--csv", str(csv), "--plot", str(png), "-q"])
    out = capsys.readouterr().out
    assert code == 0
    assert "GPUs needed" in out and "p99 TTFT" in out
    assert "vllm-default" in out and "loraserve" in out
    table = pd.read_csv(csv)
    assert table["policy"].tolist() == ["vllm-default", "loraserve"]
    needed = table.set_index("policy")["gpus_needed"]
    assert needed["loraserve"] < needed["vllm-default"]
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_compare_on_a_trace_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    rows = "".join(f"2023-11-16 18:{15 + i // 60:02d}:{i % 60:02d}.5,{300 + 7 * i},"
                   f"{20 + i % 50}\n" for i in range(120))
    trace = tmp_path / "trace.csv"
    trace.write_text(HEADER + rows, encoding="utf-8")
    code = main(["compare", str(QUICKSTART), "--trace", str(trace), "--no-search",
                 "--policies", "loraserve", "--gpus", "14"])
    out = capsys.readouterr().out
    assert code == 0
    assert "trace trace.csv" in out and "on 14 GPUs" in out


def test_simulate_a_saved_plan(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    plan = tmp_path / "plan.yaml"
    assert main(["plan", str(QUICKSTART), "-o", str(plan), "-q"]) == 0
    capsys.readouterr()
    requests, gpus = tmp_path / "r.csv", tmp_path / "g.csv"
    code = main(["simulate", str(QUICKSTART), "--plan", str(plan), "--duration", "20",
                 "--requests-csv", str(requests), "--gpus-csv", str(gpus)])
    out = capsys.readouterr().out
    assert code in (0, 1)  # 1: the run misses the SLO; both print the figures
    assert "SLO attainment" in out and "predicted" in out
    assert "mean abs error" in out
    table = pd.read_csv(requests)
    assert {"ttft_ms", "tpot_ms", "e2e_ms", "slo_ok"} <= set(table.columns)
    assert len(pd.read_csv(gpus)) == PlacementPlan.load(plan).num_gpus


def test_capacity_table(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["capacity", str(QUICKSTART), "--duration", "10", "--rates", "0.5"])
    out = capsys.readouterr().out
    assert code == 0
    assert "GPUs planned" in out and "GPUs needed (simulated)" in out


@pytest.mark.parametrize(("body", "match"), [
    ("TIMESTAMP,ContextTokens\n2023-11-16 18:15:46,1\n", "lacks column"),
    (HEADER + "2023-11-16 18:15:47,1,2\n2023-11-16 18:15:46,1,2\n", "earlier than the row"),
    (HEADER + "2023-11-16 18:15:46,1,2\nlater,1,2\n", "TIMESTAMP 'later' is not a date"),
])
def test_a_bad_trace_is_one_line_and_exit_2(capsys: pytest.CaptureFixture[str],
                                            tmp_path: Path, body: str, match: str) -> None:
    trace = tmp_path / "bad.csv"
    trace.write_text(body, encoding="utf-8")
    code = main(["compare", str(QUICKSTART), "--trace", str(trace), "--no-search"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: ") and match in err
    assert err.count("\n") == 1


def test_unknown_policy_and_missing_plan(capsys: pytest.CaptureFixture[str],
                                         tmp_path: Path) -> None:
    assert main(["compare", str(QUICKSTART), "--policies", "magic", "--no-search"]) == 2
    assert "unknown policy 'magic'" in capsys.readouterr().err
    code = main(["simulate", str(QUICKSTART), "--plan", str(tmp_path / "none.yaml")])
    assert code == 2
    assert "not found" in capsys.readouterr().err
