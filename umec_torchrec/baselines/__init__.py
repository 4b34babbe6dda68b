"""Baselines for UMEC: masks of the same structure, meeting the same budgets under the same
resource models, fine-tuned and exported the same way.

* :func:`~umec_torchrec.baselines.selection.uniform_width_masks`: every layer narrowed by one factor;
* :func:`~umec_torchrec.baselines.selection.budget_masks` with weight norms: one-shot magnitude pruning;
  with random scores: random groups;
* :class:`~umec_torchrec.baselines.group_lasso.GroupLassoOptimizer`: a group L2,1 penalty during
  training, then a norm threshold down to the budget.

``umec bench quality`` (:mod:`umec_torchrec.bench.quality`) runs them against UMEC.
"""

from umec_torchrec.baselines.group_lasso import GroupLassoOptimizer
from umec_torchrec.baselines.selection import (
    budget_masks,
    fractions_of_masks,
    masks_from_pruned,
    random_scores,
    uniform_width_masks,
    weight_scores,
)

__all__ = ["GroupLassoOptimizer", "budget_masks", "fractions_of_masks", "masks_from_pruned", "random_scores",
           "uniform_width_masks", "weight_scores"]
