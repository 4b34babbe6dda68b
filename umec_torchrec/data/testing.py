"""Tiny generated input files for tests and examples (Criteo TSV/gz, libsvm, csv, npy).

Every writer is deterministic per ``seed`` and returns the path it wrote. ``replace``
maps 1-based line numbers to replacement lines, to plant bad input.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np


def _write_lines(path, lines: List[str], replace: Optional[Dict[int, str]] = None) -> Path:
    path = Path(path)
    for k, v in (replace or {}).items():
        lines[k - 1] = v
    text = "".join(l + "\n" for l in lines)
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
                                     f"u{int(rng.integers(8))}", "" if rng.random() < 0.1 else f"item {int(rng.integers(5))}"]))
    return _write_lines(path, lines, replace)


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
