"""One-shot loss-based scores of the baselines (Taylor/Fisher, permutation, SHARK) on
constructed cases with a known answer. Generated data and models only (no real data)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from helpers.data import random_data
from helpers.models import small_model
from umec_torchrec.baselines import (
    budget_masks,
    fold_pruned_means_,
    fractions_of_masks,
    permutation_field_scores,
    shark_field_scores,
    taylor_scores,
    weight_scores,
)
from umec_torchrec.umec.groups import discover_groups
from umec_torchrec.umec.hard_prune import pruned_indicators
from umec_torchrec.umec.importance import (
    Gate,
    Replace,
    fisher_scores,
    group_contributions,
    permutation_scores,
    shark_scores,
)

D = 4
SIGNAL, NOISE, CONST = 0, 1, 2


class FieldModel(nn.Module):
    """Embeddings of three fields, concatenated, into Linear-ReLU-Linear (a ``cat`` DLRM)."""

    def __init__(self, cards, hidden=8):
        super().__init__()
        self.tables = nn.ModuleList(nn.Embedding(c, D) for c in cards)
        self.first = nn.Linear(D * len(cards), hidden)
        self.out = nn.Linear(hidden, 1)

    def gate_input(self, ids):
        return torch.cat([t(ids[:, k]) for k, t in enumerate(self.tables)], dim=1)

    def head(self, x):
        return self.out(torch.relu(self.first(x))).squeeze(-1)

    def forward(self, ids):
        return self.head(self.gate_input(ids))


def _inc(F=3):
    return torch.eye(F).repeat_interleave(D, dim=0)


def _data(n, seed):
    """Field 0 carries the label (4 ids), field 1 is pure noise (4 ids), field 2 is constant."""
    g = torch.Generator().manual_seed(seed)
    sig = torch.randint(0, 4, (n,), generator=g)
    noise = torch.randint(0, 4, (n,), generator=g)
    y = (torch.rand(n, generator=g) < torch.tensor([0.1, 0.3, 0.7, 0.9])[sig]).float()
    return torch.stack([sig, noise, torch.zeros(n, dtype=torch.long)], dim=1), y


@pytest.fixture(scope="module")
def trained():
    torch.manual_seed(0)
    ids, y = _data(3000, 0)
    model = FieldModel([4, 4, 1])
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(200):
        opt.zero_grad()
        nn.functional.binary_cross_entropy_with_logits(model(ids), y).backward()
        opt.step()
    model.zero_grad(set_to_none=True)
    train = list(zip(ids.chunk(6), y.chunk(6)))
    vids, vy = _data(2000, 1)
    valid = list(zip(vids.chunk(4), vy.chunk(4)))
    return model, train, valid


def _gates(model):
    return [Gate(model.first, _inc(), Replace.MEAN, model.head), Gate(model.out, None, Replace.MEAN)]


def test_fisher_ranks_signal_over_noise_constant_zero_and_equals_a_direct_pass(trained):
    model, train, _ = trained
    (feat, units), (mu_f, mu_u) = fisher_scores(lambda b: model(b[0]), train, lambda b: b[1], _gates(model))
    assert feat[SIGNAL] > 10 * feat[NOISE]
    assert feat[CONST] < 1e-6 * feat[SIGNAL]
    assert feat[SIGNAL] > 1e-3
    # one pass with the means of the same pass == t computed directly with the final means
    ids = torch.cat([b[0] for b in train])
    y = torch.cat([b[1] for b in train])
    x = model.gate_input(ids).detach().requires_grad_(True)
    h = torch.relu(model.first(x))
    h.retain_grad()
    nn.functional.binary_cross_entropy_with_logits(model.out(h).squeeze(-1), y, reduction="sum").backward()
    torch.testing.assert_close(mu_f, x.detach().mean(0))
    want_f = 0.5 * group_contributions(x.detach(), x.grad, _inc(), mu_f).pow(2).mean(0)
    want_u = 0.5 * group_contributions(h.detach(), h.grad, None, h.detach().mean(0)).pow(2).mean(0)
    torch.testing.assert_close(feat, want_f, rtol=1e-4, atol=1e-8)
    torch.testing.assert_close(units, want_u, rtol=1e-4, atol=1e-8)
    torch.testing.assert_close(mu_u, h.detach().mean(0))
    # fixed means are used as given
    (feat0, _), _ = fisher_scores(lambda b: model(b[0]), train, lambda b: b[1], _gates(model),
                                  [torch.zeros_like(mu_f), None])
    want0 = 0.5 * group_contributions(x.detach(), x.grad, _inc(), None).pow(2).mean(0)
    torch.testing.assert_close(feat0, want0, rtol=1e-4, atol=1e-8)


def test_score_passes_write_no_parameter_gradient(trained):
    model, train, valid = trained
    model.zero_grad(set_to_none=True)
    fisher_scores(lambda b: model(b[0]), train, lambda b: b[1], _gates(model))
    shark_scores(lambda b: model(b[0]), train, lambda b: b[1], _gates(model))
    permutation_scores(lambda b: model(b[0]), valid, lambda b: b[1], _gates(model))
    assert all(p.grad is None for p in model.parameters())


def test_permutation_signal_above_noise_constant_exactly_zero(trained):
    model, _, valid = trained
    feat, units = permutation_scores(lambda b: model(b[0]), valid, lambda b: b[1], _gates(model), seed=3)
    assert units is None  # no downstream: not scored
    assert feat[CONST].item() == 0.0  # shuffling identical rows changes nothing
    assert feat[SIGNAL] > 0.05
    assert feat[SIGNAL] > 10 * feat[NOISE].abs()
    again, _ = permutation_scores(lambda b: model(b[0]), valid, lambda b: b[1], _gates(model), seed=3)
    torch.testing.assert_close(again, feat)  # seeded
    # equals a direct evaluation of one shuffled field
    ids, y = valid[0]
    x = model.gate_input(ids).detach()
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(3))
    xs = x.clone()
    xs[:, :D] = x[perm, :D]
    bce = nn.functional.binary_cross_entropy_with_logits
    direct = (bce(model.head(xs), y, reduction="sum") - bce(model.head(x), y, reduction="sum")).item()
    (one, _) = permutation_scores(lambda b: model(b[0]), valid[:1], lambda b: b[1], _gates(model), seed=3)
    assert one[SIGNAL].item() * len(y) == pytest.approx(direct, rel=1e-4, abs=1e-5)


def test_shark_signal_above_noise_and_matches_its_definition(trained):
    """SHARK is a first-order score: on the training data of a model at a stationary point
    (the full-batch fixture) every field's ``E[g . x]`` vanishes; part-way through training
    (as SHARK is used) the signal field stands out."""
    converged, train, _ = trained
    at_rest, _ = shark_scores(lambda b: converged(b[0]), train, lambda b: b[1], _gates(converged))
    assert float(at_rest.max()) < 1e-4
    torch.manual_seed(0)
    model = FieldModel([4, 4, 1])
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    for ids, y in train * 3:  # 18 minibatch steps
        opt.zero_grad()
        nn.functional.binary_cross_entropy_with_logits(model(ids), y).backward()
        opt.step()
    model.zero_grad(set_to_none=True)
    feat, units = shark_scores(lambda b: model(b[0]), train, lambda b: b[1], _gates(model))
    assert feat[SIGNAL] > 3 * feat[NOISE]
    assert feat[SIGNAL] > 1e-3
    ids = torch.cat([b[0] for b in train])
    y = torch.cat([b[1] for b in train])
    x = model.gate_input(ids).detach().requires_grad_(True)
    nn.functional.binary_cross_entropy_with_logits(model.head(x), y, reduction="sum").backward()
    want = ((x.grad * x.detach()) @ _inc()).mean(0).abs()
    torch.testing.assert_close(feat, want, rtol=1e-4, atol=1e-7)
    assert units is not None and units.shape == (8,)


# --- on generated DLRMs ------------------------------------------------------------------------
def _dlrm(features_only):
    data = random_data(n=512, features=5, rows=30, dense=6, seed=1)
    model, _ = small_model("cat", data, seed=0)
    spec = discover_groups(model, prune_bottom=not features_only, prune_top=not features_only)
    return model, spec, data


@pytest.mark.parametrize("features_only", [True, False])
def test_dlrm_scores_have_the_spec_shapes_meet_budgets_and_write_no_grad(features_only):
    model, spec, data = _dlrm(features_only)
    model.zero_grad(set_to_none=True)
    sc, means = taylor_scores(model, spec, data, 128)
    perm = permutation_field_scores(model, spec, data, 128, seed=0)
    shark = shark_field_scores(model, spec, data, 128)
    assert all(p.grad is None for p in model.parameters())
    assert model.training  # restored
    w = weight_scores(spec)
    for i, gs in enumerate(spec.sets):
        for s in (sc[i], perm[i], shark[i]):
            assert s.shape == (gs.size,) and bool(torch.isfinite(s).all())
        if gs.kind == "units":  # permutation and SHARK score features only
            torch.testing.assert_close(perm[i], w[i].cpu())
            torch.testing.assert_close(shark[i], w[i].cpu())
    assert float(sc[0].sum()) > 0
    cap = 0.7 if features_only else 0.4  # features only: the dense path alone costs 0.6
    b = [f"flops={cap}"]
    for scores, kw in ((sc, {"rule": "cost", "normalize": False}), (perm, {}), (shark, {})):
        m = budget_masks(spec, b, scores, **kw)
        assert fractions_of_masks(spec, m, b)[0] <= cap + 1e-9
        if features_only:
            assert len(m.kept_features) < spec.sets[0].size


def test_cost_rule_without_normalising_ranks_all_sets_on_one_scale():
    """``normalize=False`` keeps the scores' scale: multiplying the features' (loss) scores by
    a large factor keeps every feature, and dividing them drops features first."""
    model, spec, data = _dlrm(False)
    sc, _ = taylor_scores(model, spec, data, 128)
    b = ["flops=0.5"]

    def kept(factor):
        scaled = [s * factor if gs.kind == "features" else s for s, gs in zip(sc, spec.sets)]
        return len(budget_masks(spec, b, scaled, rule="cost", normalize=False).kept_features)

    assert kept(1e6) == spec.sets[0].size
    assert kept(1e-6) < kept(1e6)
    # normalised, the features' scale does not matter
    n1 = budget_masks(spec, b, [s * 1e6 if gs.kind == "features" else s for s, gs in zip(sc, spec.sets)], rule="cost")
    n2 = budget_masks(spec, b, sc, rule="cost")
    assert n1.kept_features == n2.kept_features


def test_fold_pruned_means_replaces_pruned_groups_by_their_means():
    """After folding and zeroing the pruned groups, the model equals the unpruned model with
    every pruned group's gate columns replaced by their means."""
    from umec_torchrec.models import find_dlrm
    from umec_torchrec.umec.masked_optimizer import FixedArchitecture

    model, spec, data = _dlrm(False)
    sc, means = taylor_scores(model, spec, data, 128)
    masks = budget_masks(spec, ["flops=0.4"], sc, rule="cost", normalize=False)
    ref = copy.deepcopy(find_dlrm(model)).eval()
    ref_spec = discover_groups(ref, prune_bottom=True, prune_top=True)
    hooks = []
    for gs, pr, mu in zip(ref_spec.sets, pruned_indicators(spec, masks), means):
        hit = (pr if gs.gate.incidence is None else gs.gate.incidence @ pr) > 0

        def hook(module, args, hit=hit, mu=mu):
            return (torch.where(hit[None, :], mu[None, :], args[0]),) + tuple(args[1:])
        hooks.append(gs.gate.module.register_forward_pre_hook(hook))
    fold_pruned_means_(spec, masks, means)
    fixed = FixedArchitecture.of_spec(spec, masks)
    fixed.apply_()
    dlrm = find_dlrm(model).eval()
    batch = next(iter(data.batches(256)))
    with torch.no_grad():
        want = ref(batch.dense_features, batch.sparse_features)
        got = dlrm(batch.dense_features, fixed.feature_mask(batch).sparse_features)
    for h in hooks:
        h.remove()
    assert sum(int(p.sum()) for p in pruned_indicators(spec, masks)) > 0
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
