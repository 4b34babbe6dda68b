"""Command ``export --from RUN --out DIR [--dtype D] [--table-dtype RULES] [--inputs FORM] [--force]``
(thin layer over :func:`export_run`)."""

from __future__ import annotations

import argparse
import inspect
import json
import sys

__all__ = ["add_parser", "cmd_export"]


def add_parser(sub: argparse._SubParsersAction) -> None:
    from umec_torchrec.export.exporter import export_run
    from umec_torchrec.export.program import INPUTS
    from umec_torchrec.export.served_tables import DTYPES

    defaults = {k: v.default for k, v in inspect.signature(export_run).parameters.items()}
    p = sub.add_parser(
        "export", help="write the compact model of a (compressed) run",
        description="Build the compact TorchRec model of a run (kept tables only, pruned units removed) from its "
                    "checkpoint (written by any number of ranks; pruned tables are never read) and write DIR/model.pt, "
                    "DIR/program.pt2 (torch.export, dynamic batch; tables in the dtypes asked for) and "
                    "DIR/manifest.json, atomically.")
    p.add_argument("--from", dest="run", required=True, metavar="RUN",
                   help="run directory (config.json, checkpoint/, masks.json)")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory")
    p.add_argument("--dtype", choices=DTYPES, default=defaults["dtype"],
                   help="the program's table dtype (TorchRec inference quantization: row-wise int8/int4 with an "
                        "fp16 scale and bias per row, or fp16); dense layers stay fp32 (default %(default)s)")
    p.add_argument("--table-dtype", dest="table_dtypes", default=defaults["table_dtypes"], metavar="RULES",
                   help="per-table dtypes over --dtype, comma-separated: NAME=DTYPE (a table) or largest:K=DTYPE "
                        "(the K largest kept tables); a named table wins over largest:K. "
                        "Example: --dtype int8 --table-dtype largest:3=int4,t_C7=fp32")
    p.add_argument("--inputs", choices=INPUTS + ("auto",), default=defaults["inputs"],
                   help="the program's inputs: ids (dense, ids [B, F]: one id per feature), jagged (dense, values "
                        "[N], lengths [F, B]: multi-hot fields, pooled as each table says), auto: ids unless the "
                        "check rows are multi-hot (default %(default)s)")
    p.add_argument("--int8", action="store_true",
                   help="deprecated alias of --dtype int8 (also writes TorchRec's int8 state dict, model_int8.pt)")
    p.add_argument("--align", type=int, default=defaults["align"], metavar="N",
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
    from umec_torchrec.export.table_dtypes import parse_rules

    if args.align < 1:
        raise ValueError(f"--align must be >= 1, got {args.align}")
    parse_rules(args.table_dtypes)  # a bad rule fails before anything is read
    if args.int8:
        if args.dtype not in ("fp32", "int8") or args.table_dtypes:
            raise ValueError("--int8 is the old name of --dtype int8; give --dtype / --table-dtype instead")
        print("umec export: --int8 is deprecated, use --dtype int8", file=sys.stderr)
    from umec_torchrec.cli.flags import use_latency_model_from_args
    from umec_torchrec.io import trusting

    use_latency_model_from_args(args)  # the manifest then reports predicted latency
    with trusting(args.trust_checkpoint):
        man = export_run(args.run, args.out, int8=args.int8, force=args.force, align=args.align, dtype=args.dtype,
                         table_dtypes=args.table_dtypes, inputs=args.inputs)
    if args.json:
        print(json.dumps(man, indent=2))
    else:
        print("\n".join(summary_lines(man, args.out)))
    return 0
