"""Tiny generated inputs for tests and examples: files (Criteo TSV/gz, libsvm, csv, npy) and
encoded tensors with a planted signal (:func:`planted_ctr`).

Every writer is deterministic per ``seed`` and returns the path it wrote. ``replace``
maps 1-based line numbers to replacement lines, to plant bad input.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from umec_torchrec.data.dataset import CTRData

__all__ = ["MULTI_HOT_SCHEMA", "criteo_lines", "planted_ctr", "truncate_file", "write_criteo_npy", "write_criteo_tsv",
           "write_csv", "write_libsvm", "write_multi_hot_csv"]


def _write_lines(path, lines: List[str], replace: Optional[Dict[int, str]] = None) -> Path:
    path = Path(path)
    for k, v in (replace or {}).items():
        lines[k - 1] = v
    text = "".join(line + "\n" for line in lines)
    if path.suffix == ".gz":
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def criteo_lines(rows: int = 50, seed: int = 0) -> List[str]:
    """``rows`` valid Criteo TSV lines (label, 13 ints with missing/negatives, 26 hex)."""
    rng = np.random.default_rng(seed)
    out = []
    vocab = [[f"{v:08x}" for v in rng.integers(0, 2**32, size=int(rng.integers(2, 12)))] for _ in range(26)]
    for _ in range(rows):
        f = [str(int(rng.random() < 0.3))]
        for _ in range(13):
            u = rng.random()
            f.append("" if u < 0.15 else ("-1" if u < 0.2 else str(int(rng.integers(0, 1000)))))
        for j in range(26):
            f.append("" if rng.random() < 0.1 else vocab[j][int(rng.integers(len(vocab[j])))])
        out.append("\t".join(f))
    return out


def write_criteo_tsv(path, rows: int = 50, seed: int = 0, replace: Optional[Dict[int, str]] = None) -> Path:
    """A small Criteo TSV (gzip when ``path`` ends in ``.gz``)."""
    return _write_lines(path, criteo_lines(rows, seed), replace)


def write_libsvm(path, rows: int = 50, seed: int = 0, field_sizes: Sequence[int] = (5, 7, 3, 4),
                 replace: Optional[Dict[int, str]] = None) -> Path:
    """A one-hot libsvm file: one global index per field, fields in order, labels 0/1."""
    rng = np.random.default_rng(seed)
    offsets = np.concatenate([[0], np.cumsum(field_sizes)[:-1]])
    lines = []
    for _ in range(rows):
        idx = [int(o + rng.integers(s)) for o, s in zip(offsets, field_sizes)]
        lines.append(f"{int(rng.random() < 0.4)} " + " ".join(f"{i}:1" for i in idx))
    return _write_lines(path, lines, replace)


def write_csv(path, rows: int = 50, seed: int = 0, delimiter: str = ",", header: bool = True,
              replace: Optional[Dict[int, str]] = None) -> Path:
    """A csv with columns ``id, y, price, age, user, item`` (``y`` 0/1; ``age`` sometimes missing).

    With a header, data starts on line 2 (so ``replace`` keys count the header line).
    """
    rng = np.random.default_rng(seed)
    lines = [delimiter.join(["id", "y", "price", "age", "user", "item"])] if header else []
    for i in range(rows):
        age = "" if rng.random() < 0.2 else str(int(rng.integers(10, 80)))
        lines.append(delimiter.join([str(i), str(int(rng.random() < 0.3)), f"{rng.random() * 100:.2f}", age,
                                     f"u{int(rng.integers(8))}",
                                     "" if rng.random() < 0.1 else f"item {int(rng.integers(5))}"]))
    return _write_lines(path, lines, replace)


#: the schema of :func:`write_multi_hot_csv` (a spec tail)
MULTI_HOT_SCHEMA = "label=y,dense=price,categorical=user;tags;item;genres,multi_hot=tags;genres"


def write_multi_hot_csv(path, rows: int = 60, seed: int = 0, signal: bool = False) -> Path:
    """A csv with columns ``y, price, user, tags, item, genres``: ``tags`` and ``genres`` are
    lists ``a|b|c`` of 0 to 4 and 1 to 3 values (``tags`` sometimes empty, sometimes with an
    empty item ``a||b``); schema :data:`MULTI_HOT_SCHEMA`. ``signal``: the label is 1 when
    the row's tags include ``t0`` (a planted multi-hot signal), else random."""
    rng = np.random.default_rng(seed)
    lines = ["y,price,user,tags,item,genres"]
    for _ in range(rows):
        tags = [f"t{int(rng.integers(12))}" for _ in range(int(rng.integers(0, 5)))]
        if len(tags) >= 2 and rng.random() < 0.1:
            tags.insert(1, "")
        genres = [f"g{int(rng.integers(6))}" for _ in range(int(rng.integers(1, 4)))]
        y = int("t0" in tags) if signal else int(rng.random() < 0.3)
        lines.append(",".join([str(y), f"{rng.random() * 100:.2f}", f"u{int(rng.integers(8))}", "|".join(tags),
                               f"i{int(rng.integers(5))}", "|".join(genres)]))
    return _write_lines(path, lines)


def write_criteo_npy(directory, days: Sequence[int] = (0, 1), rows_per_day: int = 40, seed: int = 0,
                     log_dense: bool = True) -> Path:
    """TorchRec-layout ``day_{d}_{dense,sparse,labels}.npy`` files (dense log-transformed like
    ``BinaryCriteoUtils.tsv_to_npys`` when ``log_dense``; sparse int64; labels int32 [N, 1])."""
    directory = Path(directory)
    os.makedirs(directory, exist_ok=True)
    rng = np.random.default_rng(seed)
    for d in days:
        counts = rng.integers(-1, 500, size=(rows_per_day, 13))
        dense = np.log(counts - counts.min() + 2, dtype=np.float32) if log_dense else counts.astype(np.int32)
        sparse = rng.integers(0, 2**32, size=(rows_per_day, 26)) % rng.integers(2, 50, size=26)
        labels = (rng.random((rows_per_day, 1)) < 0.3).astype(np.int32)
        np.save(directory / f"day_{d}_dense.npy", dense)
        np.save(directory / f"day_{d}_sparse.npy", sparse.astype(np.int64))
        np.save(directory / f"day_{d}_labels.npy", labels)
    return directory


def truncate_file(src, dst, keep_fraction: float = 0.5) -> Path:
    """Copy the first ``keep_fraction`` of ``src``'s bytes to ``dst`` (a truncated gzip)."""
    data = Path(src).read_bytes()
    Path(dst).write_bytes(data[: max(1, int(len(data) * keep_fraction))])
    return Path(dst)


def planted_ctr(rows: int, table_sizes: Sequence[int], n_dense: int = 3, seed: int = 0, bias: float = -0.5,
                feature_names: Optional[Sequence[str]] = None, dense_names: Optional[Sequence[str]] = None,
                info: Optional[Dict] = None) -> CTRData:
    """Encoded rows (ids already ``0..size-1``) whose label carries a small, known signal.

    Ids are uniform per table, dense columns standard normal; the label is Bernoulli of
    ``sigmoid(logit)`` with

    .. math::

        \\mathrm{logit} = 1.5 z_0 + 2 [x_0 \\bmod 2 = 1] - 1.5 [x_1 \\bmod 3 = 0] + b

    so dense column 0 and features 0 and 1 carry signal, every other column is noise. Use it
    where a test needs tensors of a given shape (table sizes, dense width) rather than the
    Criteo-like raw log of :mod:`umec_torchrec.data.synthetic` (which draws its own table
    sizes and goes through the vocabulary); deterministic per arguments (one
    ``torch.Generator``: ids table by table, then dense, then labels).

    Args:
        rows: number of rows ``N``.
        table_sizes: rows of each table (``F`` tables; the signal needs ``F >= 2``, with ``F == 1``
            only feature 0 carries it).
        n_dense: dense width ``D`` (>= 1).
        seed: the generator seed.
        bias: ``b``, sets the click rate.
        feature_names / dense_names: default ``f0..`` / ``d0..``.
        info: ``CTRData.info`` (default ``{"source": "generated"}``).

    Returns:
        :class:`~umec_torchrec.data.dataset.CTRData` with ``dense [N, D]`` float32, ``sparse
        [N, F]`` int64, ``labels [N]`` float32 in {0, 1}.

    Example::

        d = planted_ctr(1000, [40, 300, 25], n_dense=3)   # signal in f0, f1 and d0
    """
    sizes = [int(s) for s in table_sizes]
    if rows < 1 or not sizes or min(sizes) < 1 or n_dense < 1:
        raise ValueError(f"planted_ctr needs rows >= 1, one or more tables of >= 1 rows and n_dense >= 1; got "
                         f"rows={rows}, table_sizes={sizes}, n_dense={n_dense}")
    g = torch.Generator().manual_seed(seed)
    sparse = torch.stack([torch.randint(0, s, (rows,), generator=g) for s in sizes], 1)
    dense = torch.randn(rows, n_dense, generator=g)
    logit = 1.5 * dense[:, 0] + 2.0 * (sparse[:, 0] % 2).float()
    if len(sizes) > 1:
        logit = logit - (sparse[:, 1] % 3 == 0).float() * 1.5
    logit = logit + bias
    labels = (torch.rand(rows, generator=g) < torch.sigmoid(logit)).float()
    names = list(feature_names) if feature_names is not None else [f"f{i}" for i in range(len(sizes))]
    dnames = list(dense_names) if dense_names is not None else [f"d{i}" for i in range(n_dense)]
    return CTRData(dense, sparse, labels, dnames, names, sizes,
                   dict(info) if info is not None else {"source": "generated"})
