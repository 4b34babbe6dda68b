"""Optimizers of a training run and the learning-rate schedule (settings: :mod:`umec_torchrec.train.config`).

Embedding tables get a *fused* optimizer (applied inside backward by FBGEMM's TBE kernels;
CPU supports SGD, Adagrad and row-wise Adagrad), tagged on the unsharded model with
``_apply_optimizer_in_backward`` before ``DistributedModelParallel`` shards it. Everything
else (MLPs, and tables the planner made data-parallel) gets a dense ``torch.optim``
optimizer through ``KeyedOptimizerWrapper``; both are combined in a ``CombinedOptimizer``.
"""

from __future__ import annotations

from typing import Any, Dict, List

import torch
from torch import nn
from torch.distributed.optim import _apply_optimizer_in_backward
from torchrec.optim import RowWiseAdagrad
from torchrec.optim.keyed import CombinedOptimizer, KeyedOptimizerWrapper
from torchrec.optim.optimizers import in_backward_optimizer_filter

from umec_torchrec.train.config import TrainConfig


def _embedding_optimizer_class(name: str) -> tuple:
    if name == "rowwise_adagrad":
        return RowWiseAdagrad, {}
    if name == "adagrad":
        return torch.optim.Adagrad, {}
    return torch.optim.SGD, {}


def apply_embedding_optimizer(model: nn.Module, cfg: TrainConfig) -> None:
    """Tag the embedding tables of an *unsharded* ``DLRMTrain``/``DLRM`` with the fused
    optimizer of ``cfg`` (call before :func:`umec_torchrec.train.sharding.shard_model`)."""
    from umec_torchrec.models import find_dlrm

    cls, extra = _embedding_optimizer_class(cfg.embedding_optimizer)
    params = list(find_dlrm(model).sparse_arch.parameters())
    _apply_optimizer_in_backward(cls, params, {"lr": cfg.emb_lr, **extra})


def _dense_factory(cfg: TrainConfig):
    if cfg.dense_optimizer == "adagrad":
        return lambda ps: torch.optim.Adagrad(ps, lr=cfg.dense_lr)
    if cfg.dense_optimizer == "sgd":
        return lambda ps: torch.optim.SGD(ps, lr=cfg.dense_lr)
    return lambda ps: torch.optim.Adam(ps, lr=cfg.dense_lr)


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> CombinedOptimizer:
    """``CombinedOptimizer([model.fused_optimizer, dense])`` for a sharded (DMP) model.

    ``dense`` is a ``KeyedOptimizerWrapper`` over every parameter that is not updated in
    backward (MLPs; tables the planner placed data-parallel). Optimizer state is created
    eagerly (``init_state``) so that a checkpoint can be loaded into it in place.
    """
    dense_params = dict(in_backward_optimizer_filter(model.named_parameters()))
    optims: List[Any] = []
    fused = getattr(model, "fused_optimizer", None)
    if fused is not None:
        optims.append(fused)
    if dense_params:
        dense = KeyedOptimizerWrapper(dense_params, _dense_factory(cfg))
        if cfg.dense_optimizer == "adam":
            dense.init_state()  # Adam's state is lazy; zero grads make a zero update
            dense.zero_grad(set_to_none=True)
        optims.append(dense)
    return CombinedOptimizer(optims)


def _fused_optimizers(opt: Any, _depth: int = 0) -> List[Any]:
    """The TBE-backed fused optimizers inside ``opt`` (through Combined/wrapper layers)."""
    if _depth > 8 or opt is None:
        return []
    if hasattr(opt, "_emb_module"):
        return [opt]
    out: List[Any] = []
    for _, inner in getattr(opt, "_optims", []) or []:
        out += _fused_optimizers(inner, _depth + 1)
    inner = getattr(opt, "_optimizer", None)
    if inner is not None and inner is not opt:
        out += _fused_optimizers(inner, _depth + 1)
    return out


class LRSchedule:
    """Warm-up then constant or linear decay; multiplies each param group's base lr.

    Works on any optimizer exposing ``param_groups`` (a ``CombinedOptimizer`` or a wrapper
    around one); fused table optimizers pick the new rate up at their next ``step()``.

    Args:
        optimizer: the optimizer whose groups are scaled.
        cfg: the train config (``lr_schedule``, ``warmup_steps``, ``min_lr_factor``).
        total_steps: number of steps of the run (for the linear decay).
    """

    def __init__(self, optimizer: Any, cfg: TrainConfig, total_steps: int) -> None:
        self.optimizer = optimizer
        self.kind = cfg.lr_schedule
        self.warmup = cfg.warmup_steps
        self.min_factor = cfg.min_lr_factor
        self.total = max(1, total_steps)
        self.base = [g["lr"] for g in optimizer.param_groups]
        self.step_count = 0
        self._apply()

    def factor(self, step: int) -> float:
        """Multiplier of the base rate for 0-based ``step``."""
        f = 1.0
        if self.warmup > 0 and step < self.warmup:
            f = (step + 1) / self.warmup
        if self.kind == "linear":
            span = max(1, self.total - self.warmup)
            pos = min(max(step - self.warmup, 0), span) / span
            f *= 1.0 - (1.0 - self.min_factor) * pos
        return f

    def _apply(self) -> None:
        f = self.factor(self.step_count)
        for g, b in zip(self.optimizer.param_groups, self.base):
            g["lr"] = b * f
        # Fused TBE optimizers copy the group lr into the kernel only in step(), i.e. after
        # the backward that used it: push it now so that the next backward sees this rate.
        for fused in _fused_optimizers(self.optimizer):
            fused._emb_module.set_learning_rate(fused.param_groups[0]["lr"])

    def step(self) -> None:
        """Advance one step (call after ``optimizer.step()``)."""
        self.step_count += 1
        self._apply()

    def state_dict(self) -> Dict[str, Any]:
        """``{"step_count": int, "base": [base lr per param group]}`` (checkpointed with a run)."""
        return {"step_count": int(self.step_count), "base": [float(b) for b in self.base]}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Continue from :meth:`state_dict`: base rates and position, applied to the
        optimizer at once (fused table optimizers included)."""
        base = list(state["base"])
        if len(base) != len(self.optimizer.param_groups):
            raise ValueError(f"lr schedule state has {len(base)} param groups, the optimizer "
                             f"{len(self.optimizer.param_groups)}")
        self.base = base
        self.step_count = int(state["step_count"])
        self._apply()


__all__ = [
    "apply_embedding_optimizer",
    "build_optimizer",
    "LRSchedule",
]
