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
  least relative score per unit of budget violation it removes (UMEC's give-back rule in
  :meth:`UMECOptimizer.finalize`, applied to removal). On a ``cat`` DLRM it removes features
  first (they are the cheapest FLOPs per unit of norm) and narrows single layers to one
  unit. The one-shot Taylor baseline uses it on loss-scale scores with ``normalize=False``:
  one global ranking of importance per unit of the budgeted resource.

Both then give back the strongest removed groups while every budget still holds, so the
result uses the budget to within one group, as :meth:`UMECOptimizer.finalize` does.

The rules are those of :class:`~umec_torchrec.umec.allocation.BudgetAllocator`: the greedy
loop runs once per removed group (one-shot, not a training hot path); each iteration
evaluates all sets' "one more group" neighbours in one batched resource call.
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple, Union

import torch

from umec_torchrec.umec.allocation import BudgetAllocator, SetOrder
from umec_torchrec.umec.budgets import Budget
from umec_torchrec.umec.groups import GroupSpec
from umec_torchrec.umec.hard_prune import masks_from_pruned
from umec_torchrec.umec.masks import PruningMasks

__all__ = ["budget_masks", "uniform_width_masks", "masks_from_pruned", "random_scores", "weight_scores",
           "fractions_of_masks"]

BudgetLike = Union[str, Budget]


def _allocator(spec: GroupSpec, budgets: Sequence[BudgetLike]) -> BudgetAllocator:
    """Fractions and counts in float64 on the CPU (resources evaluated in float32)."""
    return BudgetAllocator(spec, budgets, dtype=torch.float64)


def budget_masks(
    spec: GroupSpec,
    budgets: Sequence[BudgetLike],
    scores: Sequence[torch.Tensor],
    rule: str = "score",
    fill: bool = True,
    normalize: bool = True,
) -> PruningMasks:
    r"""Remove least-score groups until every budget holds (see the module docstring): the
    removal and give-back rules of :class:`~umec_torchrec.umec.allocation.BudgetAllocator`,
    from nothing pruned.

    Args:
        spec: the groups.
        budgets: e.g. ``["flops=0.3"]``.
        scores: one score vector per set of ``spec`` (a larger score = more important).
        rule: ``"score"`` (globally least score) or ``"cost"`` (least score per unit of
            violation removed, ``sigma / (mean(sigma_l) * gain)``; the give-back then restores
            the most score per unit of resource added).
        normalize: divide each set's scores by their mean ``mean(|sigma_l|)`` first (norms of
            different sets are on different scales). ``False``: the scores are on one scale
            already (loss-based scores, random scores) and are ranked as they are, with
            either rule (one global ranking of score per unit of resource with ``"cost"``).
        fill: afterwards give back the strongest removed groups while every budget holds.

    Raises:
        ValueError: when the budgets cannot be met even at every set's ``min_keep``.

    Example::

        masks = budget_masks(spec, ["flops=0.3"], weight_scores(spec))
    """
    if rule not in ("cost", "score"):
        raise ValueError(f"rule must be 'cost' or 'score', got {rule!r}")
    if len(scores) != len(spec.sets):
        raise ValueError(f"need one score vector per group set ({len(spec.sets)}), got {len(scores)}")
    alloc = _allocator(spec, budgets)
    sc = [s.detach().double().cpu() for s in scores]
    if normalize:
        sc = [s / s.abs().mean().clamp(min=1e-30) for s in sc]
    for s, gs in zip(sc, spec.sets):
        if s.numel() != gs.size:
            raise ValueError(f"set {gs.name}: {s.numel()} scores for {gs.size} groups")
    order = SetOrder.of(sc)
    mean = torch.ones(len(sc), dtype=torch.float64)  # normalised, or already on one scale
    counts = alloc.remove(torch.zeros(len(sc), dtype=torch.float64), order, rule=rule, mean=mean)
    if fill:
        counts, _ = alloc.give_back(counts, order, mean=mean if rule == "cost" else None)
    return masks_from_pruned(spec, [p.double() for p in order.pruned(counts)])


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
    b = _allocator(spec, budgets)
    units = [i for i, s in enumerate(spec.sets) if s.kind == "units"]
    if not units:
        raise ValueError("uniform width needs hidden-unit groups (it keeps every feature)")

    def kept_at(f: float) -> torch.Tensor:
        k = b.sizes.clone()
        for i in units:  # a loop over the (few) sets
            k[i] = min(b.sizes[i].item(), max(b.min_keep[i].item(), float(round(f * b.sizes[i].item()))))
        return k

    fi = b.feature_index
    alive = None if fi is None else torch.ones(1, spec.sets[fi].size, dtype=torch.float64)

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
    return _allocator(spec, budgets).fractions_of_masks(masks).tolist()
