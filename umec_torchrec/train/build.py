"""Building the training model: a :class:`ModelConfig` sized from the data, and the seeded
``DLRMTrain`` -> fused table optimizer -> ``DistributedModelParallel`` -> optimizer chain."""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, Mapping, Optional, Tuple

import torch
from torch import nn

from umec_torchrec.data.dataset import CTRData
from umec_torchrec.distributed import DistContext
from umec_torchrec.models import DEFAULT_MODEL_KIND, ModelConfig, build_model
from umec_torchrec.train.config import TrainConfig
from umec_torchrec.train.optim import apply_embedding_optimizer, build_optimizer
from umec_torchrec.train.sharding import shard_model

__all__ = ["default_bottom", "make_model_config", "build_training"]

def default_bottom(embedding_dim: int) -> list:
    """:class:`ModelConfig`'s default bottom MLP with its last layer set to ``embedding_dim``
    (e.g. ``[512, 256, 64, D]``)."""
    bottom = next(f for f in dataclasses.fields(ModelConfig) if f.name == "bottom").default_factory()  # type: ignore
    return list(bottom[:-1]) + [int(embedding_dim)]


def make_model_config(train: CTRData, overrides: Optional[Dict[str, Any]] = None) -> ModelConfig:
    """A :class:`ModelConfig` sized from ``train`` (features, table sizes, dense width).

    ``overrides`` may set ``kind`` (default ``"cat"``), ``embedding_dim``, ``bottom``,
    ``top``, ``dcn_num_layers``, ``dcn_low_rank_dim``. When only ``embedding_dim`` is given
    the bottom MLP's last layer follows it.
    """
    ov = {k: v for k, v in (overrides or {}).items() if v is not None}
    for k in ("feature_names", "table_sizes", "dense_in_features"):
        if k in ov:
            raise ValueError(f"model override {k!r} is taken from the data and cannot be set")
    if "embedding_dim" in ov and "bottom" not in ov:
        ov["bottom"] = default_bottom(ov["embedding_dim"])
    ov.setdefault("kind", DEFAULT_MODEL_KIND)
    if train.multi_hot:  # measured on the training rows: what a lookup_bytes budget counts
        ov.setdefault("ids_per_sample", train.ids_per_sample())
    return ModelConfig(
        feature_names=list(train.feature_names),
        table_sizes=[int(s) for s in train.table_sizes],
        dense_in_features=int(train.dense.shape[1]),
        **ov,
    )


def build_training(
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    ctx: DistContext,
    tables_on_meta: bool = False,
    table_plan: Optional[Mapping[str, Mapping[str, Any]]] = None,
) -> Tuple[nn.Module, Any]:
    """Seeded ``DLRMTrain`` -> fused table optimizer -> DMP -> ``CombinedOptimizer``.

    Args:
        model_cfg / train_cfg: what to build.
        ctx: the distributed context.
        tables_on_meta: let DMP initialise the tables per shard (for huge tables; the init
            then depends on the world size). Otherwise the seeded unsharded init is copied in.
        table_plan: a recorded plan to reuse (:func:`~umec_torchrec.train.sharding.plan_record`,
            e.g. a source run's ``config.json["sharding_plan"]``): every table keeps its sharding
            type and kernel, so the source's optimizer state fits on any world size.

    Returns:
        ``(dmp, optimizer)``.
    """
    torch.manual_seed(train_cfg.seed)
    model = build_model(
        model_cfg,
        device=torch.device("cpu"),
        tables_device=torch.device("meta") if tables_on_meta else torch.device("cpu"),
    )
    apply_embedding_optimizer(model, train_cfg)
    local_bs = max(1, train_cfg.batch_size // ctx.world_size)
    dmp = shard_model(model, ctx, train_cfg.sharding, batch_size=local_bs, table_plan=table_plan)
    return dmp, build_optimizer(dmp, train_cfg)
