"""Console output of the library: rank-0 messages and the silencing of library noise.

Bottom-layer module (imports nothing of the package), so that ``export/``, ``train/`` and
the stages can all print the same way.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from typing import Any, Iterator

__all__ = ["say", "quiet_torchrec", "quiet_libraries"]


def say(ctx: Any, msg: str) -> None:
    """Print ``msg`` on rank 0 (stdout, flushed).

    Args:
        ctx: a :class:`~umec_torchrec.distributed.DistContext` (anything with ``.rank``),
            or ``None`` to print unconditionally.
        msg: the text.

    Example::

        say(ctx, "trained 100 steps")
    """
    if ctx is None or getattr(ctx, "rank", 0) == 0:
        print(msg, flush=True)


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
