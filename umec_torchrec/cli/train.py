"""Commands ``train``, ``evaluate`` and ``demo`` (see :mod:`umec_torchrec.cli`)."""

from __future__ import annotations

import argparse
import inspect
import json

from umec_torchrec.cli import flags
from umec_torchrec.cli.running import EXIT_DIVERGED, run_guarded

__all__ = ["add_parser", "cmd_train", "cmd_evaluate", "cmd_demo", "demo_default", "EXIT_DIVERGED"]


def demo_default(name: str):
    """The default of :func:`umec_torchrec.stages.demo.run_demo`'s parameter ``name``."""
    from umec_torchrec.stages.demo import run_demo

    return inspect.signature(run_demo).parameters[name].default


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a DLRM and write a run directory",
                       description="Train a DLRM (DistributedModelParallel, fused table optimizer) and write "
                                   "RUN/config.json, RUN/metrics.json and RUN/checkpoint/. Runs on one process, "
                                   "or on N under torchrun --nproc_per_node N -m umec_torchrec.cli train ...")
    flags.add_data_args(p)
    flags.add_model_args(p)
    flags.add_train_args(p)
    flags.add_run_args(p, out_default="runs/train")
    flags.add_checkpoint_args(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="AUC, log loss and accuracy of a run on its held-out split",
                       description="Reload a run (data from its recorded spec, model from its checkpoint, on any "
                                   "world size) and report AUC, log loss and accuracy; merged into metrics.json.")
    p.add_argument("run", metavar="RUN", help="run directory")
    p.add_argument("--data", default=None, metavar="SPEC", help="evaluate on this data instead (same vocabulary)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="evaluation batch size (default: the run's eval_batch_size)")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")
    flags.add_trust_arg(p)
    flags.add_common_args(p)
    p.set_defaults(func=cmd_evaluate)

    from umec_torchrec.stages.demo import DEMO_BUDGETS, DEMO_DATA

    p = sub.add_parser("demo", help="the whole pipeline on synthetic data, in a few minutes",
                       description="On synthetic data with known signal features: train the default concatenation "
                                   "DLRM, reload and evaluate it, compress it with UMEC under "
                                   f"{' and '.join(DEMO_BUDGETS)}, finetune the compressed architecture, export the "
                                   "physically pruned model and compare it with the dense one. Writes DIR, "
                                   "DIR-compressed, DIR-finetuned and DIR-export.")
    p.add_argument("--out", default="runs/demo", metavar="DIR",
                   help="run directory of the dense model (a previous demo there is replaced)")
    p.add_argument("--data", default=None, metavar="SPEC", help=f"data spec (default {DEMO_DATA})")
    p.add_argument("--epochs", type=int, default=demo_default("epochs"), help="training epochs (default %(default)s)")
    flags.add_common_args(p)
    p.set_defaults(func=cmd_demo)


def cmd_train(args: argparse.Namespace) -> int:
    from umec_torchrec.distributed import session
    from umec_torchrec.stages.train import train_run

    train_cfg = flags.train_config_from_args(args)
    opts = flags.data_options_from_args(args)
    overrides = flags.model_overrides_from_args(args)
    policy = flags.checkpoint_policy_from_args(args)
    with session(args.backend) as ctx:
        return run_guarded(ctx, lambda: train_run(args.data, overrides, train_cfg, args.out, ctx, data_options=opts,
                                                  force=args.force, progress=not args.no_progress,
                                                  checkpoints=policy))


def cmd_evaluate(args: argparse.Namespace) -> int:
    from umec_torchrec.distributed import session
    from umec_torchrec.io import trusting
    from umec_torchrec.log import say
    from umec_torchrec.stages.lifecycle import format_metrics
    from umec_torchrec.stages.train import evaluate_run

    if args.batch_size is not None and args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    with session(args.backend) as ctx, trusting(args.trust_checkpoint):
        m = evaluate_run(args.run, ctx, data=args.data, batch_size=args.batch_size)
        say(ctx, json.dumps(m) if args.json else format_metrics(m, "test"))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from umec_torchrec.distributed import session
    from umec_torchrec.stages.demo import run_demo

    with session(args.backend) as ctx:
        run_demo(args.out, data=args.data, ctx=ctx, epochs=args.epochs, progress=not args.no_progress)
    return 0
