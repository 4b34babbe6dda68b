"""Baselines for UMEC: masks of the same structure, meeting the same budgets under the same
resource models, fine-tuned and exported the same way.

* :func:`~umec_torchrec.baselines.selection.uniform_width_masks`: every layer narrowed by one factor;
* :func:`~umec_torchrec.baselines.selection.budget_masks` with weight norms: one-shot magnitude pruning;
  with random scores: random groups;
* :class:`~umec_torchrec.baselines.group_lasso.GroupLassoOptimizer`: a group L2,1 penalty during
  training, then a norm threshold down to the budget;
* :mod:`~umec_torchrec.baselines.loss_scores`: one-shot loss-based scores of a trained model
  (Taylor/Fisher of every set, permutation importance and SHARK of the features) for
  :func:`~umec_torchrec.baselines.selection.budget_masks`.

``umec bench quality`` (:mod:`umec_torchrec.bench.quality`) runs them against UMEC.
"""

from umec_torchrec.baselines.group_lasso import GroupLassoOptimizer
from umec_torchrec.baselines.loss_scores import (
    fold_pruned_means_,
    permutation_field_scores,
    shark_field_scores,
    taylor_scores,
)
from umec_torchrec.baselines.selection import (
    budget_masks,
    fractions_of_masks,
    masks_from_pruned,
    random_scores,
    uniform_width_masks,
    weight_scores,
)

__all__ = ["GroupLassoOptimizer", "budget_masks", "fold_pruned_means_", "fractions_of_masks", "masks_from_pruned",
           "permutation_field_scores", "random_scores", "shark_field_scores", "taylor_scores", "uniform_width_masks",
           "weight_scores"]
