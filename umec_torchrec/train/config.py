"""``TrainConfig``: the optimisation settings of a run (``config.json`` under ``"train"``).

Pure data (no torch import), so the command line reads its defaults from here and the
run directory can parse a recorded config without building anything.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Dict, Optional

__all__ = ["TrainConfig", "EMBEDDING_OPTIMIZERS", "DENSE_OPTIMIZERS", "LR_SCHEDULES", "SHARDING_TYPES"]

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
