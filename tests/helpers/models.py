"""Small generated models for the UMEC core tests (no real data)."""

from __future__ import annotations

import torch

from umec_torchrec.data.dataset import CTRData
from umec_torchrec.models import ModelConfig, build_model


def small_model(kind: str, data: CTRData, seed: int = 0, dim: int = 8, bottom=(16, 12), top=(16, 8, 1)):
    """A ``DLRMTrain`` of ``kind`` sized from ``data``."""
    torch.manual_seed(seed)
    cfg = ModelConfig(kind, list(data.feature_names), list(data.table_sizes), data.dense.shape[1], dim,
                      list(bottom) + [dim], list(top))
    return build_model(cfg), cfg
