"""Budget-constrained group selection for the baselines: masks that meet the same budgets,
measured by the same resource models, as UMEC's.

Every function takes a :class:`~umec_torchrec.umec.groups.GroupSpec` (the same groups UMEC
prunes) and budgets (``"flops=0.3"`` strings or :class:`Budget`), and returns
:class:`PruningMasks` whose cost, evaluated with
:func:`~umec_torchrec.umec.resources.make_resource` on ``(kept counts, alive features)``,
is at most every budget:

* :func:`uniform_width_masks`: every hidden layer narrowed by one common factor (the
  largest one whose rounded widths fit), all features kept; inside a layer the units with
  the largest norms are kept.
* :func:`budget_masks` with ``rule="score"`` (magnitude pruning and the group-lasso
  threshold, on squared group norms divided by their set's mean; random groups, on random
  scores): within each set groups go in ascending score order; the group with the globally
  smallest (normalised) score is removed next, whatever it saves, until every budget holds.
* :func:`budget_masks` with ``rule="cost"``: the next group removed is the one with the
  least relative score per unit of budget violation it removes (the rule of UMEC's own
  budget repair in :meth:`UMECOptimizer.finalize`). On a ``cat`` DLRM it removes features
  first (they are the cheapest FLOPs per unit of norm) and narrows single layers to one
  unit; kept as an option, not used by the benchmark.

Both then give back the strongest removed groups while every budget still holds, so the
result uses the budget to within one group, as :meth:`UMECOptimizer.finalize` does.

The greedy loop runs once per removed group (one-shot, not a training hot path); each
iteration evaluates all sets' "one more group" neighbours in one batched resource call.
"""

from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple, Union

import torch

from umec_torchrec.umec.budgets import Budget, parse_budgets
from umec_torchrec.umec.groups import GroupSpec
from umec_torchrec.umec.hard_prune import masks_from_pruned
from umec_torchrec.umec.masks import PruningMasks
from umec_torchrec.umec.resources import Resource, make_resource

BudgetLike = Union[str, Budget]


class _Budgets:
    """The budgets of ``spec`` as fractions of its dense cost, plus batched evaluation."""

    def __init__(self, spec: GroupSpec, budgets: Sequence[BudgetLike]) -> None:
        self.spec = spec
        self.budgets = parse_budgets(budgets)
        self.resources: List[Resource] = [make_resource(b.resource, spec) for b in self.budgets]
        self.dense = torch.tensor([r.dense_value() for r in self.resources], dtype=torch.float64)
        self.B = torch.tensor([b.fraction(float(d)) for b, d in zip(self.budgets, self.dense)], dtype=torch.float64)
        self.n = torch.tensor([float(s.size) for s in spec.sets], dtype=torch.float64)
        self.min_keep = torch.tensor([float(s.min_keep) for s in spec.sets], dtype=torch.float64)
        self.fi = next((i for i, s in enumerate(spec.sets) if s.kind == "features"), None)

    def fractions(self, kept: torch.Tensor, alive: Optional[torch.Tensor]) -> torch.Tensor:
        """``[rows, n_budgets]`` cost fractions of ``kept [rows, S]`` / ``alive [rows, F]``."""
        cols = [r(kept.float(), None if alive is None else alive.float()).double() for r in self.resources]
        return torch.stack(cols, dim=1) / self.dense[None, :]

    def violation(self, fr: torch.Tensor) -> torch.Tensor:
        return (fr - self.B[None, :]).clamp(min=0.0).sum(dim=1)


def _pruned_from_counts(scores: List[torch.Tensor], counts: torch.Tensor) -> List[torch.Tensor]:
    out = []
    for sc, c in zip(scores, counts.tolist()):
        order = torch.argsort(sc.double().cpu(), stable=True)
        pr = torch.zeros(sc.numel())
        pr[order[: int(c)]] = 1.0
        out.append(pr)
    return out


def _state(b: _Budgets, sorted_idx: List[torch.Tensor], counts: torch.Tensor, delta: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """Fractions at ``counts`` (row 0) and with ``delta`` more groups pruned in each set."""
    S = counts.numel()
    rows = counts[None, :].repeat(S + 1, 1)
    rows[1:] += delta * torch.eye(S, dtype=rows.dtype)
    rows = torch.minimum(rows.clamp(min=0.0), b.n - b.min_keep)
    alive = None
    if b.fi is not None:
        rank = torch.empty_like(sorted_idx[b.fi])
        rank[sorted_idx[b.fi]] = torch.arange(rank.numel())
        alive = (rank[None, :].double() >= rows[:, b.fi: b.fi + 1]).double()
    return b.fractions(b.n[None, :] - rows, alive), rows


def budget_masks(
    spec: GroupSpec,
    budgets: Sequence[BudgetLike],
    scores: Sequence[torch.Tensor],
    rule: str = "score",
    fill: bool = True,
    normalize: bool = True,
) -> PruningMasks:
    """Remove least-score groups until every budget holds (see the module docstring).

    Args:
        spec: the groups.
        budgets: e.g. ``["flops=0.3"]``.
        scores: one score vector per set of ``spec`` (a larger score = more important).
        rule: ``"score"`` (globally least score) or ``"cost"`` (least score per unit of
            violation removed).
        normalize: divide each set's scores by their mean first (norms of different sets
            are on different scales).
        fill: afterwards give back the strongest removed groups while every budget holds.

    Raises:
        ValueError: when the budgets cannot be met even at every set's ``min_keep``.
    """
    if rule not in ("cost", "score"):
        raise ValueError(f"rule must be 'cost' or 'score', got {rule!r}")
    if len(scores) != len(spec.sets):
        raise ValueError(f"need one score vector per group set ({len(spec.sets)}), got {len(scores)}")
    b = _Budgets(spec, budgets)
    sc = [s.detach().double().cpu() for s in scores]
    if normalize:
        sc = [s / s.abs().mean().clamp(min=1e-30) for s in sc]
    for s, gs in zip(sc, spec.sets):
        if s.numel() != gs.size:
            raise ValueError(f"set {gs.name}: {s.numel()} scores for {gs.size} groups")
    sorted_idx = [torch.argsort(s, stable=True) for s in sc]
    sorted_sc = [s[i] for s, i in zip(sc, sorted_idx)]
    mean = torch.ones(len(sc), dtype=torch.float64) if normalize else torch.stack(
        [s.abs().mean().clamp(min=1e-30) for s in sc])
    counts = torch.zeros(len(sc), dtype=torch.float64)
    s_max = b.n - b.min_keep
    while True:
        fr, _ = _state(b, sorted_idx, counts, 1.0)
        viol = b.violation(fr)
        if float(viol[0]) <= 1e-9:
            break
        gain = viol[0] - viol[1:]
        can = (counts < s_max) & (gain > 0)
        if not bool(can.any()):
            raise ValueError(f"budgets {[str(x) for x in b.budgets]} cannot be met by these groups "
                             f"(smallest reachable cost: {fr[0].tolist()} of dense)")
        nxt = torch.stack([ss[min(int(c), ss.numel() - 1)] for ss, c in zip(sorted_sc, counts.tolist())])
        if rule == "cost":
            key = (nxt / mean) / gain.clamp(min=1e-30)
        else:
            key = nxt.clone()
        key = torch.where(can, key, torch.full_like(key, math.inf))
        counts[int(torch.argmin(key))] += 1
    while fill:
        fr, _ = _state(b, sorted_idx, counts, -1.0)
        ok = (counts > 0) & (fr[1:] <= b.B[None, :] + 1e-9).all(dim=1)
        if not bool(ok.any()):
            break
        last = torch.stack([ss[max(int(c) - 1, 0)] for ss, c in zip(sorted_sc, counts.tolist())])
        if rule == "cost":
            added = (fr[1:] - fr[0:1]).clamp(min=1e-12).sum(dim=1)
            value = (last / mean) / added
        else:
            value = last.clone()
        value = torch.where(ok, value, torch.full_like(value, -math.inf))
        counts[int(torch.argmax(value))] -= 1
    return masks_from_pruned(spec, _pruned_from_counts(sc, counts))


def uniform_width_masks(
    spec: GroupSpec,
    budgets: Sequence[BudgetLike],
    scores: Optional[Sequence[torch.Tensor]] = None,
    iters: int = 60,
) -> Tuple[PruningMasks, float]:
    """Every unit set narrowed to ``max(min_keep, round(factor * width))`` with the largest
    ``factor`` whose cost meets every budget; all features kept.

    Args:
        scores: per set, which units to keep (the largest); default: the first units.

    Returns:
        ``(masks, factor)``.

    Raises:
        ValueError: when the spec has no unit groups, or even the narrowest widths miss a
            budget (the kept features alone cost too much).
    """
    b = _Budgets(spec, budgets)
    units = [i for i, s in enumerate(spec.sets) if s.kind == "units"]
    if not units:
        raise ValueError("uniform width needs hidden-unit groups (it keeps every feature)")

    def kept_at(f: float) -> torch.Tensor:
        k = b.n.clone()
        for i in units:
            k[i] = min(b.n[i].item(), max(b.min_keep[i].item(), float(round(f * b.n[i].item()))))
        return k

    alive = None if b.fi is None else torch.ones(1, spec.sets[b.fi].size, dtype=torch.float64)

    def fits(f: float) -> bool:
        return float(b.violation(b.fractions(kept_at(f)[None, :], alive))[0]) <= 1e-9

    if fits(1.0):
        lo = 1.0
    elif not fits(0.0):
        fr = b.fractions(kept_at(0.0)[None, :], alive)[0].tolist()
        raise ValueError(f"uniform width cannot meet {[str(x) for x in b.budgets]}: with every feature kept the "
                         f"narrowest model still costs {fr} of dense")
    else:
        lo, hi = 0.0, 1.0
        for _ in range(iters):
            mid = (lo + hi) / 2
            if fits(mid):
                lo = mid
            else:
                hi = mid
    k = kept_at(lo)
    pruned = []
    for i, gs in enumerate(spec.sets):
        pr = torch.zeros(gs.size)
        n_drop = gs.size - int(k[i])
        if n_drop:
            if scores is not None:
                order = torch.argsort(scores[i].detach().double().cpu(), stable=True)
            else:
                order = torch.arange(gs.size - 1, -1, -1)
            pr[order[:n_drop]] = 1.0
        pruned.append(pr)
    return masks_from_pruned(spec, pruned), lo


def random_scores(spec: GroupSpec, seed: int) -> List[torch.Tensor]:
    """Independent uniform scores for every group (seeded): with ``rule="score"`` the
    removal order is a uniformly random order of all groups."""
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(s.size, generator=g, dtype=torch.float64) for s in spec.sets]


def weight_scores(spec: GroupSpec) -> List[torch.Tensor]:
    """Squared L2 norm of every group's weights (what magnitude pruning ranks by)."""
    cache: dict = {}
    return [gs.scores(cache) for gs in spec.sets]


def fractions_of_masks(spec: GroupSpec, masks: PruningMasks, budgets: Sequence[BudgetLike]) -> List[float]:
    """Each budget's resource, as a fraction of dense, for ``masks`` (exact, same model)."""
    from umec_torchrec.umec.resources import kept_of_masks

    b = _Budgets(spec, budgets)
    kept, alive = kept_of_masks(spec, masks)
    return b.fractions(kept.double(), None if alive is None else alive.double())[0].tolist()


__all__ = ["budget_masks", "uniform_width_masks", "masks_from_pruned", "random_scores", "weight_scores",
           "fractions_of_masks"]
