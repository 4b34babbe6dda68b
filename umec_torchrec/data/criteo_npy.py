"""TorchRec's preprocessed Criteo day files (full-size Criteo Kaggle / 1TB data).

A directory of ``day_{d}_dense.npy`` (``float32 [N, 13]``, already log-transformed by
:meth:`torchrec.datasets.criteo.BinaryCriteoUtils.tsv_to_npys`; integer arrays are taken
as raw counts and transformed here), ``day_{d}_sparse.npy`` (integer ``[N, 26]``: raw
hex-derived ids, or contiguous ids after ``sparse_to_contiguous``) and
``day_{d}_labels.npy`` (``[N, 1]`` or ``[N]``, 0/1). Files are opened with
``np.load(mmap_mode="r")`` and only the first ``max_rows`` rows (over the days, in
order) are copied into memory; :func:`iter_criteo_npy` (what ``umec prepare`` reads) copies
one chunk at a time. Ids are mapped to tables by the vocabulary (``min_count``)
or hashed (``vocab="hash"``, the practical choice at full size), or, with TorchRec's
``num_embeddings_per_feature`` caps, taken as rows (``id mod cap``, ``vocab="identity"``).
"""

from __future__ import annotations

import os
import re
from typing import Any, Dict, Iterator, List, Optional, Sequence

import numpy as np
from torchrec.datasets.criteo import CAT_FEATURE_COUNT, INT_FEATURE_COUNT

from umec_torchrec.data.criteo import CAT_NAMES, DENSE_NAMES
from umec_torchrec.data.errors import DataError
from umec_torchrec.data.raw import CHUNK_ROWS, RawTable, concat_tables

_DAY = re.compile(r"day_(\d+)_dense\.npy")


def day_files(directory: str, day: int) -> List[str]:
    """The dense, sparse and labels file of ``day`` in ``directory`` (TorchRec's names)."""
    return [os.path.join(directory, f"day_{day}_{kind}.npy") for kind in ("dense", "sparse", "labels")]


def _load(path: str) -> np.ndarray:
    if not os.path.exists(path):
        raise DataError(path, None, None, f"no such file: {path}")
    try:
        return np.load(path, mmap_mode="r")
    except (ValueError, OSError, EOFError) as e:
        raise DataError(path, None, None, f"not a readable .npy file ({e})") from None


def _caps(directory: str, caps: Optional[Sequence[int]]) -> Optional[List[int]]:
    if caps is None:
        return None
    caps = [int(c) for c in caps]
    if len(caps) == 1:
        caps = caps * CAT_FEATURE_COUNT
    if len(caps) != CAT_FEATURE_COUNT or min(caps) < 1:
        raise DataError(directory, None, "num_embeddings_per_feature", full_path=True,
                        reason=f"expected one positive table size or {CAT_FEATURE_COUNT} of them, got {caps}")
    return caps


def iter_criteo_npy(directory: str, days: Optional[Sequence[int]] = None, max_rows: Optional[int] = None,
                    chunk_rows: int = CHUNK_ROWS, info: Optional[Dict[str, Any]] = None,
                    num_embeddings_per_feature: Optional[Sequence[int]] = None,
                    split: Optional[str] = None) -> Iterator[RawTable]:
    """:func:`read_criteo_npy` in chunks of at most ``chunk_rows`` rows, each copied out of the
    memory-mapped day files only while it is in use (bounded memory): the same rows, in
    order, and the same errors. When every day has been read, ``info`` (if given) receives
    the ``info`` of :func:`read_criteo_npy`."""
    caps = _caps(directory, num_embeddings_per_feature)
    if split not in (None, "last_day"):
        raise DataError(directory, None, "split", full_path=True, reason=f"unknown split {split!r}; expected last_day")
    day_rows: List[int] = []
    if not os.path.isdir(directory):
        raise DataError(directory, None, None, full_path=True,
                        reason="no such directory (expected TorchRec's day_X_{dense,sparse,labels}.npy)")
    if days is None:
        days = sorted(int(m.group(1)) for m in map(_DAY.fullmatch, os.listdir(directory)) if m)
        if not days:
            raise DataError(directory, None, None, "no day_X_dense.npy files found")
    remaining = max_rows
    transformed = None
    for d in days:
        fd, fs, fl = day_files(directory, d)
        dense, sparse, labels = _load(fd), _load(fs), _load(fl)
        n = dense.shape[0]
        if dense.ndim != 2 or dense.shape[1] != INT_FEATURE_COUNT:
            raise DataError(fd, None, None, f"expected shape [N, {INT_FEATURE_COUNT}], got {list(dense.shape)}")
        if sparse.ndim != 2 or sparse.shape != (n, CAT_FEATURE_COUNT):
            raise DataError(fs, None, None, f"expected shape [{n}, {CAT_FEATURE_COUNT}], got {list(sparse.shape)}")
        if labels.reshape(labels.shape[0], -1).shape != (n, 1):
            raise DataError(fl, None, "label", f"expected shape [{n}, 1], got {list(labels.shape)}")
        if not np.issubdtype(sparse.dtype, np.integer):
            raise DataError(fs, None, None, f"sparse ids must be integers, got dtype {sparse.dtype}")
        take = n if remaining is None else min(n, remaining)
        is_float = np.issubdtype(dense.dtype, np.floating)
        if transformed is None:
            transformed = is_float
        elif transformed != is_float:
            raise DataError(fd, None, None, "dense dtype differs between days (float = log-transformed, int = raw)")
        flat = labels.reshape(-1)
        for a in range(0, take, chunk_rows):
            b = min(take, a + chunk_rows)
            lab = np.asarray(flat[a:b])
            ok = (lab == 0) | (lab == 1)
            if not ok.all():
                r = a + int(np.flatnonzero(~ok)[0])
                raise DataError(fl, r + 1, "label", f"{flat[r].item()!r} is not a 0/1 label (row {r + 1})")
            part = np.asarray(dense[a:b])
            ids = np.asarray(sparse[a:b]).astype(np.int64)
            if caps is not None:  # TorchRec's per-table caps: id mod num_embeddings (hashes in torchrec_dlrm)
                ids = np.mod(ids, np.asarray(caps, dtype=np.int64)[None, :])
            yield RawTable(part.astype(np.float32) if transformed else part.astype(np.float64), ids,
                           lab.astype(np.int64), list(DENSE_NAMES), list(CAT_NAMES), {},
                           dense_transformed=bool(transformed))
        if take:
            day_rows.append(int(take))
        if remaining is not None:
            remaining -= take
            if remaining <= 0:
                break
    if info is not None:
        info.update({"format": "criteo-npy", "path": str(directory), "days": [int(d) for d in days], "bad_lines": 0})
        if caps is not None:
            info["num_embeddings_per_feature"] = caps
        if split is not None:
            info.update(split_rule=split, day_rows=day_rows)


def read_criteo_npy(directory: str, days: Optional[Sequence[int]] = None, max_rows: Optional[int] = None,
                    num_embeddings_per_feature: Optional[Sequence[int]] = None,
                    split: Optional[str] = None) -> RawTable:
    """Read TorchRec's ``day_*`` .npy files from ``directory`` (see module docstring).

    Args:
        num_embeddings_per_feature: TorchRec's per-table caps (one for every table, or 26):
            each id becomes ``id mod cap`` (as ``torchrec_dlrm``'s ``hashes``); with
            ``vocab="identity"`` the tables are exactly these sizes.
        split: ``"last_day"``: TorchRec's split (every day but the last trains, the last
            day's first half validates, its second half tests), recorded in ``info``.
    """
    info: Dict[str, Any] = {}
    chunks = list(iter_criteo_npy(directory, days, max_rows, info=info,
                                  num_embeddings_per_feature=num_embeddings_per_feature, split=split))
    if not chunks:  # empty day files: an empty table (the split then names the problem)
        return RawTable(np.zeros((0, INT_FEATURE_COUNT)), np.zeros((0, CAT_FEATURE_COUNT), dtype=np.int64),
                        np.zeros(0, dtype=np.int64), list(DENSE_NAMES), list(CAT_NAMES), info)
    return concat_tables(chunks, info)
