"""Mean squares of the inputs that feature groups multiply, for activation-weighted scores.

A feature's over-arch columns ``W_k`` act on its part ``x_k`` of the over-arch input, and
the embedding that produces ``x_k`` is not penalised: training can shrink ``W_k`` and grow
the table by the same factor, which leaves the model unchanged but fools a pure weight-norm
score. Weighting each column's squared norm by ``E[x_c^2]`` (an exponential moving average
over training batches) gives ``E ||W_k x_k||^2`` under a diagonal approximation: the
feature's actual contribution, invariant to that rescaling. The statistics cost one
reduction of the over-arch input per step; across ranks they are averaged with one
all-reduce per UMEC step, so every rank scores identically.
"""

from __future__ import annotations

from typing import Dict, List, Mapping, Optional

import torch
import torch.distributed as dist
from torch import nn

__all__ = ["ActivationStats", "input_width"]

MEAN_SUFFIX = ":mean"


def input_width(module: nn.Module) -> int:
    """Columns of the ``[B, C]`` input ``module`` reads: ``in_features`` of a Linear, the input
    width of a ``LowRankCrossNet`` (its ``V_kernels`` are ``[rank, C]``).

    Raises:
        ValueError: for another kind of module (its input width is not known before a batch).
    """
    if isinstance(getattr(module, "in_features", None), int):
        return int(module.in_features)  # type: ignore[arg-type]
    v = getattr(module, "V_kernels", None)
    if v is not None and len(v) > 0:
        return int(v[0].shape[1])
    raise ValueError(f"cannot tell the input width of a watched {type(module).__name__} "
                     "(expected an nn.Linear or a LowRankCrossNet)")


class ActivationStats:
    """Forward pre-hooks that keep ``E[x^2]`` (and, when ``centered``, ``E[x]``) per input
    column of watched modules.

    Args:
        watch: ``{name: module}``; the module's first positional input is tracked.
        momentum: weight of the newest batch in the moving average.
        centered: also track the mean, so :meth:`moments` gives ``Var[x]`` instead of ``E[x^2]``.

    Example::

        stats = ActivationStats({"over_arch_input": first_linear})
        ...                              # training steps
        moments = stats.synced()         # {name: [in_features]} identical on every rank
    """

    def __init__(self, watch: Mapping[str, nn.Module], momentum: float = 0.1, centered: bool = False) -> None:
        self.momentum = momentum
        self.centered = centered
        self.enabled = True
        self.values: Dict[str, torch.Tensor] = {}
        self._handles: List = []
        self._widths: Dict[str, int] = {name: input_width(module) for name, module in watch.items()}
        for name, module in watch.items():
            self._handles.append(module.register_forward_pre_hook(self._hook(name)))

    def _hook(self, name: str):
        def hook(module: nn.Module, args) -> None:
            if not (self.enabled and module.training) or not args:
                return
            x = args[0]
            with torch.no_grad():
                xd = x.detach().float()
                self._update(name, xd.pow(2).mean(dim=0))
                if self.centered:
                    self._update(name + MEAN_SUFFIX, xd.mean(dim=0))

        return hook

    def _update(self, key: str, m: torch.Tensor) -> None:
        prev = self.values.get(key)
        self.values[key] = m if prev is None else prev.lerp(m, self.momentum)

    def moments(self, group: Optional[dist.ProcessGroup] = None, sync: bool = True) -> Dict[str, torch.Tensor]:
        """``{name: E[x^2]}`` or, when ``centered``, ``{name: Var[x]}``; synced over ranks
        (one collective) unless ``sync=False``."""
        v = self.synced(group) if sync else dict(self.values)
        if not self.centered:
            return v
        return {k: (v[k] - v[k + MEAN_SUFFIX].pow(2)).clamp(min=0.0)
                for k in v if not k.endswith(MEAN_SUFFIX) and k + MEAN_SUFFIX in v}

    def synced(self, group: Optional[dist.ProcessGroup] = None) -> Dict[str, torch.Tensor]:
        """The averages, all-reduced (mean) over ranks in one collective."""
        if not self.values:
            return {}
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size(group) == 1:
            return dict(self.values)
        names = sorted(self.values)
        flat = torch.cat([self.values[n] for n in names])
        dist.all_reduce(flat, group=group)
        flat /= dist.get_world_size(group)
        out, i = {}, 0
        for n in names:
            k = self.values[n].numel()
            out[n] = flat[i: i + k]
            self.values[n] = out[n].clone()
            i += k
        return out

    def keys(self) -> List[str]:
        """The names of the averages kept: every watched name, and ``name + ":mean"`` when ``centered``."""
        return [k for n in self._widths for k in ((n, n + MEAN_SUFFIX) if self.centered else (n,))]

    def state_dict(self) -> Dict[str, torch.Tensor]:
        """``{key: [C] float32}`` for every key of :meth:`keys`, a CPU copy; an average not yet
        measured (no training forward since construction) is all NaN. Same keys and shapes
        before and after the first batch, so a DCP checkpoint loads into a fresh instance."""
        out = {}
        for k in self.keys():
            v = self.values.get(k)
            if v is None:
                w = self._widths[k[: -len(MEAN_SUFFIX)] if k.endswith(MEAN_SUFFIX) else k]
                out[k] = torch.full((w,), float("nan"))
            else:
                out[k] = v.detach().float().cpu().clone()
        return out

    def load_state_dict(self, state: Mapping[str, torch.Tensor], device: torch.device) -> None:
        """Restore :meth:`state_dict`'s averages (all-NaN entries: not measured yet)."""
        unknown = sorted(set(state) - set(self.keys()))
        if unknown:
            raise ValueError(f"activation statistics state has keys {unknown} this model does not watch "
                             f"(it watches {self.keys()})")
        self.values = {k: torch.as_tensor(v).to(device) for k, v in state.items()
                       if not (torch.as_tensor(v).numel() and bool(torch.isnan(torch.as_tensor(v)).all()))}

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
