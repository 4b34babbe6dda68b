"""The train/valid/test split of ``umec_torchrec.data`` (issue 11, section 1).

Every source goes through :func:`~umec_torchrec.data.split.split_rows`; these tests check,
per source, that the three splits are disjoint and cover the rows, that their sizes
follow the fractions, that a time-ordered split keeps file order, that the test rows do
not depend on ``valid_fraction``, that test labels do not leak into train/valid, that the
vocabulary is built on train only, and that bad values fail clearly.

Generated files carry a row id the test can read back (a dense column, or a combination
of categorical values); each test says whether it uses real data (``../shared/data``,
skipped when absent) or generated data.
"""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest
import torch

from umec_torchrec.data import DataError, DataOptions, load_data
from umec_torchrec.data import testing as T
from umec_torchrec.data.split import split_counts, split_indices, split_rows
from umec_torchrec.data.synthetic import generate

N = 200  # rows of every generated file


# ---------------------------------------------------------------- generated sources with row ids

def _criteo(tmp_path, labels=None):
    """Criteo TSV whose I1 is the row index (read back through log1p)."""
    lines = T.criteo_lines(N, 3)
    out = []
    for i, line in enumerate(lines):
        f = line.split("\t")
        f[1] = str(i)
        if labels is not None:
            f[0] = str(int(labels[i]))
        out.append("\t".join(f))
    p = tmp_path / "rows.tsv.gz"
    with gzip.open(p, "wt") as fh:
        fh.write("".join(line + "\n" for line in out))
    return f"criteo:{p}"


def _criteo_ids(part, bundle):
    return np.rint(np.expm1(part.dense[:, 0].double().numpy())).astype(np.int64)


def _csv(tmp_path, labels=None):
    """csv whose ``id`` column (a dense feature here) is the row index."""
    p = T.write_csv(tmp_path / "rows.csv", rows=N, seed=2)
    if labels is not None:
        lines = p.read_text().splitlines()
        for i in range(N):
            f = lines[i + 1].split(",")
            f[1] = str(int(labels[i]))
            lines[i + 1] = ",".join(f)
        p.write_text("\n".join(lines) + "\n")
    return f"csv:{p},label=y,dense=id;price,categorical=user;item"


_csv_ids = _criteo_ids


def _npy(tmp_path, labels=None):
    """TorchRec .npy days whose (pre-transformed float) dense column 0 is the row index."""
    d = T.write_criteo_npy(tmp_path / "npy", days=(0, 1), rows_per_day=N // 2, seed=4)
    for k in (0, 1):
        dense = np.load(d / f"day_{k}_dense.npy")
        dense[:, 0] = np.arange(k * N // 2, (k + 1) * N // 2, dtype=np.float32)
        np.save(d / f"day_{k}_dense.npy", dense)
        if labels is not None:
            np.save(d / f"day_{k}_labels.npy", labels[k * N // 2:(k + 1) * N // 2].reshape(-1, 1).astype(np.int32))
    return f"criteo-npy:{d}"


def _npy_ids(part, bundle):
    return np.rint(part.dense[:, 0].double().numpy()).astype(np.int64)


# row i is the combination _COMBO[i] of three 6-value fields (216 >= N distinct combinations,
# in random order, so that every value also occurs among the first rows)
_COMBO = np.random.default_rng(6).permutation(216)[:N]
_ROW_OF_COMBO = {int(c): i for i, c in enumerate(_COMBO)}


def _libsvm(tmp_path, labels=None):
    """One-hot libsvm whose three 6-value fields spell a distinct base-6 code per row."""
    rng = np.random.default_rng(5)
    lab = rng.random(N) < 0.4 if labels is None else labels
    lines = []
    for i in range(N):
        c = int(_COMBO[i])
        digits = (c // 36, (c // 6) % 6, c % 6)
        lines.append(f"{int(lab[i])} " + " ".join(f"{6 * k + v}:1" for k, v in enumerate(digits)))
    p = tmp_path / "rows.libsvm"
    p.write_text("\n".join(lines) + "\n")
    return f"libsvm:{p}"


def _libsvm_ids(part, bundle):
    voc = bundle.vocabulary
    s = part.sparse.numpy()
    assert (s > 0).all(), "every digit value occurs in train, so none may be out of vocabulary"
    raw = np.stack([voc.kept[j][s[:, j] - 1] - 6 * j for j in range(3)], 1)  # global index -> digit
    return np.array([_ROW_OF_COMBO[int(c)] for c in raw[:, 0] * 36 + raw[:, 1] * 6 + raw[:, 2]], dtype=np.int64)


SOURCES = {"criteo": (_criteo, _criteo_ids), "csv": (_csv, _csv_ids), "criteo-npy": (_npy, _npy_ids),
           "libsvm": (_libsvm, _libsvm_ids)}


# ---------------------------------------------------------------- split_rows known answer

def test_split_rows_known_answer():
    """Generated (row counts only): sizes, disjoint cover, order, and the test rows of the old split."""
    assert split_counts(1000, 0.23, 0.1) == (670, 100, 230)
    assert split_counts(1000, 0.23, 0.0) == (770, 0, 230)
    assert split_counts(3, 0.23, 0.1) == (1, 1, 1)  # each asked-for split keeps a row
    assert split_counts(10, 0.5, 0.45) == (1, 4, 5)  # round(4.5) = 4 valid rows, train keeps one
    for n, tf, vf in [(1000, 0.23, 0.1), (777, 0.1, 0.3), (50, 0.2, 0.0), (19532, 0.23, 0.1)]:
        for seed in (0, 5):
            tr, va, te = split_rows(n, tf, vf, seed)
            assert np.array_equal(np.sort(np.concatenate([tr, va, te])), np.arange(n))
            assert (len(tr), len(va), len(te)) == split_counts(n, tf, vf)
            assert len(va) == round(n * vf) and len(te) == round(n * tf)
            # the test rows of the former two-way split (CTRData.split's randperm tail), in order
            perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).numpy()
            assert np.array_equal(te, perm[n - len(te):])
            tr0, te0 = split_indices(n, tf, seed)
            assert np.array_equal(te, te0) and np.array_equal(np.concatenate([tr, va]), tr0)
        tr, va, te = split_rows(n, tf, vf, seed=9, time_ordered=True)
        assert np.array_equal(np.concatenate([tr, va, te]), np.arange(n))  # train, then valid, then test


def test_split_rows_bad_values():
    """Generated (no data): out-of-range fractions and too few rows raise, naming the value."""
    for kw, match in [({"valid_fraction": -0.1}, "valid_fraction must be in \\[0, 1\\), got -0.1"),
                      ({"valid_fraction": 1.0}, "valid_fraction must be in"),
                      ({"valid_fraction": 0.8}, "valid_fraction \\+ test_fraction must be < 1, got 0.8 \\+ 0.23"),
                      ({"valid_fraction": float("nan")}, "got nan"),
                      ({"test_fraction": 0.0}, "test_fraction must be in \\(0, 1\\), got 0.0")]:
        args = {"test_fraction": 0.23, "valid_fraction": 0.1, **kw}
        with pytest.raises(ValueError, match=match):
            split_rows(100, **args)
    with pytest.raises(ValueError, match="need at least 3 rows for a train/valid/test split, got 2"):
        split_rows(2, 0.23, 0.1)
    assert [len(x) for x in split_rows(2, 0.23, 0.0)] == [1, 0, 1]


# ---------------------------------------------------------------- every source, both split kinds

@pytest.mark.parametrize("time_ordered", [False, True], ids=["random", "time"])
@pytest.mark.parametrize("source", sorted(SOURCES))
def test_three_way_split_per_source(tmp_path, source, time_ordered):
    """Generated files of every reader: disjoint cover, sizes, order, test rows as with valid 0."""
    write, ids_of = SOURCES[source]
    spec = write(tmp_path)
    opts = DataOptions(test_fraction=0.25, valid_fraction=0.15, split_seed=3, time_ordered=time_ordered)
    b = load_data(spec, opts)
    tr, va, te = (ids_of(p, b) for p in (b.train, b.valid, b.test))
    assert np.array_equal(np.sort(np.concatenate([tr, va, te])), np.arange(N))  # disjoint, cover all
    assert (len(tr), len(va), len(te)) == (120, 30, 50) == split_counts(N, 0.25, 0.15)
    exp_tr, exp_va, exp_te = split_rows(N, 0.25, 0.15, 3, time_ordered)
    assert np.array_equal(tr, exp_tr) and np.array_equal(va, exp_va) and np.array_equal(te, exp_te)
    if time_ordered:
        assert tr.max() < va.min() and va.max() < te.min()
        assert all(np.all(np.diff(x) > 0) for x in (tr, va, te))
    else:
        assert not np.all(np.diff(np.concatenate([tr, va, te])) > 0)  # shuffled
    # the same options with valid_fraction=0: the same test rows in the same order, train = train + valid
    b0 = load_data(spec, opts.replace(valid_fraction=0.0))
    assert np.array_equal(ids_of(b0.test, b0), te)
    assert torch.equal(b0.test.labels, b.test.labels) and torch.equal(b0.test.dense, b.test.dense)
    assert len(b0.valid) == 0
    assert np.array_equal(ids_of(b0.train, b0), np.concatenate([tr, va]))
    # the split is recorded
    split = json.loads(b.to_json())["split"]
    assert split == {"kind": "time_ordered" if time_ordered else "random", "seed": 3, "test_fraction": 0.25,
                     "valid_fraction": 0.15, "time_ordered": time_ordered,
                     "rows": {"train": 120, "valid": 30, "test": 50}}
    assert b.info["rows"] == {"total": N, "train": 120, "valid": 30, "test": 50}
    assert b.valid.info["split_name"] == "valid"


@pytest.mark.parametrize("source", sorted(SOURCES))
def test_test_labels_do_not_reach_train_or_valid(tmp_path, source):
    """Generated files of every reader: flipping every test label leaves train/valid/vocabulary unchanged."""
    write, ids_of = SOURCES[source]
    a_dir, b_dir = tmp_path / "a", tmp_path / "b"
    a_dir.mkdir()
    b_dir.mkdir()
    opts = DataOptions(test_fraction=0.3, valid_fraction=0.2, split_seed=1)
    a = load_data(write(a_dir), opts)
    labels = np.zeros(N, dtype=np.int64)
    for part in (a.train, a.valid, a.test):
        labels[ids_of(part, a)] = part.labels.numpy().astype(np.int64)
    _, _, te = split_rows(N, 0.3, 0.2, 1)
    flipped = labels.copy()
    flipped[te] = 1 - flipped[te]
    b = load_data(write(b_dir, labels=flipped), opts)
    assert torch.equal(b.test.labels, 1 - a.test.labels)  # the change did happen
    for x, y in ((a.train, b.train), (a.valid, b.valid)):
        assert torch.equal(x.dense, y.dense) and torch.equal(x.sparse, y.sparse) and torch.equal(x.labels, y.labels)
    assert a.table_sizes == b.table_sizes and a.info["ctr"]["train"] == b.info["ctr"]["train"]
    assert a.info["ctr"]["valid"] == b.info["ctr"]["valid"]


def test_synthetic_rows_follow_split_rows():
    """Generated synthetic data: each split holds exactly the generator's rows at split_rows' indices."""
    raw = generate(rows=1000, seed=2)
    for time_ordered in (False, True):
        b = load_data("synthetic:rows=1000,seed=2,split_seed=4", DataOptions(time_ordered=time_ordered))
        for part, rows in zip((b.train, b.valid, b.test), split_rows(1000, 0.23, 0.1, 4, time_ordered)):
            assert torch.equal(part.labels, torch.from_numpy(raw.labels[rows]).float())
        assert (len(b.train), len(b.valid), len(b.test)) == (670, 100, 230)
        assert b.info["split"]["kind"] == ("time_ordered" if time_ordered else "random")


def test_vocabulary_from_train_only(tmp_path):
    """Generated Criteo TSV: C1 values seen only in valid (or test) rows map to the OOV row 0;
    table sizes count train values only."""
    lines = T.criteo_lines(40, 0)
    for i, tag in ((32, "0000feed"), (37, "deadbeef")):  # time-ordered: rows 31..33 valid, 34..39 test
        parts = lines[i - 1].split("\t")
        parts[14] = tag
        lines[i - 1] = "\t".join(parts)
    p = tmp_path / "x.tsv"
    p.write_text("".join(line + "\n" for line in lines))
    b = load_data(f"criteo:{p}", DataOptions(time_ordered=True, test_fraction=0.15, valid_fraction=0.075))
    assert (len(b.train), len(b.valid), len(b.test)) == (31, 3, 6)
    assert int(b.valid.sparse[0, 0]) == 0 and int(b.test.sparse[2, 0]) == 0  # rows 32 and 37
    train_c1 = {line.split("\t")[14] for line in lines[:31]}
    assert b.table_sizes[0] == len(train_c1) + 1
    assert all(int(b.valid.sparse[k, 0]) > 0 for k in (1, 2) if lines[31 + k].split("\t")[14] in train_c1)


def test_valid_fraction_zero_is_the_former_split():
    """Generated synthetic data: valid_fraction=0 -> an empty valid split, the former train/test rows."""
    b = load_data("synthetic:rows=500,valid_fraction=0,split_seed=7")
    raw = generate(rows=500)
    tr, te = split_indices(500, 0.23, 7)
    assert torch.equal(b.train.labels, torch.from_numpy(raw.labels[tr]).float())
    assert torch.equal(b.test.labels, torch.from_numpy(raw.labels[te]).float())
    assert len(b.valid) == 0 and b.valid.sparse.shape == (0, 26) and b.valid.dense.shape == (0, 13)
    assert b.valid.table_sizes == b.train.table_sizes and list(b.valid.batches(64)) == []
    assert b.info["rows"] == {"total": 500, "train": 385, "valid": 0, "test": 115}
    assert b.info["ctr"]["valid"] is None and json.loads(b.to_json())["split"]["valid_fraction"] == 0.0


def test_split_option_inline_and_bad_values():
    """Generated synthetic data: valid_fraction inline in the spec; bad values name the option and value."""
    b = load_data("synthetic:rows=300,valid_fraction=0.2", DataOptions(valid_fraction=0.0))
    assert len(b.valid) == 60 and b.info["options"]["valid_fraction"] == 0.2
    for opts, reason in [(DataOptions(valid_fraction=-0.1), "must be in [0, 1), got -0.1"),
                         (DataOptions(valid_fraction=1.0), "must be in [0, 1), got 1.0"),
                         (DataOptions(valid_fraction=0.5, test_fraction=0.5), "must be < 1, got 0.5 + 0.5")]:
        with pytest.raises(DataError) as e:
            load_data("synthetic:rows=100", opts)
        assert e.value.field == "valid_fraction" and reason in str(e.value)
    with pytest.raises(DataError, match="valid_fraction.*bad value 'x'"):
        load_data("synthetic:rows=100,valid_fraction=x")
    with pytest.raises(DataError, match="valid_fraction \\+ test_fraction must be < 1, got 0.9 \\+ 0.23"):
        load_data("synthetic:rows=100,valid_fraction=0.9")


def test_too_few_rows_for_three_splits(tmp_path):
    """Generated 2-row csv: a three-way split is refused, naming the file and the row count."""
    p = T.write_csv(tmp_path / "two.csv", rows=2)
    spec = f"csv:{p},label=y,dense=price,categorical=user"
    with pytest.raises(DataError, match="two.csv: need at least 3 rows for a train/valid/test split, got 2"):
        load_data(spec)
    assert load_data(spec + ",valid_fraction=0").info["rows"] == {"total": 2, "train": 1, "valid": 0, "test": 1}


# ---------------------------------------------------------------- the real Criteo sample

@pytest.mark.parametrize("time_ordered", [False, True], ids=["random", "time"])
def test_criteo_sample_three_way(criteo_sample, time_ordered):
    """Real data: sizes, test rows as with valid_fraction=0, train+valid = the former train, and
    valid values unseen in train on the OOV row."""
    opts = DataOptions(time_ordered=time_ordered, split_seed=0)
    b = load_data(f"criteo:{criteo_sample}", opts)
    b0 = load_data(f"criteo:{criteo_sample}", opts.replace(valid_fraction=0.0))
    assert (len(b.train), len(b.valid), len(b.test)) == (13087, 1953, 4492) == split_counts(19532, 0.23, 0.1)
    assert b.info["split"]["rows"] == {"train": 13087, "valid": 1953, "test": 4492}
    assert torch.equal(b.test.labels, b0.test.labels) and torch.equal(b.test.dense, b0.test.dense)
    assert torch.equal(torch.cat([b.train.dense, b.valid.dense]), b0.train.dense)
    assert torch.equal(torch.cat([b.train.labels, b.valid.labels]), b0.train.labels)
    # raw values of the former train rows (its vocabulary, min_count=1, holds every one of them)
    s0 = b0.train.sparse.numpy()
    raw0 = np.stack([b0.vocabulary.kept[j][s0[:, j] - 1] for j in range(26)], 1)
    raw_tr, raw_va = raw0[:13087], raw0[13087:]
    unseen = np.stack([~np.isin(raw_va[:, j], raw_tr[:, j]) for j in range(26)], 1)
    assert unseen.sum() > 100  # the sample's long-tail fields do have valid-only values
    assert np.array_equal(b.valid.sparse.numpy() == 0, unseen)
    assert b.table_sizes == [len(np.unique(raw_tr[:, j])) + 1 for j in range(26)]


def test_ctrdata_split_three():
    """Generated synthetic data: CTRData.split_three keeps CTRData.split's test rows; valid comes out of its train."""
    d = load_data("synthetic:rows=400,valid_fraction=0").train  # 308 encoded rows
    tr0, te0 = d.split(0.25, seed=2)
    tr, va, te = d.split_three(0.25, 0.1, seed=2)
    assert (len(tr), len(va), len(te)) == (200, 31, 77)
    assert torch.equal(te.labels, te0.labels) and torch.equal(te.sparse, te0.sparse)
    assert torch.equal(torch.cat([tr.dense, va.dense]), tr0.dense)
