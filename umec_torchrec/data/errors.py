"""The one error type of the data readers: :class:`DataError` names file, line and field;
:func:`shown` is how every reader quotes a value from the file in a message."""

from __future__ import annotations

import os
from typing import Any, Optional

#: values longer than this many characters are cut in messages (see :func:`shown`)
SHOWN_CHARS = 60


def shown(value: Any, limit: int = SHOWN_CHARS) -> str:
    """``value`` quoted for an error message: its ``repr`` when short, else the ``repr`` of
    its first ``limit`` characters followed by ``...`` and the full length, so that a 2 MB
    field does not become a 2 MB message.

    Args:
        value: the offending text (anything else is turned into text with ``str``).
        limit: the most characters shown.

    Example::

        shown("x1")        # "'x1'"
        shown("9" * 10**6) # "'999...999'... (1000000 characters)"
    """
    s = value if isinstance(value, str) else str(value)
    if len(s) <= limit:
        return repr(s)
    return f"{s[:limit]!r}... ({len(s)} characters)"


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
