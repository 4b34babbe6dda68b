"""Generic delimited click logs (CSV, TSV, ...) with a declared schema.

The schema names the label column (0/1), the dense columns (numbers; empty, ``NA``,
``NaN`` or ``null`` = missing) and the categorical columns (any text; empty = missing;
values are hashed to stable int64 ids; a categorical column named in ``multi_hot`` holds a
list of values, ``a|b|c`` split by ``list_delimiter``: a multi-hot feature, empty items
and an empty field giving no id). Columns are header names (``header=True``) or
0-based indices (``header=False``; the features are then named ``col<i>``). Plain or gzip;
rows are split by Python's C ``csv`` reader, columns are converted with numpy.
"""

from __future__ import annotations

import csv
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from umec_torchrec.data.errors import DataError, shown
from umec_torchrec.data.jagged import JaggedIds
from umec_torchrec.data.raw import CHUNK_ROWS, MISSING, RawTable, concat_tables
from umec_torchrec.data.textio import BadLines, iter_lines
from umec_torchrec.data.vocab import hash_strings

_NA = {"", "na", "nan", "null", "none"}
#: fed to the csv reader after the last line: a quote still open at the end swallows it
_END = "\ue000umec-end-of-file\ue000"


def _resolve(path: str, header: Optional[List[str]], col: str, role: str) -> int:
    if header is not None:
        where = [i for i, h in enumerate(header) if h == col]
        if not where:
            names = ", ".join(shown(h, 30) for h in header[:20])
            raise DataError(path, 1, col, f"{role} column {col!r} is not in the header ({names})")
        if len(where) > 1:
            pos = [str(i + 1) for i in where]
            times = "twice" if len(pos) == 2 else f"{len(pos)} times"
            raise DataError(path, 1, col, f"{role} column {col!r} appears {times} in the header (columns "
                                          f"{', '.join(pos[:-1])} and {pos[-1]}, counting from 1): rename one")
        return where[0]
    try:
        i = int(col)
    except ValueError:
        raise DataError(path, None, col,
                        f"{role} column must be a 0-based index without a header, got {col!r}") from None
    if i < 0:
        raise DataError(path, None, col, f"{role} column index must be >= 0")
    return i


class _Unterminated(Exception):
    """A quote still open at the end of the file: ``(first line, last line, field number)``."""


def _records(path: str, lines: Iterator[Tuple[int, str]], delimiter: str) -> Iterator[Tuple[int, int, object]]:
    """``(first line, last line, fields)`` of each record of the csv reader (a quoted field
    may span lines); ``fields`` is a :class:`DataError` for a record the reader refuses
    (a field over its size limit). A quote still open at the end of the file raises
    :class:`_Unterminated` naming the line where it opened."""
    at = {"line": 0}

    def gen() -> Iterator[str]:
        for n, line in lines:
            at["line"] = n
            yield line
        yield _END

    reader = csv.reader(gen(), delimiter=delimiter)
    last = 0
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            start, last = last + 1, at["line"]
            yield start, last, DataError(path, start, None, f"the csv reader refused this line ({e})")
            continue
        start, last = last + 1, at["line"]
        if row == [_END]:
            return
        if row and _END in row[-1]:
            raise _Unterminated(start, last, len(row))
        yield start, last, row


def _split_lists(col: np.ndarray, delimiter: str) -> JaggedIds:
    """The raw ids of a list column (``a|b|c`` per field; empty items dropped)."""
    parts = [[v for v in s.split(delimiter) if v.strip()] for s in col.tolist()]
    lengths = np.fromiter((len(q) for q in parts), dtype=np.int64, count=len(parts))
    flat = [v.strip() for q in parts for v in q]
    return JaggedIds.from_lengths(hash_strings(flat), lengths)


def _convert(path: str, rows: List[List[str]], linenos: List[int], errors: dict, bad: BadLines, sel: List[int],
             n_dense: int, label_name: str, names_d: List[str], names_c: List[str],
             multi: Sequence[str] = (), list_delimiter: str = "|") -> RawTable:
    """The :class:`RawTable` of the kept ``rows`` (a label other than 0/1 or a non-numeric
    dense value adds to ``errors``); then every error of ``errors`` goes to ``bad`` in line
    order and ``errors`` is emptied."""
    cols = [np.asarray([r[i].strip() for r in rows], dtype=str) for i in sel]
    keep = np.ones(len(rows), dtype=bool)
    lab_ok = (cols[0] == "0") | (cols[0] == "1")  # label: exactly 0/1
    for r in np.flatnonzero(~lab_ok):
        keep[r] = False
        errors.setdefault(linenos[r], DataError(path, linenos[r], label_name,
                                                f"{shown(str(cols[0][r]))} is not a 0/1 label"))
    dense_vals = []
    for name, col in zip(names_d, cols[1:1 + n_dense]):  # dense: floats, NA -> NaN
        filled = np.where(np.isin(np.char.lower(col), list(_NA)), "nan", col) if col.size else col
        try:
            v = filled.astype(np.float64)
        except ValueError:
            v = np.full(len(col), np.nan)
            for r, s in enumerate(filled):
                try:
                    v[r] = float(s)
                except ValueError:
                    keep[r] = False
                    errors.setdefault(linenos[r], DataError(path, linenos[r], name, f"{shown(str(s))} is not a number"))
        dense_vals.append(v)
    for n in sorted(errors):
        bad(errors[n])
    errors.clear()
    cat_vals = []
    jagged = {}
    for name, col in zip(names_c, cols[1 + n_dense:]):
        if name in multi:
            jagged[name] = _split_lists(col, list_delimiter).take(keep)
            cat_vals.append(np.zeros(len(col), dtype=np.int64))
            continue
        ids = hash_strings(col)
        ids[col == ""] = MISSING
        cat_vals.append(ids)
    n = len(rows)
    dense_arr = np.stack(dense_vals, axis=1) if dense_vals else np.zeros((n, 1))
    return RawTable(dense_arr[keep], np.stack(cat_vals, axis=1).reshape(n, len(names_c))[keep],
                    (cols[0][keep] == "1").astype(np.int64), names_d if names_d else ["none"], list(names_c), {},
                    multi_hot=jagged)


def iter_delimited(path: str, label: str = "label", dense: Sequence[str] = (), categorical: Sequence[str] = (),
                   delimiter: str = ",", header: bool = True, skip_bad_lines: bool = False,
                   max_rows: Optional[int] = None, chunk_rows: int = CHUNK_ROWS,
                   info: Optional[Dict[str, Any]] = None, multi_hot: Sequence[str] = (),
                   list_delimiter: str = "|") -> Iterator[RawTable]:
    """:func:`read_delimited` in chunks of at most ``chunk_rows`` records (bounded memory): the
    same rows, in file order, and the same errors at the same lines (a chunk's bad lines are
    raised or counted in line order before it is yielded). When the file is read to its end,
    ``info`` (if given) receives the ``info`` of :func:`read_delimited`."""
    if not categorical:
        raise DataError(path, None, "categorical", "the csv schema needs at least one categorical column")
    unknown = [c for c in multi_hot if c not in categorical]
    if unknown:
        raise DataError(path, None, "multi_hot", f"multi-hot column(s) {', '.join(map(repr, unknown))} are not "
                                                 f"categorical columns of the schema ({';'.join(categorical)})")
    if len(list_delimiter) != 1 or (multi_hot and list_delimiter == delimiter):
        raise DataError(path, None, "list_delimiter", f"must be one character other than the delimiter "
                                                      f"{delimiter!r}, got {list_delimiter!r}")
    records = _records(path, iter_lines(path), delimiter)
    head: Optional[List[str]] = None
    if header:
        try:
            first = next(records, None)
        except _Unterminated as u:
            raise DataError(path, 1, None, f"unterminated quote in the header (the file ends at line {u.args[1]})"
                            ) from None
        if first is None:
            raise DataError(path, 1, None, "empty file: no header")
        if isinstance(first[2], DataError):
            raise first[2]
        head = [h.strip() for h in first[2]]
    li = _resolve(path, head, label, "label")
    di = [_resolve(path, head, c, "dense") for c in dense]
    ci = [_resolve(path, head, c, "categorical") for c in categorical]
    width = len(head) if head is not None else None
    need = max([li] + di + ci) + 1
    names_d = [c if header else f"col{c}" for c in dense] or []
    names_c = [c if header else f"col{c}" for c in categorical]
    sel = [li] + di + ci
    label_name = label if header else f"col{label}"

    def convert(rows: List[List[str]], linenos: List[int]) -> RawTable:
        return _convert(path, rows, linenos, errors, bad, sel, len(di), label_name, names_d, names_c,
                        [c if header else f"col{c}" for c in multi_hot], list_delimiter)

    bad = BadLines(skip_bad_lines)
    errors: dict = {}  # line -> first DataError of that line; raised/counted in line order
    fatal: Optional[DataError] = None  # an unterminated quote: raised after the bad lines before it
    rows: List[List[str]] = []
    linenos: List[int] = []  # the first line of each record
    total = kept = 0
    seen_error = False
    try:
        for n, end, row in records:
            if isinstance(row, DataError):
                errors[n] = row
                seen_error = True
                continue
            span = f" (a quoted field runs from line {n} to line {end})" if end > n else ""
            if width is not None and len(row) != width:
                errors[n] = DataError(path, n, head[len(row)] if len(row) < width else f"#{width + 1}",
                                      f"expected {width} fields (delimiter {delimiter!r}), got {len(row)}{span}")
                seen_error = True
                continue
            if len(row) < need:
                errors[n] = DataError(path, n, f"#{len(row) + 1}",
                                      f"expected at least {need} fields (delimiter {delimiter!r}), got {len(row)}"
                                      f"{span}")
                seen_error = True
                continue
            rows.append(row)
            linenos.append(n)
            total += 1
            if max_rows is not None and total >= max_rows:
                break
            if len(rows) >= chunk_rows:
                t = convert(rows, linenos)
                rows, linenos = [], []
                kept += len(t)
                if len(t):
                    yield t
    except _Unterminated as u:
        start, end, k = u.args
        name = head[k - 1] if head is not None and k <= len(head) else f"#{k}"
        fatal = DataError(path, start, name, f"unterminated quote: the quoted field opened on line {start} is never "
                                             f"closed (the file ends at line {end})")
    if not total and not seen_error and head is None and fatal is None:
        raise DataError(path, 1, None, "empty file: no rows")
    t = convert(rows, linenos)
    if fatal is not None:  # the rest of the file is inside the quote: not a line to skip
        raise fatal
    bad.check_rows(path, kept + len(t))
    if len(t):
        yield t
    if info is not None:
        info.update({"format": "csv", "path": str(path), "schema": {
            "label": label, "dense": list(dense), "categorical": list(categorical), "delimiter": delimiter,
            "header": bool(header), **({"multi_hot": list(multi_hot), "list_delimiter": list_delimiter}
                                       if multi_hot else {})}, **bad.info()})


def read_delimited(path: str, label: str = "label", dense: Sequence[str] = (), categorical: Sequence[str] = (),
                   delimiter: str = ",", header: bool = True, skip_bad_lines: bool = False,
                   max_rows: Optional[int] = None, multi_hot: Sequence[str] = (),
                   list_delimiter: str = "|") -> RawTable:
    """Read a delimited file with the given schema into a :class:`RawTable` (``multi_hot``:
    the categorical columns holding ``list_delimiter``-separated lists).

    Raises:
        DataError: naming file, line and field: wrong field count, a label other than 0/1,
            a non-numeric dense value, a schema column absent from the header or named
            twice in it, no categorical column, a missing or empty file, a quote never
            closed (at the line where it opened, also with ``skip_bad_lines``). A record
            whose quoted field spans lines is reported at its first line.
    """
    info: Dict[str, Any] = {}
    return concat_tables(list(iter_delimited(path, label, dense, categorical, delimiter, header, skip_bad_lines,
                                             max_rows, info=info, multi_hot=multi_hot,
                                             list_delimiter=list_delimiter)), info)
