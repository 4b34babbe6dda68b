"""Models off the built-in path: DLRM_Projection is refused with a pointer to declare_groups,
an unrecognised model's error says what was found, declared custom models get their pruned
tables zeroed by finalize(), and FeatureMask accepts every batch type TorchRec uses (Batch,
ModelInput, plain and variable-batch KJTs). Generated models and ids (no real data)."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torchrec.datasets.utils import Batch
from torchrec.distributed.test_utils import model_input, test_model
from torchrec.models.dlrm import DLRM_Projection, DLRMTrain
from torchrec.modules.embedding_configs import EmbeddingBagConfig
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from umec_torchrec.umec import FeatureMask, UMECConfig, UMECOptimizer, declare_groups, discover_groups
from umec_torchrec.umec.groups import feature_tables

D = 4


def _ebc(features=("a", "b", "c")) -> EmbeddingBagCollection:
    return EmbeddingBagCollection(tables=[EmbeddingBagConfig(name=f"t_{f}", embedding_dim=D, num_embeddings=10,
                                                             feature_names=[f]) for f in features])


def _kjt() -> KeyedJaggedTensor:
    # a: 2 samples (1 and 2 ids), b: 2 samples (0 and 1 ids), c: 2 samples (1 and 1 ids)
    return KeyedJaggedTensor.from_lengths_sync(["a", "b", "c"], torch.tensor([1, 2, 3, 4, 5, 6]),
                                               torch.tensor([1, 2, 0, 1, 1, 1], dtype=torch.int32))


def test_dlrm_projection_is_refused_naming_declare_groups():
    """Today it is classified as dot and crashes with AttributeError 'triu_indices'."""
    torch.manual_seed(0)
    model = DLRMTrain(DLRM_Projection(_ebc(), 3, [8, D], [8, 1], [8, 2 * D], [8, 2 * D]))
    with pytest.raises(TypeError, match="DLRM_Projection.*InteractionProjectionArch.*declare_groups"):
        discover_groups(model)
    with pytest.raises(TypeError, match="declare_groups"):
        UMECOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), model, ["flops=0.5"])


def test_unrecognised_model_error_names_declare_groups_and_what_was_found():
    with pytest.raises(TypeError, match=r"no torchrec DLRM found inside Sequential; found modules: .*Linear.*"
                                        r"declare_groups"):
        discover_groups(nn.Sequential(nn.Linear(3, 4), nn.ReLU()))


class EBCConcatMLP(nn.Module):
    """A user's model: EBC -> concatenation of the pooled embeddings -> MLP."""

    def __init__(self) -> None:
        super().__init__()
        self.ebc = _ebc()
        self.head = nn.Sequential(nn.Linear(3 * D, 6), nn.ReLU(), nn.Linear(6, 1))

    def forward(self, x: KeyedJaggedTensor) -> torch.Tensor:
        kt = self.ebc(x)
        return self.head(torch.cat([kt[f] for f in ("a", "b", "c")], dim=1))


def test_finalize_zeroes_the_tables_of_a_declared_model():
    """Declared groups on a custom model holding an EBC: finalize() prunes features under an
    embedding budget and zeroes exactly their tables (today the error finding the tables is
    swallowed and they stay non-zero)."""
    torch.manual_seed(0)
    model = EBCConcatMLP()
    assert feature_tables(model) == {"a": "t_a", "b": "t_b", "c": "t_c"}
    with torch.no_grad():
        model.head[0].weight[:, D:] *= 0.01  # b and c are weak
    cols = {f: range(i * D, (i + 1) * D) for i, f in enumerate("abc")}
    spec = declare_groups(model.head[0], cols, chain=[model.head[2]],
                          feature_table_bytes={f: 10 * D * 4.0 for f in "abc"})
    umec = UMECOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), model, ["embedding_bytes=0.34"],
                         UMECConfig(score="weight"), groups=spec)
    masks = umec.finalize()
    assert masks.kept_features == ["a"]
    for f in "abc":
        norm = float(model.ebc.embedding_bags[f"t_{f}"].weight.abs().sum())
        assert (norm == 0.0) == (f != "a"), (f, norm)


def test_finalize_raises_when_zeroing_fails(monkeypatch):
    """An error while zeroing the pruned tables reaches the caller (today it is swallowed)."""
    import umec_torchrec.umec.masked_optimizer as mo

    def broken(model, features):
        raise AttributeError("no weight here")

    monkeypatch.setattr(mo, "zero_tables_", broken)
    torch.manual_seed(0)
    model = EBCConcatMLP()
    spec = declare_groups(model.head[0], {f: range(i * D, (i + 1) * D) for i, f in enumerate("abc")},
                          chain=[model.head[2]], feature_table_bytes={f: 160.0 for f in "abc"})
    umec = UMECOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), model, ["embedding_bytes=0.34"],
                         UMECConfig(score="weight"), groups=spec)
    with pytest.raises(AttributeError, match="no weight here"):
        umec.finalize()


# --- FeatureMask on every batch type ---------------------------------------------------------
def test_feature_mask_on_plain_kjt_and_batch():
    m = FeatureMask(["b"])
    out = m(_kjt())
    assert out.lengths().tolist() == [1, 2, 0, 0, 1, 1] and out.values().tolist() == [1, 2, 3, 5, 6]
    b = Batch(dense_features=torch.ones(2, 3), sparse_features=_kjt(), labels=torch.zeros(2))
    ob = m(b)
    assert isinstance(ob, Batch) and ob.sparse_features.values().tolist() == [1, 2, 3, 5, 6]
    assert ob.dense_features is b.dense_features and ob.labels is b.labels


@pytest.mark.parametrize("cls", [model_input.ModelInput, test_model.ModelInput])
def test_feature_mask_on_model_input(cls):
    """torchrec's ModelInput: both KJT fields are filtered, the rest is passed through."""
    weighted = KeyedJaggedTensor.from_lengths_sync(["b", "c"], torch.tensor([7, 8, 9]),
                                                   torch.tensor([1, 0, 1, 1], dtype=torch.int32),
                                                   weights=torch.tensor([0.5, 0.25, 0.125]))
    mi = cls(float_features=torch.ones(2, 3), idlist_features=_kjt(), idscore_features=weighted,
             label=torch.zeros(2))
    out = FeatureMask(["b"])(mi)
    assert isinstance(out, cls)
    assert out.idlist_features.values().tolist() == [1, 2, 3, 5, 6]
    assert out.idscore_features.lengths().tolist() == [0, 0, 1, 1]
    assert out.idscore_features.values().tolist() == [8, 9]
    assert out.idscore_features.weights().tolist() == [0.25, 0.125]
    assert out.float_features is mi.float_features


def test_feature_mask_on_variable_batch_kjt():
    """VBE: a has 2 samples, b has 3, c has 1 (today: a shape error in feature_mask.py)."""
    kjt = KeyedJaggedTensor(keys=["a", "b", "c"], values=torch.arange(10, 17),
                            lengths=torch.tensor([1, 2, 1, 0, 2, 1], dtype=torch.int32),
                            stride_per_key_per_rank=[[2], [3], [1]],
                            inverse_indices=(["a", "b", "c"], torch.tensor([[0, 1, 1], [0, 1, 2], [0, 0, 0]])))
    assert kjt.variable_stride_per_key()
    out = FeatureMask(["b"])(kjt)
    assert out.variable_stride_per_key() and out.stride_per_key() == [2, 3, 1]
    assert out.lengths().tolist() == [1, 2, 0, 0, 0, 1]
    assert out.values().tolist() == [10, 11, 12, 16]
    assert torch.equal(out.inverse_indices()[1], kjt.inverse_indices()[1])
    assert out["a"].values().tolist() == [10, 11, 12] and out["b"].values().numel() == 0


def test_feature_mask_refuses_an_unknown_batch_type():
    with pytest.raises(TypeError, match="cannot drop features from a dict"):
        FeatureMask(["b"])({"sparse": _kjt()})
