"""Running a training stage from the command line: stop signals and divergence as exit codes."""

from __future__ import annotations

import sys
from typing import Any, Callable

from umec_torchrec.cli.errors import PROG

__all__ = ["EXIT_DIVERGED", "run_guarded"]

#: exit status when the loss or the weights became non-finite (the run stopped, see README)
EXIT_DIVERGED = 3


def run_guarded(ctx: Any, fn: Callable[[], Any]) -> int:
    """Run a training stage with SIGTERM/SIGINT handlers installed (in the training loop:
    stop after the current step, checkpoint; before or after it: stop at once; exit
    ``128 + signal`` either way) and non-finite losses or UMEC state reported as one line
    (exit :data:`EXIT_DIVERGED`; under torchrun also in each rank's TorchElastic error file).
    Messages come from rank 0 only."""
    from umec_torchrec.train.guard import NonFiniteError, RunInterrupted, StopRequested, stop_on_signals

    try:
        with stop_on_signals():
            fn()
    except (RunInterrupted, StopRequested) as e:
        if ctx.rank == 0:
            print(f"{PROG}: {e}", file=sys.stderr, flush=True)
        return e.exit_code
    except NonFiniteError as e:
        from umec_torchrec.distributed import record_error_file

        line = f"{PROG}: error: {e}"
        record_error_file(line)  # under torchrun: every rank's root cause in its failure summary
        if ctx.rank == 0:
            print(line, file=sys.stderr, flush=True)
        return EXIT_DIVERGED
    return 0
