"""Resource models against torch's FlopCounterMode on physically smaller models, and budget
parsing. Generated models (no real data)."""

import itertools

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from helpers.data import random_data
from umec_torchrec.models import MODEL_KINDS, ModelConfig, build_dlrm, build_model
from umec_torchrec.umec.budgets import Budget, parse_budgets
from umec_torchrec.umec.groups import discover_groups
from umec_torchrec.umec.resources import make_resource


def measured_flops(cfg: ModelConfig) -> float:
    """FLOPs per sample of the dense path, measured by FlopCounterMode at batch 4."""
    dlrm = build_dlrm(cfg)
    data = random_data(n=4, features=len(cfg.feature_names), rows=min(cfg.table_sizes), dense=cfg.dense_in_features)
    data.feature_names = list(cfg.feature_names)
    b = data.make_batch(torch.arange(4))
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        dlrm(b.dense_features, b.sparse_features)
    return fc.get_total_flops() / 4


@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_flops_model_matches_flop_counter_on_smaller_models(kind):
    full = ModelConfig(kind, [f"f{i}" for i in range(6)], [30] * 6, 13, 8, [24, 12, 8], [20, 10, 1], dcn_num_layers=2,
                       dcn_low_rank_dim=4)
    spec = discover_groups(build_model(full))
    flops = make_resource("flops", spec)
    assert flops.dense_value() == measured_flops(full)
    for kf, b0, b1, t0, t1 in itertools.islice(itertools.product([1, 3, 6], [24, 5], [12, 1], [20, 7], [10, 2]), 0,
                                               None, 3):
        small = ModelConfig(kind, [f"f{i}" for i in range(kf)], [30] * kf, 13, 8, [b0, b1, 8], [t0, t1, 1],
                            dcn_num_layers=2, dcn_low_rank_dim=4)
        kept = torch.tensor([[float(kf), b0, b1, t0, t1]])
        assert float(flops(kept, torch.ones(1, 6))[0]) == measured_flops(small), (kf, b0, b1, t0, t1)


def test_embedding_bytes_counts_rows_dims_and_element_size():
    cfg = ModelConfig("cat", ["a", "b", "c"], [10_000_000, 100, 7], 13, 16, [32, 16], [8, 1])
    spec = discover_groups(build_model(cfg, tables_device=torch.device("meta")))
    eb = make_resource("embedding_bytes", spec)
    assert eb.dense_value() == (10_000_000 + 100 + 7) * 16 * 4
    alive = torch.tensor([[0.0, 1.0, 1.0]])
    assert float(eb(torch.tensor([[2.0, 32.0, 8.0]]), alive)[0]) == (100 + 7) * 16 * 4
    assert eb.min_value() == 7 * 16 * 4  # the cheapest single table


def test_lookup_bytes_counts_one_row_per_kept_feature():
    """Generated config: lookup_bytes = kept features x dim x 4 bytes, whatever the table sizes;
    with the dense-arch output as a group, that group reads nothing (costs are aligned with the
    feature set, also for embedding_bytes' cheapest survivor)."""
    cfg = ModelConfig("cat", ["a", "b", "c"], [10_000_000, 100, 7], 13, 16, [32, 16], [8, 1])
    model = build_model(cfg, tables_device=torch.device("meta"))
    lb = make_resource("lookup_bytes", discover_groups(model))
    assert lb.dense_value() == 3 * 16 * 4
    assert float(lb(torch.tensor([[2.0, 32.0, 8.0]]), torch.tensor([[0.0, 1.0, 1.0]]))[0]) == 2 * 16 * 4
    assert lb.min_value() == 16 * 4
    spec = discover_groups(model, prune_dense=True)  # feature set: <dense>, a, b, c
    lbd, ebd = make_resource("lookup_bytes", spec), make_resource("embedding_bytes", spec)
    assert lbd.dense_value() == 3 * 16 * 4
    assert float(lbd(torch.ones(1, 1), torch.tensor([[1.0, 0.0, 0.0, 1.0]]))[0]) == 16 * 4
    assert lbd.min_value() == 0.0 and ebd.min_value() == 0.0  # keeping only the dense output
    assert Budget.parse("lookup_bytes=abs:128B") == Budget("lookup_bytes", 128.0, False)


def test_budget_parsing():
    assert Budget.parse("flops=0.3") == Budget("flops", 0.3, True)
    assert Budget.parse("flops=30%") == Budget("flops", 0.3, True)
    assert Budget.parse("embedding_bytes=abs:64MiB") == Budget("embedding_bytes", 64 * 2**20, False)
    assert Budget.parse("flops=abs:2.5M").value == 2.5e6
    assert Budget("flops", 1e3, False).fraction(4e3) == 0.25
    for bad, msg in [("flops=0", r"\(0, 1\]"), ("flops=-0.2", r"\(0, 1\]"), ("flops=1.5", r"\(0, 1\]"),
                     ("speed=0.3", "unknown resource 'speed'"), ("flops", "NAME=VALUE"),
                     ("flops=abc", "not a number"), ("flops=abs:-3", "cannot read|positive")]:
        with pytest.raises(ValueError, match=msg):
            Budget.parse(bad)
    with pytest.raises(ValueError, match="two budgets"):
        parse_budgets(["flops=0.3", "flops=0.4"])
    with pytest.raises(ValueError, match="exceeds the dense"):
        Budget("flops", 5e3, False).fraction(4e3)
