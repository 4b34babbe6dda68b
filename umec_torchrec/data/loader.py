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
from typing import Any, Dict, Optional

import numpy as np
import torch

from umec_torchrec.data.bundle import DataBundle
from umec_torchrec.data.dataset import CTRData
from umec_torchrec.data.errors import DataError
from umec_torchrec.data.options import DataOptions
from umec_torchrec.data.raw import RawTable, dense_transform
from umec_torchrec.data.spec import DataSpec, parse_spec
from umec_torchrec.data.split import split_rows
from umec_torchrec.data.vocab import Vocabulary

__all__ = ["DENSE_TRANSFORM", "encode", "load_data", "read_raw"]

DENSE_TRANSFORM = "log(1 + max(x, 0)), missing = 0"


#: generated sources: spec kind -> (module, generator returning an object with ``to_raw()``)
GENERATED_KINDS = {
    "synthetic": ("umec_torchrec.data.synthetic", "generate"),
    "clicklog": ("umec_torchrec.data.clicklog", "generate_clicklog"),
}


def read_raw(spec: DataSpec, options: DataOptions) -> RawTable:
    """Dispatch ``spec`` to its reader."""
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

        return read_criteo_npy(spec.path, days=spec.params.get("days"), max_rows=options.max_rows)
    if spec.kind == "libsvm":
        from umec_torchrec.data.libsvm import read_libsvm

        return read_libsvm(spec.path, names=spec.params.get("names"), skip_bad_lines=options.skip_bad_lines,
                           max_rows=options.max_rows)
    if spec.kind == "csv":
        from umec_torchrec.data.delimited import read_delimited

        return read_delimited(spec.path, label=options.label, dense=options.dense, categorical=options.categorical,
                              delimiter=options.delimiter, header=options.header,
                              skip_bad_lines=options.skip_bad_lines, max_rows=options.max_rows)
    raise DataError(spec.text, None, None, f"unknown data source {spec.kind!r}")  # parse_spec rejects these


def encode(raw: RawTable, options: DataOptions, source: str = "") -> DataBundle:
    """Split ``raw`` three ways, fit the vocabulary on train, encode every split (see module docstring)."""
    n = len(raw)
    try:
        tr, va, te = split_rows(n, float(options.test_fraction), float(options.valid_fraction),
                                int(options.split_seed), bool(options.time_ordered))
    except ValueError as e:
        raise DataError(raw.info.get("path", source), None, None, str(e)) from None
    voc = Vocabulary.fit(raw.cats[tr], raw.feature_names, mode=options.vocab, min_count=options.min_count,
                         hash_size=options.hash_size)
    sizes = voc.table_sizes
    dense = raw.dense.astype(np.float32) if raw.dense_transformed else dense_transform(raw.dense)
    labels = raw.labels.astype(np.float32)
    src_info = {k: v for k, v in raw.info.items()}
    info: Dict[str, Any] = {
        "source": source,
        "kind": src_info.pop("kind", None) or (source.split(":", 1)[0] if source else None),
        "path": src_info.pop("path", None),
        "vocab": voc.describe(),
        "table_sizes": dict(zip(raw.feature_names, sizes)),
        "feature_names": list(raw.feature_names),
        "dense_names": list(raw.dense_names),
        "rows": {"total": int(n), "train": int(len(tr)), "valid": int(len(va)), "test": int(len(te))},
        "split": {"kind": "time_ordered" if options.time_ordered else "random",
                  "seed": int(options.split_seed), "test_fraction": float(options.test_fraction),
                  "valid_fraction": float(options.valid_fraction), "time_ordered": bool(options.time_ordered),
                  "rows": {"train": int(len(tr)), "valid": int(len(va)), "test": int(len(te))}},
        "bad_lines": int(src_info.pop("bad_lines", 0)),
        "dense_transform": "pre-transformed by the source" if raw.dense_transformed else DENSE_TRANSFORM,
        "ctr": {name: (float(labels[rows].mean()) if len(rows) else None)
                for name, rows in (("train", tr), ("valid", va), ("test", te))},
        "options": dataclasses.asdict(options),
    }
    for k, v in src_info.items():  # source extras (ground truth, ...); never shadow the keys above
        info[k if k not in info else f"source_{k}"] = v

    def make(rows: np.ndarray, split: str) -> CTRData:
        return CTRData(
            dense=torch.from_numpy(np.ascontiguousarray(dense[rows])),
            sparse=torch.from_numpy(voc.encode(raw.cats[rows])),
            labels=torch.from_numpy(np.ascontiguousarray(labels[rows])),
            dense_names=list(raw.dense_names),
            feature_names=list(raw.feature_names),
            table_sizes=list(sizes),
            info={**info, "split_name": split},
        )

    return DataBundle(train=make(tr, "train"), valid=make(va, "valid"), test=make(te, "test"), info=info,
                      vocabulary=voc)


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
    opts = dataclasses.replace(options or DataOptions(), **parsed.options)
    opts.validate(where=parsed.text)
    raw = read_raw(parsed, opts)
    return encode(raw, opts, source=parsed.text)
