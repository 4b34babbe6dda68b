"""Command ``export --from RUN --out DIR [--int8] [--force]`` (thin layer over :func:`export_run`)."""

from __future__ import annotations

import argparse
import inspect
import json

__all__ = ["add_parser", "cmd_export"]


def add_parser(sub: argparse._SubParsersAction) -> None:
    from umec_torchrec.export.exporter import export_run

    align = inspect.signature(export_run).parameters["align"].default
    p = sub.add_parser(
        "export", help="write the compact model of a (compressed) run",
        description="Build the compact TorchRec model of a run (kept tables only, pruned units removed) from its "
                    "checkpoint (written by any number of ranks; pruned tables are never read) and write DIR/model.pt, "
                    "DIR/program.pt2 (torch.export, dynamic batch) and DIR/manifest.json, atomically.")
    p.add_argument("--from", dest="run", required=True, metavar="RUN",
                   help="run directory (config.json, checkpoint/, masks.json)")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory")
    p.add_argument("--int8", action="store_true",
                   help="also write row-wise int8 tables (TorchRec inference quantization)")
    p.add_argument("--align", type=int, default=align, metavar="N",
                   help="pad the program's MLP hidden widths to a multiple of N with zero units: same logits, "
                        "faster CPU GEMMs (default %(default)s; 16 = the AVX-512 float vector; 1 = exact widths)")
    p.add_argument("--force", action="store_true", help="replace an existing export in DIR")
    p.add_argument("--json", action="store_true", help="print the manifest as JSON")
    from umec_torchrec.cli.flags import add_latency_model_arg, add_trust_arg

    add_trust_arg(p)
    add_latency_model_arg(p)
    p.set_defaults(func=cmd_export)


def cmd_export(args: argparse.Namespace) -> int:
    from umec_torchrec.export.exporter import export_run
    from umec_torchrec.export.manifest import summary_lines

    if args.align < 1:
        raise ValueError(f"--align must be >= 1, got {args.align}")
    from umec_torchrec.cli.flags import use_latency_model_from_args
    from umec_torchrec.io import trusting

    use_latency_model_from_args(args)  # the manifest then reports predicted latency
    with trusting(args.trust_checkpoint):
        man = export_run(args.run, args.out, int8=args.int8, force=args.force, align=args.align)
    if args.json:
        print(json.dumps(man, indent=2))
    else:
        print("\n".join(summary_lines(man, args.out)))
    return 0
