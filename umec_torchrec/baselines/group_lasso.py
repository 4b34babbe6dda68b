r"""Group lasso: a group :math:`L_{2,1}` penalty during training, by a proximal step.

The penalty is :math:`\lambda \sum_l m_l \sum_{g \in l} \|W_g\|_2` over the same groups UMEC
prunes (:class:`~umec_torchrec.umec.groups.GroupSpec`), where :math:`m_l` is set ``l``'s mean
group norm at the first step (a constant: ``lam`` is then scale-free, like UMEC's
penalties; over ``T`` steps at learning rate ``eta`` the penalty alone removes ``T eta lam``
mean group norms). After every wrapped-optimizer step each group is soft-thresholded,

.. math:: W_g \leftarrow W_g \, \max\big(0,\; 1 - \eta \lambda m_l / \|W_g\|_2\big),

the exact prox of the penalty for non-overlapping groups. Unit groups overlap (a unit's
outgoing column lies in the next layer's unit rows), so the prox is applied set after set
(a standard approximation). A weight shared by several groups of one set (``dot`` pair
columns) gets the product of their factors. Vectorised: one norm reduction and one mat-vec
per member, no loop over groups.

After the penalty phase, :func:`~umec_torchrec.baselines.selection.budget_masks` thresholds
by norm down to the budget, and the masks are fine-tuned like every other method's.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import nn
from torchrec.optim.keyed import KeyedOptimizer, OptimizerWrapper

from umec_torchrec.umec.groups import GroupSpec


class GroupLassoOptimizer(OptimizerWrapper):
    """Wraps the training optimizer; after each step applies the group soft-threshold.

    Args:
        optimizer: a ``KeyedOptimizer`` / ``CombinedOptimizer``.
        model: the model the groups were discovered on.
        spec: the groups.
        lam: the scale-free strength ``lambda``.
        prox_lr: ``eta``; default: the lr of the param group holding the first group's weight.

    Example::

        opt = GroupLassoOptimizer(optimizer, dmp, discover_groups(dmp), lam=0.5)
        fit(dmp, opt, data, cfg, ctx)
        masks = budget_masks(opt.spec, ["flops=0.3"], weight_scores(opt.spec))
    """

    def __init__(self, optimizer: KeyedOptimizer, model: nn.Module, spec: GroupSpec, lam: float,
                 prox_lr: Optional[float] = None) -> None:
        super().__init__(optimizer)
        if not lam >= 0:
            raise ValueError(f"lam must be >= 0, got {lam}")
        self.model = model
        self.spec = spec
        self.lam = float(lam)
        self.prox_lr = prox_lr
        self._param = spec.sets[0].members[0].param
        self._mean: Optional[torch.Tensor] = None
        self.steps = 0

    def _lr(self) -> float:
        if self.prox_lr is not None:
            return float(self.prox_lr)
        for g in self.param_groups:
            if any(p is self._param for p in g["params"]):
                return float(g["lr"])
        return float(next(iter(self.param_groups))["lr"])

    def step(self, closure: Any = None) -> None:
        super().step(closure)
        self.prox()
        self.steps += 1

    @torch.no_grad()
    def prox(self) -> None:
        """One soft-threshold of every set (in order)."""
        if self._mean is None:
            self._mean = torch.stack([gs.scores().sqrt().mean() for gs in self.spec.sets]).clamp(min=1e-12)
        eta = self._lr()
        for li, gs in enumerate(self.spec.sets):
            norm = gs.scores().sqrt()
            factor = (1.0 - eta * self.lam * self._mean[li] / norm.clamp(min=1e-30)).clamp(min=0.0)
            logf = factor.clamp(min=1e-30).log()
            dead = (factor == 0).to(factor.dtype)
            for m in gs.members:
                if m.incidence is None:
                    f = factor
                else:
                    f = torch.exp(m.incidence @ logf) * ((m.incidence @ dead) == 0).to(factor.dtype)
                shape = [1] * m.param.dim()
                shape[m.dim] = -1
                m.param.mul_(f.to(m.param.dtype).view(shape))

    def sparsity(self) -> dict:
        """``{set name: share of groups that are exactly zero}``."""
        return {gs.name: float((gs.scores() == 0).double().mean()) for gs in self.spec.sets}


__all__ = ["GroupLassoOptimizer"]
