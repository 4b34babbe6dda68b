"""Command ``calibrate --out LATENCY.json [--batch B] [--threads N] [--model-like RUN] [--dtypes LIST] [--quick]``
(thin layer over :func:`umec_torchrec.export.calibrate.calibrate`)."""

from __future__ import annotations

import argparse
import os

from umec_torchrec.cli import flags

__all__ = ["add_parser", "cmd_calibrate"]


def add_parser(sub: argparse._SubParsersAction) -> None:
    from umec_torchrec.export.calibrate import CalibrationOptions
    from umec_torchrec.models import DEFAULT_MODEL_KIND, MODEL_KINDS

    def d(name: str) -> object:
        return flags.field_default(CalibrationOptions, name)

    p = sub.add_parser(
        "calibrate", help="measure this machine's serving costs for latency budgets (writes LATENCY.json)",
        description="Time the pieces of the exported serving program on this machine: each Linear over a grid of "
                    "aligned (in, out) widths, one field's lookup per table size class and dtype, the interaction per "
                    "number of kept fields, and the fixed per-call overhead (from whole exported programs). The JSON "
                    "table is the latency model of --budget latency=... (--latency-model) and records its conditions "
                    "(threads, batch, library versions, CPU).")
    p.add_argument("--out", required=True, metavar="LATENCY.json", help="the table to write")
    p.add_argument("--batch", type=int, default=d("batch"),
                   help="rows per call: the serving batch size (default %(default)s)")
    p.add_argument("--threads", type=int, default=d("threads"),
                   help="intra-op threads while measuring (default: the current number)")
    p.add_argument("--model-like", metavar="RUN", default=None,
                   help="calibrate for the model of this run (kind, D, widths, table sizes); default: the Kaggle-size "
                        "DLRM of --model")
    p.add_argument("--model", choices=list(MODEL_KINDS), default=DEFAULT_MODEL_KIND,
                   help="interaction of the Kaggle-size DLRM without --model-like (default %(default)s)")
    p.add_argument("--quick", action="store_true", default=d("quick"),
                   help="a few widths, size classes and repetitions (seconds; for tests)")
    p.add_argument("--reps", type=int, default=d("reps"), help="repetitions per measurement (default: 7, quick 2)")
    p.add_argument("--align", type=int, default=d("align"),
                   help="hidden-width alignment of the served program, as umec export --align (default %(default)s)")
    p.add_argument("--clock", choices=["wall", "cpu"], default=d("clock"),
                   help="wall time, or the thread's CPU time (with --threads 1: not inflated by other processes on "
                        "a loaded machine; bench with --clock cpu) (default %(default)s)")
    p.add_argument("--dtypes", default=",".join(d("dtypes")), metavar="LIST",
                   help="comma-separated table dtypes whose lookups are timed, each with the lookup code the "
                        "exported program runs for it (umec export --dtype names; fp32 always) (default %(default)s)")
    p.add_argument("--force", action="store_true", help="replace an existing LATENCY.json")
    p.set_defaults(func=cmd_calibrate)


def cmd_calibrate(args: argparse.Namespace) -> int:
    from umec_torchrec.export.calibrate import CalibrationOptions, calibrate, config_prediction, save_latency_table

    if os.path.exists(args.out) and not args.force:
        raise FileExistsError(f"{args.out}: exists; pass --force to replace it")
    dtypes = tuple(x.strip() for x in args.dtypes.split(",") if x.strip())
    opts = CalibrationOptions(batch=args.batch, threads=args.threads, reps=args.reps, quick=args.quick,
                              align=args.align, clock=args.clock, dtypes=dtypes)
    try:
        opts.validate()
    except ValueError as e:
        raise ValueError(f"--{str(e)}" if str(e).startswith("dtypes") else str(e)) from None
    if args.model_like:
        from umec_torchrec.runs import Run

        cfg = Run.open(args.model_like).model_config()
        like = os.path.abspath(args.model_like)
    else:
        from umec_torchrec.bench.kaggle import kaggle_model_config

        cfg = kaggle_model_config(kind=args.model)
        like = f"kaggle-size {args.model} DLRM"
    table = calibrate(cfg, opts, model_like=like, log=lambda s: print(s, flush=True))
    save_latency_table(args.out, table)
    pred = config_prediction(table, cfg)
    print(f"wrote {args.out} ({table.conditions['seconds_taken']} s): the dense program of {like} is predicted at "
          f"{1e3 * pred['total']:.3f} ms per batch of {table.batch} (linear {1e3 * pred['linear']:.3f}, lookups "
          f"{1e3 * pred['lookup']:.3f}, interaction {1e3 * pred['interaction']:.3f}, overhead "
          f"{1e3 * pred['overhead']:.3f} ms)")
    for dt in dtypes:
        if dt != "fp32":
            q = config_prediction(table, cfg, dt)
            print(f"  with {dt} tables: {1e3 * q['total']:.3f} ms (lookups {1e3 * q['lookup']:.3f} ms)")
    return 0
