"""Int8 tables for an export: TorchRec's inference quantization of a compact DLRM.

Row-wise int8 tables (each row with its fp16 scale and bias), fp32 dense layers, by
``torchrec.inference.modules.quantize_inference_model``. The quantized model runs on fbgemm
TBE ops, so it is stored as a state dict (``model_int8.pt``), not as a program.
"""

from __future__ import annotations

import dataclasses
from typing import Dict

import torch
from torch import nn
from torchrec.models.dlrm import DLRM
from torchrec.modules.embedding_configs import DataType

from umec_torchrec.export.compact import config_of, skeleton
from umec_torchrec.log import quiet_torchrec
from umec_torchrec.models import ModelConfig, table_configs
from umec_torchrec.umec import layout

INT8_METHOD = "torchrec.inference.modules.quantize_inference_model (row-wise int8 tables, fp32 dense)"


def quantize_int8(compact: DLRM) -> DLRM:
    """TorchRec inference quantization of ``compact`` (row-wise int8 tables, fp32 dense
    layers); ``compact`` is not modified (its tensors are shared by a shallow rebuild).

    Args:
        compact: a DLRM that carries its config (:func:`~umec_torchrec.export.compact.tag_config`).

    Example::

        q = quantize_int8(build_compact(dlrm, cfg, masks))
    """
    from torchrec.inference.modules import quantize_inference_model

    shallow = skeleton(config_of(compact))
    shallow.load_state_dict(compact.state_dict(), assign=True)
    with quiet_torchrec():
        return quantize_inference_model(shallow, quantization_dtype=torch.qint8).eval()


def int8_state_dict(q: DLRM) -> Dict[str, torch.Tensor]:
    """The quantized model's state dict without the TBE's bookkeeping buffers (``tbes.*``):
    int8 table rows (with their fp16 scale and bias) and the fp32 dense parameters."""
    return {k: v for k, v in q.state_dict().items() if ".tbes." not in k}


def int8_table_bytes(state: Dict[str, torch.Tensor]) -> int:
    """Bytes of the tables in an :func:`int8_state_dict`."""
    return int(sum(t.numel() * t.element_size() for k, t in state.items() if layout.is_table_key(k)))


def int8_tables(cfg: ModelConfig) -> nn.Module:
    """An empty int8 EmbeddingBagCollection for the tables of ``cfg`` (CPU), to load an
    :func:`int8_state_dict` into."""
    from torchrec.quant.embedding_modules import EmbeddingBagCollection as QuantEBC

    tables = [dataclasses.replace(t, data_type=DataType.INT8) for t in table_configs(cfg)]
    with quiet_torchrec():
        return QuantEBC(tables, is_weighted=False, device=torch.device("cpu"))


__all__ = ["INT8_METHOD", "quantize_int8", "int8_state_dict", "int8_table_bytes", "int8_tables"]
