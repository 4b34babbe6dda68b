"""Writing an export directory atomically: under a temporary name next to it, renamed into place.

``out_dir`` is therefore always absent, the previous export, or complete. The refusal rules
(existing output without ``force``, a non-empty directory that is not an export) are those
of :func:`umec_torchrec.runs.check_out_dir`, the one check of every output directory.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

from umec_torchrec.export.manifest import MANIFEST
from umec_torchrec.io import replaced_directory
from umec_torchrec.runs import check_out_dir, remove_stale_replacements


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
    remove_stale_replacements(out)
    with replaced_directory(out) as tmp:
        yield tmp


__all__ = ["check_export_dir", "atomic_directory"]
