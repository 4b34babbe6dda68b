"""``umec bench inference``: samples/s of the exported compact model against the dense model.

For each FLOPs budget ``b`` the benchmark makes pruning masks whose compact model has a
dense-path FLOPs ratio of about ``b`` (a seeded random ``sqrt(b)`` share of the features,
then every hidden layer narrowed by one common factor found by bisection; the ratio is
measured exactly with ``FlopCounterMode``), builds on the Kaggle-size config (26 tables,
33.8M rows, D=16; the tables are allocated once and shared by all models):

* ``dense``: the uncompressed model, ``torch.export`` program (same entry point as the compact);
* ``compact``: the exported compact model (``torch.export`` program of ``CompactPredictor``);
* ``dense eager`` / ``masked eager``: the DLRM modules on KJT batches, the masked one with its
  pruned weights zeroed and a ``FeatureMask`` (the model as it is during compression);

and times them alternating, round after round, on random ids, under ``torch.inference_mode``:
in each round every model runs a block of 4 consecutive batches (its steady state, as when a
server runs one model; a call right after another model's 2 GB of lookups would measure cold
caches), and the blocks alternate, so drift in the machine's speed hits all models alike.
Speed-ups use each model's best round (the usual estimate of uncontended time on a shared
machine); the JSON also has median-based figures. Reported per (batch, budget): the ideal speed-up
``1 / FLOPs ratio``, the measured compact speed-up (dense program time / compact program
time) and its share of the ideal, the masked model's speed-up over the dense eager model, and
the memory ratio (parameter bytes compact / dense). To explain the gap to the ideal, one
profiled pass (``torch.profiler``) splits each program's time into GEMMs, embedding lookups
and the rest: ``gemm`` is the speed-up of the GEMM time alone and ``lookup`` the compact
program's share of time in lookups (which scale with the kept features, not with FLOPs).
Target: at batch 4096 the measured speed-up is at least 80% of the ideal.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import statistics
import sys
import time
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
from torch import nn

from umec_torchrec.bench.kaggle import kaggle_model_config
from umec_torchrec.export.compact import build_compact, compact_config, skeleton
from umec_torchrec.export.measure import dense_path_flops
from umec_torchrec.export.program import export_program
from umec_torchrec.export.samples import one_id_kjt
from umec_torchrec.models import DEFAULT_MODEL_KIND, MODEL_KINDS, ModelConfig, ModelKind, build_dlrm
from umec_torchrec.umec import FeatureMask, apply_masks_, layout
from umec_torchrec.umec.masks import PruningMasks


def _width_masks(cfg: ModelConfig, kept: List[str], scale: float, gen_seed: int) -> PruningMasks:
    g = torch.Generator().manual_seed(gen_seed)
    widths = layout.prunable_widths(cfg)
    layers = {name: torch.randperm(w, generator=g)[: max(1, min(w, int(round(w * scale))))].tolist()
              for name, w in widths.items()}
    return PruningMasks(list(cfg.feature_names), kept, layers, widths)


def budget_masks(
    cfg: ModelConfig, budget: float, seed: int = 0, feature_share: Optional[float] = None
) -> Tuple[PruningMasks, float]:
    """Masks whose compact model has a dense-path FLOPs ratio close to (at most) ``budget``:
    a seeded random ``feature_share`` of the features (default ``sqrt(budget)``), then every
    hidden layer narrowed by one common factor.

    Returns:
        ``(masks, measured FLOPs ratio)``.
    """
    if not 0.0 < budget <= 1.0:
        raise ValueError(f"budget must be in (0, 1], got {budget}")
    g = torch.Generator().manual_seed(seed)
    n = len(cfg.feature_names)
    if feature_share is not None and not 0.0 < feature_share <= 1.0:
        raise ValueError(f"feature share must be in (0, 1], got {feature_share}")
    share = math.sqrt(budget) if feature_share is None else feature_share
    n_keep = max(1, min(n, int(round(n * share))))
    order = torch.randperm(n, generator=g)[:n_keep].tolist()
    kept = [cfg.feature_names[i] for i in sorted(order)]
    full = dense_path_flops(cfg)

    def ratio(scale: float) -> Tuple[PruningMasks, float]:
        m = _width_masks(cfg, kept, scale, seed + 1)
        return m, dense_path_flops(compact_config(cfg, m)) / full

    lo, hi = 0.0, 1.0
    best = ratio(1.0)
    if best[1] <= budget:
        return best
    best = ratio(1e-6)
    for _ in range(20):
        mid = (lo + hi) / 2
        m, r = ratio(mid)
        if r <= budget:
            lo, best = mid, (m, r)
        else:
            hi = mid
    return best


def _param_bytes(model: nn.Module) -> int:
    seen, total = set(), 0
    for t in list(model.parameters()) + list(model.buffers()):
        if id(t) not in seen:
            seen.add(id(t))
            total += t.numel() * t.element_size()
    return total


def _masked_model(dense: nn.Module, cfg: ModelConfig, masks: PruningMasks) -> nn.Module:
    """A DLRM sharing ``dense``'s tables, with copies of its dense weights, masked."""
    sd = {k: (v if layout.is_sparse_key(k) else v.clone()) for k, v in dense.state_dict().items()}
    m = skeleton(cfg)
    m.load_state_dict(sd, assign=True)
    apply_masks_(m, masks)
    return m.eval()


def _inputs(cfg: ModelConfig, batch: int, n_batches: int, seed: int) -> List[Tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    sizes = torch.tensor(cfg.table_sizes, dtype=torch.float64)
    out = []
    for _ in range(n_batches):
        ids = (torch.rand(batch, len(sizes), generator=g, dtype=torch.float64) * sizes).long()
        out.append((torch.rand(batch, cfg.dense_in_features, generator=g) * 3.0, ids))
    return out


GEMM_OPS = frozenset({"addmm", "mm", "bmm", "linear", "_linear_pointwise"})
LOOKUP_OPS = frozenset({"embedding", "index_select", "embedding_bag", "_embedding_bag", "_embedding_bag_forward_only"})


@contextlib.contextmanager
def _stderr_silenced() -> Iterator[None]:
    """Silence fd 2 (Kineto prints profiler start/stop lines there)."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def time_split(fn: Callable[[int], Any], n_inputs: int, rounds: int = 8) -> Dict[str, float]:
    """Seconds per call of ``fn(i)`` spent in GEMMs, in embedding lookups and in everything
    else (copies, activations, concatenation, dispatch), from ``torch.profiler`` self CPU
    times; ``total`` is their sum."""
    from torch.profiler import ProfilerActivity, profile

    with _stderr_silenced(), profile(activities=[ProfilerActivity.CPU]):  # the profiler's own start-up
        for i in range(n_inputs):
            fn(i)
    with _stderr_silenced(), profile(activities=[ProfilerActivity.CPU]) as prof:
        for r in range(rounds):
            fn(r % n_inputs)
    split = {"gemm": 0.0, "lookup": 0.0, "other": 0.0}
    for e in prof.key_averages():
        op = e.key.split("::")[-1]
        part = "gemm" if op in GEMM_OPS else "lookup" if op in LOOKUP_OPS else "other"
        split[part] += e.self_cpu_time_total / 1e6 / rounds
    split["total"] = sum(split.values())
    return split


def _time(fn: Callable[[], Any]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


@torch.inference_mode()
def run_inference_bench(
    batch_sizes: Sequence[int] = (128, 4096),
    budgets: Sequence[float] = (0.5, 0.3, 0.1),
    kind: ModelKind = DEFAULT_MODEL_KIND,
    rounds: Optional[int] = None,
    warmup: int = 3,
    table_sizes: Optional[List[int]] = None,
    seed: int = 0,
    log: Callable[[str], None] = lambda s: None,
    feature_share: Optional[float] = None,
) -> List[Dict[str, Any]]:
    """Time dense, compact, dense-eager and masked-eager models alternating; one result row per
    (batch size, budget). ``table_sizes`` shrinks the tables (tests); default Kaggle size.

    Each round times a block of 4 consecutive calls per model (its steady state, as in serving),
    the blocks alternating between models. ``rounds`` default: ``50000 // batch`` clipped to
    [10, 50] (about 2 x 10^5 samples per model at batch 4096).
    """
    torch.manual_seed(seed)
    cfg = kaggle_model_config(kind=kind, table_sizes=table_sizes)
    log(f"building the dense {kind} model ({sum(cfg.table_sizes):,} table rows, D={cfg.embedding_dim})...")
    dense = build_dlrm(cfg).eval()
    dense_bytes = _param_bytes(dense)
    dense_prog = export_program(dense, cfg.dense_in_features).module()
    setups = []
    for b in budgets:
        masks, ratio = budget_masks(cfg, b, seed=seed, feature_share=feature_share)
        compact = build_compact(dense.state_dict(), cfg, masks)
        ccfg = compact_config(cfg, masks)
        setups.append({
            "budget": b, "masks": masks, "flops_ratio": ratio, "ccfg": ccfg,
            "compact_prog": export_program(compact, cfg.dense_in_features).module(),
            "compact_bytes": _param_bytes(compact),
            "masked": _masked_model(dense, cfg, masks),
            "fmask": FeatureMask(masks.pruned_features),
            "kept_idx": [cfg.feature_names.index(f) for f in ccfg.feature_names],
            "lookup_ratio": len(ccfg.feature_names) / len(cfg.feature_names),
        })
        log(f"budget {b}: {len(ccfg.feature_names)} features (lookup bytes ratio {setups[-1]['lookup_ratio']:.3f}), "
            f"bottom {ccfg.bottom}, top {ccfg.top}, FLOPs ratio {ratio:.3f}")

    results = []
    for bs in batch_sizes:
        inputs = _inputs(cfg, bs, 4, seed + bs)
        kjts = [one_id_kjt(ids, cfg.feature_names) for _, ids in inputs]
        n_rounds = rounds or max(10, min(50, 50_000 // bs))
        dense_split = time_split(lambda i: dense_prog(inputs[i][0], inputs[i][1]), len(inputs))
        for s in setups:
            kept_ids = [ids[:, s["kept_idx"]].contiguous() for _, ids in inputs]
            masked, fmask, cprog = s["masked"], s["fmask"], s["compact_prog"]
            variants = {
                "dense": lambda i: dense_prog(inputs[i][0], inputs[i][1]),
                "compact": lambda i: cprog(inputs[i][0], kept_ids[i]),
                "dense_eager": lambda i: dense(inputs[i][0], kjts[i]),
                "masked_eager": lambda i: masked(inputs[i][0], fmask(kjts[i])),
            }
            times: Dict[str, List[float]] = {k: [] for k in variants}
            for r in range(warmup + n_rounds):
                for name, fn in variants.items():  # a block of calls per model, blocks alternating
                    t = _time(lambda: [fn(i) for i in range(len(inputs))]) / len(inputs)
                    if r >= warmup:
                        times[name].append(t)
            compact_split = time_split(lambda i: cprog(inputs[i][0], kept_ids[i]), len(inputs))
            # best of the rounds: the usual estimate of uncontended time on a shared machine
            best = {k: min(v) for k, v in times.items()}
            med = {k: statistics.median(v) for k, v in times.items()}
            ideal = 1.0 / s["flops_ratio"]
            speedup = best["dense"] / best["compact"]
            row = {
                "batch": bs, "budget": s["budget"], "flops_ratio": s["flops_ratio"],
                "ideal_speedup": ideal, "speedup": speedup, "share_of_ideal": speedup / ideal,
                "masked_speedup": best["dense_eager"] / best["masked_eager"],
                "median_speedup": med["dense"] / med["compact"],
                "memory_ratio": s["compact_bytes"] / dense_bytes,
                "gemm_speedup": dense_split["gemm"] / compact_split["gemm"],
                "lookup_share": {"dense": dense_split["lookup"] / dense_split["total"],
                                 "compact": compact_split["lookup"] / compact_split["total"]},
                "time_split_s": {"dense": dense_split, "compact": compact_split},
                "samples_per_s": {k: bs / v for k, v in best.items()},
                "median_samples_per_s": {k: bs / v for k, v in med.items()},
                "kept_features": len(s["ccfg"].feature_names),
                "lookup_bytes_ratio": s["lookup_ratio"],
                "bottom": s["ccfg"].bottom, "top": s["ccfg"].top,
                "rounds": n_rounds,
            }
            results.append(row)
            log(format_row(row))
    return results


HEADER = (f"{'batch':>6s} {'budget':>6s} {'ideal':>7s} {'compact':>8s} {'% ideal':>8s} {'gemm':>7s} "
          f"{'lookup':>7s} {'masked':>7s} {'memory':>7s} {'dense/s':>10s} {'compact/s':>10s}")


def format_row(r: Dict[str, Any]) -> str:
    sps = r["samples_per_s"]
    return (f"{r['batch']:6d} {r['budget']:6.2f} {r['ideal_speedup']:6.2f}x {r['speedup']:7.2f}x "
            f"{100 * r['share_of_ideal']:7.1f}% {r['gemm_speedup']:6.2f}x {100 * r['lookup_share']['compact']:6.1f}% "
            f"{r['masked_speedup']:6.2f}x {r['memory_ratio']:7.3f} "
            f"{sps['dense']:10,.0f} {sps['compact']:10,.0f}")


def format_table(results: List[Dict[str, Any]]) -> str:
    """The result table (ideal = 1 / dense-path FLOPs ratio; compact = measured speed-up of the
    exported compact program over the dense program; gemm = the same for the GEMM time alone;
    lookup = share of the compact program's time in embedding lookups; masked = masked eager
    over dense eager; memory = parameter bytes compact / dense)."""
    return "\n".join([HEADER] + [format_row(r) for r in results])


def add_parser(bsub: argparse._SubParsersAction) -> None:
    """``umec bench inference`` (registered in :data:`umec_torchrec.bench.BENCH_MODULES`)."""
    p = bsub.add_parser(
        "inference", help="samples/s of the exported compact model against the dense model",
        description="Kaggle-size DLRM (26 tables, 33.8M rows, D=16): for each FLOPs budget build masks of that "
                    "dense-path FLOPs ratio, export the compact model, and time it against the dense model "
                    "(alternating) at each batch size; also times the masked, unexported model. Prints the "
                    "measured speed-up next to the ideal one (1 / FLOPs ratio) and the memory ratio.")
    p.add_argument("--batch-sizes", default="128,4096", help="comma-separated batch sizes (default 128,4096)")
    p.add_argument("--budgets", default="0.5,0.3,0.1", help="comma-separated FLOPs budgets (default 0.5,0.3,0.1)")
    p.add_argument("--model", choices=list(MODEL_KINDS), default=DEFAULT_MODEL_KIND,
                   help=f"interaction (default {DEFAULT_MODEL_KIND})")
    p.add_argument("--rounds", type=int, default=None, help="timed rounds per model (default: ~2e5 samples)")
    p.add_argument("--feature-share", type=float, default=None, metavar="F",
                   help="share of the features the masks keep (default sqrt(budget)); the widths make up the "
                        "rest of the FLOPs budget. Fewer features = fewer lookups at the same FLOPs")
    p.add_argument("--json", action="store_true", help="also print the results as JSON")
    p.set_defaults(func=cmd_bench_inference)


add_bench_parser = add_parser


def cmd_bench_inference(args: argparse.Namespace) -> int:
    try:
        batch_sizes = [int(x) for x in args.batch_sizes.split(",") if x.strip()]
        budgets = [float(x) for x in args.budgets.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"--batch-sizes / --budgets: expected comma-separated numbers, got "
                         f"{args.batch_sizes!r} / {args.budgets!r}") from None
    print(f"bench inference: {torch.get_num_threads()} threads; ideal = 1/FLOPs ratio, compact = exported compact "
          "program vs dense program, gemm = the same for GEMM time only, lookup = compact time share in embedding "
          "lookups, masked = masked eager vs dense eager, memory = param bytes compact/dense", flush=True)
    res = run_inference_bench(batch_sizes, budgets, kind=args.model, rounds=args.rounds,
                              feature_share=args.feature_share,
                              log=lambda s: print(s, flush=True))
    print(format_table(res))
    big = [r for r in res if r["batch"] == max(batch_sizes)]
    if big:
        worst = min(r["share_of_ideal"] for r in big)
        print(f"target (batch {max(batch_sizes)}: measured >= 80% of ideal): "
              f"{'met' if worst >= 0.8 else 'NOT met'} (worst {100 * worst:.1f}%)")
    if args.json:
        print(json.dumps(res, indent=2))
    return 0


__all__ = ["budget_masks", "run_inference_bench", "format_table", "add_parser", "add_bench_parser"]
