"""Training configuration and optimizers.

Embedding tables get a *fused* optimizer (applied inside backward by FBGEMM's TBE kernels;
CPU supports SGD, Adagrad and row-wise Adagrad), tagged on the unsharded model with
``_apply_optimizer_in_backward`` before ``DistributedModelParallel`` shards it. Everything
else (MLPs, and tables the planner made data-parallel) gets a dense ``torch.optim``
optimizer through ``KeyedOptimizerWrapper``; both are combined in a ``CombinedOptimizer``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

import torch
from torch import nn
from torch.distributed.optim import _apply_optimizer_in_backward
from torchrec.optim import RowWiseAdagrad
from torchrec.optim.keyed import CombinedOptimizer, KeyedOptimizerWrapper
from torchrec.optim.optimizers import in_backward_optimizer_filter

EMBEDDING_OPTIMIZERS = ("rowwise_adagrad", "adagrad", "sgd")
DENSE_OPTIMIZERS = ("adagrad", "sgd", "adam")
LR_SCHEDULES = ("constant", "linear")
SHARDING_TYPES = ("table_wise", "column_wise", "table_column_wise", "data_parallel")


@dataclass
class TrainConfig:
    """Optimisation settings; stored in a run's ``config.json`` under ``"train"``.

    Args:
        embedding_optimizer: fused table optimizer, one of :data:`EMBEDDING_OPTIMIZERS`.
        emb_lr: its learning rate.
        dense_optimizer: one of :data:`DENSE_OPTIMIZERS` (MLPs and data-parallel tables).
        dense_lr: its learning rate.
        lr_schedule: ``"constant"`` or ``"linear"`` (linear decay to ``min_lr_factor``
            of the base rate at the last step), both after ``warmup_steps`` of linear warm-up.
        warmup_steps: warm-up length in steps (0 = none).
        min_lr_factor: final fraction of the base rate for the linear schedule.
        batch_size: global batch size (split evenly over ranks).
        epochs: passes over the training split.
        steps: if set, stop after this many steps (overrides ``epochs`` when smaller;
            when larger, epochs are repeated to reach it).
        eval_batch_size: global batch size for evaluation.
        seed: seeds model init and data order.
        sharding: pinned sharding type for every table (one of :data:`SHARDING_TYPES`) or
            ``None`` for the planner's choice.
        log_every: steps between log lines (0: none).
    """

    embedding_optimizer: str = "rowwise_adagrad"
    emb_lr: float = 0.02
    dense_optimizer: str = "adagrad"
    dense_lr: float = 0.01
    lr_schedule: str = "constant"
    warmup_steps: int = 0
    min_lr_factor: float = 0.0
    batch_size: int = 128
    epochs: int = 1
    steps: Optional[int] = None
    eval_batch_size: int = 8192
    seed: int = 0
    sharding: Optional[str] = None
    log_every: int = 50

    def __post_init__(self) -> None:
        if self.embedding_optimizer not in EMBEDDING_OPTIMIZERS:
            raise ValueError(
                f"unknown embedding optimizer {self.embedding_optimizer!r}; expected one of "
                f"{EMBEDDING_OPTIMIZERS} (Adam is not available as a fused CPU optimizer)"
            )
        if self.dense_optimizer not in DENSE_OPTIMIZERS:
            raise ValueError(f"unknown dense optimizer {self.dense_optimizer!r}; expected one of {DENSE_OPTIMIZERS}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"unknown lr schedule {self.lr_schedule!r}; expected one of {LR_SCHEDULES}")
        if self.sharding is not None and self.sharding not in SHARDING_TYPES:
            raise ValueError(f"unknown sharding type {self.sharding!r}; expected one of {SHARDING_TYPES}")
        for name in ("emb_lr", "dense_lr"):
            v = getattr(self, name)
            if not (v > 0 and math.isfinite(v)):
                raise ValueError(f"{name} must be a positive number, got {v}")
        if self.log_every < 0:
            raise ValueError(f"log_every must be >= 0 (0 = no log lines), got {self.log_every}")
        for name in ("batch_size", "epochs", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.steps is not None and self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps}")
        if not 0.0 <= self.min_lr_factor <= 1.0:
            raise ValueError(f"min_lr_factor must be in [0, 1], got {self.min_lr_factor}")

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "TrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown train config keys: {sorted(unknown)}")
        return cls(**d)

    def replace(self, **changes: Any) -> "TrainConfig":
        """A copy with ``changes`` applied (validated)."""
        return dataclasses.replace(self, **changes)


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


__all__ = [
    "TrainConfig",
    "EMBEDDING_OPTIMIZERS",
    "DENSE_OPTIMIZERS",
    "LR_SCHEDULES",
    "SHARDING_TYPES",
    "apply_embedding_optimizer",
    "build_optimizer",
    "LRSchedule",
]
