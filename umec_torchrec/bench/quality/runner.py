"""``umec bench quality``: UMEC against the baselines on real data, side by side in one run.

Per seed: load the data (seeded random split, ``split_seed = seed``), train the dense model
once and checkpoint it (model + optimizer state); then, for every method and budget, reload
that checkpoint, compress, fine-tune with the masks fixed
(:class:`~umec_torchrec.umec.masked_optimizer.MaskedOptimizer`) and evaluate on the held-out
split. Everything runs in one process (world size 1) and in memory, with the library's own
``build_training`` / ``fit`` / ``evaluate`` / ``UMECOptimizer`` / ``MaskedOptimizer``.

Equal training after the dense model (``C`` = compress epochs, ``F`` = fine-tune epochs):

========================  ===============================================================
method                    after the dense model
========================  ===============================================================
``umec``                  ``C`` epochs of UMEC's primal-dual search, hard prune, ``F`` fine-tune
``umec_rewind``           UMEC's masks (same search) applied to the *dense* weights, then
                          ``C + F`` fine-tune like the one-shot methods (``umec finetune --rewind``)
``group_lasso``           ``C`` epochs with the group L2,1 prox, threshold to budget, ``F`` fine-tune
``magnitude``             one-shot: least-norm groups to budget, then ``C + F`` fine-tune
``random``                one-shot: random groups to budget, then ``C + F`` fine-tune
``uniform``               one-shot: every layer narrowed by one factor, then ``C + F`` fine-tune
========================  ===============================================================

Every phase uses the same data order (per seed) and the same learning rates: the dense
rates times ``post_lr_factor`` (default 0.1: at the full rate a second pass over a small
sample overfits the tables, for every method alike). All methods meet the same budgets
with the same resource model (dense-path FLOPs by default). References: ``dense`` (the
dense model after its training) and ``dense_ft`` (the dense model trained on for
``C + F`` epochs at the post-dense rates).

``--features-only``: only feature groups are pruned (the paper's Figure 3); ``uniform`` does
not apply there and is skipped.

Writes into ``--out``: ``quality.csv`` (one row per method, budget and seed),
``quality.md`` (mean +- std, and each baseline's paired AUC difference to UMEC over the
seeds both have), ``quality.png`` (budget against AUC; dense dashed) and ``quality.json``
(the settings and the rows).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import json
import math
import os
import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch

from umec_torchrec.baselines import (GroupLassoOptimizer, budget_masks, fractions_of_masks, random_scores,
                                     uniform_width_masks, weight_scores)
from umec_torchrec.distributed import DistContext, init_distributed
from umec_torchrec.io import atomic_write, write_json
from umec_torchrec.train.api import build_training, fit, make_model_config
from umec_torchrec.train.checkpoint import load_checkpoint, save_checkpoint
from umec_torchrec.train.metrics import evaluate
from umec_torchrec.train.optim import TrainConfig
from umec_torchrec.umec.groups import discover_groups
from umec_torchrec.umec.masked_optimizer import MaskedOptimizer
from umec_torchrec.umec.masks import PruningMasks
from umec_torchrec.umec.optimizer import UMECConfig, UMECOptimizer
from umec_torchrec.umec.resources import resources_of_masks

METHODS = ("umec", "umec_rewind", "uniform", "magnitude", "group_lasso", "random")
REFERENCES = ("dense", "dense_ft")
DEFAULT_DATA = "criteo:../shared/data/criteo_kaggle_train_sample.tsv.gz"
CSV_FIELDS = ["method", "budget", "seed", "mode", "auc", "log_loss", "accuracy", "flops", "flops_fraction",
              "embedding_bytes", "embedding_bytes_fraction", "n_kept_features", "kept_features", "kept_units",
              "train_steps", "seconds"]


@dataclass
class QualityConfig:
    """Settings of the quality benchmark (defaults: the README's Criteo run).

    Args:
        data: data spec; ``min_count``/``test_fraction`` apply unless the spec sets them.
        budgets: relative budgets of ``resource`` (fractions of the dense model).
        seeds: seeds ``0 .. seeds-1`` (split, init, data order).
        methods: from :data:`METHODS`.
        features_only: prune features only (Figure 3 of the paper).
        resource: ``flops`` (dense path) or ``embedding_bytes``.
        model: ``make_model_config`` overrides (cat DLRM, D=16, small MLPs).
        batch_size / dense_epochs / compress_epochs / finetune_epochs: training lengths.
        emb_lr / dense_lr: the dense model's rates; ``post_lr_factor`` scales them afterwards.
        umec: UMEC hyper-parameters (same for every budget).
        lasso_lam: group-lasso strength (scale-free, see :mod:`umec_torchrec.baselines.group_lasso`).
    """

    data: str = DEFAULT_DATA
    budgets: List[float] = field(default_factory=lambda: [0.5, 0.3, 0.1, 0.05])
    seeds: int = 3
    methods: List[str] = field(default_factory=lambda: list(METHODS))
    features_only: bool = False
    resource: str = "flops"
    model: Dict[str, Any] = field(default_factory=lambda: {"kind": "cat", "embedding_dim": 16, "bottom": [64, 32, 16],
                                                           "top": [128, 64, 1]})
    batch_size: int = 128
    dense_epochs: int = 1
    compress_epochs: int = 1
    finetune_epochs: int = 1
    emb_lr: float = 0.02
    dense_lr: float = 0.01
    post_lr_factor: float = 0.1
    umec: Dict[str, Any] = field(default_factory=lambda: dataclasses.asdict(UMECConfig()))
    lasso_lam: float = 1.0
    min_count: int = 3
    test_fraction: float = 0.23
    eval_batch_size: int = 4096

    def validate(self) -> None:
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown:
            raise ValueError(f"unknown method(s) {unknown}; known: {', '.join(METHODS)}")
        if not self.methods:
            raise ValueError("give at least one method")
        if self.seeds < 1:
            raise ValueError(f"seeds must be >= 1, got {self.seeds}")
        for b in self.budgets:
            if not 0.0 < b <= 1.0:
                raise ValueError(f"budget {b}: must be a fraction of the dense model in (0, 1]")
        if not self.budgets:
            raise ValueError("give at least one budget")
        for k in ("dense_epochs", "compress_epochs", "finetune_epochs"):
            if getattr(self, k) < 1:
                raise ValueError(f"{k} must be >= 1, got {getattr(self, k)}")
        if not 0.0 < self.post_lr_factor <= 1.0:
            raise ValueError(f"post_lr_factor must be in (0, 1], got {self.post_lr_factor}")
        UMECConfig(**self.umec)

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


# ----------------------------------------------------------------------------------- one seed
class _Seed:
    """The data, model config and dense checkpoint of one seed."""

    def __init__(self, cfg: QualityConfig, seed: int, ctx: DistContext, workdir: str, log: Callable[[str], None]):
        from umec_torchrec.data import DataOptions, load_data

        self.cfg, self.seed, self.ctx, self.log = cfg, seed, ctx, log
        opts = DataOptions(min_count=cfg.min_count, test_fraction=cfg.test_fraction, split_seed=seed)
        self.bundle = load_data(cfg.data, opts)
        self.model_cfg = make_model_config(self.bundle.train, cfg.model)
        self.dense_tc = TrainConfig(batch_size=cfg.batch_size, epochs=cfg.dense_epochs, seed=seed, emb_lr=cfg.emb_lr,
                                    dense_lr=cfg.dense_lr, eval_batch_size=cfg.eval_batch_size, log_every=0)
        self.ckpt = os.path.join(workdir, f"dense_seed{seed}")
        t = time.perf_counter()
        dmp, opt = build_training(self.model_cfg, self.dense_tc, ctx)
        st = fit(dmp, opt, self.bundle.train, self.dense_tc, ctx, progress=False)
        self.dense_metrics = evaluate(dmp, self.bundle.test, cfg.eval_batch_size, ctx)
        self.dense_steps = int(st["steps"])
        save_checkpoint(self.ckpt, dmp, opt)
        self.dense_seconds = time.perf_counter() - t
        log(f"seed {seed}: {len(self.bundle.train)} train / {len(self.bundle.test)} test rows, "
            f"{len(self.bundle.train.feature_names)} features; dense AUC {self.dense_metrics['auc']:.4f} "
            f"({self.dense_steps} steps, {self.dense_seconds:.1f}s)")

    def post_tc(self, phase: int, epochs: int) -> TrainConfig:
        c = self.cfg
        return TrainConfig(batch_size=c.batch_size, epochs=epochs, seed=1000 * self.seed + phase,
                           emb_lr=c.emb_lr * c.post_lr_factor, dense_lr=c.dense_lr * c.post_lr_factor,
                           eval_batch_size=c.eval_batch_size, log_every=0)

    def load_dense(self):
        dmp, opt = build_training(self.model_cfg, self.post_tc(1, 1), self.ctx)
        load_checkpoint(self.ckpt, dmp, opt)
        return dmp, opt

    def spec(self, dmp):
        joint = not self.cfg.features_only
        return discover_groups(dmp, prune_features=True, prune_bottom=joint, prune_top=joint)


def _finetune(s: _Seed, dmp, opt, masks: PruningMasks, phases: Sequence[Tuple[int, int]]) -> Tuple[MaskedOptimizer, int]:
    mopt = MaskedOptimizer(opt, dmp, masks)
    steps = 0
    for phase, epochs in phases:
        st = fit(dmp, mopt, s.bundle.train, s.post_tc(phase, epochs), s.ctx, progress=False,
                 batch_transform=mopt.feature_mask)
        steps += int(st["steps"])
    return mopt, steps


def run_method(s: _Seed, method: str, budget: float) -> Dict[str, Any]:
    """Compress the dense model of ``s`` with ``method`` under ``budget``, fine-tune, evaluate."""
    cfg = s.cfg
    t0 = time.perf_counter()
    budgets = [f"{cfg.resource}={budget!r}"]
    dmp, opt = s.load_dense()
    spec = s.spec(dmp)
    C, F = cfg.compress_epochs, cfg.finetune_epochs
    steps = 0
    extra: Dict[str, Any] = {}
    if method in ("umec", "umec_rewind"):
        umec = UMECOptimizer(opt, dmp, budgets, UMECConfig(**cfg.umec), groups=spec)
        st = fit(dmp, umec, s.bundle.train, s.post_tc(1, C), s.ctx, progress=False,
                 batch_transform=lambda b: umec.feature_mask(b))
        steps += int(st["steps"])
        masks = umec.finalize()
        extra = {"repair": umec.repair_groups, "restored": umec.restored_groups, "s": umec.s.tolist()}
        s.log(f"    umec: search ended at {umec.budget_report()}; finalize pruned {umec.repair_groups} more "
              f"groups, gave back {umec.restored_groups}")
        if umec.stats is not None:
            umec.stats.remove()
        if method == "umec":
            mopt, n = _finetune(s, dmp, opt, masks, [(2, F)])
        else:  # UMEC's masks on the dense weights, fine-tuned as long as the one-shot baselines
            dmp, opt = s.load_dense()
            spec = s.spec(dmp)
            mopt, n = _finetune(s, dmp, opt, masks, [(1, C), (2, F)])
    elif method == "group_lasso":
        gl = GroupLassoOptimizer(opt, dmp, spec, cfg.lasso_lam)
        st = fit(dmp, gl, s.bundle.train, s.post_tc(1, C), s.ctx, progress=False)
        steps += int(st["steps"])
        extra = {"zero_groups": gl.sparsity()}
        s.log(f"    group lasso: share of exactly-zero groups per set {extra['zero_groups']}")
        masks = budget_masks(spec, budgets, weight_scores(spec))
        mopt, n = _finetune(s, dmp, opt, masks, [(2, F)])
    elif method == "magnitude":
        masks = budget_masks(spec, budgets, weight_scores(spec))
        mopt, n = _finetune(s, dmp, opt, masks, [(1, C), (2, F)])
    elif method == "random":
        masks = budget_masks(spec, budgets, random_scores(spec, 7919 * s.seed + int(round(1e4 * budget))), normalize=False)
        mopt, n = _finetune(s, dmp, opt, masks, [(1, C), (2, F)])
    elif method == "uniform":
        masks, factor = uniform_width_masks(spec, budgets, weight_scores(spec))
        extra = {"factor": factor}
        mopt, n = _finetune(s, dmp, opt, masks, [(1, C), (2, F)])
    else:
        raise ValueError(f"unknown method {method!r}; known: {', '.join(METHODS)}")
    steps += n
    frac = fractions_of_masks(spec, masks, budgets)[0]
    if frac > budget + 1e-9:  # every method is held to the same budget
        raise RuntimeError(f"{method} at budget {budget}: {cfg.resource} fraction {frac:.6f} exceeds the budget")
    m = evaluate(dmp, s.bundle.test, cfg.eval_batch_size, s.ctx, batch_transform=mopt.feature_mask)
    return _row(method, budget, s, m, spec, masks, steps, time.perf_counter() - t0, extra)


def run_dense_ft(s: _Seed) -> Dict[str, Any]:
    """The dense model trained on for ``C + F`` epochs at the post-dense rates (reference)."""
    t0 = time.perf_counter()
    dmp, opt = s.load_dense()
    steps = 0
    for phase, epochs in ((1, s.cfg.compress_epochs), (2, s.cfg.finetune_epochs)):
        steps += int(fit(dmp, opt, s.bundle.train, s.post_tc(phase, epochs), s.ctx, progress=False)["steps"])
    spec = s.spec(dmp)
    masks = PruningMasks(list(spec.feature_names), list(spec.feature_names))
    m = evaluate(dmp, s.bundle.test, s.cfg.eval_batch_size, s.ctx)
    return _row("dense_ft", 1.0, s, m, spec, masks, steps, time.perf_counter() - t0, {})


def _row(method, budget, s: _Seed, m, spec, masks: PruningMasks, steps, secs, extra) -> Dict[str, Any]:
    res = resources_of_masks(spec, masks)
    eb = res.get("embedding_bytes", {"value": float("nan"), "fraction": float("nan")})
    return {
        "method": method, "budget": float(budget), "seed": s.seed, "mode": "features" if s.cfg.features_only else "joint",
        "auc": m["auc"], "log_loss": m["log_loss"], "accuracy": m["accuracy"],
        "flops": res["flops"]["value"], "flops_fraction": res["flops"]["fraction"],
        "embedding_bytes": eb["value"], "embedding_bytes_fraction": eb["fraction"],
        "n_kept_features": len(masks.kept_features), "kept_features": ";".join(masks.kept_features),
        "kept_units": ";".join(f"{k}={v}" for k, v in masks.kept_units().items()),
        "train_steps": steps, "seconds": secs, "extra": extra,
    }


# ----------------------------------------------------------------------------------- the run
def run_quality_bench(cfg: QualityConfig, out_dir: str, ctx: Optional[DistContext] = None,
                      log: Callable[[str], None] = print) -> List[Dict[str, Any]]:
    """Run the benchmark and write ``quality.{csv,md,png,json}`` into ``out_dir``.

    Returns:
        the rows (references ``dense`` / ``dense_ft`` included, at budget 1.0).
    """
    cfg.validate()
    ctx = ctx or init_distributed()
    if ctx.world_size != 1:
        raise ValueError("umec bench quality runs in one process (world size 1)")
    methods = list(cfg.methods)
    if cfg.features_only and "uniform" in methods:
        methods.remove("uniform")
        log("features-only mode: 'uniform' (narrower layers, every feature kept) does not apply; skipped")
    rows: List[Dict[str, Any]] = []
    t0 = time.perf_counter()
    work = tempfile.mkdtemp(prefix="umec-quality-")
    try:
        for seed in range(cfg.seeds):
            s = _Seed(cfg, seed, ctx, work, log)
            rows.append(_row("dense", 1.0, s, s.dense_metrics, s.spec(s.load_dense()[0]),
                             PruningMasks(list(s.model_cfg.feature_names), list(s.model_cfg.feature_names)),
                             s.dense_steps, s.dense_seconds, {}))
            r = run_dense_ft(s)
            rows.append(r)
            log(f"  dense_ft           AUC {r['auc']:.4f} ({r['seconds']:.1f}s)")
            for b in cfg.budgets:
                for meth in methods:
                    r = run_method(s, meth, b)
                    rows.append(r)
                    log(f"  {meth:<12} {b:<5g} AUC {r['auc']:.4f}  logloss {r['log_loss']:.4f}  "
                        f"{cfg.resource} {100 * (r['flops_fraction'] if cfg.resource == 'flops' else r['embedding_bytes_fraction']):.1f}%  "
                        f"{r['n_kept_features']} features  {r['kept_units']}  ({r['seconds']:.1f}s)")
            write_outputs(out_dir, cfg, rows, time.perf_counter() - t0)  # partial results after each seed
            shutil.rmtree(s.ckpt, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    total = time.perf_counter() - t0
    write_outputs(out_dir, cfg, rows, total)
    log(f"done in {total / 60:.1f} min; wrote {out_dir}/quality.csv, quality.md, quality.png, quality.json")
    return rows


# ----------------------------------------------------------------------------------- outputs
def _mean_std(xs: Sequence[float]) -> Tuple[float, float]:
    xs = [x for x in xs if not math.isnan(x)]
    if not xs:
        return float("nan"), float("nan")
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else float("nan"))


def _pm(m: float, s: float, digits: int = 4, signed: bool = False) -> str:
    f = f"{{:{'+' if signed else ''}.{digits}f}}"
    return f.format(m) + ("" if math.isnan(s) else " ± " + f"{{:.{digits}f}}".format(s))


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
    keys = []
    for r in rows:
        k = (r["method"], r["budget"])
        if k not in keys:
            keys.append(k)
    for meth, b in keys:
        sel = [r for r in rows if r["method"] == meth and r["budget"] == b]
        e = {"method": meth, "budget": b, "n": len(sel)}
        for k in ("auc", "log_loss", "accuracy", "flops_fraction", "n_kept_features"):
            e[k] = _mean_std([float(r[k]) for r in sel])
        if meth != "umec" and meth not in REFERENCES:
            d = paired_differences(rows, meth, b)
            e["d_auc"] = _mean_std(d) if d else None
            e["d_auc_n"] = len(d)
            e["d_auc_wins"] = sum(1 for x in d if x > 0)
        out.append(e)
    return out


def format_markdown(cfg: QualityConfig, rows: Sequence[Dict[str, Any]], seconds: float) -> str:
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
        "| method | budget | AUC | log loss | accuracy | achieved " + cfg.resource + " | features kept | ΔAUC vs UMEC (n, wins) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    ordered = sorted(summ, key=lambda e: (-e["budget"], (list(REFERENCES) + list(METHODS)).index(e["method"])))
    frac_key = "flops_fraction"
    for e in ordered:
        if cfg.resource == "embedding_bytes":
            fr = _mean_std([r["embedding_bytes_fraction"] for r in rows if r["method"] == e["method"] and r["budget"] == e["budget"]])
        else:
            fr = e[frac_key]
        d = e.get("d_auc")
        dtxt = "" if d is None else f"{_pm(*d, signed=True)} ({e['d_auc_n']}, {e['d_auc_wins']})"
        if e["method"] == "umec":
            dtxt = "—"
        lines.append(f"| {e['method']} | {e['budget']:g} | {_pm(*e['auc'])} | {_pm(*e['log_loss'])} | "
                     f"{_pm(*e['accuracy'])} | {100 * fr[0]:.1f}% | {e['n_kept_features'][0]:.1f} | {dtxt} |")
    lines += ["", "Settings:", "", "```json", json.dumps(cfg.to_dict(), indent=1), "```", ""]
    return "\n".join(lines)


def write_csv(path: str, rows: Sequence[Dict[str, Any]]) -> None:
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
    bs = sorted(set(cfg.budgets))
    ax.set_xticks(bs)
    ax.set_xticklabels([f"{b:g}" for b in bs])
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
    os.makedirs(out_dir, exist_ok=True)
    write_csv(os.path.join(out_dir, "quality.csv"), rows)
    atomic_write(os.path.join(out_dir, "quality.md"), lambda f: f.write(format_markdown(cfg, rows, seconds)))
    plot(os.path.join(out_dir, "quality.png"), cfg, rows)
    write_json(os.path.join(out_dir, "quality.json"), {"config": cfg.to_dict(), "seconds": seconds, "rows": list(rows)})


# ----------------------------------------------------------------------------------- CLI
def _floats(text: str) -> List[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _names(text: str) -> List[str]:
    out = [x.strip() for x in text.split(",") if x.strip()]
    bad = [x for x in out if x not in METHODS]
    if bad:
        raise argparse.ArgumentTypeError(f"unknown method(s) {bad}; known: {', '.join(METHODS)}")
    return out


def add_parser(bsub: argparse._SubParsersAction) -> None:
    from umec_torchrec import cli

    d = QualityConfig()
    u = UMECConfig()
    p = bsub.add_parser("quality", help="UMEC against baselines (uniform, magnitude, group lasso, random) on real data",
                        description=__doc__.split("\n\n")[0] + " Writes quality.csv, quality.md, quality.png.")
    p.add_argument("--data", default=d.data, metavar="SPEC", help=f"data spec (default {d.data})")
    p.add_argument("--budgets", type=_floats, default=d.budgets, help="relative budgets (default 0.5,0.3,0.1,0.05)")
    p.add_argument("--seeds", type=int, default=d.seeds, help="number of seeds (default 3)")
    p.add_argument("--methods", type=_names, default=d.methods, help=f"default {','.join(METHODS)}")
    p.add_argument("--features-only", action="store_true", help="prune features only (the paper's Figure 3)")
    p.add_argument("--resource", choices=["flops", "embedding_bytes"], default=d.resource, help="budgeted resource")
    p.add_argument("--embedding-dim", type=int, default=d.model["embedding_dim"])
    p.add_argument("--bottom", type=cli.int_list, default=d.model["bottom"], help="default 64,32,16")
    p.add_argument("--top", type=cli.int_list, default=d.model["top"], help="default 128,64,1")
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--dense-epochs", type=int, default=d.dense_epochs)
    p.add_argument("--compress-epochs", type=int, default=d.compress_epochs)
    p.add_argument("--finetune-epochs", type=int, default=d.finetune_epochs)
    p.add_argument("--emb-lr", type=float, default=d.emb_lr)
    p.add_argument("--dense-lr", type=float, default=d.dense_lr)
    p.add_argument("--post-lr-factor", type=float, default=d.post_lr_factor,
                   help="learning-rate factor after the dense model (default 0.1)")
    p.add_argument("--s-lr", type=float, default=u.s_lr)
    p.add_argument("--y-lr", type=float, default=u.y_lr)
    p.add_argument("--z-lr", type=float, default=u.z_lr)
    p.add_argument("--umec-prox-lr", type=float, default=u.prox_lr)
    p.add_argument("--umec-score", choices=["activation", "weight"], default=u.score,
                   help="UMEC's group score (default activation; weight = the paper's norm)")
    p.add_argument("--lasso-lam", type=float, default=d.lasso_lam, help="group-lasso strength (default 1.0)")
    p.add_argument("--min-count", type=int, default=d.min_count, help="vocabulary min count (default 3; rarer ids -> OOV)")
    p.add_argument("--test-fraction", type=float, default=d.test_fraction)
    p.add_argument("--out", default="bench-quality", help="output directory (default bench-quality)")
    cli.add_common_args(p)
    p.set_defaults(func=cmd_bench_quality)


def config_from_args(args: argparse.Namespace) -> QualityConfig:
    bottom = list(args.bottom)
    ucfg = dataclasses.asdict(UMECConfig(s_lr=args.s_lr, y_lr=args.y_lr, z_lr=args.z_lr, prox_lr=args.umec_prox_lr,
                                             score=args.umec_score))
    return QualityConfig(
        data=args.data, budgets=list(args.budgets), seeds=args.seeds, methods=list(args.methods),
        features_only=args.features_only, resource=args.resource,
        model={"kind": "cat", "embedding_dim": args.embedding_dim, "bottom": bottom, "top": list(args.top)},
        batch_size=args.batch_size, dense_epochs=args.dense_epochs, compress_epochs=args.compress_epochs,
        finetune_epochs=args.finetune_epochs, emb_lr=args.emb_lr, dense_lr=args.dense_lr,
        post_lr_factor=args.post_lr_factor, umec=ucfg, lasso_lam=args.lasso_lam, min_count=args.min_count,
        test_fraction=args.test_fraction)


def cmd_bench_quality(args: argparse.Namespace) -> int:
    from umec_torchrec.distributed import session

    cfg = config_from_args(args)
    with session(args.backend) as ctx:
        run_quality_bench(cfg, args.out, ctx, log=lambda m: print(m, flush=True))
    return 0


__all__ = ["QualityConfig", "METHODS", "run_quality_bench", "run_method", "summarize", "paired_differences",
           "format_markdown", "write_outputs", "add_parser"]
