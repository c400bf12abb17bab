"""Fuzzing the CLI: generated inputs and flag sets, valid and broken, run in-process.

A *case* is a set of input files (config, plan, inventory, trace, adapters CSV, profile) and
one command line. :func:`run_case` writes the files, runs ``loraserve.cli.main`` on the
command line and checks the promise the README makes for every input:

- the exit code is 0, 1 (with something said) or 2 (with exactly one line on stderr);
- no exception escapes (no traceback), whatever the input;
- no input file changes (outputs may name inputs; the command must refuse them).

The strategies start from small valid documents and break them: a value replaced by a
hostile one (NaN, inf, huge, negative, wrong type, a 10,000-character string), a key
dropped or invented, the text truncated, re-encoded (Latin-1, UTF-16), made binary, an
alias bomb or a duplicate key added. Used by ``tests/test_fuzz.py`` (a few hundred cases in
``make test``) and ``benchmarks/fuzz.py`` (10,000+ in ``make fuzz``).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import io
import tempfile
import traceback
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import yaml
from hypothesis import strategies as st

from loraserve.cli import main
from loraserve.models import config_from_mapping
from loraserve.solver import solve

# ---- valid starting points -------------------------------------------------------------------

CONFIG: dict[str, Any] = {
    "base_model": "llama-3-8b",
    "slo": {"ttft_ms": 2000.0, "tpot_ms": 60.0, "percentile": 99.0},
    "pools": [{"gpu_type": "H100-80GB", "count": 8, "memory_gib": 80.0, "cost_per_hour": 4.0}],
    "serving": {"max_loras": 4, "max_cpu_loras": 8},
    "adapter_defaults": {"prompt_tokens": 512.0, "output_tokens": 128.0},
    "adapters": [
        {"id": "a0", "rank": 8, "request_rate": 1.0},
        {"id": "a1", "rank": 16, "request_rate": 2.0},
        {"id": "a2", "rank": 64, "request_rate": 0.5, "target_modules": ["q_proj", "v_proj"]},
    ],
}

INVENTORY: dict[str, Any] = {
    "adapter_roots": ["."],
    "workers": [{"gpu_id": "H100-80GB-0", "url": "http://127.0.0.1:9", "tier": 64,
                 "max_loras": 4, "max_cpu_loras": 8}],
    "timeouts": {"connect_s": 0.2, "read_s": 0.5},
    "retries": 0,
}

TRACE = ("TIMESTAMP,ContextTokens,GeneratedTokens\n"
         + "".join(f"2023-11-16 18:15:{46 + i:02d}.0000000,{200 + 37 * i},{20 + i}\n"
                   for i in range(8)))

ADAPTERS_CSV = "id,rank,request_rate\nc0,8,0.5\nc1,32,1.5\n"


@cache
def valid_plan(with_csv: bool = False) -> dict[str, Any]:
    """The greedy plan of :data:`CONFIG` (plus the CSV's adapters), as its YAML mapping."""
    raw = copy.deepcopy(CONFIG)
    if with_csv:
        raw["adapters"] += [{"id": "c0", "rank": 8, "request_rate": 0.5},
                            {"id": "c1", "rank": 32, "request_rate": 1.5}]
    result = solve(config_from_mapping(raw, source="fuzz"), solver="greedy", time_limit=5.0)
    assert result.plan is not None
    data: dict[str, Any] = yaml.safe_load(result.plan.to_yaml())
    return data


# ---- hostile values and mutations ------------------------------------------------------------

HOSTILE: list[Any] = [
    float("nan"), float("inf"), -float("inf"), -1, 0, 1e308, 1e12, -1e-9, 2**70, True, None,
    "", "x" * 10_000, "8", "ünïcödé", "a b", "../../etc/passwd", [], {}, [1, 2], {"k": 1},
    12, 0.5, 1.5, "H100-80GB", "llama-3-8b", ".", "/", 65536, 99999,
]

# Copied per draw: a drawn list or dict may be mutated later, and a shared one would change
# what later draws produce (hypothesis rightly calls that flaky generation).
hostile = st.sampled_from(HOSTILE).map(copy.deepcopy)


def _paths(doc: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found: list[tuple[Any, ...]] = [prefix] if prefix else []
    if isinstance(doc, dict):
        for key, value in doc.items():
            found += _paths(value, (*prefix, key))
    elif isinstance(doc, list):
        for index, value in enumerate(doc):
            found += _paths(value, (*prefix, index))
    return found


def _set(doc: Any, path: tuple[Any, ...], value: Any, delete: bool = False) -> None:
    parent = doc
    for key in path[:-1]:
        parent = parent[key]
    if delete:
        del parent[path[-1]]
    else:
        parent[path[-1]] = value


@st.composite
def mutated(draw: st.DrawFn, base: dict[str, Any]) -> dict[str, Any]:
    """``base`` with 0 to 3 structural mutations."""
    doc = copy.deepcopy(base)
    # Most documents stay valid, so that the commands get past their input checks too.
    for _ in range(draw(st.sampled_from([0, 0, 0, 0, 1, 1, 2, 3]))):
        paths = _paths(doc)
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        action = draw(st.sampled_from(["replace", "replace", "delete", "add"]))
        try:
            if action == "replace":
                _set(doc, path, draw(hostile))
            elif action == "delete":
                _set(doc, path, None, delete=True)
            else:
                target = doc
                for key in path[:-1]:
                    target = target[key]
                if isinstance(target, dict):
                    target[draw(st.sampled_from(["extra", "rank", "id", "gpus"]))] = \
                        draw(hostile)
        except (KeyError, IndexError, TypeError):
            continue
    return doc


def _bomb() -> str:
    lines = ["x0: &x0 [a, a, a, a, a, a, a, a, a, a]"]
    for level in range(1, 9):
        lines.append(f"x{level}: &x{level} [" + ", ".join([f"*x{level - 1}"] * 10) + "]")
    return "\n".join(lines) + "\nadapters: [*x8]\n"


@st.composite
def encoded(draw: st.DrawFn, text: str) -> bytes:
    """``text`` as bytes, sometimes damaged: truncated, re-encoded, binary, a bomb, doubled."""
    damage = draw(st.sampled_from(["none"] * 40 + ["truncate", "latin1", "utf16", "binary",
                                                  "bomb", "duplicate", "empty", "junk"]))
    if damage == "truncate":
        return text.encode()[: draw(st.integers(0, max(0, len(text) - 1)))]
    if damage == "latin1":
        return ("# caf\xe9\n" + text).encode("latin-1", errors="replace")
    if damage == "utf16":
        return text.encode("utf-16")
    if damage == "binary":
        return draw(st.binary(min_size=1, max_size=200))
    if damage == "bomb":
        return (_bomb() + text).encode()
    if damage == "duplicate":
        first = text.split("\n", 1)[0]
        return (text + "\n" + first + "\n").encode()
    if damage == "empty":
        return b""
    if damage == "junk":
        return draw(st.text(max_size=200)).encode("utf-8", errors="replace")
    return text.encode()


def _dump(doc: Any) -> str:
    return yaml.safe_dump(doc, sort_keys=False, allow_unicode=True)


# ---- cases -----------------------------------------------------------------------------------


@dataclass
class Case:
    """Input files (name -> bytes) and a command line whose paths are relative to a folder."""

    files: dict[str, bytes]
    argv: list[str]
    extra: dict[str, str] = field(default_factory=dict)


OUTPUT_TARGETS = ["out/new.out", "out/new.out", "config.yaml", "plan.yaml", "out", "missing/x",
                  "trace.csv"]
DRAWN_OUTPUT = st.sampled_from(OUTPUT_TARGETS)


def _number_flag(draw: st.DrawFn, flag: str, good: list[str]) -> list[str]:
    bad = ["nan", "inf", "-1", "0", "x", ""]
    if flag not in ("--time-limit", "--duration"):
        bad.append("1e9")  # a valid but endless time limit or duration is not a fuzz finding
    value = draw(st.sampled_from(good * (4 * len(bad) // len(good)) + bad))
    return [flag, value]


@st.composite
def cases(draw: st.DrawFn) -> Case:
    """One generated case; see the module docstring."""
    config = CONFIG
    with_csv = draw(st.integers(0, 3)) == 0
    if with_csv:
        config = {**CONFIG, "adapters_csv": "adapters.csv"}
    if draw(st.integers(0, 9)) == 0:
        config = {**config, "profiles": ["profile.yaml"]}
    files = {
        "config.yaml": draw(encoded(_dump(draw(mutated(config))))),
        "plan.yaml": draw(encoded(_dump(draw(mutated(valid_plan(with_csv)))))),
        "inventory.yaml": draw(encoded(_dump(draw(mutated(INVENTORY))))),
        "trace.csv": draw(encoded(TRACE)),
        "adapters.csv": draw(encoded(ADAPTERS_CSV)),
        "profile.yaml": draw(encoded("gpu_type: H100-80GB\n")),
    }
    command = draw(st.sampled_from(["validate"] * 3 + ["verify"] * 3 + ["plan"] * 3
                                   + ["simulate"] * 2 + ["apply", "schema", "compare",
                                                         "capacity", "bogus"]))
    argv: list[str] = [command]
    if command == "validate":
        argv += ["config.yaml"]
    elif command == "verify":
        argv += ["config.yaml", "plan.yaml"]
    elif command == "plan":
        argv += ["config.yaml", "-q", "--solver", draw(st.sampled_from(["greedy", "greedy",
                                                                        "auto", "lns"]))]
        argv += _number_flag(draw, "--time-limit", ["0.5", "1"])
        if draw(st.booleans()):
            argv += ["-o", draw(DRAWN_OUTPUT)]
        if draw(st.booleans()):
            argv += ["--current", "plan.yaml"]
            if draw(st.booleans()):
                argv += ["--migration", draw(DRAWN_OUTPUT)]
            if draw(st.booleans()):
                argv += ["--force"]
        if draw(st.booleans()):
            argv += _number_flag(draw, "--threads", ["1", "2"])
        if draw(st.booleans()):
            argv += _number_flag(draw, "--seed", ["0", "7"])
    elif command == "simulate":
        argv += ["config.yaml", "--plan", "plan.yaml", "-q"]
        argv += _number_flag(draw, "--duration", ["1", "2"])
        if draw(st.booleans()):
            argv += ["--trace", "trace.csv"]
        if draw(st.booleans()):
            argv += _number_flag(draw, "--rate-scale", ["0.5", "2"])
        if draw(st.booleans()):
            argv += _number_flag(draw, "--cold-load-ms", ["0", "50"])
        if draw(st.booleans()):
            argv += _number_flag(draw, "--seed", ["0", "3"])
        if draw(st.booleans()):
            argv += [draw(st.sampled_from(["--requests-csv", "--gpus-csv"])), draw(DRAWN_OUTPUT)]
    elif command == "apply":
        argv += ["plan.yaml", "--workers", "inventory.yaml", "--dry-run"]
    elif command == "schema":
        if draw(st.booleans()):
            argv += ["-o", draw(DRAWN_OUTPUT)]
    elif command == "compare":
        argv += ["config.yaml", "-q", "--no-search", "--policies", "loraserve", "--jobs", "1"]
        argv += _number_flag(draw, "--duration", ["1"])
        if draw(st.booleans()):
            argv += _number_flag(draw, "--gpus", ["2", "4"])
        if draw(st.booleans()):
            argv += ["--csv", draw(DRAWN_OUTPUT)]
    elif command == "capacity":
        argv += ["config.yaml", "-q", "--policies", "loraserve", "--duration", "1",
                 "--time-limit", "0.5"]
        argv += ["--rates", *draw(st.lists(st.sampled_from(["0.5", "1", "2", "0", "nan",
                                                              "1e7"]), min_size=1, max_size=2))]
        if draw(st.booleans()):
            argv += ["--trace", "trace.csv"]
        if draw(st.booleans()):
            argv += ["--csv", draw(DRAWN_OUTPUT)]
    else:
        argv += draw(st.lists(st.sampled_from(["x", "--y", "-o", "1"]), max_size=3))
    return Case(files, argv)


# ---- running a case --------------------------------------------------------------------------


@dataclass
class Outcome:
    """What one case did."""

    code: int | None
    out: str
    err: str
    problem: str | None  # the broken promise, None when every check held


OUTPUT_FLAGS = frozenset({"-o", "--output", "--migration", "--requests-csv", "--gpus-csv",
                          "--csv"})


def inputs_of(case: Case) -> set[str]:
    """The case's files its command reads: named in argv other than as an output, and the
    files a config refers to."""
    named = {arg for i, arg in enumerate(case.argv)
             if arg in case.files and not (i and case.argv[i - 1] in OUTPUT_FLAGS)}
    if "config.yaml" in named:
        named |= {"adapters.csv", "profile.yaml"}
    return named


def run_case(case: Case) -> Outcome:
    """Write the case's files in a fresh folder, run the CLI there, check the promises."""
    with tempfile.TemporaryDirectory(prefix="loraserve-fuzz-") as folder:
        root = Path(folder)
        (root / "out").mkdir()
        for name, data in case.files.items():
            (root / name).write_bytes(data)
        before = {name: hashlib.sha256(data).hexdigest() for name, data in case.files.items()}
        out, err = io.StringIO(), io.StringIO()
        code: int | None = None
        problem: str | None = None
        with contextlib.chdir(root), contextlib.redirect_stdout(out), \
                contextlib.redirect_stderr(err):
            try:
                code = main(case.argv)
            except BaseException as exc:  # the point is to see anything that escapes
                problem = ("exception escaped: "
                           + "".join(traceback.format_exception(exc)).strip().splitlines()[-1])
                details = "".join(traceback.format_exception(exc))
        if problem is not None:
            return Outcome(code, out.getvalue(), details, problem)
        lines = [line for line in err.getvalue().splitlines() if line.strip()]
        if code not in (0, 1, 2):
            problem = f"exit code {code}"
        elif "Traceback" in err.getvalue():
            problem = "a traceback on stderr"
        elif code == 2 and len(lines) != 1:
            problem = f"exit 2 with {len(lines)} lines on stderr"
        elif code == 1 and not (out.getvalue().strip() or lines):
            problem = "exit 1 without a word"
        for name in inputs_of(case):
            digest, path = before[name], root / name
            if not path.is_file() or hashlib.sha256(path.read_bytes()).hexdigest() != digest:
                problem = f"input {name} changed"
        return Outcome(code, out.getvalue(), err.getvalue(), problem)
