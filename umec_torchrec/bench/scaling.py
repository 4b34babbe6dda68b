"""``umec bench scaling``: training samples/s on 1 and 2 ranks (or any list of world sizes),
plain and with UMEC, side by side.

The command runs in one process and launches each world size itself with TorchElastic
(``torch.distributed.launcher.api.elastic_launch``, the engine behind ``torchrun``), so one
call measures every configuration on the same machine. Strong scaling: the global batch is
fixed and split over the ranks; the CPU cores are split evenly between the ranks (a 1-rank
run uses all of them), so on a machine with few cores the figures show what a second rank
costs or buys there, not what it would on dedicated hosts.

Each rank builds the Kaggle-shaped DLRM (26 tables, D=16, bottom 512,256,64,16, top
512,256,1; tables capped at ``--max-table-rows`` rows, default 100,000, to keep the build
fast and the memory small), table-wise sharded, fused row-wise Adagrad + dense Adagrad in a
``CombinedOptimizer``; times ``--steps`` plain steps, then wraps the same optimizer in
:class:`~umec_torchrec.umec.optimizer.UMECOptimizer` and times ``--steps`` UMEC steps (with
the consistency check every 10 steps and the activation statistics all-reduce every step).
"""

from __future__ import annotations

import argparse
import json
import os
import time
import uuid
from typing import Any, Dict, List, Optional

import torch

from umec_torchrec.bench.kaggle import KAGGLE_TABLE_SIZES, kaggle_model_config
from umec_torchrec.models import DEFAULT_MODEL_KIND, MODEL_KINDS, ModelKind

DEFAULT_MAX_ROWS = 100_000


def _timed(dmp, opt, pool, steps: int, warmup: int, mask=None) -> float:
    """Seconds for ``steps`` training steps after ``warmup`` untimed ones (barrier-aligned)."""
    import torch.distributed as dist

    def one(b):
        loss, _ = dmp(mask(b) if mask is not None else b)
        loss.backward()
        opt.step()
        opt.zero_grad()

    for i in range(warmup):
        one(pool[i % len(pool)])
    if torch.cuda.is_available() and next(dmp.parameters()).is_cuda:
        torch.cuda.synchronize()
    dist.barrier()
    t0 = time.perf_counter()
    for i in range(steps):
        one(pool[i % len(pool)])
    if torch.cuda.is_available() and next(dmp.parameters()).is_cuda:
        torch.cuda.synchronize()
    dist.barrier()
    return time.perf_counter() - t0


def scaling_worker(cfg: Dict[str, Any]) -> Dict[str, Any]:
    """One rank of one world size (module level: TorchElastic pickles it)."""
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    logging.getLogger("torchrec").setLevel(logging.ERROR)
    from umec_torchrec.bench.train import random_batches
    from umec_torchrec.distributed import destroy, init_distributed
    from umec_torchrec.train.build import build_training
    from umec_torchrec.train.config import TrainConfig
    from umec_torchrec.umec.optimizer import UMECConfig, UMECOptimizer

    torch.set_num_threads(cfg["threads"])
    ctx = init_distributed(cfg.get("backend"))
    try:
        sizes = cfg["table_sizes"]
        mcfg = kaggle_model_config(cfg["kind"], table_sizes=sizes)
        tcfg = TrainConfig(batch_size=cfg["batch_size"], sharding="table_wise", log_every=0, seed=0)
        t0 = time.perf_counter()
        dmp, opt = build_training(mcfg, tcfg, ctx, tables_on_meta=True)
        build_s = time.perf_counter() - t0
        local = cfg["batch_size"] // ctx.world_size
        pool = [b.to(ctx.device) for b in random_batches(sizes, mcfg.dense_in_features, local, 4, 1234 + ctx.rank)]
        plain_s = _timed(dmp, opt, pool, cfg["steps"], cfg["warmup"])
        umec = UMECOptimizer(opt, dmp, cfg["budgets"], UMECConfig(check_every=10), holdout=lambda: pool[:1])
        umec_s = _timed(dmp, umec, pool, cfg["steps"], cfg["warmup"], mask=umec.feature_mask)
        umec.check_consistency()
        return {"plain_s": plain_s, "umec_s": umec_s, "build_s": build_s, "device": str(ctx.device)}
    finally:
        destroy()


def _launch(world_size: int, cfg: Dict[str, Any]) -> Dict[str, Any]:
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    lc = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=world_size,
                      run_id=f"umec-scaling-{uuid.uuid4().hex[:8]}",
                      rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0, monitor_interval=0.1)
    out = elastic_launch(lc, scaling_worker)(cfg)
    return out[0]  # timings are barrier-aligned: rank 0's equal the job's


def scaling_rows(timings: List[Dict[str, Any]], steps: int, batch_size: int) -> List[Dict[str, Any]]:
    """Throughput rows of the bench from the timed seconds of each world size.

    Args:
        timings: one dict per world size, in order: ``world_size``, ``threads_per_rank``,
            ``device``, ``plain_s`` / ``umec_s`` (seconds for ``steps`` steps), ``build_s``.
        steps / batch_size: the timed steps and the global batch.

    Returns:
        one row per timing with ``plain_samples_per_s = steps * batch_size / plain_s`` (likewise
        UMEC), ``umec_over_plain``, and ``plain_speedup`` / ``umec_speedup`` relative to the
        first row.

    Example::

        scaling_rows([{"world_size": 1, "plain_s": 2.0, "umec_s": 4.0, ...}], steps=10, batch_size=100)
        # -> [{"plain_samples_per_s": 500.0, "umec_samples_per_s": 250.0, "umec_over_plain": 0.5, ...}]
    """
    rows = [{"world_size": t["world_size"], "threads_per_rank": t["threads_per_rank"], "device": t["device"],
             "plain_samples_per_s": steps * batch_size / t["plain_s"],
             "umec_samples_per_s": steps * batch_size / t["umec_s"],
             "build_seconds": t["build_s"]} for t in timings]
    for r in rows:
        r["umec_over_plain"] = r["umec_samples_per_s"] / r["plain_samples_per_s"]
        r["plain_speedup"] = r["plain_samples_per_s"] / rows[0]["plain_samples_per_s"]
        r["umec_speedup"] = r["umec_samples_per_s"] / rows[0]["umec_samples_per_s"]
    return rows


def run_scaling_bench(
    ranks: List[int] = (1, 2),  # type: ignore[assignment]
    steps: int = 20,
    warmup: int = 3,
    batch_size: int = 2048,
    kind: ModelKind = DEFAULT_MODEL_KIND,
    max_table_rows: int = DEFAULT_MAX_ROWS,
    budgets: Optional[List[str]] = None,
    backend: Optional[str] = None,
    cores: Optional[int] = None,
) -> Dict[str, Any]:
    """Launch each world size in ``ranks`` and time plain and UMEC training.

    Returns:
        ``{"rows": [{"world_size", "threads_per_rank", "plain_samples_per_s",
        "umec_samples_per_s", "umec_over_plain", "plain_speedup", "umec_speedup", ...}],
        "cores", "batch_size", "steps", "table_rows", "kind"}``; speedups are relative to the
        first world size in ``ranks``.
    """
    if os.environ.get("WORLD_SIZE") not in (None, "", "1") or os.environ.get("TORCHELASTIC_RUN_ID"):
        raise ValueError("umec bench scaling launches its own ranks: run it as one process, not under torchrun")
    if steps < 1 or warmup < 0 or not ranks or min(ranks) < 1:
        raise ValueError(f"need steps >= 1, warmup >= 0 and world sizes >= 1; got steps={steps}, warmup={warmup}, "
                         f"ranks={ranks}")
    for n in ranks:
        if batch_size % n:
            raise ValueError(f"batch size {batch_size} does not divide by world size {n}")
    if max_table_rows < 1:
        raise ValueError(f"--max-table-rows must be >= 1, got {max_table_rows}")
    cores = cores or os.cpu_count() or 1
    sizes = [min(s, max_table_rows) for s in KAGGLE_TABLE_SIZES]
    timings: List[Dict[str, Any]] = []
    for n in ranks:
        cfg = {"table_sizes": sizes, "kind": kind, "batch_size": batch_size, "steps": steps, "warmup": warmup,
               "budgets": list(budgets or ["flops=0.3", "embedding_bytes=0.5"]), "backend": backend,
               "threads": max(1, cores // n)}
        timings.append({"world_size": n, "threads_per_rank": cfg["threads"], **_launch(n, cfg)})
    rows = scaling_rows(timings, steps, batch_size)
    return {"rows": rows, "cores": cores, "batch_size": batch_size, "steps": steps, "kind": kind,
            "table_rows": sum(sizes)}


def format_table(res: Dict[str, Any]) -> str:
    """The side-by-side table printed by the command."""
    lines = [f"{'ranks':>5} {'threads/rank':>12} {'plain samples/s':>16} {'UMEC samples/s':>15} "
             f"{'UMEC/plain':>10} {'plain speedup':>13} {'UMEC speedup':>12}"]
    for r in res["rows"]:
        lines.append(f"{r['world_size']:>5} {r['threads_per_rank']:>12} {r['plain_samples_per_s']:>16.0f} "
                     f"{r['umec_samples_per_s']:>15.0f} {r['umec_over_plain']:>10.3f} "
                     f"{r['plain_speedup']:>12.2f}x {r['umec_speedup']:>11.2f}x")
    return "\n".join(lines)


def add_parser(bsub: argparse._SubParsersAction) -> None:
    from umec_torchrec.cli import flags

    p = bsub.add_parser("scaling", help="samples/s on 1 and 2 ranks, plain vs UMEC training",
                        description="Launches each world size (TorchElastic, gloo on CPU / nccl on CUDA) and times "
                                    "plain and UMEC training of the Kaggle-shaped DLRM (tables capped), table-wise "
                                    "sharded, fixed global batch. The cores are split between the ranks. Run it as "
                                    "one process (it starts its own ranks).")
    p.add_argument("--ranks", type=flags.int_list, default=[1, 2], help="world sizes, comma-separated (default 1,2)")
    p.add_argument("--steps", type=int, default=20, help="timed steps per arm (default 20)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps per arm (default 3)")
    p.add_argument("--batch-size", type=int, default=2048, help="global batch size (default 2048)")
    p.add_argument("--model", choices=list(MODEL_KINDS), default=DEFAULT_MODEL_KIND, help="interaction (default cat)")
    p.add_argument("--max-table-rows", type=int, default=DEFAULT_MAX_ROWS,
                   help=f"cap on each Kaggle table's rows (default {DEFAULT_MAX_ROWS:,}; 40000000 = full size)")
    p.add_argument("--budget", action="append", default=None, metavar="NAME=VALUE",
                   help="UMEC budgets (default flops=0.3 and embedding_bytes=0.5)")
    p.add_argument("--json", action="store_true", help="also print the result as JSON")
    flags.add_common_args(p)
    p.set_defaults(func=cmd_bench_scaling)


def cmd_bench_scaling(args: argparse.Namespace) -> int:
    cores = os.cpu_count() or 1
    print(f"bench scaling: Kaggle-shaped {args.model} DLRM, tables capped at {args.max_table_rows:,} rows, "
          f"global batch {args.batch_size}, {args.steps} timed steps per arm; ranks {args.ranks} on {cores} cores "
          f"(split between the ranks)", flush=True)
    res = run_scaling_bench(args.ranks, args.steps, args.warmup, args.batch_size, args.model, args.max_table_rows,
                            args.budget, args.backend, cores)
    print(format_table(res))
    if cores < 2 * max(args.ranks):
        print(f"note: {cores} cores for up to {max(args.ranks)} ranks: the ranks share few cores and talk over "
              "loopback gloo, so more ranks need not be faster here; the figures measure this machine only.")
    if args.json:
        print(json.dumps(res))
    return 0


__all__ = ["run_scaling_bench", "scaling_rows", "scaling_worker", "format_table", "add_parser"]
