"""``umec``: the command line, a thin layer over the library (the root command).

Commands: ``train``, ``evaluate``, ``demo`` (:mod:`umec_torchrec.cli.train`); ``compress``,
``finetune`` (:mod:`umec_torchrec.cli.compress`); ``export`` (:mod:`umec_torchrec.cli.export`);
``bench ...`` (:mod:`umec_torchrec.cli.bench`). Each module of :data:`COMMAND_MODULES` has
``add_parser(subparsers)`` that adds one or more subparsers and sets ``func=handler``
(``handler(args) -> int``) on them; to add a command, write such a module and append its
path here. Shared flag groups, whose defaults are read from the library's dataclasses, are
in :mod:`umec_torchrec.cli.flags`.

Works the same as ``umec ...``, ``python -m umec_torchrec ...``, ``python -m umec_torchrec.cli ...``
and under ``torchrun --nproc_per_node N -m umec_torchrec.cli ...``. ``umec --version`` prints the
version; ``--debug`` (before or after the command, or ``UMEC_DEBUG=1``) prints the traceback of an
error above its one line, and the library's DEBUG messages.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback
from typing import List, Optional

from umec_torchrec import __version__
from umec_torchrec.cli.errors import PROG, UserError, report, user_error_types
from umec_torchrec.log import console, quiet_libraries

__all__ = ["COMMAND_MODULES", "PROG", "UserError", "build_parser", "main", "EXIT_NO_SPACE"]

#: exit status when the device filled up while writing (one line names the file)
EXIT_NO_SPACE = 1

COMMAND_MODULES: List[str] = [
    "umec_torchrec.cli.train",  # train, evaluate, demo
    "umec_torchrec.cli.compress",  # compress, finetune
    "umec_torchrec.cli.bench",  # bench (subcommands: see umec_torchrec.bench.BENCH_MODULES)
    "umec_torchrec.cli.export",  # export
    "umec_torchrec.cli.calibrate",  # calibrate
    "umec_torchrec.cli.prepare",  # prepare
    "umec_torchrec.cli.plot",  # plot
]

#: environment variable that turns on ``--debug`` (e.g. set by the TorchX components' ``--debug``)
DEBUG_ENV = "UMEC_DEBUG"


class Parser(argparse.ArgumentParser):
    """``argparse`` with its usage error reported through :func:`~umec_torchrec.cli.errors.report`
    (the same usage and line, exit status 2, but once per torchrun job); subparsers are of
    this class too."""

    def error(self, message: str):
        """argparse's hook for a usage error: the usage and one line, then exit status 2."""
        report(f"{self.prog}: error: {message}", before=self.format_usage())
        sys.exit(2)


def build_parser() -> argparse.ArgumentParser:
    """The full parser: one subparser (or more) per module of :data:`COMMAND_MODULES`."""
    parser = Parser(
        prog=PROG,
        description="UMEC compression for TorchRec DLRM models: train, evaluate, compress, finetune, export, "
                    "demo, bench.",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    _add_debug(parser, False)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for path in COMMAND_MODULES:
        importlib.import_module(path).add_parser(sub)
    for p in _subcommands(parser):
        _add_debug(p, argparse.SUPPRESS)  # absent: the root parser's value stands
    return parser


def _subcommands(parser: argparse.ArgumentParser) -> List[argparse.ArgumentParser]:
    """Every (nested) subparser of ``parser``."""
    out: List[argparse.ArgumentParser] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for p in action.choices.values():
                out += [p, *_subcommands(p)]
    return out


def _add_debug(p: argparse.ArgumentParser, default: object) -> None:
    p.add_argument("--debug", action="store_true", default=default,
                   help=f"print the traceback of an error and DEBUG messages (also {DEBUG_ENV}=1)")


def _debug_env() -> bool:
    return os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no")


def _build_parser_deferring_sigint() -> Optional[argparse.ArgumentParser]:
    """:func:`build_parser` (it imports torch and torchrec) with Ctrl-C held back until the
    imports are done, so no library sees a ``KeyboardInterrupt`` half-way through an import;
    ``None`` when Ctrl-C came."""
    import signal
    import threading

    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler):  # e.g. ignored: keep it so
        return build_parser()
    got: List[int] = []
    prev = signal.signal(signal.SIGINT, lambda signum, frame: got.append(signum))
    try:
        parser = build_parser()
    finally:
        signal.signal(signal.SIGINT, prev)
    return None if got else parser


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of the ``umec`` console script; returns the exit status (2 for a user
    error, 130 for Ctrl-C, :data:`EXIT_NO_SPACE` for a full disk, each printed as one line;
    under torchrun by the first failing worker only, see :func:`~umec_torchrec.cli.errors.report`)."""
    debug = _debug_env()
    try:
        parser = _build_parser_deferring_sigint()
        if parser is None:
            report(f"{PROG}: interrupted")
            return 130
        args = parser.parse_args(argv)
        debug = debug or bool(getattr(args, "debug", False))
        console(PROG, debug=debug)
        if not debug:
            quiet_libraries()
        return int(args.func(args) or 0)
    except KeyboardInterrupt:  # first: the next clause imports the data package
        report(f"{PROG}: interrupted")
        return 130
    except user_error_types() as e:
        if debug:  # an internal error can look like a user's: show where it came from
            traceback.print_exc(file=sys.stderr)
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        report(f"{PROG}: error: {msg}")
        return 2
    except OSError as e:
        from umec_torchrec.io import DiskFull, disk_full

        if not disk_full(e):
            raise
        path = e.filename if isinstance(e, DiskFull) else (e.filename or "a file")
        report(f"{PROG}: error: no space left on device while writing {path}")
        return EXIT_NO_SPACE
