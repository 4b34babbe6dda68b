"""The one error type of the data readers: :class:`DataError` names file, line and field."""

from __future__ import annotations

import os
from typing import Optional


class DataError(ValueError):
    """Bad input data or a bad data spec.

    Attributes:
        path: the offending file (or the spec string for spec errors), or ``None``.
        line: 1-based line number in ``path``, or ``None`` when the error is not tied to a line.
        field: the field name (``"label"``, ``"I3"``, ``"C7"``, ...), or ``None``.
        reason: the bare reason, without the location prefix.

    ``str(err)`` reads like ``"criteo_sample.tsv.gz line 17, field I3: 'x1' is not an integer"``
    (the file's base name; ``err.path`` keeps the full path). Spec errors show the whole
    spec string (``full_path=True``).
    """

    def __init__(self, path: Optional[str], line: Optional[int], field: Optional[str], reason: str,
                 full_path: bool = False) -> None:
        self.path = None if path is None else str(path)
        self.full_path = full_path
        self.line = line
        self.field = field
        self.reason = reason
        super().__init__(self._format())

    def _format(self) -> str:
        where = []
        if self.path is not None:
            where.append(self.path if self.full_path else (os.path.basename(self.path) or self.path))
        if self.line is not None:
            where.append(f"line {self.line}")
        loc = " ".join(where)
        if self.field is not None:
            loc = f"{loc}, field {self.field}" if loc else f"field {self.field}"
        return f"{loc}: {self.reason}" if loc else self.reason

    def __reduce__(self):  # picklable across worker processes
        return (DataError, (self.path, self.line, self.field, self.reason, self.full_path))
