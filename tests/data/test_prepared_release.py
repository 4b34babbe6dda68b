"""The touched file pages of a prepared split's memory maps are released every few batches."""
import os

import numpy as np
import torch

from umec_torchrec.data.prepared import ColumnIds


def _resident_kib(path: str) -> int:
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


def test_gathers_release_the_maps_pages(tmp_path):
    """Generated data: a 32 MiB mapped column read in random batches keeps its RSS bounded.

    Without the release every page a batch touched stays resident (the whole file after a
    few passes); with it, at most ``release_every`` batches' pages are resident
    (2 x 1 row; a fault may map a 2 MiB folio around it on tmpfs: <= 4 MiB).
    """
    path = str(tmp_path / "ids.npy")
    np.save(path, np.arange(4 << 20, dtype=np.int64))
    col = np.load(path, mmap_mode="c")
    ids = ColumnIds([col], release_every=2)
    g = torch.Generator().manual_seed(0)
    for _ in range(64):
        rows = torch.randint(0, col.shape[0], (1,), generator=g)
        got = ids[rows]
        assert torch.equal(got[:, 0], rows)  # values survive the releases (pages re-read)
    assert ids.releases == 64 // 2 and len(ids.maps) == 1
    assert _resident_kib(os.path.realpath(path)) < 8 << 10  # ~28 MiB without the release


def test_release_can_be_turned_off(tmp_path):
    """Generated data: release_every=0 never releases."""
    path = str(tmp_path / "ids.npy")
    np.save(path, np.arange(1000, dtype=np.int64))
    ids = ColumnIds([np.load(path, mmap_mode="c")], release_every=0)
    for _ in range(8):
        ids[torch.arange(10)]
    assert ids.releases == 0
