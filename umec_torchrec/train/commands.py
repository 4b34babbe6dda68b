"""CLI commands ``train``, ``evaluate`` and ``demo`` (see :mod:`umec_torchrec.cli`)."""

from __future__ import annotations

import argparse
import json

from umec_torchrec import cli


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a DLRM and write a run directory",
                       description="Train a DLRM (DistributedModelParallel, fused table optimizer) and write "
                                   "RUN/config.json, RUN/metrics.json and RUN/checkpoint/. Runs on one process, "
                                   "or on N under torchrun --nproc_per_node N -m umec_torchrec.cli train ...")
    cli.add_data_args(p)
    cli.add_model_args(p)
    cli.add_train_args(p)
    cli.add_run_args(p, out_default="runs/train")
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
    with session(args.backend) as ctx:
        train_run(args.data, overrides, train_cfg, args.out, ctx, data_options=opts, force=args.force,
                  progress=not args.no_progress)
    return 0


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
