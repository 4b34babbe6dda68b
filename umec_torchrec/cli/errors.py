"""The program name and what counts as a user's mistake (one line, exit status 2), and how
that one line is reported (once per job under torchrun)."""

from __future__ import annotations

import os
import sys
from typing import Optional, Tuple

__all__ = ["PROG", "UserError", "user_error_types", "report"]

PROG = "umec"


class UserError(Exception):
    """An error caused by the user's input: printed as one line, exit status 2."""


def user_error_types() -> Tuple[type, ...]:
    """The exception types :func:`umec_torchrec.cli.main` reports as a user error."""
    types: list = [UserError, ValueError, FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError]
    try:
        from umec_torchrec.data import DataError

        types.append(DataError)
    except ImportError:  # pragma: no cover
        pass
    return tuple(types)


def report(line: str, before: Optional[str] = None) -> None:
    """Print the one line of a failed command on stderr (``before``, e.g. argparse's usage,
    above it).

    Under torchrun each failing worker records ``line`` in its TorchElastic error file
    (torchrun's failure summary shows it as the root cause) and only the first failing
    worker of the job prints it; the others stay quiet
    (:func:`umec_torchrec.distributed.first_to_fail`).

    Args:
        line: the message, e.g. ``"umec: error: --embedding-dim must be >= 1, got -4"``.
        before: text printed just before it, by the same worker.
    """
    if "TORCHELASTIC_RUN_ID" in os.environ or "TORCHELASTIC_ERROR_FILE" in os.environ:
        try:
            from umec_torchrec.distributed import first_to_fail, record_error_file

            record_error_file(line)
            if not first_to_fail():
                return
        except Exception:  # noqa: BLE001 - e.g. torch half-imported after a Ctrl-C: print on every rank
            pass
    if before:
        sys.stderr.write(before)
    print(line, file=sys.stderr, flush=True)
