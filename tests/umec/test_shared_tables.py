"""Shared tables (one ``EmbeddingBagConfig`` read by several features): a table is zeroed and
counted as saved only when every feature that reads it is pruned; its bytes count once;
lookups count per feature read. Generated models and ids (no real data)."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torchrec.models.dlrm import DLRMTrain
from torchrec.modules.embedding_configs import EmbeddingBagConfig
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from umec_torchrec.models import DLRMConcat
from umec_torchrec.umec import FeatureMask, PruningMasks, UMECConfig, UMECOptimizer, declare_groups
from umec_torchrec.umec.groups import discover_groups, feature_tables
from umec_torchrec.umec.resources import make_resource
from umec_torchrec.umec.tables import dropped_tables, zero_tables_

D = 8
FEATURES = ["item", "user_hist", "ctx"]  # item and user_hist read t_item; ctx reads t_ctx
ROWS = {"t_item": 40, "t_ctx": 30}


def shared_tables():
    return [EmbeddingBagConfig(name="t_item", embedding_dim=D, num_embeddings=ROWS["t_item"],
                               feature_names=["item", "user_hist"]),
            EmbeddingBagConfig(name="t_ctx", embedding_dim=D, num_embeddings=ROWS["t_ctx"], feature_names=["ctx"])]


def shared_model(seed: int = 0) -> DLRMTrain:
    """A concatenation DLRM whose first table is read by two features."""
    torch.manual_seed(seed)
    ebc = EmbeddingBagCollection(tables=shared_tables())
    return DLRMTrain(DLRMConcat(ebc, 4, [16, D], [16, 8, 1]))


def kjt(n: int = 16, seed: int = 1) -> KeyedJaggedTensor:
    g = torch.Generator().manual_seed(seed)
    ids = torch.cat([torch.randint(0, 30, (n,), generator=g) for _ in FEATURES])
    return KeyedJaggedTensor.from_lengths_sync(FEATURES, ids, torch.ones(3 * n, dtype=torch.int32))


def table(model: nn.Module, name: str) -> torch.Tensor:
    return model.model.sparse_arch.embedding_bag_collection.embedding_bags[name].weight


def test_feature_tables_and_dropped_tables():
    model = shared_model()
    assert feature_tables(model) == {"item": "t_item", "user_hist": "t_item", "ctx": "t_ctx"}
    by = feature_tables(model)
    assert dropped_tables(by, ["user_hist"]) == []
    assert dropped_tables(by, ["user_hist", "ctx"]) == ["t_ctx"]
    assert dropped_tables(by, ["user_hist", "item"]) == ["t_item"]


def test_pruning_one_reader_keeps_the_shared_table():
    """user_hist pruned, item kept: t_item is untouched and item's pooled embedding is the
    same as before; pruning item too zeroes t_item."""
    model = shared_model()
    before = table(model, "t_item").detach().clone()
    ebc = model.model.sparse_arch.embedding_bag_collection
    x = kjt()
    item_before = ebc(x)["item"].detach().clone()
    assert item_before.abs().sum() > 0
    umec = UMECOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), model, ["flops=0.9"], UMECConfig(score="weight"))
    umec.set_masks(PruningMasks(FEATURES, ["item", "ctx"]))
    torch.testing.assert_close(table(model, "t_item").detach(), before, rtol=0, atol=0)
    out = ebc(umec.feature_mask(x))
    torch.testing.assert_close(out["item"], item_before, rtol=0, atol=0)
    assert float(out["user_hist"].abs().sum()) == 0.0  # its ids were dropped

    assert zero_tables_(model, ["user_hist", "item"]) == ["t_item"]
    assert float(table(model, "t_item").abs().sum()) == 0.0
    assert float(table(model, "t_ctx").abs().sum()) > 0.0


def test_shared_table_bytes_count_once_lookups_per_feature():
    spec = discover_groups(shared_model())
    eb, lb = make_resource("embedding_bytes", spec), make_resource("lookup_bytes", spec)
    full = (ROWS["t_item"] + ROWS["t_ctx"]) * D * 4
    assert eb.dense_value() == full  # not 40 * 2 + 30 rows
    kept = torch.tensor([[2.0, 16.0, 16.0, 8.0]])
    alive = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0], [0.0, 0.0, 1.0], [1.0, 1.0, 0.0]])
    assert eb(kept.expand(4, -1), alive).tolist() == [full, full, ROWS["t_ctx"] * D * 4, ROWS["t_item"] * D * 4]
    assert lb.dense_value() == 3 * D * 4
    assert lb(kept.expand(4, -1), alive).tolist() == [2 * D * 4, 2 * D * 4, D * 4, 2 * D * 4]
    assert eb.min_value() == ROWS["t_ctx"] * D * 4  # the cheapest single table


def test_embedding_budget_counts_a_shared_table_once():
    """A budget of 1300 B: t_item (1280 B) fits once, read by both of its features, so the
    allocator prunes only the weakest feature, ctx; counting t_item per reader (2560 B) would
    also prune item or user_hist."""
    model = shared_model()
    with torch.no_grad():  # ctx (over-arch columns [3D, 4D)) is the weakest feature
        model.model.over_arch.model[0]._mlp[0]._linear.weight[:, 3 * D:] *= 0.01
    umec = UMECOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), model, ["embedding_bytes=abs:1300B"],
                         UMECConfig(score="weight"))
    masks = umec.finalize()
    assert masks.kept_features == ["item", "user_hist"]
    assert float(table(model, "t_ctx").abs().sum()) == 0.0
    assert float(table(model, "t_item").abs().sum()) > 0.0


def test_declared_shared_table_bytes_and_zeroing():
    """A custom EBC + concatenation + MLP model declared with declare_groups: feature_tables
    names the shared table, its bytes count once, and finalize/set_masks zero only tables
    whose readers are all pruned (today the tables of declared models are left non-zero)."""
    torch.manual_seed(0)

    class Custom(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.ebc = EmbeddingBagCollection(tables=shared_tables())
            self.head = nn.Sequential(nn.Linear(3 * D, 8), nn.ReLU(), nn.Linear(8, 1))

        def forward(self, x: KeyedJaggedTensor) -> torch.Tensor:
            kt = self.ebc(x)
            return self.head(torch.cat([kt[f] for f in FEATURES], dim=1))

    model = Custom()
    cols = {f: range(i * D, (i + 1) * D) for i, f in enumerate(FEATURES)}
    tb = {"item": ROWS["t_item"] * D * 4.0, "user_hist": ROWS["t_item"] * D * 4.0, "ctx": ROWS["t_ctx"] * D * 4.0}
    spec = declare_groups(model.head[0], cols, chain=[model.head[2]], feature_table_bytes=tb,
                          feature_tables={"item": "t_item", "user_hist": "t_item", "ctx": "t_ctx"})
    eb = make_resource("embedding_bytes", spec)
    assert eb.dense_value() == (ROWS["t_item"] + ROWS["t_ctx"]) * D * 4
    with pytest.raises(ValueError, match="user_hist.*t_item"):
        declare_groups(model.head[0], cols, feature_table_bytes={**tb, "user_hist": 1.0},
                       feature_tables={"item": "t_item", "user_hist": "t_item", "ctx": "t_ctx"})
    umec = UMECOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), model, ["flops=0.9"], UMECConfig(score="weight"),
                         groups=spec)
    umec.set_masks(PruningMasks(FEATURES, ["item"]))
    assert float(model.ebc.embedding_bags["t_ctx"].weight.abs().sum()) == 0.0
    assert float(model.ebc.embedding_bags["t_item"].weight.abs().sum()) > 0.0
    assert isinstance(umec.feature_mask, FeatureMask)


@pytest.mark.parametrize("sharding", ["table_wise", "column_wise"])
def test_sharded_shared_table_kept_until_every_reader_is_pruned(sharding):
    """The same on DistributedModelParallel (a 1-rank gloo group, table- and column-wise): the
    sharded EBC reports the shared table once; zeroing a pruned reader's table leaves the
    shards of t_item untouched until item is pruned too."""
    from umec_torchrec.distributed import init_distributed
    from umec_torchrec.train.config import TrainConfig
    from umec_torchrec.train.optim import apply_embedding_optimizer
    from umec_torchrec.train.sharding import shard_model
    from umec_torchrec.umec.tables import local_parts

    ctx = init_distributed("gloo")
    model = shared_model()
    apply_embedding_optimizer(model, TrainConfig(embedding_optimizer="sgd"))
    dmp = shard_model(model, ctx, sharding, batch_size=16)
    assert feature_tables(dmp) == {"item": "t_item", "user_hist": "t_item", "ctx": "t_ctx"}

    def norm(t: str) -> float:
        w = dmp.state_dict()[f"model.sparse_arch.embedding_bag_collection.embedding_bags.{t}.weight"]
        return float(sum(p.abs().sum() for p in local_parts(w)))

    assert zero_tables_(dmp, ["user_hist", "ctx"]) == ["t_ctx"]
    assert norm("t_item") > 0 and norm("t_ctx") == 0
    assert zero_tables_(dmp, ["user_hist", "item", "ctx"]) == ["t_ctx", "t_item"]
    assert norm("t_item") == 0
