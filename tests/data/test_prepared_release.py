"""The touched file pages of a prepared split's memory maps are released batch by batch."""
import os

import numpy as np
import torch

from helpers.files import resident_kib
from umec_torchrec.data.prepared import ColumnIds


def _maps(tmp_path, rows: int):
    ids_path, dense_path = str(tmp_path / "ids.npy"), str(tmp_path / "dense.npy")
    np.save(ids_path, np.arange(rows, dtype=np.int64))
    np.save(dense_path, np.arange(rows, dtype=np.float64))
    return (os.path.realpath(ids_path), np.load(ids_path, mmap_mode="c"),
            os.path.realpath(dense_path), np.load(dense_path, mmap_mode="c"))


def test_gathers_release_the_maps_pages(tmp_path):
    """Generated data: two 32 MiB maps (an id column and a dense one the batch reads after the
    ids) read in random batches keep their RSS bounded by one batch.

    The id column is released right after its gather, the dense map at the next gather; a
    fault may map a 2 MiB folio (tmpfs) or 16 pages (fault-around) per touched row: 8 rows
    a batch stay well under 20 MiB, where the whole 64 MiB is resident without the release.
    """
    ids_file, col, dense_file, dense = _maps(tmp_path, 4 << 20)
    ids = ColumnIds([col], [dense], resident_cap=0)  # every batch: released
    g = torch.Generator().manual_seed(0)
    worst_ids = worst_dense = 0
    for _ in range(64):
        rows = torch.randint(0, col.shape[0], (8,), generator=g)
        got = ids[rows]
        worst_ids = max(worst_ids, resident_kib(ids_file))
        assert torch.equal(got[:, 0], rows)  # values survive the releases (pages re-read)
        assert torch.equal(torch.from_numpy(dense[rows.numpy()]), rows.double())  # the batch's dense read
        worst_dense = max(worst_dense, resident_kib(dense_file))
    assert ids.releases == 64 and len(ids.maps) == 2
    assert worst_ids < 4 << 10 and worst_dense < 20 << 10


def test_release_can_be_turned_off(tmp_path):
    """Generated data: resident_cap=None never releases: the pages stay resident (the control)."""
    ids_file, col, _, dense = _maps(tmp_path, 4 << 20)
    ids = ColumnIds([col], [dense], resident_cap=None)
    g = torch.Generator().manual_seed(0)
    for _ in range(64):
        ids[torch.randint(0, col.shape[0], (64,), generator=g)]
    assert ids.releases == 0
    assert resident_kib(ids_file) > 12 << 10  # a 32 MiB column read at random rows


def test_the_cap_releases_only_when_the_maps_could_pass_it(tmp_path):
    """Generated data, two 32 MiB maps: under a 128 MiB cap nothing is ever released (they fit
    whole); under a 40 MiB cap, with batches of 4 rows (each may map a 2 MiB folio: 8 MiB a
    map), they are released every second batch once the bound passes the cap, and the
    resident pages stay under it."""
    ids_file, col, dense_file, dense = _maps(tmp_path, 4 << 20)
    g = torch.Generator().manual_seed(0)
    fits = ColumnIds([col], [dense], resident_cap=128 << 20)
    for _ in range(40):
        rows = torch.randint(0, col.shape[0], (64,), generator=g)
        assert torch.equal(fits[rows][:, 0], rows)
    assert fits.releases == 0 and resident_kib(ids_file) > 24 << 10  # mapped whole
    fits.release()  # the same maps: start the capped reader from nothing resident
    capped = ColumnIds([col], [dense], resident_cap=40 << 20)
    worst = 0
    for _ in range(40):
        rows = torch.randint(0, col.shape[0], (4,), generator=g)
        assert torch.equal(capped[rows][:, 0], rows)
        dense[rows.numpy()].sum()
        worst = max(worst, resident_kib(ids_file) + resident_kib(dense_file))
    assert capped.releases == 19  # after batches 3, 5, ..., 39: 16 MiB a batch, 48 > 40
    assert worst < 40 << 10
