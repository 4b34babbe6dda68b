"""Memory-mapped ``.npy`` arrays read from a worker thread: torch views of the maps, and the
release of their touched pages.

A batch is assembled in a worker thread (:mod:`~umec_torchrec.data.prefetch`) while the
training step runs. numpy's fancy indexing holds the GIL for the whole gather, page faults
included, and so stalls the step's Python dispatch; a torch ``index_select`` and a ``madvise``
called through ``ctypes`` release it. :func:`torch_view` gives a map as a tensor that
``index_select`` can read (the unsigned id dtypes as the signed dtype of their width, with the
mask that widens them back), and :class:`PageRelease` drops maps' resident pages.

Example::

    col = np.load("train_ids_0.npy", mmap_mode="c")      # uint16 [N]
    view, mask = torch_view(col)                          # int16 [N], 0xFFFF
    ids = view.index_select(0, rows).long() & mask        # int64 [B], the stored values
    PageRelease([col]).release()                          # col's pages leave the RSS
"""

from __future__ import annotations

import ctypes
import mmap
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch

__all__ = ["PageRelease", "is_mapped", "torch_view"]

#: unsigned dtype -> (the signed dtype of its width, the mask that widens it back to its value)
_SIGNED = {np.dtype(np.uint16): (np.int16, 0xFFFF), np.dtype(np.uint32): (np.int32, 0xFFFFFFFF)}


def is_mapped(arr: np.ndarray) -> bool:
    """Whether ``arr`` lies in a memory map (``np.load(..., mmap_mode=...)`` or a view of one)."""
    return getattr(arr, "_mmap", None) is not None


def torch_view(arr: np.ndarray) -> Tuple[torch.Tensor, Optional[int]]:
    """``arr`` (a writable array, e.g. a copy-on-write map) as a tensor sharing its memory.

    Returns:
        ``(view, mask)``: for ``uint16`` / ``uint32`` the bits as ``int16`` / ``int32`` and the
        mask with which ``view.long() & mask`` is the stored value; otherwise ``arr`` itself
        and ``None``.
    """
    signed = _SIGNED.get(arr.dtype)
    if signed is None:
        return torch.from_numpy(arr), None
    return torch.from_numpy(arr.view(signed[0])), signed[1]


def _libc_madvise():
    try:
        fn = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn


_MADVISE = _libc_madvise()


class PageRelease:
    """Drops the resident pages of the maps of some arrays (``madvise(MADV_DONTNEED)``).

    The maps must be read-only in effect (``mmap_mode="r"`` or ``"c"`` never written): their
    pages are clean, so they leave the process's RSS but stay in the page cache, and touching
    them again is a minor fault, not a read. The call goes through ``ctypes`` (the GIL is
    released); where libc is not reachable, through ``mmap.madvise``. Arrays without a map
    are ignored.

    Args:
        arrays: ``np.load(..., mmap_mode=...)`` arrays (or views of them).
    """

    def __init__(self, arrays: Sequence[np.ndarray]) -> None:
        self._maps: List[mmap.mmap] = []
        self._regions: List[Optional[Tuple[int, int]]] = []  # (address, length); None: mmap.madvise
        for a in arrays:
            m = getattr(a, "_mmap", None)
            if m is None or any(m is x for x in self._maps):
                continue
            self._maps.append(m)
            region = None
            if _MADVISE is not None and len(m):
                try:
                    buf = (ctypes.c_char * len(m)).from_buffer(m)  # a writable (copy-on-write) map
                except TypeError:  # a read-only map
                    buf = None
                if buf is not None:
                    region = (ctypes.addressof(buf), len(m))
                    del buf  # the address stays valid while the map lives (held in self._maps)
            self._regions.append(region)

    def __len__(self) -> int:
        return len(self._maps)

    def release(self) -> None:
        """Drop the pages now."""
        for m, region in zip(self._maps, self._regions):
            if region is not None:
                _MADVISE(region[0], region[1], mmap.MADV_DONTNEED)
            else:
                m.madvise(mmap.MADV_DONTNEED)
