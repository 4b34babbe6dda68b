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


def resident_kib(path: str) -> int:
    """Rss (KiB) of this process's mappings of ``path``, from /proc/self/smaps."""
    total, cur = 0, False
    with open("/proc/self/smaps") as f:
        for line in f:
            parts = line.split()
            if parts and not parts[0].endswith(":"):  # a mapping's header line
                cur = len(parts) >= 6 and parts[-1] == path
            elif cur and parts[0] == "Rss:":
                total += int(parts[1])
    return total
