"""``umec bench train``: training throughput (samples/s) of the Kaggle-size DLRM on
synthetic random ids (no data files needed)."""

from __future__ import annotations

import argparse
import json
import time
from typing import Any, Dict, List, Optional

import torch

from umec_torchrec.bench.kaggle import KAGGLE_TABLE_SIZES, kaggle_model_config
from umec_torchrec.data.dataset import CTRData
from umec_torchrec.distributed import DistContext, init_distributed
from umec_torchrec.log import say
from umec_torchrec.models import DEFAULT_MODEL_KIND, MODEL_KINDS, ModelKind
from umec_torchrec.train.build import build_training
from umec_torchrec.train.config import TrainConfig
from umec_torchrec.train.loop import train_steps


def random_batches(table_sizes: List[int], n_dense: int, local_batch: int, count: int, seed: int) -> List[Any]:
    """``count`` distinct random batches: uniform ids per table, Gaussian dense, random labels."""
    g = torch.Generator().manual_seed(seed)
    n = local_batch * count
    sizes = torch.tensor(table_sizes, dtype=torch.float64)
    sparse = (torch.rand(n, len(table_sizes), generator=g, dtype=torch.float64) * sizes).long()
    data = CTRData(
        dense=torch.randn(n, n_dense, generator=g),
        sparse=sparse,
        labels=torch.randint(0, 2, (n,), generator=g).float(),
        dense_names=[f"int_{i}" for i in range(n_dense)],
        feature_names=[f"cat_{i}" for i in range(len(table_sizes))],
        table_sizes=list(table_sizes),
    )
    return [data.make_batch(torch.arange(i * local_batch, (i + 1) * local_batch)) for i in range(count)]


def run_train_bench(
    steps: int = 20,
    batch_size: int = 2048,
    warmup: int = 3,
    kind: ModelKind = DEFAULT_MODEL_KIND,
    table_sizes: Optional[List[int]] = None,
    embedding_optimizer: str = "rowwise_adagrad",
    ctx: Optional[DistContext] = None,
    progress: bool = False,
) -> Dict[str, Any]:
    """Time ``steps`` training steps (after ``warmup``) of the Kaggle-size DLRM.

    Args:
        steps / warmup: timed and untimed steps.
        batch_size: global batch size (split over ranks).
        kind: model kind (``cat`` default, ``dot``, ``dcn``).
        table_sizes: override the Kaggle cardinalities (tests use tiny tables).
        embedding_optimizer: fused table optimizer.
        ctx: distributed context (default: :func:`init_distributed`).

    Returns:
        ``{"samples_per_s", "step_ms", "steps", "batch_size", "world_size", "table_rows",
        "build_seconds", "kind", "device"}``.
    """
    if steps < 1 or warmup < 0:
        raise ValueError(f"need steps >= 1 and warmup >= 0, got steps={steps}, warmup={warmup}")
    ctx = ctx or init_distributed()
    if batch_size % ctx.world_size:
        raise ValueError(f"batch size {batch_size} does not divide by world size {ctx.world_size}")
    sizes = list(table_sizes or KAGGLE_TABLE_SIZES)
    mcfg = kaggle_model_config(kind, table_sizes=sizes)
    tcfg = TrainConfig(embedding_optimizer=embedding_optimizer, batch_size=batch_size, log_every=0)
    t0 = time.perf_counter()
    dmp, opt = build_training(mcfg, tcfg, ctx, tables_on_meta=True)
    build_s = time.perf_counter() - t0
    local = batch_size // ctx.world_size
    pool = random_batches(sizes, mcfg.dense_in_features, local, 4, seed=1234 + ctx.rank)
    pool = [b.to(ctx.device) for b in pool]
    if warmup:
        train_steps(dmp, opt, (pool[i % len(pool)] for i in range(warmup)), progress=False, log_every=0)
    if ctx.device.type == "cuda":
        torch.cuda.synchronize()
    ctx.barrier()
    stats = train_steps(dmp, opt, (pool[i % len(pool)] for i in range(steps)), progress=progress, log_every=0,
                        total=steps, desc="bench")
    if ctx.device.type == "cuda":
        torch.cuda.synchronize()
    ctx.barrier()
    secs = stats["seconds"]
    return {
        "samples_per_s": steps * batch_size / secs,
        "step_ms": 1000.0 * secs / steps,
        "steps": steps,
        "batch_size": batch_size,
        "world_size": ctx.world_size,
        "table_rows": sum(sizes),
        "build_seconds": build_s,
        "kind": kind,
        "device": str(ctx.device),
        "final_loss": stats["loss"],
    }


def add_parser(bsub: argparse._SubParsersAction) -> None:
    from umec_torchrec.cli import flags

    p = bsub.add_parser("train", help="training throughput of the Kaggle-size DLRM (samples/s)",
                        description="Kaggle-size DLRM (26 tables, 33.8M rows, D=16, bottom 512,256,64,16, top "
                                    "512,256,1, fused row-wise Adagrad) on random ids: warm up, time N steps, "
                                    "print samples/s. Multi-process: "
                                    "torchrun --nproc_per_node N -m umec_torchrec.cli bench train")
    p.add_argument("--steps", type=int, default=20, help="timed steps (default 20)")
    p.add_argument("--warmup", type=int, default=3, help="untimed warm-up steps (default 3)")
    p.add_argument("--batch-size", type=int, default=2048, help="global batch size (default 2048)")
    p.add_argument("--model", choices=list(MODEL_KINDS), default=DEFAULT_MODEL_KIND, help="interaction (default cat)")
    p.add_argument("--embedding-optimizer", choices=["rowwise_adagrad", "adagrad", "sgd"], default="rowwise_adagrad")
    p.add_argument("--json", action="store_true", help="also print the result as JSON")
    flags.add_common_args(p)
    p.set_defaults(func=cmd_bench_train)


def cmd_bench_train(args: argparse.Namespace) -> int:
    from umec_torchrec.distributed import session

    with session(args.backend) as ctx:
        say(ctx, f"bench train: Kaggle-size {args.model} DLRM ({sum(KAGGLE_TABLE_SIZES):,} table rows, D=16), "
                 f"batch {args.batch_size}, {ctx.world_size} rank(s) on {ctx.device}; building...")
        r = run_train_bench(args.steps, args.batch_size, args.warmup, args.model,
                            embedding_optimizer=args.embedding_optimizer, ctx=ctx, progress=not args.no_progress)
        say(ctx, f"built in {r['build_seconds']:.1f}s; {r['steps']} steps of {r['batch_size']}: "
                 f"{r['step_ms']:.1f} ms/step")
        say(ctx, f"train throughput: {r['samples_per_s']:.0f} samples/s")
        if args.json:
            say(ctx, json.dumps(r))
    return 0


__all__ = ["run_train_bench", "random_batches", "add_parser"]
