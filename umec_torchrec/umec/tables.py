"""Embedding tables of pruned features, sharded or not (one-off operations, not per step)."""

from __future__ import annotations

from typing import Iterable, List

import torch
from torch import nn
from torch.distributed._shard.sharded_tensor import ShardedTensor

from umec_torchrec.umec.groups import feature_tables

__all__ = ["local_parts", "zero_tables_"]

try:  # DTensor tables appear with ShardingEnv(output_dtensor=True)
    from torch.distributed.tensor import DTensor
except ImportError:  # pragma: no cover
    DTensor = ()  # type: ignore[assignment]


def local_parts(t) -> List[torch.Tensor]:
    """The tensors this rank holds for a (possibly sharded) table: ShardedTensor local shards,
    a DTensor's local tensor, or the tensor itself (a data-parallel replica)."""
    if isinstance(t, ShardedTensor):
        return [s.tensor for s in t.local_shards()]
    if DTensor and isinstance(t, DTensor):
        return [t.to_local()]
    return [t]


@torch.no_grad()
def zero_tables_(model: nn.Module, features: Iterable[str]) -> List[str]:
    """Zero, in place, the tables of ``features`` on every rank's own shards.

    Works on plain modules and on ``DistributedModelParallel`` (shards are views of the
    FBGEMM weights, so the next lookup sees zeros). Returns the table names zeroed.
    """
    by_feature = feature_tables(model)
    tables = sorted({by_feature[f] for f in features})
    if not tables:
        return []
    suffixes = tuple(f"embedding_bags.{t}.weight" for t in tables)
    for key, value in model.state_dict(keep_vars=True).items():
        if key.endswith(suffixes):
            for part in local_parts(value):
                part.zero_()
    return tables
