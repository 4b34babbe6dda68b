"""Group-importance scores on constructed cases with a known answer (generated data only)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from umec_torchrec.umec.importance import (
    Gate,
    ImportanceTracker,
    Replace,
    ScoreKind,
    fold_mean_,
    group_contributions,
    holdout_scores,
)

D = 4


class TwoFieldModel(nn.Module):
    """Embeddings of ``F`` fields, concatenated, into a Linear-ReLU-Linear head (a cat DLRM)."""

    def __init__(self, cards, hidden=8):
        super().__init__()
        self.tables = nn.ModuleList(nn.Embedding(c, D) for c in cards)
        self.first = nn.Linear(D * len(cards), hidden)
        self.out = nn.Linear(hidden, 1)

    def forward(self, ids):
        x = torch.cat([t(ids[:, k]) for k, t in enumerate(self.tables)], dim=1)
        return self.out(torch.relu(self.first(x))).squeeze(1)


def _incidence(F):
    return torch.eye(F).repeat_interleave(D, dim=0)


def _train(model, ids, y, steps=300, lr=0.05):
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.binary_cross_entropy_with_logits(model(ids), y).backward()
        opt.step()


def _fisher(model, ids, y, kind_fisher=True, batches=5):
    tracker = ImportanceTracker([Gate(model.first, _incidence(len(model.tables)))], momentum=0.5, fisher=kind_fisher,
                                second_moment=True)
    for chunk_ids, chunk_y in zip(ids.chunk(batches), y.chunk(batches)):
        model.zero_grad()
        nn.functional.binary_cross_entropy_with_logits(model(chunk_ids), chunk_y).backward()
    tracker.remove()
    return tracker.stats[0]


def _data(n=2000, seed=0):
    g = torch.Generator().manual_seed(seed)
    sig = torch.randint(0, 4, (n,), generator=g)
    const = torch.zeros(n, dtype=torch.long)
    y = (torch.rand(n, generator=g) < torch.tensor([0.1, 0.3, 0.6, 0.9])[sig]).float()
    return torch.stack([sig, const], dim=1), y


def test_constant_field_scores_zero():
    torch.manual_seed(0)
    ids, y = _data()
    model = TwoFieldModel([4, 1])
    _train(model, ids, y, steps=100)
    st = _fisher(model, ids, y)
    var_score = (st.var[None, :] * model.first.weight.pow(2)).sum(0) @ _incidence(2)
    assert st.fisher[1].item() < 1e-6 * st.fisher[0].item()
    assert var_score[1].item() < 1e-5 * var_score[0].item()
    assert st.fisher[0].item() > 1e-4 and var_score[0].item() > 1e-4
    # the uncentered second moment calls the constant field important: the defect this fixes
    act = (st.sq[None, :] * model.first.weight.pow(2)).sum(0) @ _incidence(2)
    assert act[1].item() > 1e-3


def test_rescaling_a_table_leaves_scores_unchanged():
    torch.manual_seed(0)
    ids, y = _data()
    model = TwoFieldModel([4, 1])
    _train(model, ids, y, steps=100)
    before = _fisher(model, ids, y)
    b_var = (before.var[None, :] * model.first.weight.pow(2)).sum(0) @ _incidence(2)
    b_weight = model.first.weight[:, :D].pow(2).sum().item()
    a = 7.0
    with torch.no_grad():
        model.tables[0].weight.mul_(a)
        model.first.weight[:, :D].div_(a)
    after = _fisher(model, ids, y)
    a_var = (after.var[None, :] * model.first.weight.pow(2)).sum(0) @ _incidence(2)
    torch.testing.assert_close(after.fisher, before.fisher, rtol=1e-4, atol=1e-9)
    torch.testing.assert_close(a_var, b_var, rtol=1e-4, atol=1e-9)
    # the plain weight norm is fooled by the same rescaling (it falls by a^2)
    assert model.first.weight[:, :D].pow(2).sum().item() == pytest.approx(b_weight / (a * a), rel=1e-4)


def test_memorising_field_scores_below_signal_on_holdout():
    """Field 0 carries signal; field 1 has a unique id per training row and random labels.
    The model memorises the training labels through field 1; on held-out rows (whose
    field-1 ids hit other rows' memorised embeddings, as hashed ids do) removing field 1
    costs nothing and removing field 0 costs a lot."""
    torch.manual_seed(0)
    n = 1500
    g = torch.Generator().manual_seed(1)
    sig = torch.randint(0, 4, (2 * n,), generator=g)
    p = torch.tensor([0.15, 0.35, 0.65, 0.85])[sig]
    y = (torch.rand(2 * n, generator=g) < p).float()
    mem = torch.cat([torch.arange(1, n + 1), torch.randint(1, n + 1, (n,), generator=g)])
    ids = torch.stack([sig, mem], dim=1)
    model = TwoFieldModel([4, n + 1], hidden=16)
    _train(model, ids[:n], y[:n], steps=400, lr=0.05)
    train_st = _fisher(model, ids[:n], y[:n])
    w = model.first.weight.detach().pow(2).sum(0) @ _incidence(2)
    assert w[1] > w[0]  # the weight norm prefers the memoriser
    batches = list(zip(ids[n:].chunk(3), y[n:].chunk(3)))
    head = lambda x: model.out(torch.relu(model.first(x))).squeeze(-1)  # noqa: E731
    measured = Gate(model.first, _incidence(2), downstream=head)
    (hold,) = holdout_scores(lambda b: model(b[0]), batches, lambda b: b[1], [measured], [train_st.mean])
    assert hold[1] < 0.05 * hold[0]
    assert hold[0] > 0.1
    # shrunk: the measurement's standard error from the same rows, shrunk toward
    # the training Fisher, which is fooled (it sees the memorised training labels); the
    # measurement is precise here, so field 1 stays far below field 0
    from umec_torchrec.umec.importance import holdout_loss_sums, shrink_toward

    got = holdout_loss_sums(lambda b: model(b[0]), batches, lambda b: b[1], [measured], [train_st.mean])
    mean = got.sums[0] / got.rows
    se2 = (got.squares[0] / got.rows - mean.square()).clamp(min=0) / got.rows
    torch.testing.assert_close(mean.clamp(min=0), hold)
    shrunk = shrink_toward(mean, se2, train_st.fisher.double())
    assert shrunk[1] < 0.05 * shrunk[0]
    assert train_st.fisher[1] > 0.2 * train_st.fisher[0]  # the prior alone rates the memoriser
    # the measured loss increase of field 0 equals a direct evaluation
    x = torch.cat([model.tables[0](ids[n:, 0]), model.tables[1](ids[n:, 1])], dim=1).detach()
    bce = nn.functional.binary_cross_entropy_with_logits
    x0 = x.clone()
    x0[:, :D] = train_st.mean[:D]
    direct = (bce(head(x0), y[n:]) - bce(head(x), y[n:])).item()
    assert hold[0].item() == pytest.approx(direct, rel=1e-3, abs=1e-6)
    gate = Gate(model.first, _incidence(2))
    # no parameter gradient was written by the holdout pass
    model.zero_grad(set_to_none=True)
    holdout_scores(lambda b: model(b[0]), batches, lambda b: b[1], [gate], [train_st.mean])
    assert all(p.grad is None for p in model.parameters())


def test_fold_mean_replaces_removed_columns_by_their_mean():
    torch.manual_seed(0)
    lin = nn.Linear(6, 3)
    x = torch.randn(50, 6)
    x[:, 2] = 1.5  # constant column
    mean = x.mean(0)
    removed = torch.tensor([False, False, True, True, False, False])
    want = lin(torch.where(removed[None, :], mean[None, :], x))
    fold_mean_(lin, removed, mean)
    torch.testing.assert_close(lin(x), want)
    assert lin.weight[:, removed].abs().sum() == 0


def test_contributions_shapes_and_zero_replacement():
    x = torch.tensor([[1.0, 2.0, 3.0]])
    g = torch.tensor([[0.5, -1.0, 2.0]])
    inc = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])  # column 1 is shared
    t = group_contributions(x, g, inc, None)
    torch.testing.assert_close(t, torch.tensor([[-(0.5 - 2.0), -(-2.0 + 6.0)]]))
    t_mean = Gate(nn.Identity(), inc, Replace.MEAN).contributions(x, g, x[0])
    assert t_mean.abs().sum() == 0


def test_score_kind_properties():
    assert ScoreKind("fisher").loss_scale and ScoreKind.HOLDOUT.loss_scale
    assert not ScoreKind.CENTERED.loss_scale and ScoreKind.CENTERED.folds_mean
    assert not ScoreKind.WEIGHT.folds_mean and not ScoreKind.ACTIVATION.folds_mean
    with pytest.raises(ValueError):
        ScoreKind("nonsense")


# --- inside UMECOptimizer, on generated DLRMs -------------------------------------------------
def _umec_run(kind, score, budget="flops=0.4"):
    from helpers.data import random_data
    from helpers.models import small_model
    from umec_torchrec.umec.optimizer import UMECConfig, UMECOptimizer

    data = random_data(n=768, features=5, rows=30, dense=6, seed=1)
    model, cfg = small_model(kind, data, seed=0)
    opt = UMECOptimizer(torch.optim.Adam(model.parameters(), lr=0.01), model, [budget],
                        UMECConfig(score=score, s_lr=0.05))
    if ScoreKind(score).needs_holdout:
        valid = random_data(n=256, features=5, rows=30, dense=6, seed=2)
        opt.attach_holdout(lambda: valid.batches(128))
    for ep in range(3):
        for b in data.batches(128, shuffle=True, seed=0, epoch=ep):
            loss, _ = model(opt.feature_mask(b))
            loss.backward()
            opt.step()
            opt.zero_grad()
    return model, cfg, opt, data


@pytest.mark.parametrize("kind", ["cat", "dot", "dcn"])
def test_folding_replaces_pruned_groups_by_their_means(kind):
    """Generated data: after finalize with a mean-folding score, the pruned model equals the
    model before pruning with every removed group's gate columns set to their means (zero
    for the DCN feature gate); and the exported compact model equals the masked one."""
    from umec_torchrec.export import build_compact
    from umec_torchrec.export.compact import compact_config
    from umec_torchrec.export.program import CompactPredictor, ids_of
    from umec_torchrec.models import find_dlrm

    model, cfg, opt, data = _umec_run(kind, "fisher")
    dlrm = find_dlrm(model).eval()
    batch = next(iter(data.batches(256)))
    means = [st.mean for st in opt.importance.stats]
    ref_model = copy.deepcopy(dlrm)  # the model before pruning
    masks = opt.finalize()
    pruned = [torch.tensor([lab not in kept for lab in gs.labels], dtype=torch.float)
              for gs, kept in zip(opt.spec.sets, _kept_labels(opt.spec, masks))]
    assert sum(int(p.sum()) for p in pruned) > 0
    ref_sets = discover_like(ref_model, opt.spec)
    hooks = []
    for gs, pr, mean in zip(ref_sets, pruned, means):
        hit = (pr if gs.gate.incidence is None else gs.gate.incidence @ pr) > 0
        fill = torch.zeros_like(mean) if gs.gate.replace is Replace.ZERO else mean

        def hook(module, args, hit=hit, fill=fill):
            return (torch.where(hit[None, :], fill[None, :], args[0]),) + tuple(args[1:])
        hooks.append(gs.gate.module.register_forward_pre_hook(hook))
    with torch.no_grad():
        want = ref_model(batch.dense_features, batch.sparse_features).squeeze(-1)
        for h in hooks:
            h.remove()
        got = dlrm(batch.dense_features, opt.feature_mask(batch).sparse_features).squeeze(-1)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
        assert float(got.std()) > 1e-4
        compact = build_compact(dlrm, cfg, masks)
        ccfg = compact_config(cfg, masks)
        prog = CompactPredictor(compact)(batch.dense_features, ids_of(batch.sparse_features, ccfg.feature_names))
        torch.testing.assert_close(prog.squeeze(-1), got, atol=1e-5, rtol=0)


def _kept_labels(spec, masks):
    """The kept group labels of every set."""
    return [set(masks.kept_features) | ({"<dense>"} if masks.dense_kept else set()) if gs.kind == "features"
            else {str(i) for i in masks.layers[gs.name]} for gs in spec.sets]


def discover_like(model, spec):
    from umec_torchrec.umec.groups import discover_groups

    fi = spec.feature_set
    return discover_groups(model, prune_features=fi is not None, prune_dense=spec.dense_is_group).sets


@pytest.mark.parametrize("score", ["centered", "fisher", "holdout", "mixed", "shrunk"])
def test_loss_scores_meet_the_budget(score):
    """Generated data: every score kind runs inside UMEC and the budget holds after finalize."""
    model, cfg, opt, data = _umec_run("cat", score)
    masks = opt.finalize()
    assert opt.resource_fractions(masks)["flops"] <= 0.4 + 1e-6
    assert opt.penalty_scale is not None
    if ScoreKind(score).loss_scale:  # one scale for every set
        assert torch.allclose(opt.penalty_scale, opt.penalty_scale[0].expand_as(opt.penalty_scale))


def test_mixed_scores_are_holdout_for_features_and_fisher_for_units():
    """Generated data: ``mixed`` gives the feature set the measured validation scores of
    ``holdout`` and every unit set the training-batch Fisher of ``fisher``, from the same
    statistics and held-out scores."""
    from umec_torchrec.umec.groups import FEATURES

    _, _, opt, _ = _umec_run("cat", "mixed")
    got = opt._scores()
    kinds = [gs.kind for gs in opt.spec.sets]
    assert FEATURES in kinds and len(kinds) > 1
    for gs, sc, st, held in zip(opt.spec.sets, got, opt.importance.stats, opt._holdout_scores):
        assert torch.equal(sc, held if gs.kind == FEATURES else st.fisher)
        # the measured set needs no gradient hook: its Fisher is never estimated
        assert (st.fisher is None) == (gs.kind == FEATURES)
    assert "fisher" not in opt.umec_state_dict()["importance"][opt.spec.feature_set.name]
    assert ScoreKind.MIXED.needs_holdout and ScoreKind.MIXED.fisher and ScoreKind.MIXED.folds_mean
    assert not ScoreKind.FISHER.needs_holdout and not ScoreKind.HOLDOUT.fisher


def test_shrink_toward_known_answers():
    """Constructed scores: exact measurements (se = 0) are kept; measurements whose spread
    around the prior is all noise (mean (h - f)^2 <= mean se^2) become the prior; otherwise
    tau^2 = mean (h - f)^2 - mean se^2 and each score moves toward the prior by
    se^2 / (tau^2 + se^2); never below zero."""
    from umec_torchrec.umec.importance import shrink_toward

    f = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64)
    h = torch.tensor([0.0, 2.5, 3.0, 6.0], dtype=torch.float64)
    assert torch.equal(shrink_toward(h, torch.zeros(4, dtype=torch.float64), f), h)
    big = torch.full((4,), 10.0, dtype=torch.float64)  # mean (h - f)^2 = 1.3125 < 10
    assert torch.equal(shrink_toward(h, big, f), f)
    se2 = torch.tensor([0.0, 0.25, 0.5, 1.0], dtype=torch.float64)  # mean 0.4375 -> tau^2 = 0.875
    w = 0.875 / (0.875 + se2)
    torch.testing.assert_close(shrink_toward(h, se2, f), f + w * (h - f))
    assert shrink_toward(torch.tensor([-5.0, 0.0]), torch.zeros(2), torch.zeros(2)).min() == 0


@pytest.mark.parametrize("kind, blocks", [("cat", True), ("dcn", True), ("dot", False)])
def test_block_contributions_equal_the_incidence_product(kind, blocks):
    """Generated weights and inputs: the feature gates of ``cat`` and ``dcn`` are consecutive
    equal-width column blocks, so the per-group sums are a reshape-sum (O(B C), no [C, G]
    product); ``dot``'s pair columns are not, and keep the product. Both give the same ``t``."""
    from helpers.data import random_data
    from helpers.models import small_model
    from umec_torchrec.umec.groups import discover_groups

    data = random_data(n=64, features=5, rows=30, dense=6, seed=1)
    model, _ = small_model(kind, data)
    gate = discover_groups(model).feature_set.gate
    assert (gate.blocks() is not None) == blocks
    C = gate.incidence.shape[0]
    g = torch.Generator().manual_seed(0)
    x, grad, mean = torch.randn(32, C, generator=g), torch.randn(32, C, generator=g), torch.randn(C, generator=g)
    ref = group_contributions(x, grad, gate.incidence, mean if gate.replace is Replace.MEAN else None)
    torch.testing.assert_close(gate.contributions(x, grad, mean), ref, rtol=1e-5, atol=1e-5)
    assert Gate(nn.Linear(3, 2), torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])).blocks() is None  # not consecutive


def test_fisher_stride_keeps_at_most_the_cap():
    """Known answers of the row stride of the Fisher estimate."""
    from umec_torchrec.umec.importance import fisher_stride

    assert fisher_stride(128, 512) == 1 and fisher_stride(512, 512) == 1 and fisher_stride(128, None) == 1
    assert fisher_stride(2048, 512) == 4 and fisher_stride(2049, 512) == 5
    for b in (1, 7, 513, 4096, 10_000):
        assert len(range(0, b, fisher_stride(b, 512))) <= 512
    with pytest.raises(ValueError, match="fisher_rows"):
        ImportanceTracker([], fisher=True, fisher_rows=0)


def test_fisher_row_cap_is_an_estimate_of_the_same_mean():
    """Generated data whose rows come in identical pairs: every 2nd row has the same empirical
    distribution as the whole batch, so capping the Fisher at half the batch gives the same
    value; a cap of one row per batch gives a different one (the cap is in effect)."""
    torch.manual_seed(0)
    ids, y = _data(n=800, seed=3)
    ids, y = ids.repeat_interleave(2, dim=0), y.repeat_interleave(2)  # rows 2k and 2k+1 equal
    model = TwoFieldModel([4, 1])
    _train(model, ids, y, steps=50)

    def fisher(rows):
        tracker = ImportanceTracker([Gate(model.first, _incidence(2))], momentum=0.5, fisher=True, fisher_rows=rows)
        for chunk_ids, chunk_y in zip(ids.chunk(4), y.chunk(4)):  # batches of 400 rows
            model.zero_grad()
            nn.functional.binary_cross_entropy_with_logits(model(chunk_ids), chunk_y).backward()
        tracker.remove()
        return tracker.stats[0].fisher

    full, half, one = fisher(None), fisher(200), fisher(1)
    assert full is not None and float(full.abs().max()) > 0
    torch.testing.assert_close(half, full, rtol=1e-5, atol=1e-9)
    assert not torch.allclose(one, full, rtol=1e-2)
