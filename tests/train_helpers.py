"""Generated (synthetic, planted-signal) CTR data for the training tests; no real data."""

from __future__ import annotations

import types

import torch

from umec_torchrec.data.dataset import CTRData

SIZES = [40, 300, 25, 120, 9, 60]
SMALL_MODEL = {"kind": "cat", "embedding_dim": 8, "bottom": [16, 8], "top": [16, 1]}


def make_data(n: int = 2400, seed: int = 0) -> CTRData:
    """Rows whose label depends on dense column 0 and on sparse features 0 and 1."""
    g = torch.Generator().manual_seed(seed)
    sparse = torch.stack([torch.randint(0, s, (n,), generator=g) for s in SIZES], 1)
    dense = torch.randn(n, 3, generator=g)
    logit = 1.5 * dense[:, 0] + 2.0 * (sparse[:, 0] % 2).float() - (sparse[:, 1] % 3 == 0).float() * 1.5 - 0.5
    labels = (torch.rand(n, generator=g) < torch.sigmoid(logit)).float()
    return CTRData(dense, sparse, labels, ["d0", "d1", "d2"], [f"f{i}" for i in range(len(SIZES))], list(SIZES),
                   {"source": "generated"})


def make_bundle(n: int = 2400, seed: int = 0) -> types.SimpleNamespace:
    train, test = make_data(n, seed).split(0.25, seed=0)
    return types.SimpleNamespace(train=train, test=test, info={})
