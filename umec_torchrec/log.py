"""Console output of the library: rank-0 messages through :mod:`logging` (logger
``umec_torchrec``), the command line's console handler, and the silencing of library noise.

A program that uses the library sees its progress lines by configuring logging (e.g.
``logging.basicConfig(level=logging.INFO)``); warnings reach stderr even without that
(Python's last-resort handler). The ``umec`` command installs :func:`console`, which prints
the messages as bare lines on stdout and the warnings as ``umec: warning: ...`` on stderr.

Bottom-layer module (imports nothing of the package), so that ``export/``, ``train/`` and
the stages can all print the same way.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import warnings
from typing import Any, Iterator

__all__ = ["LOGGER", "say", "warn", "console", "quiet_torchrec", "quiet_libraries"]

#: the library's logger; every module's messages go through it
LOGGER = logging.getLogger("umec_torchrec")


def say(ctx: Any, msg: str) -> None:
    """Log ``msg`` at INFO on rank 0 (the ``umec`` command prints it on stdout).

    Args:
        ctx: a :class:`~umec_torchrec.distributed.DistContext` (anything with ``.rank``),
            or ``None`` to log on every rank.
        msg: the text.

    Example::

        say(ctx, "trained 100 steps")
    """
    if ctx is None or getattr(ctx, "rank", 0) == 0:
        LOGGER.info(msg)


def warn(ctx: Any, msg: str) -> None:
    """Log ``msg`` at WARNING on rank 0 (the ``umec`` command prints ``umec: warning: msg``
    on stderr; without any logging set-up Python prints ``msg`` on stderr).

    Example::

        warn(ctx, "finalize repaired 12 groups: the search ended away from its budget")
    """
    if ctx is None or getattr(ctx, "rank", 0) == 0:
        LOGGER.warning(msg)


class _Console(logging.Handler):
    """INFO and DEBUG as bare lines on the current ``sys.stdout``; WARNING and above as
    ``<prog>: warning: ...`` (``error``, ...) on the current ``sys.stderr``. The streams are
    looked up at each message, so a redirected ``sys.stdout`` is followed."""

    def __init__(self, prog: str) -> None:
        super().__init__()
        self.prog = prog

    def emit(self, record: logging.LogRecord) -> None:
        try:
            msg = self.format(record)
            if record.levelno >= logging.WARNING:
                print(f"{self.prog}: {record.levelname.lower()}: {msg}", file=sys.stderr, flush=True)
            else:
                print(msg, file=sys.stdout, flush=True)
        except Exception:  # noqa: BLE001 - logging's contract: a failing handler does not raise
            self.handleError(record)


def console(prog: str = "umec", debug: bool = False) -> logging.Handler:
    """Print the library's messages on the console (the command line's set-up; idempotent:
    a second call replaces the first one's handler).

    Args:
        prog: the program name in front of warnings.
        debug: also print DEBUG messages.

    Returns:
        the handler installed on :data:`LOGGER`.
    """
    for h in list(LOGGER.handlers):
        if isinstance(h, _Console):
            LOGGER.removeHandler(h)
    handler = _Console(prog)
    LOGGER.addHandler(handler)
    LOGGER.setLevel(logging.DEBUG if debug else logging.INFO)
    LOGGER.propagate = False  # the console shows each message once
    return handler


@contextlib.contextmanager
def quiet_torchrec(enabled: bool = True) -> Iterator[None]:
    """Silence TorchRec's planner/DMP warnings (topology, dry-run estimates, ...) inside
    the ``with`` block; logger levels are restored afterwards.

    Example::

        with quiet_torchrec():
            dmp = DistributedModelParallel(...)
    """
    if not enabled:
        yield
        return
    loggers = [logging.getLogger(), logging.getLogger("torchrec")]
    old = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, lv in zip(loggers, old):
            lg.setLevel(lv)


def quiet_libraries() -> None:
    """Hide TorchRec/FBGEMM/torch warnings that say nothing to a user (process-wide; the
    command line calls it once)."""
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    for name in ("torchrec", "torch.fx._symbolic_trace", "torch.distributed", "fbgemm_gpu"):
        logging.getLogger(name).setLevel(logging.ERROR)
