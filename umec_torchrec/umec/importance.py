r"""Group importance: estimates of the loss increase when a group is removed.

UMEC ranks the groups of every set by a score: the prox shrinks the least-scored groups,
the ``s`` step prices one more pruned group by the next-smallest score and the final fill
gives back the groups of highest score per unit of resource. This module computes those
scores. Every group set has a *gate*: the tensor through which its groups reach the rest
of the model, the first positional input ``x`` of one module,

* sparse features (``cat``, ``dot``): the input of the first over-arch Linear, whose
  columns belong to features through an incidence matrix ``M`` (``[C, G]``; with ``dot``
  a pair column has two owners);
* sparse features (``dcn``): the input ``x_0`` of the cross net, one block per feature;
* hidden units: the input of the Linear that consumes the layer (one column per unit).

Removing group ``g`` changes the gate by ``delta_g`` and, to second order with the
per-sample Fisher approximation of the Hessian, the loss of sample ``n`` by

.. math::
    t_{ng} = \sum_{c \in g} \frac{\partial \ell_n}{\partial x_{nc}}\, \delta_{nc}, \qquad
    \Delta\ell_{ng} \approx t_{ng} + \tfrac12 t_{ng}^2 .

A removed group is *replaced by its mean* where its consumer is a Linear
(``delta = mu - x``; the mean's contribution ``W_{:,g}\,\mu_g`` is folded into the
consumer's bias when the group is pruned, see :func:`fold_mean_`), so a constant input
costs nothing; where the consumer is not linear in it (the DCN cross net) it is zeroed
(``delta = -x``). Score kinds (:class:`ScoreKind`):

* ``weight``: the squared L2 norm of the group's weights (the paper's);
* ``activation``: squared column norms weighted by ``E[x_c^2]`` (``E||W_g x_g||^2`` under a
  diagonal approximation; invariant to moving scale between a table and its columns);
* ``centered``: the same with the variance ``Var[x_c]``: the mean is folded into the bias,
  so only the varying part of a group's input counts;
* ``fisher``: :math:`\tfrac12 E_n[t_{ng}^2]` on training batches (group Fisher pruning,
  Liu et al. 2021; first-order Taylor, Molchanov et al. 2019). At a trained model the
  first-order term averages to zero on the training data, leaving the Fisher term;
* ``holdout``: the log-loss increase of removing each group on *validation* batches
  (:func:`holdout_scores`), clamped at zero: a group that only memorises training labels
  helps nothing on unseen rows. Where the gate has a cheap ``downstream`` (the feature
  gate: only the over arch runs again) the removal is *measured*; elsewhere (hidden units)
  it is estimated to second order, :math:`E_n[t_{ng} + \tfrac12 t_{ng}^2]`;
* ``mixed``: the feature set as ``holdout`` measures it (validation batches), every unit set
  as ``fisher`` (training batches);
* ``shrunk``: as ``mixed``, each measured feature cost shrunk toward that
  feature's ``fisher`` by its standard error over the validation rows
  (:func:`shrink_toward`, empirical Bayes).

``fisher``, ``holdout``, ``mixed`` and ``shrunk`` are in units of log loss for every set, so one budget dual can
trade a feature against a neuron; the norm-based kinds are rescaled per set by the
optimizer. Costs: one ``[B, C] x [C, G]`` product per gate and step (``fisher``), nothing
but moment updates otherwise; ``holdout`` runs forward and backward (to the gates only,
never into the tables, so fused table optimizers are not stepped) on ``k`` validation
batches every ``N`` steps.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, List, Mapping, NamedTuple, Optional, Sequence, Tuple, Union

import torch
import torch.distributed as dist
from torch import nn

__all__ = [
    "ScoreKind",
    "Replace",
    "Gate",
    "GateStats",
    "ImportanceTracker",
    "FISHER_ROWS",
    "fisher_stride",
    "group_contributions",
    "holdout_scores",
    "holdout_loss_sums",
    "HoldoutSums",
    "shrink_toward",
    "fold_mean_",
]


class ScoreKind(str, enum.Enum):
    """How groups are scored (see the module docstring)."""

    WEIGHT = "weight"
    ACTIVATION = "activation"
    CENTERED = "centered"
    FISHER = "fisher"
    HOLDOUT = "holdout"
    MIXED = "mixed"
    SHRUNK = "shrunk"

    @property
    def loss_scale(self) -> bool:
        """Scores in units of log loss, comparable across sets."""
        return self in (ScoreKind.FISHER, ScoreKind.HOLDOUT, ScoreKind.MIXED, ScoreKind.SHRUNK)

    @property
    def folds_mean(self) -> bool:
        """Pruning replaces a group by its mean (folded into the consumer's bias)."""
        return self in (ScoreKind.CENTERED, ScoreKind.FISHER, ScoreKind.HOLDOUT, ScoreKind.MIXED, ScoreKind.SHRUNK)

    @property
    def needs_holdout(self) -> bool:
        """Some set is scored on validation batches (:meth:`UMECOptimizer.attach_holdout`)."""
        return self in (ScoreKind.HOLDOUT, ScoreKind.MIXED, ScoreKind.SHRUNK)

    @property
    def fisher(self) -> bool:
        """Some set is scored by the group Fisher on training batches."""
        return self in (ScoreKind.FISHER, ScoreKind.MIXED, ScoreKind.SHRUNK)

    def measures(self, features: bool) -> bool:
        """A set (the feature set when ``features``) is scored on validation batches."""
        return self is ScoreKind.HOLDOUT or (self in (ScoreKind.MIXED, ScoreKind.SHRUNK) and features)

    def fisher_of(self, features: bool) -> bool:
        """A set (the feature set when ``features``) needs its training-batch Fisher:
        ``mixed`` measures its feature set instead, so that set needs no gradient hook;
        ``shrunk`` shrinks the measurement toward it (:func:`shrink_toward`)."""
        return self.fisher and (not self.measures(features) or self is ScoreKind.SHRUNK)

    @property
    def needs_stats(self) -> bool:
        return self is not ScoreKind.WEIGHT


class Replace(str, enum.Enum):
    """What a removed group's gate columns become."""

    MEAN = "mean"
    ZERO = "zero"


@dataclass
class Gate:
    """Where one group set meets the rest of the model.

    Args:
        module: the module whose first positional input ``x`` (``[B, C]``) carries the groups.
        incidence: ``[C, G]`` 0/1 map of columns to groups; ``None`` is the identity (column
            ``j`` is group ``j``).
        replace: :class:`Replace`: ``MEAN`` where ``module`` is a Linear (the mean is folded
            into its bias on pruning), ``ZERO`` otherwise.
        downstream: the model's logits as a function of the gate tensor (``[N, C] -> [N]``),
            when it is cheap to run alone (the over arch for feature gates); with it,
            :func:`holdout_scores` *measures* each removal instead of estimating it.
    """

    module: nn.Module
    incidence: Optional[torch.Tensor] = None
    replace: Replace = Replace.MEAN
    downstream: Optional[Callable[[torch.Tensor], torch.Tensor]] = None

    def replaced(self, x: torch.Tensor, mean: Optional[torch.Tensor], groups: torch.Tensor) -> torch.Tensor:
        """``[len(groups), B, C]``: ``x`` with the columns of each group replaced (one group at a time)."""
        C = x.shape[1]
        inc = self.incidence if self.incidence is not None else torch.eye(C, device=x.device)
        hit = inc.to(x.device)[:, groups].t() > 0  # [k, C]
        fill = torch.zeros_like(x[0]) if mean is None or self.replace is Replace.ZERO else mean.to(x.dtype)
        return torch.where(hit[:, None, :], fill[None, None, :], x[None, :, :])

    def contributions(self, x: torch.Tensor, grad: torch.Tensor, mean: Optional[torch.Tensor]) -> torch.Tensor:
        """Per-sample first-order loss change of removing each group, ``[B, G]``."""
        return group_contributions(x, grad, self.incidence, mean if self.replace is Replace.MEAN else None,
                                   blocks=self.blocks())

    def blocks(self) -> Optional[tuple]:
        """``(lo, width)`` when the groups are consecutive, equal-width column blocks starting at
        column ``lo`` (the feature gates of ``cat`` and ``dcn``); ``None`` otherwise (``dot``'s
        pair columns, the identity). Computed once."""
        cached = self.__dict__.get("_blocks", False)
        if cached is not False:
            return cached
        out = None
        inc = self.incidence
        if inc is not None and inc.dim() == 2 and inc.shape[1] > 0:
            hit = inc != 0
            per_col = hit.sum(dim=1)
            cols = torch.nonzero(per_col, as_tuple=True)[0]
            G = inc.shape[1]
            if bool((per_col <= 1).all()) and cols.numel() % G == 0 and cols.numel() > 0:
                lo, width = int(cols[0]), cols.numel() // G
                expect = torch.arange(lo, lo + width * G, device=inc.device)
                owner = hit[lo: lo + width * G].float().argmax(dim=1)
                if torch.equal(cols, expect) and torch.equal(owner, expect.sub(lo).div(width, rounding_mode="floor")):
                    out = (lo, width)
        self.__dict__["_blocks"] = out
        return out


def group_contributions(
    x: torch.Tensor, grad: torch.Tensor, incidence: Optional[torch.Tensor], mean: Optional[torch.Tensor],
    blocks: Optional[tuple] = None,
) -> torch.Tensor:
    r"""``t[n, g] = sum_{c in g} grad[n, c] * delta[n, c]`` with ``delta = mean - x`` (or ``-x``).

    Args:
        x: ``[B, C]`` gate values.
        grad: ``[B, C]`` per-sample loss gradients ``d l_n / d x_n`` (not divided by ``B``).
        incidence: ``[C, G]`` or ``None`` (identity).
        mean: ``[C]`` replacement values, or ``None`` to zero the group.
        blocks: ``(lo, width)`` when group ``g`` is columns ``[lo + g w, lo + (g+1) w)``
            (:meth:`Gate.blocks`): a reshape-sum, ``O(B C)``, instead of the ``[B, C] x [C, G]``
            product with the incidence.

    Returns:
        ``[B, G]``.
    """
    delta = -x if mean is None else mean[None, :] - x  # a new tensor: multiplied in place
    prod = delta.mul_(grad).float()
    if incidence is None:
        return prod
    if blocks is not None:
        lo, width = blocks
        G = incidence.shape[1]
        return prod[:, lo: lo + G * width].reshape(prod.shape[0], G, width).sum(dim=2)
    return prod @ incidence.to(prod.dtype)


class GateStats:
    """Moving averages at one gate: ``mean`` and, when tracked, ``sq`` (``E[x]``, ``E[x^2]``, ``[C]``) and,
    when tracked, ``fisher`` (``E[t^2] / 2``, ``[G]``)."""

    def __init__(self) -> None:
        self.mean: Optional[torch.Tensor] = None
        self.sq: Optional[torch.Tensor] = None
        self.fisher: Optional[torch.Tensor] = None

    @property
    def var(self) -> Optional[torch.Tensor]:
        return None if self.mean is None or self.sq is None else (self.sq - self.mean.pow(2)).clamp(min=0.0)

    def tensors(self) -> Dict[str, torch.Tensor]:
        return {k: v for k, v in (("mean", self.mean), ("sq", self.sq), ("fisher", self.fisher)) if v is not None}


#: default row cap of the Fisher estimate per local batch (:class:`ImportanceTracker`)
FISHER_ROWS = 512


def fisher_stride(batch: int, max_rows: Optional[int]) -> int:
    """The row stride that keeps at most ``max_rows`` of ``batch`` rows (``1``: every row).

    Example::

        assert fisher_stride(128, 512) == 1 and fisher_stride(2048, 512) == 4 and fisher_stride(2049, 512) == 5
    """
    if max_rows is None or batch <= max_rows:
        return 1
    return -(-batch // max_rows)


def _lerp(prev: Optional[torch.Tensor], new: torch.Tensor, momentum: float) -> torch.Tensor:
    return new if prev is None else prev.lerp(new, momentum)


class ImportanceTracker:
    """Forward hooks (training mode only) that keep the moments of every gate, and with
    ``fisher=True`` the group Fisher of mean replacement from the gates' gradients.

    Args:
        gates: one :class:`Gate` per group set (``None`` for a set without one).
        momentum: weight of the newest batch in the moving averages.
        fisher: also track ``E[t^2] / 2`` (one gradient hook per gate and step); a sequence
            gives it per gate.
        fisher_rows: estimate the Fisher on at most about this many rows of each local batch
            (every ``ceil(B / fisher_rows)``-th row, :func:`fisher_stride`; ``None``: all rows).
            It is a mean over samples, so a row subset is an unbiased estimate of it; batches
            up to ``fisher_rows`` rows use every row.
        second_moment: also track ``E[x^2]`` (and so ``Var[x]``); UMEC needs only the means.

    Example::

        tracker = ImportanceTracker([Gate(first_linear, incidence)], fisher=True, second_moment=True)
        ...                             # training steps (forward + backward)
        stats = tracker.synced()        # identical on every rank
        stats[0].var, stats[0].fisher
    """

    def __init__(self, gates: Sequence[Optional[Gate]], momentum: float = 0.1,
                 fisher: Union[bool, Sequence[bool]] = False,
                 second_moment: bool = False, fisher_rows: Optional[int] = FISHER_ROWS) -> None:
        if fisher_rows is not None and fisher_rows < 1:
            raise ValueError(f"fisher_rows must be >= 1 or None, got {fisher_rows}")
        self.fisher_rows = fisher_rows
        self.track_sq = second_moment
        self.gates = list(gates)
        self.momentum = momentum
        self.track_fisher = [fisher] * len(self.gates) if isinstance(fisher, bool) else list(fisher)
        if len(self.track_fisher) != len(self.gates):
            raise ValueError(f"fisher has {len(self.track_fisher)} flags for {len(self.gates)} gates")
        self.enabled = True
        self.stats: List[GateStats] = [GateStats() for _ in self.gates]
        self._handles: List = []
        for i, gate in enumerate(self.gates):
            if gate is not None:
                self._handles.append(gate.module.register_forward_pre_hook(self._hook(i)))

    def _hook(self, i: int) -> Callable:
        gate = self.gates[i]
        st = self.stats[i]

        def hook(module: nn.Module, args) -> None:
            if not (self.enabled and module.training) or not args:
                return
            x = args[0]
            # the replacement mean of this step's Fisher is the running mean *before* this batch:
            # it is the same on every rank (synced at each UMEC step), so 1 and N ranks agree
            mean = st.mean
            with torch.no_grad():
                xd = x.detach().float()
                st.mean = _lerp(st.mean, xd.mean(dim=0), self.momentum)
                if self.track_sq:
                    st.sq = _lerp(st.sq, xd.pow(2).mean(dim=0), self.momentum)
            if self.track_fisher[i] and mean is not None and x.requires_grad and torch.is_grad_enabled():

                def on_grad(g: torch.Tensor) -> None:
                    with torch.no_grad():
                        B = g.shape[0]
                        step = fisher_stride(B, self.fisher_rows)
                        xs, gs = (xd, g) if step == 1 else (xd[::step], g[::step])
                        t = gate.contributions(xs, gs.detach().float(), mean)  # [b, G]
                        # per-sample gradients are g * B: E[(B t)^2] / 2, the B^2 on the [G] mean
                        f = t.square_().mean(dim=0).mul_(0.5 * B * B)
                        st.fisher = _lerp(st.fisher, f, self.momentum)

                x.register_hook(on_grad)

        return hook

    def synced(self, group: Optional[dist.ProcessGroup] = None) -> List[GateStats]:
        """The averages, all-reduced (mean) over ranks in one collective; the local copies
        are replaced by the synced ones, so every rank scores identically."""
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size(group) == 1:
            return self.stats
        parts = [(st, k, v) for st in self.stats for k, v in sorted(st.tensors().items())]
        if not parts:
            return self.stats
        flat = torch.cat([v.flatten() for _, _, v in parts])
        dist.all_reduce(flat, group=group)
        flat /= dist.get_world_size(group)
        i = 0
        for st, k, v in parts:
            setattr(st, k, flat[i: i + v.numel()].view_as(v).clone())
            i += v.numel()
        return self.stats

    def state_dict(self) -> List[Dict[str, torch.Tensor]]:
        return [{k: v.detach().cpu().clone() for k, v in st.tensors().items()} for st in self.stats]

    def load_state_dict(self, state: Sequence[Mapping[str, torch.Tensor]], device: torch.device) -> None:
        if len(state) != len(self.stats):
            raise ValueError(f"importance state has {len(state)} gates, this model {len(self.stats)}")
        for st, d in zip(self.stats, state):
            for k in ("mean", "sq", "fisher"):
                setattr(st, k, torch.as_tensor(d[k]).to(device) if k in d else None)

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []


def holdout_scores(
    forward: Callable[[object], torch.Tensor],
    batches: Iterable[object],
    labels: Callable[[object], torch.Tensor],
    gates: Sequence[Optional[Gate]],
    means: Sequence[Optional[torch.Tensor]],
) -> List[Optional[torch.Tensor]]:
    r"""Log-loss increase of removing each group, on held-out batches:
    :func:`holdout_loss_sums` divided by the rows, clamped at zero (a removal that lowers the
    held-out loss costs nothing: negative scores would turn UMEC's penalty into a reward for
    pruning). On several ranks, sum the sums and rows over ranks first, then divide and clamp
    (:meth:`UMECOptimizer.refresh_holdout`), so any split of the rows gives the same scores.
    """
    got = holdout_loss_sums(forward, batches, labels, gates, means)
    return [None if s is None else (s / max(got.rows, 1)).clamp(min=0.0) for s in got.sums]


class HoldoutSums(NamedTuple):
    """Per-gate sums over held-out rows of each group's loss increase and of its square
    (``[G]`` float64 each, ``None`` for a gate without a score), and the rows read."""

    sums: List[Optional[torch.Tensor]]
    squares: List[Optional[torch.Tensor]]
    rows: int


def holdout_loss_sums(
    forward: Callable[[object], torch.Tensor],
    batches: Iterable[object],
    labels: Callable[[object], torch.Tensor],
    gates: Sequence[Optional[Gate]],
    means: Sequence[Optional[torch.Tensor]],
) -> "HoldoutSums":
    r"""Summed log-loss increase of removing each group over held-out batches (and of its
    square, for the standard error of the mean), and the rows.

    For every batch: one forward (``forward(batch) -> logits``). For a gate with a
    ``downstream`` function the removal is *measured*: the loss of the downstream part with
    each group's columns replaced, minus the loss as it is (``G`` variants of the batch, in
    chunks). Otherwise it is *estimated* from one backward of the mean BCE loss to the gate
    tensors only (``torch.autograd.grad``: no parameter gradient is written and no fused
    table optimizer runs): :math:`E_n[t_{ng} + \tfrac12 t_{ng}^2]` per group
    (:func:`group_contributions`). Every row counts once (sums over rows, not batch means).

    Args:
        forward: the model's logits for a batch (call the module below any DDP wrapper).
        batches: held-out batches.
        labels: a batch's labels (``[B]`` floats).
        gates: one gate per set (``None``: no score, returned as ``None``).
        means: the replacement means per gate (``[C]``; from training batches).

    Returns:
        :class:`HoldoutSums`.
    """
    captured: Dict[int, torch.Tensor] = {}
    handles = []
    for i, gate in enumerate(gates):
        if gate is not None:
            def hook(module, args, i=i):
                if args and isinstance(args[0], torch.Tensor) and args[0].requires_grad:
                    captured[i] = args[0]
            handles.append(gate.module.register_forward_pre_hook(hook))
    sums: List[Optional[torch.Tensor]] = [None] * len(gates)
    squares: List[Optional[torch.Tensor]] = [None] * len(gates)
    rows = 0
    try:
        for batch in batches:
            captured.clear()
            with torch.enable_grad():
                logits = forward(batch).flatten().float()
                y = labels(batch).flatten().float().to(logits.device)
                loss = nn.functional.binary_cross_entropy_with_logits(logits, y)
                idx = [i for i in sorted(captured) if gates[i].downstream is None]
                grads = torch.autograd.grad(loss, [captured[i] for i in idx], allow_unused=True) if idx else []
            B = logits.numel()
            parts = {i: _estimated(gates[i], captured[i], g, B, means[i]) for i, g in zip(idx, grads) if g is not None}
            for i in sorted(captured):
                if gates[i].downstream is not None:
                    parts[i] = _measured(gates[i], captured[i].detach(), y, means[i])
            for i, (part, sq) in parts.items():
                sums[i] = part if sums[i] is None else sums[i] + part
                squares[i] = sq if squares[i] is None else squares[i] + sq
            rows += B
    finally:
        for h in handles:
            h.remove()
    return HoldoutSums(sums, squares, rows)


def _estimated(gate: Gate, x: torch.Tensor, grad: torch.Tensor, B: int,
               mean: Optional[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
    """Summed second-order estimate over the batch and its summed square, ``[G]`` each."""
    t = gate.contributions(x.detach().float(), grad.float() * B, mean)
    d = (t + 0.5 * t.pow(2)).double()
    return d.sum(dim=0), d.square().sum(dim=0)


@torch.no_grad()
def _measured(gate: Gate, x: torch.Tensor, y: torch.Tensor, mean: Optional[torch.Tensor],
              max_rows: int = 1 << 16) -> Tuple[torch.Tensor, torch.Tensor]:
    """Summed measured loss increase over the batch and its summed square, ``[G]`` float64
    each (downstream runs on ``G x B`` rows, at most ``max_rows`` at a time)."""
    assert gate.downstream is not None
    loss = nn.functional.binary_cross_entropy_with_logits
    # per-row differences, summed in float64: the increase is a small difference of two losses,
    # so differencing the batch sums would cancel most of float32's digits
    base = loss(gate.downstream(x).flatten().float(), y, reduction="none")
    G = x.shape[1] if gate.incidence is None else gate.incidence.shape[1]
    per = max(1, max_rows // max(1, x.shape[0]))
    out, sq = [], []
    for start in range(0, G, per):
        groups = torch.arange(start, min(G, start + per), device=x.device)
        xs = gate.replaced(x, mean, groups)  # [k, B, C]
        logits = gate.downstream(xs.flatten(0, 1)).float().view(len(groups), -1)
        d = (loss(logits, y[None, :].expand_as(logits), reduction="none") - base).double()
        out.append(d.sum(dim=1))
        sq.append(d.square().sum(dim=1))
    return torch.cat(out), torch.cat(sq)


def shrink_toward(measured: torch.Tensor, se2: torch.Tensor, prior: torch.Tensor) -> torch.Tensor:
    r"""Empirical-Bayes shrinkage of noisy measured scores toward a prior estimate.

    Model: :math:`h_g = \theta_g + \epsilon_g`, :math:`\epsilon_g \sim N(0, se_g^2)` (the
    measurement noise, known from the rows) and :math:`\theta_g \sim N(f_g, \tau^2)` (the
    prior estimate, here the training-batch Fisher, off by :math:`\tau`). :math:`\tau^2` is
    estimated by moments over the groups, :math:`\max(0, \overline{(h - f)^2} - \overline{se^2})`,
    and each group's posterior mean is

    .. math:: f_g + \frac{\tau^2}{\tau^2 + se_g^2} (h_g - f_g)

    A precise measurement (or a prior far off on average, as for fields that memorise
    training labels) keeps the measurement; a noisy one moves toward the prior.

    Args:
        measured: ``[G]`` measured scores :math:`h`.
        se2: ``[G]`` squared standard errors of ``measured``.
        prior: ``[G]`` prior estimates :math:`f`.

    Returns:
        ``[G]`` shrunk scores, clamped at zero.
    """
    d = measured - prior
    tau2 = (d.square().mean() - se2.mean()).clamp(min=0.0)
    w = tau2 / (tau2 + se2).clamp(min=torch.finfo(d.dtype).tiny)
    return (prior + w * d).clamp(min=0.0)


@torch.no_grad()
def fold_mean_(consumer: nn.Linear, removed: torch.Tensor, mean: torch.Tensor) -> None:
    """Fold the mean of removed input columns into ``consumer``'s bias and zero them:
    ``b += W[:, removed] @ mean[removed]``, ``W[:, removed] = 0``. The output is then what
    it was with those inputs replaced by their means.

    Args:
        consumer: the Linear that reads the gate (it must have a bias).
        removed: ``[C]`` bool, the columns to remove.
        mean: ``[C]`` the columns' means.
    """
    if consumer.bias is None:
        raise ValueError("cannot fold a removed group's mean: the consuming Linear has no bias")
    w = consumer.weight
    sel = removed.to(w.device).to(w.dtype)
    consumer.bias.add_((w * sel[None, :]) @ mean.to(w.device).to(w.dtype))
    w.mul_(1.0 - sel[None, :])


# ---------------------------------------------------------------- one-shot scores (baselines)
# Added for the one-shot baselines of :mod:`umec_torchrec.baselines.loss_scores`: one pass
# over a split, no UMEC state. Gradients go to the gate tensors only (torch.autograd.grad),
# so no parameter ``.grad`` is written and no fused table optimizer runs.

def _gate_passes(
    forward: Callable[[object], torch.Tensor],
    batches: Iterable[object],
    labels: Callable[[object], torch.Tensor],
    gates: Sequence[Optional[Gate]],
    grads: bool,
):
    """Per batch: ``(xs, gs, y)``: every gate's input ``x`` (detached, float, ``[B, C]``),
    with ``grads`` the per-sample loss gradients ``d l_n / d x_n`` at the gates that need
    gradient (the summed BCE differentiated to the gate tensors only), and the labels."""
    captured: Dict[int, torch.Tensor] = {}
    handles = []
    for i, gate in enumerate(gates):
        if gate is not None:
            def hook(module, args, i=i):
                if args and isinstance(args[0], torch.Tensor):
                    captured[i] = args[0]
            handles.append(gate.module.register_forward_pre_hook(hook))
    try:
        for batch in batches:
            captured.clear()
            gs: Dict[int, torch.Tensor] = {}
            with torch.enable_grad() if grads else torch.no_grad():
                logits = forward(batch).flatten().float()
                y = labels(batch).flatten().float().to(logits.device)
                if grads:
                    idx = [i for i in sorted(captured) if captured[i].requires_grad]
                    loss = nn.functional.binary_cross_entropy_with_logits(logits, y, reduction="sum")
                    got = torch.autograd.grad(loss, [captured[i] for i in idx], allow_unused=True) if idx else []
                    gs = {i: g.detach().float() for i, g in zip(idx, got) if g is not None}
            yield {i: x.detach().float() for i, x in captured.items()}, gs, y
    finally:
        for h in handles:
            h.remove()


def _incidence_of(gate: Gate, device: torch.device) -> Optional[torch.Tensor]:
    return None if gate.incidence is None else gate.incidence.to(device=device, dtype=torch.float64)


def fisher_scores(
    forward: Callable[[object], torch.Tensor],
    batches: Iterable[object],
    labels: Callable[[object], torch.Tensor],
    gates: Sequence[Optional[Gate]],
    means: Optional[Sequence[Optional[torch.Tensor]]] = None,
) -> tuple[List[Optional[torch.Tensor]], List[Optional[torch.Tensor]]]:
    r"""Group Fisher of removal, :math:`\tfrac12 E_n[t_{ng}^2]` (:func:`group_contributions`),
    over one pass of (training) batches: one-shot Taylor/Fisher pruning (Molchanov et al.
    2019; Liu et al. 2021), in units of log loss for every gate.

    Without ``means`` the replacement means ``E[x]`` come from the same pass: with
    ``a = grad @ (M * mu)`` and ``b = (grad * x) @ M`` (``M`` the incidence),
    ``t = a - b`` and :math:`E[t^2] = \mu^\top E[g g^\top]\mu - 2E[ab] + E[b^2]` per group,
    so the pass keeps ``E[g g^T]`` (``[C, C]``; its diagonal for identity gates), ``E[g b]``
    (``[C, G]``) and ``E[b^2]`` (float64), and applies the final mean at the end: the
    result equals a second pass with the final means. ``Replace.ZERO`` gates use
    ``t = -b``.

    Args:
        forward: the model's logits for a batch (put the model in eval mode first).
        batches: the batches (one pass).
        labels: a batch's labels (``[B]``).
        gates: one gate per set (``None``: no score).
        means: fixed replacement means per gate (``[C]``); default: estimated in the pass.

    Returns:
        ``(scores, means)``: per gate a ``[G]`` score (``None`` for a ``None`` gate or one
        the loss does not reach) and the ``[C]`` means used.

    Example::

        (sc,), (mu,) = fisher_scores(lambda b: model(b[0]), batches, lambda b: b[1], [gate])
    """
    f64 = torch.float64
    acc: Dict[int, Dict[str, torch.Tensor]] = {}
    rows: Dict[int, int] = {}
    for xs, gs, _ in _gate_passes(forward, batches, labels, gates, grads=True):
        for i, g in gs.items():
            gate, x, g = gates[i], xs[i].to(f64), g.to(f64)
            inc = _incidence_of(gate, x.device)
            b = g * x if inc is None else (g * x) @ inc  # [B, G]
            part = {"sx": x.sum(0), "bb": b.pow(2).sum(0)}
            if gate.replace is Replace.MEAN:
                part["gg"] = g.pow(2).sum(0) if inc is None else g.t() @ g  # [C] or [C, C]
                part["gb"] = g * b if inc is None else g.t() @ b  # [B, C] -> summed below / [C, G]
                if inc is None:
                    part["gb"] = part["gb"].sum(0)
            a = acc.setdefault(i, {})
            for k, v in part.items():
                a[k] = v if k not in a else a[k] + v
            rows[i] = rows.get(i, 0) + x.shape[0]
    scores: List[Optional[torch.Tensor]] = [None] * len(gates)
    used: List[Optional[torch.Tensor]] = [None] * len(gates)
    for i, a in acc.items():
        gate, n = gates[i], float(max(rows[i], 1))
        mu = a["sx"] / n if means is None or means[i] is None else means[i].to(a["sx"])
        et2 = a["bb"] / n
        if gate.replace is Replace.MEAN:
            inc = _incidence_of(gate, mu.device)
            if inc is None:
                ea2, eab = mu.pow(2) * a["gg"] / n, mu * a["gb"] / n
            else:
                m = inc * mu[:, None]  # [C, G]
                ea2, eab = ((a["gg"] @ m) * m).sum(0) / n, (m * a["gb"]).sum(0) / n
            et2 = ea2 - 2.0 * eab + et2
        scores[i] = (0.5 * et2).clamp(min=0.0).float()
        used[i] = mu.float()
    return scores, used


def shark_scores(
    forward: Callable[[object], torch.Tensor],
    batches: Iterable[object],
    labels: Callable[[object], torch.Tensor],
    gates: Sequence[Optional[Gate]],
) -> List[Optional[torch.Tensor]]:
    r"""SHARK-style first-order Taylor importance of zeroing each group:
    :math:`|E_n[\sum_{c \in g} \partial\ell_n/\partial x_{nc}\, x_{nc}]|` over one pass
    (Zhang et al. 2023, "SHARK"; at the feature gate of a ``cat`` DLRM the columns of a
    field are its pooled embedding; with ``dot`` they are the field's pair columns). A
    first-order score: at a stationary point of the loss on the batches scored (a model
    trained to convergence, scored on its training data) it vanishes for every group.

    Args / Returns: as :func:`fisher_scores` (no means; one ``[G]`` tensor or ``None`` per gate).

    Example::

        (sc,) = shark_scores(lambda b: model(b[0]), batches, lambda b: b[1], [gate])
    """
    sums: Dict[int, torch.Tensor] = {}
    rows: Dict[int, int] = {}
    for xs, gs, _ in _gate_passes(forward, batches, labels, gates, grads=True):
        for i, g in gs.items():
            t = group_contributions(xs[i].double(), g.double(), _incidence_of(gates[i], g.device), None).sum(0)
            sums[i] = t if i not in sums else sums[i] + t
            rows[i] = rows.get(i, 0) + g.shape[0]
    out: List[Optional[torch.Tensor]] = [None] * len(gates)
    for i, s in sums.items():
        out[i] = (s / max(rows[i], 1)).abs().float()
    return out


@torch.no_grad()
def permutation_scores(
    forward: Callable[[object], torch.Tensor],
    batches: Iterable[object],
    labels: Callable[[object], torch.Tensor],
    gates: Sequence[Optional[Gate]],
    seed: int = 0,
    max_rows: int = 1 << 16,
) -> List[Optional[torch.Tensor]]:
    r"""Permutation importance: the mean log-loss increase when one group's gate columns are
    shuffled across the rows of the batch (one seeded permutation per batch, the same for
    every group), measured through the gate's ``downstream`` (Breiman 2001; ShuffleGate).
    Unlike mean replacement it keeps the group's marginal distribution. Gates without a
    ``downstream`` are not scored (``None``). Not clamped: a negative score says the
    shuffled group helped.

    Args:
        forward / batches / labels / gates: as :func:`holdout_scores` (held-out batches).
        seed: seeds the permutations.
        max_rows: rows the downstream part runs on at a time (``G x B`` in all).

    Returns:
        one ``[G]`` tensor per gate with a downstream, else ``None``.

    Example::

        (sc,) = permutation_scores(lambda b: model(b[0]), valid, lambda b: b[1], [gate], seed=3)
    """
    bce = nn.functional.binary_cross_entropy_with_logits
    gen = torch.Generator().manual_seed(seed)
    sums: Dict[int, torch.Tensor] = {}
    rows = 0
    for xs, _, y in _gate_passes(forward, batches, labels, gates, grads=False):
        perm = torch.randperm(y.numel(), generator=gen).to(y.device)
        for i, x in xs.items():
            gate = gates[i]
            if gate.downstream is None:
                continue
            inc = torch.eye(x.shape[1], device=x.device) if gate.incidence is None else gate.incidence.to(x.device)
            G = inc.shape[1]
            base = bce(gate.downstream(x).flatten().float(), y, reduction="sum")
            shuffled = x[perm]
            per = max(1, max_rows // max(1, x.shape[0]))
            parts = []
            for start in range(0, G, per):  # chunks of groups, each one downstream call
                hit = inc[:, start:start + per].t() > 0  # [k, C]
                xv = torch.where(hit[:, None, :], shuffled[None], x[None])
                logits = gate.downstream(xv.flatten(0, 1)).float().view(hit.shape[0], -1)
                parts.append(bce(logits, y[None, :].expand_as(logits), reduction="none").sum(1) - base)
            s = torch.cat(parts).double()
            sums[i] = s if i not in sums else sums[i] + s
        rows += y.numel()
    out: List[Optional[torch.Tensor]] = [None] * len(gates)
    for i, s in sums.items():
        out[i] = (s / max(rows, 1)).float()
    return out


__all__ += ["fisher_scores", "shark_scores", "permutation_scores"]
