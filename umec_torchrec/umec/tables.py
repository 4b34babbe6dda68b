"""Embedding tables of pruned features, sharded or not (one-off operations, not per step)."""

from __future__ import annotations

from typing import Iterable, List, Mapping

import torch
from torch import nn
from torch.distributed._shard.sharded_tensor import ShardedTensor

from umec_torchrec.umec.groups import feature_tables

__all__ = ["dropped_tables", "local_parts", "zero_tables_"]

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


def dropped_tables(by_feature: Mapping[str, str], pruned: Iterable[str]) -> List[str]:
    """The tables (sorted) whose every reader is in ``pruned``: a table shared by several
    features is dropped only when all of them are pruned.

    Args:
        by_feature: ``{feature: table}`` (:func:`~umec_torchrec.umec.groups.feature_tables`).
        pruned: pruned feature names; names that read no table are ignored.

    Example::

        dropped_tables({"item": "t_item", "user_hist": "t_item", "ctx": "t_ctx"}, ["user_hist", "ctx"])
        # ["t_ctx"]
    """
    gone = set(pruned)
    alive = {t for f, t in by_feature.items() if f not in gone}
    return sorted({t for f, t in by_feature.items() if f in gone} - alive)


@torch.no_grad()
def zero_tables_(model: nn.Module, features: Iterable[str]) -> List[str]:
    """Zero, in place, on every rank's own shards, the tables that only ``features`` read
    (:func:`dropped_tables`: a shared table stays while one of its features is kept).

    Works on plain modules, custom models holding EmbeddingBagCollections and
    ``DistributedModelParallel`` (shards are views of the FBGEMM weights, so the next lookup
    sees zeros). Returns the table names zeroed (none when the model has no tables).

    Raises:
        RuntimeError: when a table to zero has no weight in the model's state dict.
    """
    tables = dropped_tables(feature_tables(model), features)
    if not tables:
        return []
    suffixes = {t: f"embedding_bags.{t}.weight" for t in tables}
    found = set()
    for key, value in model.state_dict(keep_vars=True).items():
        for t, suffix in suffixes.items():
            if key.endswith(suffix):
                found.add(t)
                for part in local_parts(value):
                    part.zero_()
    missing = sorted(set(tables) - found)
    if missing:
        raise RuntimeError(f"tables {missing} of pruned features have no weight in the model's state dict")
    return tables
