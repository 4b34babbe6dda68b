"""The rows an export is checked on, and a DLRM's logits on them through a KJT.

One-hot rows hold one id per feature (the data layout of :class:`~umec_torchrec.data.CTRData`
and of the ``ids`` program): ``dense float32 [n, n_dense]``, ``ids int64 [n, F]``. Multi-hot
rows (:func:`multi_hot_inputs`) are ``dense`` and a KJT with bags of any size.
"""

from __future__ import annotations

from typing import Sequence, Tuple, Union

import torch
from torchrec.models.dlrm import DLRM
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from umec_torchrec.models import ModelConfig


def sample_inputs(cfg: ModelConfig, n: int = 512, seed: int = 0) -> Tuple[torch.Tensor, torch.Tensor]:
    """Generated ``(dense [n, n_dense], ids [n, F])`` covering every table's id range (seeded).

    Example::

        dense, ids = sample_inputs(cfg, n=64, seed=2)
    """
    g = torch.Generator().manual_seed(seed)
    dense = torch.rand(n, cfg.dense_in_features, generator=g) * 3.0
    sizes = torch.tensor(cfg.table_sizes, dtype=torch.float64)
    ids = (torch.rand(n, len(sizes), generator=g, dtype=torch.float64) * sizes).long()
    return dense, ids


def multi_hot_inputs(cfg: ModelConfig, n: int = 512, seed: int = 0,
                     max_ids: int = 4) -> Tuple[torch.Tensor, KeyedJaggedTensor]:
    """Generated ``(dense [n, n_dense], KJT)`` with bags of 0..``max_ids`` ids per feature and row
    (seeded), ids covering every table's range.

    Example::

        dense, kjt = multi_hot_inputs(cfg, n=64, seed=1)
    """
    g = torch.Generator().manual_seed(seed)
    dense = torch.rand(n, cfg.dense_in_features, generator=g) * 3.0
    nf = len(cfg.feature_names)
    lengths = torch.randint(0, max_ids + 1, (nf, n), generator=g)
    rows = torch.tensor(cfg.table_sizes, dtype=torch.float64).repeat_interleave(lengths.sum(1))
    values = (torch.rand(rows.numel(), generator=g, dtype=torch.float64) * rows).long()
    return dense, KeyedJaggedTensor.from_lengths_sync(keys=list(cfg.feature_names), values=values,
                                                      lengths=lengths.reshape(-1).int())


def select_features(kjt: KeyedJaggedTensor, feature_names: Sequence[str]) -> KeyedJaggedTensor:
    """The KJT of ``feature_names`` only, in that order (``ValueError`` naming missing keys)."""
    keys = kjt.keys()
    missing = [f for f in feature_names if f not in keys]
    if missing:
        raise ValueError(f"the check rows lack features {missing[:5]}")
    return kjt.permute([keys.index(f) for f in feature_names])


Sample = Union[Tuple[torch.Tensor, torch.Tensor], Tuple[torch.Tensor, KeyedJaggedTensor]]
"""Check rows: ``(dense, ids [n, F])`` (one id per feature) or ``(dense, KJT)``."""


def sample_kjt(sample: Sample, feature_names: Sequence[str]) -> Tuple[torch.Tensor, KeyedJaggedTensor]:
    """``(dense, KJT)`` of either form of check rows (``ids`` columns named by ``feature_names``)."""
    dense, sparse = sample
    if isinstance(sparse, KeyedJaggedTensor):
        return dense, sparse
    return dense, one_id_kjt(sparse, feature_names)


def is_one_hot(kjt: KeyedJaggedTensor) -> bool:
    """Whether every bag of ``kjt`` holds exactly one id."""
    return bool((kjt.lengths() == 1).all())


def one_id_kjt(ids: torch.Tensor, feature_names: Sequence[str]) -> KeyedJaggedTensor:
    """The KJT of ``ids`` ``int64 [B, F]``: one id per feature (column) and row.

    Example::

        kjt = one_id_kjt(torch.tensor([[3, 1], [0, 2]]), ["C0", "C1"])
    """
    b, f = ids.shape
    return KeyedJaggedTensor.from_lengths_sync(
        keys=list(feature_names), values=ids.t().reshape(-1), lengths=torch.ones(b * f, dtype=torch.int32)
    )


def module_logits(dlrm: DLRM, dense: torch.Tensor, ids: torch.Tensor, feature_names: Sequence[str]) -> torch.Tensor:
    """``float32 [B]`` logits of a DLRM (float or quantized) on one-id-per-feature rows, through a KJT.

    Args:
        dlrm: the model.
        dense: ``[B, n_dense]`` dense features.
        ids: ``[B, F]`` ids, column k for ``feature_names[k]``.
        feature_names: the model's features, in ``ids`` column order.
    """
    return dlrm(dense, one_id_kjt(ids, feature_names)).squeeze(-1).float()


def kjt_logits(dlrm: DLRM, dense: torch.Tensor, kjt: KeyedJaggedTensor) -> torch.Tensor:
    """``float32 [B]`` logits of a DLRM (float or quantized) on ``(dense, kjt)``."""
    return dlrm(dense, kjt).squeeze(-1).float()


__all__ = ["sample_inputs", "multi_hot_inputs", "select_features", "Sample", "sample_kjt", "is_one_hot",
           "one_id_kjt", "module_logits", "kjt_logits"]
