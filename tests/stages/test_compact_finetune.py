"""Compact fine-tuning (``umec finetune --finetune-model compact``, the default): the physically
smaller model of the masks, loaded from a full checkpoint, against the masked full model.

All data is generated (:func:`tests.helpers.data.make_data`, planted signal); models are tiny.
"""

from __future__ import annotations

import pytest
import torch

from helpers.data import make_data
from umec_torchrec.distributed import init_distributed
from umec_torchrec.models import ModelConfig
from umec_torchrec.train.build import build_training
from umec_torchrec.train.checkpoint import load_checkpoint, save_checkpoint
from umec_torchrec.train.compact import CompactArch, KeepFeatures, load_compact_state, table_state_bytes
from umec_torchrec.train.config import TrainConfig
from umec_torchrec.umec.masked_optimizer import MaskedOptimizer
from umec_torchrec.umec.masks import PruningMasks

KINDS = ("dot", "dcn", "cat")


def _cfg(kind: str, data) -> ModelConfig:
    return ModelConfig(kind, list(data.feature_names), list(data.table_sizes), data.dense.shape[1], 8,
                       [16, 12, 8], [16, 8, 1])


def _masks(cfg: ModelConfig) -> PruningMasks:
    """Features 0, 2, 3 kept (of 6), a few units of every hidden layer pruned."""
    names = cfg.feature_names
    return PruningMasks(feature_names=list(names), kept_features=[names[0], names[2], names[3]],
                        layers={"dense_arch.model._mlp.0": [0, 2, 3, 5, 7, 8, 11, 13],
                                "dense_arch.model._mlp.1": [1, 2, 4, 6, 9, 10],
                                "over_arch.model.0._mlp.0": [0, 1, 3, 4, 8, 9, 12, 15],
                                "over_arch.model.0._mlp.1": [2, 3, 5, 7]},
                        layer_widths={"dense_arch.model._mlp.0": 16, "dense_arch.model._mlp.1": 12,
                                      "over_arch.model.0._mlp.0": 16, "over_arch.model.0._mlp.1": 8})


def _trained_checkpoint(tmp_path, kind: str, tcfg: TrainConfig, ctx, data):
    """A full model trained 3 steps (so its optimizer state is not all zeros), saved with DCP."""
    cfg = _cfg(kind, data)
    dmp, opt = build_training(cfg, tcfg, ctx, tables_on_meta=True)
    for i in range(3):
        loss, _ = dmp(data.make_batch(torch.arange(i * 64, (i + 1) * 64)))
        loss.backward()
        opt.step()
        opt.zero_grad()
    path = str(tmp_path / f"ck-{kind}")
    save_checkpoint(path, dmp, opt)
    return cfg, path


def _masked(cfg, masks, tcfg, ctx, path):
    dmp, opt = build_training(cfg, tcfg, ctx, tables_on_meta=True)
    load_checkpoint(path, dmp, opt)
    return dmp, MaskedOptimizer(opt, dmp, masks)


def _compact(arch, tcfg, ctx, path, source_cfg=None):
    dmp, opt = build_training(arch.config, tcfg, ctx, tables_on_meta=True)
    counts = load_compact_state(path, source_cfg or arch.dense, arch, dmp, opt)
    return dmp, opt, counts


@pytest.mark.parametrize("kind", KINDS)
def test_compact_logits_equal_masked_at_start_and_after_steps(tmp_path, kind):
    """Generated data. Loaded from the same full checkpoint, the compact model's logits equal the
    masked full model's (1e-5) at step 0; with the same optimizer state carried over (sliced
    Adagrad sums) the two trajectories stay equal for 4 steps (1e-4). The compact model's
    tables hold only the kept features' rows."""
    data = make_data(1200)
    ctx = init_distributed()
    tcfg = TrainConfig(batch_size=64, log_every=0)
    cfg, path = _trained_checkpoint(tmp_path, kind, tcfg, ctx, data)
    masks = _masks(cfg)
    arch = CompactArch.of(cfg, masks)
    assert arch.config.feature_names == [cfg.feature_names[i] for i in (0, 2, 3)]
    mdmp, mopt = _masked(cfg, masks, tcfg, ctx, path)
    cdmp, copt, counts = _compact(arch, tcfg, ctx, path)
    assert counts["sliced"] > 0 and counts["direct"] > 0
    keep = arch.keep_features
    for step in range(5):
        batch = data.make_batch(torch.arange(600 + step * 64, 600 + (step + 1) * 64))
        ml, (_, mlog, _) = mdmp(mopt.feature_mask(batch))
        cl, (_, clog, _) = cdmp(keep(batch))
        tol = 1e-5 if step == 0 else 1e-4
        assert torch.allclose(clog, mlog, atol=tol, rtol=0), (step, float((clog - mlog).abs().max()))
        ml.backward()
        cl.backward()
        mopt.step()
        copt.step()
        mopt.zero_grad()
        copt.zero_grad()
    rows = sum(arch.config.table_sizes) * cfg.embedding_dim * 4
    assert rows <= table_state_bytes(cdmp) < table_state_bytes(mdmp)


def test_compact_loads_from_compact_checkpoint(tmp_path):
    """Generated data. A compact checkpoint (a fine-tuned compact run's) loads into the compact
    model unchanged (every tensor direct, none sliced); a checkpoint of a third architecture is
    refused naming both."""
    data = make_data(600)
    ctx = init_distributed()
    tcfg = TrainConfig(batch_size=64, log_every=0)
    cfg, path = _trained_checkpoint(tmp_path, "cat", tcfg, ctx, data)
    arch = CompactArch.of(cfg, _masks(cfg))
    cdmp, copt, _ = _compact(arch, tcfg, ctx, path)
    cpath = str(tmp_path / "compact")
    save_checkpoint(cpath, cdmp, copt)
    again, aopt, counts = _compact(arch, tcfg, ctx, cpath, source_cfg=arch.config)
    assert counts["sliced"] == 0
    batch = arch.keep_features(data.make_batch(torch.arange(64)))
    assert torch.equal(cdmp(batch)[1][1], again(batch)[1][1])
    other = ModelConfig("cat", cfg.feature_names, cfg.table_sizes, cfg.dense_in_features, 8, [16, 10, 8], [16, 8, 1])
    with pytest.raises(ValueError, match="neither the dense model"):
        load_compact_state(path, other, arch, again, aopt)


def test_keep_features_drops_other_keys():
    """Generated data: KeepFeatures leaves the named keys in the named order with their ids; a
    missing key is a KeyError naming it; dense-arch pruning has no compact model (ValueError)."""
    data = make_data(8)
    batch = data.make_batch(torch.arange(8))
    names = list(data.feature_names)
    keep = KeepFeatures([names[3], names[1]])
    out = keep(batch).sparse_features
    assert out.keys() == [names[3], names[1]]
    full = batch.sparse_features.to_dict()
    for k in out.keys():
        assert torch.equal(out[k].values(), full[k].values())
    with pytest.raises(KeyError, match="nope"):
        KeepFeatures(["nope"])(batch)
    cfg = _cfg("cat", data)
    with pytest.raises(ValueError, match="dense-arch output"):
        CompactArch.of(cfg, PruningMasks(list(names), names[:2], dense_kept=False))


def test_pruned_tables_are_never_read(tmp_path, monkeypatch):
    """Generated data: loading the compact model (and its optimizer) from a full checkpoint asks
    DCP for no storage item of a pruned table, weights or optimizer state (every read recorded
    at ``FileSystemReader.read_data``)."""
    from torch.distributed.checkpoint import FileSystemReader

    data = make_data(600)
    ctx = init_distributed()
    tcfg = TrainConfig(batch_size=64, log_every=0)
    cfg, path = _trained_checkpoint(tmp_path, "dot", tcfg, ctx, data)
    arch = CompactArch.of(cfg, _masks(cfg))
    read = []
    orig = FileSystemReader.read_data

    def spy(self, plan, planner):
        read.extend(item.storage_index.fqn for item in plan.items)
        return orig(self, plan, planner)

    monkeypatch.setattr(FileSystemReader, "read_data", spy)
    _compact(arch, tcfg, ctx, path)
    pruned = [f"t_{f}." for f in arch.masks.pruned_features]
    kept = [f"t_{f}." for f in arch.masks.kept_features]
    assert read and not [k for k in read if any(p in k for p in pruned)]
    assert all(any(k2 in k for k in read) for k2 in kept)  # the kept tables were read


def _multi_hot_batch(cfg: ModelConfig, n: int, seed: int):
    """Generated rows with 0-3 ids per feature and sample (an empty bag too)."""
    from torchrec.datasets.utils import Batch
    from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(0, 4, (len(cfg.feature_names), n), generator=g)
    values = torch.cat([torch.randint(0, size, (int(lengths[i].sum()),), generator=g)
                        for i, size in enumerate(cfg.table_sizes)])
    kjt = KeyedJaggedTensor.from_lengths_sync(keys=list(cfg.feature_names), values=values,
                                              lengths=lengths.flatten().int())
    return Batch(dense_features=torch.randn(n, cfg.dense_in_features, generator=g), sparse_features=kjt,
                 labels=torch.randint(0, 2, (n,), generator=g).float())


def test_compact_equals_masked_on_multi_hot_mean_pooled_rows(tmp_path):
    """Generated multi-hot rows (0-3 ids per feature, two tables mean-pooled): the compact
    model keeps the kept tables' pooling and its logits equal the masked model's (1e-5)."""
    data = make_data(600)
    ctx = init_distributed()
    tcfg = TrainConfig(batch_size=64, log_every=0)
    base = _cfg("dot", data)
    cfg = ModelConfig(**{**base.to_dict(), "pooling": {"t_f0": "mean", "t_f1": "mean"}})
    dmp, opt = build_training(cfg, tcfg, ctx, tables_on_meta=True)
    path = str(tmp_path / "ck")
    save_checkpoint(path, dmp, opt)
    masks = _masks(cfg)
    arch = CompactArch.of(cfg, masks)
    assert arch.config.pooling == {"t_f0": "mean"}
    mdmp, mopt = _masked(cfg, masks, tcfg, ctx, path)
    cdmp, _, _ = _compact(arch, tcfg, ctx, path)
    batch = _multi_hot_batch(cfg, 64, 3)
    _, (_, mlog, _) = mdmp(mopt.feature_mask(batch))
    _, (_, clog, _) = cdmp(arch.keep_features(batch))
    assert torch.allclose(clog, mlog, atol=1e-5, rtol=0), float((clog - mlog).abs().max())
