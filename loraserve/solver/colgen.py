"""A lower bound from the configuration LP, solved by column generation.

The **configuration LP** (a Dantzig-Wolfe reformulation of the per-GPU placement model)
describes a plan by the GPUs it opens. A *column* ``p`` is one GPU of kind ``k_p`` with a
set ``S_p`` of hosted adapters and the share ``w[a, p]`` in ``[0, 1]`` of each one's traffic
it carries, such that the GPU is feasible on its own:

* every hosted adapter's rank fits the kind's tier;
* ``|S_p| <= slots`` and ``sum(bytes[a] for a in S_p) <= cache_bytes``;
* ``sum(load[a, k_p] * w[a, p] for a in S_p) <= capacity[k_p]``;
* ``w[a, p] == 1`` when adapters cannot split (``max_replicas == 1``).

With ``lambda_p >= 0`` the number of GPUs opened with configuration ``p``, the master is::

    minimize    sum_p unit_cost[k_p] * lambda_p
    subject to  sum_p w[a, p] * lambda_p >= 1                  per adapter a   (pi_a >= 0)
                sum_{p of type t} lambda_p <= pool_count[t]     per GPU type t  (mu_t <= 0)
                floor_a <= sum_{p hosting a} lambda_p <= cap_a  per adapter a   (rho_a)
                sum_{p of tier >= r} lambda_p >= count_r        per rank r      (gamma_r >= 0)

The host rows count the GPUs that host ``a``: at least ``floor_a = min_replicas(a)`` (kept
when 2 or more; below that the cover row implies it) and at most ``cap_a = max_replicas``
(kept when splitting is allowed and the cap could bind). The class rows carry the integer
rounding the tier-count bound gets from whole GPU counts: the GPUs of tier ``>= r`` host
every adapter of rank ``>= r``, so a plan has at least ``count_r`` of them, the largest of
those adapters' work, ``min_replicas`` slots and cache bytes (and, without splitting, their
number of adapters larger than half a GPU), each rounded up to whole GPUs. Pool rows are
kept where a pool is smaller than what ``upper_bound`` buys. Dropping a row only relaxes
the LP. Every plan is an integer point (one column per GPU, with its hosted set and shares),
so the LP value bounds every plan's cost from below. Columns and counts see each GPU with
``2e-6`` more compute and cache than it has, the tolerance of the plan check
(:data:`loraserve.models.plan.TOLERANCE`), so the bound also holds for plans that use it.

Why it is stronger than the tier-count bound
--------------------------------------------
:func:`~loraserve.solver.bounds.lower_bound` pools each kind's compute time, slots and cache
into separate totals, so a slot left free on one GPU may be paired with time left free on
another. A column ties the three together: a GPU whose slots hold cold adapters cannot lend
its idle time to hot traffic on another GPU, and a GPU kept busy by one hot adapter cannot
lend its free slots to the cold tail (an adapter that splits takes a slot on every GPU it
uses). Without splitting, columns are whole sets and the LP is the Gilmore-Gomory
bin-packing relaxation, which also sees that two adapters of more than half a GPU never
share one. Each GPU kind is priced with its own padded loads, so the LP does not send
prefill and decode tokens to different tiers as the tier-count relaxation may. The class
rows give it the tier-count bound's rounding per rank, but not its whole GPU counts per
kind, which can matter with mixed prices: the two bounds are complementary, and a caller
may take the larger.

On the synthetic benchmark (Zipf popularity, 16 slots) time and slots are both nearly tight
in aggregate and the configuration LP rounds up to the same GPU count as the tier-count
bound; it is ahead where whole adapters, hot adapters next to a cold tail, or memory make
GPUs fill unevenly.

Column generation
-----------------
*Master.* HiGHS holds the restricted master in its **dual form** (variables ``pi, mu, rho``
with their signs as bounds, one constraint per column). A new column is then a new
constraint, which the dual simplex method takes warm from the last basis like a cut; the
primal form with new columns used the primal simplex method, about three times slower (a
1,000-adapter master: 0.4 s against 1.3 s per re-solve), and with the duals as variables no
sign convention of HiGHS's row duals is involved. The master starts from the columns of a
known plan (``start``; the greedy plan by default), one singleton column per adapter (its
cheapest kind, carrying what one GPU can), an empty GPU per kind (pricing counts it, and the
class rows may use it) and, where a pool row exists, one artificial column per adapter at a
prohibitive cost, so it is always feasible. When the master holds more than
:data:`_COLUMN_LIMIT` columns per adapter, the columns priced furthest out are dropped.

*Stabilisation.* The dual *center* starts at the best duals of a two-price family (a price
per slot, with ``rho`` for adapters that have a host floor, plus a price per unit of load):
the slot and load arguments of the tier-count bound, as LP duals, found by a golden-section
search over the ratio of the two prices. Each round prices at the Wentges-smoothed duals
``alpha * center + (1 - alpha) * master duals`` (``smoothing`` is ``alpha``) and falls back
to the master's own duals when no column found there enters; the center moves to any duals
that improve the bound.

*Pricing.* For each kind ``k``::

    maximize  sum_{a in S} (pi_a * w_a + rho_a)   over the kind-k columns (S, w).

For a fixed hosted set the best shares are the fractional knapsack (sort by ``pi_a`` per
unit of load, fill, the last adapter partly), but choosing the set under the slot and cache
limits is a cardinality-constrained knapsack, NP-hard (with the cardinality loose and whole
adapters it is the 0-1 knapsack), so no sort-based exact algorithm exists. Pricing runs in
steps, each giving a valid upper bound ``U_k`` on the best value:

1. *Lagrangian bound.* Pricing load at ``theta`` (and bytes at ``beta``) leaves per adapter
   ``max(0, pi_a - theta * share_a) * reach_a + rho_a`` (``reach_a``: the most of ``a`` one
   GPU carries), and the best ``slots`` positive terms solve the rest exactly. Every
   ``theta`` gives a valid bound; a golden-section search makes it small. A kind whose
   bound shows no column of negative reduced cost is settled for the round.
2. *Columns.* Greedy sweeps for several ``theta`` (each a dual-guided partial plan:
   column after column on the traffic the earlier ones left), and a dynamic program over
   (hosted count, load in ``1/1024`` of a GPU). In a best column every adapter but one
   carries all it can, and the exception has the lowest value per unit of load, so the
   program takes adapters in that order and tries each as the last, fractional one. Loads
   round *down* to whole units, which relaxes capacity: the program's optimum is an upper
   bound, high by at most the value of ``slots / 1024`` of a GPU, and its hosted set gives a
   near-best column at the real loads.
3. *Settling.* With the master's own duals, when no column was found and the kind is not
   settled, the program runs again on ``1/16384`` units, then, if still open (loads that
   fill a GPU exactly), a MIP on HiGHS whose dual bound is ``U_k``. Where the cache can
   bind, the MIP replaces the program (which does not model bytes).

The dynamic program and the MIP see only adapters of positive value that fewer than
``slots`` others dominate (no lower value or host dual, no higher load or bytes): a
dominated adapter can always be swapped for a dominating one that is not hosted. Kinds
dominated by another kind of the same GPU type (no cheaper, admitting no more adapters, no
lighter for any of them, e.g. tier 256 when no adapter exceeds rank 128) are never priced:
each of their columns is a column of the dominating kind with no smaller reduced cost.

The bound at every round
------------------------
Let ``(pi, mu, rho, gamma)`` be any duals of the right signs (those of the master,
smoothed ones, the seed's), ``D`` their dual objective ``sum(pi) + sum(mu * pool_count) +
sum(max(rho, 0) * floor) + sum(min(rho, 0) * cap) + sum(gamma * count)``, and ``rc_k =
unit_cost[k] - mu[t_k] - sum(gamma_r for r <= tier_k) - U_k`` a lower bound on the reduced
cost of every kind-``k`` column (an empty GPU, of value 0, included). For any feasible
``lambda`` of the full master, substituting the row activities gives ``cost(lambda) >= D +
sum_p rc_p lambda_p`` (each dual has the sign of its row), and ``sum_p rc_p lambda_p >=
delta * cost(lambda)`` with ``delta = min(0, min_k rc_k / unit_cost[k])``. So the LP
optimum ``z`` satisfies ``z >= D + delta * z``, i.e.::

    z >= D / (1 - delta).

This is the Lagrangian (Farley) bound ``z_RMP + UB_count * min_k rc_k`` with the count of
GPUs measured in cost (each kind's reduced cost divided by its price, so mixed prices need
no separate count) and the cost bounded by ``z`` itself rather than by the caller's
``upper_bound``: it is never weaker than ``D + delta * upper_bound`` when ``upper_bound`` is
a plan's cost. Its validity rests only on the signs of the duals and on each ``U_k`` being
an upper bound: neither the master's columns nor its accuracy matter, so numerical error in
the master can weaken the bound but not break it. Pricing bounds get ``1e-9`` of slack for
floating-point error. When every kind is settled at the master's duals (within
:data:`CONVERGENCE`), ``delta`` is at most that and the bound is the LP value to that
precision. The reported value is the best bound over all rounds, rounded up to the least
cost a plan can have (whole GPUs of each type within its pool; with one price, the next
whole GPU count), after giving up ``1e-6`` of it to floating-point error.

Determinism: every step is single-threaded and ordered, so a run repeats exactly unless it
is cut by ``time_limit`` (wall-clock, like the MIP pricing's own limit); ``max_iterations``
is the repeatable cap.
"""

from __future__ import annotations

import bisect
import functools
import itertools
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import highspy
import numpy as np

from loraserve.solver._highs import quiet_banner
from loraserve.solver._stop import highs_run
from loraserve.solver.greedy import OpenGPU, greedy_placement
from loraserve.solver.instance import EPS, InfeasibleError, Instance

logger = logging.getLogger(__name__)

#: A column enters when its reduced cost is below ``-TOLERANCE`` (relative to its price
#: net of the pool dual, plus as much absolute).
TOLERANCE = 1e-6

#: Pricing has converged when no column of any kind can have a reduced cost below
#: ``-CONVERGENCE`` (likewise relative and absolute): the bound is then within that of the
#: LP value.
CONVERGENCE = 1e-4

#: GPUs are priced with this much more compute and cache than they have, the tolerance a
#: plan may exceed them by (``loraserve.models.plan``'s check allows ``1e-6`` of
#: utilization): the bound then holds for every plan that passes the check.
_ROOM = 1.0 + 2e-6

#: Slack added to every pricing upper bound (relative to its size) for HiGHS's tolerances.
_PRICING_SLACK = 1e-9

#: Relative slack given up before rounding a bound up to a whole GPU count.
_ROUND_SLACK = 1e-6

#: Golden-section steps of the Lagrangian search per multiplier.
_SEARCH_STEPS = 40

#: Most combinations of GPU counts tried when rounding a bound up to a plan's cost.
_COST_COMBINATIONS = 100_000

#: The master keeps at most this many columns per adapter (see ``_Master.purge``).
_COLUMN_LIMIT = 3

#: Golden-section steps of the search for the starting dual center.
_SEED_STEPS = 12

#: Greedy columns one sweep adds, at most.
_SWEEP_COLUMNS = 200

#: Multiples of the best Lagrangian ``theta`` tried by the greedy.
_THETA_FACTORS = (1.0, 0.0, 0.5, 0.8, 1.25, 2.0)

#: Rows of the pairwise dominance test built at once (bounds its memory), and the most
#: candidates tested pairwise.
_DOMINANCE_BLOCK = 256
_DOMINANCE_PAIRS = 300

#: Units of one GPU's capacity in the dynamic program: the coarse one prices every round,
#: the fine one settles the last rounds.
_GRID = 1024
_FINE_GRID = 16384

#: Relative gap of the pricing MIP.
_MIP_GAP = 1e-6


@dataclass(frozen=True)
class ColgenBound:
    """The configuration-LP bound and how column generation got there.

    Attributes
    ----------
    value : float
        A valid lower bound on the cost of every plan (GPUs, or cost per hour when prices
        differ); a whole number when every GPU costs the same.
    lp_value : float
        The last restricted master's value: the configuration LP's value when
        ``converged``, otherwise an upper estimate of it (not a bound on plans).
    converged : bool
        Pricing proved that no column has a reduced cost below ``-CONVERGENCE`` (relative
        to its price), or the bound met the master's value: ``value`` is then the LP
        value rounded up.
    iterations : int
        Master solves.
    columns : int
        Columns in the master at the end (start, singletons and generated, less those
        dropped to keep it small).
    seconds : float
        Wall-clock time.
    message : str
        One line on how the run ended.
    patterns : tuple of Pattern
        The master's columns at the end (empty GPUs left out): the configurations a primal
        heuristic may combine (:mod:`loraserve.solver.primal`).
    """

    value: float
    lp_value: float
    converged: bool
    iterations: int
    columns: int
    seconds: float
    message: str
    patterns: tuple[Pattern, ...] = ()


@dataclass(frozen=True)
class Pattern:
    """One GPU configuration: a kind, the adapters it hosts and each one's traffic share."""

    kind: int
    adapters: np.ndarray
    shares: np.ndarray


@dataclass
class _Column:
    kind: int
    adapters: np.ndarray  # hosted adapters (int64, sorted)
    shares: np.ndarray  # traffic share of each


@dataclass
class _Priced:
    """Outcome of pricing one kind: an upper bound on its best value and new columns.

    ``settled``: the bound shows that no column of the kind has a negative reduced cost
    (within :data:`CONVERGENCE`).
    """

    upper: float
    columns: list[tuple[float, _Column]]  # (value, column)
    settled: bool


def _above(value: float, threshold: float, tolerance: float) -> bool:
    """Whether ``value`` exceeds ``threshold`` by more than ``tolerance`` (relative, abs.)."""
    return value > threshold + tolerance * (abs(threshold) + 1.0)


class _KindData:
    """The arrays pricing reads for one kind: its admitted adapters and their needs."""

    def __init__(self, inst: Instance, k: int, whole: bool) -> None:
        kind = inst.kinds[k]
        self.index = k
        self.cost = kind.unit_cost
        self.gpu_type = kind.gpu_type
        self.adapters = np.flatnonzero(inst.ranks <= kind.tier).astype(np.int64)
        # share[i]: part of one GPU's capacity the adapter's whole traffic takes.
        self.share = inst.load[self.adapters, k] / (kind.capacity * _ROOM)
        # size[i]: part of the adapter cache it takes (0 when the cache is unlimited).
        if math.isfinite(inst.cache_bytes):
            self.size = inst.bytes[self.adapters] / (inst.cache_bytes * _ROOM)
        else:
            self.size = np.zeros(len(self.adapters))
        # reach[i]: the largest share of its traffic one GPU carries.
        with np.errstate(divide="ignore"):
            self.reach = np.minimum(1.0, np.where(self.share > 0, 1.0 / self.share, np.inf))
        if whole:
            # Traffic cannot split: an adapter carries all of it or is not hosted here.
            self.reach = np.where(self.share <= 1.0, 1.0, 0.0)


def _dominated_kinds(inst: Instance) -> set[int]:
    """Kinds whose every column is a column of another kind of the same type, no cheaper."""
    out: set[int] = set()
    kinds = inst.kinds
    rel = inst.load / np.array([k.capacity for k in kinds])[None, :]
    for j in kinds:
        admitted_j = inst.ranks <= j.tier
        for i in kinds:
            if i.index == j.index or i.index in out or i.gpu_type != j.gpu_type:
                continue
            if i.unit_cost > j.unit_cost:
                continue
            admitted_i = inst.ranks <= i.tier
            if np.any(admitted_j & ~admitted_i):
                continue
            lighter = rel[admitted_j, i.index] <= rel[admitted_j, j.index]
            if not np.all(lighter):
                continue
            identical = (i.unit_cost == j.unit_cost and np.array_equal(admitted_i, admitted_j)
                         and np.array_equal(rel[admitted_j, i.index], rel[admitted_j, j.index]))
            if identical and i.index > j.index:
                continue  # twins: keep the first
            out.add(j.index)
            break
    return out


def _dominators(c: np.ndarray) -> np.ndarray:
    """How many rows of ``c`` dominate each row (a lower bound when ``c`` is large).

    A row dominates another when it is no smaller in any column and larger in one or, if
    equal throughout, earlier.
    """
    n = len(c)
    if c.shape[1] == 1:
        order = np.lexsort((np.arange(n), -c[:, 0]))
        count = np.empty(n, dtype=np.int64)
        count[order] = np.arange(n)
        return count
    if c.shape[1] == 2:
        # Sorted by the first column (best first), a row's dominators are the rows before it
        # that are no worse in the second.
        order = np.lexsort((np.arange(n), -c[:, 1], -c[:, 0]))
        seen: list[float] = []
        count = np.empty(n, dtype=np.int64)
        for i in order.tolist():
            second = float(-c[i, 1])
            count[i] = bisect.bisect_right(seen, second)
            bisect.insort(seen, second)
        return count
    if n > _DOMINANCE_PAIRS:
        # Too many rows for all pairs: count only the dominators equal in every column
        # but the first two. Fewer dominators keep more rows, never too few.
        count = np.zeros(n, dtype=np.int64)
        _, group = np.unique(c[:, 2:], axis=0, return_inverse=True)
        for g in np.unique(group).tolist():
            members = np.flatnonzero(group.ravel() == g)
            count[members] = _dominators(c[members, :2])
        return count
    count = np.zeros(n, dtype=np.int64)
    position = np.arange(n)
    for lo in range(0, n, _DOMINANCE_BLOCK):
        block = c[lo:lo + _DOMINANCE_BLOCK]
        ge = np.all(c[None, :, :] >= block[:, None, :], axis=2)
        gt = np.any(c[None, :, :] > block[:, None, :], axis=2)
        earlier = position[None, :] < position[lo:lo + _DOMINANCE_BLOCK, None]
        count[lo:lo + _DOMINANCE_BLOCK] = np.sum(ge & (gt | earlier), axis=1)
    return count


def _top_sum(values: np.ndarray, count: int) -> float:
    """Sum of the ``count`` largest positive entries."""
    positive = values[values > 0]
    if len(positive) > count:
        positive = np.partition(positive, len(positive) - count)[-count:]
    return float(positive.sum())


class _Pricer:
    """Prices one kind's columns for given duals; see the module notes."""

    def __init__(self, data: _KindData, slots: int, whole: bool, memory: bool,
                 deadline: float) -> None:
        self.data = data
        self.slots = slots
        self.whole = whole
        self.memory = memory
        self.deadline = deadline
        # The cache can bind only if some ``slots`` adapters overfill it.
        largest = np.sort(data.size)[::-1][:slots]
        self.memory_binds = memory and float(largest.sum()) > 1.0

    # Step 1: the Lagrangian upper bound ------------------------------------------------------
    def _terms(self, pi: np.ndarray, rho: np.ndarray, theta: float, beta: float) -> np.ndarray:
        """Each adapter's best Lagrangian value, load priced at ``theta`` and bytes at ``beta``."""
        d = self.data
        out: np.ndarray
        if self.whole:
            out = np.where(d.reach > 0, pi - theta * d.share + rho - beta * d.size, -np.inf)
        else:
            out = np.maximum(0.0, pi - theta * d.share) * d.reach + rho - beta * d.size
        return out

    def _lagrangian(self, pi: np.ndarray, rho: np.ndarray, theta: float, beta: float) -> float:
        return theta + beta + _top_sum(self._terms(pi, rho, theta, beta), self.slots)

    def upper_bound(self, pi: np.ndarray, rho: np.ndarray) -> float:
        """The Lagrangian bound on the best column's value (local duals)."""
        return self._search(pi, rho)[2]

    def _search(self, pi: np.ndarray, rho: np.ndarray) -> tuple[float, float, float]:
        """Multipliers ``(theta, beta)`` with a small Lagrangian bound, and that bound."""
        d = self.data
        with np.errstate(divide="ignore", invalid="ignore"):
            theta_hi = float(np.max(np.where(d.share > 0, pi / d.share, 0.0), initial=0.0))
        beta_hi = 0.0
        if self.memory:
            with np.errstate(divide="ignore", invalid="ignore"):
                beta_hi = float(np.max(np.where(d.size > 0, (pi + rho) / d.size, 0.0),
                                       initial=0.0))
        theta, beta = 0.0, 0.0
        best = self._lagrangian(pi, rho, theta, beta)
        for _ in range(2 if self.memory else 1):
            on_theta = functools.partial(self._on_theta, pi, rho, beta)
            theta, best = _golden(on_theta, theta_hi, theta, best, _SEARCH_STEPS)
            if self.memory:
                on_beta = functools.partial(self._on_beta, pi, rho, theta)
                beta, best = _golden(on_beta, beta_hi, beta, best, _SEARCH_STEPS)
        return theta, beta, best

    def _on_theta(self, pi: np.ndarray, rho: np.ndarray, beta: float, theta: float) -> float:
        return self._lagrangian(pi, rho, theta, beta)

    def _on_beta(self, pi: np.ndarray, rho: np.ndarray, theta: float, beta: float) -> float:
        return self._lagrangian(pi, rho, theta, beta)

    # Step 2: greedy columns -----------------------------------------------------------------
    def _greedy(self, pi: np.ndarray, rho: np.ndarray, theta: float, beta: float,
                left: np.ndarray | None = None) -> tuple[float, _Column] | None:
        """One column: adapters by Lagrangian score, whole while they fit, then fractionally.

        ``left`` caps each adapter's share (what earlier columns of a sweep left).
        """
        d = self.data
        score = self._terms(pi, rho, theta, beta)
        cap = d.reach if left is None else np.minimum(d.reach, left)
        order = np.flatnonzero((score > 0) & (cap > EPS))
        order = order[np.argsort(-score[order], kind="stable")]
        room, slots, cache = 1.0, self.slots, 1.0
        picked: list[int] = []
        shares: list[float] = []
        value = 0.0
        for i in order.tolist():
            if slots == 0 or room <= EPS:
                break
            if d.size[i] > cache + 1e-12:
                continue
            share = float(d.share[i])
            w = float(cap[i])
            if share * w > room:
                if self.whole:
                    continue
                w = room / share
            gain = float(pi[i]) * w + float(rho[i])
            if gain <= 0:
                continue
            picked.append(i)
            shares.append(w)
            value += gain
            room -= share * w
            slots -= 1
            cache -= float(d.size[i])
        if not picked:
            return None
        return value, self._column(np.array(picked), np.array(shares))

    def _sweep(self, pi: np.ndarray, rho: np.ndarray, theta: float, beta: float,
               threshold: float) -> list[tuple[float, _Column]]:
        """Greedy columns, each on the traffic the earlier ones left, while they price out.

        A dual-guided partial plan: many useful, complementary columns per pricing round.
        """
        left = np.ones(len(self.data.adapters))
        position = {int(a): i for i, a in enumerate(self.data.adapters.tolist())}
        out: list[tuple[float, _Column]] = []
        while len(out) < _SWEEP_COLUMNS:
            got = self._greedy(pi, rho, theta, beta, left)
            if got is None or not _above(got[0], threshold, TOLERANCE):
                break
            out.append(got)
            for a, w in zip(got[1].adapters.tolist(), got[1].shares.tolist(), strict=True):
                left[position[a]] -= w
        return out

    def _column(self, local: np.ndarray, shares: np.ndarray) -> _Column:
        order = np.argsort(self.data.adapters[local])
        return _Column(self.data.index, self.data.adapters[local][order],
                       np.minimum(1.0, shares[order]))

    # Step 3: exact pricing ------------------------------------------------------------------
    def _candidates(self, pi: np.ndarray, rho: np.ndarray) -> np.ndarray:
        """Local indices that may be in some optimal column (see the module notes)."""
        d = self.data
        best = pi * d.reach + rho
        keep = best > 0
        if self.whole:
            keep &= d.share <= 1.0
        local = np.flatnonzero(keep)
        if len(local) <= self.slots:
            return local
        # Criteria where larger is better; a candidate with ``slots`` or more dominators
        # can be swapped for one of them that is not hosted. Ties go to the lower index.
        criteria = ([pi[local] + rho[local], -d.share[local]] if self.whole
                    else [pi[local], -d.share[local], rho[local]]) + [-d.size[local]]
        c = np.stack([x for x in criteria if np.ptp(x) > 0] or [criteria[0]], axis=1)
        count = _dominators(c)
        return local[count < self.slots]

    def _evaluate(self, pi: np.ndarray, rho: np.ndarray,
                  chosen: list[int]) -> tuple[float, _Column] | None:
        """The best column on the hosted set ``chosen`` (local indices).

        Shares are filled by value per unit of load (the fractional knapsack); adapters left
        without traffic (unless a host floor's dual pays for the slot) or that do not fit
        whole are dropped.
        """
        d = self.data
        if not chosen:
            return None
        items = np.array(chosen, dtype=np.int64)
        ratio = pi[items] / d.share[items]
        items = items[np.lexsort((items, -ratio))]
        room, cache = 1.0, 1.0
        picked: list[int] = []
        shares: list[float] = []
        value = 0.0
        for i in items.tolist():
            share = float(d.share[i])
            w = max(0.0, min(float(d.reach[i]), room / share))
            if (self.whole and share > room) or d.size[i] > cache + 1e-12:
                continue
            if w <= EPS:
                w = 0.0  # hosted without traffic: only worth it for a host floor's dual
            gain = float(pi[i]) * w + float(rho[i])
            if gain <= 0:
                continue
            picked.append(i)
            shares.append(w)
            value += gain
            room -= share * w
            cache -= float(d.size[i])
        if not picked:
            return None
        return value, self._column(np.array(picked), np.array(shares))

    def _dp(self, pi: np.ndarray, rho: np.ndarray, local: np.ndarray,
            grid: int) -> tuple[float, tuple[float, _Column] | None]:
        """Dynamic program over (hosted count, load in ``1 / grid`` units of capacity).

        Adapters are taken in decreasing value per unit of load. In a best column every
        adapter but one carries all it can (``reach``) and the exception, the fractional
        one, has the lowest ratio, so it is the last adapter taken and fills the rest of the
        capacity. Loads are rounded *down* to whole units, which relaxes capacity: the
        program's optimum is an upper bound on the best column's value (above it by at
        most the value of ``slots / grid`` of capacity). Cache bytes are not modelled (the
        caller uses the MIP where they can bind). Returns the bound and the column that
        the program's best hosted set gives at the real loads.
        """
        d = self.data
        n = len(local)
        if n == 0:
            return 0.0, None
        p, r, share, reach = pi[local], rho[local], d.share[local], d.reach[local]
        order = np.lexsort((np.arange(n), -(p / share)))
        units = np.floor(share * reach * grid).astype(np.int64)
        profit = p * reach + r
        rows = min(self.slots, n)
        table = np.full((rows + 1, grid + 1), -np.inf)
        table[0] = 0.0
        took = np.zeros((n, rows, grid + 1), dtype=np.int8)  # 1: whole, 2: no traffic
        left = 1.0 - np.arange(grid + 1) / grid  # capacity left, at least
        # (value, items considered before the fractional one (n: none), count, units)
        best = (0.0, n, 0, 0)
        columns_x = np.arange(grid + 1)
        for t, i in enumerate(order.tolist()):
            if not self.whole:
                # Item i as the fractional one, after any set of earlier (higher-ratio) ones.
                head = table[:rows]
                count = np.argmax(head, axis=0)
                total = head[count, columns_x] + p[i] * np.minimum(reach[i], left / share[i]) \
                    + r[i]
                x = int(np.argmax(total))
                if total[x] > best[0]:
                    best = (float(total[x]), t, int(count[x]), x)
            c = int(units[i])
            before = table[:-1].copy() if r[i] > 0 else table[:-1]
            candidate = table[:-1, :grid + 1 - c] + profit[i]
            better = candidate > table[1:, c:]
            table[1:, c:] = np.where(better, candidate, table[1:, c:])
            took[t, :, c:] = np.where(better, 1, 0)
            if r[i] > 0:
                # Hosted without traffic: a slot for the host floor's dual alone.
                idle = before + r[i]
                better = idle > table[1:]
                table[1:] = np.where(better, idle, table[1:])
                took[t] = np.where(better, 2, took[t])
        full = np.unravel_index(int(np.argmax(table)), table.shape)
        if table[full] >= best[0]:
            best = (float(table[full]), n, int(full[0]), int(full[1]))
        bound, stop, count_left, x_left = best
        chosen: list[int] = []
        for t in range(stop - 1, -1, -1):
            how = int(took[t, count_left - 1, x_left]) if count_left > 0 else 0
            if how:
                item = int(order[t])
                chosen.append(item)
                count_left -= 1
                if how == 1:
                    x_left -= int(units[item])
        if stop < n:
            chosen.append(int(order[stop]))
        return bound, self._evaluate(pi, rho, [int(local[i]) for i in chosen])

    def _exact(self, pi: np.ndarray, rho: np.ndarray,
               local: np.ndarray) -> tuple[float, _Column | None, float]:
        """Solve pricing as a MIP on HiGHS over the candidates ``local``.

        Returns ``(upper bound, best column or None, its value)``.
        """
        d = self.data
        n = len(local)
        if n == 0:
            return 0.0, None, 0.0
        p, r, share, size, reach = pi[local], rho[local], d.share[local], d.size[local], \
            d.reach[local]
        # Columns: y (hosted, binary) then, when traffic splits, w (share, continuous).
        split = not self.whole
        num_col = 2 * n if split else n
        cost = np.concatenate([r, p]) if split else p + r
        lower = np.zeros(num_col)
        upper = np.concatenate([np.ones(n), reach]) if split else np.ones(n)
        integrality = [highspy.HighsVarType.kInteger] * n + \
            [highspy.HighsVarType.kContinuous] * (num_col - n)
        rows: list[tuple[np.ndarray, np.ndarray, float]] = []  # (columns, values, upper)
        y = np.arange(n)
        w = n + y if split else y
        rows.append((w, share.copy(), 1.0))  # compute
        if n > self.slots:
            rows.append((y, np.ones(n), float(self.slots)))  # slots
        if self.memory and size.sum() > 1.0:
            rows.append((y, size.copy(), 1.0))  # cache
        if split:
            for i in range(n):  # w_i <= reach_i * y_i
                rows.append((np.array([w[i], y[i]]), np.array([1.0, -reach[i]]), 0.0))
        highs = _new_highs()
        lp = highspy.HighsLp()
        lp.num_col_ = num_col
        lp.num_row_ = len(rows)
        lp.sense_ = highspy.ObjSense.kMaximize
        lp.col_cost_ = cost
        lp.col_lower_ = lower
        lp.col_upper_ = upper
        lp.row_lower_ = np.full(len(rows), -highspy.kHighsInf)
        lp.row_upper_ = np.array([u for _, _, u in rows])
        lp.integrality_ = integrality
        starts = np.cumsum([0] + [len(c) for c, _, _ in rows]).astype(np.int32)
        lp.a_matrix_.format_ = highspy.MatrixFormat.kRowwise
        lp.a_matrix_.num_col_ = num_col
        lp.a_matrix_.num_row_ = len(rows)
        lp.a_matrix_.start_ = starts
        lp.a_matrix_.index_ = np.concatenate([c for c, _, _ in rows]).astype(np.int32)
        lp.a_matrix_.value_ = np.concatenate([v for _, v, _ in rows])
        highs.passModel(lp)
        highs.setOptionValue("mip_rel_gap", _MIP_GAP)
        highs.setOptionValue("mip_abs_gap", 1e-9)
        highs.setOptionValue("time_limit", max(0.05, self.deadline - time.perf_counter()))
        highs_run(highs)
        info = highs.getInfo()
        bound = float(info.mip_dual_bound)
        if not math.isfinite(bound):
            # No bound came back (e.g. stopped before the root): fall back on the
            # Lagrangian bound, which the caller already holds.
            bound = math.inf
        if info.primal_solution_status != 2:  # 2: feasible
            return bound, None, 0.0
        x = np.array(highs.getSolution().col_value)
        hosted = x[:n] > 0.5
        shares = np.minimum(reach, np.maximum(0.0, x[n:])) if split else np.ones(n)
        take = hosted & (shares > EPS)
        if not take.any():
            return bound, None, 0.0
        column = self._column(local[take], shares[take])
        value = float(np.dot(p[take], shares[take]) + r[take].sum())
        return max(bound, value), column, value

    # All steps ------------------------------------------------------------------------------
    def price(self, pi_all: np.ndarray, rho_all: np.ndarray, threshold: float,
              exact: bool) -> _Priced:
        """Columns worth more than ``threshold`` (negative reduced cost) and a value bound.

        A column's reduced cost is ``threshold - value`` (``threshold``: the kind's price
        net of its pool dual). ``exact`` asks for a bound within :data:`CONVERGENCE` of the
        best value when no column is found (the master's own duals); without it the coarse
        dynamic program only.
        """
        pi = pi_all[self.data.adapters]
        rho = rho_all[self.data.adapters]
        theta, beta, upper = self._search(pi, rho)
        upper = _slack(upper)
        if not _above(upper, threshold, CONVERGENCE):
            return _Priced(upper, [], True)
        found: dict[tuple[int, ...], tuple[float, _Column]] = {}

        def keep(got: tuple[float, _Column] | None) -> None:
            if got is not None and _above(got[0], threshold, TOLERANCE):
                key = tuple(got[1].adapters.tolist())
                if key not in found or found[key][0] < got[0]:
                    found[key] = got

        for factor in _THETA_FACTORS:
            for got in self._sweep(pi, rho, theta * factor, beta * factor, threshold):
                keep(got)
        local = self._candidates(pi, rho)
        if self.memory_binds:
            if exact and not found:
                bound, column, value = self._exact(pi, rho, local)
                upper = min(upper, _slack(bound))
                if column is not None:
                    keep((value, column))
        else:
            bound, best = self._dp(pi, rho, local, _GRID)
            upper = min(upper, _slack(bound))
            keep(best)
            if exact and not found and _above(upper, threshold, CONVERGENCE):
                bound, best = self._dp(pi, rho, local, _FINE_GRID)
                upper = min(upper, _slack(bound))
                keep(best)
            if exact and not found and _above(upper, threshold, CONVERGENCE):
                # The grid's rounding leaves it open (loads that fill a GPU exactly): the MIP.
                bound, column, value = self._exact(pi, rho, local)
                upper = min(upper, _slack(bound))
                if column is not None:
                    keep((value, column))
        return _Priced(upper, list(found.values()), not _above(upper, threshold, CONVERGENCE))


def _slack(bound: float) -> float:
    """A pricing bound widened by :data:`_PRICING_SLACK` (relative and absolute)."""
    return bound + _PRICING_SLACK * (abs(bound) + 1.0)


def _golden(fn: Callable[[float], float], hi: float, x0: float,
            f0: float, steps: int = 40) -> tuple[float, float]:
    """Golden-section search of a convex ``fn`` on ``[0, hi]``; the best point seen."""
    best_x, best_f = x0, f0
    lo, up = 0.0, hi
    ratio = (math.sqrt(5.0) - 1.0) / 2.0
    a = up - ratio * (up - lo)
    b = lo + ratio * (up - lo)
    fa, fb = float(fn(a)), float(fn(b))
    for _ in range(steps):
        if fa < best_f:
            best_x, best_f = a, fa
        if fb < best_f:
            best_x, best_f = b, fb
        if fa <= fb:
            up, b, fb = b, a, fa
            a = up - ratio * (up - lo)
            fa = float(fn(a))
        else:
            lo, a, fa = a, b, fb
            b = lo + ratio * (up - lo)
            fb = float(fn(b))
    for x, fx in ((a, fa), (b, fb), (hi, float(fn(hi)))):
        if fx < best_f:
            best_x, best_f = x, fx
    return best_x, best_f


def _new_highs() -> highspy.Highs:
    """A quiet, single-threaded, seeded HiGHS object."""
    quiet_banner()
    highs = highspy.Highs()  # type: ignore[no-untyped-call]
    highs.setOptionValue("output_flag", False)
    highs.setOptionValue("threads", 1)
    highs.setOptionValue("random_seed", 0)
    return highs


class _Master:
    """The restricted master, held by HiGHS in its dual form.

    Adding a column to the master adds a constraint to its dual, which the dual simplex
    method takes from the last basis, like a cut; the primal form with new columns went to
    HiGHS's primal simplex, about three times slower here (a 1,000-adapter master: 1.3 s
    against 0.4 s per re-solve). The dual's variables are the master's duals, so their
    signs are set by their bounds rather than read from HiGHS's conventions:

    * ``pi_a >= 0`` per adapter (cover row ``>= 1``), objective coefficient 1;
    * ``mu_t <= 0`` per pool row (``<= pool_count``), objective ``pool_count``;
    * per adapter with a host row: ``rho+_a >= 0`` for its floor ``min_replicas`` (when 2
      or more), objective the floor, and ``rho-_a <= 0`` for its cap ``max_replicas``
      (when it can bind), objective the cap; ``rho_a = rho+_a + rho-_a``.

    Each master column ``p`` is the constraint
    ``sum_a w[a, p] * pi_a + mu_t + sum_{a in S_p} rho_a <= unit_cost[k_p]``. The dual's
    optimum is the master's value.
    """

    def __init__(self, inst: Instance, upper_bound: float) -> None:
        self.inst = inst
        n = inst.num_adapters
        cheapest = min(k.unit_cost for k in inst.kinds)
        # Most GPUs of one type a plan of cost upper_bound can buy.
        affordable = {t: upper_bound / min(k.unit_cost for k in inst.kinds if k.gpu_type == t)
                      for t in {k.gpu_type for k in inst.kinds}}
        var = n
        self.pool_var: dict[str, int] = {}
        self.pool_count: dict[str, int] = {}
        for t in sorted(affordable):
            count = inst.config.pool(t).count
            if count < affordable[t] - 1e-9:
                self.pool_var[t] = var
                self.pool_count[t] = count
                var += 1
        total = sum(inst.config.pool(t).count for t in affordable)
        most = min(float(total), upper_bound / cheapest)
        # Host rows: how many GPUs host an adapter. At least min_replicas (when that is 2 or
        # more: below, the cover row implies it) and at most max_replicas (when that can
        # bind). Without splitting neither can matter.
        split = inst.max_replicas > 1
        cap = split and inst.max_replicas < most - 1e-9
        floor = np.array([inst.min_replicas(a) if split else 0 for a in range(n)], dtype=float)
        self.host_lower = np.where(floor >= 2, floor, -np.inf)
        self.host_upper = np.full(n, float(inst.max_replicas) if cap else np.inf)
        floored = np.flatnonzero(floor >= 2)
        capped = np.arange(n) if cap else np.zeros(0, dtype=np.int64)
        self.floor_var = np.full(n, -1, dtype=np.int64)
        self.floor_var[floored] = var + np.arange(len(floored))
        var += len(floored)
        self.cap_var = np.full(n, -1, dtype=np.int64)
        self.cap_var[capped] = var + np.arange(len(capped))
        var += len(capped)
        # Class rows: GPUs of tier >= r, at least class_count[r] of them.
        self.class_count = _class_counts(inst)
        self.class_var = {r: var + i for i, r in enumerate(self.class_count)}
        var += len(self.class_count)
        self.num_vars = var
        lower = np.concatenate([np.zeros(n), np.full(len(self.pool_var), -highspy.kHighsInf),
                                np.zeros(len(floored)), np.full(len(capped), -highspy.kHighsInf),
                                np.zeros(len(self.class_count))])
        upper = np.concatenate([np.full(n, highspy.kHighsInf), np.zeros(len(self.pool_var)),
                                np.full(len(floored), highspy.kHighsInf), np.zeros(len(capped)),
                                np.full(len(self.class_count), highspy.kHighsInf)])
        objective = np.concatenate([
            np.ones(n), np.array([float(self.pool_count[t]) for t in self.pool_var]),
            floor[floored], np.full(len(capped), float(inst.max_replicas)),
            np.array([float(c) for c in self.class_count.values()])])
        self.highs = _new_highs()
        self.highs.setOptionValue("solver", "simplex")
        self.highs.setOptionValue("simplex_strategy", 1)  # dual simplex
        self.highs.setOptionValue("presolve", "off")
        self.highs.addCols(var, objective, lower, upper, 0, np.zeros(1, dtype=np.int32),
                           np.zeros(0, dtype=np.int32), np.zeros(0))
        self.highs.changeObjectiveSense(highspy.ObjSense.kMaximize)
        # Master columns in row order, after ``fixed`` rows (the artificial columns).
        self.columns: list[_Column] = []
        self.costs: list[float] = []
        self.keys: set[tuple[int, tuple[int, ...], tuple[float, ...]]] = set()
        self.fixed = 0

    @property
    def has_pool_rows(self) -> bool:
        """Whether some pool can bind (then singletons may not make the master feasible)."""
        return bool(self.pool_var)

    def _host_vars(self, adapters: np.ndarray) -> np.ndarray:
        both = np.concatenate([self.floor_var[adapters], self.cap_var[adapters]])
        return both[both >= 0]

    def add_artificials(self, cost: float) -> None:
        """Add, per adapter, a column at ``cost`` that covers it and meets its host floor.

        The master is then feasible whatever the pools (its dual form bounded).
        """
        n = self.inst.num_adapters
        floors = np.where(np.isfinite(self.host_lower), self.host_lower, 0.0)
        starts: list[int] = []
        index: list[int] = []
        value: list[float] = []
        for a in range(n):
            starts.append(len(index))
            index.append(a)
            value.append(1.0)
            if self.floor_var[a] >= 0:
                index.append(int(self.floor_var[a]))
                value.append(float(floors[a]))
        self.highs.addRows(n, np.full(n, -highspy.kHighsInf), np.full(n, cost), len(index),
                           np.array(starts, dtype=np.int32), np.array(index, dtype=np.int32),
                           np.array(value))
        self.fixed = n

    def add(self, columns: list[_Column]) -> int:
        """Add the columns not already present; return how many were new."""
        inst = self.inst
        costs: list[float] = []
        starts: list[int] = []
        index: list[np.ndarray] = []
        value: list[np.ndarray] = []
        nnz = 0
        for col in columns:
            key = (col.kind, tuple(col.adapters.tolist()),
                   tuple(np.round(col.shares, 12).tolist()))
            if key in self.keys:
                continue
            self.keys.add(key)
            self.columns.append(col)
            self.costs.append(inst.kinds[col.kind].unit_cost)
            carries = col.shares > 0
            entries = [col.adapters[carries]]
            vals = [col.shares[carries]]
            gpu_type = inst.kinds[col.kind].gpu_type
            if gpu_type in self.pool_var:
                entries.append(np.array([self.pool_var[gpu_type]]))
                vals.append(np.ones(1))
            host = self._host_vars(col.adapters)
            entries.append(host)
            vals.append(np.ones(len(host)))
            tier = inst.kinds[col.kind].tier
            classes = np.array([v for r, v in self.class_var.items() if r <= tier],
                               dtype=np.int64)
            entries.append(classes)
            vals.append(np.ones(len(classes)))
            costs.append(inst.kinds[col.kind].unit_cost)
            starts.append(nnz)
            index.append(np.concatenate(entries))
            value.append(np.concatenate(vals))
            nnz += len(index[-1])
        if not costs:
            return 0
        m = len(costs)
        self.highs.addRows(m, np.full(m, -highspy.kHighsInf), np.array(costs), nnz,
                           np.array(starts, dtype=np.int32),
                           np.concatenate(index).astype(np.int32), np.concatenate(value))
        return m

    def purge(self, limit: int) -> int:
        """Past ``limit`` columns, drop those priced furthest out at the last solve.

        Drops down to three quarters of ``limit``, never a column the solution uses, so
        that re-solves stay fast. A dropped column may come back later.
        """
        if len(self.columns) <= limit:
            return 0
        activity = np.array(self.highs.getSolution().row_value)[self.fixed:]
        slack = np.array(self.costs) - activity  # each column's reduced cost
        order = np.lexsort((np.arange(len(slack)), -slack))
        excess = len(self.columns) - (3 * limit) // 4
        drop = [int(i) for i in order[:excess]
                if slack[i] > 1e-9 and len(self.columns[i].adapters) > 0]  # empty GPUs stay
        if not drop:
            return 0
        gone = set(drop)
        for i in drop:
            col = self.columns[i]
            self.keys.discard((col.kind, tuple(col.adapters.tolist()),
                               tuple(np.round(col.shares, 12).tolist())))
        self.highs.deleteRows(len(drop), np.array(sorted(i + self.fixed for i in drop),
                                                  dtype=np.int32))
        self.columns = [c for i, c in enumerate(self.columns) if i not in gone]
        self.costs = [c for i, c in enumerate(self.costs) if i not in gone]
        return len(drop)

    def solve(self) -> tuple[bool, float]:
        """Re-solve (warm); return whether HiGHS found the optimum, and the master's value."""
        highs_run(self.highs)
        optimal = self.highs.getModelStatus() == highspy.HighsModelStatus.kOptimal
        return optimal, float(self.highs.getObjectiveValue())

    def duals(self) -> _Duals:
        """The master's optimal duals: the dual form's values, clipped to their bounds.

        A basic variable may stray outside its bounds by HiGHS's feasibility tolerance.
        """
        n = self.inst.num_adapters
        x = np.array(self.highs.getSolution().col_value)
        rho = np.zeros(n)
        floored = self.floor_var >= 0
        rho[floored] += np.maximum(0.0, x[self.floor_var[floored]])
        capped = self.cap_var >= 0
        rho[capped] += np.minimum(0.0, x[self.cap_var[capped]])
        return _Duals(np.maximum(0.0, x[:n]),
                      {t: min(0.0, float(x[v])) for t, v in self.pool_var.items()}, rho,
                      {r: max(0.0, float(x[v])) for r, v in self.class_var.items()})

    def dual_objective(self, duals: _Duals) -> float:
        """The master's dual objective at ``duals``.

        A positive host dual multiplies the floor, a negative one the cap (``-inf`` where
        that row is absent).
        """
        rho = duals.rho
        with np.errstate(invalid="ignore"):
            floors = np.where(rho > 0, rho * self.host_lower, 0.0)
            caps = np.where(rho < 0, rho * self.host_upper, 0.0)
        return (float(duals.pi.sum())
                + sum(duals.mu[t] * self.pool_count[t] for t in duals.mu)
                + float(floors.sum()) + float(caps.sum())
                + sum(duals.gamma[r] * self.class_count[r] for r in duals.gamma))

    def kind_price(self, duals: _Duals, kind: int) -> float:
        """A kind-``kind`` column's price less its pool and class duals (reduced cost + value)."""
        k = self.inst.kinds[kind]
        return (k.unit_cost - duals.mu.get(k.gpu_type, 0.0)
                - sum(g for r, g in duals.gamma.items() if r <= k.tier))


@dataclass
class _Duals:
    """Master duals of the right signs.

    ``pi >= 0`` per adapter, ``mu <= 0`` per GPU type, ``gamma >= 0`` per rank class, and
    ``rho_a``, the host row's dual: positive only with a floor, negative only with a cap.
    """

    pi: np.ndarray
    mu: dict[str, float]
    rho: np.ndarray
    gamma: dict[int, float]

    def mix(self, other: _Duals, alpha: float) -> _Duals:
        """``alpha * self + (1 - alpha) * other``."""
        return _Duals(alpha * self.pi + (1.0 - alpha) * other.pi,
                      {t: alpha * self.mu[t] + (1.0 - alpha) * other.mu[t] for t in self.mu},
                      alpha * self.rho + (1.0 - alpha) * other.rho,
                      {r: alpha * self.gamma[r] + (1.0 - alpha) * other.gamma[r]
                       for r in self.gamma})

    def value(self, column: _Column) -> float:
        """What the column earns at these duals (cover and host rows)."""
        return float(np.dot(self.pi[column.adapters], column.shares)
                     + self.rho[column.adapters].sum())

def _class_counts(inst: Instance) -> dict[int, int]:
    """Per adapter rank ``r``: a whole number of GPUs of tier ``>= r`` every plan needs.

    Those GPUs host every adapter of rank ``>= r``, so their number is at least each of:
    the adapters' compute time at their lightest admitted kind, their ``min_replicas``
    slots, and those replicas' bytes of cache, each rounded up; without splitting, also
    the adapters that take more than half of every GPU they fit (no two share one). Ranks
    whose count is implied by a lower rank's are left out.
    """
    counts: dict[int, int] = {}
    capacity = np.array([k.capacity for k in inst.kinds]) * _ROOM
    share = inst.load / capacity[None, :]
    lightest = np.where(np.isfinite(share), share, np.inf).min(axis=1)
    replicas = np.array([max(1, inst.min_replicas(a)) for a in range(inst.num_adapters)])
    last = 0
    for r in sorted({int(x) for x in inst.ranks}, reverse=True):
        members = inst.ranks >= r
        need = [float(lightest[members].sum()),
                float(replicas[members].sum()) / inst.slots]
        if math.isfinite(inst.cache_bytes):
            need.append(float((replicas[members] * inst.bytes[members]).sum())
                        / (inst.cache_bytes * _ROOM))
        if inst.max_replicas == 1:
            need.append(float(np.sum(lightest[members] > 0.5)))
        count = math.ceil(max(need) * (1.0 - _ROUND_SLACK) - _ROUND_SLACK)
        if count > last:
            counts[r] = count
            last = count
    return dict(sorted(counts.items()))


def _start_columns(inst: Instance, start: list[OpenGPU], whole: bool) -> list[_Column]:
    columns: list[_Column] = []
    for gpu in start:
        items = sorted((a, w) for a, w in gpu.shares.items() if w > EPS)
        if not items:
            continue
        adapters = np.array([a for a, _ in items], dtype=np.int64)
        shares = np.ones(len(items)) if whole else np.minimum(
            1.0, np.array([w for _, w in items]))
        columns.append(_Column(gpu.kind, adapters, shares))
    return columns


def _singletons(kinds: list[_KindData], n: int) -> list[_Column]:
    """Per adapter, one GPU of the kind that serves it alone cheapest, carrying what it can."""
    best: dict[int, tuple[float, int, float]] = {}  # adapter: (cost of all of it, kind, share)
    for d in kinds:
        for a, reach in zip(d.adapters.tolist(), d.reach.tolist(), strict=True):
            if reach > 0:
                price = d.cost / reach
                if a not in best or price < best[a][0]:
                    best[a] = (price, d.index, reach)
    return [_Column(kind, np.array([a], dtype=np.int64), np.array([reach]))
            for a, (_, kind, reach) in sorted(best.items()) if a < n]


class _Costs:
    """The costs a plan can have: whole GPUs of each type at its price, within its pool.

    A lower bound on the cost of every plan rounds up to the least such cost; with one price
    that is the next whole GPU count.
    """

    def __init__(self, inst: Instance) -> None:
        prices: dict[str, float] = {}
        for kind in inst.kinds:
            prices[kind.gpu_type] = min(prices.get(kind.gpu_type, math.inf), kind.unit_cost)
        # Priciest first: the cheapest type is solved for, the others enumerated.
        self.types = sorted(((c, inst.config.pool(t).count) for t, c in prices.items()),
                            reverse=True)

    def ceil(self, bound: float) -> float:
        """The least plan cost at or above ``bound``.

        :data:`_ROUND_SLACK` of ``bound`` is first given up (floating-point error, and the
        plan check's tolerance on routed shares); that comes back as it is when there are
        too many combinations to enumerate or none reaches it.
        """
        target = bound * (1.0 - _ROUND_SLACK) - _ROUND_SLACK
        if target <= 0 or not math.isfinite(target):
            return max(0.0, target)
        ranges = [min(count, math.ceil(target / c)) + 1 for c, count in self.types[:-1]]
        if math.prod(ranges) > _COST_COMBINATIONS:
            return target
        cheapest, cheapest_count = self.types[-1]
        best = math.inf
        for counts in itertools.product(*(range(r) for r in ranges)):
            spent = sum(c * k for (c, _), k in zip(self.types, counts, strict=False))
            need = max(0, math.ceil((target - spent) / cheapest - 1e-9))
            if need <= cheapest_count:
                best = min(best, spent + need * cheapest)
        return best if math.isfinite(best) else target


def colgen_bound(inst: Instance, upper_bound: float, start: list[OpenGPU] | None = None,
                 time_limit: float = 10.0, max_iterations: int = 500,
                 smoothing: float = 0.5) -> ColgenBound:
    """Bound the cheapest plan from below by the configuration LP; see the module notes.

    Parameters
    ----------
    inst : Instance
    upper_bound : float
        Cost of a known plan (``inf`` if none). It decides which pool and host-cap rows can
        bind, and the run stops as soon as the rounded bound reaches it (the plan is then
        optimal). The bound's validity does not depend on it.
    start : list of OpenGPU, optional
        A plan whose GPUs seed the master; the greedy plan when omitted (none if the greedy
        finds the pools too small). Any columns will do: they only steer the duals.
    time_limit : float
        Wall-clock seconds; when they run out the best bound so far is returned.
    max_iterations : int
        Master solves, at most (the repeatable limit).
    smoothing : float
        Wentges smoothing weight of the dual center, in ``[0, 1)``; 0 prices at the
        master's duals only.

    Returns
    -------
    ColgenBound

    Raises
    ------
    InfeasibleError
        When some adapter cannot be served at all (see :meth:`Instance.adapter_checks`).
    ValueError
        When ``smoothing`` is outside ``[0, 1)``.
    """
    if not 0.0 <= smoothing < 1.0:
        raise ValueError(f"smoothing must be in [0, 1), not {smoothing}")
    began = time.perf_counter()
    deadline = began + time_limit
    inst.adapter_checks()
    whole = inst.max_replicas == 1
    memory = math.isfinite(inst.cache_bytes)
    if start is None:
        try:
            start = greedy_placement(inst)
        except InfeasibleError:
            start = []
    master = _Master(inst, upper_bound)
    dominated = _dominated_kinds(inst)
    kinds = [_KindData(inst, k.index, whole)
             for k in inst.kinds if k.index not in dominated]
    pricers = [_Pricer(d, inst.slots, whole, memory, deadline) for d in kinds]
    if master.has_pool_rows:
        # Pools may leave the singletons short: artificial columns, costing more than
        # serving the adapter on its own GPUs, keep the master feasible.
        worst = max((d.cost / r for d in kinds for r in d.reach if r > 0), default=1.0)
        master.add_artificials(2.0 * worst)
    master.add(_start_columns(inst, start, whole))
    master.add(_singletons(kinds, inst.num_adapters))
    # Empty GPUs, one per kind: pricing bounds count them (their value is 0), so the
    # master must be able to use them against the class rows.
    master.add([_Column(d.index, np.zeros(0, dtype=np.int64), np.zeros(0)) for d in kinds])
    run = _Run(master, pricers, deadline, _Costs(inst))
    run.seed(inst.num_adapters)
    converged, message = run.loop(upper_bound, max_iterations, smoothing)
    value = run.costs.ceil(run.best)
    seconds = time.perf_counter() - began
    patterns = tuple(Pattern(c.kind, c.adapters, c.shares)
                     for c in master.columns if len(c.adapters))
    return ColgenBound(value=value, lp_value=run.lp_value, converged=converged,
                       iterations=run.iterations, columns=len(master.columns), seconds=seconds,
                       message=message, patterns=patterns)


class _Run:
    """The column-generation loop with Wentges dual smoothing."""

    def __init__(self, master: _Master, pricers: list[_Pricer], deadline: float,
                 costs: _Costs) -> None:
        self.master = master
        self.pricers = pricers
        self.deadline = deadline
        self.costs = costs
        self.best = 0.0
        self.center: _Duals | None = None
        self.lp_value = math.inf
        self.iterations = 0

    def seed(self, n: int) -> None:
        """Start the dual center at the best duals of a two-price family.

        With ``sigma`` a price per slot and ``theta`` per unit of load (``load_a``: the
        adapter's lightest share of a GPU), an adapter with a host floor (``min_replicas >=
        2``) gets ``sigma`` per host on its host row and ``theta * load_a`` per unit of
        traffic, any other ``sigma + theta * load_a``: the slot and load counts of the
        tier-count bound, as duals. With ``(sigma, theta) = t * (cos(phi), sin(phi))``,
        one Lagrangian pricing round per ``phi`` prices every ``t`` at once (the pricing
        bounds scale with the duals) and the best ``t`` is ``min_k unit_cost[k] / U_k``.
        """
        load = np.full(n, np.inf)
        for p in self.pricers:
            load[p.data.adapters] = np.minimum(load[p.data.adapters], p.data.share)
        load = np.where(np.isfinite(load), load, 0.0)
        floor = self.master.floor_var >= 0
        mu = dict.fromkeys(self.master.pool_var, 0.0)
        gamma = dict.fromkeys(self.master.class_var, 0.0)

        def score(phi: float) -> float:
            sigma, theta = math.cos(phi), math.sin(phi)
            duals = _Duals(np.where(floor, 0.0, sigma) + theta * load, mu,
                           np.where(floor, sigma, 0.0), gamma)
            ratio = math.inf
            for p in self.pricers:
                upper = _slack(p.upper_bound(duals.pi[p.data.adapters],
                                             duals.rho[p.data.adapters]))
                if upper > 0:
                    ratio = min(ratio, p.data.cost / upper)
            if not math.isfinite(ratio):
                return 0.0
            bound = self.master.dual_objective(duals) * ratio
            if bound > self.best:
                self.best = bound
                self.center = _Duals(duals.pi * ratio, mu, duals.rho * ratio, gamma)
            return -bound

        _golden(score, math.pi / 2, 0.0, score(0.0), steps=_SEED_STEPS)

    def thresholds(self, duals: _Duals) -> list[float]:
        """Per pricer: a column's reduced cost is this minus its value."""
        return [self.master.kind_price(duals, p.data.index) for p in self.pricers]

    def price(self, duals: _Duals, exact: bool) -> tuple[list[_Column], bool]:
        """Price every kind at ``duals`` and update the bound.

        Returns the columns found and whether every kind is settled (no column of negative
        reduced cost).
        """
        thresholds = self.thresholds(duals)
        priced: list[_Priced] = []
        for pricer, threshold in zip(self.pricers, thresholds, strict=True):
            if time.perf_counter() > self.deadline:
                return [c for got in priced for _, c in got.columns], False
            priced.append(pricer.price(duals.pi, duals.rho, threshold, exact))
        delta = min(0.0, min((t - got.upper) / p.data.cost
                             for p, t, got in zip(self.pricers, thresholds, priced,
                                                  strict=True)))
        bound = self.master.dual_objective(duals) / (1.0 - delta)
        if bound > self.best:
            self.best = bound
            self.center = duals
        return [c for got in priced for _, c in got.columns], all(g.settled for g in priced)

    def loop(self, upper_bound: float, max_iterations: int,
             smoothing: float) -> tuple[bool, str]:
        """Iterate until convergence or a limit; return (converged, message)."""
        master = self.master
        while self.iterations < max_iterations:
            self.iterations += 1
            optimal, self.lp_value = master.solve()
            if not optimal:
                return False, f"the master LP was not solved ({master.highs.getModelStatus()})"
            out = master.duals()
            if not _above(self.lp_value, self.best, CONVERGENCE):
                return True, f"converged after {self.iterations} iterations"
            # Price at the smoothed duals first; on a mispricing (no column there prices
            # out at the master's own duals), at the master's duals.
            alpha = smoothing if self.center is not None else 0.0
            while True:
                duals = out if alpha == 0.0 else self.center.mix(out, alpha)  # type: ignore[union-attr]
                found, settled = self.price(duals, exact=alpha == 0.0)
                new = [c for c in found if _above(out.value(c),
                                                  master.kind_price(out, c.kind), TOLERANCE)]
                if new or alpha == 0.0:
                    break
                alpha = 0.0
            logger.debug("colgen %d: rmp %.6f, bound %.6f, alpha %.2f, +%d columns",
                         self.iterations, self.lp_value, self.best, alpha, len(new))
            if settled and not new and alpha == 0.0:
                return True, f"converged after {self.iterations} iterations"
            if self.costs.ceil(self.best) >= upper_bound - 1e-9:
                return False, "the bound meets the upper bound: the plan is optimal"
            if self.costs.ceil(self.best) >= self.costs.ceil(self.lp_value):
                return False, "the bound is the master's value rounded up: no gain is left"
            if time.perf_counter() > self.deadline:
                return False, f"time limit after {self.iterations} iterations"
            if not new:
                return False, ("pricing found no column but could not prove that none is left "
                               f"after {self.iterations} iterations")
            master.purge(_COLUMN_LIMIT * max(len(out.pi), 1))
            if master.add(new) == 0:
                return False, f"pricing repeats known columns after {self.iterations} iterations"
        return False, f"stopped after {max_iterations} iterations"
