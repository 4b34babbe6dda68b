"""The rows an export is checked on, and a DLRM's logits on them through a KJT.

Each row holds one id per feature (the data layout of :class:`~umec_torchrec.data.CTRData`
and of the serving program): ``dense float32 [n, n_dense]``, ``ids int64 [n, F]``.
"""

from __future__ import annotations

from typing import Sequence, Tuple

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


__all__ = ["sample_inputs", "one_id_kjt", "module_logits"]
