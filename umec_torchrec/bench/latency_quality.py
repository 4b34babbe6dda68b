"""``umec bench latency-quality``: AUC of latency-budgeted against FLOPs-budgeted UMEC models
at equal *measured* serving speed.

A user who wants a faster model can budget FLOPs or the calibrated ``latency`` resource
(:mod:`umec_torchrec.umec.latency`). Both give a model that is faster than dense; the
question is which one keeps more AUC for the speed it actually delivers. Per seed the bench:

1. trains the dense model of :class:`~umec_torchrec.bench.quality.config.QualityConfig` (the
   quality bench's Criteo sample set-up, same split, same training lengths);
2. calibrates the latency table for that model on this machine (or reads ``--latency-model``);
3. runs UMEC with default settings (search, hard prune, fine-tune) at every ``latency=L``
   budget and every ``flops=F`` budget of a grid, evaluates each on the test split (and the
   validation split, recorded);
4. exports every compact model with the export path (DCP checkpoint ->
   :func:`~umec_torchrec.export.checkpoint_reader.load_dlrm_state` -> compact surgery ->
   ``torch.export`` program) and times all programs and the dense one side by side
   (:func:`~umec_torchrec.bench.inference.time_alternating`, best round), giving each model's
   measured speed-up over dense;
5. reads the FLOPs models' AUC as a function of measured speed-up (piecewise linear in
   ``log`` speed-up, :func:`auc_at_speedup`) at each latency model's measured speed-up: the
   AUC a FLOPs budget would have given at that speed. The difference is paired per seed.

Target (issue 15): at equal measured latency, the latency-budgeted model's AUC is at least
the FLOPs-budgeted one's (paired mean over seeds >= 0). Printed, not asserted.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shutil
import tempfile
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch

from umec_torchrec.bench.inference import CLOCKS, random_inputs, time_alternating
from umec_torchrec.bench.quality.config import QualityConfig
from umec_torchrec.bench.quality.context import SeedContext
from umec_torchrec.bench.quality.methods import get_method
from umec_torchrec.bench.quality.statistics import mean_std
from umec_torchrec.distributed import init_distributed
from umec_torchrec.export.calibrate import (
    CalibrationOptions,
    calibrate,
    check_conditions,
    load_latency_table,
    save_latency_table,
)
from umec_torchrec.export.checkpoint_reader import load_dlrm_state
from umec_torchrec.export.compact import build_compact, compact_config, full_masks
from umec_torchrec.export.program import export_program
from umec_torchrec.io import write_json
from umec_torchrec.train.checkpoint import save_checkpoint
from umec_torchrec.train.metrics import evaluate
from umec_torchrec.umec.allocation import resources_of_masks
from umec_torchrec.umec.latency import LatencyTable, using_latency_table

__all__ = ["LatencyQualityConfig", "auc_at_speedup", "run_latency_quality", "format_report", "add_parser"]


@dataclasses.dataclass
class LatencyQualityConfig:
    """Settings of ``umec bench latency-quality``.

    Args:
        quality: the data, model, training lengths and UMEC settings (the quality bench's).
        latency_budgets: ``latency=L`` budgets (fractions of the dense program's predicted time);
            one below the smallest model the groups allow (the per-call overhead, one field and
            the narrowest layers) is skipped with a line saying so.
        flops_budgets: the FLOPs grid whose measured speed-ups the latency models are read
            against; it should bracket their speed-ups (a latency model outside the grid's
            range is reported as such, never extrapolated).
        batch: serving batch of the calibration and the timing.
        threads: intra-op threads while calibrating and timing.
        clock: ``"cpu"`` (the thread's CPU time; needs one thread) or ``"wall"``.
        rounds: timed rounds per program.
        calibration: how the latency table is measured when none is given.
    """

    quality: QualityConfig = dataclasses.field(default_factory=QualityConfig)
    latency_budgets: List[float] = dataclasses.field(default_factory=lambda: [0.5, 0.4, 0.3])
    flops_budgets: List[float] = dataclasses.field(default_factory=lambda: [0.7, 0.5, 0.3, 0.2, 0.1, 0.05, 0.02])
    batch: int = 4096
    threads: int = 1
    clock: str = "cpu"
    rounds: int = 20
    calibration: CalibrationOptions = dataclasses.field(default_factory=CalibrationOptions)

    def validate(self) -> None:
        """``ValueError`` naming the bad setting."""
        self.quality.validate()
        for name in ("latency_budgets", "flops_budgets"):
            vals = getattr(self, name)
            if not vals:
                raise ValueError(f"{name}: give at least one budget")
            for b in vals:
                if not 0.0 < b <= 1.0:
                    raise ValueError(f"{name}: budget {b} must be a fraction of dense in (0, 1]")
        for name in ("batch", "threads", "rounds"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.clock not in CLOCKS:
            raise ValueError(f"clock must be one of {sorted(CLOCKS)}, got {self.clock!r}")
        if self.clock == "cpu" and self.threads != 1:
            raise ValueError(f"clock 'cpu' times one thread: it needs threads 1, got {self.threads}")


def auc_at_speedup(points: Sequence[Tuple[float, float]], speedup: float) -> Optional[float]:
    """The AUC of the curve ``points = [(measured speed-up, AUC), ...]`` at ``speedup``,
    linear in ``log(speed-up)`` between neighbours; ``None`` outside the points' range (no
    extrapolation). Points at equal speed-up are averaged.

    Example::

        assert auc_at_speedup([(2.0, 0.70), (8.0, 0.60)], 4.0) == 0.65
    """
    by: Dict[float, List[float]] = {}
    for s, a in points:
        by.setdefault(float(s), []).append(float(a))
    xs = sorted(by)
    if not xs or not xs[0] <= speedup <= xs[-1]:
        return None
    ys = [sum(by[x]) / len(by[x]) for x in xs]
    for (x0, y0), (x1, y1) in zip(zip(xs, ys), zip(xs[1:], ys[1:])):
        if x0 <= speedup <= x1:
            t = 0.0 if x1 == x0 else (math.log(speedup) - math.log(x0)) / (math.log(x1) - math.log(x0))
            return y0 + t * (y1 - y0)
    return ys[0]  # a single point, equal to speedup


def _model_row(s: SeedContext, resource: str, budget: float, work: str) -> Tuple[Dict[str, Any], torch.nn.Module]:
    """UMEC (default settings) at ``resource=budget``: its test/valid AUC and compact program."""
    t0 = time.perf_counter()
    budgets = [f"{resource}={budget!r}"]
    r = get_method("umec")(s, budgets, budget)
    test = evaluate(r.dmp, s.test, s.cfg.eval_batch_size, s.ctx, batch_transform=r.opt.feature_mask)
    valid = s.evaluate_valid(r.dmp, batch_transform=r.opt.feature_mask)
    ckpt = os.path.join(work, f"seed{s.seed}_{resource}_{budget:g}")
    save_checkpoint(ckpt, r.dmp, None)
    state = load_dlrm_state(ckpt, s.model_cfg, r.masks)
    compact = build_compact(state, s.model_cfg, r.masks).eval()
    ccfg = compact_config(s.model_cfg, r.masks)
    res = resources_of_masks(r.spec, r.masks, names=("flops", "latency"))
    shutil.rmtree(ckpt, ignore_errors=True)
    row = {
        "seed": s.seed, "resource": resource, "budget": float(budget), "label": f"{resource}={budget:g}",
        "auc": float(test["auc"]), "valid_auc": None if valid is None else float(valid["auc"]),
        "kept_features": len(ccfg.feature_names), "bottom": list(ccfg.bottom), "top": list(ccfg.top),
        "flops_fraction": float(res["flops"]["fraction"]),
        "latency_fraction": float(res["latency"]["fraction"]),
        "kept_idx": [s.model_cfg.feature_names.index(f) for f in ccfg.feature_names],
        "seconds": time.perf_counter() - t0,
    }
    return row, export_program(compact, s.model_cfg.dense_in_features).module()


@torch.inference_mode()
def _time_programs(cfg: LatencyQualityConfig, model_cfg: Any, dense_prog: Any, rows: List[Dict[str, Any]],
                   programs: List[Any], seed: int) -> None:
    inputs = random_inputs(model_cfg, cfg.batch, 4, seed)
    kept = [[ids[:, r["kept_idx"]].contiguous() for _, ids in inputs] for r in rows]
    variants: Dict[str, Callable[[int], Any]] = {"dense": lambda i: dense_prog(inputs[i][0], inputs[i][1])}
    for j, prog in enumerate(programs):
        variants[str(j)] = (lambda p, k: (lambda i: p(inputs[i][0], k[i])))(prog, kept[j])
    times, _ = time_alternating(variants, len(inputs), cfg.rounds, 3, CLOCKS[cfg.clock])
    best = {k: min(v) for k, v in times.items()}
    for j, r in enumerate(rows):
        r["measured_s"] = best[str(j)]
        r["dense_measured_s"] = best["dense"]
        r["speedup"] = best["dense"] / best[str(j)]


def compare(rows: Sequence[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Per latency budget: the latency models' AUC against the FLOPs curve's AUC at their
    measured speed-ups, paired per seed (``delta`` = latency - FLOPs), over the seeds."""
    out = []
    for b in sorted({r["budget"] for r in rows if r["resource"] == "latency"}, reverse=True):
        pairs = []
        for r in (r for r in rows if r["resource"] == "latency" and r["budget"] == b):
            curve = [(f["speedup"], f["auc"]) for f in rows if f["resource"] == "flops" and f["seed"] == r["seed"]]
            ref = auc_at_speedup(curve, r["speedup"])
            fastest = max(curve)  # the fastest FLOPs model of this seed: (speed-up, AUC)
            pairs.append({"seed": r["seed"], "speedup": r["speedup"], "auc": r["auc"], "flops_auc": ref,
                          "delta": None if ref is None else r["auc"] - ref,
                          # beyond every FLOPs model's speed: no FLOPs budget of the grid reached it
                          "faster_than_flops": ref is None and r["speedup"] > fastest[0],
                          "delta_vs_fastest_flops": r["auc"] - fastest[1]})
        deltas = [p["delta"] for p in pairs if p["delta"] is not None]
        m, sd = mean_std(deltas) if deltas else (float("nan"), float("nan"))
        out.append({"budget": b, "pairs": pairs, "mean_delta": m, "std_delta": sd, "n": len(deltas),
                    "wins": sum(d >= 0 for d in deltas), "outside": len(pairs) - len(deltas),
                    "met": bool(deltas) and len(deltas) == len(pairs) and m >= 0})
    return out


def format_report(rows: Sequence[Dict[str, Any]], comparison: Sequence[Dict[str, Any]], seconds: float,
                  command: str = "") -> str:
    """The markdown report: every model, then the paired comparison and the target line."""
    lines = ["# Latency- against FLOPs-budgeted UMEC at equal measured speed", ""]
    if command:
        lines += [f"`{command}` ({seconds / 60:.1f} min)", ""]
    lines += ["| seed | budget | kept fields | bottom | top | FLOPs | pred. latency | measured speed-up | "
              "test AUC | valid AUC |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (r["seed"], r["resource"], -r["budget"])):
        va = "" if r["valid_auc"] is None else f"{r['valid_auc']:.4f}"
        lines.append(f"| {r['seed']} | {r['label']} | {r['kept_features']} | {r['bottom']} | {r['top']} | "
                     f"{r['flops_fraction']:.3f} | {r['latency_fraction']:.3f} | {r['speedup']:.2f}x | "
                     f"{r['auc']:.4f} | {va} |")
    lines += ["", "| latency budget | speed-ups (per seed) | AUC - FLOPs curve's AUC at that speed "
              "| mean +- std | wins | target |", "|---|---|---|---|---|---|"]
    for c in comparison:
        sp = ", ".join(f"{p['speedup']:.2f}x" for p in c["pairs"])
        ds = ", ".join((f"faster than any FLOPs model ({p['delta_vs_fastest_flops']:+.4f} vs the fastest)"
                        if p["faster_than_flops"] else "outside") if p["delta"] is None else f"{p['delta']:+.4f}"
                       for p in c["pairs"])
        lines.append(f"| latency={c['budget']:g} | {sp} | {ds} | {c['mean_delta']:+.4f} +- {c['std_delta']:.4f} | "
                     f"{c['wins']}/{len(c['pairs'])} | {'met' if c['met'] else 'NOT met'} |")
    return "\n".join(lines) + "\n"


def run_latency_quality(cfg: LatencyQualityConfig, out_dir: str, table: Optional[LatencyTable] = None,
                        log: Callable[[str], None] = print, command: str = "") -> Dict[str, Any]:
    """Run the bench; write ``latency_quality.{json,md}`` (and ``LATENCY.json`` when it
    calibrated) into ``out_dir``.

    Args:
        cfg: the settings.
        out_dir: where the report goes (created).
        table: a latency table for this model on this machine; default: calibrated here for
            seed 0's model (same threads, batch and clock as the timing).
        log: progress lines.
        command: the command line, recorded in the report.

    Returns:
        ``{"rows": [...], "comparison": [...], "seconds": ...}``.
    """
    cfg.validate()
    ctx = init_distributed()
    os.makedirs(out_dir, exist_ok=True)
    prev_threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    t0 = time.perf_counter()
    work = tempfile.mkdtemp(prefix="umec-latq-")
    rows: List[Dict[str, Any]] = []
    try:
        for seed in range(cfg.quality.seeds):
            s = SeedContext(cfg.quality, seed, ctx, work, log)
            if table is None:
                opts = dataclasses.replace(cfg.calibration, batch=cfg.batch, threads=cfg.threads, clock=cfg.clock)
                table = calibrate(s.model_cfg, opts, model_like=f"bench latency-quality seed 0 ({cfg.quality.data})",
                                  log=log)
                save_latency_table(os.path.join(out_dir, "LATENCY.json"), table)
            seed_rows, programs = [], []
            with using_latency_table(table):
                for resource, budgets in (("latency", cfg.latency_budgets), ("flops", cfg.flops_budgets)):
                    for b in budgets:
                        try:
                            row, prog = _model_row(s, resource, b, work)
                        except ValueError as e:  # below the smallest model the groups allow
                            log(f"  seed {seed} {resource}={b:g}: skipped, {e}")
                            continue
                        seed_rows.append(row)
                        programs.append(prog)
                        log(f"  seed {seed} {row['label']}: {row['kept_features']} fields, bottom {row['bottom']}, "
                            f"top {row['top']}, FLOPs {row['flops_fraction']:.3f}, test AUC {row['auc']:.4f} "
                            f"({row['seconds']:.0f}s)")
            dense = build_compact(load_dlrm_state(s.ckpt, s.model_cfg, full_masks(s.model_cfg)), s.model_cfg,
                                  full_masks(s.model_cfg)).eval()
            dense_prog = export_program(dense, s.model_cfg.dense_in_features).module()
            _time_programs(cfg, s.model_cfg, dense_prog, seed_rows, programs, seed)
            for r in seed_rows:
                log(f"  seed {seed} {r['label']}: measured speed-up {r['speedup']:.2f}x")
            rows.extend(seed_rows)
    finally:
        torch.set_num_threads(prev_threads)
        shutil.rmtree(work, ignore_errors=True)
    seconds = time.perf_counter() - t0
    comparison = compare(rows)
    for r in rows:
        r.pop("kept_idx", None)
    result = {"rows": rows, "comparison": comparison, "seconds": seconds,
              "config": {"latency_budgets": cfg.latency_budgets, "flops_budgets": cfg.flops_budgets,
                         "batch": cfg.batch, "threads": cfg.threads, "clock": cfg.clock, "rounds": cfg.rounds,
                         "quality": cfg.quality.to_dict()}}
    write_json(os.path.join(out_dir, "latency_quality.json"), result)
    with open(os.path.join(out_dir, "latency_quality.md"), "w") as f:
        f.write(format_report(rows, comparison, seconds, command))
    return result


def add_parser(bsub: argparse._SubParsersAction) -> None:
    """``umec bench latency-quality`` (registered in :data:`umec_torchrec.bench.BENCH_MODULES`)."""
    from umec_torchrec.bench.quality.command import _floats

    d, q = LatencyQualityConfig(), QualityConfig()
    p = bsub.add_parser(
        "latency-quality", help="AUC of latency- against FLOPs-budgeted UMEC models at equal measured speed",
        description="Per seed: the quality bench's dense model, UMEC at latency= budgets and at a grid of flops= "
                    "budgets, every compact model exported and timed against dense side by side; the FLOPs "
                    "models' AUC read at each latency model's measured speed-up. Writes latency_quality.md/json.")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--data", default=q.data, metavar="SPEC", help="data spec (default %(default)s)")
    p.add_argument("--seeds", type=int, default=q.seeds, help="number of seeds (default %(default)s)")
    p.add_argument("--latency-budgets", type=_floats, default=d.latency_budgets,
                   help="latency= budgets (default %(default)s)")
    p.add_argument("--flops-budgets", type=_floats, default=d.flops_budgets,
                   help="the flops= grid read against (default %(default)s)")
    p.add_argument("--batch", type=int, default=d.batch, help="serving batch (default %(default)s)")
    p.add_argument("--threads", type=int, default=d.threads, help="intra-op threads (default %(default)s)")
    p.add_argument("--clock", choices=sorted(CLOCKS), default=d.clock, help="timing clock (default %(default)s)")
    p.add_argument("--rounds", type=int, default=d.rounds, help="timed rounds per program (default %(default)s)")
    p.add_argument("--latency-model", metavar="LATENCY.json", default=None,
                   help="a calibration of this model on this machine (default: calibrate first)")
    p.add_argument("--quick-calibration", action="store_true", help="calibrate with umec calibrate --quick")
    p.set_defaults(func=cmd_bench_latency_quality)


def cmd_bench_latency_quality(args: argparse.Namespace) -> int:
    import sys

    cfg = LatencyQualityConfig(
        quality=dataclasses.replace(QualityConfig(), data=args.data, seeds=args.seeds),
        latency_budgets=args.latency_budgets, flops_budgets=args.flops_budgets, batch=args.batch,
        threads=args.threads, clock=args.clock, rounds=args.rounds,
        calibration=CalibrationOptions(quick=args.quick_calibration))
    cfg.validate()
    table = None
    if args.latency_model:
        table = load_latency_table(args.latency_model)
        for w in check_conditions(table, args.latency_model, threads=cfg.threads, batch=cfg.batch, strict=True,
                                  clock=cfg.clock):
            print(f"warning: {w}", flush=True)
    res = run_latency_quality(cfg, args.out, table, log=lambda m: print(m, flush=True),
                              command="umec bench latency-quality " + " ".join(sys.argv[3:]))
    with open(os.path.join(args.out, "latency_quality.md")) as f:
        print(f.read())
    print(json.dumps([{k: c[k] for k in ("budget", "mean_delta", "std_delta", "wins", "met")}
                      for c in res["comparison"]]))
    return 0
