"""Torch views of memory-mapped id columns and the release of their pages (generated arrays)."""
import os

import numpy as np
import pytest
import torch

from helpers.files import resident_kib
from umec_torchrec.data.mapped import PageRelease, torch_view
from umec_torchrec.data.prepared import ColumnIds


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.uint32, np.int64])
def test_views_widen_to_the_stored_values(tmp_path, dtype):
    """Generated columns holding their dtype's largest values: a gather through the torch view
    (unsigned ids read as the signed dtype of their width, then masked) gives the stored values."""
    top = np.iinfo(dtype).max
    vals = np.array([0, 1, top, top - 1, top // 2 + 1, 7], dtype=dtype)
    np.save(tmp_path / "c.npy", vals)
    col = np.load(tmp_path / "c.npy", mmap_mode="c")
    view, mask = torch_view(col)
    got = view.index_select(0, torch.tensor([2, 4, 0, 3])).long()
    if mask is not None:
        got &= mask
    assert got.tolist() == [int(vals[i]) for i in (2, 4, 0, 3)]
    ids = ColumnIds([col, col])
    assert ids[torch.tensor([2, 5])].tolist() == [[int(vals[2])] * 2, [int(vals[5])] * 2]
    assert ids[1:4].tolist() == [[int(v)] * 2 for v in vals[1:4]]
    assert ids[torch.tensor([True, False, True, False, False, False])].tolist() == [[0, 0], [int(top)] * 2]


@pytest.mark.parametrize("mode", ["r", "c"])
def test_page_release_drops_resident_pages(tmp_path, mode):
    """A generated 16 MiB map read whole is resident; after the release it is not (read-only
    maps go through mmap.madvise, copy-on-write ones through libc), and the values survive."""
    path = str(tmp_path / "a.npy")
    np.save(path, np.arange(2 << 20, dtype=np.int64))
    a = np.load(path, mmap_mode=mode)
    assert int(a.sum()) == (2 << 20) * ((2 << 20) - 1) // 2
    real = os.path.realpath(path)
    assert resident_kib(real) > 12 << 10
    rel = PageRelease([a, a[10:], np.zeros(3)])  # one map (a view shares it), a plain array ignored
    assert len(rel) == 1
    rel.release()
    assert resident_kib(real) < 4 << 10
    assert int(a[123_456]) == 123_456
