"""UMEC with TorchRec training pipelines (CPU; a 1-rank gloo group, and one 2-rank spawn; table-wise sharding).

``TrainPipelineSparseDist`` starts the input distribution of batch ``i + 1`` before the
forward of batch ``i``, from the batch the loader gave it: the mask has to be applied to the
loader (``umec.feature_mask.wrap(loader)``), and it has to be the *current* mask, so
``finalize()`` updates the one :class:`FeatureMask` object in place. The tests spy on the
sharded EBC's ``input_dist`` and count the ids of every feature it receives. Generated data
(planted signal, no real data).
"""

from __future__ import annotations

from typing import Dict, List

import pytest
import torch
from torchrec.distributed.train_pipeline import TrainPipelineBase, TrainPipelineSparseDist
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from umec_torchrec.data.testing import planted_ctr
from umec_torchrec.distributed import init_distributed
from umec_torchrec.models import ModelConfig, find_dlrm
from umec_torchrec.train import TrainConfig, build_training
from umec_torchrec.umec import FeatureMask, PruningMasks
from umec_torchrec.umec.optimizer import UMECConfig, UMECOptimizer

SIZES = [1000, 1200, 1000, 1100]
FEATURES = [f"f{i}" for i in range(len(SIZES))]
BATCH = 32


def _batches(n: int) -> List:
    data = planted_ctr(BATCH * n, SIZES, n_dense=4, seed=0, bias=0.0)
    return list(data.batches(BATCH, shuffle=False))[:n]


@pytest.fixture(scope="module")
def ctx():
    c = init_distributed("gloo")  # a 1-rank gloo group in this process (reused if one exists)
    assert c.world_size == 1
    return c


def _build(ctx):
    cfg = ModelConfig("cat", FEATURES, SIZES, 4, 8, [16, 8], [16, 8, 1])
    tc = TrainConfig(batch_size=BATCH, sharding="table_wise", seed=0, log_every=0, embedding_optimizer="sgd",
                     dense_optimizer="sgd", emb_lr=0.1, dense_lr=0.05)
    dmp, opt = build_training(cfg, tc, ctx)
    umec = UMECOptimizer(opt, dmp, ["flops=0.6"], UMECConfig(score="weight"))
    return dmp, umec


def _spy(dmp) -> List[Dict[str, int]]:
    """Ids per feature received by the sharded EBC's input_dist, one record per call."""
    sebc = find_dlrm(dmp).sparse_arch.embedding_bag_collection
    calls: List[Dict[str, int]] = []
    original = sebc.input_dist

    def input_dist(ctx, features: KeyedJaggedTensor, *args, **kwargs):
        calls.append({k: int(n) for k, n in zip(features.keys(), features.length_per_key())})
        return original(ctx, features, *args, **kwargs)

    sebc.input_dist = input_dist
    return calls


def test_feature_mask_is_one_object_updated_in_place(ctx):
    """A mapped loader built before finalize() drops the ids pruned by it (today finalize
    replaces the attribute, so the early reference keeps sending every id)."""
    dmp, umec = _build(ctx)
    ref = umec.feature_mask
    mapped = map(umec.feature_mask, _batches(3))
    first = next(mapped)
    assert first.sparse_features.length_per_key() == [BATCH] * len(FEATURES)
    masks = umec.finalize()
    assert umec.feature_mask is ref and isinstance(ref, FeatureMask)
    pruned = set(masks.pruned_features)
    assert pruned, masks
    after = next(mapped).sparse_features
    assert after.length_per_key() == [0 if f in pruned else BATCH for f in FEATURES]


def test_set_masks_updates_the_same_object(ctx):
    dmp, umec = _build(ctx)
    ref = umec.feature_mask
    wrapped = umec.feature_mask.wrap(_batches(2))
    umec.set_masks(PruningMasks(FEATURES, ["f0", "f3"]))
    assert umec.feature_mask is ref
    got = [b.sparse_features.length_per_key() for b in wrapped]
    assert got == [[BATCH, 0, 0, BATCH]] * 2


@pytest.mark.parametrize("pipeline_cls", [TrainPipelineSparseDist, TrainPipelineBase])
def test_pipeline_input_dist_sees_no_pruned_ids(ctx, pipeline_cls):
    """Search steps through the pipeline, finalize() in the middle of the iteration: every batch
    drawn from the wrapped loader after finalize reaches the input distribution without the
    pruned features' ids; before it, all ids arrive. (The pipeline draws batches ahead: the
    batches already drawn keep their ids.) Without the wrapper the pruned ids arrive."""
    dmp, umec = _build(ctx)
    calls = _spy(dmp)
    drawn: List[int] = []
    loader = _batches(10)

    def counted():
        for i, b in enumerate(loader):
            drawn.append(i)
            yield b

    pipe = pipeline_cls(dmp, umec, torch.device("cpu"))
    it = iter(umec.feature_mask.wrap(counted()))
    for _ in range(3):
        pipe.progress(it)
    masks = umec.finalize()
    pruned = set(masks.pruned_features)
    assert pruned and len(pruned) < len(FEATURES), masks
    n_before = len(drawn)  # batches already drawn (and masked) before finalize
    assert len(calls) <= n_before
    while True:
        try:
            pipe.progress(it)
        except StopIteration:
            break
    assert len(calls) == len(loader)  # one input distribution per batch
    for i, rec in enumerate(calls):
        for f in FEATURES:
            expect = 0 if (i >= n_before and f in pruned) else BATCH
            assert rec[f] == expect, (i, f, rec, n_before)
    # the same pipeline without the wrapper: the pruned ids reach the input distribution
    calls.clear()
    pipe2 = pipeline_cls(dmp, umec, torch.device("cpu"))
    raw = iter(_batches(3))
    for _ in range(2):
        pipe2.progress(raw)
    assert all(rec[f] == BATCH for rec in calls for f in FEATURES)


class _MaskInForward(torch.nn.Module):
    """A user's wrapper that masks inside forward: bypassed by a pipeline that moves the input
    distribution out of the forward."""

    def __init__(self, model, mask: FeatureMask) -> None:
        super().__init__()
        self.inner = model
        self.mask = mask

    def forward(self, batch):
        return self.inner(self.mask(batch))


def test_mask_inside_forward_of_a_pipelined_model_is_refused(ctx):
    """TrainPipelineSparseDist traces the model to pipeline its sharded EBC: a FeatureMask met
    while tracing is refused with an error that names the loader wrapper (today an empty mask
    passes the trace, and the pipeline then ignores the mask once finalize() fills it)."""
    dmp, umec = _build(ctx)
    pipe = TrainPipelineSparseDist(_MaskInForward(dmp, umec.feature_mask), umec, torch.device("cpu"))
    with pytest.raises(RuntimeError, match=r"traced forward.*feature_mask\.wrap\(loader\)"):
        pipe.progress(iter(_batches(3)))


def _two_rank_pipeline(rank: int, world_size: int) -> Dict[str, Dict[str, int]]:
    """TW on 2 ranks, masks fixed, 4 pipeline steps on the wrapped loader: the ids each rank's
    table shards receive after the input distribution (the all-to-all)."""
    ctx = init_distributed("gloo")
    dmp, umec = _build(ctx)
    umec.set_masks(PruningMasks(FEATURES, ["f0", "f3"]))
    sebc = find_dlrm(dmp).sparse_arch.embedding_bag_collection
    seen: Dict[str, int] = {}
    original = sebc.compute_and_output_dist

    def spy(module_ctx, dist_input):
        for kjt in dist_input:
            for k, n in zip(kjt.keys(), kjt.length_per_key()):
                seen[k] = seen.get(k, 0) + int(n)
        return original(module_ctx, dist_input)

    sebc.compute_and_output_dist = spy
    data = planted_ctr(BATCH * 8, SIZES, n_dense=4, seed=0, bias=0.0)
    batches = list(data.batches(BATCH, shuffle=False, rank=rank, world_size=world_size))[:4]
    pipe = TrainPipelineSparseDist(dmp, umec, torch.device("cpu"))
    it = iter(umec.feature_mask.wrap(batches))
    steps = 0
    while True:
        try:
            pipe.progress(it)
            steps += 1
        except StopIteration:
            break
    from umec_torchrec.train import plan_summary

    return {"seen": seen, "steps": {"n": steps}, "plans": plan_summary(dmp)}


def test_two_rank_pipeline_sends_no_pruned_ids_through_the_all_to_all():
    """2 gloo ranks, table-wise: with the pipeline and the wrapped loader, the rank owning a
    pruned feature's table receives none of its ids; kept features' owners receive all of
    them (4 steps x 2 ranks x the per-rank batch)."""
    from helpers.mp import run_multiprocess

    res = run_multiprocess(_two_rank_pipeline, world_size=2)
    owners = {f: int(res[0]["plans"][f"t_{f}"].split("ranks=[")[1].rstrip("]")) for f in FEATURES}
    assert set(owners.values()) == {0, 1}, owners
    for rank, r in enumerate(res):
        assert r["steps"]["n"] == 4
        for f in FEATURES:
            if owners[f] != rank:
                continue
            assert r["seen"].get(f, 0) == (0 if f in ("f1", "f2") else 4 * BATCH), (rank, f, r["seen"])
