"""File I/O of the package: atomic writes (temp file in the same directory, fsync, rename),
JSON, and the byte blobs that carry Python state through a DCP checkpoint."""

from __future__ import annotations

import io
import json
import os
import tempfile
from typing import Any, Callable

__all__ = ["atomic_write", "write_json", "read_json", "to_blob", "from_blob"]


def atomic_write(path: str, write: Callable[[Any], None], mode: str = "w") -> None:
    """Write ``path`` atomically: ``write(f)`` fills a temp file that is renamed over ``path``.

    A crash leaves either the old file or the new one, never a torn one.
    """
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=d, prefix=".tmp-" + os.path.basename(path) + ".")
    try:
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def write_json(path: str, obj: Any) -> None:
    """Atomically write ``obj`` as indented JSON."""
    atomic_write(path, lambda f: (json.dump(obj, f, indent=2, sort_keys=False), f.write("\n")))


def read_json(path: str) -> Any:
    """Read JSON, with an error that names the file on a missing or corrupt file."""
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such file") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: corrupt JSON ({e})") from None


def to_blob(obj: Any) -> bytes:
    """``obj`` (tensors, dicts, lists, numbers) as bytes via ``torch.save``: a DCP leaf that
    loads whatever its template holds (e.g. the UMEC state, the loop progress).

    Example::

        assert from_blob(to_blob({"s": torch.zeros(3)}))["s"].shape == (3,)
    """
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def from_blob(blob: bytes) -> Any:
    """The object of :func:`to_blob` (trusted input: a checkpoint this package wrote)."""
    import torch

    return torch.load(io.BytesIO(blob), weights_only=False)
