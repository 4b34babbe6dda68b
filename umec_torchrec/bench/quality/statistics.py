"""Statistics of the quality rows: mean ± std, paired differences over seeds, the best
baseline per budget, field recovery on data with a known answer."""

from __future__ import annotations

import math
import statistics
from typing import Any, Dict, List, Optional, Sequence, Tuple

from umec_torchrec.bench.quality.config import REFERENCES

__all__ = ["mean_std", "paired_differences", "summarize", "best_baseline", "umec_vs_best", "field_recovery",
           "score_selection", "UMEC_METHODS"]

#: UMEC's own methods (never a "baseline")
UMEC_METHODS = ("umec", "umec_rewind", "umec_auto")


def mean_std(xs: Sequence[float]) -> Tuple[float, float]:
    """Mean and sample std of the non-NaN values (NaN std for one value, NaNs for none)."""
    xs = [x for x in xs if x is not None and not math.isnan(x)]
    if not xs:
        return float("nan"), float("nan")
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else float("nan"))


def paired_differences(rows: Sequence[Dict[str, Any]], baseline: str, budget: float,
                       metric: str = "auc", reference: str = "umec") -> List[float]:
    """``baseline - reference`` of ``metric`` at ``budget``, one value per seed that both have
    (sorted by seed)."""
    def by_seed(method):
        return {r["seed"]: r[metric] for r in rows if r["method"] == method and r["budget"] == budget}

    a, b = by_seed(baseline), by_seed(reference)
    return [a[k] - b[k] for k in sorted(set(a) & set(b))]


def summarize(rows: Sequence[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """One entry per (method, budget): means, stds and the paired AUC difference to UMEC."""
    out = []
    keys: List[Tuple[str, float]] = []
    for r in rows:
        k = (r["method"], r["budget"])
        if k not in keys:
            keys.append(k)
    for meth, b in keys:
        sel = [r for r in rows if r["method"] == meth and r["budget"] == b]
        e: Dict[str, Any] = {"method": meth, "budget": b, "n": len(sel), "label": sel[0].get("budget_label")}
        for k in ("auc", "log_loss", "accuracy", "flops_fraction", "n_kept_features"):
            e[k] = mean_std([float(r[k]) for r in sel])
        if meth != "umec" and meth not in REFERENCES:
            d = paired_differences(rows, meth, b)
            e["d_auc"] = mean_std(d) if d else None
            e["d_auc_n"] = len(d)
            e["d_auc_wins"] = sum(1 for x in d if x > 0)
        out.append(e)
    return out


def best_baseline(rows: Sequence[Dict[str, Any]], budget: float) -> Optional[str]:
    """The baseline (not UMEC, not a reference) with the highest mean test AUC at ``budget``."""
    means = {}
    for m in {r["method"] for r in rows if r["budget"] == budget}:
        if m in UMEC_METHODS or m in REFERENCES:
            continue
        means[m] = mean_std([r["auc"] for r in rows if r["method"] == m and r["budget"] == budget])[0]
    return max(sorted(means), key=lambda m: means[m]) if means else None


def umec_vs_best(rows: Sequence[Dict[str, Any]], budget: float, umec: str = "umec") -> Optional[Dict[str, Any]]:
    """``umec - best baseline`` at ``budget``, paired per seed: ``{"baseline", "mean", "std",
    "wins", "n", "umec_auc", "baseline_auc"}`` (``wins``: seeds where UMEC is higher), or
    ``None`` without a UMEC row or a baseline there."""
    base = best_baseline(rows, budget)
    if base is None or not any(r["method"] == umec and r["budget"] == budget for r in rows):
        return None
    d = [-x for x in paired_differences(rows, base, budget, reference=umec)]
    m, sd = mean_std(d)
    return {"baseline": base, "mean": m, "std": sd, "wins": sum(1 for x in d if x > 0), "n": len(d),
            "umec_auc": mean_std([r["auc"] for r in rows if r["method"] == umec and r["budget"] == budget]),
            "baseline_auc": mean_std([r["auc"] for r in rows if r["method"] == base and r["budget"] == budget])}


def field_recovery(rows: Sequence[Dict[str, Any]], label: str = "signal") -> Dict[str, Tuple[float, float]]:
    """Per method, the mean share of signal fields kept and of noise fields dropped over the
    rows of budget ``label`` (rows of known-answer data only)."""
    out = {}
    for m in dict.fromkeys(r["method"] for r in rows if r.get("budget_label") == label and "signal_kept" in r):
        sel = [r for r in rows if r["method"] == m and r.get("budget_label") == label and "signal_kept" in r]
        out[m] = (statistics.fmean(r["signal_kept"] for r in sel), statistics.fmean(r["noise_dropped"] for r in sel))
    return out


def score_selection(results: Sequence[Dict[str, Any]]) -> Dict[str, Any]:
    """UMEC's score kinds compared on the *validation* split: the ``umec_auto`` rows of a
    suite run record every kind's validation AUC per budget and seed.

    Returns:
        ``{"kinds": [...], "cells": [{"item", "budget", "n", "auc": {kind: mean over seeds}}],
        "mean_auc", "mean_rank", "wins": {kind: ...}, "choice": the kind of best mean rank}``
        (ties in rank broken by mean AUC).
    """
    cells: Dict[Any, List[Dict[str, float]]] = {}
    for it in results:
        for r in it.get("rows", []):
            by = (r.get("extra") or {}).get("valid_auc_by_score")
            if r["method"] == "umec_auto" and by:
                cells.setdefault((it["name"], r.get("budget_label") or r["budget"]), []).append(by)
    kinds = sorted({k for vs in cells.values() for v in vs for k in v})
    out_cells, ranks, aucs = [], {k: [] for k in kinds}, {k: [] for k in kinds}
    wins = {k: 0 for k in kinds}
    for (item, budget), vs in sorted(cells.items(), key=lambda kv: (kv[0][0], str(kv[0][1]))):
        m = {k: statistics.mean(v[k] for v in vs if k in v) for k in kinds}
        order = sorted(kinds, key=lambda k: -m[k])
        for i, k in enumerate(order):
            ranks[k].append(i + 1)
            aucs[k].append(m[k])
        wins[order[0]] += 1
        out_cells.append({"item": item, "budget": budget, "n": len(vs), "auc": m})
    mean_rank = {k: statistics.mean(v) for k, v in ranks.items() if v}
    mean_auc = {k: statistics.mean(v) for k, v in aucs.items() if v}
    choice = min(mean_rank, key=lambda k: (mean_rank[k], -mean_auc[k])) if mean_rank else None
    return {"kinds": kinds, "cells": out_cells, "mean_auc": mean_auc, "mean_rank": mean_rank, "wins": wins,
            "choice": choice}
