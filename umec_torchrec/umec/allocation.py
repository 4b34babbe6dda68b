r"""Budget allocation: how many groups of each set to prune so that every budget holds.

A prune decision is a count vector :math:`c \in \mathbb{Z}^S` (``c_l`` groups pruned in set
``l``, the ``c_l`` least-scored ones, ``0 <= c_l <= n_l - min_keep_l``). Its cost under
budget ``b`` is the resource fraction

.. math:: F_b(c) = R_b(n - c,\ a(c)) / R_b(n, \mathbf{1}),

where ``R_b`` is a resource model of :mod:`~umec_torchrec.umec.resources` and ``a(c)`` the
0/1 vector of the surviving feature groups (rank ``>= c_F`` in the feature set). Every
cost in the package, of counts or of :class:`PruningMasks`, is computed here, by
:class:`BudgetAllocator`.

The allocator approximately solves

.. math::
    \min_c \sum_l \frac{1}{\bar\sigma_l} \sum_{k < c_l} \sigma_{l,(k)}
    \quad\text{s.t.}\quad F_b(c) \le B_b \ \ \forall b,

the score removed (``sigma_(k)``: set ``l``'s scores in ascending order, ``\bar\sigma_l``
their mean) subject to the budgets, by three greedy rules:

* **repair** (:meth:`BudgetAllocator.repair`, UMEC's hard pruning): from ``c``, every set is
  pushed the same fraction ``t`` of the way to its bound,
  :math:`c(t) = c + \lceil t\,(c^{\max} - c) \rceil`, with the smallest ``t`` (bisection) for
  which every budget holds; UMEC's relative allocation between sets is kept.
* **removal** (:meth:`BudgetAllocator.remove`, the baselines): from ``c``, one group at a time
  is pruned until the total violation :math:`\sum_b \max(0, F_b(c) - B_b)` is zero; among
  the sets whose next group reduces it (gain ``g_l > 0``), the one with the least next score
  :math:`\sigma_{l,(c_l)}` (rule ``"score"``) or the least
  :math:`\sigma_{l,(c_l)} / (\bar\sigma_l g_l)` (rule ``"cost"``).
* **give-back** (:meth:`BudgetAllocator.give_back`, both): while some pruned group can be
  restored with every budget still holding, restore the set's strongest pruned group with
  the most score per unit of resource it adds,
  :math:`\sigma_{l,(c_l-1)} / (\bar\sigma_l \sum_b [F_b(c - e_l) - F_b(c)])`
  (or the largest :math:`\sigma_{l,(c_l-1)}` when no mean is given). So the budgets are used
  to within one group.

All three evaluate the point and its ``S`` one-group neighbours in one batched resource
call per iteration (:meth:`BudgetAllocator.neighbours`); the iterations are the greedy's
(one per group moved) or the bisection's, never a loop over groups.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch

from umec_torchrec.umec.budgets import Budget, parse_budgets
from umec_torchrec.umec.groups import GroupSpec
from umec_torchrec.umec.hard_prune import pruned_indicators
from umec_torchrec.umec.masks import PruningMasks
from umec_torchrec.umec.resources import RESOURCES, Resource, make_resource

__all__ = [
    "BudgetAllocator",
    "SetOrder",
    "kept_and_alive",
    "kept_of_masks",
    "resources_of_masks",
]

BudgetLike = Union[str, Budget]
_TOL = 1e-9  # a budget holds when its fraction is at most B + _TOL


@dataclass(frozen=True)
class SetOrder:
    """The groups of every set in ascending score order.

    Attributes:
        ranks: per set, ``[n_l]`` long rank of each group (0 = least score; stable on ties).
        sorted: ``[S, max_l n_l]`` each set's scores in ascending order (padded on the right
            with the set's largest score).

    Example::

        order = SetOrder.of([torch.tensor([3.0, 1.0, 2.0])])
        order.ranks[0]            # tensor([2, 0, 1])
        order.pruned(torch.tensor([2.0]))[0]  # tensor([False,  True,  True])
    """

    ranks: List[torch.Tensor]
    sorted: torch.Tensor

    @classmethod
    def of(cls, scores: Sequence[torch.Tensor]) -> "SetOrder":
        """The order of ``scores`` (one ``[n_l]`` vector per set, one dtype and device)."""
        ranks, cols = [], []
        width = max(int(sc.numel()) for sc in scores)
        for sc in scores:  # a loop over the (few) sets
            order = torch.argsort(sc, stable=True)
            r = torch.empty_like(order)
            r[order] = torch.arange(order.numel(), device=order.device)
            ranks.append(r)
            srt = sc[order]
            cols.append(torch.cat([srt, srt[-1:].expand(width - srt.numel())]))
        return cls(ranks, torch.stack(cols))

    def pruned(self, counts: torch.Tensor) -> List[torch.Tensor]:
        """Per set, the bool indicator of its ``counts[l]`` least-scored groups."""
        return [r.to(counts.dtype) < counts[i] for i, r in enumerate(self.ranks)]

    def score_at(self, counts: torch.Tensor, offset: int = 0) -> torch.Tensor:
        """``[S]`` score of the group at position ``counts[l] + offset`` of each set's ascending
        order (clamped to the set): ``offset=0`` is the next group to prune, ``-1`` the
        strongest pruned one."""
        # past a set's end the padding repeats its largest score: clamping to the row is enough
        idx = (counts.long().to(self.sorted.device) + offset).clamp(min=0, max=self.sorted.shape[1] - 1)
        return self.sorted.gather(1, idx[:, None])[:, 0]


def _feature_index(spec: GroupSpec) -> Optional[int]:
    return next((i for i, s in enumerate(spec.sets) if s.kind == "features"), None)


def kept_and_alive(spec: GroupSpec, pruned: Sequence[torch.Tensor]) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """The resource models' input for a prune decision.

    Args:
        spec: the groups.
        pruned: one 0/1 vector per set of ``spec`` (1 = pruned).

    Returns:
        ``(kept [1, S], alive [1, F])`` float: kept-group counts and surviving feature groups
        (``alive`` is ``None`` without a feature set).
    """
    pr = [p.float() for p in pruned]
    kept = torch.stack([p.numel() - p.sum() for p in pr])[None, :]
    fi = _feature_index(spec)
    alive = None if fi is None else (1.0 - pr[fi])[None, :]
    return kept, alive


def kept_of_masks(spec: GroupSpec, masks: PruningMasks) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """``(kept [1, S], alive [1, F])`` on the CPU for a :class:`PruningMasks` (exact)."""
    kept, alive = kept_and_alive(spec, pruned_indicators(spec, masks))
    return kept.cpu(), None if alive is None else alive.cpu()


def resources_of_masks(
    spec: GroupSpec, masks: PruningMasks, names: Sequence[str] = ("flops", "embedding_bytes", "lookup_bytes")
) -> Dict[str, Dict[str, float]]:
    """Absolute and relative cost of the model that ``masks`` leave, per resource:
    ``{name: {"value", "dense", "fraction"}}`` (resources that need feature groups are
    skipped when ``spec`` has none)."""
    kept, alive = kept_of_masks(spec, masks)
    out = {}
    for n in names:
        if RESOURCES[n].needs_features and spec.feature_set is None:
            continue
        r = make_resource(n, spec)
        v = float(r(kept, alive)[0])
        full = r.dense_value()
        out[n] = {"value": v, "dense": full, "fraction": v / full if full else 1.0}
    return out


class BudgetAllocator:
    """The budgets of ``spec`` as fractions of its dense cost, their batched evaluation at
    prune counts, and the repair / removal / give-back rules of the module docstring.

    Args:
        spec: the groups.
        budgets: e.g. ``["flops=0.3", "embedding_bytes=0.5"]`` (see :mod:`.budgets`).
        dtype: dtype of the fractions, the budgets and the counts' bounds.
        device: where the bounds live (the counts' device).
        resource_dtype: dtype in which the resource models are evaluated.

    Example::

        alloc = BudgetAllocator(spec, ["flops=0.3"])
        order = SetOrder.of([gs.scores().double() for gs in spec.sets])
        counts = alloc.remove(torch.zeros(len(spec.sets), dtype=torch.float64), order)
        counts, restored = alloc.give_back(counts, order)
        masks = masks_from_pruned(spec, order.pruned(counts))
    """

    def __init__(self, spec: GroupSpec, budgets: Sequence[BudgetLike], dtype: torch.dtype = torch.float64,
                 device: Optional[torch.device] = None, resource_dtype: torch.dtype = torch.float32) -> None:
        self.spec = spec
        self.budgets: List[Budget] = parse_budgets(budgets)
        self.resources: List[Resource] = [make_resource(b.resource, spec) for b in self.budgets]
        self.dense_values: List[float] = [r.dense_value() for r in self.resources]
        self.budget_fractions: List[float] = [b.fraction(d) for b, d in zip(self.budgets, self.dense_values)]
        self.dtype = dtype
        self.resource_dtype = resource_dtype
        kw = dict(dtype=dtype, device=device)
        self.dense = torch.tensor(self.dense_values, **kw)
        self.limits = torch.tensor(self.budget_fractions, **kw)  # B, [n_budgets]
        self.sizes = torch.tensor([float(s.size) for s in spec.sets], **kw)  # n, [S]
        self.min_keep = torch.tensor([float(s.min_keep) for s in spec.sets], **kw)
        self.max_counts = self.sizes - self.min_keep  # c_max, [S]
        self.feature_index: Optional[int] = _feature_index(spec)

    # ------------------------------------------------------------------ evaluation
    def require_reachable(self) -> None:
        """Raise ``ValueError`` if a budget is below the smallest model the groups allow."""
        for b, r, dense, frac in zip(self.budgets, self.resources, self.dense_values, self.budget_fractions):
            floor = r.min_value() / dense
            if frac < floor - 1e-12:
                raise ValueError(
                    f"budget {b} is below the smallest model these groups allow "
                    f"({floor:.4g} of dense, {r.min_value():.4g} {r.unit}); raise it or prune more group kinds"
                )

    def fractions(self, kept: torch.Tensor, alive: Optional[torch.Tensor]) -> torch.Tensor:
        """``[rows, n_budgets]`` fractions of dense for ``kept [rows, S]`` / ``alive [rows, F]``."""
        rd = self.resource_dtype
        cols = [r(kept.to(rd), None if alive is None else alive.to(rd)).to(self.dtype) for r in self.resources]
        return torch.stack(cols, dim=1) / self.dense[None, :]

    def fractions_of_masks(self, masks: PruningMasks) -> torch.Tensor:
        """``[n_budgets]`` fractions of dense of the model ``masks`` leave (exact)."""
        kept, alive = kept_and_alive(self.spec, pruned_indicators(self.spec, masks))
        dev = self.dense.device
        return self.fractions(kept.to(dev), None if alive is None else alive.to(dev))[0]

    def violation(self, fractions: torch.Tensor) -> torch.Tensor:
        """``[rows]`` total violation ``sum_b max(0, F_b - B_b)`` of ``fractions [rows, n_budgets]``."""
        return (fractions - self.limits[None, :]).clamp(min=0.0).sum(dim=1)

    def within(self, fractions: torch.Tensor) -> torch.Tensor:
        """``[rows]`` bool: every budget holds (``F_b <= B_b + 1e-9``)."""
        return (fractions <= self.limits[None, :] + _TOL).all(dim=1)

    def meets(self, counts: torch.Tensor, order: SetOrder) -> bool:
        """Whether every budget holds at prune ``counts`` (host sync)."""
        return bool(self.within(self.neighbours(counts, order)[0:1])[0])

    def counts_of(self, s: torch.Tensor) -> torch.Tensor:
        """Integer prune counts ``min(ceil(s), c_max)`` of a continuous ``s`` (float noise of
        1e-6 does not prune an extra group)."""
        return torch.minimum(torch.ceil(s - 1e-6).clamp(min=0), self.max_counts)

    def neighbours(self, counts: torch.Tensor, order: SetOrder, delta: float = 1.0) -> torch.Tensor:
        """``[S + 1, n_budgets]`` fractions at ``counts`` (row 0) and with ``delta`` more groups
        pruned in set ``l`` (row ``1 + l``, counts clipped to ``[0, c_max]``)."""
        S = counts.numel()
        rows = counts[None, :].repeat(S + 1, 1)
        step = delta * torch.eye(S, dtype=counts.dtype, device=counts.device)
        rows[1:] = torch.minimum(rows[1:] + step, self.max_counts[None, :]).clamp(min=0.0)
        alive = None
        fi = self.feature_index
        if fi is not None:
            alive = (order.ranks[fi][None, :].to(rows.dtype) >= rows[:, fi: fi + 1]).to(rows.dtype)
        return self.fractions(self.sizes[None, :] - rows, alive)

    # ------------------------------------------------------------------ the rules
    def repair(self, counts: torch.Tensor, order: SetOrder, iters: int = 30) -> torch.Tensor:
        """Smallest common push ``c + ceil(t (c_max - c))`` (bisection on ``t`` in ``[0, 1]``)
        that meets every budget; ``counts`` itself if it already does."""
        if self.meets(counts, order):
            return counts
        room = self.max_counts - counts
        lo, hi = 0.0, 1.0
        for _ in range(iters):
            mid = (lo + hi) / 2
            if self.meets(counts + torch.ceil(mid * room - 1e-9), order):
                hi = mid
            else:
                lo = mid
        return counts + torch.ceil(hi * room - 1e-9)

    def remove(self, counts: torch.Tensor, order: SetOrder, rule: str = "score",
               mean: Optional[torch.Tensor] = None, chunk: float = 0.0, strict: bool = True) -> torch.Tensor:
        """Prune one group at a time from ``counts`` until the total violation is zero.

        Args:
            counts: ``[S]`` start counts (not modified).
            order: the groups' order.
            rule: ``"score"``: the least next score; ``"cost"``: the least
                ``next / (mean * gain)``.
            mean: ``[S]`` each set's mean score (``"cost"`` only; default 1).
            chunk: groups per move as a fraction of the set, ``max(1, floor(chunk n_l))`` (the
                next group's score and gain decide, the whole chunk moves); ``0``: one group.
                A coarse allocation in about ``S / chunk`` iterations instead of one per group.
            strict: raise when stuck (below); ``False``: return the counts where no set's next
                group reduces the violation any more (the least violation on the greedy path).

        Raises:
            ValueError: (``strict``) when no set can reduce the violation any more: the budgets
                cannot be met in the sets' score order (e.g. the feature that must be kept is
                the largest table, under an ``embedding_bytes`` budget).
        """
        counts = counts.clone()
        mean = torch.ones_like(counts) if mean is None else mean
        size = torch.floor(chunk * self.sizes).clamp(min=1.0)
        while True:
            fr = self.neighbours(counts, order, 1.0)
            viol = self.violation(fr)
            if float(viol[0]) <= _TOL:
                return counts
            gain = viol[0] - viol[1:]
            can = (counts < self.max_counts) & (gain > 0)
            if not bool(can.any()):
                if not strict:
                    return counts
                raise ValueError(f"budgets {[str(x) for x in self.budgets]} cannot be met by these groups "
                                 f"(smallest reachable cost: {fr[0].tolist()} of dense)")
            nxt = order.score_at(counts, 0)
            key = (nxt / mean) / gain.clamp(min=1e-30) if rule == "cost" else nxt.clone()
            key = torch.where(can, key, torch.full_like(key, math.inf))
            i = int(torch.argmin(key))
            counts[i] = torch.minimum(counts[i] + size[i], self.max_counts[i])

    def give_back(self, counts: torch.Tensor, order: SetOrder,
                  mean: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, int]:
        """Restore pruned groups one at a time while every budget still holds.

        Args:
            counts: ``[S]`` counts that meet the budgets (not modified).
            order: the groups' order.
            mean: ``[S]`` each set's mean score: restore the most ``last / (mean * added)``
                (score per unit of resource); ``None``: the largest ``last``.

        Returns:
            ``(counts, number of groups restored)``.
        """
        counts = counts.clone()
        restored = 0
        while True:
            ev = self.neighbours(counts, order, -1.0)
            ok = (counts > 0) & self.within(ev[1:])
            if not bool(ok.any()):
                return counts, restored
            last = order.score_at(counts, -1)
            if mean is None:
                value = last.clone()
            else:
                added = (ev[1:] - ev[0:1]).clamp(min=1e-12).sum(dim=1)
                value = (last / mean) / added
            value = torch.where(ok, value, torch.full_like(value, -math.inf))
            counts[int(torch.argmax(value))] -= 1
            restored += 1
