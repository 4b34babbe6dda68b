"""Writing an export directory atomically: under a temporary name next to it, renamed into place.

``out_dir`` is therefore always absent, the previous export, or complete. The refusal rules
(existing output without ``force``, a non-empty directory that is not an export) are those
of :func:`umec_torchrec.runs.check_out_dir`, the one check of every output directory.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from typing import Iterator

from umec_torchrec.export.manifest import MANIFEST
from umec_torchrec.runs import check_out_dir


def check_export_dir(out_dir: str, force: bool = False) -> str:
    """Refuse an existing ``out_dir`` (without ``force``) or one that is not an export
    (``FileExistsError``); returns the absolute path. Writes nothing.

    Example::

        check_export_dir("exports/c", force=True)
    """
    return check_out_dir(out_dir, force, marker=MANIFEST, what="output", kind="an export", resumable=False)


@contextlib.contextmanager
def atomic_directory(out_dir: str, force: bool = False) -> Iterator[str]:
    """Yield a fresh temporary directory next to ``out_dir``; on success rename it to ``out_dir``.

    An existing ``out_dir`` is refused (``FileExistsError``) unless ``force``; with ``force``
    it must be an export (holds ``manifest.json``) or empty, and it is replaced only after the
    new one is complete. On error the temporary directory is removed and ``out_dir`` untouched.

    Example::

        with atomic_directory("exports/c", force=True) as tmp:
            write_json(os.path.join(tmp, "manifest.json"), manifest)
    """
    out = check_export_dir(out_dir, force)
    parent = os.path.dirname(out)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=parent, prefix=f".{os.path.basename(out)}.tmp-")
    try:
        yield tmp
        old = None
        if os.path.exists(out):
            old = tempfile.mkdtemp(dir=parent, prefix=f".{os.path.basename(out)}.old-")
            os.rename(out, os.path.join(old, "x"))
        os.rename(tmp, out)
        if old:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


__all__ = ["check_export_dir", "atomic_directory"]
