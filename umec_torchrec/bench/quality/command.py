"""``umec bench quality``: the parser and the command. Every default is read from
:class:`~umec_torchrec.bench.quality.config.QualityConfig` (the bench's own settings) and, for
the UMEC hyper-parameters, from :class:`~umec_torchrec.umec.optimizer.UMECConfig` through the
shared flag group :func:`umec_torchrec.cli.flags.add_umec_args` (the flags of ``umec compress``)."""

from __future__ import annotations

import argparse
import dataclasses
from typing import List

from umec_torchrec.bench.quality.config import QualityConfig
from umec_torchrec.bench.quality.methods import METHODS
from umec_torchrec.bench.quality.runner import run_quality_bench

__all__ = ["add_parser", "config_from_args", "cmd_bench_quality"]


def _floats(text: str) -> List[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _names(text: str) -> List[str]:
    out = [x.strip() for x in text.split(",") if x.strip()]
    bad = [x for x in out if x not in METHODS]
    if bad:
        raise argparse.ArgumentTypeError(f"unknown method(s) {bad}; known: {', '.join(METHODS)}")
    return out


def _csv(xs) -> str:
    return ",".join(f"{x:g}" if isinstance(x, float) else str(x) for x in xs)


def add_parser(bsub: argparse._SubParsersAction) -> None:
    from umec_torchrec.cli.flags import add_common_args, add_umec_args, int_list

    d = QualityConfig()
    p = bsub.add_parser("quality", help="UMEC against baselines (uniform, magnitude, group lasso, random) on real data",
                        description="UMEC against the baselines on real data, side by side in one run. "
                                    "Writes quality.csv, quality.md, quality.png; --suite runs the fixed "
                                    "quality suite and writes suite.md.")
    p.add_argument("--suite", action="store_true", help="run the fixed quality suite (real and generated data) "
                                                         "into --out/suite.md; the other data flags are ignored")
    p.add_argument("--quick", action="store_true", help="with --suite: the CI-sized subset on generated data")
    p.add_argument("--select-scores", action="store_true",
                   help="with --suite: compare UMEC's score kinds on the validation split (umec_auto over every "
                        "kind) and write --out/selection.md; how the default score is chosen")
    p.add_argument("--data-root", default="../shared/data",
                   help="with --suite: folder of the real data files (missing: those items are skipped)")
    p.add_argument("--data", default=d.data, metavar="SPEC", help="data spec (default %(default)s)")
    p.add_argument("--budgets", type=_floats, default=d.budgets, help=f"relative budgets (default {_csv(d.budgets)})")
    p.add_argument("--field-shares", type=_floats, default=d.field_shares,
                   help="more budgets, each keeping this share of the features (e.g. 0.6,0.3,0.15)")
    p.add_argument("--seeds", type=int, default=d.seeds, help="number of seeds (default %(default)s)")
    p.add_argument("--methods", type=_names, default=d.methods,
                   help=f"default {_csv(d.methods)}; known: {', '.join(METHODS)}")
    p.add_argument("--features-only", action="store_true", default=d.features_only,
                   help="prune features only (the paper's Figure 3)")
    p.add_argument("--resource", choices=["flops", "embedding_bytes"], default=d.resource, help="budgeted resource")
    p.add_argument("--embedding-dim", type=int, default=d.model["embedding_dim"])
    p.add_argument("--bottom", type=int_list, default=d.model["bottom"], help=f"default {_csv(d.model['bottom'])}")
    p.add_argument("--top", type=int_list, default=d.model["top"], help=f"default {_csv(d.model['top'])}")
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--dense-epochs", type=int, default=d.dense_epochs)
    p.add_argument("--compress-epochs", type=int, default=d.compress_epochs)
    p.add_argument("--finetune-epochs", type=int, default=d.finetune_epochs)
    p.add_argument("--emb-lr", type=float, default=d.emb_lr)
    p.add_argument("--dense-lr", type=float, default=d.dense_lr)
    p.add_argument("--post-lr-factor", type=float, default=d.post_lr_factor,
                   help="learning-rate factor after the dense model (default %(default)s)")
    add_umec_args(p)
    p.add_argument("--auto-scores", type=lambda t: [x.strip() for x in t.split(",") if x.strip()],
                   default=d.auto_scores, help=f"score kinds umec_auto tries (default {_csv(d.auto_scores)})")
    p.add_argument("--lasso-lam", type=float, default=d.lasso_lam, help="group-lasso strength (default %(default)s)")
    p.add_argument("--min-count", type=int, default=d.min_count,
                   help="vocabulary min count (default %(default)s; rarer ids -> OOV)")
    p.add_argument("--test-fraction", type=float, default=d.test_fraction)
    p.add_argument("--valid-fraction", type=float, default=d.valid_fraction,
                   help="validation share; what UMEC chooses is chosen there (default %(default)s)")
    p.add_argument("--retrain-from-scratch", action="store_true", default=d.retrain_from_scratch,
                   help="ERASE protocol: after selection every method retrains the kept architecture from the "
                        "dense model's seeded init for the dense epochs, instead of fine-tuning its weights")
    p.add_argument("--split-valid", action="store_true", default=d.split_valid,
                   help="scores read the validation split's first half, choices its second half")
    p.add_argument("--out", default="bench-quality", help="output directory (default %(default)s)")
    add_common_args(p)
    p.set_defaults(func=cmd_bench_quality)


def config_from_args(args: argparse.Namespace) -> QualityConfig:
    """The :class:`QualityConfig` of the parsed flags."""
    from umec_torchrec.cli.flags import umec_config_from_args

    return QualityConfig(
        data=args.data, budgets=list(args.budgets), field_shares=list(args.field_shares), seeds=args.seeds,
        methods=list(args.methods), features_only=args.features_only, resource=args.resource,
        model={"kind": "cat", "embedding_dim": args.embedding_dim, "bottom": list(args.bottom), "top": list(args.top)},
        batch_size=args.batch_size, dense_epochs=args.dense_epochs, compress_epochs=args.compress_epochs,
        finetune_epochs=args.finetune_epochs, emb_lr=args.emb_lr, dense_lr=args.dense_lr,
        post_lr_factor=args.post_lr_factor, umec=dataclasses.asdict(umec_config_from_args(args)),
        auto_scores=list(args.auto_scores), lasso_lam=args.lasso_lam, min_count=args.min_count,
        test_fraction=args.test_fraction, valid_fraction=args.valid_fraction,
        retrain_from_scratch=args.retrain_from_scratch, split_valid=args.split_valid)


def cmd_bench_quality(args: argparse.Namespace) -> int:
    from umec_torchrec.distributed import session

    def log(m: str) -> None:
        print(m, flush=True)

    if (args.quick or args.select_scores) and not args.suite:
        raise ValueError("--quick and --select-scores go with --suite")
    with session(args.backend) as ctx:
        if args.suite:
            from umec_torchrec.bench.quality.suite import run_suite

            run_suite(args.out, quick=args.quick, data_root=args.data_root, ctx=ctx, log=log,
                      select_scores=args.select_scores)
        else:
            run_quality_bench(config_from_args(args), args.out, ctx, log=log)
    return 0
