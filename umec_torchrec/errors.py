"""Errors that every layer may raise: a run whose numbers became non-finite.

Bottom-layer module (imports nothing of the package), so the UMEC core, the training
runtime and the command line share one type: the loop's guard, the checkpoint writer and
the UMEC step raise :class:`NonFiniteError`; ``umec`` reports it as one line, exit 3.
"""

from __future__ import annotations

from typing import Optional

__all__ = ["NonFiniteError"]


class NonFiniteError(ValueError):
    """The training loss, the weights or the UMEC state became NaN/inf; the message names the step.

    Attributes:
        step: 1-based step at which it was detected.
        what: ``"loss"``, ``"weights"`` or ``"UMEC state"``.
        checkpoint: the last good checkpoint directory, or ``None``.

    Example::

        raise NonFiniteError(7, "loss", "nan")
    """

    def __init__(self, step: int, what: str, detail: str = "", checkpoint: Optional[str] = None) -> None:
        self.step, self.what, self.detail, self.checkpoint = step, what, detail, checkpoint
        super().__init__(self._format())

    def _format(self) -> str:
        where = f"last good checkpoint: {self.checkpoint}" if self.checkpoint else "no checkpoint was written"
        d = f" ({self.detail})" if self.detail else ""
        return f"non-finite {self.what} at step {self.step}{d}; the run stopped; {where}; lower the learning rates"

    def with_checkpoint(self, checkpoint: Optional[str]) -> "NonFiniteError":
        return NonFiniteError(self.step, self.what, self.detail, checkpoint)
