"""Which dtype each table of an export gets: a default and per-table rules.

Rules (``umec export --table-dtype``), comma-separated, each ``KEY=DTYPE`` with ``DTYPE`` one
of ``fp32``, ``fp16``, ``int8``, ``int4``:

* ``NAME=DTYPE``: the table called ``NAME`` (a table the masks pruned is ignored, and listed
  in the manifest);
* ``largest:K=DTYPE``: the ``K`` largest kept tables (rows x dim; ties: model order).

A table named explicitly wins over a ``largest`` rule, which wins over the default
(``--dtype``). Example: ``--dtype int8 --table-dtype largest:3=int4,t_C7=fp32``.
"""

from __future__ import annotations

from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

from umec_torchrec.export.served_tables import DTYPES

Rules = Union[str, Mapping[str, str], None]
"""Table dtype rules: the ``--table-dtype`` string or ``{"NAME" | "largest:K": dtype}``."""


def parse_rules(rules: Rules) -> Dict[str, str]:
    """``{key: dtype}`` of a rules string (``"t_a=int4,largest:2=fp16"``) or mapping; ``ValueError``
    naming the bad entry otherwise."""
    if rules is None:
        return {}
    if isinstance(rules, str):
        items: List[Tuple[str, str]] = []
        for part in (p.strip() for p in rules.split(",")):
            if not part:
                continue
            key, eq, dtype = part.partition("=")
            if not eq or not key.strip():
                raise ValueError(f"--table-dtype: {part!r} is not NAME=DTYPE or largest:K=DTYPE")
            items.append((key.strip(), dtype.strip()))
    else:
        items = [(str(k), str(v)) for k, v in rules.items()]
    out: Dict[str, str] = {}
    for key, dtype in items:
        if dtype not in DTYPES:
            raise ValueError(f"--table-dtype: {key}={dtype}: dtype must be one of {', '.join(DTYPES)}")
        if key.startswith("largest:"):
            k = key[len("largest:"):]
            if not k.isdigit() or int(k) < 1:
                raise ValueError(f"--table-dtype: {key}={dtype}: K in largest:K must be a positive integer")
        if key in out and out[key] != dtype:
            raise ValueError(f"--table-dtype: {key} is given two dtypes ({out[key]}, {dtype})")
        out[key] = dtype
    return out


def resolve(
    table_sizes: Mapping[str, int], default: str = "fp32", rules: Rules = None, pruned: Sequence[str] = ()
) -> Tuple[Dict[str, str], List[str]]:
    """``({table: dtype} for every kept table in model order, rule names ignored as pruned)``.

    Args:
        table_sizes: ``{table: rows x dim}`` of the kept tables, model order.
        default: the dtype of tables no rule names.
        rules: see :func:`parse_rules`.
        pruned: tables the masks removed (a rule naming one is ignored, not an error).

    Example::

        resolve({"a": 100, "b": 10, "c": 50}, "int8", "largest:1=int4,b=fp32")
        # ({"a": "int4", "b": "fp32", "c": "int8"}, [])
    """
    if default not in DTYPES:
        raise ValueError(f"--dtype must be one of {', '.join(DTYPES)}, got {default!r}")
    parsed = parse_rules(rules)
    out = {t: default for t in table_sizes}
    order = sorted(range(len(table_sizes)), key=lambda i: -list(table_sizes.values())[i])
    names = list(table_sizes)
    for key, dtype in sorted(((k, d) for k, d in parsed.items() if k.startswith("largest:")),
                             key=lambda kv: -int(kv[0].split(":")[1])):  # the smaller K wins on overlap
        for i in order[: int(key.split(":")[1])]:
            out[names[i]] = dtype
    ignored: List[str] = []
    unknown = []
    for key, dtype in parsed.items():
        if key.startswith("largest:"):
            continue
        if key in out:
            out[key] = dtype
        elif key in pruned:
            ignored.append(key)
        else:
            unknown.append(key)
    if unknown:
        raise ValueError(f"--table-dtype names tables {unknown} the model does not have (tables: {names})")
    return out, ignored


def uniform(dtypes: Mapping[str, str]) -> Optional[str]:
    """The dtype of all tables if they share one, else ``None``."""
    kinds = set(dtypes.values())
    return kinds.pop() if len(kinds) == 1 else None


__all__ = ["Rules", "parse_rules", "resolve", "uniform"]
