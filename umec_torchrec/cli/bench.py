"""Command group ``bench``; its subcommands come from :data:`umec_torchrec.bench.BENCH_MODULES`
(each bench module has ``add_parser(bench_subparsers)``)."""

from __future__ import annotations

import argparse
import importlib

from umec_torchrec.bench import BENCH_MODULES

__all__ = ["add_parser"]


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help=f"benchmarks ({', '.join(m.rsplit('.', 1)[1] for m in BENCH_MODULES)})",
                       description="Benchmarks; no pass/fail, they print figures.")
    bsub = p.add_subparsers(dest="bench", metavar="BENCH")
    bsub.required = True
    for path in BENCH_MODULES:
        importlib.import_module(path).add_parser(bsub)
