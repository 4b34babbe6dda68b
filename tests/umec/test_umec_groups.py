"""Group discovery and hard pruning: a pruned group in the masked model is the same as
deleting it. Generated data and models (no real data)."""

import pytest
import torch

from helpers.data import random_data
from helpers.models import small_model
from umec_torchrec.models import MODEL_KINDS, find_dlrm
from umec_torchrec.umec import FeatureMask, PruningMasks, apply_masks_, layout
from umec_torchrec.umec.groups import ChainStructure, DLRMStructure, declare_groups, discover_groups


def logits(model, batch):
    with torch.no_grad():
        return model.model(batch.dense_features, batch.sparse_features).flatten()


@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_feature_group_columns_cover_every_path(kind):
    """Zeroing a feature's columns (weights only) equals dropping its ids (inputs only):
    the group holds every weight through which the feature reaches the logit."""
    data = random_data()
    model, _ = small_model(kind, data)
    batch = data.make_batch(torch.arange(64))
    spec = discover_groups(model)
    fs = spec.feature_set
    pruned = torch.zeros(fs.size)
    pruned[[1, 3]] = 1.0
    by_weights = small_model(kind, data)[0]
    keep = discover_groups(by_weights).keep_multipliers([pruned] + [torch.zeros(s.size) for s in spec.sets[1:]])
    with torch.no_grad():
        for p, k in keep.items():
            p.mul_(k)
    by_inputs = small_model(kind, data)[0]
    dropped = FeatureMask(["f1", "f3"])(batch)
    a, b, full = logits(by_weights, batch), logits(by_inputs, dropped), logits(model, batch)
    torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    assert (a - full).abs().max() > 1e-4  # the features mattered


@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_unit_group_equals_removed_unit(kind):
    """Zeroing a hidden unit's row, bias and next column equals forcing its activation to 0."""
    data = random_data()
    model, _ = small_model(kind, data)
    batch = data.make_batch(torch.arange(64))
    dlrm = find_dlrm(model)
    for h in layout.hidden_layers(dlrm):
        ref = small_model(kind, data)[0]
        href = {x.name: x for x in layout.hidden_layers(find_dlrm(ref))}[h.name]
        handle = href.linear.register_forward_hook(lambda m, i, o: o.index_fill(1, torch.tensor([2, 5]), -1e9))
        # -1e9 before the ReLU = 0 after it: the unit is removed
        expected = logits(ref, batch)
        handle.remove()
        masked = small_model(kind, data)[0]
        masks = PruningMasks(list(data.feature_names), list(data.feature_names),
                             {h.name: [i for i in range(h.width) if i not in (2, 5)]}, {h.name: h.width})
        apply_masks_(masked, masks)
        torch.testing.assert_close(logits(masked, batch), expected, atol=1e-6, rtol=1e-5)


def test_dot_pair_columns_shared_by_two_features():
    """With dot, every pair column of two sparse features belongs to both (overlap)."""
    data = random_data(features=4)
    model, _ = small_model("dot", data)
    inc = layout.over_arch_incidence(find_dlrm(model))
    D = 8
    assert inc.shape == (D + 10, 4)  # D + C(5, 2)
    assert torch.equal(inc[:D].sum(1), torch.zeros(D))  # dense columns are in no feature group
    per_col = inc[D:].sum(1)
    assert int((per_col == 2).sum()) == 6 and int((per_col == 1).sum()) == 4  # C(4,2) shared, 4 dense pairs
    assert torch.equal(inc.sum(0), torch.full((4,), 4.0))  # each feature owns F = 4 pair columns


def test_unit_sets_skip_last_bottom_and_output():
    data = random_data()
    model, _ = small_model("cat", data)
    names = [s.name for s in discover_groups(model).sets]
    assert names == ["features", "dense_arch.model._mlp.0", "dense_arch.model._mlp.1",
                     "over_arch.model.0._mlp.0", "over_arch.model.0._mlp.1"]
    no_bottom = [s.name for s in discover_groups(model, prune_bottom=False).sets]
    assert not any(n.startswith("dense_arch") for n in no_bottom)
    with_dense = discover_groups(model, prune_dense=True).feature_set
    assert with_dense.labels[0] == "<dense>" and with_dense.size == 6


def test_unrecognised_model_error_lists_modules():
    with pytest.raises(TypeError, match="no torchrec DLRM found.*Linear"):
        discover_groups(torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU()))


def test_declare_groups_for_custom_model():
    """A custom two-tower head: features own column ranges, the chain's hidden units are groups."""
    head = torch.nn.Sequential(torch.nn.Linear(12, 8), torch.nn.ReLU(), torch.nn.Linear(8, 4), torch.nn.ReLU(),
                               torch.nn.Linear(4, 1))
    spec = declare_groups(head[0], {"user": range(0, 4), "item": range(4, 8), "ctx": [8, 9, 10, 11]},
                          chain=[head[2], head[4]], layer_names=["h1", "h2"])
    assert [s.name for s in spec.sets] == ["features", "h1", "h2"]
    assert [s.size for s in spec.sets] == [3, 8, 4]
    with torch.no_grad():
        head[0].weight[:, 4:8] = 0.0
    assert float(spec.sets[0].scores()[1]) == 0.0
    with pytest.raises(ValueError, match="chain broken"):
        declare_groups(head[0], {"a": [0]}, chain=[head[4]])
    with pytest.raises(ValueError, match="columns must be"):
        declare_groups(head[0], {"a": [12]})


@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_discovered_structure_matches_the_model(kind):
    """Generated model: the DLRMStructure read from the modules equals the ModelConfig it was
    built from, and the config-only layer names (layout.prunable_widths) are the discovered
    hidden layers' names and widths."""
    data = random_data()
    model, cfg = small_model(kind, data)
    spec = discover_groups(model)
    st = spec.structure
    assert isinstance(st, DLRMStructure) and st.kind == kind
    assert (st.embedding_dim, st.num_features, st.dense_in_features) == (
        cfg.embedding_dim, len(cfg.feature_names), cfg.dense_in_features)
    assert st.bottom == list(cfg.bottom) and st.top == list(cfg.top)
    assert (st.dcn_layers, st.dcn_rank) == ((cfg.dcn_num_layers, cfg.dcn_low_rank_dim) if kind == "dcn" else (0, 0))
    hidden = {h.name: h.width for h in layout.hidden_layers(find_dlrm(model))}
    assert layout.prunable_widths(cfg) == hidden
    assert st.bottom_names + st.top_names == list(hidden)
    assert [s.kind for s in spec.sets] == ["features"] + ["units"] * len(hidden)


def test_declared_structure_is_a_chain():
    """Declared custom head: the structure records the chain's widths, names and incidence."""
    head = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.ReLU(), torch.nn.Linear(5, 1))
    spec = declare_groups(head[0], {"a": [0, 1, 2], "b": [2, 3, 4, 5]}, chain=[head[2]], extra_flops=7.0)
    st = spec.structure
    assert isinstance(st, ChainStructure)
    assert st.widths == [6, 5, 1] and st.layer_names == ["layer0"] and st.extra_flops == 7.0
    assert st.incidence.tolist() == [[1, 0], [1, 0], [1, 1], [0, 1], [0, 1], [0, 1]]
