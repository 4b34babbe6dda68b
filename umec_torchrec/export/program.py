"""The serving entry point of a (compact) DLRM and its ``torch.export`` program.

A KeyedJaggedTensor input cannot be exported with a dynamic batch without TorchRec's IR
helpers (not in the wheel), because splitting its values per key needs data-dependent sizes.
The program takes plain tensors instead, in one of two forms:

* ``ids`` (:class:`CompactPredictor`, one id per feature and row):
  ``(dense float32 [B, n_dense], ids int64 [B, F]) -> logits float32 [B]``, ``ids[:, k]``
  the row of feature ``k`` (the model's feature order; for a compact model the kept
  features, listed in ``manifest.json``);
* ``jagged`` (:class:`JaggedPredictor`, multi-hot fields):
  ``(dense float32 [B, n_dense], values int64 [N], lengths int64 [F, B]) -> logits [B]``,
  the KJT layout: ``values`` key-major, ``lengths[k, b]`` the bag size of feature ``k`` in
  row ``b`` (:func:`jagged_of` makes them from a KJT; offsets: ``lengths = diff(offsets)``).
  Each bag is pooled as its table's config says (SUM or MEAN; an empty bag gives 0).

The batch dimension (and ``N``) is dynamic. Dense inputs are already transformed, as in
:class:`CTRData`. With one id per row, a SUM / MEAN bag is that id's row, so ``ids`` is the
fast path: plain row lookups in the model's own tables (fp32), or in
:class:`~umec_torchrec.export.served_tables.ServedTables` (quantized tables). The MLPs' hidden
widths are zero-padded to a multiple of the SIMD width
(:class:`~umec_torchrec.export.aligned.AlignedMLP`), which changes no output, so the
program's logits equal the module's. The program holds only aten ops: loading it needs
``torch`` alone (no TorchRec, no ``torch.distributed`` process group).
"""

from __future__ import annotations

from typing import List, Optional, Tuple

import torch
from torch import nn
from torch.nn import functional as F
from torchrec.models.dlrm import DLRM
from torchrec.modules.embedding_configs import PoolingType
from torchrec.modules.mlp import Perceptron
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from umec_torchrec.export.aligned import AlignedMLP
from umec_torchrec.export.served_tables import ServedTables, TableData
from umec_torchrec.models import ConcatInteractionArch
from umec_torchrec.umec import layout

MAX_BATCH = 1 << 24
MAX_VALUES = 1 << 31
DEFAULT_ALIGN = 16
INPUTS = ("ids", "jagged")
"""The program's input forms (module docstring)."""


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
        dlrm: any DLRM of our kinds.
        align: hidden-width alignment of the MLPs (16 = the AVX-512 float vector; 1 = none).
        served: the tables as served (e.g. quantized, :func:`served_tables`); ``None``: the
            model's own fp32 tables, looked up with ``F.embedding`` (not copied).

    Example::

        pred = CompactPredictor(compact).eval()
        logits = pred(batch.dense_features, ids_of(batch.sparse_features, pred.feature_names))
    """

    def __init__(self, dlrm: DLRM, align: int = DEFAULT_ALIGN, served: Optional[ServedTables] = None) -> None:
        super().__init__()
        bad = [c.name for c in layout.embedding_configs(dlrm) if c.pooling not in (PoolingType.SUM, PoolingType.MEAN)]
        if bad:
            raise NotImplementedError(f"serving program: tables {bad} are neither SUM- nor MEAN-pooled")
        self.feature_names: List[str] = layout.feature_names(dlrm)
        if served is not None and served.feature_names != self.feature_names:
            raise ValueError(f"served tables hold features {served.feature_names}, the model {self.feature_names}")
        self.align = int(align)
        self.served = served
        self.tables = nn.ParameterList(layout.table_weights(dlrm) if served is None else [])
        self.table_of_feature = [i for i, c in enumerate(layout.embedding_configs(dlrm))
                                 for _ in (c.feature_names or [c.name])]
        self.rows: List[int] = [int(c.num_embeddings) for c in layout.embedding_configs(dlrm)
                                for _ in (c.feature_names or [c.name])]
        bottom, top = mlp_chains(dlrm)
        self.bottom = AlignedMLP([lin for lin, _ in bottom], [r for _, r in bottom], align)
        self.top = AlignedMLP([lin for lin, _ in top], [r for _, r in top], align)
        self.inter_arch = layout.interaction(dlrm)
        self.concat = isinstance(self.inter_arch, ConcatInteractionArch)

    def forward(self, dense: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        if self.served is not None:
            return self.head(dense, self.served.lookup(ids))
        d = self.bottom(dense)
        ids_t = ids.t()  # [F, B]: row k holds feature k's ids
        rows = [F.embedding(ids_t[k], self.tables[t]) for k, t in enumerate(self.table_of_feature)]
        if self.concat:
            x = torch.cat([d] + rows, dim=1)
        else:
            x = self.inter_arch(dense_features=d, sparse_features=torch.stack(rows, dim=1))
        return self.top(x).squeeze(-1)

    def head(self, dense: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
        """Logits ``[B]`` from the dense input and the pooled embeddings ``[B, F, D]``."""
        d = self.bottom(dense)
        if self.concat:
            x = torch.cat([d, pooled.flatten(1)], dim=1)
        else:
            x = self.inter_arch(dense_features=d, sparse_features=pooled)
        return self.top(x).squeeze(-1)


class JaggedPredictor(CompactPredictor):
    """``forward(dense [B, n_dense], values [N], lengths [F, B]) -> logits [B]``: the serving
    form of a DLRM with multi-hot fields (module docstring); each bag pooled as its table says.

    Args:
        dlrm / align: as :class:`CompactPredictor`.
        served: the tables as served; ``None``: fp32 copies of the model's tables
            (:func:`served_tables`).

    Example::

        pred = JaggedPredictor(compact).eval()
        logits = pred(dense, *jagged_of(kjt, pred.feature_names))
    """

    def __init__(self, dlrm: DLRM, align: int = DEFAULT_ALIGN, served: Optional[ServedTables] = None) -> None:
        super().__init__(dlrm, align, served if served is not None else served_tables(dlrm))

    def forward(self, dense: torch.Tensor, values: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        assert self.served is not None
        return self.head(dense, self.served.pool(values, lengths))


def served_tables(dlrm: DLRM, tables: Optional[List[TableData]] = None) -> ServedTables:
    """The :class:`ServedTables` of ``dlrm``: ``tables`` (e.g. from
    :func:`~umec_torchrec.export.quantize.quantize_tables`), or the model's fp32 tables."""
    if tables is None:
        tables = [TableData.fp32(c.name, c.feature_names or [c.name], w, c.pooling.name)
                  for c, w in zip(layout.embedding_configs(dlrm), layout.table_weights(dlrm))]
    return ServedTables(tables)


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


def jagged_of(kjt: KeyedJaggedTensor, feature_names: List[str]) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(values int64 [N], lengths int64 [F, B])`` of ``feature_names`` (in that order) from a
    KJT of any bag sizes: the :class:`JaggedPredictor` inputs (extra keys are ignored).

    Example::

        logits = load_program("exports/c")(dense, *jagged_of(kjt, manifest["features"]["kept"]))
    """
    keys = kjt.keys()
    missing = [f for f in feature_names if f not in keys]
    if missing:
        raise ValueError(f"the KJT lacks features {missing[:5]}")
    sub = kjt.permute([keys.index(f) for f in feature_names])
    return sub.values().long(), sub.lengths().long().view(len(feature_names), sub.stride())


def _example_inputs(pred: nn.Module, n_dense: int, b: int, jagged: bool) -> Tuple[torch.Tensor, ...]:
    dense = torch.zeros(b, n_dense)
    if not jagged:
        return dense, torch.stack([torch.arange(b) % r for r in pred.rows], dim=1)
    lengths = (torch.arange(len(pred.rows) * b) % 3).view(len(pred.rows), b)  # bags of 0, 1 and 2 ids
    rows = torch.tensor(pred.rows).repeat_interleave(lengths.sum(1))
    return dense, torch.arange(int(lengths.sum())) % rows, lengths


def export_program(
    model: "DLRM | nn.Module", n_dense: int, example_batch: int = 4, align: int = DEFAULT_ALIGN,
    inputs: str = "ids", served: Optional[ServedTables] = None,
) -> torch.export.ExportedProgram:
    """``torch.export`` of a predictor (:class:`CompactPredictor`, :class:`JaggedPredictor`, or
    another with ``.rows`` and the ``inputs`` form's signature), or of one built over the DLRM
    ``model`` with hidden widths aligned to ``align``, its ``inputs`` form and ``served`` tables,
    with a dynamic batch dimension (and a dynamic number of ids).

    Example::

        prog = export_program(compact, cfg.dense_in_features, inputs="jagged")
        logits = prog.module()(dense, values, lengths)
    """
    if inputs not in INPUTS:
        raise ValueError(f"inputs must be one of {INPUTS}, got {inputs!r}")
    if isinstance(model, DLRM):
        cls = JaggedPredictor if inputs == "jagged" else CompactPredictor
        pred: nn.Module = cls(model, align=align, served=served)
    else:  # a predictor (with .rows: each feature's table rows)
        pred = model
    pred.eval()
    jagged = isinstance(pred, JaggedPredictor) or inputs == "jagged"
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    if jagged:
        shapes = {"dense": {0: batch}, "values": {0: torch.export.Dim("values", min=0, max=MAX_VALUES)},
                  "lengths": {1: batch}}
    else:
        shapes = {"dense": {0: batch}, "ids": {0: batch}}
    with torch.no_grad():
        return torch.export.export(pred, _example_inputs(pred, n_dense, example_batch, jagged),
                                   dynamic_shapes=shapes, strict=False)


def program_signature(n_dense: int, pred: CompactPredictor) -> dict:
    """The program's input/output description recorded in ``manifest.json``, with its width
    alignment and the MLP widths as served."""
    nf = len(pred.feature_names)
    if isinstance(pred, JaggedPredictor):
        form = {
            "form": "jagged",
            "inputs": {
                "dense": f"float32 [B, {n_dense}]",
                "values": "int64 [N]: the ids of every bag, key-major (feature 0's rows 0..B-1, then feature 1's...), "
                          "features in 'features.kept' order",
                "lengths": f"int64 [{nf}, B]: bag sizes (N = lengths.sum(); from offsets: lengths = diff(offsets))",
            },
            "pooling": dict(pred.served.poolings) if pred.served is not None else {},
            "dynamic": {"batch": [1, MAX_BATCH], "values": [0, MAX_VALUES]},
            "load": "torch.export.load(path).module()(dense, values, lengths)",
        }
    else:
        form = {
            "form": "ids",
            "inputs": {
                "dense": f"float32 [B, {n_dense}]",
                "ids": f"int64 [B, {nf}]: one row id per kept feature, in 'features.kept' order",
            },
            "dynamic": {"batch": [1, MAX_BATCH]},
            "load": "torch.export.load(path).module()(dense, ids)",
        }
    return {
        **form,
        "output": "float32 [B] logits",
        "align": pred.align,
        "served_widths": {"bottom": pred.bottom.widths, "top": pred.top.widths,
                          "note": "hidden widths zero-padded to a multiple of align (same outputs)"},
    }


__all__ = ["CompactPredictor", "JaggedPredictor", "served_tables", "mlp_chains", "ids_of", "jagged_of",
           "export_program", "program_signature", "MAX_BATCH", "MAX_VALUES", "DEFAULT_ALIGN", "INPUTS"]
