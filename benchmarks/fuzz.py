"""Fuzz the CLI: ``python benchmarks/fuzz.py --cases 10000`` (``make fuzz``).

Runs generated cases (tests/cli_fuzz.py: configs, plans, inventories, traces and flag sets,
valid and broken) through ``loraserve.cli.main`` in-process and prints how many ran, how
long they took, the exit codes per command, and every broken promise (an exception that
escaped, a traceback, exit 2 without exactly one line, an input file changed). Exits 1 when
any promise broke.
"""

from __future__ import annotations

import argparse
import collections
import logging
import sys
import time
from pathlib import Path

from hypothesis import HealthCheck, given, settings

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.cli_fuzz import Case, cases, run_case  # after the path is set


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    logging.disable(logging.CRITICAL)  # the CLI's own warnings would flood the report
    codes: collections.Counter[tuple[str, int | None]] = collections.Counter()
    problems: list[tuple[str, list[str], str]] = []
    started = time.perf_counter()

    @settings(max_examples=args.cases, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(cases())
    def one(case: Case) -> None:
        outcome = run_case(case)
        codes[(case.argv[0], outcome.code)] += 1
        if outcome.problem is not None:
            problems.append((outcome.problem, case.argv, outcome.err[-1500:]))

    settings_seed = __import__("hypothesis").seed(args.seed)
    settings_seed(one)()
    seconds = time.perf_counter() - started
    total = sum(codes.values())
    print(f"{total} cases in {seconds:.1f} s ({1000 * seconds / max(total, 1):.1f} ms a case), "
          f"seed {args.seed}")
    for command in sorted({c for c, _ in codes}):
        counts = ", ".join(f"exit {code}: {n}" for (c, code), n in sorted(
            codes.items(), key=lambda kv: str(kv[0][1])) if c == command)
        print(f"  {command:<9} {counts}")
    print(f"broken promises: {len(problems)} (tracebacks, exit 2 without one line, changed "
          "inputs)")
    for problem, argv, err in problems[:20]:
        print(f"- {problem}: loraserve {' '.join(argv)}\n{err}")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
