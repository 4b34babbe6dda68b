"""The serving entry point of a (compact) DLRM and its ``torch.export`` program.

A KeyedJaggedTensor input cannot be exported with a dynamic batch without TorchRec's IR
helpers (not in the wheel), because splitting its values per key needs data-dependent sizes.
Our data has exactly one id per feature and row, so the program takes plain tensors:

* ``dense``: ``float32 [B, n_dense]`` (already transformed, as in :class:`CTRData`);
* ``ids``: ``int64 [B, F]``, the row of each of the model's features, in the model's
  feature order (for a compact model: the kept features, listed in ``manifest.json``);

and returns ``float32 [B]`` logits. The batch dimension is dynamic. Each feature's pooled
embedding is the row of its id in the model's table, exactly what the EmbeddingBagCollection
computes for a one-id KJT, and the MLPs' hidden widths are zero-padded to a multiple of the
SIMD width (:class:`~umec_torchrec.export.aligned.AlignedMLP`), which changes no output, so
the program's logits equal the module's. The program holds only aten ops: loading it needs
``torch`` alone (no TorchRec, no ``torch.distributed`` process group).
"""

from __future__ import annotations

from typing import List, Tuple

import torch
from torch import nn
from torch.nn import functional as F
from torchrec.models.dlrm import DLRM
from torchrec.modules.embedding_configs import PoolingType
from torchrec.modules.mlp import Perceptron
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from umec_torchrec.export.aligned import AlignedMLP
from umec_torchrec.models import ConcatInteractionArch
from umec_torchrec.umec import layout

MAX_BATCH = 1 << 24
DEFAULT_ALIGN = 16


def _relu_flag(p: Perceptron) -> bool:
    act = layout.perceptron_activation(p)
    if act in (torch.relu, F.relu) or isinstance(act, nn.ReLU):
        return True
    if isinstance(act, nn.Identity):
        return False
    raise NotImplementedError(f"serving program: unsupported MLP activation {act!r} (ReLU or identity only)")


def mlp_chains(dlrm: DLRM) -> Tuple[List[Tuple[nn.Linear, bool]], List[Tuple[nn.Linear, bool]]]:
    """The bottom and top MLPs of ``dlrm`` as ``(Linear, relu after it)`` chains."""
    bottom = [(layout.perceptron_linear(p), _relu_flag(p)) for p in layout.bottom_perceptrons(dlrm)]
    top = [(layout.perceptron_linear(p), _relu_flag(p)) for p in layout.top_perceptrons(dlrm)]
    return bottom, top + [(layout.logit_linear(dlrm), False)]


class CompactPredictor(nn.Module):
    """``forward(dense [B, n_dense], ids [B, F]) -> logits [B]``: the serving form of a DLRM.

    It computes exactly the DLRM's logits for one id per feature and row, with the serving
    cost in mind:

    * each feature's pooled embedding is a plain row lookup (``F.embedding``) in the model's
      own table (shared, not copied): a SUM/MEAN bag of one id is that row;
    * the MLPs are :class:`~umec_torchrec.export.aligned.AlignedMLP` copies whose hidden
      widths are zero-padded to a multiple of ``align`` (same function, faster CPU GEMMs),
      with ReLU in place;
    * the ``cat`` interaction is one concatenation ``[d | e_1 | ... | e_F]``; ``dot`` and
      ``dcn`` call the model's own interaction module on the stacked ``[B, F, D]`` embeddings.

    Args:
        dlrm: any DLRM of our kinds (one table per feature).
        align: hidden-width alignment of the MLPs (16 = the AVX-512 float vector; 1 = none).

    Example::

        pred = CompactPredictor(compact).eval()
        logits = pred(batch.dense_features, ids_of(batch.sparse_features, pred.feature_names))
    """

    def __init__(self, dlrm: DLRM, align: int = DEFAULT_ALIGN) -> None:
        super().__init__()
        bad = [c.name for c in layout.embedding_configs(dlrm) if c.pooling not in (PoolingType.SUM, PoolingType.MEAN)]
        if bad:
            raise NotImplementedError(f"serving program: tables {bad} are neither SUM- nor MEAN-pooled")
        self.feature_names: List[str] = layout.feature_names(dlrm)
        self.align = int(align)
        self.tables = nn.ParameterList(layout.table_weights(dlrm))
        bottom, top = mlp_chains(dlrm)
        self.bottom = AlignedMLP([lin for lin, _ in bottom], [r for _, r in bottom], align)
        self.top = AlignedMLP([lin for lin, _ in top], [r for _, r in top], align)
        self.inter_arch = layout.interaction(dlrm)
        self.concat = isinstance(self.inter_arch, ConcatInteractionArch)

    def forward(self, dense: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        d = self.bottom(dense)
        ids_t = ids.t()  # [F, B]: row k holds feature k's ids
        rows = [F.embedding(ids_t[k], w) for k, w in enumerate(self.tables)]
        if self.concat:
            x = torch.cat([d] + rows, dim=1)
        else:
            x = self.inter_arch(dense_features=d, sparse_features=torch.stack(rows, dim=1))
        return self.top(x).squeeze(-1)


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


def export_program(
    model: "DLRM | CompactPredictor", n_dense: int, example_batch: int = 4, align: int = DEFAULT_ALIGN
) -> torch.export.ExportedProgram:
    """``torch.export`` of a :class:`CompactPredictor` (or of one built over the DLRM ``model``
    with hidden widths aligned to ``align``) with a dynamic batch dimension."""
    pred = (model if isinstance(model, CompactPredictor) else CompactPredictor(model, align=align)).eval()
    ids = torch.stack([torch.arange(example_batch) % t.shape[0] for t in pred.tables], dim=1)
    dense = torch.zeros(example_batch, n_dense)
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    with torch.no_grad():
        return torch.export.export(
            pred, (dense, ids), dynamic_shapes={"dense": {0: batch}, "ids": {0: batch}}, strict=False
        )


def program_signature(n_dense: int, pred: CompactPredictor) -> dict:
    """The program's input/output description recorded in ``manifest.json``, with its width
    alignment and the MLP widths as served."""
    feature_names = pred.feature_names
    return {
        "inputs": {
            "dense": f"float32 [B, {n_dense}]",
            "ids": f"int64 [B, {len(feature_names)}]: one row id per kept feature, in 'features.kept' order",
        },
        "output": "float32 [B] logits",
        "dynamic": {"batch": [1, MAX_BATCH]},
        "load": "torch.export.load(path).module()(dense, ids)",
        "align": pred.align,
        "served_widths": {"bottom": pred.bottom.widths, "top": pred.top.widths,
                          "note": "hidden widths zero-padded to a multiple of align (same outputs)"},
    }


__all__ = ["CompactPredictor", "mlp_chains", "ids_of", "export_program", "program_signature", "MAX_BATCH",
           "DEFAULT_ALIGN"]
