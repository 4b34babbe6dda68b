"""libsvm / libFM one-hot CTR files such as Frappe.

One example a line: ``label idx:1 idx:1 ...`` with exactly one global feature index per
field, the fields in the same order on every line, so a field is recovered from its
column position. ``label`` is 0/1 (libsvm's ``-1`` / ``+1`` are read as 0 / 1); a value
must be 1 (``1``, ``1.0``). There are no dense features: the table gets one all-zero
dense column named ``"none"``.

Several indices per field (multi-hot): with ``ffm=True`` (spec ``libsvm:PATH,ffm=1,names=...``)
lines are libFFM's ``label field:idx:1 ...``: any number of tokens, each naming its 0-based
field, so a field holds every index its tokens give on the line (none: an empty bag), in
line order; every field is then a multi-hot feature
(:class:`~umec_torchrec.data.jagged.JaggedIds`), and ``names`` gives the fields.
"""

from __future__ import annotations

import os
import re
from typing import Any, Dict, Iterator, List, Optional, Sequence

import numpy as np

from umec_torchrec.data.errors import DataError, shown
from umec_torchrec.data.jagged import JaggedIds
from umec_torchrec.data.raw import CHUNK_ROWS, RawTable, concat_tables
from umec_torchrec.data.textio import BadLines, iter_lines

FRAPPE_FIELDS = ["user", "item", "daytime", "weekday", "isweekend", "homework", "cost", "weather", "country", "city"]
_LABELS = {"0": 0, "1": 1, "-1": 0, "+1": 1}
_TOKEN = re.compile(r"([0-9]{1,18}):(1(?:\.0*)?)", re.ASCII)
_INDEX = re.compile(r"[0-9]+", re.ASCII)
_FFM = re.compile(r"([0-9]{1,6}):([0-9]{1,18}):(1(?:\.0*)?)", re.ASCII)
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


def _label(tok: str, path: str, lineno: int, bad: BadLines) -> Optional[int]:
    """The 0/1 label of a line's first token, or ``None`` after reporting the line to ``bad``."""
    lab = _LABELS.get(tok)
    if lab is None:
        bad(DataError(path, lineno, "label", f"{shown(tok)} is not a 0/1 label"))
    return lab


def _ffm_table(labels: List[int], rows: List[List[tuple]], fields: List[str]) -> RawTable:
    """The rows of libFFM tokens ``(field, index)`` as one multi-hot feature per field."""
    n = len(rows)
    row = np.repeat(np.arange(n, dtype=np.int64), [len(r) for r in rows])
    flat = np.asarray([t for r in rows for t in r], dtype=np.int64).reshape(-1, 2)
    order = np.lexsort((row, flat[:, 0]))  # by field, then row; stable: a line's tokens keep their order
    row, fld, idx = row[order], flat[order, 0], flat[order, 1]
    cut = np.searchsorted(fld, np.arange(len(fields) + 1))
    multi = {f: JaggedIds.from_lengths(idx[cut[k]:cut[k + 1]], np.bincount(row[cut[k]:cut[k + 1]], minlength=n))
             for k, f in enumerate(fields)}
    return RawTable(np.zeros((n, 1)), np.zeros((n, len(fields)), dtype=np.int64), np.asarray(labels, dtype=np.int64),
                    ["none"], list(fields), {}, multi_hot=multi)


def _iter_ffm(path: str, names: Optional[Sequence[str]], skip_bad_lines: bool, max_rows: Optional[int],
              chunk_rows: int, info: Optional[Dict[str, Any]]) -> Iterator[RawTable]:
    if not names:
        raise DataError(path, None, "names", "libFFM lines (ffm=1) need the field names: names=a;b;c")
    fields = list(names)
    bad = BadLines(skip_bad_lines)
    labels: List[int] = []
    rows: List[List[tuple]] = []
    total = 0
    for lineno, line in iter_lines(path):
        toks = line.split()
        if not toks:
            bad(DataError(path, lineno, "label", "empty line"))
            continue
        lab = _label(toks[0], path, lineno, bad)
        if lab is None:
            continue
        ms = [_FFM.fullmatch(t) for t in toks[1:]]
        if None in ms:
            t = toks[1 + ms.index(None)]
            bad(DataError(path, lineno, None, f"{shown(t)} is not a field:idx:1 token"))
            continue
        got = [(int(m.group(1)), int(m.group(2))) for m in ms]
        over = [f for f, _ in got if f >= len(fields)]
        if over:
            bad(DataError(path, lineno, None, f"field {over[0]} is outside the {len(fields)} fields named "
                                              f"({';'.join(fields)})"))
            continue
        labels.append(lab)
        rows.append(got)
        total += 1
        last = max_rows is not None and total >= max_rows
        if last or len(labels) >= chunk_rows:
            yield _ffm_table(labels, rows, fields)
            labels, rows = [], []
        if last:
            break
    bad.check_rows(path, total)
    if labels:
        yield _ffm_table(labels, rows, fields)
    if info is not None:
        info.update({"format": "libffm", "path": str(path), "fields": fields, **bad.info()})


def iter_libsvm(path: str, names: Optional[Sequence[str]] = None, skip_bad_lines: bool = False,
                max_rows: Optional[int] = None, chunk_rows: int = CHUNK_ROWS,
                info: Optional[Dict[str, Any]] = None, ffm: bool = False) -> Iterator[RawTable]:
    """:func:`read_libsvm` in chunks of at most ``chunk_rows`` rows (bounded memory): the same
    rows, in file order, and the same errors at the same lines. When the file is read to its
    end, ``info`` (if given) receives the ``info`` of :func:`read_libsvm` (fields, index
    ranges over all rows, bad lines). ``ffm``: libFFM lines, every field multi-hot (module
    docstring)."""
    if ffm:
        yield from _iter_ffm(path, names, skip_bad_lines, max_rows, chunk_rows, info)
        return
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
        lab = _label(toks[0], path, lineno, bad)
        if lab is None:
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
                max_rows: Optional[int] = None, ffm: bool = False) -> RawTable:
    """Read a one-hot libsvm/libFM file into a :class:`RawTable` (see module docstring).

    The number of fields is taken from the first line. Raises :class:`DataError` naming
    file, line and field for a wrong field count, a bad label, a bad ``idx:value`` token.
    """
    info: Dict[str, Any] = {}
    return concat_tables(list(iter_libsvm(path, names, skip_bad_lines, max_rows, info=info, ffm=ffm)), info)
