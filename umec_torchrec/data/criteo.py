"""Criteo Kaggle / Terabyte click logs in TSV form (plain or gzip).

One example a line: ``label \\t I1 .. I13 \\t C1 .. C26`` (40 fields); ``label`` is 0/1,
``I*`` are integer counts (may be negative), ``C*`` hex-hashed categoricals (up to 16 hex
digits, 8 in practice); an empty field is missing.

Each line is checked with one compiled regular expression (a few microseconds a line);
only a line that fails is split again to name the bad field. Column conversion is numpy.
"""

from __future__ import annotations

import collections
import re
from typing import Any, Deque, Dict, Iterator, List, Optional, Tuple

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


def _parse_lines(args: Tuple[str, List[int], List[str]]) -> Tuple[RawTable, List[DataError], List[int]]:
    """A worker's part of :func:`iter_criteo_tsv`: ``(table of the valid lines, the bad lines'
    errors, the valid lines' numbers)`` of one block of ``(path, line numbers, lines)``."""
    path, numbers, lines = args
    match = _LINE.fullmatch
    rows: List[tuple] = []
    valid: List[int] = []
    errors: List[DataError] = []
    for lineno, line in zip(numbers, lines):
        m = match(line)
        if m is None:
            errors.append(diagnose_line(path, lineno, line))
        else:
            rows.append(m.groups(""))
            valid.append(lineno)
    return _table(path, rows), errors, valid


def _cut(t: RawTable, k: int) -> RawTable:
    return RawTable(t.dense[:k], t.cats[:k], t.labels[:k], t.dense_names, t.feature_names, t.info)


def _iter_parallel(path: str, bad: BadLines, max_rows: Optional[int], chunk_rows: int, workers: int,
                   counted: List[int]) -> Iterator[RawTable]:
    """The blocks of ``chunk_rows`` lines parsed by ``workers`` processes, taken back in file
    order (at most ``2 * workers`` blocks in flight): the same tables, and the same bad lines
    in the same order, as the sequential loop; ``counted[0]`` holds the rows yielded."""
    import multiprocessing

    pending: Deque[Any] = collections.deque()

    def take(result: Any) -> Tuple[Optional[RawTable], bool]:
        table, errors, valid = result.get()
        stop = False
        if max_rows is not None and counted[0] + len(table) >= max_rows:
            need = max_rows - counted[0]
            errors = [e for e in errors if e.line < valid[need - 1]]  # the sequential reader stops there
            table, stop = _cut(table, need), True
        for e in errors:
            bad(e)
        counted[0] += len(table)
        return (table if len(table) else None), stop

    ctx = multiprocessing.get_context("forkserver")  # workers forked from a clean server: no torch threads
    ctx.set_forkserver_preload([__name__])  # imported once by the server, not per worker
    with ctx.Pool(workers) as pool:
        numbers: List[int] = []
        lines: List[str] = []
        failure: Optional[DataError] = None
        source = iter_lines(path)
        while True:
            try:
                lineno, line = next(source)
            except StopIteration:
                break
            except DataError as e:  # a file-level error: raised after the lines read before it
                failure = e
                break
            numbers.append(lineno)
            lines.append(line)
            if len(lines) >= chunk_rows:
                pending.append(pool.apply_async(_parse_lines, ((path, numbers, lines),)))
                numbers, lines = [], []
                while len(pending) >= 2 * workers:
                    t, stop = take(pending.popleft())
                    if t is not None:
                        yield t
                    if stop:
                        return
        if lines:
            pending.append(pool.apply_async(_parse_lines, ((path, numbers, lines),)))
        while pending:
            t, stop = take(pending.popleft())
            if t is not None:
                yield t
            if stop:
                return
        if failure is not None:
            raise failure


def iter_criteo_tsv(path: str, skip_bad_lines: bool = False, max_rows: Optional[int] = None,
                    chunk_rows: int = CHUNK_ROWS, info: Optional[Dict[str, Any]] = None,
                    workers: int = 1) -> Iterator[RawTable]:
    """:func:`read_criteo_tsv` in chunks of at most ``chunk_rows`` rows (bounded memory): the
    same rows, in file order, and the same errors at the same lines. When the file is read
    to its end, ``info`` (if given) receives what :func:`read_criteo_tsv` puts in its table's
    ``info`` (format, path, bad-line count and examples). ``workers > 1``: the lines are
    parsed by that many processes, blocks of ``chunk_rows`` lines each, taken back in order
    (the file is still read and decompressed by this process)."""
    bad = BadLines(skip_bad_lines)
    if workers > 1:
        counted = [0]
        yield from _iter_parallel(path, bad, max_rows, chunk_rows, int(workers), counted)
        total = counted[0]
    else:
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
        if rows:
            yield _table(path, rows)
    bad.check_rows(path, total)
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
