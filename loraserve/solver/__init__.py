"""Placement algorithms: greedy, MILP (HiGHS), lower bounds, one :func:`solve` entry point."""

from loraserve.solver.api import SOLVERS, solve
from loraserve.solver.bounds import lower_bound
from loraserve.solver.instance import InfeasibleError, Instance, Tightening

__all__ = ["SOLVERS", "InfeasibleError", "Instance", "Tightening", "lower_bound", "solve"]
