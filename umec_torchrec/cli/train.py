"""CLI commands ``train``, ``evaluate`` and ``demo`` (see :mod:`umec_torchrec.cli`)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Callable

from umec_torchrec import cli

#: exit status when the loss or the weights became non-finite (the run stopped, see README)
EXIT_DIVERGED = 3


def add_checkpoint_args(p: argparse.ArgumentParser) -> None:
    """``--checkpoint-every N``, ``--keep K``, ``--resume`` (periodic checkpoints)."""
    g = p.add_argument_group("checkpoints and resuming")
    g.add_argument("--checkpoint-every", type=int, default=1000, metavar="N",
                   help="write RUN/checkpoints/step-N every N steps and at the end (0: only at the end; default 1000)")
    g.add_argument("--keep", type=int, default=2, metavar="K", help="keep the newest K periodic checkpoints (default 2)")
    g.add_argument("--resume", action="store_true",
                   help="continue RUN from its newest complete checkpoint (same command line otherwise)")


def checkpoint_policy_from_args(args: argparse.Namespace) -> Any:
    from umec_torchrec.train.ckpt_manager import CheckpointPolicy

    return CheckpointPolicy(every=args.checkpoint_every, keep=args.keep, resume=args.resume)


def run_guarded(ctx: Any, fn: Callable[[], Any]) -> int:
    """Run a training stage with SIGTERM/SIGINT handlers installed (stop after the current
    step, checkpoint, exit ``128 + signal``) and non-finite losses reported as one line
    (exit :data:`EXIT_DIVERGED`). Messages come from rank 0 only."""
    from umec_torchrec.train.guard import NonFiniteError, RunInterrupted, stop_on_signals

    try:
        with stop_on_signals():
            fn()
    except RunInterrupted as e:
        if ctx.rank == 0:
            print(f"{cli.PROG}: {e}", file=sys.stderr, flush=True)
        return e.exit_code
    except NonFiniteError as e:
        if ctx.rank == 0:
            print(f"{cli.PROG}: error: {e}", file=sys.stderr, flush=True)
        return EXIT_DIVERGED
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a DLRM and write a run directory",
                       description="Train a DLRM (DistributedModelParallel, fused table optimizer) and write "
                                   "RUN/config.json, RUN/metrics.json and RUN/checkpoint/. Runs on one process, "
                                   "or on N under torchrun --nproc_per_node N -m umec_torchrec.cli train ...")
    cli.add_data_args(p)
    cli.add_model_args(p)
    cli.add_train_args(p)
    cli.add_run_args(p, out_default="runs/train")
    add_checkpoint_args(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="AUC, log loss and accuracy of a run on its held-out split",
                       description="Reload a run (data from its recorded spec, model from its checkpoint, on any "
                                   "world size) and report AUC, log loss and accuracy; merged into metrics.json.")
    p.add_argument("run", metavar="RUN", help="run directory")
    p.add_argument("--data", default=None, metavar="SPEC", help="evaluate on this data instead (same vocabulary)")
    p.add_argument("--batch-size", type=int, default=None, help="evaluation batch size")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")
    cli.add_common_args(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("demo", help="the whole pipeline on synthetic data, in a few minutes",
                       description="Train the default concatenation DLRM (smaller MLPs) on synthetic data, reload "
                                   "and evaluate it, and print the metrics.")
    p.add_argument("--out", default="runs/demo", metavar="DIR", help="run directory (a previous demo there is replaced)")
    p.add_argument("--data", default=None, metavar="SPEC", help="data spec (default synthetic:min_count=3)")
    p.add_argument("--epochs", type=int, default=2, help="training epochs (default 2)")
    cli.add_common_args(p)
    p.set_defaults(func=cmd_demo)


def cmd_train(args: argparse.Namespace) -> int:
    from umec_torchrec.distributed import session
    from umec_torchrec.train.api import train_run

    train_cfg = cli.train_config_from_args(args)
    opts = cli.data_options_from_args(args)
    overrides = cli.model_overrides_from_args(args)
    policy = checkpoint_policy_from_args(args)
    with session(args.backend) as ctx:
        return run_guarded(ctx, lambda: train_run(args.data, overrides, train_cfg, args.out, ctx, data_options=opts,
                                                  force=args.force, progress=not args.no_progress,
                                                  checkpoints=policy))


def cmd_evaluate(args: argparse.Namespace) -> int:
    from umec_torchrec.distributed import session
    from umec_torchrec.train.api import evaluate_run, format_metrics, say

    with session(args.backend) as ctx:
        m = evaluate_run(args.run, ctx, data=args.data, batch_size=args.batch_size)
        say(ctx, json.dumps(m) if args.json else format_metrics(m, "test"))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from umec_torchrec.distributed import session
    from umec_torchrec.train.demo import run_demo

    with session(args.backend) as ctx:
        run_demo(args.out, data=args.data, ctx=ctx, epochs=args.epochs, progress=not args.no_progress)
    return 0
