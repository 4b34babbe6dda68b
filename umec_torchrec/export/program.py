"""The serving entry point of a (compact) DLRM and its ``torch.export`` program.

A KeyedJaggedTensor input cannot be exported with a dynamic batch without TorchRec's IR
helpers (not in the wheel), because splitting its values per key needs data-dependent sizes.
Our data has exactly one id per feature and row, so the program takes plain tensors:

* ``dense``: ``float32 [B, n_dense]`` (already transformed, as in :class:`CTRData`);
* ``ids``: ``int64 [B, F]``, the row of each of the model's features, in the model's
  feature order (for a compact model: the kept features, listed in ``manifest.json``);

and returns ``float32 [B]`` logits. The batch dimension is dynamic. Each feature's pooled
embedding is the model's own ``nn.EmbeddingBag`` over a one-id bag, exactly what the
EmbeddingBagCollection computes for a one-id KJT, so the program's logits equal the module's.
The program holds only aten ops: loading it needs ``torch`` alone (no TorchRec, no
``torch.distributed`` process group).
"""

from __future__ import annotations

from typing import List, Tuple

import torch
from torch import nn
from torchrec.models.dlrm import DLRM
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

MAX_BATCH = 1 << 24


class CompactPredictor(nn.Module):
    """``forward(dense [B, n_dense], ids [B, F]) -> logits [B]`` over a DLRM (shares its weights).

    Args:
        dlrm: any DLRM of our kinds (one table per feature).

    Example::

        pred = CompactPredictor(compact).eval()
        logits = pred(batch.dense_features, ids_of(batch.sparse_features, pred.feature_names))
    """

    def __init__(self, dlrm: DLRM) -> None:
        super().__init__()
        self.dlrm = dlrm
        self.feature_names: List[str] = list(dlrm.sparse_arch.sparse_feature_names)

    def forward(self, dense: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        d = self.dlrm
        offsets = torch.arange(ids.shape[0] + 1, device=ids.device)  # one id per bag
        bags = d.sparse_arch.embedding_bag_collection.embedding_bags.values()
        pooled = [bag(ids[:, k].contiguous(), offsets) for k, bag in enumerate(bags)]
        sparse = torch.stack(pooled, dim=1)  # [B, F, D]
        x = d.inter_arch(dense_features=d.dense_arch(dense), sparse_features=sparse)
        return d.over_arch(x).squeeze(-1)


def ids_of(kjt: KeyedJaggedTensor, feature_names: List[str]) -> torch.Tensor:
    """``int64 [B, F]`` ids of ``feature_names`` from a KJT with exactly one id per feature and row
    (extra keys are ignored)."""
    keys = kjt.keys()
    missing = [f for f in feature_names if f not in keys]
    if missing:
        raise ValueError(f"the KJT lacks features {missing[:5]}")
    idx = [keys.index(f) for f in feature_names]
    b = kjt.stride()
    lengths = kjt.lengths().view(len(keys), b)[idx]
    if not bool((lengths == 1).all()):
        raise ValueError("the program takes exactly one id per feature and row; this KJT has other bag sizes")
    return kjt.values().view(len(keys), b)[idx].t().long()


def export_program(dlrm: DLRM, n_dense: int, example_batch: int = 4) -> torch.export.ExportedProgram:
    """``torch.export`` of :class:`CompactPredictor` over ``dlrm`` with a dynamic batch dimension."""
    pred = CompactPredictor(dlrm).eval()
    cfgs = dlrm.sparse_arch.embedding_bag_collection.embedding_bag_configs()
    ids = torch.stack([torch.arange(example_batch) % c.num_embeddings for c in cfgs], dim=1)
    dense = torch.zeros(example_batch, n_dense)
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    with torch.no_grad():
        return torch.export.export(
            pred, (dense, ids), dynamic_shapes={"dense": {0: batch}, "ids": {0: batch}}, strict=False
        )


def program_signature(n_dense: int, feature_names: List[str]) -> dict:
    """The program's input/output description recorded in ``manifest.json``."""
    return {
        "inputs": {
            "dense": f"float32 [B, {n_dense}]",
            "ids": f"int64 [B, {len(feature_names)}]: one row id per kept feature, in 'features.kept' order",
        },
        "output": "float32 [B] logits",
        "dynamic": {"batch": [1, MAX_BATCH]},
        "load": "torch.export.load(path).module()(dense, ids)",
    }


__all__ = ["CompactPredictor", "ids_of", "export_program", "program_signature", "MAX_BATCH"]
