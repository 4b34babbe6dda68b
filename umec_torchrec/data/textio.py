"""Line-oriented file access shared by the text readers: plain or gzip (detected by magic
bytes), errors as :class:`DataError` with the line (and the byte, for invalid UTF-8), and
the bad-line policy."""

from __future__ import annotations

import gzip
import io
import os
import re
import zlib
from typing import Any, Dict, Iterator, List, Tuple

from umec_torchrec.data.errors import DataError

GZIP_MAGIC = b"\x1f\x8b"


def check_file(path: str) -> str:
    """``path`` as str if it is a readable regular file, else :class:`DataError`."""
    p = os.fspath(path)
    if not os.path.exists(p):
        raise DataError(p, None, None, f"no such file: {p}")
    if os.path.isdir(p):
        raise DataError(p, None, None, f"{p} is a directory, expected a file")
    return p


def is_gzip(path: str) -> bool:
    """Whether ``path`` starts with the gzip magic bytes (opens it: not for a pipe, whose
    bytes would be consumed; :func:`iter_lines` peeks on its one stream instead)."""
    with open(path, "rb") as f:
        return f.read(2) == GZIP_MAGIC


def _open_sniffed(path: str) -> Any:
    """``path`` opened once for binary reading, gunzipped when it starts with the gzip magic;
    the sniffing peeks into the buffer, so nothing of a pipe (``<(cat file)``) is lost."""
    f = open(path, "rb")
    if f.peek(2)[:2] == GZIP_MAGIC:
        g = gzip.GzipFile(fileobj=f, mode="rb")
        g.myfileobj = f  # closed with it
        return g
    return f


#: a character that only ``errors="surrogateescape"`` decoding produces: an undecodable byte
_ESCAPED = re.compile("[\udc80-\udcff]")


def _not_utf8(path: str, lineno: int, line: str, offset: int, gz: bool) -> DataError:
    """The error of a line holding an undecodable byte (``line`` decoded with
    ``surrogateescape`` and ``offset`` the byte offset of its start): the reason the strict
    codec gives, the byte inside the line (1-based) and the file offset (0-based)."""
    raw = line.encode("utf-8", "surrogateescape")
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as e:
        at, why = e.start, e.reason
    else:  # pragma: no cover - a line with an escaped byte never decodes
        at, why = 0, "undecodable byte"
    where = "uncompressed data" if gz else "file"
    return DataError(path, lineno, None, f"not UTF-8 text: {why} 0x{raw[at]:02x} at byte {at + 1} of the line "
                                         f"(byte offset {offset + at} of the {where}, counting from 0)")


def iter_lines(path: str, skip: int = 0) -> Iterator[Tuple[int, str]]:
    """Yield ``(line_number, line)`` (1-based, without the line end) of a text or gzip file.

    Lines end at ``\\n``, ``\\r\\n`` or ``\\r``. Decoding keeps undecodable bytes
    (``surrogateescape``) so that an invalid byte is reported on its own line and at its own
    byte offset, whatever the decoder's chunk size.

    Raises:
        DataError: missing file, empty file (line 1), a truncated or corrupt gzip stream
            (naming the line where reading failed), invalid UTF-8 (naming the line, the byte
            in the line and the byte offset in the file, of the uncompressed data for gzip).
    """
    p = check_file(path)
    raw = _open_sniffed(p)
    gz = isinstance(raw, gzip.GzipFile)
    n = 0
    offset = 0  # byte offset of the current line's start
    try:
        with io.TextIOWrapper(raw, encoding="utf-8", errors="surrogateescape", newline="") as f:
            for n, line in enumerate(f, start=1):
                if line.isascii():
                    size = len(line)
                else:
                    if _ESCAPED.search(line):
                        raise _not_utf8(p, n, line, offset, gz)
                    size = len(line.encode("utf-8"))
                if n > skip:
                    yield n, line.rstrip("\r\n")
                offset += size
    except EOFError:
        raise DataError(p, n + 1, None, "truncated gzip file (compressed stream ended early)") from None
    except (gzip.BadGzipFile, zlib.error, OSError) as e:
        raise DataError(p, n + 1, None, f"corrupt gzip data ({e})") from None
    if n == 0:
        raise DataError(p, 1, None, "empty file: no rows")


class BadLines:
    """The bad-line policy: raise (default) or skip, count and keep a few examples."""

    def __init__(self, skip: bool, max_examples: int = 5) -> None:
        self.skip = bool(skip)
        self.count = 0
        self.examples: List[str] = []
        self.max_examples = max_examples

    def __call__(self, err: DataError) -> None:
        """Handle one bad line: raise ``err`` unless skipping."""
        if not self.skip:
            raise err
        self.count += 1
        if len(self.examples) < self.max_examples:
            self.examples.append(str(err))

    def info(self) -> Dict[str, Any]:
        return {"bad_lines": self.count, "bad_line_examples": list(self.examples)}

    def check_rows(self, path: str, n_rows: int) -> None:
        """Raise when nothing usable was read."""
        if n_rows == 0:
            raise DataError(path, None, None, f"no valid rows ({self.count} bad lines skipped)")
