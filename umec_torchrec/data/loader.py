""":func:`load_data`: a data spec string -> seeded train/valid/test :class:`CTRData` splits.

Pipeline: parse the spec (:mod:`~umec_torchrec.data.spec`), read a :class:`RawTable`
with the source's reader, split rows three ways (seeded or time-ordered,
:mod:`~umec_torchrec.data.split`), fit the vocabulary on the training rows only
(:mod:`~umec_torchrec.data.vocab`), encode the three splits, apply DLRM's
dense transform ``log(1 + max(x, 0))`` (missing = 0), and wrap everything into a
:class:`DataBundle`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, Iterator, List, Optional, Tuple

import numpy as np
import torch

from umec_torchrec.data.bundle import DataBundle
from umec_torchrec.data.dataset import CTRData
from umec_torchrec.data.errors import DataError
from umec_torchrec.data.options import DataOptions
from umec_torchrec.data.raw import CHUNK_ROWS, RawTable, dense_transform, raw_column
from umec_torchrec.data.spec import DataSpec, parse_spec
from umec_torchrec.data.split import source_split
from umec_torchrec.data.vocab import Vocabulary

__all__ = ["DENSE_TRANSFORM", "bundle_info", "encode", "iter_raw", "load_data", "read_raw"]

DENSE_TRANSFORM = "log(1 + max(x, 0)), missing = 0"


#: generated sources: spec kind -> (module, generator returning an object with ``to_raw()``)
GENERATED_KINDS = {
    "synthetic": ("umec_torchrec.data.synthetic", "generate"),
    "clicklog": ("umec_torchrec.data.clicklog", "generate_clicklog"),
}


def read_raw(spec: DataSpec, options: DataOptions) -> RawTable:
    """Dispatch ``spec`` to its reader (then :func:`multi_hot`)."""
    return multi_hot(spec, _read_raw(spec, options))


def multi_hot(spec: DataSpec, raw: RawTable) -> RawTable:
    """``raw`` with the DLRM-v2-style multi-hot features of ``spec``'s ``multi_hot_sizes``
    (:mod:`~umec_torchrec.data.multihot`); ``raw`` itself without that parameter."""
    sizes = spec.params.get("multi_hot_sizes")
    if not sizes:
        return raw
    from umec_torchrec.data.criteo_npy import _caps
    from umec_torchrec.data.multihot import expand_multi_hot, multi_hot_sizes

    try:
        multi_hot_sizes(sizes, len(raw.feature_names))
    except ValueError as e:
        raise DataError(spec.text, None, "multi_hot_sizes", full_path=True, reason=str(e)) from None
    caps = _caps(spec.path, spec.params.get("num_embeddings_per_feature"))
    return expand_multi_hot(raw, sizes, caps)


def _read_raw(spec: DataSpec, options: DataOptions) -> RawTable:
    if spec.kind in GENERATED_KINDS:
        import importlib

        module, name = GENERATED_KINDS[spec.kind]
        generate = getattr(importlib.import_module(module), name)
        p = dict(spec.params)
        if options.max_rows is not None:
            p["rows"] = min(int(p.get("rows", 20000)), int(options.max_rows))
        try:
            return generate(**p).to_raw()
        except ValueError as e:
            raise DataError(spec.text, None, None, str(e)) from None
    if spec.kind == "criteo":
        from umec_torchrec.data.criteo import read_criteo_tsv

        return read_criteo_tsv(spec.path, skip_bad_lines=options.skip_bad_lines, max_rows=options.max_rows)
    if spec.kind == "criteo-npy":
        from umec_torchrec.data.criteo_npy import read_criteo_npy

        return read_criteo_npy(spec.path, days=spec.params.get("days"), max_rows=options.max_rows,
                               num_embeddings_per_feature=spec.params.get("num_embeddings_per_feature"),
                               split=spec.params.get("split"))
    if spec.kind == "libsvm":
        from umec_torchrec.data.libsvm import read_libsvm

        return read_libsvm(spec.path, names=spec.params.get("names"), skip_bad_lines=options.skip_bad_lines,
                           max_rows=options.max_rows, ffm=bool(spec.params.get("ffm")))
    if spec.kind == "csv":
        from umec_torchrec.data.delimited import read_delimited

        return read_delimited(spec.path, label=options.label, dense=options.dense, categorical=options.categorical,
                              delimiter=options.delimiter, header=options.header,
                              skip_bad_lines=options.skip_bad_lines, max_rows=options.max_rows,
                              **_list_params(spec))
    raise DataError(spec.text, None, None, f"unknown data source {spec.kind!r}")  # parse_spec rejects these


def _list_params(spec: DataSpec) -> Dict[str, Any]:
    return {k: spec.params[k] for k in ("multi_hot", "list_delimiter") if k in spec.params}


def bundle_info(source_info: Dict[str, Any], source: str, voc: Vocabulary, feature_names: List[str],
                dense_names: List[str], counts: Tuple[int, int, int], ctr: Dict[str, Optional[float]],
                options: DataOptions, dense_transformed: bool,
                ids_per_sample: Optional[Dict[str, float]] = None) -> Dict[str, Any]:
    """The ``info`` of a :class:`DataBundle` (keys: :class:`DataBundle`): one place, so that
    :func:`encode` and a prepared directory (:mod:`~umec_torchrec.data.prepared`) agree.

    Args:
        source_info: the reader's ``info`` (``kind``, ``path``, ``bad_lines``, extras).
        source: the spec text.
        voc: the fitted vocabulary.
        counts: rows of ``(train, valid, test)``.
        ctr: mean label per split (``None`` for an empty split).
        ids_per_sample: the multi-hot features' mean ids per training row (``info["multi_hot"]``:
            ``{feature: {"ids_per_sample": mean}}``; absent when every feature has one id).
    """
    n_tr, n_va, n_te = (int(c) for c in counts)
    src_info = dict(source_info)
    info: Dict[str, Any] = {
        "source": source,
        "kind": src_info.pop("kind", None) or (source.split(":", 1)[0] if source else None),
        "path": src_info.pop("path", None),
        "vocab": voc.describe(),
        "table_sizes": dict(zip(feature_names, voc.table_sizes)),
        "feature_names": list(feature_names),
        "dense_names": list(dense_names),
        "rows": {"total": n_tr + n_va + n_te, "train": n_tr, "valid": n_va, "test": n_te},
        "split": {"kind": src_info.get("split_rule") or ("time_ordered" if options.time_ordered else "random"),
                  "seed": int(options.split_seed), "test_fraction": float(options.test_fraction),
                  "valid_fraction": float(options.valid_fraction), "time_ordered": bool(options.time_ordered),
                  "rows": {"train": n_tr, "valid": n_va, "test": n_te}},
        "bad_lines": int(src_info.pop("bad_lines", 0)),
        "dense_transform": "pre-transformed by the source" if dense_transformed else DENSE_TRANSFORM,
        "ctr": dict(ctr),
        "options": dataclasses.asdict(options),
    }
    if ids_per_sample:
        info["multi_hot"] = {f: {"ids_per_sample": float(v)} for f, v in ids_per_sample.items()}
    for k, v in src_info.items():  # source extras (ground truth, ...); never shadow the keys above
        info[k if k not in info else f"source_{k}"] = v
    return info


def iter_raw(spec: DataSpec, options: DataOptions, chunk_rows: int = CHUNK_ROWS,
             info: Optional[Dict[str, Any]] = None, workers: int = 1) -> Iterator[RawTable]:
    """The rows of :func:`read_raw`, in chunks of at most ``chunk_rows`` rows, in file order.

    The file sources (``criteo``, ``libsvm``, ``csv``, ``criteo-npy``) are read chunk by chunk
    (bounded memory); the generated ones are made whole by :func:`read_raw`, then cut. When every chunk has
    been taken, ``info`` (if given) holds what ``read_raw(...).info`` holds. ``workers > 1``:
    a Criteo TSV's lines are parsed by that many processes (the other sources ignore it).
    """
    for chunk in _iter_raw(spec, options, chunk_rows, info, workers):
        yield multi_hot(spec, chunk)


def _iter_raw(spec: DataSpec, options: DataOptions, chunk_rows: int, info: Optional[Dict[str, Any]],
              workers: int) -> Iterator[RawTable]:
    kw = dict(skip_bad_lines=options.skip_bad_lines, max_rows=options.max_rows, chunk_rows=chunk_rows, info=info)
    if spec.kind == "criteo":
        from umec_torchrec.data.criteo import iter_criteo_tsv

        yield from iter_criteo_tsv(spec.path, **kw, workers=workers)
    elif spec.kind == "libsvm":
        from umec_torchrec.data.libsvm import iter_libsvm

        yield from iter_libsvm(spec.path, names=spec.params.get("names"), **kw, ffm=bool(spec.params.get("ffm")))
    elif spec.kind == "criteo-npy":
        from umec_torchrec.data.criteo_npy import iter_criteo_npy

        yield from iter_criteo_npy(spec.path, days=spec.params.get("days"), max_rows=options.max_rows,
                                   chunk_rows=chunk_rows, info=info,
                                   num_embeddings_per_feature=spec.params.get("num_embeddings_per_feature"),
                                   split=spec.params.get("split"))
    elif spec.kind == "csv":
        from umec_torchrec.data.delimited import iter_delimited

        yield from iter_delimited(spec.path, label=options.label, dense=options.dense,
                                  categorical=options.categorical, delimiter=options.delimiter,
                                  header=options.header, **kw, **_list_params(spec))
    else:
        raw = _read_raw(spec, options)
        for a in range(0, len(raw), chunk_rows):
            b = min(len(raw), a + chunk_rows)
            yield RawTable(raw.dense[a:b], raw.cats[a:b], raw.labels[a:b], list(raw.dense_names),
                           list(raw.feature_names), {}, raw.dense_transformed,
                           {f: jag.slice(a, b) for f, jag in raw.multi_hot.items()})
        if info is not None:
            info.update(raw.info)


def encode(raw: RawTable, options: DataOptions, source: str = "") -> DataBundle:
    """Split ``raw`` three ways, fit the vocabulary on train, encode every split (see module docstring)."""
    n = len(raw)
    try:
        tr, va, te = source_split(n, options, raw.info)
        if options.vocab == "min_count":
            voc = Vocabulary.fit_columns([raw_column(raw, j, tr) for j in range(len(raw.feature_names))],
                                         raw.feature_names, min_count=options.min_count)
        else:
            voc = Vocabulary.fit(raw.cats[:0], raw.feature_names, mode=options.vocab, hash_size=options.hash_size,
                                 sizes=raw.info.get("num_embeddings_per_feature"))
    except ValueError as e:
        raise DataError(raw.info.get("path", source), None, None, str(e)) from None
    sizes = voc.table_sizes
    dense = raw.dense.astype(np.float32) if raw.dense_transformed else dense_transform(raw.dense)
    labels = raw.labels.astype(np.float32)
    ctr = {name: (float(labels[rows].mean()) if len(rows) else None)
           for name, rows in (("train", tr), ("valid", va), ("test", te))}
    info = bundle_info(raw.info, source, voc, raw.feature_names, raw.dense_names,
                       (len(tr), len(va), len(te)), ctr, options, raw.dense_transformed,
                       ids_per_sample={f: raw.multi_hot[f].take(tr).mean_length() for f in raw.multi_hot})

    def make(rows: np.ndarray, split: str) -> CTRData:
        try:
            ids = voc.encode(raw.cats[rows])
            multi = {}
            for f, jag in raw.multi_hot.items():
                part = jag.take(rows)
                multi[f] = part.with_values(voc.encode_column(f, part.values))
                ids[:, raw.feature_names.index(f)] = 0
        except ValueError as e:  # vocab="identity": an id outside its table
            raise DataError(raw.info.get("path", source), None, None, str(e)) from None
        return CTRData(
            dense=torch.from_numpy(np.ascontiguousarray(dense[rows])),
            sparse=torch.from_numpy(ids),
            labels=torch.from_numpy(np.ascontiguousarray(labels[rows])),
            dense_names=list(raw.dense_names),
            feature_names=list(raw.feature_names),
            table_sizes=list(sizes),
            info={**info, "split_name": split},
            multi_hot=multi,
        )

    return DataBundle(train=make(tr, "train"), valid=make(va, "valid"), test=make(te, "test"), info=info,
                      vocabulary=voc, split_rows={"train": tr, "valid": va, "test": te})


def load_data(spec: str, options: Optional[DataOptions] = None) -> DataBundle:
    """Read the source named by ``spec`` and return its seeded train/valid/test split.

    Args:
        spec: a data spec (grammar: :mod:`umec_torchrec.data.spec`), e.g. ``"synthetic"``,
            ``"synthetic:rows=5000,seed=3"``, ``"criteo:PATH"``, ``"criteo-npy:DIR"``,
            ``"libsvm:PATH"``, ``"csv:PATH,label=y,dense=a;b,categorical=c;d"``.
        options: defaults for splitting/encoding; inline spec options override them.

    Raises:
        DataError: unknown spec prefix, missing file, bad input (file, line, field).
    """
    parsed = parse_spec(spec)
    if parsed.kind == "prepared":
        from umec_torchrec.data.prepared import load_prepared

        return load_prepared(parsed.path, parsed.options, source=parsed.text)
    opts = dataclasses.replace(options or DataOptions(), **parsed.options)
    opts.validate(where=parsed.text)
    raw = read_raw(parsed, opts)
    return encode(raw, opts, source=parsed.text)
