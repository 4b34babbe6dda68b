"""Generated (planted-signal) CTR data for the tests, all from the library's one tensor-level
generator :func:`umec_torchrec.data.testing.planted_ctr`; no real data."""

from __future__ import annotations

import types

from umec_torchrec.data.dataset import CTRData
from umec_torchrec.data.testing import planted_ctr

SIZES = [40, 300, 25, 120, 9, 60]
SMALL_MODEL = {"kind": "cat", "embedding_dim": 8, "bottom": [16, 8], "top": [16, 1]}


def make_data(n: int = 2400, seed: int = 0) -> CTRData:
    """Rows of the tables :data:`SIZES` whose label depends on dense column 0 and on sparse features 0 and 1."""
    return planted_ctr(n, SIZES, n_dense=3, seed=seed, bias=-0.5)


def make_bundle(n: int = 2400, seed: int = 0) -> types.SimpleNamespace:
    """:func:`make_data` split 75 / 25 into ``train`` / ``test``."""
    train, test = make_data(n, seed).split(0.25, seed=0)
    return types.SimpleNamespace(train=train, test=test, info={})


def random_data(n: int = 256, features: int = 5, rows: int = 40, dense: int = 13, seed: int = 0) -> CTRData:
    """``features`` tables of ``rows`` rows and ``dense`` dense columns ``I0..``; the label depends on
    f0, f1 and dense column 0."""
    return planted_ctr(n, [rows] * features, n_dense=dense, seed=seed, bias=-1.0,
                       dense_names=[f"I{i}" for i in range(dense)], info={})
