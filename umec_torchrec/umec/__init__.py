"""UMEC: prunable groups, resource models and the primal-dual optimizer wrapper."""

from umec_torchrec.umec.feature_mask import FeatureMask
from umec_torchrec.umec.hard_prune import apply_masks_, weight_masks
from umec_torchrec.umec.masks import PruningMasks

__all__ = ["FeatureMask", "PruningMasks", "apply_masks_", "weight_masks"]
