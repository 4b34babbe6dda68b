"""``umec``: the command line, a thin layer over the library (the root command).

Commands: ``train``, ``evaluate``, ``demo`` (:mod:`umec_torchrec.cli.train`); ``compress``,
``finetune`` (:mod:`umec_torchrec.cli.compress`); ``export`` (:mod:`umec_torchrec.cli.export`);
``bench ...`` (:mod:`umec_torchrec.cli.bench`). Each module of :data:`COMMAND_MODULES` has
``add_parser(subparsers)`` that adds one or more subparsers and sets ``func=handler``
(``handler(args) -> int``) on them; to add a command, write such a module and append its
path here. Shared flag groups, whose defaults are read from the library's dataclasses, are
in :mod:`umec_torchrec.cli.flags`.

Works the same as ``umec ...``, ``python -m umec_torchrec ...``, ``python -m umec_torchrec.cli ...``
and under ``torchrun --nproc_per_node N -m umec_torchrec.cli ...``.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import List, Optional

from umec_torchrec.cli.errors import PROG, UserError, user_error_types
from umec_torchrec.log import quiet_libraries

__all__ = ["COMMAND_MODULES", "PROG", "UserError", "build_parser", "main"]

COMMAND_MODULES: List[str] = [
    "umec_torchrec.cli.train",  # train, evaluate, demo
    "umec_torchrec.cli.compress",  # compress, finetune
    "umec_torchrec.cli.bench",  # bench (subcommands: see umec_torchrec.bench.BENCH_MODULES)
    "umec_torchrec.cli.export",  # export
]


def build_parser() -> argparse.ArgumentParser:
    """The full parser: one subparser (or more) per module of :data:`COMMAND_MODULES`."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="UMEC compression for TorchRec DLRM models: train, evaluate, compress, finetune, export, "
                    "demo, bench.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for path in COMMAND_MODULES:
        importlib.import_module(path).add_parser(sub)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of the ``umec`` console script; returns the exit status (2 for a user
    error, printed as one line)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    quiet_libraries()
    try:
        return int(args.func(args) or 0)
    except user_error_types() as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"{PROG}: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
