"""Prepared data directories (issue 13, section 1): ``prepare_data`` streams a source once
into memory-mapped arrays that give exactly what ``load_data`` gives; ``prepared:DIR`` is
read through memory maps; torn or mismatched directories are refused; ``prepare`` is
atomic; the vocabulary travels with the run and the export.

Each test says whether it uses real data (``../shared/data``, skipped when absent) or
generated data (small files written to ``tmp_path`` by :mod:`umec_torchrec.data.testing`).
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from umec_torchrec.data import DataError, Vocabulary, load_data
from umec_torchrec.data import testing as T
from umec_torchrec.data.criteo import iter_criteo_tsv, read_criteo_tsv
from umec_torchrec.data.delimited import iter_delimited, read_delimited
from umec_torchrec.data.libsvm import iter_libsvm, read_libsvm
from umec_torchrec.data.prepared import ColumnIds, load_prepared, prepare_data
from umec_torchrec.data.split import split_rows
from umec_torchrec.data.vocab import ValueCounts, id_dtype

SCHEMA = "label=y,dense=price;age,categorical=user;item"
SPLITS = ("train", "valid", "test")


def _same_bundle(a, b, exact_ctr: bool = False) -> None:
    """``b`` (prepared) holds exactly ``a``'s (load_data's) rows, vocabulary and split."""
    assert a.feature_names == b.feature_names and a.dense_names == b.dense_names
    assert a.table_sizes == b.table_sizes
    for s in SPLITS:
        x, y = getattr(a, s), getattr(b, s)
        assert len(x) == len(y)
        assert torch.equal(x.dense, y.dense), s
        assert torch.equal(x.labels, y.labels), s
        assert torch.equal(x.sparse, y.sparse[torch.arange(len(y))]), s
    va, vb = a.vocabulary, b.vocabulary
    assert (va.mode, va.min_count, va.hash_size, va.feature_names) == (vb.mode, vb.min_count, vb.hash_size,
                                                                       vb.feature_names)
    assert len(va.kept) == len(vb.kept) and all(np.array_equal(p, q) for p, q in zip(va.kept, vb.kept))
    for key in ("vocab", "table_sizes", "rows", "split", "bad_lines", "dense_transform", "options", "kind", "path"):
        assert a.info[key] == b.info[key], key
    for s in SPLITS:
        assert a.info["ctr"][s] == pytest.approx(b.info["ctr"][s], rel=1e-6)


# --- generated data -------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["criteo", "csv", "libsvm"])
@pytest.mark.parametrize("extra", ["min_count=2", "vocab=hash,hash_size=300,time_ordered=1"])
def test_prepared_equals_load_data_generated(tmp_path, kind, extra):
    """Generated files: chunks of 7 rows and buckets of 16 give the rows, vocabulary, split and info
    of load_data."""
    if kind == "criteo":
        spec = f"criteo:{T.write_criteo_tsv(tmp_path / 'c.tsv.gz', rows=120, seed=1)}"
    elif kind == "csv":
        spec = f"csv:{T.write_csv(tmp_path / 'x.csv', rows=90, seed=2)},{SCHEMA}"
    else:
        spec = f"libsvm:{T.write_libsvm(tmp_path / 'f.libsvm', rows=100, seed=3)}"
    spec = f"{spec},{extra}"
    man = prepare_data(spec, tmp_path / "p", chunk_rows=7, bucket_rows=16)
    a, b = load_data(spec), load_data(f"prepared:{tmp_path / 'p'}")
    _same_bundle(a, b)
    n = man["rows"]["total"]
    o = a.info["options"]
    want = split_rows(n, o["test_fraction"], o["valid_fraction"], o["split_seed"], o["time_ordered"])
    for s, rows in zip(SPLITS, want):
        assert np.array_equal(np.load(tmp_path / "p" / f"split_{s}.npy"), rows)
    assert man["id_dtypes"] == [str(id_dtype(s)) for s in a.table_sizes]
    assert not [x for x in os.listdir(tmp_path / "p") if x.startswith(".")]  # temporary arrays removed
    assert sorted(man["files"]) == sorted(x for x in os.listdir(tmp_path / "p") if x != "manifest.json")


def test_prepared_equals_load_data_criteo_npy(tmp_path):
    """Generated TorchRec day files (log-transformed and raw counts): prepare reads them in chunks
    from their memory maps and gives load_data's rows, vocabulary and split."""
    for log_dense in (True, False):
        d = T.write_criteo_npy(tmp_path / f"npy{log_dense}", days=(0, 1), rows_per_day=40, log_dense=log_dense)
        spec = f"criteo-npy:{d},max_rows=70,min_count=2"
        prepare_data(spec, tmp_path / f"p{log_dense}", chunk_rows=9, bucket_rows=1 if log_dense else 1000)
        _same_bundle(load_data(spec), load_data(f"prepared:{tmp_path / f'p{log_dense}'}"))


def test_prepare_reports_progress(tmp_path, monkeypatch):
    """Generated Criteo file: a line every PROGRESS_ROWS rows read and one per pass."""
    import umec_torchrec.data.prepared as P

    monkeypatch.setattr(P, "PROGRESS_ROWS", 50)
    lines = []
    f = T.write_criteo_tsv(tmp_path / "c.tsv", rows=120)
    prepare_data(f"criteo:{f},min_count=2", tmp_path / "p", chunk_rows=20, progress=lines.append)
    assert lines[:2] == ["read 60 rows", "read 100 rows"]
    assert lines[2] == "read 120 rows; counting values" and lines[3].startswith("vocabulary: ")


def test_chunked_readers_equal_whole_readers(tmp_path):
    """Generated files with bad lines in later chunks: the chunked readers give the same rows and
    the same bad-line count (skipping) or the same first error (raising)."""
    crit = T.write_criteo_tsv(tmp_path / "c.tsv", rows=60, replace={33: "1\tx", 47: "2" + "\t" * 39})
    csv = T.write_csv(tmp_path / "x.csv", rows=60, replace={25: "1,7,3.0,40,u1,i", 50: "2,2,1.0,3,u1,i"})
    svm = T.write_libsvm(tmp_path / "f.libsvm", rows=60, replace={40: "1 1:1 7:1"})
    readers = [
        (read_criteo_tsv, iter_criteo_tsv, (str(crit),), {}),
        (read_delimited, iter_delimited, (str(csv),), dict(label="y", dense=["price", "age"],
                                                           categorical=["user", "item"])),
        (read_libsvm, iter_libsvm, (str(svm),), {}),
    ]
    for whole, chunked, args, kw in readers:
        ref = whole(*args, skip_bad_lines=True, **kw)
        info = {}
        parts = list(chunked(*args, skip_bad_lines=True, chunk_rows=8, info=info, **kw))
        assert len(parts) > 3
        assert np.array_equal(np.concatenate([p.cats for p in parts]), ref.cats)
        assert np.array_equal(np.concatenate([p.labels for p in parts]), ref.labels)
        assert np.array_equal(np.concatenate([p.dense for p in parts]), ref.dense, equal_nan=True)
        assert info == ref.info and info["bad_lines"] >= 1
        with pytest.raises(DataError) as e1:
            whole(*args, **kw)
        with pytest.raises(DataError) as e2:
            list(chunked(*args, chunk_rows=8, **kw))
        assert str(e1.value) == str(e2.value) and e1.value.line > 8


def test_skip_bad_lines_counted_in_manifest_and_errors_as_today(tmp_path):
    """Generated Criteo file with two bad lines: without --skip-bad-lines prepare raises load_data's
    error (file, line, field) and leaves nothing; with it the manifest counts them."""
    f = T.write_criteo_tsv(tmp_path / "c.tsv.gz", rows=50, replace={12: "1\t" + "x\t" * 38 + "a", 30: "0\t1"})
    with pytest.raises(DataError) as ref:
        load_data(f"criteo:{f}")
    with pytest.raises(DataError) as got:
        prepare_data(f"criteo:{f}", tmp_path / "p", chunk_rows=5)
    assert str(got.value) == str(ref.value) and "line 12" in str(got.value) and "field I1" in str(got.value)
    assert sorted(os.listdir(tmp_path)) == ["c.tsv.gz"]  # no directory, no temp left
    man = prepare_data(f"criteo:{f},skip_bad_lines=1", tmp_path / "p", chunk_rows=5)
    assert man["bad_lines"] == 2 and man["info"]["bad_lines"] == 2 and man["rows"]["total"] == 48


def test_value_counts_equal_unique(tmp_path):
    """Generated ids: counts added in uneven chunks equal np.unique over all rows."""
    rng = np.random.default_rng(0)
    x = rng.integers(-5, 200000, size=(70000, 2))
    c = ValueCounts(2)
    for a, b in ((0, 10), (10, 30000), (30000, 70000)):
        c.add(x[a:b])
    for j, (u, n) in enumerate(c.totals()):
        ru, rn = np.unique(x[:, j], return_counts=True)
        assert np.array_equal(u, ru) and np.array_equal(n, rn)
    assert [id_dtype(s) for s in (1, 256, 257, 65537, 2**32 + 1)] == [np.uint8, np.uint8, np.uint16, np.uint32,
                                                                       np.int64]


def test_arrays_are_memory_maps_and_batches_partition_over_ranks(tmp_path):
    """Generated Criteo file: the splits' arrays are maps of the files (nothing copied), ids keep
    their on-disk dtype until a batch is built, and on 1, 2 and 3 ranks the ranks' rows of each
    step are exactly that step's global batch (nothing lost or seen twice)."""
    f = T.write_criteo_tsv(tmp_path / "c.tsv", rows=200, seed=4)
    prepare_data(f"criteo:{f}", tmp_path / "p")
    b = load_data(f"prepared:{tmp_path / 'p'}")
    tr = b.train
    assert isinstance(tr.sparse, ColumnIds)
    assert all(isinstance(c, np.memmap) and c.dtype == np.uint8 for c in tr.sparse.columns)
    dmap = np.load(tmp_path / "p" / "train_dense.npy", mmap_mode="r")
    assert tr.dense.shape == dmap.shape and tr.dense.untyped_storage().nbytes() == dmap.nbytes
    one = [(x.dense_features, x.sparse_features.values(), x.labels) for x in tr.batches(24, shuffle=True, seed=3)]
    for world in (2, 3):
        per = [list(tr.batches(24, shuffle=True, seed=3, rank=r, world_size=world)) for r in range(world)]
        assert all(len(p) == len(one) for p in per)
        for i, (dense, _, labels) in enumerate(one):
            got = torch.cat([per[r][i].dense_features for r in range(world)])
            assert torch.equal(got, dense) and torch.equal(torch.cat([per[r][i].labels for r in range(world)]), labels)
            ids = torch.cat([per[r][i].sparse_features.to_dict()["C3"].values() for r in range(world)])
            assert ids.dtype == torch.int64
            assert torch.equal(ids, one[i][1].reshape(26, -1)[2])


def test_a_rank_reads_only_its_rows(tmp_path):
    """Generated data: the id columns of rank 1 of 2 are indexed only at rank 1's rows."""
    f = T.write_criteo_tsv(tmp_path / "c.tsv", rows=100, seed=5)
    prepare_data(f"criteo:{f}", tmp_path / "p")
    tr = load_data(f"prepared:{tmp_path / 'p'}").train
    seen = []
    gather = tr.sparse.gather

    def recorded(j, rows, out):
        seen.append(rows.numpy().copy())
        gather(j, rows, out)

    tr.sparse.gather = recorded
    list(tr.batches(10, rank=1, world_size=2))
    assert len(seen) == 26 * (len(tr) // 10 + 1)  # every column of every batch went through gather
    rows = np.unique(np.concatenate(seen))
    n = len(tr)  # full batches: their second half; the last partial one: its second tensor_split part
    want = np.concatenate([np.arange(b * 10 + 5, b * 10 + 10) for b in range(n // 10)]
                          + [np.array_split(np.arange(n // 10 * 10, n), 2)[1]])
    assert n % 10 and len(want) < n
    assert np.array_equal(rows, want)


def test_torn_or_mismatched_directories_are_refused(tmp_path):
    """Generated data: no manifest, a torn manifest, a truncated or swapped array, another
    format, and an inline option that differs from the prepared one are each one clear error."""
    f = T.write_csv(tmp_path / "x.csv", rows=60)
    base = tmp_path / "p"
    prepare_data(f"csv:{f},{SCHEMA}", base)
    load_data(f"prepared:{base}")

    def refused(mutate, *needles, spec=None):
        import shutil

        d = tmp_path / "q"
        shutil.rmtree(d, ignore_errors=True)
        shutil.copytree(base, d)
        mutate(d)
        with pytest.raises(DataError) as e:
            load_data(spec or f"prepared:{d}")
        msg = str(e.value)
        assert "\n" not in msg and all(n in msg for n in needles), msg

    refused(lambda d: os.remove(d / "manifest.json"), "no manifest.json", "incomplete")
    refused(lambda d: (d / "manifest.json").write_text('{"kind": "umec-prepared-data", "files": {'),
            "manifest.json", "torn")
    refused(lambda d: open(d / "train_ids_1.npy", "r+b").truncate(100), "train_ids_1.npy", "truncated")

    def other_format(d):
        m = json.loads((d / "manifest.json").read_text())
        m["prepared_format"] = 99
        (d / "manifest.json").write_text(json.dumps(m))

    refused(other_format, "prepared_format", "99")

    def swapped(d):  # same size on disk, another dtype than the manifest says
        m = json.loads((d / "manifest.json").read_text())
        m["id_dtypes"][0] = "int8"
        (d / "manifest.json").write_text(json.dumps(m))

    refused(swapped, "train_ids_0.npy", "manifest.json says int8")
    refused(lambda d: None, "min_count", "prepared with", spec=f"prepared:{tmp_path / 'q'},min_count=4")
    with pytest.raises(DataError, match="no such prepared data directory"):
        load_data(f"prepared:{tmp_path / 'nothing'}")


def test_prepare_is_atomic_and_refuses_to_overwrite(tmp_path):
    """Generated data: an existing output is refused without --force, replaced whole with it; a
    non-empty directory that is not a prepared one is never deleted; a failure keeps the old one."""
    f = T.write_libsvm(tmp_path / "f.libsvm", rows=40)
    prepare_data(f"libsvm:{f}", tmp_path / "p")
    before = (tmp_path / "p" / "manifest.json").read_bytes()
    with pytest.raises(FileExistsError, match="already exists"):
        prepare_data(f"libsvm:{f}", tmp_path / "p")
    bad = T.write_libsvm(tmp_path / "bad.libsvm", rows=40, replace={20: "1 1:1"})
    with pytest.raises(DataError, match="line 20"):
        prepare_data(f"libsvm:{bad}", tmp_path / "p", force=True)
    assert (tmp_path / "p" / "manifest.json").read_bytes() == before
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".p.")]
    prepare_data(f"libsvm:{f},min_count=2", tmp_path / "p", force=True)
    assert load_prepared(str(tmp_path / "p")).info["options"]["min_count"] == 2
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError, match="not a prepared data directory"):
        prepare_data(f"libsvm:{f}", tmp_path / "other", force=True)
    assert (tmp_path / "other" / "keep.txt").exists()
    with pytest.raises(DataError, match="already prepared"):
        prepare_data(f"prepared:{tmp_path / 'p'}", tmp_path / "p2")


def test_leftovers_of_a_killed_prepare_are_removed(tmp_path):
    """Generated data: the temporary directory of a killed prepare (its pid no longer runs) is
    removed by the next prepare of the same output; a live process's is kept."""
    f = T.write_libsvm(tmp_path / "f.libsvm", rows=30)
    dead = tmp_path / ".p.tmp-999999999-abc"
    live = tmp_path / f".p.tmp-{os.getpid()}-abc"
    for d in (dead, live):
        (d / ".raw").mkdir(parents=True)
    prepare_data(f"libsvm:{f}", tmp_path / "p")
    assert not dead.exists() and live.exists()


def test_vocabulary_save_load_maps_raw_ids(tmp_path):
    """Generated Criteo file: the saved vocabulary maps hex ids to the rows the data holds."""
    f = T.write_criteo_tsv(tmp_path / "c.tsv", rows=80, seed=6)
    b = load_data(f"criteo:{f},min_count=2")
    b.vocabulary.save(str(tmp_path / "v.npz"))
    v = Vocabulary.load(str(tmp_path / "v.npz"))
    raw = read_criteo_tsv(str(f))
    assert np.array_equal(v.encode(raw.cats), b.vocabulary.encode(raw.cats))
    hexes = [line.split("\t")[1 + 13 + 4] for line in T.criteo_lines(80, seed=6)]
    vals = np.array([int(h, 16) if h else np.iinfo(np.int64).min for h in hexes], dtype=np.int64)
    assert np.array_equal(v.encode_column("C5", vals), b.vocabulary.encode(raw.cats)[:, 4])
    (tmp_path / "bad.npz").write_bytes(b"not a vocabulary")
    with pytest.raises(ValueError, match="bad.npz"):
        Vocabulary.load(str(tmp_path / "bad.npz"))


# --- real data ------------------------------------------------------------------------------------
def test_prepared_equals_load_data_real_criteo(tmp_path, criteo_sample):
    """Real data: the shared 19,532-row Criteo Kaggle sample, min_count=3, chunks of 4096 rows."""
    spec = f"criteo:{criteo_sample},min_count=3"
    prepare_data(spec, tmp_path / "p", chunk_rows=4096)
    _same_bundle(load_data(spec), load_data(f"prepared:{tmp_path / 'p'}"))


def test_prepared_equals_load_data_real_frappe(tmp_path, frappe_sample):
    """Real data: the shared Frappe validation split (libsvm), time-ordered, chunks of 10,000 rows."""
    spec = f"libsvm:{frappe_sample},time_ordered=1"
    prepare_data(spec, tmp_path / "p", chunk_rows=10000)
    _same_bundle(load_data(spec), load_data(f"prepared:{tmp_path / 'p'}"))



# --- prefetch ---------------------------------------------------------------------------------------
def test_prefetched_batches_equal_and_worker_stops(tmp_path):
    """Generated Criteo file: a prepared split prefetches its batches in a worker thread; they equal
    the batches assembled in the caller's thread; closing early stops the worker."""
    import threading

    from umec_torchrec.data.prefetch import THREAD_NAME

    f = T.write_criteo_tsv(tmp_path / "c.tsv", rows=150, seed=8)
    prepare_data(f"criteo:{f}", tmp_path / "p")
    tr = load_data(f"prepared:{tmp_path / 'p'}").train
    assert tr.prefetch > 0
    got = list(tr.batches(16, shuffle=True, seed=1, rank=0, world_size=2))
    tr.prefetch = 0
    want = list(tr.batches(16, shuffle=True, seed=1, rank=0, world_size=2))
    assert len(got) == len(want) > 3
    for a, b in zip(got, want):
        assert torch.equal(a.dense_features, b.dense_features) and torch.equal(a.labels, b.labels)
        assert torch.equal(a.sparse_features.values(), b.sparse_features.values())
    tr.prefetch = 2
    it = tr.batches(8)
    next(it)
    assert any(t.name == THREAD_NAME for t in threading.enumerate())
    it.close()
    assert not any(t.name == THREAD_NAME and t.is_alive() for t in threading.enumerate())


def test_prefetch_raises_the_producers_error():
    """No data: an error of the producer is raised to the consumer after the items before it."""
    from umec_torchrec.data.prefetch import prefetch

    def items():
        yield 1
        yield 2
        raise DataError("f.tsv", 3, "C1", "boom")

    out = []
    with pytest.raises(DataError, match="f.tsv line 3, field C1: boom"):
        for x in prefetch(items(), depth=1):
            out.append(x)
    assert out == [1, 2]
    with pytest.raises(ValueError, match="depth"):
        list(prefetch([1], depth=0))


def test_column_ids_index_like_a_tensor(tmp_path):
    """Generated columns of three dtypes: rows by LongTensor, bool mask, slice and list equal the
    int64 [N, F] tensor indexed alike; a single row is refused."""
    cols = [np.arange(10, dtype=np.uint8), np.arange(10, 20, dtype=np.uint16), np.arange(20, 30, dtype=np.int64)]
    ids = ColumnIds(cols)
    full = torch.from_numpy(np.stack([c.astype(np.int64) for c in cols], axis=1))
    assert ids.shape == (10, 3) and ids.dtype == torch.int64 and len(ids) == 10
    mask = torch.tensor([True, False] * 5)
    for index in (torch.tensor([3, 1, 3]), mask, slice(2, 9, 3), [0, 9]):
        assert torch.equal(ids[index], full[index]), index
    with pytest.raises(TypeError, match="single row"):
        ids[3]
    with pytest.raises(ValueError, match="different lengths"):
        ColumnIds([cols[0], cols[1][:5]])


# --- TorchRec's criteo-npy options -------------------------------------------------------------------
def test_criteo_npy_torchrec_options_equal_torchrec_pipe(tmp_path):
    """Generated TorchRec day files: num_embeddings_per_feature + split=last_day + vocab=identity give
    the rows of TorchRec's InMemoryBinaryCriteoIterDataPipe (train: days 0-1; val / test: the
    halves of day 2; ids mod the caps), in load_data and in a prepared directory."""
    from torchrec.datasets.criteo import DEFAULT_CAT_NAMES, InMemoryBinaryCriteoIterDataPipe

    d = T.write_criteo_npy(tmp_path / "npy", days=(0, 1, 2), rows_per_day=41, seed=9)
    caps = [7, 3] + [11] * 24
    spec = f"criteo-npy:{d},num_embeddings_per_feature={';'.join(map(str, caps))},split=last_day,vocab=identity"
    b = load_data(spec)
    assert b.table_sizes == caps and b.info["split"]["kind"] == "last_day"
    assert (len(b.train), len(b.valid), len(b.test)) == (82, 21, 20)
    for stage, part, days in (("train", b.train, (0, 1)), ("val", b.valid, (2,)), ("test", b.test, (2,))):
        files = [[str(d / f"day_{k}_{x}.npy") for k in days] for x in ("dense", "sparse", "labels")]
        pipe = InMemoryBinaryCriteoIterDataPipe(stage, *files, batch_size=1000, rank=0, world_size=1,
                                                hashes=caps)
        (ref,) = list(pipe)
        assert torch.equal(part.dense, ref.dense_features)
        assert torch.equal(part.labels, ref.labels.float())
        got = part.sparse[torch.arange(len(part))]
        for j, key in enumerate(DEFAULT_CAT_NAMES):
            assert torch.equal(got[:, j], ref.sparse_features[key].values().long()), (stage, key)
    prepare_data(spec, tmp_path / "p", chunk_rows=10, bucket_rows=8)
    p = load_data(f"prepared:{tmp_path / 'p'}")
    _same_bundle(b, p)
    assert p.vocabulary.mode == "identity" and p.vocabulary.table_sizes == caps


def test_criteo_npy_torchrec_options_bad_values(tmp_path):
    """Generated day files: a wrong number of caps, an unknown split, a last-day split of one day and
    identity without caps are each one clear error naming the field."""
    d = T.write_criteo_npy(tmp_path / "npy", days=(0,), rows_per_day=20)
    for spec, needle in ((f"criteo-npy:{d},num_embeddings_per_feature=3;4", "num_embeddings_per_feature"),
                         (f"criteo-npy:{d},split=halves", "split"),
                         (f"criteo-npy:{d},split=last_day", "at least two days"),
                         (f"criteo-npy:{d},vocab=identity", "one table size per feature")):
        with pytest.raises(DataError, match=needle):
            load_data(spec)
        with pytest.raises(DataError, match=needle):
            prepare_data(spec, tmp_path / "p")
        assert not (tmp_path / "p").exists()
    b = load_data(f"criteo-npy:{d},num_embeddings_per_feature=5")  # one cap for every table, default vocabulary
    assert max(b.table_sizes) <= 6 and b.info["num_embeddings_per_feature"] == [5] * 26


def test_parallel_criteo_parsing_equals_sequential(tmp_path):
    """Generated Criteo files: parsed by 2 worker processes in blocks of 7 lines, the rows, the
    bad-line count (skipping), the first error (raising), max_rows and a truncated gzip give
    what the sequential reader gives."""
    f = T.write_criteo_tsv(tmp_path / "c.tsv.gz", rows=80, seed=2, replace={20: "1\tx", 61: "0\t1\t2"})
    trunc = T.truncate_file(f, tmp_path / "t.tsv.gz", 0.6)

    def run(path, workers, **kw):
        info = {}
        try:
            parts = list(iter_criteo_tsv(str(path), chunk_rows=7, info=info, workers=workers, **kw))
        except DataError as e:
            return str(e)
        return (np.concatenate([p.cats for p in parts]), np.concatenate([p.dense for p in parts]),
                np.concatenate([p.labels for p in parts]), info)

    for path, kw in ((f, dict(skip_bad_lines=True)), (f, {}), (f, dict(skip_bad_lines=True, max_rows=40)),
                     (f, dict(max_rows=15)), (trunc, dict(skip_bad_lines=True)), (trunc, {})):
        a, b = run(path, 1, **kw), run(path, 2, **kw)
        if isinstance(a, str):
            assert a == b, kw
            continue
        assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1], equal_nan=True)
        assert np.array_equal(a[2], b[2]) and a[3] == b[3], kw
    assert run(f, 2, skip_bad_lines=True, max_rows=40)[3]["bad_lines"] == 1
    assert len(run(f, 2, max_rows=15)[2]) == 15
    spec = f"criteo:{f},skip_bad_lines=1,min_count=2"
    prepare_data(spec, tmp_path / "p", chunk_rows=9, workers=2)
    _same_bundle(load_data(spec), load_data(f"prepared:{tmp_path / 'p'}"))
