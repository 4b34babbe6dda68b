"""Small generated models and data for the UMEC core tests (no real data)."""

from __future__ import annotations

import torch

from umec_torchrec.data.dataset import CTRData
from umec_torchrec.models import ModelConfig, build_model


def random_data(n: int = 256, features: int = 5, rows: int = 40, dense: int = 13, seed: int = 0) -> CTRData:
    """Generated rows with a label that depends on feature f0 and dense column 0."""
    g = torch.Generator().manual_seed(seed)
    names = [f"f{i}" for i in range(features)]
    ids = torch.randint(0, rows, (n, features), generator=g)
    d = torch.rand(n, dense, generator=g)
    logit = (ids[:, 0] % 2).float() * 2 - 1 + d[:, 0]
    labels = (torch.rand(n, generator=g) < torch.sigmoid(logit)).float()
    return CTRData(d, ids, labels, [f"I{i}" for i in range(dense)], names, [rows] * features)


def small_model(kind: str, data: CTRData, seed: int = 0, dim: int = 8, bottom=(16, 12), top=(16, 8, 1)):
    """A ``DLRMTrain`` of ``kind`` sized from ``data``."""
    torch.manual_seed(seed)
    cfg = ModelConfig(kind, list(data.feature_names), list(data.table_sizes), data.dense.shape[1], dim,
                      list(bottom) + [dim], list(top))
    return build_model(cfg), cfg
