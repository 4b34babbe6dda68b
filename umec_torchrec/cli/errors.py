"""The program name and what counts as a user's mistake (one line, exit status 2)."""

from __future__ import annotations

from typing import Tuple

__all__ = ["PROG", "UserError", "user_error_types"]

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
