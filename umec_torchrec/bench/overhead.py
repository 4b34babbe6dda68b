"""``umec bench overhead``: train-step time with the UMEC wrapper over the step time without
it, measured alternately in one run on the Kaggle-size DLRM (target: at most 1.05)."""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any, Dict, List, Optional

import torch

from umec_torchrec.bench.kaggle import KAGGLE_TABLE_SIZES, kaggle_model_config
from umec_torchrec.bench.train import random_batches
from umec_torchrec.distributed import DistContext, init_distributed
from umec_torchrec.log import say
from umec_torchrec.models import DEFAULT_MODEL_KIND, MODEL_KINDS, ModelKind
from umec_torchrec.train.build import build_training
from umec_torchrec.train.config import TrainConfig
from umec_torchrec.umec.importance import ScoreKind
from umec_torchrec.umec.optimizer import SStep, UMECConfig, UMECOptimizer


def _step(model, opt, batch, sync) -> float:
    t = time.perf_counter()
    loss, _ = model(batch)
    loss.backward()
    opt.step()
    opt.zero_grad()
    sync()
    return time.perf_counter() - t


def run_overhead_bench(
    rounds: int = 40,
    steps_per_round: int = 1,
    batch_size: int = 2048,
    kind: ModelKind = DEFAULT_MODEL_KIND,
    budgets: Optional[List[str]] = None,
    table_sizes: Optional[List[int]] = None,
    ctx: Optional[DistContext] = None,
    score: Optional[str] = None,
) -> Dict[str, Any]:
    """Alternate rounds of plain steps and UMEC steps on one model; return the time ratio.

    Both arms train the same DMP with the same ``CombinedOptimizer``; the UMEC arm wraps it in
    :class:`UMECOptimizer` (prox, s/y/z updates, activation statistics). Reported: the
    median ratio of adjacent steps (robust to a shared machine's drifts), the ratio of
    medians and the ratio of totals.
    """
    ctx = ctx or init_distributed()
    sizes = list(table_sizes or KAGGLE_TABLE_SIZES)
    mcfg = kaggle_model_config(kind, table_sizes=sizes)
    tcfg = TrainConfig(batch_size=batch_size, log_every=0)
    dmp, opt = build_training(mcfg, tcfg, ctx, tables_on_meta=True)
    pool = [b.to(ctx.device) for b in random_batches(sizes, mcfg.dense_in_features, batch_size // ctx.world_size, 4,
                                                     99 + ctx.rank)]
    # the holdout score re-scores on validation batches every holdout_every UMEC steps:
    # two batches here, their cost is in ratio_total (the medians skip those steps)
    ucfg = UMECConfig(check_every=0, **({} if score is None else {"score": score}))
    umec = UMECOptimizer(opt, dmp, budgets or ["flops=0.3", "embedding_bytes=0.5"], ucfg, holdout=lambda: pool[:2])

    def sync() -> None:
        if ctx.device.type == "cuda":
            torch.cuda.synchronize()

    def hooks(on: bool) -> None:  # the statistics hooks belong to the UMEC arm only
        for h in (umec.stats, umec.importance):
            if h is not None:
                h.enabled = on

    def plain(b):
        hooks(False)
        return _step(dmp, opt, b, sync)

    def wrapped(b):
        hooks(True)
        return _step(dmp, umec, umec.feature_mask(b), sync)

    for i in range(2):  # warm-up both arms
        plain(pool[i % 4])
        wrapped(pool[i % 4])
    times: Dict[str, List[float]] = {"plain": [], "umec": []}
    k = 0
    for r in range(rounds):
        order = (("plain", plain), ("umec", wrapped)) if r % 2 == 0 else (("umec", wrapped), ("plain", plain))
        for name, fn in order:
            for _ in range(steps_per_round):
                times[name].append(fn(pool[k % 4]))
                k += 1
    med = {n: statistics.median(v) for n, v in times.items()}
    refresh_ms = float("nan")
    if umec.score_kind.needs_holdout:  # the periodic re-scoring, timed on its own
        t = time.perf_counter()
        umec.refresh_holdout()
        sync()
        refresh_ms = 1000 * (time.perf_counter() - t)
    target_ms = float("nan")
    if umec.s_step is SStep.CONDITIONAL:  # the conditional step's periodic target, timed on its own
        t = time.perf_counter()
        umec.conditional_target()
        sync()
        target_ms = 1000 * (time.perf_counter() - t)
    paired = [u / p for u, p in zip(times["umec"], times["plain"])]  # neighbours in time
    return {
        "ratio_median": med["umec"] / med["plain"],
        "ratio_paired": statistics.median(paired),
        "ratio_total": sum(times["umec"]) / sum(times["plain"]),
        "score": umec.score_kind.value,
        "holdout_refresh_ms": refresh_ms,
        "holdout_every": ucfg.holdout_every,
        "holdout_rows": sum(int(b.labels.numel()) for b in pool[:2]),
        "target_ms": target_ms,
        "target_every": ucfg.target_every,
        "plain_step_ms": 1000 * med["plain"],
        "umec_step_ms": 1000 * med["umec"],
        "steps_each": len(times["plain"]),
        "batch_size": batch_size,
        "kind": kind,
        "table_rows": sum(sizes),
        "world_size": ctx.world_size,
        "device": str(ctx.device),
        "group_sets": {s.name: s.size for s in umec.spec.sets},
    }


def add_parser(bsub: argparse._SubParsersAction) -> None:
    from umec_torchrec.cli import flags

    p = bsub.add_parser("overhead", help="UMEC step time over plain step time (target <= 1.05)",
                        description="Kaggle-size DLRM at batch 2048: rounds of plain training steps and UMEC "
                                    "steps alternate on one model; prints the ratio of median step times.")
    p.add_argument("--rounds", type=int, default=40, help="alternating rounds (default 40)")
    p.add_argument("--steps-per-round", type=int, default=1, help="steps per arm per round (default 1)")
    p.add_argument("--batch-size", type=int, default=2048)
    p.add_argument("--model", choices=list(MODEL_KINDS), default=DEFAULT_MODEL_KIND)
    p.add_argument("--score", choices=[k.value for k in ScoreKind], default=UMECConfig().score,
                   help="UMEC group score (default %(default)s)")
    p.add_argument("--json", action="store_true")
    flags.add_common_args(p)
    p.set_defaults(func=cmd_overhead)


def cmd_overhead(args: argparse.Namespace) -> int:
    from umec_torchrec.distributed import session

    with session(args.backend) as ctx:
        say(ctx, f"bench overhead: Kaggle-size {args.model} DLRM ({sum(KAGGLE_TABLE_SIZES):,} rows), batch "
                 f"{args.batch_size}, {ctx.world_size} rank(s) on {ctx.device}; building...")
        r = run_overhead_bench(args.rounds, args.steps_per_round, args.batch_size, args.model, ctx=ctx,
                               score=args.score)
        say(ctx, f"plain step {r['plain_step_ms']:.1f} ms, UMEC step {r['umec_step_ms']:.1f} ms "
                 f"(medians of {r['steps_each']} steps each, alternating)")
        say(ctx, f"UMEC overhead ratio: {r['ratio_paired']:.3f} (median of adjacent-step ratios), "
                 f"{r['ratio_median']:.3f} (ratio of medians), {r['ratio_total']:.3f} (ratio of totals); "
                 "target <= 1.05")
        if ScoreKind(r["score"]).needs_holdout:
            per = r["holdout_refresh_ms"] / (r["holdout_every"] * r["plain_step_ms"])
            say(ctx, f"holdout re-scoring on {r['holdout_rows']} validation rows: {r['holdout_refresh_ms']:.0f} ms "
                     f"every {r['holdout_every']} UMEC steps = {100 * per:.1f}% of the plain steps between two "
                     "(in the ratio of totals, not in the medians)")
        if r["target_ms"] == r["target_ms"]:  # not NaN: the conditional s step
            per = r["target_ms"] / (r["target_every"] * r["plain_step_ms"])
            say(ctx, f"conditional s-step target: {r['target_ms']:.0f} ms every {r['target_every']} UMEC steps = "
                     f"{100 * per:.1f}% of the plain steps between two (in the ratio of totals, not in the medians)")
        if args.json:
            say(ctx, json.dumps(r))
    return 0


__all__ = ["run_overhead_bench", "add_parser"]
