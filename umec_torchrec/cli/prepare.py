"""Command ``prepare --data SPEC --out DATA_DIR [data options] [--chunk-rows N] [--force]``
(thin layer over :func:`umec_torchrec.data.prepared.prepare_data`)."""

from __future__ import annotations

import argparse
import inspect
import json

from umec_torchrec.cli import flags

__all__ = ["add_parser", "cmd_prepare"]


def add_parser(sub: argparse._SubParsersAction) -> None:
    from umec_torchrec.data.prepared import prepare_data

    params = inspect.signature(prepare_data).parameters
    p = sub.add_parser(
        "prepare", help="encode a data source once into a directory that every stage memory-maps",
        description="Read SPEC once, in chunks (bounded memory), build its vocabulary and split as every stage "
                    "would, and write DATA_DIR: dense, ids (the narrowest integer type of each table) and labels "
                    "of each split as .npy files, the vocabulary, the split and manifest.json (written last), "
                    "atomically. Then use --data prepared:DATA_DIR in train, compress, finetune, evaluate and "
                    "bench.")
    flags.add_data_args(p, default=None)
    p.add_argument("--out", required=True, metavar="DATA_DIR", help="the directory to write")
    p.add_argument("--chunk-rows", type=int, default=params["chunk_rows"].default,
                   help="rows read and encoded at a time: bounds the memory (default %(default)s)")
    p.add_argument("--workers", type=int, default=params["workers"].default,
                   help="processes parsing a Criteo TSV's lines (default %(default)s: this one)")
    p.add_argument("--force", action="store_true", help="replace an existing prepared directory DATA_DIR")
    p.add_argument("--json", action="store_true", help="print the manifest as JSON")
    p.set_defaults(func=cmd_prepare)


def cmd_prepare(args: argparse.Namespace) -> int:
    from umec_torchrec.data.prepared import prepare_data

    if not args.data:
        raise ValueError("prepare needs --data SPEC (e.g. criteo:day_0.tsv.gz)")
    if args.chunk_rows < 1 or args.workers < 1:
        raise ValueError(f"--chunk-rows and --workers must be >= 1, got {args.chunk_rows} and {args.workers}")
    import sys

    man = prepare_data(args.data, args.out, flags.data_options_from_args(args), chunk_rows=args.chunk_rows,
                       force=args.force, workers=args.workers,
                       progress=lambda msg: print(f"prepare: {msg}", file=sys.stderr, flush=True))
    if args.json:
        print(json.dumps({k: v for k, v in man.items() if k != "files"}, indent=2))
        return 0
    r = man["rows"]
    print(f"prepared {r['total']:,} rows of {man['source']} into {args.out}: train {r['train']:,}, "
          f"valid {r['valid']:,}, test {r['test']:,}")
    print(f"  {len(man['feature_names'])} sparse features ({sum(man['table_sizes']):,} table rows, id types "
          f"{', '.join(sorted(set(man['id_dtypes'])))}), {len(man['dense_names'])} dense; "
          f"{man['bad_lines']} bad lines (skipped)")
    for f, mh in (man.get("multi_hot") or {}).items():
        print(f"  multi-hot {f}: {mh['ids_per_sample']:.2f} ids per training row")
    print(f"  use it with --data prepared:{args.out}")
    return 0
