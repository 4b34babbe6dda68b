"""Fine-tuning with a fixed compressed architecture: pruned weights stay exactly zero.

:class:`FixedArchitecture` is the one implementation of the fixed phase: 0/1 multipliers
``k_p`` of every touched dense parameter (``p <- p * k_p`` after each step, so a pruned
group's weights are exact zeros whatever the optimizer does) and a
:class:`~umec_torchrec.umec.feature_mask.FeatureMask` that drops the pruned features' ids.
:class:`MaskedOptimizer` and :class:`~umec_torchrec.umec.optimizer.UMECOptimizer` (after
``finalize`` / ``set_masks``) both hold one.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Sequence

import torch
from torch import nn
from torchrec.optim.keyed import KeyedOptimizer, OptimizerWrapper

from umec_torchrec.umec.feature_mask import FeatureMask
from umec_torchrec.umec.groups import GroupSpec
from umec_torchrec.umec.hard_prune import pruned_indicators, weight_masks
from umec_torchrec.umec.masks import PruningMasks
from umec_torchrec.umec.tables import zero_tables_

__all__ = ["FixedArchitecture", "MaskedOptimizer"]


class FixedArchitecture:
    """A compressed architecture held fixed on a model.

    Args:
        masks: the architecture.
        keep: ``{param: 0/1 multiplier of the same shape}`` for every touched dense parameter.

    Example::

        fixed = FixedArchitecture.of_model(dmp, masks)
        fixed.apply_()                      # after every optimizer step
        batch = fixed.feature_mask(batch)   # before every forward
    """

    def __init__(self, masks: PruningMasks, keep: Dict[torch.Tensor, torch.Tensor]) -> None:
        self.masks = masks
        self.keep = keep
        self.feature_mask = FeatureMask(masks.pruned_features)

    @classmethod
    def of_model(cls, model: nn.Module, masks: PruningMasks) -> "FixedArchitecture":
        """Groups rediscovered on ``model`` (checked against ``masks``)."""
        return cls(masks, weight_masks(model, masks))

    @classmethod
    def of_spec(cls, spec: GroupSpec, masks: PruningMasks,
                pruned: Optional[Sequence[torch.Tensor]] = None) -> "FixedArchitecture":
        """Groups of ``spec``; ``pruned`` (one 0/1 float vector per set) if already known."""
        return cls(masks, spec.keep_multipliers(pruned if pruned is not None else pruned_indicators(spec, masks)))

    @torch.no_grad()
    def apply_(self) -> None:
        """Zero every pruned weight in place (``p <- p * k_p``)."""
        for p, k in self.keep.items():
            p.mul_(k)

    def zero_tables(self, model: nn.Module, strict: bool = True) -> None:
        """Zero the pruned features' tables once (their ids are never looked up anyway);
        ``strict=False`` skips models declared without TorchRec tables."""
        if not self.masks.pruned_features:
            return
        try:
            zero_tables_(model, self.masks.pruned_features)
        except (AttributeError, KeyError, TypeError):
            if strict:
                raise


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

    def __init__(self, optimizer: KeyedOptimizer, model: nn.Module, masks: PruningMasks,
                 zero_tables: bool = True) -> None:
        super().__init__(optimizer)
        self.fixed = FixedArchitecture.of_model(model, masks)
        self.fixed.apply_()
        if zero_tables:
            self.fixed.zero_tables(model)

    @property
    def masks(self) -> PruningMasks:
        """The architecture."""
        return self.fixed.masks

    @property
    def feature_mask(self) -> FeatureMask:
        """Drops the pruned features' ids from a batch."""
        return self.fixed.feature_mask

    @property
    def keep_multipliers(self) -> Dict[torch.Tensor, torch.Tensor]:
        """``{param: 0/1 multiplier}`` applied after every step."""
        return self.fixed.keep

    def step(self, closure: Any = None) -> None:
        super().step(closure)
        self.fixed.apply_()
