"""Seeded or time-ordered train/test row split (the same rule as ``CTRData.split``)."""

from __future__ import annotations

from typing import Tuple

import numpy as np
import torch


def split_indices(n: int, test_fraction: float, seed: int = 0, time_ordered: bool = False) -> Tuple[np.ndarray, np.ndarray]:
    """``(train_rows, test_rows)`` of ``n`` rows.

    ``time_ordered``: the first ``n - n_test`` rows train, the rest test (file order).
    Otherwise a ``torch.randperm`` with ``seed``, exactly as :meth:`CTRData.split`.
    ``n_test = max(1, round(n * test_fraction))``; both splits are non-empty for ``n >= 2``.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    if n < 2:
        raise ValueError(f"need at least 2 rows to split, got {n}")
    n_test = min(n - 1, max(1, int(round(n * test_fraction))))
    if time_ordered:
        order = np.arange(n)
    else:
        order = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed))).numpy()
    return order[: n - n_test], order[n - n_test:]
