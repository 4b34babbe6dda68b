"""Categorical value -> embedding row: a train-split vocabulary or a fixed-size hash.

* ``min_count``: per feature, the values seen at least ``min_count`` times in the training
  split get rows ``1..V`` (in sorted value order); row 0 is the out-of-vocabulary row for
  rarer values and for values unseen in train. Table size ``V + 1``. Built with
  ``np.unique(return_inverse=True)`` per column, applied with ``np.searchsorted``.
* ``hash``: row = ``splitmix64(value ^ salt(feature)) mod hash_size``; table size
  ``hash_size``; no OOV row (collisions instead).
* ``identity``: row = value, table sizes given (TorchRec's ``num_embeddings_per_feature``,
  with ids already ``mod`` them); a value outside ``[0, size)`` is an error.

Raw values are int64: a Criteo hex id is ``int(hex, 16)`` (two's complement above
``2**63 - 1``), a libsvm index is the index itself, a csv value is :func:`hash_strings`
of its text; a missing value is ``raw.MISSING``. :meth:`Vocabulary.save` writes the
vocabulary as one ``.npz`` file (``meta``: JSON; ``kept_<j>``: the sorted kept values of
feature ``j``), :meth:`Vocabulary.load` reads it back; :class:`ValueCounts` counts values
chunk by chunk, so a vocabulary is fitted without holding the training rows.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Optional, Tuple

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
    sizes: Optional[List[int]] = None  # identity: the table sizes

    @classmethod
    def fit(cls, cats: np.ndarray, feature_names: List[str], mode: str = "min_count",
            min_count: int = 1, hash_size: Optional[int] = None, sizes: Optional[List[int]] = None) -> "Vocabulary":
        """Build the vocabulary on ``cats`` (``int64 [N, F]``, the training split); ``sizes``:
        the table sizes of ``mode="identity"``."""
        voc = cls(mode=mode, feature_names=list(feature_names), min_count=int(min_count), hash_size=hash_size)
        if mode == "identity":
            if sizes is None or len(sizes) != len(voc.feature_names):
                raise ValueError("vocab='identity' needs one table size per feature (criteo-npy's "
                                 "num_embeddings_per_feature)")
            voc.sizes = [int(x) for x in sizes]
            return voc
        if mode == "hash":
            if not hash_size or hash_size < 1:
                raise ValueError(f"vocab='hash' needs a positive hash_size, got {hash_size}")
            return voc
        if mode != "min_count":
            raise ValueError(f"unknown vocabulary mode {mode!r}")
        return cls.fit_columns([cats[:, j] for j in range(cats.shape[1])], feature_names, min_count=min_count)

    @classmethod
    def fit_columns(cls, columns: List[np.ndarray], feature_names: List[str], min_count: int = 1) -> "Vocabulary":
        """The ``min_count`` vocabulary of one array of training values per feature (any
        length each: a multi-hot feature gives every id of every training row)."""
        voc = cls(mode="min_count", feature_names=list(feature_names), min_count=int(min_count))
        for col in columns:
            uniq, counts = np.unique(np.asarray(col, dtype=np.int64), return_counts=True)
            voc.kept.append(uniq[counts >= voc.min_count])
        return voc

    @property
    def table_sizes(self) -> List[int]:
        if self.mode == "identity":
            return list(self.sizes or [])
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
            out[:, j] = self.encode_column(j, cats[:, j])
        return out

    def encode_column(self, j: int, col: np.ndarray) -> np.ndarray:
        """Embedding rows (``int64``) of the raw values ``col`` of feature ``j`` (index or name).

        Example::

            rows = voc.encode_column("C3", np.array([int("68fd1e64", 16)], dtype=np.int64))
        """
        if isinstance(j, str):
            j = self.feature_names.index(j)
        col = np.asarray(col, dtype=np.int64)
        if self.mode == "identity":
            bad = (col < 0) | (col >= self.sizes[j])
            if bad.any():
                raise ValueError(f"feature {self.feature_names[j]}: id {int(col[bad][0])} is outside its table of "
                                 f"{self.sizes[j]} rows (vocab='identity')")
            return col.copy()
        if self.mode == "hash":
            with np.errstate(over="ignore"):
                salt = np.uint64(j) * _GOLDEN
            return (splitmix64(col.view(np.uint64) ^ salt) % np.uint64(self.hash_size)).astype(np.int64)
        kept = self.kept[j]
        if kept.shape[0] == 0:
            return np.zeros(col.shape, dtype=np.int64)
        pos = np.searchsorted(kept, col)
        pos_c = np.minimum(pos, kept.shape[0] - 1)
        found = kept[pos_c] == col
        return np.where(found, pos_c + 1, 0).astype(np.int64)

    @classmethod
    def from_counts(cls, counts: "ValueCounts", feature_names: List[str], min_count: int = 1) -> "Vocabulary":
        """The ``min_count`` vocabulary of streamed counts: equal to :meth:`fit` on the rows counted."""
        voc = cls(mode="min_count", feature_names=list(feature_names), min_count=int(min_count))
        for uniq, cnt in counts.totals():
            voc.kept.append(uniq[cnt >= voc.min_count])
        return voc

    def save(self, path: str) -> None:
        """Write the vocabulary to ``path`` (one ``.npz`` file, atomically)."""
        from umec_torchrec.io import atomic_write

        arrays = {f"kept_{j}": np.asarray(k, dtype=np.int64) for j, k in enumerate(self.kept)}
        meta = json.dumps({"format": VOCAB_FORMAT, **self.describe(), "feature_names": list(self.feature_names),
                           "table_sizes": self.table_sizes, "raw_values": RAW_VALUES})
        atomic_write(path, lambda f: np.savez(f, meta=np.array(meta), **arrays), mode="wb")

    @classmethod
    def load(cls, path: str) -> "Vocabulary":
        """The vocabulary :meth:`save` wrote; ``ValueError`` naming ``path`` when it is not one."""
        try:
            with np.load(path, allow_pickle=False) as z:
                meta = json.loads(str(z["meta"]))
                kept = [np.asarray(z[f"kept_{j}"], dtype=np.int64) for j in range(len(meta["feature_names"]))
                        if meta.get("mode") == "min_count"]
        except FileNotFoundError:
            raise FileNotFoundError(f"{path}: no such vocabulary file") from None
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{path}: not a vocabulary file written by umec ({type(e).__name__}: {e})") from None
        if meta.get("format") != VOCAB_FORMAT or meta.get("mode") not in ("min_count", "hash", "identity"):
            raise ValueError(f"{path}: unknown vocabulary format {meta.get('format')!r} / mode {meta.get('mode')!r}")
        voc = cls(mode=meta["mode"], feature_names=list(meta["feature_names"]),
                  min_count=int(meta.get("min_count", 1)), hash_size=meta.get("hash_size"), kept=kept,
                  sizes=meta.get("sizes"))
        if voc.table_sizes != [int(x) for x in meta.get("table_sizes", voc.table_sizes)]:
            raise ValueError(f"{path}: the vocabulary's table sizes do not match its kept values (corrupt)")
        return voc

    def describe(self) -> Dict[str, Any]:
        """JSON-safe summary for ``info``."""
        d: Dict[str, Any] = {"mode": self.mode}
        if self.mode == "identity":
            d["sizes"] = list(self.table_sizes)
        elif self.mode == "hash":
            d["hash_size"] = int(self.hash_size)
        else:
            d["min_count"] = self.min_count
            d["oov_row"] = 0
        return d


#: the format number of :meth:`Vocabulary.save`
VOCAB_FORMAT = 1
#: how a raw value becomes the int64 that a vocabulary maps (recorded in every saved vocabulary)
RAW_VALUES = {
    "criteo": "int(hex_text, 16) as int64 (two's complement for ids >= 2**63)",
    "libsvm": "the global feature index (the number before ':')",
    "csv": "umec_torchrec.data.vocab.hash_strings([text])[0] (blake2b, 8 bytes, little-endian, signed)",
    "missing": "-2**63 (an empty field); like any value, it has a row when it was seen min_count times in train",
    "min_count": "row = 1 + position of the value in the sorted kept values of its feature, 0 if not kept",
    "hash": "row = splitmix64(value ^ (j * 0x9E3779B97F4A7C15)) mod hash_size, j = the feature's position",
    "identity": "row = value mod the feature's num_embeddings (criteo-npy with TorchRec's caps)",
}


class ValueCounts:
    """Per-feature counts of int64 values, added chunk by chunk (memory: the distinct values,
    not the rows). Equal to ``np.unique(col, return_counts=True)`` over every row added.

    Example::

        c = ValueCounts(3)
        for chunk in chunks:
            c.add(chunk)                     # int64 [n, 3]
        voc = Vocabulary.from_counts(c, ["a", "b", "c"], min_count=2)
    """

    def __init__(self, n_features: int) -> None:
        self.n_features = int(n_features)
        self._done: List[Tuple[np.ndarray, np.ndarray]] = [
            (np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)) for _ in range(self.n_features)]
        self._pending: List[List[Tuple[np.ndarray, np.ndarray]]] = [[] for _ in range(self.n_features)]

    def add(self, cats: np.ndarray) -> None:
        """Count the rows of ``cats`` (``int64 [n, n_features]``)."""
        if cats.ndim != 2 or cats.shape[1] != self.n_features:
            raise ValueError(f"expected [n, {self.n_features}] values, got shape {tuple(cats.shape)}")
        for j in range(self.n_features):
            self.add_column(j, cats[:, j])

    def add_column(self, j: int, values: np.ndarray) -> None:
        """Count ``values`` (``int64 [m]``, any length) of feature ``j``."""
        self._pending[j].append(np.unique(np.asarray(values, dtype=np.int64), return_counts=True))
        if sum(len(u) for u, _ in self._pending[j]) > max(len(self._done[j][0]), 1 << 16):
            self._merge(j)

    def _merge(self, j: int) -> None:
        parts = [self._done[j]] + self._pending[j]
        uniq, inv = np.unique(np.concatenate([u for u, _ in parts]), return_inverse=True)
        cnt = np.bincount(inv.reshape(-1), weights=np.concatenate([c for _, c in parts]), minlength=len(uniq))
        self._done[j] = (uniq, cnt.astype(np.int64))
        self._pending[j] = []

    def totals(self) -> List[Tuple[np.ndarray, np.ndarray]]:
        """``(sorted distinct values, counts)`` per feature."""
        for j in range(self.n_features):
            if self._pending[j]:
                self._merge(j)
        return list(self._done)


def id_dtype(table_size: int) -> np.dtype:
    """The narrowest unsigned dtype that holds every row of a table of ``table_size`` rows
    (``uint8``, ``uint16``, ``uint32``, else ``int64``)."""
    for dt in (np.uint8, np.uint16, np.uint32):
        if int(table_size) - 1 <= np.iinfo(dt).max:
            return np.dtype(dt)
    return np.dtype(np.int64)
