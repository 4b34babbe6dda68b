"""``umec bench finetune``: the fine-tuning step time of the compact model over the masked full
model's, measured side by side in one run on the Kaggle-size DLRM, and each one's table memory.

Both arms fine-tune the same architecture: the masks keep every third sparse feature (9 of the
26 Kaggle fields) and the same fraction of every hidden layer's units, that fraction chosen so
that the dense-path FLOPs are at most ``--flops`` (0.3) of the dense model's. The masked arm is
the full DMP with :class:`~umec_torchrec.umec.masked_optimizer.MaskedOptimizer` and the feature
mask (what ``umec finetune --finetune-model masked`` trains); the compact arm is the DMP of
:func:`~umec_torchrec.export.compact.compact_config` with the batches reduced to the kept
features (``--finetune-model compact``, the default). Steps alternate between the arms.
"""

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
from umec_torchrec.models import DEFAULT_MODEL_KIND, MODEL_KINDS, ModelConfig, ModelKind, build_model
from umec_torchrec.train.build import build_training
from umec_torchrec.train.compact import CompactArch, table_state_bytes
from umec_torchrec.train.config import TrainConfig
from umec_torchrec.umec.allocation import resources_of_masks
from umec_torchrec.umec.groups import discover_groups
from umec_torchrec.umec.layout import prunable_widths
from umec_torchrec.umec.masked_optimizer import MaskedOptimizer
from umec_torchrec.umec.masks import PruningMasks

__all__ = ["bench_masks", "run_finetune_bench", "add_parser"]


def _evenly(width: int, keep: int) -> List[int]:
    """``keep`` unit indices spread evenly over ``range(width)``."""
    return sorted(set(torch.linspace(0, width - 1, max(1, keep)).round().long().tolist()))


def bench_masks(cfg: ModelConfig, flops: float = 0.3, feature_every: int = 3) -> PruningMasks:
    """Masks that keep every ``feature_every``-th sparse feature and the largest common fraction
    of every hidden layer's units (spread evenly) whose dense-path FLOPs are at most ``flops``
    of the dense model's (bisection on the fraction; FLOPs by the analytic resource model)."""
    names = list(cfg.feature_names)
    kept = names[::feature_every]
    widths = prunable_widths(cfg)
    spec = discover_groups(build_model(cfg, device=torch.device("cpu"), tables_device=torch.device("meta")))

    def masks_at(q: float) -> PruningMasks:
        layers = {k: _evenly(w, max(1, int(round(q * w)))) for k, w in widths.items()}
        return PruningMasks(names, kept, layers, dict(widths))

    def fraction(q: float) -> float:
        return resources_of_masks(spec, masks_at(q), ["flops"])["flops"]["fraction"]

    lo, hi = 0.0, 1.0
    if fraction(hi) <= flops:
        return masks_at(hi)
    for _ in range(30):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if fraction(mid) <= flops else (lo, mid)
    return masks_at(lo)


def _step(model: Any, opt: Any, batch: Any, transform: Any, sync: Any) -> float:
    t = time.perf_counter()
    loss, _ = model(transform(batch))
    loss.backward()
    opt.step()
    opt.zero_grad()
    sync()
    return time.perf_counter() - t


def run_finetune_bench(
    rounds: int = 20,
    batch_size: int = 2048,
    kind: ModelKind = DEFAULT_MODEL_KIND,
    flops: float = 0.3,
    table_sizes: Optional[List[int]] = None,
    ctx: Optional[DistContext] = None,
) -> Dict[str, Any]:
    """Alternate fine-tuning steps of the masked full model and of the compact model.

    Returns:
        the step medians, the ratios compact / masked (median of adjacent-step ratios, ratio
        of medians, ratio of totals), each arm's table bytes on this rank (weights and
        optimizer state), and the architecture (kept features, units, FLOPs fraction).
    """
    ctx = ctx or init_distributed()
    sizes = list(table_sizes or KAGGLE_TABLE_SIZES)
    cfg = kaggle_model_config(kind, table_sizes=sizes)
    masks = bench_masks(cfg, flops)
    arch = CompactArch.of(cfg, masks)
    tcfg = TrainConfig(batch_size=batch_size, log_every=0)
    mdmp, inner = build_training(cfg, tcfg, ctx, tables_on_meta=True)
    mopt = MaskedOptimizer(inner, mdmp, masks)
    cdmp, copt = build_training(arch.config, tcfg, ctx, tables_on_meta=True)
    pool = [b.to(ctx.device) for b in random_batches(sizes, cfg.dense_in_features, batch_size // ctx.world_size, 4,
                                                     7 + ctx.rank)]

    def sync() -> None:
        if ctx.device.type == "cuda":
            torch.cuda.synchronize()

    arms = {"masked": lambda b: _step(mdmp, mopt, b, mopt.feature_mask, sync),
            "compact": lambda b: _step(cdmp, copt, b, arch.keep_features, sync)}
    for i in range(2):  # warm-up both arms
        for fn in arms.values():
            fn(pool[i])
    times: Dict[str, List[float]] = {"masked": [], "compact": []}
    for r in range(rounds):
        order = ("masked", "compact") if r % 2 == 0 else ("compact", "masked")
        for name in order:
            times[name].append(arms[name](pool[r % 4]))
    med = {n: statistics.median(v) for n, v in times.items()}
    paired = [c / m for c, m in zip(times["compact"], times["masked"])]
    res = resources_of_masks(discover_groups(mdmp), masks, ["flops", "embedding_bytes"])
    return {
        "ratio_paired": statistics.median(paired),
        "ratio_median": med["compact"] / med["masked"],
        "ratio_total": sum(times["compact"]) / sum(times["masked"]),
        "masked_step_ms": 1000 * med["masked"],
        "compact_step_ms": 1000 * med["compact"],
        "masked_table_bytes": table_state_bytes(mdmp, inner),
        "compact_table_bytes": table_state_bytes(cdmp, copt),
        "flops_fraction": res["flops"]["fraction"],
        "embedding_bytes_fraction": res["embedding_bytes"]["fraction"],
        "kept_features": len(masks.kept_features),
        "features": len(masks.feature_names),
        "kept_units": masks.kept_units(),
        "steps_each": rounds,
        "batch_size": batch_size,
        "kind": kind,
        "table_rows": sum(sizes),
        "compact_table_rows": sum(arch.config.table_sizes),
        "world_size": ctx.world_size,
        "device": str(ctx.device),
    }


def add_parser(bsub: argparse._SubParsersAction) -> None:
    from umec_torchrec.cli import flags

    p = bsub.add_parser("finetune", help="compact over masked fine-tuning step time, and table memory",
                        description="Kaggle-size DLRM, masks at --flops of dense with 9 of 26 fields kept: steps of "
                                    "the masked full model and of the compact model alternate; prints the ratio "
                                    "of step times and each one's table bytes.")
    p.add_argument("--rounds", type=int, default=20, help="steps per arm, alternating (default 20)")
    p.add_argument("--batch-size", type=int, default=2048)
    p.add_argument("--model", choices=list(MODEL_KINDS), default=DEFAULT_MODEL_KIND)
    p.add_argument("--flops", type=float, default=0.3, help="FLOPs fraction of the masks (default 0.3)")
    p.add_argument("--json", action="store_true")
    flags.add_common_args(p)
    p.set_defaults(func=cmd_finetune)


def cmd_finetune(args: argparse.Namespace) -> int:
    from umec_torchrec.distributed import session

    with session(args.backend) as ctx:
        say(ctx, f"bench finetune: Kaggle-size {args.model} DLRM ({sum(KAGGLE_TABLE_SIZES):,} rows), batch "
                 f"{args.batch_size}, {ctx.world_size} rank(s) on {ctx.device}; building both models...")
        r = run_finetune_bench(args.rounds, args.batch_size, args.model, args.flops, ctx=ctx)
        gib = 2.0 ** 30
        say(ctx, f"masks: {r['kept_features']} of {r['features']} features, units {r['kept_units']}: FLOPs "
                 f"{100 * r['flops_fraction']:.1f}%, embedding bytes {100 * r['embedding_bytes_fraction']:.1f}% "
                 "of dense")
        say(ctx, f"masked step {r['masked_step_ms']:.1f} ms, compact step {r['compact_step_ms']:.1f} ms "
                 f"(medians of {r['steps_each']} steps each, alternating)")
        say(ctx, f"compact / masked step time: {r['ratio_paired']:.3f} (median of adjacent-step ratios), "
                 f"{r['ratio_median']:.3f} (ratio of medians), {r['ratio_total']:.3f} (ratio of totals)")
        say(ctx, f"table memory on rank 0 (weights + optimizer state): masked {r['masked_table_bytes'] / gib:.3f} "
                 f"GiB, compact {r['compact_table_bytes'] / gib:.3f} GiB "
                 f"({100 * r['compact_table_bytes'] / max(1, r['masked_table_bytes']):.1f}%)")
        if args.json:
            say(ctx, json.dumps(r))
    return 0
