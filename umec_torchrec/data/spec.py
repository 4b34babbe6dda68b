"""Data spec strings: which source :func:`~umec_torchrec.data.load_data` reads.

Grammar::

    spec   := KIND [ ":" body ]
    body   := item ( "," item )*
    item   := PATH | KEY "=" VALUE          (PATH: first item of a file source only)
    VALUE  := text without "," ; lists are ";"-separated: dense=a;b;c

Kinds (``KIND``):

* ``criteo:PATH`` - Criteo Kaggle/Terabyte TSV, plain or gzip (detected by magic bytes);
* ``criteo-npy:DIR`` - TorchRec's preprocessed ``day_{d}_{dense,sparse,labels}.npy`` files;
  params ``days=0;1;2`` (default: every day found, in order), TorchRec's
  ``num_embeddings_per_feature=N`` or ``=N1;...;N26`` (ids mod these caps; with
  ``vocab=identity`` the tables are exactly these sizes) and ``split=last_day`` (TorchRec's
  split: the last day's first half validates, its second half tests);
  ``criteo`` and ``criteo-npy`` also take ``multi_hot_sizes=K`` or ``=K1;...;K26``: MLPerf
  DLRM-v2-style multi-hot features, K ids per row generated from each id
  (:mod:`umec_torchrec.data.multihot`);
* ``libsvm:PATH`` - libsvm/libFM one-hot CTR rows (``label idx:1 idx:1 ...``, one index per
  field, in field order); param ``names=user;item;...`` (default ``f1..fK``, or Frappe's
  field names for a 10-field file whose name contains ``frappe``); ``ffm=1``: libFFM lines
  ``label field:idx:1 ...``, several indices per field (multi-hot; ``names`` required);
* ``csv:PATH`` - delimited file with a declared schema: ``label=COL``, ``dense=A;B``,
  ``categorical=C;D``, ``delimiter=tab|comma|semicolon|pipe|space|<char>``, ``header=0|1``
  (columns are 0-based indices when ``header=0``); ``multi_hot=C;D`` (categorical columns
  holding lists ``a|b|c``: multi-hot features) and ``list_delimiter=pipe|<char>`` (default ``|``);
* ``prepared:DIR`` - a directory written by ``umec prepare`` (:mod:`umec_torchrec.data.prepared`):
  the encoded splits, read through memory maps; inline options must equal the ones it was
  prepared with (its split and vocabulary are fixed);
* ``synthetic`` - the generator of :mod:`umec_torchrec.data.synthetic`; params ``rows``,
  ``seed``, ``n_dense``, ``n_sparse``, ``signal_sparse``, ``signal_dense`` (all optional).

Any source also takes the :class:`~umec_torchrec.data.options.DataOptions` keys inline:
``test_fraction``, ``valid_fraction``, ``split_seed``, ``time_ordered``,
``vocab`` (``min_count``|``hash``|``identity``),
``min_count``, ``hash_size``, ``skip_bad_lines``, ``max_rows`` (booleans: ``1/0/true/false``).
Inline values override the ``DataOptions`` passed to ``load_data``.

Examples::

    synthetic
    synthetic:rows=5000,seed=3
    criteo:../shared/data/criteo_kaggle_train_sample.tsv.gz,time_ordered=1
    criteo:../shared/data/criteo_kaggle_train_sample.tsv.gz,valid_fraction=0.15,test_fraction=0.2
    criteo-npy:/data/criteo_1tb,days=0;1,vocab=hash,hash_size=1000000,max_rows=5000000
    libsvm:../shared/data/frappe/frappe.valid.libsvm.gz
    csv:logs.csv,label=clicked,dense=price;age,categorical=user;item,delimiter=tab
    prepared:data/criteo_day0

Limits: a path may not contain ``,`` (the path is the text between the first ``:`` and
the first ``,``); a path may contain ``:`` after the first one. Pass such options through
:class:`~umec_torchrec.data.options.DataOptions` instead of inline.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Optional

from umec_torchrec.data.errors import DataError

__all__ = ["DataSpec", "parse_spec", "absolute_spec", "FILE_KINDS", "KINDS"]

FILE_KINDS = ("criteo", "criteo-npy", "libsvm", "csv", "prepared")
KINDS = FILE_KINDS + ("synthetic", "clicklog")

_BOOL = {"1": True, "true": True, "yes": True, "on": True, "0": False, "false": False, "no": False, "off": False}
_DELIMS = {"tab": "\t", "\\t": "\t", "comma": ",", "semicolon": ";", "pipe": "|", "space": " "}

# DataOptions keys allowed inline, with their parsers.
_OPTION_KEYS = {
    "test_fraction": float,
    "valid_fraction": float,
    "split_seed": int,
    "time_ordered": "bool",
    "vocab": str,
    "min_count": int,
    "hash_size": int,
    "skip_bad_lines": "bool",
    "max_rows": int,
    "label": str,
    "dense": "list",
    "categorical": "list",
    "delimiter": "delim",
    "header": "bool",
}
# Source-specific parameters, per kind.
_PARAM_KEYS: Dict[str, Dict[str, Any]] = {
    "synthetic": {"rows": int, "seed": int, "n_dense": int, "n_sparse": int, "signal_sparse": int, "signal_dense": int},
    "clicklog": {"rows": int, "seed": int, "n_dense": int, "signal_dense": int, "high_cardinality": int, "ctr": float},
    "criteo": {"multi_hot_sizes": "intlist"},
    "criteo-npy": {"days": "intlist", "num_embeddings_per_feature": "intlist", "split": str,
                   "multi_hot_sizes": "intlist"},
    "libsvm": {"names": "list", "ffm": "bool"},
    "csv": {"multi_hot": "list", "list_delimiter": "delim"},
    "prepared": {},
}
_CSV_ONLY = ("label", "dense", "categorical", "delimiter", "header")


@dataclass
class DataSpec:
    """A parsed spec: ``kind``, ``path`` (file sources), DataOptions overrides and source params."""

    text: str
    kind: str
    path: Optional[str] = None
    options: Dict[str, Any] = field(default_factory=dict)
    params: Dict[str, Any] = field(default_factory=dict)


def _convert(spec: str, key: str, value: str, how: Any) -> Any:
    try:
        if how == "bool":
            if value.lower() not in _BOOL:
                raise ValueError(f"expected one of {sorted(_BOOL)}")
            return _BOOL[value.lower()]
        if how == "list":
            return [v for v in value.split(";") if v != ""]
        if how == "intlist":
            return [int(v) for v in value.split(";") if v != ""]
        if how == "delim":
            return _DELIMS.get(value.lower(), value)
        return how(value)
    except ValueError as e:
        raise DataError(spec, None, key, full_path=True, reason=f"bad value {value!r} ({e})") from None


def parse_spec(spec: str) -> DataSpec:
    """Parse a data spec string (grammar in the module docstring).

    Raises:
        DataError: naming the spec and the offending part (unknown kind, missing path,
            unknown key, bad value).
    """
    if not isinstance(spec, str) or not spec.strip():
        raise DataError(str(spec), None, None, full_path=True,
                        reason="empty data spec; expected e.g. 'synthetic' or 'criteo:PATH'")
    text = spec.strip()
    kind, sep, body = text.partition(":")
    kind = kind.strip().lower()
    if kind not in KINDS:
        raise DataError(text, None, None, full_path=True,
                        reason=f"unknown data source {kind!r}; expected one of {', '.join(KINDS)}")
    items = [s for s in body.split(",")] if sep else []
    out = DataSpec(text=text, kind=kind)
    if kind in FILE_KINDS:
        if not items or not items[0].strip():
            raise DataError(text, None, None, full_path=True, reason=f"'{kind}' needs a path: '{kind}:PATH'")
        out.path = items[0].strip()
        items = items[1:]
    for item in items:
        item = item.strip()
        if not item:
            continue
        key, eq, value = item.partition("=")
        key = key.strip().lower()
        if not eq:
            raise DataError(text, None, None, full_path=True, reason=f"expected KEY=VALUE, got {item!r}")
        value = value.strip()
        if key in _PARAM_KEYS[kind]:
            out.params[key] = _convert(text, key, value, _PARAM_KEYS[kind][key])
        elif key in _OPTION_KEYS and (kind == "csv" or key not in _CSV_ONLY):
            out.options[key] = _convert(text, key, value, _OPTION_KEYS[key])
        else:
            allowed = sorted(set(_PARAM_KEYS[kind]) | {k for k in _OPTION_KEYS if kind == "csv" or k not in _CSV_ONLY})
            raise DataError(text, None, key, full_path=True,
                            reason=f"unknown option for '{kind}'; expected one of {', '.join(allowed)}")
    return out


def absolute_spec(spec: str) -> tuple:
    """``(spec with its path made absolute, the absolute path or None)``: a recorded spec
    then reloads from any working directory.

    Example::

        spec, path = absolute_spec("criteo:data/x.tsv,time_ordered=1")  # path: "/cwd/data/x.tsv"
    """
    import os

    parsed = parse_spec(spec)
    if parsed.path is None:
        return spec, None
    kind, _, body = parsed.text.partition(":")
    _, comma, rest = body.partition(",")
    path = os.path.abspath(os.path.expanduser(parsed.path))
    return f"{kind}:{path}{comma}{rest}", path
