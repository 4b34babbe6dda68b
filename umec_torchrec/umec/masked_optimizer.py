"""Fine-tuning with a fixed compressed architecture: pruned weights stay exactly zero."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torchrec.optim.keyed import KeyedOptimizer, OptimizerWrapper

from umec_torchrec.umec.feature_mask import FeatureMask
from umec_torchrec.umec.hard_prune import apply_masks_
from umec_torchrec.umec.masks import PruningMasks
from umec_torchrec.umec.tables import zero_tables_


class MaskedOptimizer(OptimizerWrapper):
    """Wraps the training optimizer; after every step the pruned groups of ``masks`` are
    zeroed again, and :attr:`feature_mask` drops the pruned features' ids from batches.

    Args:
        optimizer: a ``KeyedOptimizer``/``CombinedOptimizer``.
        model: the (possibly sharded) model that ``masks`` were made for.
        masks: the compressed architecture.
        zero_tables: zero the pruned tables once now (their ids are never looked up anyway).

    Example::

        opt = MaskedOptimizer(CombinedOptimizer([dmp.fused_optimizer, dense]), dmp, masks)
        loss, _ = dmp(opt.feature_mask(batch)); loss.backward(); opt.step()
    """

    def __init__(self, optimizer: KeyedOptimizer, model: nn.Module, masks: PruningMasks, zero_tables: bool = True) -> None:
        super().__init__(optimizer)
        self.masks = masks
        self._keep = apply_masks_(model, masks)
        self.feature_mask = FeatureMask(masks.pruned_features)
        if zero_tables and masks.pruned_features:
            zero_tables_(model, masks.pruned_features)

    def step(self, closure: Any = None) -> None:
        super().step(closure)
        with torch.no_grad():
            for p, k in self._keep.items():
                p.mul_(k)
