"""libsvm / libFM one-hot CTR files such as Frappe.

One example a line: ``label idx:1 idx:1 ...`` with exactly one global feature index per
field, the fields in the same order on every line, so a field is recovered from its
column position. ``label`` is 0/1 (libsvm's ``-1`` / ``+1`` are read as 0 / 1); a value
must be 1 (``1``, ``1.0``). There are no dense features: the table gets one all-zero
dense column named ``"none"``.
"""

from __future__ import annotations

import os
import re
from typing import Any, Dict, Iterator, List, Optional, Sequence

import numpy as np

from umec_torchrec.data.errors import DataError, shown
from umec_torchrec.data.raw import CHUNK_ROWS, RawTable, concat_tables
from umec_torchrec.data.textio import BadLines, iter_lines

FRAPPE_FIELDS = ["user", "item", "daytime", "weekday", "isweekend", "homework", "cost", "weather", "country", "city"]
_LABELS = {"0": 0, "1": 1, "-1": 0, "+1": 1}
_TOKEN = re.compile(r"([0-9]{1,18}):(1(?:\.0*)?)", re.ASCII)
_INDEX = re.compile(r"[0-9]+", re.ASCII)
MAX_INDEX_DIGITS = 18  # < 10**18 < 2**63: every index fits an int64


def _field_names(path: str, k: int, names: Optional[Sequence[str]]) -> List[str]:
    if names:
        if len(names) != k:
            raise DataError(path, 1, None,
                            f"{len(names)} field names given ({';'.join(names)}) but lines have {k} fields")
        return list(names)
    if k == len(FRAPPE_FIELDS) and "frappe" in os.path.basename(path).lower():
        return list(FRAPPE_FIELDS)
    return [f"f{i + 1}" for i in range(k)]


def _bad_token(t: str) -> str:
    """Why ``t`` is not a valid ``idx:1`` token."""
    idx, sep, _ = t.partition(":")
    if not sep or not _INDEX.fullmatch(idx):
        return f"{shown(t)} is not an idx:value token"
    if len(idx) > MAX_INDEX_DIGITS:
        return (f"index {shown(idx)} of {shown(t)} is out of range (at most {MAX_INDEX_DIGITS} digits, "
                f"the indices must fit int64)")
    return f"{shown(t)} is not idx:1 (one-hot value 1 expected)"


def _table(labels: List[int], idx_rows: List[List[str]], fields: List[str]) -> RawTable:
    cats = np.asarray(idx_rows, dtype=str).astype(np.int64).reshape(len(idx_rows), len(fields))
    n = cats.shape[0]
    return RawTable(np.zeros((n, 1)), cats, np.asarray(labels, dtype=np.int64), ["none"], list(fields), {})


def iter_libsvm(path: str, names: Optional[Sequence[str]] = None, skip_bad_lines: bool = False,
                max_rows: Optional[int] = None, chunk_rows: int = CHUNK_ROWS,
                info: Optional[Dict[str, Any]] = None) -> Iterator[RawTable]:
    """:func:`read_libsvm` in chunks of at most ``chunk_rows`` rows (bounded memory): the same
    rows, in file order, and the same errors at the same lines. When the file is read to its
    end, ``info`` (if given) receives the ``info`` of :func:`read_libsvm` (fields, index
    ranges over all rows, bad lines)."""
    bad = BadLines(skip_bad_lines)
    labels: List[int] = []
    idx_rows: List[List[str]] = []
    k: Optional[int] = None
    fields: List[str] = []
    total = 0
    lo = hi = None
    for lineno, line in iter_lines(path):
        toks = line.split()
        if k is None:
            if len(toks) < 2:
                bad(DataError(path, lineno, None, f"expected 'label idx:1 ...', got {shown(line)}"))
                continue
            k = len(toks) - 1
            fields = _field_names(path, k, names)
        if len(toks) != k + 1:
            field = "label" if not toks else (fields[len(toks) - 1] if len(toks) - 1 < k else f"#{k + 1}")
            bad(DataError(path, lineno, field,
                          f"expected a label and {k} idx:value tokens, got {max(len(toks) - 1, 0)}"))
            continue
        lab = _LABELS.get(toks[0])
        if lab is None:
            bad(DataError(path, lineno, "label", f"{shown(toks[0])} is not a 0/1 label"))
            continue
        ms = [_TOKEN.fullmatch(t) for t in toks[1:]]
        if None in ms:
            j = ms.index(None)
            bad(DataError(path, lineno, fields[j], _bad_token(toks[1 + j])))
            continue
        labels.append(lab)
        idx_rows.append([m.group(1) for m in ms])
        total += 1
        last = max_rows is not None and total >= max_rows
        if last or len(labels) >= chunk_rows:
            t = _table(labels, idx_rows, fields)
            lo = t.cats.min(axis=0) if lo is None else np.minimum(lo, t.cats.min(axis=0))
            hi = t.cats.max(axis=0) if hi is None else np.maximum(hi, t.cats.max(axis=0))
            yield t
            labels, idx_rows = [], []
        if last:
            break
    bad.check_rows(path, total)
    if labels:
        t = _table(labels, idx_rows, fields)
        lo = t.cats.min(axis=0) if lo is None else np.minimum(lo, t.cats.min(axis=0))
        hi = t.cats.max(axis=0) if hi is None else np.maximum(hi, t.cats.max(axis=0))
        yield t
    if info is not None:
        info.update({
            "format": "libsvm",
            "path": str(path),
            "fields": list(fields),
            "field_index_ranges": {f: [int(a), int(b)] for f, a, b in zip(fields, lo, hi)},
            **bad.info(),
        })


def read_libsvm(path: str, names: Optional[Sequence[str]] = None, skip_bad_lines: bool = False,
                max_rows: Optional[int] = None) -> RawTable:
    """Read a one-hot libsvm/libFM file into a :class:`RawTable` (see module docstring).

    The number of fields is taken from the first line. Raises :class:`DataError` naming
    file, line and field for a wrong field count, a bad label, a bad ``idx:value`` token.
    """
    info: Dict[str, Any] = {}
    return concat_tables(list(iter_libsvm(path, names, skip_bad_lines, max_rows, info=info)), info)
