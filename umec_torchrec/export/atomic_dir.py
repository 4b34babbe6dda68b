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
from umec_torchrec.io import plain_mode, raise_if_disk_full
from umec_torchrec.runs import check_out_dir, stale_pid_name


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
    remove_stale_temp(out)
    base, pid = os.path.basename(out), os.getpid()
    tmp = tempfile.mkdtemp(dir=parent, prefix=f".{base}.tmp-{pid}-")
    try:
        os.chmod(tmp, plain_mode(out, directory=True))  # mkdtemp's 0700: others could not read the export
        yield tmp
        old = None
        if os.path.exists(out):
            old = tempfile.mkdtemp(dir=parent, prefix=f".{base}.old-{pid}-")
            os.rename(out, os.path.join(old, "x"))
        os.rename(tmp, out)
        if old:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise_if_disk_full(e, out)
        raise


def remove_stale_temp(out_dir: str) -> None:
    """Remove ``.<out>.tmp-<pid>-*`` / ``.<out>.old-<pid>-*`` beside ``out_dir`` whose process
    no longer runs (left by a killed export); another live export's are kept."""
    out = os.path.abspath(out_dir)
    parent, base = os.path.dirname(out), os.path.basename(out)
    if not os.path.isdir(parent):
        return
    for n in os.listdir(parent):
        if stale_pid_name(n, f".{base}.tmp-") or stale_pid_name(n, f".{base}.old-"):
            shutil.rmtree(os.path.join(parent, n), ignore_errors=True)


__all__ = ["check_export_dir", "atomic_directory", "remove_stale_temp"]
