"""An MLP for serving whose hidden widths are zero-padded to a multiple of the SIMD width.

Pruning leaves widths such as 156 or 78. CPU GEMM kernels (MKL, oneDNN) run markedly slower
when the output width is not a multiple of the vector width (16 floats with AVX-512), although
a wider output is more work (timings: ``docs/design.md``). :class:`AlignedMLP` pads each hidden
layer with zero units, which changes nothing in the result:

.. math::
    h_i = \\mathrm{relu}(h_{i-1} W_i^T + b_i), \\qquad
    W_i' = \\begin{bmatrix} W_i & 0 \\\\ 0 & 0 \\end{bmatrix},\\; b_i' = \\begin{bmatrix} b_i \\\\ 0 \\end{bmatrix}

A padding unit computes ``relu(0) = 0`` and the next layer's weight column for it is 0, so
the padded chain computes exactly the function of the unpadded one. Only hidden widths are
padded: the chain's input and output widths are unchanged.
"""

from __future__ import annotations

from typing import List, Sequence, Tuple

import torch
from torch import nn
from torch.nn import functional as F


def check_align(align: int) -> int:
    """``align`` if it is a valid alignment (>= 1), else ``ValueError``."""
    if align < 1:
        raise ValueError(f"align must be >= 1, got {align}")
    return align


def aligned_width(width: int, align: int) -> int:
    """``width`` rounded up to a multiple of ``align`` (``align`` >= 1)."""
    return -(-width // check_align(align)) * align


class AlignedMLP(nn.Module):
    """``y = act_n(... act_1(x W_1^T + b_1) ... W_n^T + b_n)`` with hidden widths padded to ``align``.

    The weights are copies of the given Linear layers (zero-padded); ``act_i`` is ReLU where
    ``relu[i]`` is true and the identity otherwise. ReLU runs in place on the fresh GEMM output.

    Args:
        linears: the chain's Linear layers, input first (each with a bias).
        relu: one flag per layer: apply ReLU after it.
        align: pad every hidden width (output of all but the last layer) up to a multiple of
            this; 1 keeps the widths.

    Example::

        mlp = AlignedMLP([nn.Linear(13, 156), nn.Linear(156, 16)], relu=[True, True], align=16)
        mlp.widths  # [160, 16]
    """

    def __init__(self, linears: Sequence[nn.Linear], relu: Sequence[bool], align: int = 16) -> None:
        super().__init__()
        if len(linears) != len(relu) or not linears:
            raise ValueError(f"need one relu flag per Linear, got {len(linears)} layers and {len(relu)} flags")
        weights: List[torch.Tensor] = []
        biases: List[torch.Tensor] = []
        pad_in = 0  # zero input columns added by the previous layer's padding
        for i, lin in enumerate(linears):
            if lin.bias is None:
                raise ValueError(f"layer {i}: AlignedMLP needs Linear layers with a bias")
            w, b = lin.weight.detach(), lin.bias.detach()
            last = i == len(linears) - 1
            pad_out = 0 if last else aligned_width(w.shape[0], align) - w.shape[0]
            weights.append(F.pad(w, (0, pad_in, 0, pad_out)).contiguous())
            biases.append(F.pad(b, (0, pad_out)).contiguous())
            pad_in = pad_out
        self.weights = nn.ParameterList([nn.Parameter(w, requires_grad=False) for w in weights])
        self.biases = nn.ParameterList([nn.Parameter(b, requires_grad=False) for b in biases])
        self.relu: Tuple[bool, ...] = tuple(bool(r) for r in relu)

    @property
    def widths(self) -> List[int]:
        """Output width of each layer as served (hidden ones padded)."""
        return [int(w.shape[0]) for w in self.weights]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for w, b, r in zip(self.weights, self.biases, self.relu):
            x = torch.addmm(b, x, w.t())
            if r:
                x = x.relu_()
        return x


__all__ = ["AlignedMLP", "aligned_width", "check_align"]
