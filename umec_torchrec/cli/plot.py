"""Command ``plot RUN [--out PNG]``: the loss and each resource against its budget, from
``RUN/history.jsonl`` (thin layer over :func:`~umec_torchrec.history_plot.plot_history`)."""

from __future__ import annotations

import argparse

__all__ = ["add_parser", "cmd_plot"]


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "plot", help="draw a run's history (loss, resources against budgets) into a PNG",
        description="Read RUN/history.jsonl (written by umec compress at each log step, also while the job runs) "
                    "and draw the training loss and each budgeted resource against its budget into a PNG.")
    p.add_argument("run", metavar="RUN", help="run directory (or its history.jsonl)")
    p.add_argument("--out", default=None, metavar="PNG", help="the picture to write (default RUN/history.png)")
    p.set_defaults(func=cmd_plot)


def cmd_plot(args: argparse.Namespace) -> int:
    from umec_torchrec.cli.errors import UserError
    from umec_torchrec.history_plot import plot_history

    try:
        out = plot_history(args.run, args.out)
    except ImportError as e:
        raise UserError(str(e)) from None
    print(f"wrote {out}")
    return 0
