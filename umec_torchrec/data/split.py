"""Seeded or time-ordered train/valid/test row split (the test rows are the same rule as
``CTRData.split``; the validation rows are carved out of what would otherwise train).

Sizes: ``n_test = max(1, round(n * test_fraction))`` (at most ``n - 1``) and, when
``valid_fraction > 0``, ``n_valid = max(1, round(n * valid_fraction))`` (at most
``n - n_test - 1``), so every split asked for is non-empty and train keeps a row.

Order: one sequence of the ``n`` rows, ``torch.randperm(n)`` seeded with ``seed`` (random
split) or file order (``time_ordered``), cut into ``[train | valid | test]``. The test
rows therefore depend only on ``(n, test_fraction, seed, time_ordered)``: they are the
same rows for every ``valid_fraction``, and with ``valid_fraction = 0`` the split equals
the former two-way split exactly.
"""

from __future__ import annotations

from typing import Any, Dict, Sequence, Tuple

import numpy as np
import torch

__all__ = ["last_day_rows", "source_split", "split_counts", "split_indices", "split_rows"]


def split_counts(n: int, test_fraction: float, valid_fraction: float = 0.0) -> Tuple[int, int, int]:
    """``(n_train, n_valid, n_test)`` for ``n`` rows (rules in the module docstring).

    Raises:
        ValueError: a fraction out of range, or too few rows for the splits asked for.

    Example::

        >>> split_counts(1000, 0.23, 0.1)
        (670, 100, 230)
    """
    test_fraction, valid_fraction = float(test_fraction), float(valid_fraction)
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    if not 0.0 <= valid_fraction < 1.0:
        raise ValueError(f"valid_fraction must be in [0, 1), got {valid_fraction}")
    if valid_fraction + test_fraction >= 1.0:
        raise ValueError(f"valid_fraction + test_fraction must be < 1, got {valid_fraction} + {test_fraction}")
    need = 3 if valid_fraction > 0 else 2
    if n < need:
        what = "train/valid/test" if valid_fraction > 0 else "train/test"
        raise ValueError(f"need at least {need} rows for a {what} split, got {n}")
    n_test = min(n - 1, max(1, int(round(n * test_fraction))))
    n_valid = min(n - n_test - 1, max(1, int(round(n * valid_fraction)))) if valid_fraction > 0 else 0
    if valid_fraction > 0 and n_valid < 1:
        raise ValueError(f"{n} rows leave no validation row after {n_test} test rows and 1 train row")
    return n - n_test - n_valid, n_valid, n_test


def split_rows(n: int, test_fraction: float, valid_fraction: float = 0.0, seed: int = 0,
               time_ordered: bool = False) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(train_rows, valid_rows, test_rows)``: int64 row indices of ``n`` rows.

    Args:
        n: number of rows.
        test_fraction: share of rows in test, in (0, 1).
        valid_fraction: share of rows in valid, in [0, 1) with ``valid + test < 1``;
            0 gives an empty ``valid_rows``.
        seed: seed of the ``torch.randperm`` (ignored when ``time_ordered``).
        time_ordered: file order; the first rows train, then valid, then test.

    Returns:
        three disjoint index arrays (shapes ``[n_train]``, ``[n_valid]``, ``[n_test]``)
        covering ``0..n-1``; in increasing order when ``time_ordered``.

    Example::

        >>> tr, va, te = split_rows(10, 0.2, 0.1, time_ordered=True)
        >>> tr.tolist(), va.tolist(), te.tolist()
        ([0, 1, 2, 3, 4, 5, 6], [7], [8, 9])
    """
    n_train, n_valid, _ = split_counts(n, test_fraction, valid_fraction)
    if time_ordered:
        order = np.arange(n, dtype=np.int64)
    else:
        order = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed))).numpy()
    cut = n_train + n_valid
    return order[:n_train], order[n_train:cut], order[cut:]


def split_indices(n: int, test_fraction: float, seed: int = 0, time_ordered: bool = False) -> Tuple[np.ndarray,
                                                                                                    np.ndarray]:
    """``(train_rows, test_rows)`` of ``n`` rows: :func:`split_rows` with no validation split.

    ``time_ordered``: the first ``n - n_test`` rows train, the rest test (file order).
    Otherwise a ``torch.randperm`` with ``seed``, exactly as :meth:`CTRData.split`.
    ``n_test = max(1, round(n * test_fraction))``; both splits are non-empty for ``n >= 2``.
    """
    tr, _, te = split_rows(n, test_fraction, 0.0, seed, time_ordered)
    return tr, te


def last_day_rows(day_rows: Sequence[int]) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """TorchRec's day split (``InMemoryBinaryCriteoIterDataPipe``): every day but the last
    trains; the last day's first ``ceil(L / 2)`` rows validate, the rest test (file order).

    Raises:
        ValueError: fewer than two days, or a last day of fewer than 2 rows.

    Example::

        >>> [r.tolist() for r in last_day_rows([3, 3])]
        [[0, 1, 2], [3, 4], [5]]
    """
    rows = [int(r) for r in day_rows]
    if len(rows) < 2 or rows[-1] < 2:
        raise ValueError(f"the last-day split needs at least two days and 2 rows on the last one, got days of "
                         f"{rows} rows")
    n, last = sum(rows), rows[-1]
    cut = n - last + -(-last // 2)
    return (np.arange(n - last, dtype=np.int64), np.arange(n - last, cut, dtype=np.int64),
            np.arange(cut, n, dtype=np.int64))


def source_split(n: int, options: Any, source_info: Dict[str, Any]) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The split of ``n`` rows: :func:`last_day_rows` when the source asks for it
    (``source_info["split_rule"] == "last_day"``, with ``source_info["day_rows"]``), else
    :func:`split_rows` with the options' fractions, seed and order."""
    if source_info.get("split_rule") == "last_day":
        return last_day_rows(source_info["day_rows"])
    return split_rows(n, float(options.test_fraction), float(options.valid_fraction), int(options.split_seed),
                      bool(options.time_ordered))
