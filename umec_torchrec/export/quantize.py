"""Quantized tables for an export: TorchRec's inference quantization of a compact DLRM.

Per-table dtypes (fp32, fp16, row-wise int8 or int4: each row with its fp16 scale and bias),
fp32 dense layers, by ``torchrec.inference.modules.quantize_inference_model(
per_table_weight_dtype=...)``. The quantized module runs on fbgemm TBE ops and cannot be
traced by ``torch.export`` (fbgemm's TBE holds a ``torch.classes.fbgemm.AtomicCounter``
without a fake class; torch 2.13, fbgemm-gpu-cpu 1.8.0), so :func:`quantize_tables` also
returns each table's quantized rows as :class:`~umec_torchrec.export.served_tables.TableData`
(the same codes, scales and biases), which the serving program dequantizes and pools in
aten ops. With uniform int8 tables the quantized model's state dict is also saved
(``model_int8.pt``, :func:`int8_state_dict`).
"""

from __future__ import annotations

import dataclasses
from typing import Dict, List, Mapping, Optional, Tuple

import torch
from torch import nn
from torchrec.models.dlrm import DLRM
from torchrec.modules.embedding_configs import DataType

from umec_torchrec.export.compact import config_of, skeleton, table_poolings
from umec_torchrec.export.served_tables import TableData
from umec_torchrec.log import quiet_torchrec
from umec_torchrec.models import ModelConfig, table_configs
from umec_torchrec.umec import layout

INT8_METHOD = "torchrec.inference.modules.quantize_inference_model (row-wise int8 tables, fp32 dense)"
QUANT_METHOD = ("torchrec.inference.modules.quantize_inference_model(per_table_weight_dtype=...): row-wise "
                "int8/int4 codes with fp16 scale and bias per row, or fp16 rows; fp32 dense layers")
FALLBACK = ("TorchRec's QuantEmbeddingBagCollection is not in the program: torch.export cannot trace fbgemm's IntNBit "
            "TBE (its torch.classes.fbgemm.AtomicCounter has no fake class; torch 2.13, fbgemm-gpu-cpu 1.8.0), and "
            "fbgemm ops would make the program need fbgemm to load. The program stores TorchRec's quantized rows "
            "(the same codes, fp16 scale and bias per row) and dequantizes and pools them in aten ops "
            "(umec_torchrec.export.served_tables); dense layers stay fp32.")
"""What the program does instead of TorchRec's quantized module, and why (the manifest says it)."""
TORCH_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "int8": torch.qint8, "int4": torch.quint4x2}
"""The ``per_table_weight_dtype`` value of each table dtype name."""


def _rebuilt(compact: DLRM) -> DLRM:
    """A shallow rebuild of ``compact`` with fresh table configs (the quantization rewrites
    the configs' data types in place); tensors are shared."""
    shallow = skeleton(config_of(compact), table_poolings(compact))
    shallow.load_state_dict(compact.state_dict(), assign=True)
    return shallow


def quantize_tables(compact: nn.Module, dtypes: Mapping[str, str],
                    rebuilt: Optional[nn.Module] = None) -> Tuple[nn.Module, List[TableData]]:
    """TorchRec inference quantization of ``compact`` with a dtype per table, and every
    table's stored rows for the serving program; ``compact`` is not modified.

    Args:
        compact: a DLRM that carries its config (:func:`~umec_torchrec.export.compact.tag_config`),
            or another model with ``sparse_arch.embedding_bag_collection`` (``SimpleDeepFMNN``).
        dtypes: ``{table: "fp32" | "fp16" | "int8" | "int4"}`` for every table of ``compact``.
        rebuilt: a copy of ``compact`` with its own table configs, to be quantized in place
            (default: rebuilt from the DLRM's config).

    Returns:
        the quantized DLRM (TorchRec's ``QuantEmbeddingBagCollection`` on fbgemm ops), and one
        :class:`TableData` per table in model order (fp32 tables: the compact's own weights).

    Example::

        q, tables = quantize_tables(compact, {"t_C1": "int4", "t_C2": "int8"})
    """
    from torchrec.inference.modules import quantize_inference_model

    configs = layout.embedding_configs(compact)
    names = [c.name for c in configs]
    unknown = sorted(set(dtypes) - set(names))
    missing = [t for t in names if t not in dtypes]
    if unknown or missing:
        raise ValueError(f"table dtypes: unknown tables {unknown}, tables without a dtype {missing}")
    per_table = {t: TORCH_DTYPES[dtypes[t]] for t in names}
    with quiet_torchrec():
        q = quantize_inference_model(rebuilt if rebuilt is not None else _rebuilt(compact),
                                     per_table_weight_dtype=per_table, quantization_dtype=torch.qint8).eval()
    weights = dict(zip(names, layout.table_weights(compact)))
    rows: Dict[str, TableData] = {}
    qebc = layout.embedding_bag_collection(q)
    for tables, tbe in zip(qebc._key_to_tables.values(), qebc._emb_modules):
        for c, (w, sb) in zip(tables, tbe.split_embedding_weights()):
            rows[c.name] = _table_data(c, dtypes[c.name], w, sb, weights[c.name])
    return q, [rows[t] for t in names]


def _table_data(c, dtype: str, w: torch.Tensor, sb, weight: torch.Tensor) -> TableData:
    """One TBE table's rows (``w uint8 [R, row bytes]``, ``sb uint8 [R, 4]`` = fp16 scale, bias)."""
    feats, pooling, d = list(c.feature_names or [c.name]), c.pooling.name, int(c.embedding_dim)
    if dtype == "fp32":
        return TableData.fp32(c.name, feats, weight, pooling)
    if dtype == "fp16":
        return TableData(c.name, feats, "fp16", pooling, w[:, : 2 * d].contiguous().view(torch.float16), d)
    qs = sb[:, :4].contiguous().view(torch.float16)
    width = d if dtype == "int8" else (d + 1) // 2
    return TableData(c.name, feats, dtype, pooling, w[:, :width].contiguous(), d,
                     scale=qs[:, 0].contiguous(), bias=qs[:, 1].contiguous())


def quantize_int8(compact: DLRM) -> DLRM:
    """TorchRec inference quantization of ``compact`` (row-wise int8 tables, fp32 dense
    layers); ``compact`` is not modified (its tensors are shared by a shallow rebuild).

    Args:
        compact: a DLRM that carries its config (:func:`~umec_torchrec.export.compact.tag_config`).

    Example::

        q = quantize_int8(build_compact(dlrm, cfg, masks))
    """
    from torchrec.inference.modules import quantize_inference_model

    with quiet_torchrec():
        return quantize_inference_model(_rebuilt(compact), quantization_dtype=torch.qint8).eval()


def int8_state_dict(q: DLRM) -> Dict[str, torch.Tensor]:
    """The quantized model's state dict without the TBE's bookkeeping buffers (``tbes.*``):
    int8 table rows (with their fp16 scale and bias) and the fp32 dense parameters."""
    return {k: v for k, v in q.state_dict().items() if ".tbes." not in k}


def int8_table_bytes(state: Dict[str, torch.Tensor]) -> int:
    """Bytes of the tables in an :func:`int8_state_dict`."""
    return int(sum(t.numel() * t.element_size() for k, t in state.items() if layout.is_table_key(k)))


def int8_tables(cfg: ModelConfig, pooling: Optional[Mapping[str, str]] = None) -> nn.Module:
    """An empty int8 EmbeddingBagCollection for the tables of ``cfg`` (CPU; ``pooling``:
    ``{table: "SUM" | "MEAN"}`` where not SUM), to load an :func:`int8_state_dict` into."""
    from torchrec.modules.embedding_configs import PoolingType
    from torchrec.quant.embedding_modules import EmbeddingBagCollection as QuantEBC

    pooling = pooling or {}
    tables = [dataclasses.replace(t, data_type=DataType.INT8, pooling=PoolingType[pooling.get(t.name, t.pooling.name)])
              for t in table_configs(cfg)]
    with quiet_torchrec():
        return QuantEBC(tables, is_weighted=False, device=torch.device("cpu"))


__all__ = ["INT8_METHOD", "QUANT_METHOD", "FALLBACK", "TORCH_DTYPES", "quantize_tables", "quantize_int8",
           "int8_state_dict", "int8_table_bytes", "int8_tables"]
