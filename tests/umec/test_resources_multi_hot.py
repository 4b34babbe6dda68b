"""``lookup_bytes`` of a multi-hot model counts the measured mean ids per sample of each
feature (issue 13, section 2), on a small generated model (no data file)."""

import pytest
import torch

from umec_torchrec.models import ModelConfig, build_model
from umec_torchrec.umec.groups import discover_groups
from umec_torchrec.umec.resources import make_resource, with_ids_per_sample


def _spec(ids):
    cfg = ModelConfig(kind="cat", feature_names=["a", "b", "c"], table_sizes=[5, 7, 9], dense_in_features=2,
                      embedding_dim=4, bottom=[8, 4], top=[8, 1], pooling={"t_b": "mean"}, ids_per_sample=ids)
    return cfg, with_ids_per_sample(discover_groups(build_model(cfg)), cfg.ids_per_sample)


def test_lookup_bytes_count_mean_ids_per_sample():
    """Generated model: a feature with 2.5 ids per sample reads 2.5 rows of 16 bytes; pruning it
    removes them; the other resources do not change; ids of an unknown feature are refused."""
    cfg, spec = _spec({"b": 2.5})
    _, one = _spec({})
    lb, lb1 = make_resource("lookup_bytes", spec), make_resource("lookup_bytes", one)
    assert lb.dense_value() == pytest.approx(4 * 4 * (1 + 2.5 + 1))
    assert lb1.dense_value() == pytest.approx(4 * 4 * 3)
    kept = lb.full_kept[None, :]
    alive = torch.tensor([[1.0, 0.0, 1.0]])
    assert float(lb(kept, alive)[0]) == pytest.approx(4 * 4 * 2)
    for name in ("flops", "embedding_bytes"):
        assert make_resource(name, spec).dense_value() == make_resource(name, one).dense_value()
    with pytest.raises(ValueError, match="do not have"):
        with_ids_per_sample(spec, {"zz": 2.0})
    assert cfg.to_dict()["ids_per_sample"] == {"b": 2.5} and cfg.to_dict()["pooling"] == {"t_b": "mean"}
