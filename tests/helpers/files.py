"""File-tree helpers for the bad-input and integrity tests."""

from __future__ import annotations

import hashlib
import os


def snapshot(root) -> dict:
    """``{relative path: SHA-256}`` of every file under ``root`` (to prove nothing was touched)."""
    out = {}
    for d, _, files in os.walk(root):
        for f in files:
            p = os.path.join(d, f)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, root)] = hashlib.sha256(fh.read()).hexdigest()
    return out
