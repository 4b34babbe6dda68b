"""UMEC: prunable groups, resource models and the primal-dual optimizer wrapper.

Typical use inside a training loop::

    umec = UMECOptimizer(optimizer, model, ["flops=0.3", "embedding_bytes=0.5"],
                         holdout=lambda: valid.batches(4096))  # validation batches for the scores
    loss, _ = model(umec.feature_mask(batch)); loss.backward(); umec.step(); umec.zero_grad()
    masks = umec.finalize()

With a TorchRec train pipeline, mask the loader: ``it = iter(umec.feature_mask.wrap(loader))``,
then ``pipeline.progress(it)`` at every step.
"""

from umec_torchrec.umec.allocation import BudgetAllocator, SetOrder, resources_of_masks
from umec_torchrec.umec.budgets import Budget, parse_budgets
from umec_torchrec.umec.feature_mask import FeatureMask, MaskedLoader
from umec_torchrec.umec.groups import GroupSpec, declare_groups, discover_groups
from umec_torchrec.umec.hard_prune import apply_masks_, weight_masks
from umec_torchrec.umec.masked_optimizer import FixedArchitecture, MaskedOptimizer
from umec_torchrec.umec.masks import PruningMasks
from umec_torchrec.umec.optimizer import UMECConfig, UMECOptimizer, UMECStateMismatch
from umec_torchrec.umec.resources import make_resource

__all__ = [
    "Budget",
    "BudgetAllocator",
    "FeatureMask",
    "FixedArchitecture",
    "GroupSpec",
    "MaskedLoader",
    "MaskedOptimizer",
    "PruningMasks",
    "SetOrder",
    "UMECConfig",
    "UMECOptimizer",
    "UMECStateMismatch",
    "apply_masks_",
    "declare_groups",
    "discover_groups",
    "make_resource",
    "parse_budgets",
    "resources_of_masks",
    "weight_masks",
]
