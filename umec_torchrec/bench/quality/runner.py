"""The run of ``umec bench quality``: per seed, the dense model, the reference ``dense_ft``,
then every method at every budget, each checked against its budget and evaluated on the
test split (and on the validation split, recorded as ``valid_auc``)."""

from __future__ import annotations

import shutil
import tempfile
import time
from typing import Any, Callable, Dict, List, Optional

from umec_torchrec.baselines import fractions_of_masks
from umec_torchrec.bench.quality.config import QualityConfig
from umec_torchrec.bench.quality.context import SeedContext, make_row
from umec_torchrec.bench.quality.methods import get_method
from umec_torchrec.bench.quality.report import write_outputs
from umec_torchrec.distributed import DistContext, init_distributed
from umec_torchrec.train.fit import fit
from umec_torchrec.train.metrics import evaluate
from umec_torchrec.umec.masks import PruningMasks

__all__ = ["run_method", "run_dense_ft", "run_quality_bench"]


def run_method(s: SeedContext, method: str, budget: float, label: Optional[str] = None) -> Dict[str, Any]:
    """Compress the dense model of ``s`` with ``method`` under ``budget``, fine-tune, evaluate.

    Raises:
        RuntimeError: the method's masks exceed the budget (every method is held to it).
    """
    cfg = s.cfg
    fn = get_method(method)
    t0 = time.perf_counter()
    budgets = [f"{cfg.resource}={budget!r}"]
    r = fn(s, budgets, budget)
    frac = fractions_of_masks(r.spec, r.masks, budgets)[0]
    if frac > budget + 1e-9:
        raise RuntimeError(f"{method} at budget {budget}: {cfg.resource} fraction {frac:.6f} exceeds the budget")
    m = evaluate(r.dmp, s.test, cfg.eval_batch_size, s.ctx, batch_transform=r.opt.feature_mask)
    v = s.evaluate_valid(r.dmp, batch_transform=r.opt.feature_mask)
    return make_row(method, budget, s, m, r.spec, r.masks, r.steps, time.perf_counter() - t0, r.extra, v, label)


def run_dense_ft(s: SeedContext) -> Dict[str, Any]:
    """The dense model trained on for ``C + F`` epochs at the post-dense rates (reference)."""
    t0 = time.perf_counter()
    dmp, opt = s.load_dense()
    steps = 0
    for phase, epochs in ((1, s.cfg.compress_epochs), (2, s.cfg.finetune_epochs)):
        steps += int(fit(dmp, opt, s.train, s.post_tc(phase, epochs), s.ctx, progress=False)["steps"])
    spec = s.spec(dmp)
    masks = PruningMasks(list(spec.feature_names), list(spec.feature_names))
    m = evaluate(dmp, s.test, s.cfg.eval_batch_size, s.ctx)
    return make_row("dense_ft", 1.0, s, m, spec, masks, steps, time.perf_counter() - t0, {}, s.evaluate_valid(dmp))


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
            s = SeedContext(cfg, seed, ctx, work, log)
            names = list(s.model_cfg.feature_names)
            rows.append(make_row("dense", 1.0, s, s.dense_metrics, s.spec(s.load_dense()[0]),
                                 PruningMasks(names, names), s.dense_steps, s.dense_seconds, {}, s.dense_valid))
            r = run_dense_ft(s)
            rows.append(r)
            log(f"  dense_ft           AUC {r['auc']:.4f} ({r['seconds']:.1f}s)")
            for b, label in s.budgets():
                for meth in methods:
                    r = run_method(s, meth, b, label)
                    rows.append(r)
                    frac = r["flops_fraction"] if cfg.resource == "flops" else r["embedding_bytes_fraction"]
                    log(f"  {meth:<12} {b:<5.3g} AUC {r['auc']:.4f}  logloss {r['log_loss']:.4f}  "
                        f"{cfg.resource} {100 * frac:.1f}%  {r['n_kept_features']} features  {r['kept_units']}  "
                        f"({r['seconds']:.1f}s)")
            write_outputs(out_dir, cfg, rows, time.perf_counter() - t0)  # partial results after each seed
            shutil.rmtree(s.ckpt, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    total = time.perf_counter() - t0
    write_outputs(out_dir, cfg, rows, total)
    log(f"done in {total / 60:.1f} min; wrote {out_dir}/quality.csv, quality.md, quality.png, quality.json")
    return rows
