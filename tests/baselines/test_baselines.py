"""Baselines (uniform width, magnitude, random, group lasso): each meets its budgets under
the same resource model as UMEC. Generated models and data only (no real data)."""

from __future__ import annotations

import pytest
import torch
from torchrec.optim.keyed import KeyedOptimizerWrapper

from helpers.data import random_data
from helpers.models import small_model
from umec_torchrec.baselines import (
    GroupLassoOptimizer,
    budget_masks,
    fractions_of_masks,
    random_scores,
    uniform_width_masks,
    weight_scores,
)
from umec_torchrec.umec.allocation import kept_of_masks
from umec_torchrec.umec.groups import discover_groups
from umec_torchrec.umec.hard_prune import pruned_indicators
from umec_torchrec.umec.resources import make_resource

BUDGETS = [0.6, 0.3, 0.18]  # the toy dcn model's floor is 0.158 of dense


def _spec(kind="cat", features_only=False, seed=0):
    data = random_data(n=64, features=6, rows=30 + 0, seed=seed)
    model, _ = small_model(kind, data, seed=seed, dim=8, bottom=(24, 16), top=(32, 16, 1))
    spec = discover_groups(model, prune_bottom=not features_only, prune_top=not features_only)
    return model, spec


def _one_more_group_fits(spec, masks, budgets):
    """True if some removed group could be given back and every budget would still hold."""
    pr = pruned_indicators(spec, masks)
    kept, alive = kept_of_masks(spec, masks)
    res = [make_resource(b.split("=")[0], spec) for b in budgets]
    lim = [float(b.split("=")[1]) for b in budgets]
    for i, p in enumerate(pr):
        if not bool(p.any()):
            continue
        k = kept.clone()
        k[0, i] += 1
        a = alive
        if spec.sets[i].kind == "features":
            a = alive.clone()
            a[0, int(torch.nonzero(p)[0])] = 1.0
        if all(float(r(k, a)[0]) / r.dense_value() <= cap + 1e-9 for r, cap in zip(res, lim)):
            return True
    return False


@pytest.mark.parametrize("kind", ["cat", "dot", "dcn"])
@pytest.mark.parametrize("budget", BUDGETS)
def test_magnitude_and_random_meet_the_flops_budget_to_within_one_group(kind, budget):
    model, spec = _spec(kind)
    b = [f"flops={budget}"]
    for scores, normalize in ((weight_scores(spec), True), (random_scores(spec, 3), False)):
        masks = budget_masks(spec, b, scores, normalize=normalize)
        frac = fractions_of_masks(spec, masks, b)[0]
        assert frac <= budget + 1e-9
        assert not _one_more_group_fits(spec, masks, b)  # the budget is used up (fill step)


def test_magnitude_removes_the_least_norm_groups_first():
    model, spec = _spec()
    scores = weight_scores(spec)
    masks = budget_masks(spec, ["flops=0.3"], scores)
    pr = pruned_indicators(spec, masks)
    for sc, p in zip(scores, pr):
        if bool(p.any()) and not bool(p.all()):
            assert float(sc[p.bool()].max()) <= float(sc[~p.bool()].min())


def test_two_budgets_at_once_and_the_cost_rule():
    model, spec = _spec()
    b = ["flops=0.4", "embedding_bytes=0.5"]
    for rule in ("score", "cost"):
        masks = budget_masks(spec, b, weight_scores(spec), rule=rule)
        fl, eb = fractions_of_masks(spec, masks, b)
        assert fl <= 0.4 + 1e-9 and eb <= 0.5 + 1e-9


def test_random_groups_depend_on_the_seed_and_are_reproducible():
    model, spec = _spec()
    m1 = budget_masks(spec, ["flops=0.3"], random_scores(spec, 1), normalize=False)
    m1b = budget_masks(spec, ["flops=0.3"], random_scores(spec, 1), normalize=False)
    m2 = budget_masks(spec, ["flops=0.3"], random_scores(spec, 2), normalize=False)
    assert m1.to_dict() == m1b.to_dict()
    assert m1.to_dict() != m2.to_dict()


@pytest.mark.parametrize("budget", BUDGETS)
def test_uniform_width_keeps_every_feature_narrows_every_layer_by_one_factor(budget):
    model, spec = _spec()
    masks, factor = uniform_width_masks(spec, [f"flops={budget}"], weight_scores(spec))
    assert masks.kept_features == masks.feature_names
    assert fractions_of_masks(spec, masks, [f"flops={budget}"])[0] <= budget + 1e-9
    assert 0.0 < factor < 1.0
    for name, w in masks.layer_widths.items():
        assert len(masks.layers[name]) == max(1, round(factor * w))
    # the largest factor: a model whose every layer is one unit wider misses the budget
    kept, alive = kept_of_masks(spec, masks)
    r = make_resource("flops", spec)
    assert float(r(kept + 1.0 - (kept == r.full_kept[None, :]).float() * 0 - torch.tensor(
        [[1.0 if gs.kind == "features" else 0.0 for gs in spec.sets]]), alive)[0]) / r.dense_value() > budget


def test_uniform_width_refuses_feature_only_groups_and_unreachable_budgets():
    model, spec = _spec(features_only=True)
    with pytest.raises(ValueError, match="unit groups"):
        uniform_width_masks(spec, ["flops=0.5"])
    model, spec = _spec()
    with pytest.raises(ValueError, match="cannot meet"):
        uniform_width_masks(spec, ["flops=0.001"])
    with pytest.raises(ValueError, match="cannot be met"):
        budget_masks(spec, ["flops=0.00001"], weight_scores(spec))


def test_feature_only_selection_meets_the_budget_and_keeps_units():
    model, spec = _spec(features_only=True)
    masks = budget_masks(spec, ["flops=0.7"], weight_scores(spec))
    assert fractions_of_masks(spec, masks, ["flops=0.7"])[0] <= 0.7 + 1e-9
    assert 0 < len(masks.kept_features) < len(masks.feature_names)
    assert masks.layers == {}


def _keyed_sgd(model, lr=0.1):
    return KeyedOptimizerWrapper(dict(model.named_parameters()), lambda p: torch.optim.SGD(p, lr=lr))


def test_group_lasso_prox_zeroes_groups_and_lam_zero_is_plain_training():
    data = random_data(n=64, features=6, rows=30)
    batch = data.make_batch(torch.arange(64))
    for lam, expect_zero in ((0.0, False), (50.0, True)):
        model, _ = small_model("cat", data, seed=0, dim=8, bottom=(24, 16), top=(32, 16, 1))
        ref, _ = small_model("cat", data, seed=0, dim=8, bottom=(24, 16), top=(32, 16, 1))
        spec = discover_groups(model)
        opt = GroupLassoOptimizer(_keyed_sgd(model), model, spec, lam=lam)
        ropt = _keyed_sgd(ref)
        for _ in range(3):
            for m, o in ((model, opt), (ref, ropt)):
                loss, _ = m(batch)
                loss.backward()
                o.step()
                o.zero_grad()
        zero = opt.sparsity()
        if expect_zero:
            assert all(v > 0.5 for v in zero.values()), zero
            # a zeroed feature group is exact zeros in its over-arch columns
            assert float(spec.sets[0].scores().min()) == 0.0
        else:
            assert all(v == 0.0 for v in zero.values())
            for (n, p), (_, q) in zip(model.named_parameters(), ref.named_parameters()):
                assert torch.equal(p, q), n


def test_group_lasso_shrinks_norms_monotonically_without_gradients():
    data = random_data(n=32, features=4, rows=20)
    model, _ = small_model("cat", data, dim=8, bottom=(16, 8), top=(16, 8, 1))
    spec = discover_groups(model)
    opt = GroupLassoOptimizer(_keyed_sgd(model, lr=0.01), model, spec, lam=1.0)
    before = [gs.scores().clone() for gs in spec.sets]
    opt.prox()
    after = [gs.scores() for gs in spec.sets]
    for b, a in zip(before, after):
        assert bool((a <= b + 1e-12).all()) and bool((a < b).any())
    with pytest.raises(ValueError):
        GroupLassoOptimizer(_keyed_sgd(model), model, spec, lam=-1.0)
