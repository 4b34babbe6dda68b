"""The methods of ``umec bench quality``, one function each, registered by name.

A method takes the seed's :class:`~umec_torchrec.bench.quality.context.SeedContext`, the
budget strings (``["flops=0.3"]``) and the budget, compresses a fresh copy of the dense
model and fine-tunes it, and returns a :class:`~umec_torchrec.bench.quality.context.MethodResult`.
The runner checks the budget and evaluates. Equal training after the dense model (``C`` =
compress epochs, ``F`` = fine-tune epochs):

========================  ===============================================================
method                    after the dense model
========================  ===============================================================
``umec``                  ``C`` epochs of UMEC's primal-dual search, hard prune, ``F`` fine-tune
``umec_auto``             ``umec`` once per score kind of ``auto_scores``; keeps the one with
                          the best *validation* AUC (extra compute: one search per kind)
``umec_rewind``           UMEC's masks (same search) applied to the *dense* weights, then
                          ``C + F`` fine-tune like the one-shot methods (the default ``umec finetune``)
``group_lasso``           ``C`` epochs with the group L2,1 prox, threshold to budget, ``F`` fine-tune
``magnitude``             one-shot: least-norm groups to budget, then ``C + F`` fine-tune
``random``                one-shot: random groups to budget, then ``C + F`` fine-tune
``uniform``               one-shot: every layer narrowed by one factor, then ``C + F`` fine-tune
``taylor``                one-shot: group Fisher of mean replacement (one training pass, every
                          set, one loss scale), removed by least Fisher per unit of the budgeted
                          resource (one global ranking), means folded into the biases, ``C + F``
``permutation``           one-shot: features by the validation log-loss increase when a
                          feature's columns are shuffled across the batch; units (joint mode)
                          by weight norm; ``C + F`` fine-tune
``shark``                 one-shot: features by SHARK's first-order Taylor ``|E[g . x]|`` of the
                          pooled embedding (one training pass); units by weight norm; ``C + F``
========================  ===============================================================

With ``retrain_from_scratch`` (``--retrain-from-scratch``, the ERASE protocol) every method's
training after its selection is replaced by :func:`~umec_torchrec.bench.quality.context.finetune`'s
retraining of the kept architecture from the dense model's seeded init for the dense epochs.
The score passes of ``taylor`` / ``shark`` / ``permutation`` are not training (no step is taken).

Adding a method::

    @register_method("my_method")
    def my_method(s, budgets, budget):
        dmp, opt = s.load_dense()
        spec = s.spec(dmp)
        masks = budget_masks(spec, budgets, my_scores(spec))
        dmp, mopt, n = finetune(s, dmp, opt, masks, [(1, s.cfg.compress_epochs), (2, s.cfg.finetune_epochs)])
        return MethodResult(dmp, mopt, spec, masks, n)
"""

from __future__ import annotations

from typing import Callable, Dict, List, Tuple

from umec_torchrec.baselines import (
    GroupLassoOptimizer,
    budget_masks,
    fold_pruned_means_,
    permutation_field_scores,
    random_scores,
    shark_field_scores,
    taylor_scores,
    uniform_width_masks,
    weight_scores,
)
from umec_torchrec.bench.quality.context import MethodResult, SeedContext, finetune
from umec_torchrec.stages.compress import attach_validation
from umec_torchrec.train.fit import fit
from umec_torchrec.umec.optimizer import UMECConfig, UMECOptimizer

__all__ = ["METHODS", "MethodFn", "register_method", "get_method"]

#: ``fn(seed_context, budget_strings, budget) -> MethodResult``
MethodFn = Callable[[SeedContext, List[str], float], MethodResult]
#: name -> method, in registration order (the order of the reports)
METHODS: Dict[str, MethodFn] = {}


def register_method(name: str) -> Callable[[MethodFn], MethodFn]:
    """Decorator: register ``fn`` as method ``name`` (a name may be registered once)."""
    def deco(fn: MethodFn) -> MethodFn:
        if name in METHODS:
            raise ValueError(f"method {name!r} is already registered")
        METHODS[name] = fn
        return fn
    return deco


def get_method(name: str) -> MethodFn:
    """The method registered as ``name``; ``ValueError`` naming the known ones otherwise."""
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; known: {', '.join(METHODS)}") from None


def _one_shot(s: SeedContext, dmp, opt, spec, masks, extra=None) -> MethodResult:
    """Fine-tune ``masks`` on the dense weights for ``C + F`` epochs."""
    dmp, mopt, n = finetune(s, dmp, opt, masks, [(1, s.cfg.compress_epochs), (2, s.cfg.finetune_epochs)])
    return MethodResult(dmp, mopt, spec, masks, n, extra or {})


def _umec_search(s: SeedContext, budgets: List[str], umec_cfg: UMECConfig):
    """``C`` epochs of UMEC's search from the dense model; returns ``(dmp, opt, spec, masks, steps, extra)``."""
    dmp, opt = s.load_dense()
    spec = s.spec(dmp)
    umec = UMECOptimizer(opt, dmp, budgets, umec_cfg, groups=spec)
    attach_validation(umec, s.score_valid, s.cfg.batch_size, s.ctx)
    st = fit(dmp, umec, s.train, s.post_tc(1, s.cfg.compress_epochs), s.ctx, progress=False,
             batch_transform=lambda b: umec.feature_mask(b))
    masks = umec.finalize()
    extra = {"repair": umec.repair_groups, "restored": umec.restored_groups, "s": umec.s.tolist(),
             "score": umec_cfg.score}
    s.log(f"    umec ({umec_cfg.score}): search ended at {umec.budget_report()}; finalize pruned "
          f"{umec.repair_groups} more groups, gave back {umec.restored_groups}")
    if umec.stats is not None:
        umec.stats.remove()
    s.searches[_search_key(budgets, umec_cfg)] = (masks, int(st["steps"]), dict(extra))
    return dmp, opt, spec, masks, int(st["steps"]), extra


def _search_key(budgets: List[str], umec_cfg: UMECConfig) -> Tuple[Tuple[str, ...], str]:
    """What makes two searches of one seed the same (:attr:`SeedContext.searches`)."""
    return tuple(budgets), repr(umec_cfg)


def _umec_continue(s: SeedContext, budgets: List[str], umec_cfg: UMECConfig) -> MethodResult:
    dmp, opt, spec, masks, steps, extra = _umec_search(s, budgets, umec_cfg)
    dmp, mopt, n = finetune(s, dmp, opt, masks, [(2, s.cfg.finetune_epochs)])
    return MethodResult(dmp, mopt, spec, masks, steps + n, extra)


@register_method("umec")
def umec(s: SeedContext, budgets: List[str], budget: float) -> MethodResult:
    """UMEC's search, hard prune, fine-tune from the search's weights."""
    return _umec_continue(s, budgets, UMECConfig(**s.cfg.umec))


@register_method("umec_rewind")
def umec_rewind(s: SeedContext, budgets: List[str], budget: float) -> MethodResult:
    """UMEC's masks on the dense weights, fine-tuned as long as the one-shot baselines."""
    cfg = UMECConfig(**s.cfg.umec)
    found = s.searches.get(_search_key(budgets, cfg))
    if found is None:
        _, _, _, masks, steps, extra = _umec_search(s, budgets, cfg)
    else:
        masks, steps, extra = found
        s.log("    umec_rewind: the masks of umec's search (same dense model, budgets and settings)")
    dmp, opt = s.load_dense()
    r = _one_shot(s, dmp, opt, s.spec(dmp), masks, extra)
    r.steps += steps
    return r


@register_method("umec_auto")
def umec_auto(s: SeedContext, budgets: List[str], budget: float) -> MethodResult:
    """``umec`` with each score kind of ``cfg.auto_scores``; keeps the best on the validation split."""
    if s.valid is None:
        raise ValueError("umec_auto chooses on the validation split; set valid_fraction > 0")
    best, best_auc, seen, total = None, float("-inf"), {}, 0
    for kind in s.cfg.auto_scores:
        r = _umec_continue(s, budgets, UMECConfig(**{**s.cfg.umec, "score": kind}))
        v = s.evaluate_valid(r.dmp, batch_transform=r.opt.feature_mask)["auc"]
        seen[kind] = v
        total += r.steps
        if v > best_auc:
            best, best_auc = r, v
    assert best is not None
    best.extra.update({"valid_auc_by_score": seen, "steps_all_scores": total})
    s.log(f"    umec_auto: validation AUC by score {seen}; chose {best.extra['score']}")
    return best


@register_method("uniform")
def uniform(s: SeedContext, budgets: List[str], budget: float) -> MethodResult:
    """Every layer narrowed by one factor (all features kept)."""
    dmp, opt = s.load_dense()
    spec = s.spec(dmp)
    masks, factor = uniform_width_masks(spec, budgets, weight_scores(spec))
    return _one_shot(s, dmp, opt, spec, masks, {"factor": factor})


@register_method("magnitude")
def magnitude(s: SeedContext, budgets: List[str], budget: float) -> MethodResult:
    """Least-norm groups pruned to the budget (norms normalised per set)."""
    dmp, opt = s.load_dense()
    spec = s.spec(dmp)
    return _one_shot(s, dmp, opt, spec, budget_masks(spec, budgets, weight_scores(spec)))


@register_method("group_lasso")
def group_lasso(s: SeedContext, budgets: List[str], budget: float) -> MethodResult:
    """``C`` epochs with the group L2,1 prox, norm threshold to the budget, ``F`` fine-tune."""
    dmp, opt = s.load_dense()
    spec = s.spec(dmp)
    gl = GroupLassoOptimizer(opt, dmp, spec, s.cfg.lasso_lam)
    st = fit(dmp, gl, s.train, s.post_tc(1, s.cfg.compress_epochs), s.ctx, progress=False)
    extra = {"zero_groups": gl.sparsity()}
    s.log(f"    group lasso: share of exactly-zero groups per set {extra['zero_groups']}")
    masks = budget_masks(spec, budgets, weight_scores(spec))
    dmp, mopt, n = finetune(s, dmp, opt, masks, [(2, s.cfg.finetune_epochs)])
    return MethodResult(dmp, mopt, spec, masks, int(st["steps"]) + n, extra)


@register_method("random")
def random(s: SeedContext, budgets: List[str], budget: float) -> MethodResult:
    """Random groups to the budget (seeded by seed and budget)."""
    dmp, opt = s.load_dense()
    spec = s.spec(dmp)
    masks = budget_masks(spec, budgets, random_scores(spec, 7919 * s.seed + int(round(1e4 * budget))), normalize=False)
    return _one_shot(s, dmp, opt, spec, masks)


@register_method("taylor")
def taylor(s: SeedContext, budgets: List[str], budget: float) -> MethodResult:
    """One-shot Taylor/Fisher pruning: the group Fisher of mean replacement of every set over
    one pass of the training split (log-loss units, no per-set rescaling), groups removed by
    least Fisher per unit of the budgeted resource (``rule="cost"``), the removed groups'
    means folded into the consuming biases, then ``C + F`` fine-tune."""
    dmp, opt = s.load_dense()
    spec = s.spec(dmp)
    scores, means = taylor_scores(dmp, spec, s.train, s.cfg.eval_batch_size)
    masks = budget_masks(spec, budgets, scores, rule="cost", normalize=False)
    fold_pruned_means_(spec, masks, means)
    return _one_shot(s, dmp, opt, spec, masks)


@register_method("permutation")
def permutation(s: SeedContext, budgets: List[str], budget: float) -> MethodResult:
    """Features ranked by permutation importance on the *validation* split (the log-loss
    increase when a feature's gate columns are shuffled across the batch, seeded by the
    seed); in joint mode the hidden-unit sets keep their magnitude scores (each set's
    scores normalised by its mean, as ``magnitude``); then ``C + F`` fine-tune."""
    if s.valid is None:
        raise ValueError("permutation scores on the validation split; set valid_fraction > 0")
    dmp, opt = s.load_dense()
    spec = s.spec(dmp)
    scores = permutation_field_scores(dmp, spec, s.score_valid, s.cfg.eval_batch_size, seed=7919 * s.seed + 1)
    return _one_shot(s, dmp, opt, spec, budget_masks(spec, budgets, scores))


@register_method("shark")
def shark(s: SeedContext, budgets: List[str], budget: float) -> MethodResult:
    """Features ranked by SHARK's first-order Taylor importance on the training split
    (``|E_n[sum_c g_nc x_nc]|`` over the feature's gate columns, zero replacement); in joint
    mode the hidden-unit sets keep their magnitude scores; then ``C + F`` fine-tune."""
    dmp, opt = s.load_dense()
    spec = s.spec(dmp)
    scores = shark_field_scores(dmp, spec, s.train, s.cfg.eval_batch_size)
    return _one_shot(s, dmp, opt, spec, budget_masks(spec, budgets, scores))
