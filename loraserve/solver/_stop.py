"""Native solves that a stop signal ends early (see :mod:`loraserve._interrupt`).

Every CP-SAT and HiGHS call in the solver goes through one of these, so Ctrl-C and SIGTERM
stop each phase (exact models, LNS steps, column generation) within a second.
"""

from __future__ import annotations

import logging
from typing import Any

import highspy
import pulp
from ortools.sat.python import cp_model

from loraserve._interrupt import stoppable

logger = logging.getLogger(__name__)


def cpsat_solve(solver: cp_model.CpSolver, model: cp_model.CpModel,
                callback: cp_model.CpSolverSolutionCallback | None = None) -> Any:
    """``solver.solve(model, callback)``, stopped by a stop signal.

    CP-SAT catches SIGINT by default and reports it as a time limit, so a caller looping
    over solves (LNS) never saw it; here the signal stays Python's and stops the search.
    """
    solver.parameters.catch_sigint_signal = False
    logger.debug("cp-sat: solving")
    with stoppable(solver.stop_search):
        return solver.solve(model, callback)


def highs_run(highs: highspy.Highs) -> None:
    """``highs.run()``, cancelled by a stop signal."""
    logger.debug("highs: solving")
    with stoppable(highs.cancelSolve):
        highs.run()


def pulp_solve(problem: pulp.LpProblem, solver: Any) -> None:
    """``problem.solve(solver)`` for PuLP's HiGHS interface, cancelled by a stop signal."""

    def cancel() -> None:
        # PuLP creates the HiGHS object inside solve(); before that there is nothing to stop.
        highs = getattr(problem, "solverModel", None)
        if highs is not None:
            highs.cancelSolve()

    logger.debug("highs: solving %s", problem.name)
    with stoppable(cancel):
        problem.solve(solver)
