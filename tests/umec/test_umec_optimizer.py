"""UMECOptimizer: known-answer feature selection, budgets, resume, deliberate departures
from the authors' code, errors. Synthetic data from the project's generator (known answer)
and small generated data."""

import copy

import pytest
import torch

from helpers.data import random_data
from helpers.models import small_model
from umec_torchrec.data import load_data
from umec_torchrec.models import ModelConfig, build_model
from umec_torchrec.umec.groups import discover_groups
from umec_torchrec.umec.optimizer import UMECConfig, UMECOptimizer
from umec_torchrec.umec.resources import make_resource


def train(model, opt, data, epochs, seed=0, epoch0=0, mask=None, batch_size=256, start=0):
    for ep in range(epoch0, epoch0 + epochs):
        for b in data.batches(batch_size, shuffle=True, seed=seed, epoch=ep, start=start if ep == epoch0 else 0):
            b = mask(b) if mask is not None else b
            loss, _ = model(b)
            loss.backward()
            opt.step()
            opt.zero_grad()


@pytest.fixture(scope="module")
def synthetic():
    # min_count=3: ids seen fewer than 3 times in train share the OOV row (as production
    # vocabularies do); otherwise 100k-id noise features memorise the training labels
    return load_data("synthetic:rows=20000,seed=0,min_count=3")


@pytest.mark.parametrize("kind", ["cat", "dcn"])
def test_known_answer_keeps_signal_drops_noise(synthetic, kind):
    """A FLOPs budget that exactly the 8 signal features fit (features are the only groups):
    UMEC keeps all but at most one of the signal features and drops >= 90% of the noise
    features. (One swap is allowed: with `dcn` the cross layers mix the features, and in 2 of
    4 seeds on one CPU a weak signal feature lost to a noise one; never two.)"""
    tr = synthetic.train
    torch.manual_seed(0)
    model = build_model(ModelConfig(kind, tr.feature_names, tr.table_sizes, 13, 16, [64, 32, 16], [64, 32, 1]))
    opt = torch.optim.Adagrad(model.parameters(), lr=0.05)
    train(model, opt, tr, epochs=2)
    spec = discover_groups(model, prune_bottom=False, prune_top=False)
    flops = make_resource("flops", spec)
    n_signal = len(synthetic.info["signal_features"])
    budget = float(flops(torch.tensor([[float(n_signal)]]), None)[0]) / flops.dense_value()
    umec = UMECOptimizer(opt, model, [f"flops={budget + 1e-6:.8f}"], groups=spec,
                         holdout=lambda: synthetic.valid.batches(1024))
    train(model, umec, tr, epochs=2, epoch0=10, mask=umec.feature_mask)
    masks = umec.finalize()
    signal = set(synthetic.info["signal_features"])
    noise = set(synthetic.info["noise_features"])
    kept = set(masks.kept_features)
    assert len(kept & signal) >= len(signal) - 1, masks.kept_features
    assert len(noise - kept) >= 0.9 * len(noise), masks.kept_features
    assert umec.resource_fractions()["flops"] <= budget + 1e-6


def _valid(features: int):
    """Validation batches for the default (holdout) score: another draw of the same generator."""
    valid = random_data(n=256, features=features, seed=99)
    return lambda: valid.batches(128)


def test_lookup_bytes_budget_limits_the_kept_features():
    """Generated data, 6 features of equal width: a lookup_bytes budget of 0.5 leaves at most
    3 features (one looked-up row each), whatever their table sizes, and the flops budget
    beside it holds too."""
    data = random_data(n=512, features=6)
    model, _ = small_model("cat", data)
    umec = UMECOptimizer(torch.optim.Adagrad(model.parameters(), lr=0.05), model, ["lookup_bytes=0.5", "flops=0.6"],
                         holdout=_valid(6))
    train(model, umec, data, epochs=3, batch_size=64, mask=None)
    masks = umec.finalize()
    fr = umec.resource_fractions()
    assert len(masks.kept_features) <= 3 and fr["lookup_bytes"] <= 0.5 + 1e-9 and fr["flops"] <= 0.6 + 1e-9
    assert fr["lookup_bytes"] == pytest.approx(len(masks.kept_features) / 6)


def test_every_budget_met_within_one_group():
    """Two budgets at once over features and all MLP layers: both hold at the end, and giving
    back any single pruned group would break one of them."""
    data = random_data(n=512, features=6)
    model, _ = small_model("dot", data)
    umec = UMECOptimizer(torch.optim.Adagrad(model.parameters(), lr=0.05), model,
                         ["flops=0.35", "embedding_bytes=0.5"], holdout=_valid(6))
    train(model, umec, data, epochs=3, batch_size=64, mask=None)
    masks = umec.finalize()
    fr = umec.resource_fractions()
    assert fr["flops"] <= 0.35 + 1e-9 and fr["embedding_bytes"] <= 0.5 + 1e-9
    # within one group: un-pruning any pruned group violates a budget
    c = umec.s.clone()
    ev = umec.allocator.neighbours(c, umec.group_order(), delta=-1.0)
    can_restore = (c > 0) & (ev[1:] <= umec.allocator.limits[None, :] + 1e-9).all(dim=1)
    assert not bool(can_restore.any())
    assert umec.budget_fractions == pytest.approx([0.35, 0.5])
    # pruned weights stay exactly zero under further training, pruned ids are dropped
    keep = umec.keep_multipliers
    assert keep and any(bool((k == 0).any()) for k in keep.values())
    train(model, umec, data, epochs=1, batch_size=64, mask=umec.feature_mask)
    for p, k in keep.items():
        assert float((p.detach() * (k == 0)).abs().sum()) == 0.0
    b = umec.feature_mask(data.make_batch(torch.arange(8)))
    per_feature = b.sparse_features.lengths().view(len(data.feature_names), -1).sum(1).tolist()
    lengths = dict(zip(b.sparse_features.keys(), per_feature))
    assert all(lengths[f] == 0 for f in masks.pruned_features) and all(lengths[f] == 8 for f in masks.kept_features)


def _fresh(seed=0, **cfg):
    data = random_data(n=384, features=5)
    model, _ = small_model("cat", data, seed=seed)
    opt = torch.optim.Adagrad(model.parameters(), lr=0.05)
    return data, model, UMECOptimizer(opt, model, ["flops=0.3"], UMECConfig(check_every=0, **cfg),
                                      holdout=_valid(5))


def test_resume_from_mid_run_state_gives_identical_masks():
    """Stop after one epoch, save model + optimizer + UMEC state, resume in new objects:
    s, y, z and the final masks equal those of an uninterrupted run."""
    data, model, umec = _fresh()
    train(model, umec, data, epochs=1, batch_size=32)
    saved = (copy.deepcopy(model.state_dict()), copy.deepcopy(umec.state_dict()))
    train(model, umec, data, epochs=2, epoch0=1, batch_size=32)
    reference = umec.finalize()
    ref_state = umec.state_vector()

    data, model2, umec2 = _fresh(seed=123)  # different init: everything must come from the state
    model2.load_state_dict(saved[0])
    umec2.load_state_dict(saved[1])
    train(model2, umec2, data, epochs=2, epoch0=1, batch_size=32)
    assert umec2.finalize() == reference
    torch.testing.assert_close(umec2.state_vector(), ref_state, rtol=0, atol=0)


def test_state_from_other_budget_or_model_is_refused():
    data, model, umec = _fresh()
    train(model, umec, data, epochs=1, batch_size=64)
    st = umec.state_dict()
    other = UMECOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), model, ["flops=0.5"])
    with pytest.raises(ValueError, match="budgets"):
        other.load_umec_state_dict(st["umec"])
    m2, _ = small_model("cat", data, bottom=(16,))
    other2 = UMECOptimizer(torch.optim.SGD(m2.parameters(), lr=0.1), m2, ["flops=0.3"])
    with pytest.raises(ValueError, match="group sets"):
        other2.load_umec_state_dict(st["umec"])


def test_s_is_projected_not_pinned_and_never_prunes_a_whole_set():
    """The paper's s step: at its upper bound s moves back when the gradient says so (the
    authors pinned it); ceil(s) never reaches the set size (the authors' one-step overshoot)."""
    data, model, umec = _fresh(s_step="gradient", score="weight")  # the paper's setting
    st = umec.umec_state_dict()
    st["s"] = umec.max_counts
    st["y"] = torch.full_like(umec.y, 5.0)  # penalty pushes s down; z = 0 gives no resource pressure
    st["scale"] = torch.ones_like(umec.s)
    umec.load_umec_state_dict(st)
    assert torch.equal(umec.penalty_scale, torch.ones_like(umec.s))
    train(model, umec, data, epochs=1, batch_size=64)
    assert bool((umec.s < umec.max_counts).all())
    umec.s = umec.max_counts + 3.0
    assert bool((umec.pruned_counts() <= umec.set_sizes - 1).all())
    data, model, umec = _fresh(s_step="gradient")
    umec.z.fill_(1e6)  # enormous resource pressure
    train(model, umec, data, epochs=1, batch_size=32)
    assert bool((umec.s <= umec.max_counts).all()) and bool((umec.pruned_counts() <= umec.set_sizes - 1).all())


def test_conditional_s_step_moves_toward_a_budget_feasible_target():
    """The default s step (generated data): every step ``s`` moves toward the greedy target by
    at most ``s_lr n_l`` groups per set; the target meets the budget; ``z`` is unused (0) and
    ``y`` never decreases; the search ends within one target step of the budget."""
    data, model, umec = _fresh()
    assert umec.config.s_step == "conditional"
    ys, cap = [], umec.config.s_lr * umec.set_sizes
    for b in data.batches(32, shuffle=True):
        s_before = umec.s.clone()
        loss, _ = model(b)
        loss.backward()
        umec.step()
        umec.zero_grad()
        target = umec._target
        assert umec.allocator.meets(target, umec.group_order())
        moved = umec.s - s_before
        assert bool((moved.abs() <= cap + 1e-6).all())
        assert bool((moved * (target - s_before) >= -1e-9).all())  # never away from the target
        assert float(umec.z.abs().sum()) == 0.0
        ys.append(umec.y.clone())
    assert all(bool((b >= a).all()) for a, b in zip(ys, ys[1:]))
    assert float(umec.s.sum()) > 0


def test_z_ascends_on_resource_before_the_s_step_and_y_never_decreases():
    """The paper's s step (``s_step="gradient"``), generated data."""
    data, model, umec = _fresh(s_step="gradient")
    ys = []
    for i, b in enumerate(data.batches(32, shuffle=True)):
        s_before, z_before = umec.s.clone(), umec.z.clone()
        r_before = float(umec.allocator.neighbours(umec.pruned_counts(s_before), umec.group_order())[0, 0])
        loss, _ = model(b)
        loss.backward()
        umec.step()
        umec.zero_grad()
        expected = max(0.0, float(z_before[0]) + umec.config.z_lr * (r_before - 0.3))
        assert abs(float(umec.z[0]) - expected) < 1e-4
        ys.append(umec.y.clone())
    assert all(bool((b >= a).all()) for a, b in zip(ys, ys[1:]))
    assert float(umec.s.sum()) > 0  # it did start pruning


def test_impossible_and_unknown_budgets_are_clear_errors():
    data = random_data()
    model, _ = small_model("cat", data)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for bad, msg in [(["flops=0"], r"\(0, 1\]"), (["flops=1.01"], r"\(0, 1\]"),
                     (["flops=0.0001"], "below the smallest model"),
                     (["embedding_bytes=0.01"], "below the smallest model"),
                     (["params=0.3"], "unknown resource"), ([], "at least one budget")]:
        with pytest.raises(ValueError, match=msg):
            UMECOptimizer(opt, model, bad)
    spec = discover_groups(model, prune_features=False)
    with pytest.raises(ValueError, match="needs feature groups"):
        UMECOptimizer(opt, model, ["embedding_bytes=0.5"], groups=spec)


def test_consistency_check_is_a_noop_single_process_and_state_vector_stable():
    data, model, umec = _fresh()
    umec.check_consistency()
    v = umec.state_vector()
    assert v.dtype == torch.float64 and v.numel() == 2 * len(umec.spec.sets) + 1 + 2


def test_fixed_phase_is_the_same_for_umec_set_masks_and_masked_optimizer():
    """Generated data: UMEC's finalize masks, fixed on a fresh model by set_masks and by
    MaskedOptimizer, give the same keep multipliers and the same weights after a step; the
    cost of the masks is the same through UMEC and through the baselines' evaluation."""
    from torchrec.optim.keyed import KeyedOptimizerWrapper

    from umec_torchrec.baselines import fractions_of_masks
    from umec_torchrec.umec.masked_optimizer import MaskedOptimizer

    data, model, umec = _fresh()
    train(model, umec, data, epochs=1, batch_size=32)
    masks = umec.finalize()
    assert masks.pruned_features or any(len(v) < masks.layer_widths[k] for k, v in masks.layers.items())
    assert fractions_of_masks(umec.spec, masks, umec.budgets)[0] == pytest.approx(umec.resource_fractions()["flops"])
    models, keeps = [], []
    for wrap in ("umec", "masked"):
        m, _ = small_model("cat", data, seed=5)
        inner = KeyedOptimizerWrapper(dict(m.named_parameters()), lambda p: torch.optim.SGD(p, lr=0.1))
        if wrap == "umec":
            opt = UMECOptimizer(inner, m, ["flops=0.3"], UMECConfig(check_every=0))
            opt.set_masks(masks)
        else:
            opt = MaskedOptimizer(inner, m, masks)
        assert opt.masks == masks and set(opt.feature_mask.pruned) == set(masks.pruned_features)
        keeps.append([opt.keep_multipliers.get(p) for p in m.parameters()])
        assert sum(int((k == 0).sum()) for k in keeps[-1] if k is not None) > 0
        train(m, opt, data, epochs=1, batch_size=64, mask=opt.feature_mask)
        models.append(m)
    for a, b in zip(*keeps):
        assert (a is None) == (b is None) and (a is None or torch.equal(a, b))
    for (n, p), (_, q) in zip(models[0].named_parameters(), models[1].named_parameters()):
        assert torch.equal(p, q), n


def test_conditional_target_sees_tiny_tables_next_to_huge_ones():
    """Generated config, tables on the meta device (never allocated): next to two 100M-row
    tables, pruning a 3-row one changes the embedding bytes by 1.5e-8 of dense, below
    float32's resolution. The small tables' columns are scaled down so they are first in
    line. The conditional target is computed in float64, so it still sees their gain and
    meets an ``embedding_bytes`` budget (in float32 the greedy found no set that reduces the
    violation and the step raised ``cannot be met``)."""
    from umec_torchrec.models import find_dlrm

    names = ["big1", "big2", "a", "b", "c"]
    cfg = ModelConfig("cat", names, [100_000_000, 100_000_000, 3, 3, 3], 4, 8, [16, 8], [16, 8, 1])
    torch.manual_seed(0)
    model = build_model(cfg, tables_device=torch.device("meta"))
    with torch.no_grad():  # over-arch input: [dense 8 | big1 8 | big2 8 | a 8 | b 8 | c 8]
        find_dlrm(model).over_arch.model[0]._mlp[0]._linear.weight[:, 24:] *= 0.01
    dense = [p for n, p in model.named_parameters() if "embedding_bag_collection" not in n]
    umec = UMECOptimizer(torch.optim.SGD(dense, lr=0.1), model, ["embedding_bytes=0.6"],
                         UMECConfig(score="weight", check_every=0), groups=discover_groups(model))
    umec.umec_step()
    target = umec._target
    fi = [s.kind for s in umec.spec.sets].index("features")
    assert float(target[fi]) == 4  # a, b, c, then one big table (the only way to 0.6)
    assert umec.target_allocator.meets(target.double(), umec.group_order())


def test_budget_unreachable_in_score_order_is_reported_not_raised_mid_run():
    """Generated config, tables on the meta device: the one feature that must stay
    (``min_keep``) is the 100M-row table, because the small tables score lowest, so
    ``embedding_bytes=0.5`` cannot be met in the feature set's score order. The conditional
    step does not raise in the middle of training (it approaches the least violation the order
    allows) and ``finalize()`` reports ``budgets_met = False``."""
    from umec_torchrec.models import find_dlrm

    cfg = ModelConfig("cat", ["big", "a", "b", "c"], [100_000_000, 3, 3, 3], 4, 8, [16, 8], [16, 8, 1])
    torch.manual_seed(0)
    model = build_model(cfg, tables_device=torch.device("meta"))
    with torch.no_grad():  # over-arch input: [dense 8 | big 8 | a 8 | b 8 | c 8]
        find_dlrm(model).over_arch.model[0]._mlp[0]._linear.weight[:, 16:] *= 0.01
    dense = [p for n, p in model.named_parameters() if "embedding_bag_collection" not in n]
    umec = UMECOptimizer(torch.optim.SGD(dense, lr=0.1), model, ["embedding_bytes=0.5"],
                         UMECConfig(score="weight", check_every=0), groups=discover_groups(model))
    umec.umec_step()
    fi = [s.kind for s in umec.spec.sets].index("features")
    assert float(umec._target[fi]) == 3  # a, b, c: as far as the order allows
    umec.finalize(zero_tables=False)
    assert umec.budgets_met is False
    assert umec.masks.kept_features == ["big"]


def test_prox_leaves_no_subnormal_weights():
    """Generated data: a weight planted at a subnormal value (as the prox's geometric decay
    makes them) is zero after one UMEC step, and a long run with a strong prox leaves no
    subnormal float in any prunable weight (subnormal arithmetic is the CPU's slow path)."""
    from umec_torchrec.umec.hard_prune import flush_subnormal_

    t = torch.tensor([1e-40, -1e-39, 2e-38, 0.5, 0.0])
    flush_subnormal_(t)
    assert t.tolist() == [0.0, 0.0, pytest.approx(2e-38), 0.5, 0.0]

    data, model, umec = _fresh(prox_lr=1.0, y_lr=50.0)
    train(model, umec, data, epochs=1, batch_size=64, mask=umec.feature_mask)
    tiny = torch.finfo(torch.float32).tiny

    def subnormal(p):
        return int(((p != 0) & (p.abs() < tiny)).sum())

    w = model.model.over_arch.model[0]._mlp[0]._linear.weight
    with torch.no_grad():
        w[0].fill_(1e-40)
    assert subnormal(w) == w.shape[1]
    umec.umec_step()  # the prox alone (no gradient step lifts them)
    assert subnormal(w) == 0
    train(model, umec, data, epochs=6, batch_size=32, epoch0=1, mask=umec.feature_mask)
    for name, p in model.named_parameters():
        assert subnormal(p) == 0, f"{name}: {subnormal(p)} subnormal weights"
