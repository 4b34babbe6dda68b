"""The export directory's files and its ``manifest.json``: what was kept, sizes and costs
before/after, budgets, source run, library versions, and the checks made at export.

Files of an export directory:

* ``model.pt`` (:data:`MODEL_FILE`): ``torch.save`` of ``{"state_dict", "config" (compact
  ModelConfig dict), "source_config", "masks"}``;
* ``program.pt2`` (:data:`PROGRAM_FILE`): the ``torch.export`` program of
  :class:`~umec_torchrec.export.program.CompactPredictor`;
* ``model_int8.pt`` (:data:`INT8_FILE`, when every table is int8): TorchRec's int8 state dict;
* ``vocabulary.npz`` (:data:`VOCABULARY_FILE`, when the run recorded one): raw value ->
  table row of every feature (:meth:`umec_torchrec.data.vocab.Vocabulary.load`), described
  by :func:`vocabulary_entry`;
* ``manifest.json`` (:data:`MANIFEST`): this module's :func:`build_manifest` (with the
  predicted latency of the dense and exported programs when a latency table is active).
"""

from __future__ import annotations

import os
from typing import Any, Dict, List, Optional

from torchrec.models.dlrm import DLRM

from umec_torchrec.export import measure
from umec_torchrec.export.compact import skeleton
from umec_torchrec.export.program import CompactPredictor, program_signature
from umec_torchrec.io import read_json
from umec_torchrec.models import ModelConfig
from umec_torchrec.umec import layout
from umec_torchrec.umec.masks import PruningMasks

FORMAT = "umec-torchrec-export/1"
MODEL_FILE = "model.pt"
INT8_FILE = "model_int8.pt"
PROGRAM_FILE = "program.pt2"
MANIFEST = "manifest.json"
VOCABULARY_FILE = "vocabulary.npz"


def _ratio(a: float, b: float) -> Optional[float]:
    return None if not b else a / b


def _before_after(before: Dict[str, int], after: Dict[str, int], key: str) -> Dict[str, Any]:
    return {"before": before[key], "after": after[key], "ratio": _ratio(after[key], before[key])}


def run_budgets(config: Dict[str, Any]) -> Dict[str, Any]:
    """``{"<section>.<key>": value}`` of every budget-like key of a run's ``config.json``."""
    out: Dict[str, Any] = {}
    for section, body in config.items():
        if isinstance(body, dict):
            for k, v in body.items():
                if "budget" in k.lower():
                    out[f"{section}.{k}"] = v
    return out


def build_manifest(
    cfg: ModelConfig,
    ccfg: ModelConfig,
    masks: PruningMasks,
    compact: DLRM,
    pred: CompactPredictor,
    program_diff: float,
    check_rows: int,
    source_run: Optional[str] = None,
    budgets: Optional[Dict[str, Any]] = None,
) -> Dict[str, Any]:
    """The manifest of an export (without ``int8`` and ``files``, which the writer fills in).

    Args:
        cfg / ccfg: the full and the compact model config.
        masks: what survives.
        compact: the compact DLRM.
        pred: its serving predictor (the exported program's module).
        program_diff: largest ``|program - module|`` logit difference on the check rows.
        check_rows: number of rows the checks ran on.
        source_run / budgets: the run exported and its budgets.
    """
    from umec_torchrec.runs import versions

    before, after = measure.model_figures(cfg), measure.model_figures(ccfg)
    flops = _before_after(before, after, "flops_per_sample")
    flops["how"] = "torch.utils.flop_counter.FlopCounterMode, batch 1, dense path (lookups count 0)"
    return {
        "format": FORMAT,
        "kind": cfg.kind,
        "source_run": source_run,
        "features": {"all": list(cfg.feature_names), "kept": list(ccfg.feature_names), "pruned": masks.pruned_features},
        "tables": {  # a shared table once: kept while one of its features is
            "kept": ccfg.table_rows(),
            "pruned": {t: n for t, n in cfg.table_rows().items() if t not in ccfg.table_rows()},
        },
        "embedding_dim": cfg.embedding_dim,
        "dense_in_features": cfg.dense_in_features,
        "layers": {
            "bottom": {"before": list(cfg.bottom), "after": list(ccfg.bottom)},
            "top": {"before": list(cfg.top), "after": list(ccfg.top)},
            "over_arch_in": {
                "before": layout.over_arch_input_width(skeleton(cfg)),
                "after": layout.over_arch_input_width(compact),
            },
        },
        "flops_per_sample": flops,
        "embedding_bytes": _before_after(before, after, "embedding_bytes"),
        "lookup_bytes_per_sample": _before_after(before, after, "lookup_bytes_per_sample"),
        "parameters": {"before": before["parameters"], "after": after["parameters"]},
        "budgets": budgets or {},
        "model_config": ccfg.to_dict(),
        "source_model_config": cfg.to_dict(),
        "program": {"file": PROGRAM_FILE, **program_signature(cfg.dense_in_features, pred),
                    "max_abs_diff_vs_module": program_diff, "check_rows": int(check_rows)},
        "int8": None,
        "latency": latency_entry(cfg, ccfg, pred),
        "versions": versions(),
    }


def latency_entry(cfg: ModelConfig, ccfg: ModelConfig, pred: CompactPredictor) -> Optional[Dict[str, Any]]:
    """The manifest's ``latency`` section: predicted seconds per call of the dense and of the
    exported program (at their served widths) from the active latency table
    (:mod:`umec_torchrec.umec.latency`, ``--latency-model``); ``None`` without one, and
    ``{"unavailable": why}`` when the table does not fit the model or lacks a dtype the
    program serves (naming it and the file).

    The exported program is priced at the dtypes it serves its tables in (``pred.served``:
    ``--dtype`` / ``--table-dtype``), the dense one with fp32 tables (the trained model as
    served without quantization); ``ratio`` is compact over that."""
    from umec_torchrec.export.aligned import aligned_width
    from umec_torchrec.umec.latency import active_latency_table, predict_program

    table = active_latency_table(required=False)
    if table is None:
        return None

    def served(widths: List[int]) -> List[int]:
        return [aligned_width(w, pred.align) for w in widths[:-1]] + [widths[-1]]

    st = pred.served
    if st is None:
        dtypes = ["fp32"] * len(ccfg.table_sizes)
    else:  # each kept feature's table dtype, as the program serves it
        dtypes = [st.groups[g] for g in st.feature_group.tolist()]
    try:
        dense = predict_program(table, cfg.kind, cfg.embedding_dim, cfg.dense_in_features, served(cfg.bottom),
                                served(cfg.top), cfg.table_sizes, served=False, dtypes=["fp32"] * len(cfg.table_sizes))
        compact = predict_program(table, ccfg.kind, ccfg.embedding_dim, ccfg.dense_in_features, pred.bottom.widths,
                                  pred.top.widths, ccfg.table_sizes, served=False, dtypes=dtypes)
    except ValueError as e:
        return {"unavailable": str(e)}
    return {"batch": table.batch, "unit": "seconds per call of the calibrated batch",
            "dense_s": dense["total"], "compact_s": compact["total"],
            "ratio": _ratio(compact["total"], dense["total"]), "compact_pieces_s": compact,
            "dense_dtype": "fp32", "compact_dtypes": dict(zip(ccfg.feature_names, dtypes)),
            "calibration": {"file": table.source,
                            **{k: table.conditions.get(k) for k in ("threads", "batch", "cpu", "torch", "clock",
                                                                    "calibrated_at")}}}


def int8_entry(max_abs_logit_diff: float, check_rows: int, embedding_bytes: int, method: str) -> Dict[str, Any]:
    """The manifest's ``int8`` section."""
    return {
        "file": INT8_FILE,
        "method": method,
        "max_abs_logit_diff": float(max_abs_logit_diff),
        "check_rows": int(check_rows),
        "embedding_bytes": int(embedding_bytes),
    }


def dtypes_entry(default: str, rules: Any, ignored: List[str], pred: CompactPredictor, dtypes: Dict[str, str],
                 table_rows: Dict[str, int], dim: int, abs_diff: Any, torchrec_diff: float) -> Dict[str, Any]:
    """The manifest's ``dtypes`` section: each table's dtype and bytes as the program stores it,
    and the program's logit difference against the fp32 compact model.

    Args:
        default / rules / ignored: ``--dtype``, ``--table-dtype`` and the rules naming pruned tables.
        pred: the program's module.
        dtypes: ``{table: dtype}`` (model order); table_rows: ``{table: rows}``; dim: D.
        abs_diff: ``|program - fp32 compact module|`` per check row (a tensor).
        torchrec_diff: largest ``|TorchRec quantized module - fp32 compact module|`` (0 without quantization).
    """
    from umec_torchrec.export.quantize import FALLBACK, QUANT_METHOD

    served = pred.served
    stored = dict(served.table_bytes) if served is not None else {t: n * dim * 4 for t, n in table_rows.items()}
    quantized = any(d != "fp32" for d in dtypes.values())
    return {
        "default": default,
        "rules": rules if rules is None or isinstance(rules, str) else dict(rules),
        "ignored_rules": list(ignored),
        "tables": {t: {"dtype": d, "rows": int(table_rows[t]), "bytes": int(stored[t]),
                       "fp32_bytes": int(table_rows[t] * dim * 4)} for t, d in dtypes.items()},
        "embedding_bytes": int(sum(stored.values())),
        "fp32_embedding_bytes": int(sum(n * dim * 4 for n in table_rows.values())),
        "method": QUANT_METHOD if quantized else "fp32 tables (no quantization)",
        "program_tables": None if not quantized else FALLBACK,
        "logit_diff_vs_fp32": {"max": float(abs_diff.max()), "mean": float(abs_diff.mean()),
                               "rows": int(abs_diff.numel())},
        "torchrec_quant_logit_diff_vs_fp32_max": float(torchrec_diff),
    }


def vocabulary_entry(vocabulary: Any, kept_features: List[str]) -> Dict[str, Any]:
    """The manifest's ``vocabulary`` section: how a served request's raw values become the
    program's ``ids`` (``vocabulary`` is a :class:`~umec_torchrec.data.vocab.Vocabulary`)."""
    from umec_torchrec.data.vocab import RAW_VALUES

    return {
        "file": VOCABULARY_FILE,
        **vocabulary.describe(),
        "features": list(vocabulary.feature_names),
        "program_ids": list(kept_features),
        "raw_values": dict(RAW_VALUES),
        "apply": ("voc = umec_torchrec.data.Vocabulary.load('vocabulary.npz'); for each kept feature f, in the "
                  "order of program_ids: ids[:, k] = voc.encode_column(f, raw_int64_values_of_f) (raw values as "
                  "in raw_values); then program(dense, ids), dense transformed as the run's data was"),
    }


def read_manifest(export_dir: str) -> Dict[str, Any]:
    """The export's ``manifest.json`` (clear error if ``export_dir`` is not an export).

    Raises:
        FileNotFoundError: no ``manifest.json``.
        ValueError: a manifest of another format.
    """
    p = os.path.join(export_dir, MANIFEST)
    if not os.path.isfile(p):
        raise FileNotFoundError(f"{export_dir}: not an export directory (no {MANIFEST})")
    m = read_json(p)
    if not isinstance(m, dict) or m.get("format") != FORMAT:
        raise ValueError(f"{p}: not a {FORMAT} manifest")
    return m


def summary_lines(manifest: Dict[str, Any], out_dir: str) -> List[str]:
    """A few human-readable lines about an export."""
    m = manifest
    f, e = m["flops_per_sample"], m["embedding_bytes"]
    lines = [
        f"exported {m['kind']} model to {out_dir}: "
        f"{len(m['features']['kept'])}/{len(m['features']['all'])} features kept",
        f"  bottom {m['layers']['bottom']['before']} -> {m['layers']['bottom']['after']}, "
        f"top {m['layers']['top']['before']} -> {m['layers']['top']['after']}",
        f"  FLOPs/sample {f['before']:,} -> {f['after']:,} ({f['ratio']:.3f}), "
        f"embedding bytes {e['before']:,} -> {e['after']:,} ({e['ratio']:.3f})",
    ]
    lat = m.get("latency")
    if lat and "compact_s" in lat:
        lines.append(f"  predicted latency per batch of {lat['batch']}: {1e3 * lat['dense_s']:.3f} ms -> "
                     f"{1e3 * lat['compact_s']:.3f} ms ({lat['ratio']:.3f})")
    elif lat and "unavailable" in lat:
        lines.append(f"  predicted latency unavailable: {lat['unavailable']}")
    dt = m.get("dtypes")
    if dt and any(t["dtype"] != "fp32" for t in dt["tables"].values()):
        kinds = sorted({t["dtype"] for t in dt["tables"].values()})
        lines.append(f"  tables {'/'.join(kinds)}: {dt['embedding_bytes']:,} bytes "
                     f"(fp32 {dt['fp32_embedding_bytes']:,}), "
                     f"logit diff vs fp32 max {dt['logit_diff_vs_fp32']['max']:.2e} mean "
                     f"{dt['logit_diff_vs_fp32']['mean']:.2e} on {dt['logit_diff_vs_fp32']['rows']} rows")
    if m.get("int8"):
        lines.append(f"  int8 tables: {m['int8']['embedding_bytes']:,} bytes, "
                     f"max |logit diff| {m['int8']['max_abs_logit_diff']:.2e} on {m['int8']['check_rows']} rows")
    return lines


__all__ = [
    "FORMAT",
    "MODEL_FILE",
    "INT8_FILE",
    "PROGRAM_FILE",
    "MANIFEST",
    "run_budgets",
    "build_manifest",
    "int8_entry",
    "dtypes_entry",
    "latency_entry",
    "vocabulary_entry",
    "VOCABULARY_FILE",
    "read_manifest",
    "summary_lines",
]
