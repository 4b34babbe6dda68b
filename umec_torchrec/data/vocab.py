"""Categorical value -> embedding row: a train-split vocabulary or a fixed-size hash.

* ``min_count``: per feature, the values seen at least ``min_count`` times in the training
  split get rows ``1..V`` (in sorted value order); row 0 is the out-of-vocabulary row for
  rarer values and for values unseen in train. Table size ``V + 1``. Built with
  ``np.unique(return_inverse=True)`` per column, applied with ``np.searchsorted``.
* ``hash``: row = ``splitmix64(value ^ salt(feature)) mod hash_size``; table size
  ``hash_size``; no OOV row (collisions instead).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Optional

import numpy as np

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def splitmix64(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser, elementwise on uint64 (a stable, well-mixed 64-bit hash)."""
    with np.errstate(over="ignore"):
        z = x.astype(np.uint64) + _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * _M1
        z = (z ^ (z >> np.uint64(27))) * _M2
        return z ^ (z >> np.uint64(31))


def hash_strings(values: Iterable[str]) -> np.ndarray:
    """Stable int64 ids of strings (blake2b, 8 bytes), hashing each distinct string once.

    The empty string is *not* special here; readers map missing values to ``MISSING``.
    """
    arr = np.asarray(list(values) if not isinstance(values, np.ndarray) else values, dtype=object)
    if arr.size == 0:
        return np.zeros(0, dtype=np.int64)
    uniq, inv = np.unique(arr.astype(str), return_inverse=True)
    codes = np.fromiter(
        (int.from_bytes(hashlib.blake2b(u.encode("utf-8"), digest_size=8).digest(), "little",
                        signed=True) for u in uniq),
        dtype=np.int64, count=len(uniq),
    )
    return codes[inv.reshape(-1)].reshape(arr.shape)


@dataclass
class Vocabulary:
    """Per-feature mapping from raw int64 values to embedding rows (see module docstring).

    Build with :meth:`fit` on the training split, then :meth:`encode` any split.
    """

    mode: str
    feature_names: List[str]
    min_count: int = 1
    hash_size: Optional[int] = None
    kept: List[np.ndarray] = field(default_factory=list)  # min_count: sorted kept values per feature

    @classmethod
    def fit(cls, cats: np.ndarray, feature_names: List[str], mode: str = "min_count",
            min_count: int = 1, hash_size: Optional[int] = None) -> "Vocabulary":
        """Build the vocabulary on ``cats`` (``int64 [N, F]``, the training split)."""
        voc = cls(mode=mode, feature_names=list(feature_names), min_count=int(min_count), hash_size=hash_size)
        if mode == "hash":
            if not hash_size or hash_size < 1:
                raise ValueError(f"vocab='hash' needs a positive hash_size, got {hash_size}")
            return voc
        if mode != "min_count":
            raise ValueError(f"unknown vocabulary mode {mode!r}")
        for j in range(cats.shape[1]):
            uniq, counts = np.unique(cats[:, j], return_counts=True)
            voc.kept.append(uniq[counts >= voc.min_count])
        return voc

    @property
    def table_sizes(self) -> List[int]:
        if self.mode == "hash":
            return [int(self.hash_size)] * len(self.feature_names)
        return [int(k.shape[0]) + 1 for k in self.kept]

    def encode(self, cats: np.ndarray) -> np.ndarray:
        """Rows of ``cats`` (``int64 [N, F]``) as ``int64 [N, F]`` embedding rows."""
        n, f = cats.shape
        if f != len(self.feature_names):
            raise ValueError(f"{f} categorical columns but the vocabulary has {len(self.feature_names)}")
        out = np.empty((n, f), dtype=np.int64)
        for j in range(f):  # one vectorised pass per feature
            col = cats[:, j]
            if self.mode == "hash":
                with np.errstate(over="ignore"):
                    salt = np.uint64(j) * _GOLDEN
                out[:, j] = (splitmix64(col.view(np.uint64) ^ salt) % np.uint64(self.hash_size)).astype(np.int64)
            else:
                kept = self.kept[j]
                if kept.shape[0] == 0:
                    out[:, j] = 0
                    continue
                pos = np.searchsorted(kept, col)
                pos_c = np.minimum(pos, kept.shape[0] - 1)
                found = kept[pos_c] == col
                out[:, j] = np.where(found, pos_c + 1, 0)
        return out

    def describe(self) -> Dict[str, Any]:
        """JSON-safe summary for ``info``."""
        d: Dict[str, Any] = {"mode": self.mode}
        if self.mode == "hash":
            d["hash_size"] = int(self.hash_size)
        else:
            d["min_count"] = self.min_count
            d["oov_row"] = 0
        return d
