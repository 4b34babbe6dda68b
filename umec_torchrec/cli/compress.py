"""Commands ``compress`` and ``finetune`` (see :mod:`umec_torchrec.cli`)."""

from __future__ import annotations

import argparse
import inspect

from umec_torchrec.cli import flags
from umec_torchrec.cli.running import run_guarded

__all__ = ["add_parser", "add_budget_args", "add_serving_dtype_args", "add_stage_args", "cmd_compress",
           "cmd_finetune", "serving_dtypes_from_args"]


def add_serving_dtype_args(p: argparse.ArgumentParser) -> None:
    """``--serve-dtype`` / ``--serve-table-dtype``: the table dtypes the latency resource prices
    (:class:`~umec_torchrec.umec.latency.ServingDtypes`, the rules of ``umec export``)."""
    from umec_torchrec.umec.latency import DTYPES, ServingDtypes

    p.add_argument("--serve-dtype", choices=list(DTYPES), default=flags.field_default(ServingDtypes, "dtype"),
                   help="the dtype the tables will be served in (umec export --dtype): latency budgets and the "
                        "reported latency price each table's lookups at it (default %(default)s)")
    p.add_argument("--serve-table-dtype", metavar="RULES", default=flags.field_default(ServingDtypes, "table_dtypes"),
                   help="per-table dtypes over --serve-dtype, as umec export --table-dtype: NAME=DTYPE or "
                        "largest:K=DTYPE (here K ranks all the model's tables), comma-separated")


def serving_dtypes_from_args(args: argparse.Namespace) -> None:
    """Make ``--serve-dtype`` / ``--serve-table-dtype`` the dtypes the latency resource prices
    (validated: a bad rule is refused naming it)."""
    from umec_torchrec.umec.latency import ServingDtypes, set_serving_dtypes

    set_serving_dtypes(ServingDtypes(args.serve_dtype, args.serve_table_dtype))


def add_budget_args(p: argparse.ArgumentParser) -> None:
    """``--budget`` (repeatable) and the switches of the pruned group sets."""
    g = p.add_argument_group("budgets and groups")
    g.add_argument("--budget", action="append", required=True, metavar="NAME=VALUE",
                   help="resource budget, repeatable: flops=0.3 (fraction of dense), embedding_bytes=0.5, "
                        "lookup_bytes=0.4 (bytes read from the tables per sample), flops=abs:2.5e6, "
                        "embedding_bytes=abs:64MiB")
    g.add_argument("--no-prune-features", action="store_true", help="keep every sparse feature")
    g.add_argument("--no-prune-bottom", action="store_true", help="do not prune bottom-MLP units")
    g.add_argument("--no-prune-top", action="store_true", help="do not prune top-MLP units")
    g.add_argument("--prune-dense", action="store_true", help="let the dense-arch output be pruned like a feature")
    g.add_argument("--features-only", action="store_true", help="feature selection only (the paper's Figure 3)")


def add_stage_args(p: argparse.ArgumentParser) -> None:
    """``--from RUN``, ``--epochs`` / ``--steps`` (default: the source run's), the run and
    checkpoint flags."""
    p.add_argument("--from", dest="from_run", required=True, metavar="RUN", help="the run to start from")
    p.add_argument("--epochs", type=int, default=None, help="epochs (default: the source run's)")
    p.add_argument("--steps", type=int, default=None, help="stop after this many steps")
    flags.add_run_args(p, required=True)
    flags.add_checkpoint_args(p)
    flags.add_trust_arg(p)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compress", help="compress a trained run with UMEC under resource budgets",
                       description="Load a trained run, wrap its optimizer in UMECOptimizer, train under the "
                                   "budgets, hard-prune and write a compressed run (masks.json, metrics.json with "
                                   "the achieved resources, checkpoint with the UMEC state).")
    add_stage_args(p)
    add_budget_args(p)
    flags.add_umec_args(p)
    add_serving_dtype_args(p)
    p.set_defaults(func=cmd_compress)
    p = sub.add_parser("finetune", help="train a compressed run on with its masks fixed",
                       description="By default the physically smaller model of the masks is trained (pruned tables "
                                   "and units are not built); with --finetune-model masked the full model is, with "
                                   "the pruned weights held at exactly zero and the pruned features dropped from "
                                   "the input.")
    add_stage_args(p)
    from umec_torchrec.stages.compress import FINETUNE_MODELS, FINETUNE_STARTS, finetune_run

    defaults = inspect.signature(finetune_run).parameters
    p.add_argument("--start", choices=list(FINETUNE_STARTS), default=defaults["start"].default,
                   help="rewind: the dense run's weights (the compress stage's source) with the masks; continue: "
                        "the weights the UMEC search left (default %(default)s, chosen on validation)")
    p.add_argument("--finetune-model", choices=list(FINETUNE_MODELS), default=defaults["finetune_model"].default,
                   help="compact: train the physically smaller model (kept tables only, narrowed layers; the run "
                        "then holds that model); masked: the full model with the pruned weights held at zero "
                        "(default %(default)s)")
    flags.add_latency_model_arg(p)
    add_serving_dtype_args(p)
    p.set_defaults(func=cmd_finetune)


def cmd_compress(args: argparse.Namespace) -> int:
    from umec_torchrec.distributed import session
    from umec_torchrec.stages.compress import compress_run

    only = args.features_only
    policy = flags.checkpoint_policy_from_args(args)
    ucfg = flags.umec_config_from_args(args)
    serving_dtypes_from_args(args)  # the latency resource prices the tables at their serving dtypes
    from umec_torchrec.io import trusting

    with session(args.backend) as ctx, trusting(args.trust_checkpoint):
        return run_guarded(ctx, lambda: compress_run(
            args.from_run, args.budget, args.out, ctx, umec_config=ucfg,
            epochs=args.epochs, steps=args.steps,
            prune_features=not args.no_prune_features,
            prune_bottom=not (args.no_prune_bottom or only), prune_top=not (args.no_prune_top or only),
            prune_dense=args.prune_dense, force=args.force, progress=not args.no_progress, checkpoints=policy))


def cmd_finetune(args: argparse.Namespace) -> int:
    from umec_torchrec.distributed import session
    from umec_torchrec.io import trusting
    from umec_torchrec.stages.compress import finetune_run

    policy = flags.checkpoint_policy_from_args(args)
    flags.use_latency_model_from_args(args)  # metrics.json reports the predicted latency too
    serving_dtypes_from_args(args)
    with session(args.backend) as ctx, trusting(args.trust_checkpoint):
        return run_guarded(ctx, lambda: finetune_run(args.from_run, args.out, ctx, epochs=args.epochs,
                                                     steps=args.steps, force=args.force,
                                                     progress=not args.no_progress, checkpoints=policy,
                                                     start=args.start, finetune_model=args.finetune_model))
