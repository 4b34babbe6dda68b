""":class:`JaggedIds`: the ids of one multi-hot feature, several per row (values + offsets),
and the vectorised row operations the readers, the encoder, a prepared directory and
batching need (take rows, slice, concatenate), with no Python loop over rows."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

__all__ = ["JaggedIds"]


@dataclass
class JaggedIds:
    """Several ids per row of one feature: row ``i``'s ids are ``values[offsets[i]:offsets[i + 1]]``.

    Args:
        values: ``[nnz]`` ids (``int64`` raw values in a reader's output; embedding rows
            after encoding, in any integer dtype; a memory map in a prepared directory).
        offsets: ``int64 [N + 1]``, non-decreasing, ``offsets[0] == 0`` for a table of its
            own (a view made by :meth:`slice` may start elsewhere; ``values`` is then the
            whole array).

    Example::

        j = JaggedIds.from_lengths(np.array([5, 6, 7]), np.array([2, 0, 1]))
        j.take(np.array([2, 0]))        # values [7, 5, 6], lengths [1, 2]
    """

    values: np.ndarray
    offsets: np.ndarray

    def __post_init__(self) -> None:
        if self.offsets.ndim != 1 or self.offsets.shape[0] < 1:
            raise ValueError(f"offsets must be [N + 1], got shape {tuple(self.offsets.shape)}")
        if self.values.ndim != 1:
            raise ValueError(f"values must be [nnz], got shape {tuple(self.values.shape)}")

    @classmethod
    def from_lengths(cls, values: np.ndarray, lengths: np.ndarray) -> "JaggedIds":
        """The rows of ``lengths`` (``[N]``) consecutive ids of ``values`` each."""
        off = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(lengths, out=off[1:])
        if int(off[-1]) != int(values.shape[0]):
            raise ValueError(f"lengths sum to {int(off[-1])} but there are {values.shape[0]} values")
        return cls(np.asarray(values), off)

    def __len__(self) -> int:
        return int(self.offsets.shape[0]) - 1

    @property
    def lengths(self) -> np.ndarray:
        """``int64 [N]`` ids per row."""
        return np.diff(np.asarray(self.offsets, dtype=np.int64))

    @property
    def nnz(self) -> int:
        return int(self.offsets[-1]) - int(self.offsets[0])

    def flat(self) -> np.ndarray:
        """Every id of every row, in row order (``[nnz]``)."""
        return np.asarray(self.values[int(self.offsets[0]):int(self.offsets[-1])])

    def mean_length(self) -> float:
        """Mean ids per row (0.0 without rows)."""
        return float(self.nnz / len(self)) if len(self) else 0.0

    def take(self, rows: Any) -> "JaggedIds":
        """Rows ``rows`` (an int array, a LongTensor or a bool mask), in that order; only their
        ids are read (one gather)."""
        if hasattr(rows, "numpy"):
            rows = rows.numpy()
        rows = np.asarray(rows)
        if rows.dtype == np.bool_:
            rows = np.flatnonzero(rows)
        rows = rows.astype(np.int64, copy=False)
        starts = np.asarray(self.offsets[rows], dtype=np.int64)
        lens = np.asarray(self.offsets[rows + 1], dtype=np.int64) - starts
        off = np.zeros(rows.shape[0] + 1, dtype=np.int64)
        np.cumsum(lens, out=off[1:])
        idx = np.repeat(starts - off[:-1], lens) + np.arange(int(off[-1]), dtype=np.int64)
        return JaggedIds(np.asarray(self.values[idx]), off)

    def slice(self, a: int, b: int) -> "JaggedIds":
        """Rows ``a..b-1`` as a table of its own (values copied out of a map only for those rows)."""
        lo, hi = int(self.offsets[a]), int(self.offsets[b])
        return JaggedIds(np.asarray(self.values[lo:hi]), np.asarray(self.offsets[a:b + 1], dtype=np.int64) - lo)

    def with_values(self, values: np.ndarray) -> "JaggedIds":
        """The same rows with new ``values`` (``[nnz]``, e.g. encoded ids)."""
        return JaggedIds(values, np.asarray(self.offsets, dtype=np.int64) - int(self.offsets[0]))

    @staticmethod
    def concat(parts: Sequence["JaggedIds"]) -> "JaggedIds":
        """The rows of ``parts`` one after the other."""
        if not parts:
            return JaggedIds(np.zeros(0, dtype=np.int64), np.zeros(1, dtype=np.int64))
        lens = np.concatenate([p.lengths for p in parts])
        return JaggedIds.from_lengths(np.concatenate([p.flat() for p in parts]), lens)
