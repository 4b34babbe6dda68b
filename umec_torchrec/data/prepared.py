"""Prepared data directories: a source encoded once (``umec prepare``), then read through
memory maps by every stage (the spec ``prepared:DIR``).

Layout of ``DIR`` (flat; every array a ``.npy`` file, in the row order of its split, which
is the order :func:`~umec_torchrec.data.load_data` gives the same spec and options)::

    {split}_dense.npy      float32 [n, D]   dense features, already transformed
    {split}_labels.npy     float32 [n]      0/1 labels
    {split}_ids_{j}.npy    uint8/uint16/uint32/int64 [n]   rows of feature j (the narrowest
                                            dtype that holds its table, :func:`~umec_torchrec.data.vocab.id_dtype`);
                                            for a multi-hot feature [nnz]: every id of every row
    {split}_offsets_{j}.npy  int64 [n + 1]  multi-hot feature j only: row i's ids are
                                            ids_{j}[offsets[i]:offsets[i + 1]]
    split_{split}.npy      int64 [n]        source row (0-based, in the order read) of each row
    vocabulary.npz         the vocabulary (:meth:`~umec_torchrec.data.vocab.Vocabulary.save`)
    manifest.json          written last: format, source spec, options, features, table sizes,
                           id dtypes, rows per split, bad lines, the bundle ``info``, the
                           multi-hot features (``multi_hot``: ids per split, the measured mean
                           ids per training row), and the size and SHA-256 of every other file

``split`` is ``train``, ``valid``, ``test``. A directory without ``manifest.json`` is
incomplete and refused; the directory is built under a temporary name next to ``DIR``
and renamed into place when complete.

Preparing reads the source once, in chunks (:func:`~umec_torchrec.data.loader.iter_raw`),
into temporary raw arrays on disk (dense float32, raw int64 values, labels), so that the
row count, hence the split, is known (a multi-hot feature: its ids and lengths); then it
counts the values of the training rows chunk by chunk
(:class:`~umec_torchrec.data.vocab.ValueCounts`); then it encodes the rows in file order
into temporary buckets of the split order and writes the outputs bucket by bucket
(sequential I/O only, whatever the split). The temporary and output arrays are read and
written with plain file reads and writes, not maps, so their pages stay in the page cache
and out of the process's resident memory. Memory: one chunk of parsed lines, the distinct
values of every feature (the vocabulary itself), 12 bytes a row for the split and its
inverse, and one bucket (:data:`BUCKET_ROWS` rows); never the whole table. Temporary disk:
about ``2 * (8 * (F + D) + 8)`` bytes a row at most, removed before the manifest is written.

Loading (:func:`load_prepared`) maps every array (``np.load(mmap_mode="c")``: read-only on
disk, pages loaded on first touch): a batch touches only its rows, ids keep their on-disk
width until :class:`ColumnIds` builds the batch's ``int64`` ids, and the splits' batches
are assembled ahead in a worker thread (``CTRData.prefetch``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Union

import numpy as np
import torch

from umec_torchrec.data.bundle import DataBundle
from umec_torchrec.data.dataset import CTRData
from umec_torchrec.data.errors import DataError
from umec_torchrec.data.jagged import JaggedIds
from umec_torchrec.data.mapped import PageRelease, is_mapped, torch_view
from umec_torchrec.data.options import DataOptions
from umec_torchrec.data.prefetch import PREFETCH_DEPTH
from umec_torchrec.data.raw import CHUNK_ROWS, dense_transform
from umec_torchrec.data.spec import parse_spec
from umec_torchrec.data.split import source_split
from umec_torchrec.data.vocab import ValueCounts, Vocabulary, id_dtype
from umec_torchrec.io import MANIFEST, read_manifest, replaced_directory, verify_manifest, write_manifest
from umec_torchrec.runs import remove_stale_replacements

__all__ = ["PREPARED_FORMAT", "SPLITS", "VOCABULARY_FILE", "ColumnIds", "is_prepared", "load_prepared",
           "prepare_data", "write_prepared"]

PREPARED_FORMAT = 1
SPLITS = ("train", "valid", "test")
VOCABULARY_FILE = "vocabulary.npz"
#: rows of the split order per temporary bucket of pass 3 (its memory: one bucket)
BUCKET_ROWS = 1 << 18
#: rows between two progress lines of :func:`prepare_data`
PROGRESS_ROWS = 1_000_000
#: what ``manifest.json`` says a directory is
KIND = "umec-prepared-data"
#: the options fixed by preparing (an inline option of ``prepared:DIR`` must equal the recorded one)
FIXED_OPTIONS = ("test_fraction", "valid_fraction", "split_seed", "time_ordered", "vocab", "min_count", "hash_size",
                 "skip_bad_lines", "max_rows")


#: default bound (bytes) on the resident pages of one split's maps (:class:`ColumnIds`)
RESIDENT_CAP = 256 << 20
#: the most bytes one read fault may map around a row: a whole 2 MiB folio where the page
#: cache holds large folios (tmpfs, ext4 on recent kernels), else 16 pages of fault-around
FAULT_AROUND = 2 << 20


def _map_bytes(a: np.ndarray) -> int:
    """Bytes of ``a``'s map (0 without one: nothing to release)."""
    return int(a.nbytes) if is_mapped(a) else 0


class ColumnIds:
    """The ids of a split as one memory-mapped column per feature, each in its own dtype.

    Stands in for ``CTRData.sparse`` (an ``int64 [N, F]`` tensor): ``shape`` is ``(N, F)``
    and ``ids[index]`` (a LongTensor, a bool mask, a slice or an int array) is the
    ``int64 [len(index), F]`` tensor of those rows; only those rows are read.

    The maps' resident pages are bounded by ``resident_cap`` bytes (default
    :data:`RESIDENT_CAP`) whatever the number of rows: a read fault maps the pages around
    the row (a 2 MiB folio or 16 pages, at most :data:`FAULT_AROUND` bytes), so a batch of
    shuffled rows touches up to that much of every map for each row, and over a few batches
    every page of every map.
    Each gather adds that bound to what the maps may hold (at most each map's size); when the
    sum would pass the cap, every map's pages are dropped from the process's RSS
    (``madvise(MADV_DONTNEED)``) first, and if one batch alone can pass it, each id column's
    pages are dropped right after its gather too. Small data stays mapped (no refaults);
    large data pays a minor fault per touched folio per batch. ``None``: never released.
    Example::

        ids = ColumnIds([np.load("train_ids_0.npy", mmap_mode="c"), ...])
        ids[torch.tensor([3, 1])]          # int64 [2, F]
    """

    def __init__(self, columns: Sequence[np.ndarray], maps: Sequence[np.ndarray] = (),
                 resident_cap: Optional[int] = RESIDENT_CAP) -> None:
        self.columns = list(columns)
        if not self.columns:
            raise ValueError("ColumnIds needs at least one column")
        n = {int(c.shape[0]) for c in self.columns}
        if len(n) != 1:
            raise ValueError(f"columns of different lengths {sorted(n)}")
        self._n = n.pop()
        # a mapped column is read by torch (index_select releases the GIL: the step's thread
        # runs while the prefetch thread gathers); another (a multi-hot feature's zero-stride
        # column) by numpy
        self._views = [torch_view(c) if is_mapped(c) else None for c in self.columns]
        self._col_release = [PageRelease([c]) for c in self.columns]
        self._other_release = PageRelease(list(maps))
        self.maps = [a for a in list(columns) + list(maps) if is_mapped(a)]
        self.resident_cap = resident_cap
        # bytes of each map (id columns, then the others) and how much of it may be resident
        self._sizes = np.array([_map_bytes(c) for c in self.columns] + [_map_bytes(a) for a in maps],
                               dtype=np.float64)
        self._held = np.zeros_like(self._sizes)
        self.releases = 0

    def release(self) -> None:
        """Drop every map's touched pages from this process's RSS (``madvise(MADV_DONTNEED)``).

        The maps are read-only, so the pages are clean: they stay in the page cache and
        touching them again is a minor fault, not a read from disk.
        """
        for r in self._col_release:
            r.release()
        self._other_release.release()
        self._held[:] = 0.0
        self.releases += 1

    @property
    def shape(self) -> tuple:
        return (self._n, len(self.columns))

    @property
    def dtype(self) -> torch.dtype:
        """``torch.int64``: the dtype of the rows it gives (each column keeps its own on disk)."""
        return torch.int64

    @property
    def dtypes(self) -> List[np.dtype]:
        return [c.dtype for c in self.columns]

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, index: Any) -> torch.Tensor:
        if isinstance(index, (int, np.integer)):
            raise TypeError("ColumnIds takes an array of rows or a slice, not a single row")
        if isinstance(index, slice):
            start, stop, step = index.indices(self._n)
            rows_t = torch.arange(start, stop, step, dtype=torch.int64)
        else:
            rows_t = index if isinstance(index, torch.Tensor) else torch.from_numpy(np.asarray(index))
            if rows_t.dtype == torch.bool:
                rows_t = rows_t.nonzero().flatten()
            rows_t = rows_t.to(torch.int64)
        per_column = False
        if self.resident_cap is not None:
            touch = np.minimum(self._sizes, float(rows_t.shape[0]) * FAULT_AROUND)
            held = np.minimum(self._sizes, self._held + touch)
            if held.sum() > self.resident_cap:
                self.release()
                held = touch
                per_column = touch.sum() > self.resident_cap
            self._held = held
        out = torch.empty((rows_t.shape[0], len(self.columns)), dtype=torch.int64)
        for j in range(len(self.columns)):  # one vectorised gather per feature
            self.gather(j, rows_t, out[:, j])
            if per_column:
                self._col_release[j].release()
                self._held[j] = 0.0
        return out

    def gather(self, j: int, rows: torch.Tensor, out: torch.Tensor) -> None:
        """Column ``j``'s ids at ``rows`` (``int64 [B]``) into ``out`` (``int64 [B]``)."""
        view = self._views[j]
        if view is None:
            out.copy_(torch.from_numpy(np.asarray(self.columns[j][rows.numpy()], dtype=np.int64)))
            return
        out.copy_(view[0].index_select(0, rows))
        if view[1] is not None:
            out.bitwise_and_(view[1])


# --- preparing ----------------------------------------------------------------------------------
def _refuse_out(out: str, force: bool) -> str:
    from umec_torchrec.runs import check_out_dir

    return check_out_dir(out, force, marker=MANIFEST, what="output", kind="a prepared data directory",
                         resumable=False)


def prepare_data(spec: str, out: str, options: Optional[DataOptions] = None, *, chunk_rows: int = CHUNK_ROWS,
                 force: bool = False, bucket_rows: int = BUCKET_ROWS,
                 progress: Optional[Callable[[str], None]] = None, workers: int = 1) -> Dict[str, Any]:
    """Read the source of ``spec`` once and write its encoded splits to ``out`` (layout in the
    module docstring); returns the manifest. ``load_prepared(out)`` then gives the bundle
    that ``load_data(spec, options)`` gives.

    Args:
        spec: a data spec (any kind but ``prepared``); its inline options override ``options``.
        out: the directory to write (atomically: a temporary directory renamed into place).
        options: split, vocabulary and bad-line options (default :class:`DataOptions`).
        chunk_rows: rows per chunk while reading and encoding (bounds the memory).
        force: replace an existing prepared directory ``out``.
        bucket_rows: rows of the output written at a time in pass 3 (bounds its memory).
        progress: called with a line every :data:`PROGRESS_ROWS` rows read and at each pass.
        workers: processes parsing a Criteo TSV's lines (1: this one; the other sources read
            in this process).

    Raises:
        DataError: the source's errors (file, line, field), as :func:`load_data` raises them.
        FileExistsError: ``out`` exists (without ``force``), or is not a prepared directory.

    Example::

        prepare_data("criteo:day_0.tsv.gz", "data/day0", DataOptions(min_count=3))
        bundle = load_data("prepared:data/day0")
    """
    from umec_torchrec.data.loader import bundle_info, iter_raw

    parsed = parse_spec(spec)
    if parsed.kind == "prepared":
        raise DataError(parsed.text, None, None, full_path=True, reason="the data is already prepared")
    opts = dataclasses.replace(options or DataOptions(), **parsed.options)
    opts.validate(where=parsed.text)
    if int(chunk_rows) < 1 or int(bucket_rows) < 1 or int(workers) < 1:
        raise ValueError(f"chunk_rows, bucket_rows and workers must be >= 1, got {chunk_rows}, {bucket_rows} and "
                         f"{workers}")
    path = _refuse_out(out, force)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    remove_stale_replacements(path)
    with replaced_directory(path) as tmp:
        return _prepare(parsed, opts, tmp, int(chunk_rows), int(bucket_rows),
                        lambda *a, **k: iter_raw(*a, **k, workers=int(workers)), bundle_info,
                        progress or (lambda msg: None))


class _Writer:
    """A ``.npy`` file of a known shape written front to back with plain writes (its pages go
    to the page cache, not to this process's resident memory as a written map's would)."""

    def __init__(self, path: str, dtype: Any, shape: tuple) -> None:
        self.dtype, self.shape = np.dtype(dtype), tuple(int(x) for x in shape)
        self.left = int(np.prod(self.shape))
        self.f = open(path, "wb")
        np.lib.format.write_array_header_1_0(self.f, {"descr": np.lib.format.dtype_to_descr(self.dtype),
                                                      "fortran_order": False, "shape": self.shape})

    def write(self, arr: np.ndarray) -> None:
        a = np.ascontiguousarray(arr, dtype=self.dtype)
        self.left -= a.size
        self.f.write(a.tobytes())

    def close(self) -> None:
        self.f.close()
        if self.left != 0:
            raise RuntimeError(f"{self.f.name}: {self.left} elements short of {self.shape}")  # a bug


def _read_rows(path: str, dtype: Any, width: int, a: int, b: int) -> np.ndarray:
    """Rows ``a..b-1`` of a raw file of ``width`` values a row (``width == 0``: one value a row),
    by a plain read (not a map: the pages read stay out of this process's resident memory)."""
    w = max(width, 1)
    with open(path, "rb") as f:
        f.seek(a * w * np.dtype(dtype).itemsize)
        out = np.fromfile(f, dtype=dtype, count=(b - a) * w)
    return out.reshape((b - a, width)) if width else out


class _RawRows:
    """The temporary raw arrays of pass 1, read back in chunks of rows in file order."""

    def __init__(self, raw_dir: str, n: int, d: int, f_: int, multi: List[str]) -> None:
        self.dir, self.n, self.d, self.f_, self.multi = raw_dir, n, d, f_, list(multi)

    def path(self, name: str) -> str:
        return os.path.join(self.dir, name)

    def chunks(self, chunk_rows: int, dense: bool = True) -> Iterator[tuple]:
        """``(a, b, dense or None, cats, labels, {feature: JaggedIds})`` of each chunk."""
        voff = [0] * len(self.multi)
        for a in range(0, self.n, chunk_rows):
            b = min(self.n, a + chunk_rows)
            multi = {}
            for q, name in enumerate(self.multi):
                lens = _read_rows(self.path(f"mh{q}.lengths"), np.int64, 0, a, b)
                m = int(lens.sum())
                multi[name] = JaggedIds.from_lengths(
                    _read_rows(self.path(f"mh{q}.values"), np.int64, 0, voff[q], voff[q] + m), lens)
                voff[q] += m
            yield (a, b, _read_rows(self.path("dense"), np.float32, self.d, a, b) if dense else None,
                   _read_rows(self.path("cats"), np.int64, self.f_, a, b),
                   _read_rows(self.path("labels"), np.float32, 0, a, b), multi)


def _prepare(parsed: Any, opts: DataOptions, tmp: str, chunk_rows: int, bucket_rows: int, iter_raw: Any,
             bundle_info: Any, progress: Callable[[str], None]) -> Dict[str, Any]:
    raw_dir = os.path.join(tmp, ".raw")
    os.makedirs(raw_dir)
    files = {k: open(os.path.join(raw_dir, k), "wb") for k in ("dense", "cats", "labels")}
    src_info: Dict[str, Any] = {}
    n = 0
    names: Dict[str, Any] = {}
    try:
        for chunk in iter_raw(parsed, opts, chunk_rows, info=src_info):  # pass 1: parse once, raw arrays on disk
            if not names:
                names = {"dense": list(chunk.dense_names), "features": list(chunk.feature_names),
                         "dense_transformed": bool(chunk.dense_transformed),
                         "multi": [f for f in chunk.feature_names if f in chunk.multi_hot]}
                for q in range(len(names["multi"])):
                    for part in ("values", "lengths"):
                        files[f"mh{q}.{part}"] = open(os.path.join(raw_dir, f"mh{q}.{part}"), "wb")
            dense = chunk.dense.astype(np.float32) if chunk.dense_transformed else dense_transform(chunk.dense)
            files["dense"].write(np.ascontiguousarray(dense, dtype=np.float32).tobytes())
            files["cats"].write(np.ascontiguousarray(chunk.cats, dtype=np.int64).tobytes())
            files["labels"].write(np.ascontiguousarray(chunk.labels, dtype=np.float32).tobytes())
            for q, f in enumerate(names["multi"]):
                jag = chunk.multi_hot[f]
                files[f"mh{q}.values"].write(np.ascontiguousarray(jag.flat(), dtype=np.int64).tobytes())
                files[f"mh{q}.lengths"].write(np.ascontiguousarray(jag.lengths, dtype=np.int64).tobytes())
            n += len(chunk)
            if n // PROGRESS_ROWS != (n - len(chunk)) // PROGRESS_ROWS:
                progress(f"read {n:,} rows")
    finally:
        for fh in files.values():
            fh.close()
    if n == 0:
        raise DataError(parsed.path or parsed.text, None, None, "no rows")
    d, f_ = len(names["dense"]), len(names["features"])
    raw = _RawRows(raw_dir, n, d, f_, names["multi"])
    try:
        tr, va, te = source_split(n, opts, src_info)
        if opts.vocab != "min_count":
            voc = Vocabulary.fit(np.zeros((0, f_), dtype=np.int64), names["features"], mode=opts.vocab,
                                 hash_size=opts.hash_size, sizes=src_info.get("num_embeddings_per_feature"))
    except ValueError as e:
        raise DataError(src_info.get("path", parsed.text), None, None, str(e)) from None
    progress(f"read {n:,} rows; {'counting values' if opts.vocab == 'min_count' else 'encoding'}")
    for split, rows in zip(SPLITS, (tr, va, te)):
        np.save(os.path.join(tmp, f"split_{split}.npy"), rows.astype(np.int64))
    if opts.vocab == "min_count":  # pass 2: count the training rows' values, chunk by chunk
        in_train = np.zeros(n, dtype=bool)
        in_train[tr] = True
        counts = ValueCounts(f_)
        for a, b, _, cats, _, multi in raw.chunks(chunk_rows, dense=False):
            keep = in_train[a:b]
            for j, name in enumerate(names["features"]):
                counts.add_column(j, multi[name].take(keep).values if name in multi else cats[keep, j])
        del in_train
        voc = Vocabulary.from_counts(counts, names["features"], min_count=opts.min_count)
        del counts
    sizes = voc.table_sizes
    dtypes = [id_dtype(s) for s in sizes]
    progress(f"vocabulary: {sum(sizes):,} table rows; encoding the splits")
    counts_ = (len(tr), len(va), len(te))
    inv = _positions(n, (tr, va, te))  # row i of the file -> its position in [train | valid | test]
    del tr, va, te
    ctr, nnz = _encode_splits(tmp, raw, counts_, inv, voc, dtypes, chunk_rows, bucket_rows)
    del inv
    shutil.rmtree(raw_dir)
    voc.save(os.path.join(tmp, VOCABULARY_FILE))
    ids_per_sample = {f: (nnz[f]["train"] / counts_[0] if counts_[0] else 0.0) for f in names["multi"]}
    info = bundle_info(src_info, parsed.text, voc, names["features"], names["dense"], counts_, ctr, opts,
                       names["dense_transformed"], ids_per_sample=ids_per_sample)
    meta = {
        "kind": KIND,
        "prepared_format": PREPARED_FORMAT,
        "source": parsed.text,
        "options": dataclasses.asdict(opts),
        "feature_names": list(names["features"]),
        "dense_names": list(names["dense"]),
        "table_sizes": [int(s) for s in sizes],
        "id_dtypes": [str(t) for t in dtypes],
        "rows": {"total": int(n), "train": int(counts_[0]), "valid": int(counts_[1]), "test": int(counts_[2])},
        "bad_lines": int(info.get("bad_lines", 0)),
        "chunk_rows": int(chunk_rows),
        "info": json.loads(json.dumps(info, default=_jsonable)),
    }
    if names["multi"]:
        meta["multi_hot"] = {f: {"ids_per_sample": float(ids_per_sample[f]), "nnz": nnz[f]} for f in names["multi"]}
    write_manifest(tmp, meta)  # last: a directory without it is incomplete
    return read_manifest(tmp) or meta


def _positions(n: int, splits: Sequence[np.ndarray]) -> np.ndarray:
    """``inv[i]``: the position of file row ``i`` in the concatenated split order (int32 below
    2**31 rows: 4 bytes a row)."""
    inv = np.empty(n, dtype=np.int32 if n < 2**31 else np.int64)
    at = 0
    for rows in splits:
        inv[rows] = np.arange(at, at + len(rows), dtype=inv.dtype)
        at += len(rows)
    return inv


def _jsonable(x: Any) -> Any:
    if hasattr(x, "tolist"):
        return x.tolist()
    return str(x)


def _encode_splits(tmp: str, raw: "_RawRows", counts: Sequence[int], inv: np.ndarray, voc: Vocabulary,
                   dtypes: List[np.dtype], chunk_rows: int, bucket_rows: int) -> tuple:
    """Pass 3: write every split's arrays in its own row order, with sequential I/O only.

    The splits in order are one permutation of the rows (``[train | valid | test]``); row
    ``i`` of the file goes to position ``inv[i]`` of it. 3a reads the raw arrays in file
    order, encodes each chunk and appends each row to the bucket file of its block of
    ``bucket_rows`` positions (a multi-hot feature's ids to a second bucket file, one
    ``(position, feature, id)`` record per id); 3b loads one bucket at a time, orders it by
    position and appends that block to the outputs. Returns each split's CTR and the
    multi-hot features' ids per split."""
    n, d, f_, multi = raw.n, raw.d, raw.f_, raw.multi
    names = voc.feature_names
    mcol = [names.index(f) for f in multi]
    rec = np.dtype([("pos", np.int64), ("dense", np.float32, (d,)), ("label", np.float32), ("ids", np.int64, (f_,)),
                    ("lens", np.int64, (len(multi),))])
    mrec = np.dtype([("pos", np.int64), ("feat", np.int32), ("id", np.int64)])
    starts = np.cumsum([0] + [int(c) for c in counts])
    n_buckets = -(-n // bucket_rows)
    bdir = os.path.join(raw.dir, "buckets")
    os.makedirs(bdir)
    paths = [os.path.join(bdir, str(k)) for k in range(n_buckets)]
    files = [open(q, "wb") for q in paths]
    mfiles = [open(q + ".mh", "wb") for q in paths] if multi else []
    nnz = np.zeros((len(multi), len(SPLITS)), dtype=np.int64)
    try:
        for a, b, dense, cats, labels, jag in raw.chunks(chunk_rows):  # 3a: file order -> buckets of the split order
            r = np.empty(b - a, dtype=rec)
            r["pos"] = inv[a:b]
            r["dense"] = dense
            r["label"] = labels
            try:
                r["ids"] = voc.encode(cats)
                vals = [voc.encode_column(j, jag[f].values) for j, f in zip(mcol, multi)]
            except ValueError as e:  # vocab="identity": an id outside its table
                raise DataError(None, None, None, str(e)) from None
            for q, f in enumerate(multi):
                r["lens"][:, q] = jag[f].lengths
                r["ids"][:, mcol[q]] = 0
            _to_buckets(r, r["pos"], bucket_rows, files)
            if multi:
                split_of = np.searchsorted(starts[1:], r["pos"], side="right")
                for q in range(len(multi)):
                    nnz[q] += np.bincount(split_of, weights=r["lens"][:, q], minlength=len(SPLITS)).astype(np.int64)
                m = np.empty(sum(len(v) for v in vals), dtype=mrec)
                m["pos"] = np.concatenate([np.repeat(r["pos"], r["lens"][:, q]) for q in range(len(multi))])
                m["feat"] = np.repeat(np.arange(len(multi), dtype=np.int32), [len(v) for v in vals])
                m["id"] = np.concatenate(vals)
                _to_buckets(m, m["pos"], bucket_rows, mfiles)
    finally:
        for fh in files + mfiles:
            fh.close()
    outs = {}
    for si, (split, m_) in enumerate(zip(SPLITS, counts)):
        def out(name: str, dtype: Any, shape: tuple) -> _Writer:
            return _Writer(os.path.join(tmp, f"{split}_{name}.npy"), dtype, shape)

        ids = [None if j in mcol else out(f"ids_{j}", dtypes[j], (m_,)) for j in range(f_)]
        jag_out = [(out(f"ids_{j}", dtypes[j], (int(nnz[q, si]),)), out(f"offsets_{j}", np.int64, (m_ + 1,)))
                   for q, j in enumerate(mcol)]
        for _, off in jag_out:
            off.write(np.zeros(1, dtype=np.int64))
        outs[split] = (out("dense", np.float32, (m_, d)), out("labels", np.float32, (m_,)), ids, jag_out)
    ends = np.zeros((len(multi), len(SPLITS)), dtype=np.int64)  # ids written so far per feature and split
    positives = {s: 0.0 for s in SPLITS}
    try:
        for k, q in enumerate(paths):  # 3b: one block of the split order at a time
            r = np.fromfile(q, dtype=rec)
            os.remove(q)
            r = r[np.argsort(r["pos"], kind="stable")]
            lo = k * bucket_rows
            if not np.array_equal(r["pos"], np.arange(lo, lo + r.shape[0])):
                raise RuntimeError(f"{q}: bucket {k} does not hold positions {lo}..{lo + r.shape[0] - 1}")  # a bug
            if multi:
                mh = np.fromfile(q + ".mh", dtype=mrec)
                os.remove(q + ".mh")
                mh = mh[np.lexsort((mh["pos"], mh["feat"]))]  # stable: a row's ids keep their order
                fcut = np.searchsorted(mh["feat"], np.arange(len(multi) + 1))
            for si, split in enumerate(SPLITS):
                a, b = max(lo, int(starts[si])), min(lo + r.shape[0], int(starts[si + 1]))
                if a >= b:
                    continue
                part = r[a - lo:b - lo]
                dense_o, labels_o, ids_o, jag_o = outs[split]
                dense_o.write(part["dense"])
                labels_o.write(part["label"])
                positives[split] += float(part["label"].astype(np.float64).sum())
                for j in range(f_):
                    if ids_o[j] is not None:
                        ids_o[j].write(part["ids"][:, j].astype(dtypes[j]))
                for qq, (vals_o, off_o) in enumerate(jag_o):
                    seg = mh[fcut[qq]:fcut[qq + 1]]
                    x, y = np.searchsorted(seg["pos"], [a, b])
                    lens = part["lens"][:, qq]
                    if y - x != int(lens.sum()):
                        raise RuntimeError(f"{q}: feature {multi[qq]} has {y - x} ids for {int(lens.sum())}")  # a bug
                    vals_o.write(seg["id"][x:y].astype(dtypes[mcol[qq]]))
                    off_o.write(ends[qq, si] + np.cumsum(lens))
                    ends[qq, si] += int(lens.sum())
    finally:
        for dense_o, labels_o, ids_o, jag_o in outs.values():
            for w in [dense_o, labels_o] + [x for x in ids_o if x is not None] + [x for p in jag_o for x in p]:
                w.f.close()
    for dense_o, labels_o, ids_o, jag_o in outs.values():
        for w in [dense_o, labels_o] + [x for x in ids_o if x is not None] + [x for p in jag_o for x in p]:
            w.close()
    ctr = {s: (float(np.float32(positives[s] / m)) if m else None) for s, m in zip(SPLITS, counts)}
    return ctr, {f: {s: int(nnz[q, si]) for si, s in enumerate(SPLITS)} for q, f in enumerate(multi)}


def _to_buckets(r: np.ndarray, pos: np.ndarray, bucket_rows: int, files: List[Any]) -> None:
    """Append the records ``r`` to the bucket file of their position's block (one write per
    bucket they reach; the records keep their order within a bucket)."""
    if r.shape[0] == 0:
        return
    blk = pos // bucket_rows
    srt = np.argsort(blk, kind="stable")
    r, blk = r[srt], blk[srt]
    cuts = np.flatnonzero(np.diff(blk)) + 1
    for part in np.split(r, cuts):
        files[int(part["pos"][0] // bucket_rows)].write(part.tobytes())


def write_prepared(bundle: DataBundle, out: str) -> Dict[str, Any]:
    """Write a bundle that is already encoded in memory (:func:`~umec_torchrec.data.load_data`
    of a small file) as the prepared directory ``out`` (the layout of :func:`prepare_data`,
    atomically): what a stage does on first use of a spec that is not prepared, so that every
    later stage of the pipeline maps it instead of parsing the source again. Returns the
    manifest; ``load_prepared(out)`` gives the bundle's rows, vocabulary and info.

    Example::

        write_prepared(load_data("csv:small.csv,label=y,categorical=a;b"), "runs/r1/data")
    """
    info = json.loads(json.dumps(bundle.info, default=_jsonable))
    voc = bundle.vocabulary
    if voc is None:
        raise ValueError("write_prepared needs a bundle with its vocabulary (load_data's)")
    first = bundle.train
    features, sizes = list(first.feature_names), [int(x) for x in first.table_sizes]
    dtypes = [id_dtype(x) for x in sizes]
    path = os.path.abspath(out)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    remove_stale_replacements(path)
    with replaced_directory(path) as tmp:
        nnz: Dict[str, Dict[str, int]] = {f: {} for f in first.multi_hot}
        for split in SPLITS:
            data = getattr(bundle, split)
            n = len(data)
            for name, arr, dt in (("dense", data.dense, np.float32), ("labels", data.labels, np.float32)):
                np.save(os.path.join(tmp, f"{split}_{name}.npy"), np.ascontiguousarray(arr.numpy(), dtype=dt))
            ids = data.sparse[torch.arange(n)].numpy()
            for j, f in enumerate(features):
                jag = data.multi_hot.get(f)
                if jag is None:
                    np.save(os.path.join(tmp, f"{split}_ids_{j}.npy"), ids[:, j].astype(dtypes[j]))
                    continue
                np.save(os.path.join(tmp, f"{split}_ids_{j}.npy"), jag.flat().astype(dtypes[j]))
                np.save(os.path.join(tmp, f"{split}_offsets_{j}.npy"), jag.with_values(jag.values).offsets)
                nnz[f][split] = jag.nnz
            rows = (bundle.split_rows or {}).get(split)
            if rows is not None:
                np.save(os.path.join(tmp, f"split_{split}.npy"), np.asarray(rows, dtype=np.int64))
        voc.save(os.path.join(tmp, VOCABULARY_FILE))
        r = info.get("rows") or {}
        meta = {
            "kind": KIND,
            "prepared_format": PREPARED_FORMAT,
            "source": info.get("source"),
            "options": info.get("options") or {},
            "feature_names": features,
            "dense_names": list(first.dense_names),
            "table_sizes": sizes,
            "id_dtypes": [str(t) for t in dtypes],
            "rows": {k: int(r.get(k, 0)) for k in ("total", "train", "valid", "test")},
            "bad_lines": int(info.get("bad_lines", 0)),
            "info": info,
        }
        if nnz:
            meta["multi_hot"] = {f: {"ids_per_sample": float(info["multi_hot"][f]["ids_per_sample"]), "nnz": nnz[f]}
                                 for f in nnz}
        write_manifest(tmp, meta)
        return read_manifest(tmp) or meta


# --- loading ------------------------------------------------------------------------------------
def is_prepared(path: str) -> bool:
    """Whether ``path`` is a complete prepared data directory (its manifest says so)."""
    m = read_manifest(path) if os.path.isdir(path) else None
    return bool(m and m.get("kind") == KIND)


def _map(path: str) -> np.ndarray:
    arr = np.load(path, mmap_mode="c", allow_pickle=False)
    return arr


def load_prepared(path: str, inline: Optional[Dict[str, Any]] = None, source: Optional[str] = None) -> DataBundle:
    """The :class:`DataBundle` of a prepared directory, every array memory-mapped.

    Args:
        path: the directory :func:`prepare_data` wrote.
        inline: options given inline in the spec (``prepared:DIR,min_count=3``): each must
            equal the recorded one (the split and vocabulary are fixed by preparing); other
            :class:`DataOptions` are not used.
        source: the spec text, for ``info["prepared"]``.

    Raises:
        DataError: naming the directory (and the file): missing, no or torn
            ``manifest.json``, another format, a file missing or of another size or
            shape/dtype than recorded, an inline option that differs from the recorded one.
    """
    p = os.path.abspath(os.path.expanduser(path))
    if not os.path.isdir(p):
        raise DataError(p, None, None, f"no such prepared data directory: {p}")
    if not os.path.exists(os.path.join(p, MANIFEST)):
        raise DataError(p, None, None, "not a prepared data directory: no manifest.json (incomplete or not written "
                                       "by umec prepare; prepare it again)")
    m = read_manifest(p)
    if m is None or m.get("kind") != KIND:
        raise DataError(os.path.join(p, MANIFEST), None, None, "unreadable or not the manifest of a prepared data "
                                                               "directory (torn or foreign); prepare it again")
    if m.get("prepared_format") != PREPARED_FORMAT:
        raise DataError(os.path.join(p, MANIFEST), None, "prepared_format",
                        f"format {m.get('prepared_format')!r}, this version reads {PREPARED_FORMAT}; prepare it again")
    why = verify_manifest(p, hashes=False)
    if why:
        raise DataError(p, None, None, f"prepared data directory does not match its manifest.json: {why}")
    rec = m.get("options") or {}
    for key, val in (inline or {}).items():
        if key in rec and rec[key] != val:
            raise DataError(source or p, None, key, full_path=source is not None,
                            reason=f"{val!r} differs from {rec[key]!r}, the value {p} was prepared with; "
                                   "prepare the source again with the new value")
    features, dense_names = list(m["feature_names"]), list(m["dense_names"])
    sizes = [int(s) for s in m["table_sizes"]]
    info = dict(m.get("info") or {})
    info["prepared"] = p
    splits = {}
    multi = m.get("multi_hot") or {}
    for split in SPLITS:
        want = int(m["rows"][split])
        dense = _checked(p, f"{split}_dense.npy", np.float32, (want, len(dense_names)))
        labels = _checked(p, f"{split}_labels.npy", np.float32, (want,))
        cols, jagged = [], {}
        for j, f in enumerate(features):
            dt = np.dtype(m["id_dtypes"][j])
            if f in multi:  # values + offsets; its column of ids is a zero-stride 0 (no memory)
                off = _checked(p, f"{split}_offsets_{j}.npy", np.int64, (want + 1,))
                jagged[f] = JaggedIds(_checked(p, f"{split}_ids_{j}.npy", dt, (int(multi[f]["nnz"][split]),)), off)
                cols.append(np.broadcast_to(np.zeros(1, dtype=np.uint8), (want,)))
            else:
                cols.append(_checked(p, f"{split}_ids_{j}.npy", dt, (want,)))
        maps = [dense, labels] + [x for jg in jagged.values() for x in (jg.values, jg.offsets)]
        splits[split] = CTRData(dense=torch.from_numpy(dense), sparse=ColumnIds(cols, maps),
                                labels=torch.from_numpy(labels), dense_names=dense_names, feature_names=features,
                                table_sizes=sizes, info={**info, "split_name": split}, prefetch=PREFETCH_DEPTH,
                                multi_hot=jagged)
    try:
        voc = Vocabulary.load(os.path.join(p, VOCABULARY_FILE))
    except (OSError, ValueError) as e:
        raise DataError(os.path.join(p, VOCABULARY_FILE), None, None, str(e)) from None
    if voc.table_sizes != sizes:
        raise DataError(os.path.join(p, VOCABULARY_FILE), None, None,
                        "the vocabulary's table sizes differ from manifest.json's; prepare it again")
    return DataBundle(train=splits["train"], valid=splits["valid"], test=splits["test"], info=info,
                      vocabulary=voc)


def _checked(p: str, name: str, dtype: Union[type, np.dtype], shape: tuple) -> np.ndarray:
    f = os.path.join(p, name)
    try:
        arr = _map(f)
    except (OSError, ValueError) as e:
        raise DataError(f, None, None, f"unreadable array ({e}); prepare it again") from None
    if arr.dtype != np.dtype(dtype) or tuple(arr.shape) != tuple(shape):
        raise DataError(f, None, None, f"array {arr.dtype}{list(arr.shape)}, manifest.json says "
                                       f"{np.dtype(dtype)}{list(shape)}; prepare it again")
    return arr
