r"""``UMECOptimizer``: UMEC's primal-dual step as a TorchRec ``OptimizerWrapper``.

UMEC (Shen et al., ICLR 2021) solves

.. math::
    \min_{W, s} \max_{y \ge 0, z \ge 0}\; \ell(W)
        + \sum_l y_l \, \|W_l\|^2_{\lceil s_l \rceil, 2}
        + \sum_b z_b \, \big(R_b(s) - B_b\big)

where set ``l`` has ``n_l`` groups, :math:`\|W_l\|^2_{k,2}` is the sum of its ``k`` smallest
squared group norms, ``R_b`` is a resource model (fraction of the dense model) and ``B_b``
its budget. After the wrapped optimizer's step (the SGD part of Algorithm 1), each
:meth:`UMECOptimizer.step` runs, on the dense weights only:

1. **prox**: the ``ceil(s_l)`` least-norm groups of each set are shrunk by the exact prox
   of their penalty, ``w <- w / (1 + 2 lr sum_g y_g)`` (sum over the selected groups that
   contain ``w``, see :mod:`~umec_torchrec.umec.groups` on overlaps);
2. **s**, one of two rules (:class:`SStep`):

   * ``conditional`` (default): a conditional-gradient (Frank-Wolfe) step. The linear
     minimisation oracle over the budget-feasible counts is the greedy allocation
     :math:`c^\star` that prunes, one group at a time, the group with the least score per
     unit of budget violation it removes, evaluated at the current widths
     (:meth:`~.allocation.BudgetAllocator.remove`, rule ``"cost"``, recomputed every
     ``target_every`` UMEC steps); ``s`` moves toward it by at most ``s_lr n_l`` groups per
     step, :math:`s \leftarrow \Pi\big(s + \mathrm{clip}(c^\star - s, \pm s_{lr} n)\big)`.
     The budgets hold at :math:`c^\star` by construction, so ``z`` is not used (it stays 0);
   * ``gradient`` (the paper's): a straight-through step. The gradient of the penalty term
     is the cost of pruning one more group, ``y_l`` times the next-smallest squared norm
     (the authors' ``LeastSsum``); the resource term's is the exact change of ``R_b`` when
     one more group of set ``l`` is pruned (a finite difference, exact at integer points);
3. **y**: ``y_l += y_lr * ||W_l||^2_{ceil(s_l), 2}`` on the new weights and counts;
4. **z** (``gradient`` only): ``z_b += z_lr * (R_b(s^t) - B_b)``, projected on ``z >= 0``.

Deliberate choices where the authors' code departs from Algorithm 1 or is broken
(each tested in ``tests/test_umec_optimizer.py``):

* **no pinning, no overshoot**: ``s`` is projected on ``[0, n_l - min_keep]`` after every
  step; a coordinate at its bound moves back when its gradient says so (the code pinned it
  for good), and ``ceil(s)`` can never prune a whole set (the code could for one step).
* **allocation by conditional gradient** (default ``s_step``): with the paper's s step, every
  set whose resource gradient saturates the clip moves at the same fraction per step, so in
  runs of a few hundred steps the split of a tight budget between fields and layers follows
  the clip, not the scores (``docs/design.md``, "Allocation"); the conditional step moves
  toward the allocation the scores and the resource model imply.
* **per-coordinate step**: ``s_l`` moves in units of its set's size (``s_l / n_l`` is the
  pruned fraction) with its gradient clipped to ``[-1, 1]`` per coordinate; the code clipped
  the infinity norm of the whole vector, coupling all layers to ~0.05 groups per step.
* **z timing as in the paper**: ``z`` ascends on ``R(s^t)``, the same evaluation the
  ``s`` step uses (the code re-evaluated ``R`` after the ``s`` step).
* **scale-free s and y steps**: the prox shrinks by the paper's ``1 / (1 + 2 lr y_l)``, but
  the ``s`` and ``y`` steps measure the penalty in fractions of set ``l``'s total squared
  norm ``T_l`` at the first UMEC step (a constant kept in the state): ``y_l`` rises by
  ``y_lr ||W_l||^2_{ceil(s),2} / T_l`` and the penalty's ``s`` gradient is
  ``y_l * next / T_l``. This preconditions each set's steps so that sets of any size and
  weight scale (a 512-unit layer, 26 feature blocks, DCN kernels) trade off against the
  budget duals on one scale; with raw norms large sets never move before ``z`` is huge.
* **y as in the paper**: the constraint ``||W||^2_{ceil(s)} = 0`` has a non-negative
  residual, so ``y`` never decreases; its increments vanish as the prox drives the selected
  groups to zero, so it settles. (Decaying it would re-admit the groups being removed.)
* **hard pruning at the end** (:meth:`finalize`, rules in :mod:`.allocation`, shared with
  the baselines): the ``ceil(s)`` least-norm groups are removed; if a budget is still
  violated, every set is pushed the same fraction of the way to its bound (keeping UMEC's
  allocation between sets) until all budgets hold; if there is slack (``s`` overshot), the
  strongest pruned groups are given back while every budget still holds. So every budget is
  met, to within one group. Pruned weights are then kept at exactly zero after every step,
  and pruned features are dropped from the input by :attr:`feature_mask`
  (:class:`~umec_torchrec.umec.masked_optimizer.FixedArchitecture`, as in ``MaskedOptimizer``).

Everything stays on the parameters' device: no Python loop over groups, no host sync in
a step (only every ``check_every`` steps, for the cross-rank consistency check, and when a
conditional target or the holdout scores are refreshed).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.distributed as dist
from torch import nn
from torchrec.optim.keyed import KeyedOptimizer, OptimizerWrapper

from umec_torchrec.errors import NonFiniteError
from umec_torchrec.umec.activation_stats import ActivationStats
from umec_torchrec.umec.allocation import BudgetAllocator, SetOrder
from umec_torchrec.umec.budgets import Budget
from umec_torchrec.umec.feature_mask import FeatureMask
from umec_torchrec.umec.groups import FEATURES, GroupSpec, discover_groups
from umec_torchrec.umec.hard_prune import flush_subnormal_, masks_from_pruned, pruned_indicators
from umec_torchrec.umec.importance import (
    ImportanceTracker,
    Replace,
    ScoreKind,
    fold_mean_,
    holdout_loss_sums,
    shrink_toward,
)
from umec_torchrec.umec.masked_optimizer import FixedArchitecture
from umec_torchrec.umec.masks import PruningMasks
from umec_torchrec.umec.resources import Resource

__all__ = ["SStep", "UMECConfig", "UMECOptimizer", "UMECStateMismatch"]


#: the conditional target's granularity: groups move in chunks of 1 % of their set (the s step
#: moves at most ``s_lr`` = 1 % per step, a finer target would not change a step)
TARGET_CHUNK = 0.01


class SStep(str, enum.Enum):
    """How the prune counts ``s`` move each UMEC step (module docstring, step 2)."""

    CONDITIONAL = "conditional"  # toward the greedy budget-feasible allocation (Frank-Wolfe)
    GRADIENT = "gradient"  # the paper's straight-through step with the budget duals z


@dataclass
class UMECConfig:
    """Hyper-parameters of the primal-dual step.

    Args:
        s_lr: step of ``s_l / n_l`` (fraction of a set) per step at unit gradient. The
            authors moved every set by at most 0.05 groups per step over ~300k steps; the
            default lets a set traverse its range in ~100 steps, for runs of a few epochs.
        y_lr: eta_3 of Algorithm 1 (the authors used 0.1 on raw squared norms; here the
            penalty is a fraction of the set's norm, so the scale differs).
        z_lr: eta_4 of Algorithm 1 (the authors used 2.0), in units of budget fractions.
            Defaults chosen on the synthetic and Criteo-sample runs of a few hundred steps:
            larger z_lr / smaller y_lr overshoot the budget further before the fill.
        prox_lr: eta_1 of the prox (the authors' SGD lr, 0.1). ``None`` uses the lr of the
            wrapped optimizer's param group that holds the first over-arch weight, as the
            authors' code does; with Adagrad/Adam that lr is not a step size, so a fixed
            eta_1 is the default.
        warmup_steps: wrapped-optimizer steps before the UMEC step starts.
        check_every: steps between cross-rank consistency checks (0 disables).
        score: how groups are ranked, a :class:`~.importance.ScoreKind` value (default
            ``"fisher"``, chosen with the conditional ``s_step`` on validation splits, see
            ``docs/design.md``; the validation-measured kinds need
            :meth:`UMECOptimizer.attach_holdout`): ``"weight"``
            (the paper's squared norm), ``"activation"`` (feature columns weighted by
            ``E[x^2]`` of their input), ``"centered"`` (weighted by ``Var[x]``), ``"fisher"``
            (group Fisher of mean replacement on training batches), ``"holdout"`` (the
            log-loss increase of each removal on validation batches, measured for the features
            and estimated to second order for units: needs :meth:`UMECOptimizer.attach_holdout`)
            ``"mixed"`` (the features as ``holdout``, the units as ``fisher``; needs it too) or
            ``"shrunk"`` (as ``mixed``, each measured feature score shrunk toward the feature's
            training Fisher by its standard error, :func:`~.importance.shrink_toward`).
            With every kind but ``weight`` and ``activation`` a pruned group is replaced by
            its mean, folded into the consumer's bias.
        holdout_every: UMEC steps between refreshes of the ``holdout`` scores.
        s_step: how ``s`` moves, a :class:`SStep` value: ``"conditional"`` (default, chosen on
            the validation splits, see ``docs/design.md``) or ``"gradient"`` (the paper's).
        target_every: UMEC steps between recomputations of the conditional step's target.
        fisher_rows: the ``fisher`` score is estimated on at most about this many rows of
            each local batch (every k-th row; ``0``: every row). A mean over samples, so the
            subset is an unbiased estimate; it bounds the score's cost per step at large
            batches (``umec bench overhead``), and batches up to this size use every row.
    """

    s_lr: float = 1e-2
    y_lr: float = 5.0
    z_lr: float = 0.3
    prox_lr: Optional[float] = 0.1
    warmup_steps: int = 0
    check_every: int = 100
    score: str = "fisher"
    holdout_every: int = 25
    s_step: str = "conditional"
    target_every: int = 25
    fisher_rows: int = 512

    def validate(self) -> None:
        """Raise ``ValueError`` naming the field on a non-finite or out-of-range value:
        the step sizes are finite and >= 0, ``warmup_steps`` and ``check_every`` >= 0,
        ``holdout_every`` >= 1."""
        import math

        for name in ("s_lr", "y_lr", "z_lr", "prox_lr"):
            v = getattr(self, name)
            if v is None and name == "prox_lr":
                continue
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {v}")
        for name in ("warmup_steps", "check_every", "fisher_rows"):
            if int(getattr(self, name)) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("holdout_every", "target_every"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.s_step not in {k.value for k in SStep}:
            raise ValueError(f"s_step must be one of {[k.value for k in SStep]}, got {self.s_step!r}")


class UMECStateMismatch(RuntimeError):
    """Ranks disagree on the UMEC state (s, y, z, step)."""


class _TorchOptimizerAdapter(KeyedOptimizer):
    """A plain ``torch.optim.Optimizer`` seen as a ``KeyedOptimizer`` (FQN-keyed)."""

    def __init__(self, optimizer: torch.optim.Optimizer, model: nn.Module) -> None:
        names = {id(p): n for n, p in model.named_parameters()}
        params = {}
        for g in optimizer.param_groups:
            for p in g["params"]:
                params[names.get(id(p), f"param_{len(params)}")] = p
        self._inner = optimizer
        super().__init__(params, optimizer.state, optimizer.param_groups)

    def step(self, closure: Any = None) -> None:  # type: ignore[override]
        self._inner.step(closure)

    def zero_grad(self, set_to_none: bool = False) -> None:
        self._inner.zero_grad(set_to_none=set_to_none)


class UMECOptimizer(OptimizerWrapper):
    """Wraps a TorchRec ``KeyedOptimizer``/``CombinedOptimizer`` (or a torch optimizer) and
    compresses ``model`` in place under ``budgets``.

    Args:
        optimizer: the optimizer that trains ``model`` (e.g.
            ``CombinedOptimizer([dmp.fused_optimizer, dense_optimizer])``).
        model: the model (a DLRM, ``DLRMTrain`` or ``DistributedModelParallel``).
        budgets: e.g. ``["flops=0.3", "embedding_bytes=0.5"]`` (see :mod:`.budgets`).
        config: hyper-parameters.
        groups: the groups; by default discovered from ``model``
            (:func:`~umec_torchrec.umec.groups.discover_groups`).
        holdout: returns a fresh iterable of this rank's validation batches, for the
            ``holdout`` score (see :meth:`attach_holdout`).

    Example::

        opt = UMECOptimizer(CombinedOptimizer([dmp.fused_optimizer, dense]), dmp, ["flops=0.3"],
                            holdout=lambda: valid.batches(4096))
        for batch in batches:
            loss, _ = dmp(opt.feature_mask(batch))
            loss.backward()
            opt.step()
            opt.zero_grad()
        masks = opt.finalize()            # hard pruning; pruned weights stay zero
    """

    def __init__(
        self,
        optimizer: Union[KeyedOptimizer, torch.optim.Optimizer],
        model: nn.Module,
        budgets: Sequence[Union[str, Budget]],
        config: Optional[UMECConfig] = None,
        groups: Optional[GroupSpec] = None,
        holdout: Optional[Callable[[], Iterable[Any]]] = None,
    ) -> None:
        if not isinstance(optimizer, KeyedOptimizer):
            optimizer = _TorchOptimizerAdapter(optimizer, model)
        super().__init__(optimizer)
        self.model = model
        self.config = config or UMECConfig()
        self.config.validate()
        self.spec = groups if groups is not None else discover_groups(model)
        sets = self.spec.sets
        dev = sets[0].members[0].param.device
        self.device = dev
        dt = torch.get_default_dtype()
        self._alloc = BudgetAllocator(self.spec, budgets, dtype=dt, device=dev, resource_dtype=dt)
        # the conditional target in float64: pruning a 3-row table of a 33M-row model changes the
        # embedding bytes by ~1e-8 of dense, below float32's resolution (the greedy saw no gain)
        self._target_alloc = BudgetAllocator(self.spec, budgets, dtype=torch.float64, device=dev,
                                             resource_dtype=torch.float64)
        self._alloc.require_reachable()
        self.budgets: List[Budget] = self._alloc.budgets
        self.resources: List[Resource] = self._alloc.resources
        self._n = self._alloc.sizes
        self._s_max = self._alloc.max_counts
        self._B = self._alloc.limits
        self.s = torch.zeros(len(sets), device=dev)
        self.y = torch.zeros(len(sets), device=dev)
        self.z = torch.zeros(len(self.budgets), device=dev)
        self.umec_step_count = 0
        self.inner_step_count = 0
        self._fixed: Optional[FixedArchitecture] = None
        self._scale: Optional[torch.Tensor] = None
        self.feature_mask = FeatureMask()
        # the tensors each parameter-dimension penalty reaches: {id(param): (param, [(set, member)])}
        self._slots: Dict[int, Tuple[torch.Tensor, list]] = {}
        for li, gs in enumerate(sets):
            for m in gs.members:
                self._slots.setdefault(id(m.param), (m.param, []))[1].append((li, m))
        self._prox_param = sets[0].members[0].param
        try:
            self.score_kind = ScoreKind(self.config.score)
        except ValueError:
            known = [k.value for k in ScoreKind]
            raise ValueError(f"score must be one of {known}, got {self.config.score!r}") from None
        self.s_step = SStep(self.config.s_step)
        self._target: Optional[torch.Tensor] = None  # the conditional step's target counts
        self.budgets_met = True  # set by finalize()
        kind = self.score_kind
        self.stats: Optional[ActivationStats] = (
            ActivationStats(self.spec.watch, centered=kind is ScoreKind.CENTERED)
            if kind in (ScoreKind.ACTIVATION, ScoreKind.CENTERED) and self.spec.watch else None
        )
        self._moments: Optional[Dict[str, torch.Tensor]] = None
        self.importance: Optional[ImportanceTracker] = (
            ImportanceTracker([gs.gate for gs in sets], fisher=[kind.fisher_of(gs.kind == FEATURES) for gs in sets],
                              fisher_rows=self.config.fisher_rows or None) if kind.folds_mean else None
        )
        self._holdout: Optional[Tuple[Callable[[], Iterable[Any]], Callable[[Any], torch.Tensor]]] = None
        self._holdout_scores: Optional[List[torch.Tensor]] = None
        if holdout is not None:
            self.attach_holdout(holdout)

    # ------------------------------------------------------------------ read-only views
    @property
    def phase(self) -> str:
        """``"search"`` before :meth:`finalize`, ``"fixed"`` after."""
        return "fixed" if self._fixed is not None else "search"

    @property
    def masks(self) -> Optional[PruningMasks]:
        """The fixed architecture (after :meth:`finalize` / :meth:`set_masks`), else ``None``."""
        return None if self._fixed is None else self._fixed.masks

    @property
    def allocator(self) -> BudgetAllocator:
        """The budgets' evaluation and the hard-pruning rules (:mod:`.allocation`)."""
        return self._alloc

    @property
    def target_allocator(self) -> BudgetAllocator:
        """The allocator of the conditional step's target (float64 resource evaluation)."""
        return self._target_alloc

    @property
    def budget_fractions(self) -> List[float]:
        """Each budget as a fraction of the dense model's resource (``B_b``), in budget order."""
        return list(self._alloc.budget_fractions)

    @property
    def set_sizes(self) -> torch.Tensor:
        """``[S]`` groups per set (``n_l``)."""
        return self._n.clone()

    @property
    def max_counts(self) -> torch.Tensor:
        """``[S]`` upper bound of ``s``: ``n_l - min_keep_l``."""
        return self._s_max.clone()

    @property
    def penalty_scale(self) -> Optional[torch.Tensor]:
        """``[S]`` the per-set unit ``T_l`` of the penalty (total score at the first UMEC step);
        ``None`` before it. Set it through :meth:`load_umec_state_dict` (``"scale"``)."""
        return None if self._scale is None else self._scale.clone()

    @property
    def keep_multipliers(self) -> Dict[torch.Tensor, torch.Tensor]:
        """``{param: 0/1 multiplier}`` applied after every step in the fixed phase (empty before)."""
        return {} if self._fixed is None else dict(self._fixed.keep)

    def pruned_counts(self, s: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``[S]`` the hard counts ``min(ceil(s), n_l - min_keep_l)`` of ``s`` (default: the current ``s``)."""
        return self._ceil_s(self.s if s is None else s)

    def group_order(self) -> SetOrder:
        """Every set's groups in ascending score order, at the current weights and statistics."""
        return SetOrder.of(self._scores())

    # ------------------------------------------------------------------ helpers
    def conditional_target(self, order: Optional[SetOrder] = None) -> torch.Tensor:
        """``[S]`` the conditional step's target: the greedy budget-feasible counts at ``order``
        (default: the current scores, each set in its penalty unit), in float64. If the budgets
        cannot be met in the sets' score order, the counts of the least violation the order
        allows (:attr:`budgets_met` then turns ``False`` at :meth:`finalize`)."""
        if order is None:
            scores = self._scores()
            unit = self._scale if self._scale is not None else self._penalty_unit(scores)
            order = SetOrder.of([sc / unit[i] for i, sc in enumerate(scores)])
        zero = torch.zeros(len(self.s), dtype=torch.float64, device=self.device)
        return self._target_alloc.remove(zero, order, rule="cost", chunk=TARGET_CHUNK, strict=False).to(self.s)


    def _prox_lr(self) -> float:
        if self.config.prox_lr is not None:
            return self.config.prox_lr
        for g in self.param_groups:
            if any(p is self._prox_param for p in g["params"]):
                return float(g["lr"])
        return float(next(iter(self.param_groups))["lr"])

    def attach_holdout(self, batches: Callable[[], Iterable[Any]],
                       forward: Optional[Callable[[Any], torch.Tensor]] = None) -> None:
        """Validation batches for the ``holdout`` score.

        Args:
            batches: returns a fresh iterable of this rank's validation batches (torchrec
                ``Batch``: ``dense_features``, ``sparse_features``, ``labels``); every rank
                must yield the same number (the sharded tables' forward is collective).
            forward: the logits of a batch (default: the DLRM inside the model, called below
                any DDP wrapper, on the feature-masked batch).
        """
        if forward is None:
            from umec_torchrec.models import find_dlrm

            dlrm = find_dlrm(self.model)

            def forward(b: Any) -> torch.Tensor:
                b = self.feature_mask(b)
                return dlrm(b.dense_features.to(self.device), b.sparse_features.to(self.device))
        self._holdout = (batches, forward)

    def refresh_holdout(self) -> None:
        """Recompute the ``holdout`` scores (summed over ranks' shares, identical on every rank)."""
        if self._holdout is None:
            raise ValueError(f"score={self.score_kind.value!r} needs validation batches: pass "
                             "UMECOptimizer(..., holdout=lambda: valid_batches) or call attach_holdout(...), "
                             "or choose a training-batch score (UMECConfig(score='fisher'))")
        batches, forward = self._holdout
        stats = self.importance.synced() if self.importance is not None else []
        # mixed, shrunk: only the feature set is measured here (its units take the training
        # Fisher), so no backward pass to the unit gates
        gates = [gs.gate if self.score_kind.measures(gs.kind == FEATURES) else None for gs in self.spec.sets]
        was = self.model.training
        self.model.eval()
        try:
            got = holdout_loss_sums(forward, batches(), lambda b: b.labels, gates, [st.mean for st in stats])
        finally:
            self.model.train(was)
        # sums, squares and rows over ranks, then the mean and the clamp: any split of the rows agrees
        f64 = torch.float64
        sizes = [gs.size for gs in self.spec.sets]
        flat = torch.cat([torch.zeros(n, dtype=f64, device=self.device) if g is None else g.to(self.device, f64)
                          for part in (got.sums, got.squares) for n, g in zip(sizes, part)]
                         + [torch.tensor([float(got.rows)], dtype=f64, device=self.device)])
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(flat)
        n = flat[-1].clamp(min=1.0)
        mean, sq = (flat[:-1] / n).split([sum(sizes), sum(sizes)])
        scores = list(mean.split(sizes))
        if self.score_kind is ScoreKind.SHRUNK:  # the measured features shrunk toward their Fisher
            se2 = list(((sq - mean.square()).clamp(min=0.0) / n).split(sizes))
            for i, (gs, st) in enumerate(zip(self.spec.sets, stats)):
                if gs.kind == FEATURES and st.fisher is not None:
                    scores[i] = shrink_toward(scores[i], se2[i], st.fisher.to(self.device, f64))
        scores = torch.cat(scores).clamp(min=0.0).float()
        self._holdout_scores = list(scores.split(sizes))

    def _sync_moments(self) -> None:
        """Refresh the activation statistics, identical on every rank (one all-reduce)."""
        if self.stats is not None:
            self._moments = self.stats.moments()
        if self.importance is not None:
            self.importance.synced()

    def _scores(self) -> List[torch.Tensor]:
        kind = self.score_kind
        held: Optional[List[torch.Tensor]] = None
        if kind.needs_holdout:
            if self._holdout_scores is None:
                self.refresh_holdout()
            assert self._holdout_scores is not None
            held = [sc.clone() for sc in self._holdout_scores]
            if kind is ScoreKind.HOLDOUT:
                return held
        if kind.fisher:
            assert self.importance is not None
            out = [torch.zeros(gs.size, device=self.device) if st.fisher is None else st.fisher.clone()
                   for gs, st in zip(self.spec.sets, self.importance.stats)]
            if held is not None:  # mixed, shrunk: the feature set measured on validation batches
                out = [h if kind.measures(gs.kind == FEATURES) else f for gs, f, h in zip(self.spec.sets, out, held)]
            return out
        cache: Dict = {}
        return [gs.scores(cache, self._moments) for gs in self.spec.sets]

    def _penalty_unit(self, scores: List[torch.Tensor]) -> torch.Tensor:
        """``[S]`` unit of each set's penalty: its total score for the norm-based kinds; the
        total over all sets for the loss-scale kinds, so that sets trade on one scale."""
        tot = torch.stack([sc.abs().sum() for sc in scores])  # holdout scores may be negative
        if self.score_kind.loss_scale:
            tot = tot.sum().expand_as(tot).clone()
        return tot.clamp(min=1e-12)

    def _ceil_s(self, s: torch.Tensor) -> torch.Tensor:
        return self._alloc.counts_of(s)

    # ------------------------------------------------------------------ the step
    def step(self, closure: Any = None) -> None:
        """Wrapped optimizer step, then the UMEC step (search) or the re-masking (fixed)."""
        super().step(closure)
        self.inner_step_count += 1
        if self._fixed is not None:
            self._fixed.apply_()
        elif self.inner_step_count > self.config.warmup_steps:
            self.umec_step()
        if self.config.check_every and self.inner_step_count % self.config.check_every == 0:
            self.check_consistency()

    @torch.no_grad()
    def umec_step(self) -> None:
        """One prox / s / y / z update (Algorithm 1, lines 1-5, after the SGD part)."""
        cfg = self.config
        lr = self._prox_lr()
        self._sync_moments()
        if self.score_kind.needs_holdout and self.umec_step_count % cfg.holdout_every == 0:
            self.refresh_holdout()
        scores = self._scores()
        if self._scale is None:  # fixed per-set unit of the penalty (see the class docstring)
            self._scale = self._penalty_unit(scores)
        inv = 1.0 / self._scale
        c = self._ceil_s(self.s)
        sel = [p.to(sc.dtype) for p, sc in zip(SetOrder.of(scores).pruned(c), scores)]

        # 1. prox on the selected groups: w / (1 + 2 lr sum of the penalties reaching w)
        for p, slots in self._slots.values():
            pen = None
            for li, m in slots:
                v = self.y[li] * (sel[li] if m.incidence is None else m.incidence @ sel[li])
                shape = [1] * p.dim()
                shape[m.dim] = -1
                v = v.view(shape)
                pen = v if pen is None else pen + v
            p.div_(1.0 + 2.0 * lr * pen)
            flush_subnormal_(p)

        # 2. s, on the post-prox scores
        order = SetOrder.of([sc * inv[i] for i, sc in enumerate(self._scores())])
        if self.s_step is SStep.CONDITIONAL:
            if self._target is None or self.umec_step_count % cfg.target_every == 0:
                self._target = self.conditional_target(order)
            cap = cfg.s_lr * self._n
            self.s = torch.minimum((self.s + torch.clamp(self._target - self.s, -cap, cap)).clamp(min=0.0),
                                   self._s_max)
        else:
            evals = self._alloc.neighbours(c, order)  # R(s^t) and its one-more-group neighbours
            d_res = evals[1:] - evals[0:1]  # [S, nb], <= 0
            nxt = order.score_at(c, 0)  # the next group's score
            grad = self.y * nxt + d_res @ self.z
            frac = self.s / self._n - cfg.s_lr * torch.clamp(grad * self._n, -1.0, 1.0)
            self.s = torch.minimum((frac * self._n).clamp(min=0.0), self._s_max)
            # 4. z ascent on R(s^t) - B
            self.z = (self.z + cfg.z_lr * (evals[0] - self._B)).clamp(min=0.0)

        # 3. y ascent on the least-s norms at the new s
        c_new = self._ceil_s(self.s)
        prefix = torch.cat([order.sorted.new_zeros(len(c_new), 1), torch.cumsum(order.sorted, 1)], dim=1)
        least = prefix.gather(1, c_new.long()[:, None])[:, 0]  # ||W_l||^2_{ceil(s_l), 2} / T_l
        self.y = (self.y + cfg.y_lr * least).clamp(min=0.0)
        # one host sync per step: a non-finite score or dual reaches s, y or z within this step
        # (NaN propagates through the s step, the y ascent and the clamps), before s becomes an index
        if not bool(torch.isfinite(torch.cat([self.s, self.y, self.z])).all()):
            raise NonFiniteError(self.inner_step_count, "UMEC state", "group scores or s / y / z")
        self.umec_step_count += 1

    # ------------------------------------------------------------------ reading the state
    @torch.no_grad()
    def current_masks(self) -> PruningMasks:
        """The hard decision at the current ``s`` (the ``ceil(s)`` least-norm groups), without
        the budget repair of :meth:`finalize`. Host sync."""
        if self._fixed is not None:
            return self._fixed.masks
        return masks_from_pruned(self.spec, self.group_order().pruned(self._ceil_s(self.s)))

    @torch.no_grad()
    def resource_fractions(self, masks: Optional[PruningMasks] = None) -> Dict[str, float]:
        """Each budgeted resource, as a fraction of dense, for ``masks`` (default: current)."""
        fr = self._alloc.fractions_of_masks(masks or self.current_masks())
        return {b.resource: float(f) for b, f in zip(self.budgets, fr)}

    def budget_report(self) -> Dict[str, Dict[str, float]]:
        """``{resource: {"fraction", "budget"}}`` at the current hard decision (host sync)."""
        fr = self.resource_fractions()
        return {b.resource: {"fraction": fr[b.resource], "budget": f}
                for b, f in zip(self.budgets, self.budget_fractions)}

    # ------------------------------------------------------------------ hard pruning
    @torch.no_grad()
    def finalize(self, zero_tables: bool = True) -> PruningMasks:
        r"""Hard-prune with the rules of :mod:`.allocation`, on the current scores ``sigma``:

        1. remove the ``c = ceil(s)`` least-scored groups of each set;
        2. **repair**: if a budget is violated, move every set the same (smallest sufficient,
           by bisection) fraction ``t`` of the way to its bound, ``c + ceil(t (c_max - c))``;
        3. **give-back**: while every budget holds, restore the strongest pruned group with
           the most score per unit of resource,
           ``argmax_l sigma_l,(c_l - 1) / (mean(sigma_l) sum_b [F_b(c - e_l) - F_b(c)])``,
           so the budgets are met to within one group.

        Pruned weights become exact zeros and stay zero after every later step;
        pruned features are dropped from the input (:attr:`feature_mask`). Sets
        :attr:`repair_groups`, :attr:`restored_groups` and :attr:`budgets_met` (``False`` when
        even the bound of every set misses a budget in the sets' score order). Returns the masks.
        Runs on every rank with identical results (the dense weights are replicated).
        """
        if self._fixed is not None:
            return self._fixed.masks
        self._sync_moments()
        scores = self._scores()
        order = SetOrder.of(scores)
        c = self._ceil_s(self.s)
        mean_score = torch.stack([sc.abs().mean().clamp(min=1e-30) for sc in scores])
        if self.score_kind.loss_scale:  # one scale for every set: the mean over all groups
            mean_score = (torch.cat(scores).abs().mean().clamp(min=1e-30)).expand_as(mean_score).clone()
        repaired = self._alloc.repair(c, order)
        self.repair_groups = int((repaired - c).sum())
        c, self.restored_groups = self._alloc.give_back(repaired, order, mean=mean_score)
        self.budgets_met = self._target_alloc.meets(c.double(), order)
        pruned = order.pruned(c)
        self.s = c.clone()
        masks = masks_from_pruned(self.spec, pruned)
        if self.score_kind.folds_mean:
            self._fold_means(pruned)
        self._fix(FixedArchitecture.of_spec(self.spec, masks, [p.to(sc.dtype) for p, sc in zip(pruned, scores)]),
                  zero_tables, strict=True)  # a model without TorchRec tables has none to zero
        return masks

    def _fold_means(self, pruned: Sequence[torch.Tensor]) -> None:
        """Replace every pruned group by its mean: fold ``W[:, removed] @ mean`` into the bias
        of the Linear that reads the gate (sets whose gate is ``Replace.ZERO`` are skipped)."""
        assert self.importance is not None
        for gs, pr, st in zip(self.spec.sets, pruned, self.importance.stats):
            g = gs.gate
            if g is None or g.replace is not Replace.MEAN or st.mean is None or not isinstance(g.module, nn.Linear):
                continue
            pr = pr.float()
            hit = pr if g.incidence is None else g.incidence.float() @ pr
            fold_mean_(g.module, hit > 0, st.mean)

    def set_masks(self, masks: PruningMasks, zero_tables: bool = True) -> None:
        """Fix the architecture to ``masks`` (fine-tuning): zero the pruned groups now and
        after every step, and drop pruned features from the input."""
        pr = pruned_indicators(self.spec, masks)
        self.s = torch.stack([p.sum() for p in pr]).to(self.s)
        self._fix(FixedArchitecture.of_spec(self.spec, masks, pr), zero_tables, strict=True)

    def _fix(self, fixed: FixedArchitecture, zero_tables: bool, strict: bool) -> None:
        self._fixed = fixed
        # the scores' statistics are frozen with the architecture: nothing reads them any more, and
        # unsynced per-rank updates would make the checkpoint's one replicated copy wrong on other ranks
        for tracker in (self.stats, self.importance):
            if tracker is not None:
                tracker.enabled = False
        fixed.apply_()
        self.feature_mask.set_pruned(fixed.masks.pruned_features)  # in place: earlier references stay correct
        fixed.feature_mask = self.feature_mask
        if zero_tables:
            fixed.zero_tables(self.model, strict=strict)

    # ------------------------------------------------------------------ distributed
    def state_vector(self) -> torch.Tensor:
        """s, y, z and the step counts as one float64 vector (for checks and tests)."""
        steps = torch.tensor([float(self.umec_step_count), float(self.inner_step_count)], device=self.s.device)
        return torch.cat([self.s, self.y, self.z, steps]).double()

    def check_consistency(self, group: Optional[dist.ProcessGroup] = None) -> None:
        """All-gather the UMEC state and a fingerprint of the dense weights; fail loudly if ranks
        disagree (one collective)."""
        if not (dist.is_available() and dist.is_initialized()):
            return
        world = dist.get_world_size(group)
        if world == 1:
            return
        # the state, plus one fingerprint of the replicated dense weights the groups live in:
        # scores synced over ranks (statistics, held-out losses) would hide diverged weights
        fingerprint = torch.stack([p.detach().double().pow(2).sum() for p, _ in self._slots.values()]).sum()
        v = torch.cat([self.state_vector(), fingerprint.to(self.s.device)[None]])
        if dist.get_backend(group) == "nccl" and v.device.type != "cuda":
            v = v.cuda()
        gathered = [torch.empty_like(v) for _ in range(world)]
        dist.all_gather(gathered, v, group=group)
        ref = gathered[0]
        for r, g in enumerate(gathered[1:], start=1):
            if not torch.allclose(g, ref, rtol=1e-6, atol=1e-9):
                raise UMECStateMismatch(
                    f"UMEC state differs between rank 0 and rank {r} at step {self.inner_step_count}: "
                    f"max |diff| {float((g - ref).abs().max()):.3g}; the ranks' dense weights or batches diverged"
                )

    # ------------------------------------------------------------------ checkpointing
    def umec_state_dict(self) -> Dict[str, Any]:
        """The UMEC state as plain CPU tensors, in a structure fixed by the model, the budgets and
        the config: the same keys, shapes and dtypes in every phase (a fresh optimizer, mid-search,
        after :meth:`finalize`), so ``torch.distributed.checkpoint`` loads a saved state into a
        fresh optimizer's :meth:`state_dict` (no pickled objects).

        Keys (``S`` sets of ``n_l`` groups, ``B`` budgets): ``s``, ``y``, ``scale``, ``target``
        ``[S]`` and ``z`` ``[B]`` (float); ``umec_step``, ``inner_step``, ``repair_groups``,
        ``restored_groups`` (0-d int64); ``finalized``, ``budgets_met`` (0-d bool); ``pruned``
        ``{set: [n_l] bool}`` (the fixed architecture, all ``False`` before it);
        ``holdout`` ``{set: [n_l]}``; ``importance`` ``{set: {"mean", "sq", "fisher"}}`` (the
        tracked statistics of each gated set, when the score uses them); ``moments`` (the
        activation statistics, when the score uses them); ``sets`` and ``budgets`` (the set names
        and budgets, UTF-8 bytes as ``uint8``, checked on load). A value not computed yet
        (``scale`` before the first UMEC step, statistics before the first batch) is all NaN.
        """
        names = [gs.name for gs in self.spec.sets]
        fixed = self._fixed
        pruned = (pruned_indicators(self.spec, fixed.masks) if fixed is not None
                  else [torch.zeros(gs.size) for gs in self.spec.sets])
        holdout = self._holdout_scores or [None] * len(names)
        state: Dict[str, Any] = {
            "s": _cpu(self.s),
            "y": _cpu(self.y),
            "z": _cpu(self.z),
            "scale": _cpu_or_nan(self._scale, self.s),
            "target": _cpu_or_nan(self._target, self.s),
            "umec_step": torch.tensor(int(self.umec_step_count), dtype=torch.int64),
            "inner_step": torch.tensor(int(self.inner_step_count), dtype=torch.int64),
            "repair_groups": torch.tensor(int(getattr(self, "repair_groups", 0)), dtype=torch.int64),
            "restored_groups": torch.tensor(int(getattr(self, "restored_groups", 0)), dtype=torch.int64),
            "finalized": torch.tensor(fixed is not None),
            "budgets_met": torch.tensor(bool(self.budgets_met)),
            "pruned": {n: p.detach().cpu().bool() for n, p in zip(names, pruned)},
            "holdout": {n: _cpu_or_nan(h, torch.zeros(gs.size)) for n, h, gs in zip(names, holdout, self.spec.sets)},
            "sets": _text_tensor("\n".join(names)),
            "budgets": _text_tensor("\n".join(str(b) for b in self.budgets)),
        }
        if self.stats is not None:
            state["moments"] = self.stats.state_dict()
        if self.importance is not None:
            state["importance"] = _importance_state(self.importance, self.spec)
        return state

    def load_umec_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`umec_state_dict` (a fixed architecture in it is applied with
        :meth:`set_masks`, tables untouched). ``ValueError`` when it was saved for other group
        sets or budgets."""
        names = [s.name for s in self.spec.sets]
        have = _text_of(state.get("sets"))
        if have != names:
            raise ValueError(f"UMEC state is for group sets {have}, this model has {names}")
        budgets = [str(b) for b in self.budgets]
        if _text_of(state.get("budgets")) != budgets:
            raise ValueError(f"UMEC state is for budgets {_text_of(state.get('budgets'))}, not {budgets}")
        self.s = torch.as_tensor(state["s"]).to(self.s)
        self.y = torch.as_tensor(state["y"]).to(self.y)
        self.z = torch.as_tensor(state["z"]).to(self.z)
        self.umec_step_count = int(state["umec_step"])
        self.inner_step_count = int(state["inner_step"])
        self._scale = _or_none(state.get("scale"), self.s)
        self._target = _or_none(state.get("target"), self.s)
        if self.stats is not None and state.get("moments") is not None:
            self.stats.load_state_dict(state["moments"], self.device)
            self._moments = self.stats.moments(sync=False)
        if self.importance is not None and state.get("importance") is not None:
            _load_importance_state(self.importance, self.spec, state["importance"], self.device)
        holdout = state.get("holdout") or {}
        scores = [_or_none(holdout.get(n), torch.zeros((), device=self.device)) for n in names]
        self._holdout_scores = None if any(sc is None for sc in scores) else scores  # type: ignore[assignment]
        self.repair_groups = int(state.get("repair_groups", 0))
        self.restored_groups = int(state.get("restored_groups", 0))
        self.budgets_met = bool(state.get("budgets_met", True))
        if bool(state.get("finalized", False)):
            pruned = [torch.as_tensor(state["pruned"][n]) for n in names]
            s = self.s
            self._fixed = None
            self.set_masks(masks_from_pruned(self.spec, pruned), zero_tables=False)
            self.s = s
        elif self._fixed is not None:
            raise ValueError("cannot load a search-phase UMEC state into an optimizer whose architecture is "
                             "fixed (finalize() or set_masks() ran); load it into a fresh UMECOptimizer")

    def state_dict(self) -> Dict[str, Any]:
        sd = dict(super().state_dict())
        sd["umec"] = self.umec_state_dict()
        return sd

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        sd = dict(state_dict)
        umec = sd.pop("umec", None)
        super().load_state_dict(sd)
        if umec is not None:
            self.load_umec_state_dict(umec)


def _cpu(t: torch.Tensor) -> torch.Tensor:
    return t.detach().cpu().clone()


def _cpu_or_nan(t: Optional[torch.Tensor], like: torch.Tensor) -> torch.Tensor:
    """``t`` on the CPU, or an all-NaN tensor shaped and typed like ``like`` when ``t`` is ``None``."""
    if t is None:
        return torch.full(like.shape, float("nan"), dtype=like.dtype)
    return t.detach().to("cpu", like.dtype).clone()


def _or_none(t: Any, like: torch.Tensor) -> Optional[torch.Tensor]:
    """The inverse of :func:`_cpu_or_nan`: ``None`` for a missing or all-NaN tensor, else ``t``
    on ``like``'s device and dtype."""
    if t is None:
        return None
    t = torch.as_tensor(t)
    if t.numel() and bool(torch.isnan(t.float()).all()):
        return None
    return t.to(like.device, like.dtype)


def _text_tensor(text: str) -> torch.Tensor:
    """UTF-8 bytes of ``text`` as a ``uint8`` tensor (a plain-tensor label in a checkpoint)."""
    return torch.tensor(list(text.encode("utf-8")), dtype=torch.uint8)


def _text_of(t: Any) -> List[str]:
    """The lines of a :func:`_text_tensor` (``[]`` for ``None`` or an empty text)."""
    if t is None:
        return []
    text = bytes(torch.as_tensor(t).to(torch.uint8).tolist()).decode("utf-8")
    return text.split("\n") if text else []


def _gate_widths(spec: GroupSpec) -> List[Optional[Tuple[int, int]]]:
    """``(C, G)`` per set: the gate's input columns and groups (``None`` for a set without a gate)."""
    out: List[Optional[Tuple[int, int]]] = []
    for gs in spec.sets:
        g = gs.gate
        out.append(None if g is None else (int(g.incidence.shape[0]) if g.incidence is not None else gs.size, gs.size))
    return out


def _importance_state(tracker: ImportanceTracker, spec: GroupSpec) -> Dict[str, Dict[str, torch.Tensor]]:
    """``{set: {"mean": [C], "sq": [C], "fisher": [G]}}`` for every gated set (``sq`` / ``fisher``
    only when tracked); a statistic not measured yet is all NaN."""
    out: Dict[str, Dict[str, torch.Tensor]] = {}
    for gs, st, cg, fisher in zip(spec.sets, tracker.stats, _gate_widths(spec), tracker.track_fisher):
        if cg is None:
            continue
        c, g = cg
        d = {"mean": _cpu_or_nan(st.mean, torch.zeros(c))}
        if tracker.track_sq:
            d["sq"] = _cpu_or_nan(st.sq, torch.zeros(c))
        if fisher:
            d["fisher"] = _cpu_or_nan(st.fisher, torch.zeros(g))
        out[gs.name] = d
    return out


def _load_importance_state(tracker: ImportanceTracker, spec: GroupSpec, state: Mapping[str, Any],
                           device: torch.device) -> None:
    """Restore :func:`_importance_state` into ``tracker``."""
    like = torch.zeros((), device=device)
    for gs, st, cg in zip(spec.sets, tracker.stats, _gate_widths(spec)):
        d = state.get(gs.name) if cg is not None else None
        for k in ("mean", "sq", "fisher"):
            setattr(st, k, None if d is None else _or_none(d.get(k), like))
