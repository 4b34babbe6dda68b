"""Outputs of ``umec bench quality``: the CSV rows, the Markdown table, the plot, the JSON,
and the suite's one report."""

from __future__ import annotations

import csv
import io
import json
import math
import os
from typing import Any, Dict, Sequence

from umec_torchrec.bench.quality.config import REFERENCES, QualityConfig
from umec_torchrec.bench.quality.methods import METHODS
from umec_torchrec.bench.quality.statistics import field_recovery, mean_std, score_selection, summarize, umec_vs_best
from umec_torchrec.io import atomic_write, write_json

__all__ = ["CSV_FIELDS", "format_markdown", "write_csv", "plot", "write_outputs", "format_suite_markdown",
           "format_selection_markdown"]

CSV_FIELDS = ["method", "budget", "seed", "mode", "auc", "log_loss", "accuracy", "flops", "flops_fraction",
              "embedding_bytes", "embedding_bytes_fraction", "n_kept_features", "kept_features", "kept_units",
              "train_steps", "seconds"]


def _pm(m: float, s: float, digits: int = 4, signed: bool = False) -> str:
    f = f"{{:{'+' if signed else ''}.{digits}f}}"
    return f.format(m) + ("" if math.isnan(s) else " ± " + f"{{:.{digits}f}}".format(s))


def _budget_text(b: float, label: Any) -> str:
    return f"{b:g}" if not label else f"{b:.3g} ({label})"


def format_markdown(cfg: QualityConfig, rows: Sequence[Dict[str, Any]], seconds: float) -> str:
    """The table of one run: per method and budget, mean ± std and ΔAUC vs UMEC."""
    summ = summarize(rows)
    mode = "features only" if cfg.features_only else "features + bottom/top MLP units"
    lines = [
        f"# UMEC against baselines: {cfg.data}",
        "",
        f"Budget on `{cfg.resource}` (fraction of the dense model); groups: {mode}; seeds 0..{cfg.seeds - 1} "
        f"(split, init, data order); AUC, log loss and accuracy on the held-out split. "
        f"ΔAUC = baseline − UMEC, paired per seed, mean ± std over the seeds both have (wins = seeds where the "
        f"baseline is better). Runtime {seconds / 60:.1f} min.",
        "",
        "| method | budget | AUC | log loss | accuracy | achieved " + cfg.resource
        + " | features kept | ΔAUC vs UMEC (n, wins) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    order = list(REFERENCES) + list(METHODS)
    ordered = sorted(summ, key=lambda e: (-e["budget"],
                                          order.index(e["method"]) if e["method"] in order else len(order)))
    for e in ordered:
        if cfg.resource == "embedding_bytes":
            fr = mean_std([r["embedding_bytes_fraction"] for r in rows
                           if r["method"] == e["method"] and r["budget"] == e["budget"]])
        else:
            fr = e["flops_fraction"]
        d = e.get("d_auc")
        dtxt = "" if d is None else f"{_pm(*d, signed=True)} ({e['d_auc_n']}, {e['d_auc_wins']})"
        if e["method"] == "umec":
            dtxt = "—"
        lines.append(f"| {e['method']} | {_budget_text(e['budget'], e.get('label'))} | {_pm(*e['auc'])} | "
                     f"{_pm(*e['log_loss'])} | {_pm(*e['accuracy'])} | {100 * fr[0]:.1f}% | "
                     f"{e['n_kept_features'][0]:.1f} | {dtxt} |")
    lines += ["", "Settings:", "", "```json", json.dumps(cfg.to_dict(), indent=1), "```", ""]
    return "\n".join(lines)


def write_csv(path: str, rows: Sequence[Dict[str, Any]]) -> None:
    """``rows`` as CSV with the columns :data:`CSV_FIELDS` (floats to 6 significant digits)."""
    def w(f):
        wr = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore", lineterminator="\n")
        wr.writeheader()
        for r in rows:
            wr.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items() if k in CSV_FIELDS})

    atomic_write(path, w)


def plot(path: str, cfg: QualityConfig, rows: Sequence[Dict[str, Any]]) -> None:
    """Budget (log scale) against mean AUC (± std bars), one line per method; dense dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summ = summarize(rows)
    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=120)
    for meth in METHODS:
        pts = sorted((e["budget"], e["auc"]) for e in summ if e["method"] == meth)
        if not pts:
            continue
        xs = [p[0] for p in pts]
        ys = [p[1][0] for p in pts]
        es = [0.0 if math.isnan(p[1][1]) else p[1][1] for p in pts]
        ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, label=meth, linewidth=2 if meth == "umec" else 1.2)
    for ref, style in (("dense", "--"), ("dense_ft", ":")):
        e = next((e for e in summ if e["method"] == ref), None)
        if e is not None:
            ax.axhline(e["auc"][0], color="k", linestyle=style, linewidth=1,
                       label="dense" if ref == "dense" else "dense, trained on as long")
    ax.set_xscale("log")
    bs = sorted({r["budget"] for r in rows if r["method"] not in REFERENCES} or set(cfg.budgets))
    ax.set_xticks(bs)
    ax.set_xticklabels([f"{b:.3g}" for b in bs])
    ax.minorticks_off()
    ax.set_xlabel(f"budget ({cfg.resource}, fraction of dense)" + (", features only" if cfg.features_only else ""))
    ax.set_ylabel("held-out AUC (mean ± std over seeds)")
    ax.set_title(os.path.basename(cfg.data.split(":", 1)[-1].split(",")[0]) or cfg.data, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    atomic_write(path, lambda f: f.write(buf.getvalue()), mode="wb")


def write_outputs(out_dir: str, cfg: QualityConfig, rows: Sequence[Dict[str, Any]], seconds: float) -> None:
    """``quality.{csv,md,png,json}`` into ``out_dir``."""
    os.makedirs(out_dir, exist_ok=True)
    write_csv(os.path.join(out_dir, "quality.csv"), rows)
    atomic_write(os.path.join(out_dir, "quality.md"), lambda f: f.write(format_markdown(cfg, rows, seconds)))
    plot(os.path.join(out_dir, "quality.png"), cfg, rows)
    write_json(os.path.join(out_dir, "quality.json"), {"config": cfg.to_dict(), "seconds": seconds, "rows": list(rows)})


def format_suite_markdown(results: Sequence[Dict[str, Any]], seconds: float, command: str = "") -> str:
    """The suite's report.

    Args:
        results: one entry per suite item: ``{"name", "data", "mode", "config", "rows"}``
            (``rows`` empty and ``"skipped"`` set when the item did not run).
        seconds: total run time.
        command: the command line, recorded in the report.
    """
    lines = ["# UMEC quality suite", ""]
    if command:
        lines += [f"Command: `{command}`. ", ""]
    lines += [f"Total time {seconds / 60:.1f} min. Test AUC; UMEC's own choices (`umec_auto`'s score kind) are "
              "made on the validation split only. Δ = UMEC − best baseline (the baseline with the highest mean test "
              "AUC at that budget), paired per seed, mean ± std; wins = seeds where UMEC is higher.", "",
              "| dataset | mode | budget | UMEC | AUC | best baseline | AUC | Δ (mean ± std) | wins |",
              "|---|---|---|---|---|---|---|---|---|"]
    skipped = []
    for res in results:
        if res.get("skipped"):
            skipped.append(f"* {res['name']}: skipped ({res['skipped']})")
            continue
        rows = res["rows"]
        budgets = sorted({(r["budget"], r.get("budget_label")) for r in rows if r["method"] not in REFERENCES},
                         key=lambda x: -x[0])
        umecs = [m for m in ("umec", "umec_auto", "umec_rewind") if any(r["method"] == m for r in rows)]
        for b, label in budgets:
            for u in umecs:
                c = umec_vs_best(rows, b, umec=u)
                if c is None:
                    continue
                lines.append(f"| {res['name']} | {res['mode']} | {_budget_text(b, label)} | {u} | "
                             f"{_pm(*c['umec_auc'])} | "
                             f"{c['baseline']} | {_pm(*c['baseline_auc'])} | {_pm(c['mean'], c['std'], signed=True)} | "
                             f"{c['wins']}/{c['n']} |")
    rec = [(res, field_recovery(res["rows"])) for res in results if not res.get("skipped")]
    rec = [(res, fr) for res, fr in rec if fr]
    if rec:
        lines += ["", "Field recovery on the generated family, at the budget that fits exactly the signal fields "
                  "(share of signal fields kept / share of noise fields dropped, mean over seeds):", "",
                  "| dataset | mode | method | signal kept | noise dropped |", "|---|---|---|---|---|"]
        for res, fr in rec:
            for m, (sk, nd) in fr.items():
                lines.append(f"| {res['name']} | {res['mode']} | {m} | {100 * sk:.0f}% | {100 * nd:.0f}% |")
    if skipped:
        lines += ["", "Not run:", ""] + skipped
    lines += ["", "Per-item settings and rows: `suite.json`; per-item tables: `<item>/quality.md`.", ""]
    return "\n".join(lines)


def format_selection_markdown(results: Sequence[Dict[str, Any]], seconds: float, command: str = "") -> str:
    """The score-kind selection (:func:`~umec_torchrec.bench.quality.statistics.score_selection`)
    as Markdown: validation AUC per kind, dataset and budget, mean rank, wins and the choice."""
    sel = score_selection(results)
    kinds = sel["kinds"]
    lines = ["# UMEC score kinds on the validation split", "",
             f"`{command}` ({seconds / 60:.1f} min). Mean validation AUC over the seeds; the test split is "
             "not read. The default is the kind of best mean rank.", "",
             "| item | budget | n | " + " | ".join(kinds) + " |", "|---|---|---|" + "---|" * len(kinds)]
    for c in sel["cells"]:
        best = max(kinds, key=lambda k: c["auc"][k])
        vals = [(f"**{c['auc'][k]:.4f}**" if k == best else f"{c['auc'][k]:.4f}") for k in kinds]
        lines.append(f"| {c['item']} | {c['budget']} | {c['n']} | " + " | ".join(vals) + " |")
    for name, key, fmt in (("mean AUC", "mean_auc", "{:.4f}"), ("mean rank", "mean_rank", "{:.2f}"),
                           ("wins", "wins", "{}")):
        lines.append(f"| {name} | | | " + " | ".join(fmt.format(sel[key].get(k, float("nan"))) for k in kinds) + " |")
    lines += ["", f"Choice: `{sel['choice']}`."]
    return "\n".join(lines) + "\n"
