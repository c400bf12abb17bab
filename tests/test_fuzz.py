"""The CLI under generated input: exit 0, 1 with a message or 2 with one line; never a
traceback; no input changed (see tests/cli_fuzz.py; ``make fuzz`` runs 10,000+ cases)."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, given, settings

from tests.cli_fuzz import Case, cases, run_case

#: Cases per run of the test suite; ``LORASERVE_FUZZ_CASES`` raises it.
CASES = int(os.environ.get("LORASERVE_FUZZ_CASES", "300"))


@settings(max_examples=CASES, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(cases())
def test_cli_keeps_its_promises_on_generated_input(case: Case) -> None:
    outcome = run_case(case)
    assert outcome.problem is None, (outcome.problem, case.argv, outcome.err[-2000:])
