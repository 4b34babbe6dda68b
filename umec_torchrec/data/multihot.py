"""MLPerf DLRM-v2-style multi-hot features generated from one-hot Criteo ids (the spec
parameter ``multi_hot_sizes`` of ``criteo:`` and ``criteo-npy:``).

DLRM-v2 (``torchrec_dlrm``'s ``materialize_synthetic_multihot_dataset.py``) turns each
one-hot id ``x`` of table ``j`` into ``k_j`` ids: ``x`` itself, then ``k_j - 1`` ids drawn
uniformly once per ``(table, x)`` (a cache of seeded draws), so that a value always
brings the same ids. Here those ids are a stable hash of ``(x, j, i)``
(:func:`~umec_torchrec.data.vocab.splitmix64`), which needs no ``[rows, k]`` cache and no
table size up front: for raw Criteo values the hashes are new raw values (the vocabulary
is fitted on them like on any other), with TorchRec's ``num_embeddings_per_feature`` caps
they are taken ``mod`` the cap (``vocab=identity`` stays valid). A size of 1 keeps the
feature one-hot. DLRM-v2's sizes are ``3;2;1;2;6;1;1;1;1;7;3;8;1;6;9;5;1;1;1;12;100;27;10;3;1;1``.
"""

from __future__ import annotations

from typing import List, Optional, Sequence

import numpy as np

from umec_torchrec.data.jagged import JaggedIds
from umec_torchrec.data.raw import RawTable
from umec_torchrec.data.vocab import splitmix64

__all__ = ["expand_multi_hot", "multi_hot_ids", "multi_hot_sizes"]

_SALT = np.uint64(0xD1B54A32D192ED03)


def multi_hot_sizes(sizes: Sequence[int], n_features: int, where: str = "multi_hot_sizes") -> List[int]:
    """One size per feature from one size for all or ``n_features`` of them (``ValueError``
    naming ``where`` otherwise)."""
    s = [int(k) for k in sizes]
    if len(s) == 1:
        s = s * n_features
    if len(s) != n_features or min(s) < 1:
        raise ValueError(f"{where}: expected one positive size or {n_features} of them, got {list(sizes)}")
    return s


def multi_hot_ids(values: np.ndarray, feature: int, k: int, cap: Optional[int] = None) -> np.ndarray:
    """``int64 [n, k]``: the ``k`` ids of each one-hot value (column 0: the value itself).

    Example::

        multi_hot_ids(np.array([7, 7, 3]), feature=0, k=3)   # rows 0 and 1 equal
    """
    v = np.asarray(values, dtype=np.int64)
    out = np.empty((v.shape[0], k), dtype=np.int64)
    out[:, 0] = v
    with np.errstate(over="ignore"):
        for i in range(1, k):  # k is small (DLRM-v2: at most 100); each column one vectorised hash
            salt = (np.uint64(feature) << np.uint64(8)) + np.uint64(i)
            h = splitmix64(v.view(np.uint64) ^ (salt * _SALT))
            out[:, i] = (h % np.uint64(cap)).astype(np.int64) if cap else h.view(np.int64)
    return out


def expand_multi_hot(raw: RawTable, sizes: Sequence[int], caps: Optional[Sequence[int]] = None) -> RawTable:
    """``raw`` with feature ``j`` made multi-hot with ``sizes[j]`` ids per row (1: unchanged).

    Args:
        raw: one-hot rows (a chunk or a whole table).
        sizes: ids per row of each feature (one value for all, or one per feature).
        caps: TorchRec's ``num_embeddings_per_feature`` of the source (the ids are taken mod them).
    """
    ks = multi_hot_sizes(sizes, len(raw.feature_names))
    multi = dict(raw.multi_hot)
    cats = raw.cats.copy()
    for j, (name, k) in enumerate(zip(raw.feature_names, ks)):
        if k == 1 or name in multi:
            continue
        ids = multi_hot_ids(raw.cats[:, j], j, k, int(caps[j]) if caps else None)
        multi[name] = JaggedIds(ids.reshape(-1), np.arange(0, ids.size + 1, k, dtype=np.int64))
        cats[:, j] = 0
    return RawTable(raw.dense, cats, raw.labels, list(raw.dense_names), list(raw.feature_names), dict(raw.info),
                    raw.dense_transformed, multi)
