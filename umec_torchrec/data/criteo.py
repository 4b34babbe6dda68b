"""Criteo Kaggle / Terabyte click logs in TSV form (plain or gzip).

One example a line: ``label \\t I1 .. I13 \\t C1 .. C26`` (40 fields); ``label`` is 0/1,
``I*`` are integer counts (may be negative), ``C*`` hex-hashed categoricals (up to 16 hex
digits, 8 in practice); an empty field is missing.

Each line is checked with one compiled regular expression (a few microseconds a line);
only a line that fails is split again to name the bad field. Column conversion is numpy.
"""

from __future__ import annotations

import re
from typing import Any, Dict, Iterator, List, Optional

import numpy as np
from torchrec.datasets.criteo import CAT_FEATURE_COUNT, INT_FEATURE_COUNT

from umec_torchrec.data.errors import DataError, shown
from umec_torchrec.data.raw import CHUNK_ROWS, MISSING, RawTable, concat_tables
from umec_torchrec.data.textio import BadLines, iter_lines

DENSE_NAMES: List[str] = [f"I{i + 1}" for i in range(INT_FEATURE_COUNT)]
CAT_NAMES: List[str] = [f"C{i + 1}" for i in range(CAT_FEATURE_COUNT)]
FIELDS: List[str] = ["label"] + DENSE_NAMES + CAT_NAMES
N_FIELDS = len(FIELDS)

_INT = r"(-?[0-9]{1,18})?"
_HEX = r"([0-9a-fA-F]{1,16})?"
_LINE = re.compile(r"([01])" + (r"\t" + _INT) * INT_FEATURE_COUNT + (r"\t" + _HEX) * CAT_FEATURE_COUNT + r"\r?",
                   re.ASCII)
_INT_FIELD = re.compile(r"-?[0-9]{1,18}", re.ASCII)
_HEX_FIELD = re.compile(r"[0-9a-fA-F]{1,16}", re.ASCII)
_DIGITS = re.compile(r"-?[0-9]+", re.ASCII)
_HEX_DIGITS = re.compile(r"[0-9a-fA-F]+", re.ASCII)


def diagnose_line(path: str, lineno: int, line: str) -> DataError:
    """The :class:`DataError` of a line that failed the fast check: the first bad field."""
    parts = line.rstrip("\r").split("\t")
    if len(parts) != N_FIELDS:
        field = FIELDS[len(parts)] if len(parts) < N_FIELDS else f"#{N_FIELDS + 1}"
        return DataError(path, lineno, field,
                         f"expected {N_FIELDS} tab-separated fields (label, I1..I13, C1..C26), got {len(parts)}")
    if parts[0] not in ("0", "1"):
        return DataError(path, lineno, "label", f"{shown(parts[0])} is not a 0/1 label")
    for name, v in zip(DENSE_NAMES, parts[1:1 + INT_FEATURE_COUNT]):
        if v and not _INT_FIELD.fullmatch(v):
            why = ("is out of range (at most 18 digits)" if _DIGITS.fullmatch(v) else "is not an integer")
            return DataError(path, lineno, name, f"{shown(v)} {why}")
    for name, v in zip(CAT_NAMES, parts[1 + INT_FEATURE_COUNT:]):
        if v and not _HEX_FIELD.fullmatch(v):
            why = ("is out of range (at most 16 hex digits)" if _HEX_DIGITS.fullmatch(v)
                   else "is not a hex categorical")
            return DataError(path, lineno, name, f"{shown(v)} {why}")
    return DataError(path, lineno, None, "malformed line")  # not reached for lines the regex rejects


def hex_column(col) -> np.ndarray:
    """Hex strings ('' = missing) -> int64 (values >= 2**63 wrap around; missing = MISSING)."""
    vals = np.fromiter((int(v, 16) if v else 0 for v in col), dtype=np.uint64, count=len(col)).view(np.int64)
    missing = np.fromiter((not v for v in col), dtype=bool, count=len(col))
    vals[missing] = MISSING
    return vals


def int_column(col) -> np.ndarray:
    """Integer strings ('' = missing) -> float64 with NaN for missing."""
    arr = np.asarray(col, dtype=str)
    missing = arr == ""
    arr = np.where(missing, "0", arr)
    out = arr.astype(np.int64).astype(np.float64)
    out[missing] = np.nan
    return out


def _table(path: str, rows: List[tuple]) -> RawTable:
    """The :class:`RawTable` of matched lines (``m.groups("")`` tuples; none: 0 rows)."""
    if not rows:
        return RawTable(np.zeros((0, INT_FEATURE_COUNT)), np.zeros((0, CAT_FEATURE_COUNT), dtype=np.int64),
                        np.zeros(0, dtype=np.int64), list(DENSE_NAMES), list(CAT_NAMES), {"path": str(path)})
    cols = list(zip(*rows))
    labels = np.asarray(cols[0], dtype=str).astype(np.int64)
    dense = np.stack([int_column(cols[1 + i]) for i in range(INT_FEATURE_COUNT)], axis=1)
    cats = np.stack([hex_column(cols[1 + INT_FEATURE_COUNT + j]) for j in range(CAT_FEATURE_COUNT)], axis=1)
    return RawTable(dense, cats, labels, list(DENSE_NAMES), list(CAT_NAMES), {"path": str(path)})


def iter_criteo_tsv(path: str, skip_bad_lines: bool = False, max_rows: Optional[int] = None,
                    chunk_rows: int = CHUNK_ROWS, info: Optional[Dict[str, Any]] = None) -> Iterator[RawTable]:
    """:func:`read_criteo_tsv` in chunks of at most ``chunk_rows`` rows (bounded memory): the
    same rows, in file order, and the same errors at the same lines. When the file is read
    to its end, ``info`` (if given) receives what :func:`read_criteo_tsv` puts in its table's
    ``info`` (format, path, bad-line count and examples)."""
    bad = BadLines(skip_bad_lines)
    rows: List[tuple] = []
    total = 0
    match = _LINE.fullmatch
    for lineno, line in iter_lines(path):
        m = match(line)
        if m is None:
            bad(diagnose_line(path, lineno, line))
            continue
        rows.append(m.groups(""))
        total += 1
        if max_rows is not None and total >= max_rows:
            break
        if len(rows) >= chunk_rows:
            yield _table(path, rows)
            rows = []
    bad.check_rows(path, total)
    if rows:
        yield _table(path, rows)
    if info is not None:
        info.update({"format": "criteo-tsv", "path": str(path), **bad.info()})


def read_criteo_tsv(path: str, skip_bad_lines: bool = False, max_rows: Optional[int] = None) -> RawTable:
    """Read a Criteo TSV (``.gz`` or plain) into a :class:`RawTable`.

    Raises:
        DataError: naming file, line and field, for a wrong field count, a label other than
            0/1, a non-integer count, a non-hex categorical (unless ``skip_bad_lines``),
            and for a missing, empty or truncated file.
    """
    info: Dict[str, Any] = {}
    return concat_tables(list(iter_criteo_tsv(path, skip_bad_lines, max_rows, info=info)), info)
