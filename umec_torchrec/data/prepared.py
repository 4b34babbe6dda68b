"""Prepared data directories: a source encoded once (``umec prepare``), then read through
memory maps by every stage (the spec ``prepared:DIR``).

Layout of ``DIR`` (flat; every array a ``.npy`` file, in the row order of its split, which
is the order :func:`~umec_torchrec.data.load_data` gives the same spec and options)::

    {split}_dense.npy      float32 [n, D]   dense features, already transformed
    {split}_labels.npy     float32 [n]      0/1 labels
    {split}_ids_{j}.npy    uint8/uint16/uint32/int64 [n]   rows of feature j (the narrowest
                                            dtype that holds its table, :func:`~umec_torchrec.data.vocab.id_dtype`)
    split_{split}.npy      int64 [n]        source row (0-based, in the order read) of each row
    vocabulary.npz         the vocabulary (:meth:`~umec_torchrec.data.vocab.Vocabulary.save`)
    manifest.json          written last: format, source spec, options, features, table sizes,
                           id dtypes, rows per split, bad lines, the bundle ``info``, and the
                           size and SHA-256 of every other file

``split`` is ``train``, ``valid``, ``test``. A directory without ``manifest.json`` is
incomplete and refused; the directory is built under a temporary name next to ``DIR``
and renamed into place when complete.

Preparing reads the source once, in chunks (:func:`~umec_torchrec.data.loader.iter_raw`),
into temporary raw arrays on disk (dense float32, raw int64 values, labels), so that the
row count, hence the split, is known; then it counts the values of the training rows chunk
by chunk (:class:`~umec_torchrec.data.vocab.ValueCounts`); then it encodes the rows in file
order into temporary buckets of the split order and writes the outputs bucket by bucket
(sequential I/O only, whatever the split). Memory: one chunk of parsed lines, the distinct
values of every feature (the vocabulary itself), 16 bytes a row for the split and its
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
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

import numpy as np
import torch

from umec_torchrec.data.bundle import DataBundle
from umec_torchrec.data.dataset import CTRData
from umec_torchrec.data.errors import DataError
from umec_torchrec.data.options import DataOptions
from umec_torchrec.data.prefetch import PREFETCH_DEPTH
from umec_torchrec.data.raw import CHUNK_ROWS, dense_transform
from umec_torchrec.data.spec import parse_spec
from umec_torchrec.data.split import source_split
from umec_torchrec.data.vocab import ValueCounts, Vocabulary, id_dtype
from umec_torchrec.io import MANIFEST, read_manifest, replaced_directory, verify_manifest, write_manifest
from umec_torchrec.runs import remove_stale_replacements

__all__ = ["PREPARED_FORMAT", "SPLITS", "VOCABULARY_FILE", "ColumnIds", "is_prepared", "load_prepared",
           "prepare_data"]

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


class ColumnIds:
    """The ids of a split as one memory-mapped column per feature, each in its own dtype.

    Stands in for ``CTRData.sparse`` (an ``int64 [N, F]`` tensor): ``shape`` is ``(N, F)``
    and ``ids[index]`` (a LongTensor, a bool mask, a slice or an int array) is the
    ``int64 [len(index), F]`` tensor of those rows; only those rows are read.

    Example::

        ids = ColumnIds([np.load("train_ids_0.npy", mmap_mode="c"), ...])
        ids[torch.tensor([3, 1])]          # int64 [2, F]
    """

    def __init__(self, columns: Sequence[np.ndarray]) -> None:
        self.columns = list(columns)
        if not self.columns:
            raise ValueError("ColumnIds needs at least one column")
        n = {int(c.shape[0]) for c in self.columns}
        if len(n) != 1:
            raise ValueError(f"columns of different lengths {sorted(n)}")
        self._n = n.pop()

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
            rows = len(range(*index.indices(self._n)))
        else:
            index = index.numpy() if isinstance(index, torch.Tensor) else np.asarray(index)
            if index.dtype == np.bool_:
                index = np.flatnonzero(index)
            rows = int(index.shape[0])
        out = np.empty((rows, len(self.columns)), dtype=np.int64)
        for j, c in enumerate(self.columns):  # one vectorised gather per feature
            out[:, j] = c[index]
        return torch.from_numpy(out)


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
                         "dense_transformed": bool(chunk.dense_transformed)}
            dense = chunk.dense.astype(np.float32) if chunk.dense_transformed else dense_transform(chunk.dense)
            files["dense"].write(np.ascontiguousarray(dense, dtype=np.float32).tobytes())
            files["cats"].write(np.ascontiguousarray(chunk.cats, dtype=np.int64).tobytes())
            files["labels"].write(np.ascontiguousarray(chunk.labels, dtype=np.float32).tobytes())
            n += len(chunk)
            if n // PROGRESS_ROWS != (n - len(chunk)) // PROGRESS_ROWS:
                progress(f"read {n:,} rows")
    finally:
        for f in files.values():
            f.close()
    if n == 0:
        raise DataError(parsed.path or parsed.text, None, None, "no rows")
    d, f_ = len(names["dense"]), len(names["features"])
    dense_raw = np.memmap(os.path.join(raw_dir, "dense"), dtype=np.float32, mode="r", shape=(n, d))
    cats_raw = np.memmap(os.path.join(raw_dir, "cats"), dtype=np.int64, mode="r", shape=(n, f_))
    labels_raw = np.memmap(os.path.join(raw_dir, "labels"), dtype=np.float32, mode="r", shape=(n,))
    try:
        tr, va, te = source_split(n, opts, src_info)
        if opts.vocab != "min_count":
            voc = Vocabulary.fit(np.zeros((0, f_), dtype=np.int64), names["features"], mode=opts.vocab,
                                 hash_size=opts.hash_size, sizes=src_info.get("num_embeddings_per_feature"))
    except ValueError as e:
        raise DataError(src_info.get("path", parsed.text), None, None, str(e)) from None
    progress(f"read {n:,} rows; {'counting values' if opts.vocab == 'min_count' else 'encoding'}")
    if opts.vocab == "min_count":  # pass 2: count the training rows' values, chunk by chunk
        in_train = np.zeros(n, dtype=bool)
        in_train[tr] = True
        counts = ValueCounts(f_)
        for a in range(0, n, chunk_rows):
            counts.add(np.asarray(cats_raw[a:a + chunk_rows][in_train[a:a + chunk_rows]]))
        del in_train
        voc = Vocabulary.from_counts(counts, names["features"], min_count=opts.min_count)
        del counts
    sizes = voc.table_sizes
    dtypes = [id_dtype(s) for s in sizes]
    for split, rows in zip(SPLITS, (tr, va, te)):
        np.save(os.path.join(tmp, f"split_{split}.npy"), rows.astype(np.int64))
    progress(f"vocabulary: {sum(sizes):,} table rows; encoding the splits")
    ctr = _encode_splits(tmp, raw_dir, (tr, va, te), dense_raw, cats_raw, labels_raw, voc, dtypes, chunk_rows,
                         bucket_rows)
    del dense_raw, cats_raw, labels_raw
    shutil.rmtree(raw_dir)
    voc.save(os.path.join(tmp, VOCABULARY_FILE))
    info = bundle_info(src_info, parsed.text, voc, names["features"], names["dense"], (len(tr), len(va), len(te)),
                       ctr, opts, names["dense_transformed"])
    meta = {
        "kind": KIND,
        "prepared_format": PREPARED_FORMAT,
        "source": parsed.text,
        "options": dataclasses.asdict(opts),
        "feature_names": list(names["features"]),
        "dense_names": list(names["dense"]),
        "table_sizes": [int(s) for s in sizes],
        "id_dtypes": [str(t) for t in dtypes],
        "rows": {"total": int(n), "train": int(len(tr)), "valid": int(len(va)), "test": int(len(te))},
        "bad_lines": int(info.get("bad_lines", 0)),
        "chunk_rows": int(chunk_rows),
        "info": json.loads(json.dumps(info, default=_jsonable)),
    }
    write_manifest(tmp, meta)  # last: a directory without it is incomplete
    return read_manifest(tmp) or meta


def _jsonable(x: Any) -> Any:
    if hasattr(x, "tolist"):
        return x.tolist()
    return str(x)


def _encode_splits(tmp: str, raw_dir: str, splits: Sequence[np.ndarray], dense_raw: np.ndarray,
                   cats_raw: np.ndarray, labels_raw: np.ndarray, voc: Vocabulary, dtypes: List[np.dtype],
                   chunk_rows: int, bucket_rows: int) -> Dict[str, Optional[float]]:
    """Pass 3: write every split's arrays in its own row order, with sequential I/O only.

    The splits in order are one permutation of the rows (``[train | valid | test]``); row
    ``i`` of the file goes to position ``inv[i]`` of it. 3a reads the raw arrays in file
    order, encodes each chunk and appends each row to the bucket file of its block of
    ``bucket_rows`` positions; 3b loads one bucket at a time, orders it by position and
    writes that block of the outputs. Returns each split's CTR."""
    n, d = dense_raw.shape
    f_ = cats_raw.shape[1]
    rec = np.dtype([("pos", np.int64), ("dense", np.float32, (d,)), ("label", np.float32), ("ids", np.int64, (f_,))])
    order = np.concatenate(splits)
    inv = np.empty(n, dtype=np.int64)
    inv[order] = np.arange(n, dtype=np.int64)
    del order
    n_buckets = -(-n // bucket_rows)
    bdir = os.path.join(raw_dir, "buckets")
    os.makedirs(bdir)
    paths = [os.path.join(bdir, str(k)) for k in range(n_buckets)]
    files = [open(q, "wb") for q in paths]
    try:
        for a in range(0, n, chunk_rows):  # 3a: file order -> buckets of the split order
            b = min(n, a + chunk_rows)
            r = np.empty(b - a, dtype=rec)
            r["pos"] = inv[a:b]
            r["dense"] = dense_raw[a:b]
            r["label"] = labels_raw[a:b]
            try:
                r["ids"] = voc.encode(np.asarray(cats_raw[a:b]))
            except ValueError as e:  # vocab="identity": an id outside its table
                raise DataError(None, None, None, str(e)) from None
            blk = r["pos"] // bucket_rows
            srt = np.argsort(blk, kind="stable")
            r, blk = r[srt], blk[srt]
            cuts = np.flatnonzero(np.diff(blk)) + 1
            for part in np.split(r, cuts):  # one write per bucket this chunk reaches
                files[int(part["pos"][0] // bucket_rows)].write(part.tobytes())
    finally:
        for fh in files:
            fh.close()
    del inv
    sizes = [int(x.shape[0]) for x in splits]
    starts = np.cumsum([0] + sizes)
    outs = {}
    for split, m in zip(SPLITS, sizes):
        def out(name: str, dtype: Any, shape: tuple) -> np.ndarray:
            q = os.path.join(tmp, f"{split}_{name}.npy")
            if m == 0:
                np.save(q, np.zeros(shape, dtype=dtype))
                return np.zeros(shape, dtype=dtype)
            return np.lib.format.open_memmap(q, mode="w+", dtype=dtype, shape=shape)

        outs[split] = (out("dense", np.float32, (m, d)), out("labels", np.float32, (m,)),
                       [out(f"ids_{j}", dtypes[j], (m,)) for j in range(f_)])
    positives = {s: 0.0 for s in SPLITS}
    for k, q in enumerate(paths):  # 3b: one block of the split order at a time
        r = np.fromfile(q, dtype=rec)
        os.remove(q)
        r = r[np.argsort(r["pos"], kind="stable")]
        lo = k * bucket_rows
        if not np.array_equal(r["pos"], np.arange(lo, lo + r.shape[0])):
            raise RuntimeError(f"{q}: bucket {k} does not hold positions {lo}..{lo + r.shape[0] - 1}")  # a bug
        for si, split in enumerate(SPLITS):
            a, b = max(lo, int(starts[si])), min(lo + r.shape[0], int(starts[si + 1]))
            if a >= b:
                continue
            part = r[a - lo:b - lo]
            dense_o, labels_o, ids_o = outs[split]
            dense_o[a - starts[si]:b - starts[si]] = part["dense"]
            labels_o[a - starts[si]:b - starts[si]] = part["label"]
            positives[split] += float(part["label"].astype(np.float64).sum())
            for j in range(f_):
                ids_o[j][a - starts[si]:b - starts[si]] = part["ids"][:, j].astype(dtypes[j])
    for dense_o, labels_o, ids_o in outs.values():
        for arr in [dense_o, labels_o] + ids_o:
            if isinstance(arr, np.memmap):
                arr.flush()
    del outs
    return {s: (float(np.float32(positives[s] / m)) if m else None) for s, m in zip(SPLITS, sizes)}


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
    for split in SPLITS:
        want = int(m["rows"][split])
        dense = _checked(p, f"{split}_dense.npy", np.float32, (want, len(dense_names)))
        labels = _checked(p, f"{split}_labels.npy", np.float32, (want,))
        cols = [_checked(p, f"{split}_ids_{j}.npy", np.dtype(m["id_dtypes"][j]), (want,)) for j in range(len(sizes))]
        splits[split] = CTRData(dense=torch.from_numpy(dense), sparse=ColumnIds(cols),
                                labels=torch.from_numpy(labels), dense_names=dense_names, feature_names=features,
                                table_sizes=sizes, info={**info, "split_name": split}, prefetch=PREFETCH_DEPTH)
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
