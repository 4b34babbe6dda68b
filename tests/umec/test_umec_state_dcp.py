"""The UMEC state in ``torch.distributed.checkpoint``: ``dcp.save({"model": dmp.state_dict(),
"optim": umec.state_dict()})`` loads with ``dcp.load`` into a fresh ``UMECOptimizer``, mid-search
and after ``finalize()``, on 2 gloo ranks (table-wise tables, stateful fused and dense
optimizers) and on one process for every score kind. Generated data only (planted signal,
:func:`umec_torchrec.data.testing.planted_ctr`).

Before the state had a fixed structure, the mid-search load failed with ``Invalid checkpoint
metadata for optim.umec.scale`` (``None`` in a fresh optimizer, a tensor once searched) and the
finalized one with ``Missing key ... optim.umec.masks``.
"""

from __future__ import annotations

import os
from typing import Any, Dict, List

import pytest
import torch
import torch.distributed.checkpoint as dcp

from helpers.data import random_data
from helpers.models import small_model
from helpers.mp import run_multiprocess
from helpers.umec_steps import masked_logits, umec_steps
from umec_torchrec.data.testing import planted_ctr
from umec_torchrec.distributed import init_distributed
from umec_torchrec.models import ModelConfig
from umec_torchrec.train import TrainConfig, build_training
from umec_torchrec.umec.importance import ScoreKind
from umec_torchrec.umec.optimizer import UMECConfig, UMECOptimizer

SIZES = [1000, 1200, 1000, 1500]
FEATURES = [f"f{i}" for i in range(len(SIZES))]
BATCH = 64


def flat(d: Any, prefix: str = "") -> Dict[str, Any]:
    """A nested state dict as ``{"a.b.c": leaf}``."""
    if isinstance(d, dict):
        out: Dict[str, Any] = {}
        for k, v in d.items():
            out.update(flat(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: d}


def assert_same_state(a: Dict[str, Any], b: Dict[str, Any]) -> None:
    """Same keys, and every tensor equal in shape, dtype and value (NaN equal to NaN)."""
    fa, fb = flat(a), flat(b)
    assert sorted(fa) == sorted(fb)
    for k in fa:
        assert isinstance(fa[k], torch.Tensor), (k, type(fa[k]))
        assert fa[k].dtype == fb[k].dtype and fa[k].shape == fb[k].shape, k
        torch.testing.assert_close(fa[k], fb[k], rtol=0, atol=0, equal_nan=True, msg=k)


def assert_same_layout(a: Dict[str, Any], b: Dict[str, Any]) -> None:
    """Same keys, and every leaf a tensor of the same shape and dtype."""
    fa, fb = flat(a), flat(b)
    assert sorted(fa) == sorted(fb)
    for k in fa:
        assert isinstance(fa[k], torch.Tensor) and isinstance(fb[k], torch.Tensor), k
        assert (fa[k].shape, fa[k].dtype) == (fb[k].shape, fb[k].dtype), k


def _data():
    return planted_ctr(1200, SIZES, n_dense=4, seed=0, bias=0.0)


def _build(ctx, seed: int):
    cfg = ModelConfig("cat", FEATURES, SIZES, 4, 8, [16, 8], [16, 8, 1])
    tc = TrainConfig(batch_size=BATCH, sharding="table_wise", seed=seed, log_every=0,
                     embedding_optimizer="rowwise_adagrad", dense_optimizer="adagrad", emb_lr=0.05, dense_lr=0.02)
    dmp, opt = build_training(cfg, tc, ctx)
    # validation batches for the measured scores: this rank's slices of 4 global batches
    valid = planted_ctr(4 * BATCH, SIZES, n_dense=4, seed=1, bias=0.0)
    return dmp, UMECOptimizer(opt, dmp, ["flops=0.4"], UMECConfig(s_lr=0.05, check_every=5),
                              holdout=lambda: valid.batches(BATCH, rank=ctx.rank, world_size=ctx.world_size))


def _steps(ctx, dmp, umec, first: int, last: int) -> None:
    it = _data().batches(BATCH, shuffle=True, seed=0, rank=ctx.rank, world_size=ctx.world_size, start=first)
    umec_steps(dmp, umec, (b for _, b in zip(range(last - first), it)))


def _logits(dmp, umec) -> torch.Tensor:
    return masked_logits(dmp, umec, _data().make_batch(torch.arange(128)))


def _save_load_continue(ctx, dmp, umec, ckpt: str, step: int) -> Dict[str, Any]:
    """The issue's recipe: save model + optimizer, load into fresh objects (another seed), then
    train both 3 more steps on the same batches."""
    dcp.save({"model": dmp.state_dict(), "optim": umec.state_dict()}, checkpoint_id=ckpt)
    dmp2, umec2 = _build(ctx, seed=7)
    fresh = umec2.umec_state_dict()
    sd = {"model": dmp2.state_dict(), "optim": umec2.state_dict()}
    dcp.load(sd, checkpoint_id=ckpt)
    dmp2.load_state_dict(sd["model"])
    umec2.load_state_dict(sd["optim"])
    assert_same_layout(fresh, umec.umec_state_dict())  # the structure is fixed in every phase
    assert_same_state(umec2.umec_state_dict(), umec.umec_state_dict())
    assert umec2.phase == umec.phase and umec2.masks == umec.masks
    _steps(ctx, dmp, umec, step, step + 3)
    _steps(ctx, dmp2, umec2, step, step + 3)
    assert_same_state(umec2.umec_state_dict(), umec.umec_state_dict())
    torch.testing.assert_close(_logits(dmp2, umec2), _logits(dmp, umec), rtol=0, atol=0)
    return {"phase": umec2.phase, "pruned": list(umec2.masks.pruned_features) if umec2.masks else None}


def _worker(rank: int, world_size: int, out: str) -> List[Dict[str, Any]]:
    ctx = init_distributed("gloo")
    dmp, umec = _build(ctx, seed=0)
    _steps(ctx, dmp, umec, 0, 6)
    res = [_save_load_continue(ctx, dmp, umec, os.path.join(out, "search"), 6)]
    umec.finalize()
    _steps(ctx, dmp, umec, 9, 11)
    res.append(_save_load_continue(ctx, dmp, umec, os.path.join(out, "fixed"), 11))
    return res


def test_dcp_round_trip_into_fresh_optimizer_on_two_ranks(tmp_path):
    """2 gloo ranks, table-wise tables: the issue's ``dcp.save`` / ``dcp.load`` into a fresh
    UMECOptimizer mid-search and after finalize gives the same UMEC state (every tensor
    bit-equal) and, 3 steps later, the same state and logits as the run that was not stopped."""
    res = run_multiprocess(_worker, world_size=2, out=str(tmp_path))
    for r in res:
        assert [x["phase"] for x in r] == ["search", "fixed"]
    assert res[0] == res[1]


@pytest.mark.parametrize("cfg", [dict(score="fisher"), dict(score="activation"), dict(score="centered"),
                                 dict(score="holdout"), dict(score="mixed"), dict(score="shrunk"),
                                 dict(score="weight", s_step="gradient")])
def test_state_layout_is_fixed_for_every_score_and_loads_with_dcp(tmp_path, cfg):
    """One process, every score kind: the state of a fresh optimizer, one mid-search and one
    after finalize have the same keys, shapes and dtypes, all plain tensors; each saved with
    ``dcp.save`` loads into a fresh optimizer with ``dcp.load`` and equals the saved one."""
    data = random_data(n=256, features=4)

    def build(seed):
        model, _ = small_model("dcn" if cfg["score"] == "activation" else "cat", data, seed=seed)
        inner = torch.optim.Adagrad(model.parameters(), lr=0.05)
        holdout = (lambda: data.batches(128)) if ScoreKind(cfg["score"]).needs_holdout else None
        return model, UMECOptimizer(inner, model, ["flops=0.4"], UMECConfig(check_every=0, **cfg), holdout=holdout)

    model, umec = build(0)
    states = [umec.umec_state_dict()]
    for b in data.batches(64):
        loss, _ = model(umec.feature_mask(b))
        loss.backward()
        umec.step()
        umec.zero_grad()
    states.append(umec.umec_state_dict())
    umec.finalize()
    states.append(umec.umec_state_dict())
    for st in states[1:]:
        assert_same_layout(states[0], st)
    assert torch.isnan(states[0]["scale"]).all() and not torch.isnan(states[1]["scale"]).any()
    assert not bool(states[1]["finalized"]) and bool(states[2]["finalized"])
    for i, st in enumerate(states[1:]):
        path = str(tmp_path / f"ckpt{i}")
        dcp.save({"optim": {"umec": st}}, checkpoint_id=path)
        _, fresh = build(3)
        sd = {"optim": {"umec": fresh.umec_state_dict()}}
        dcp.load(sd, checkpoint_id=path)
        fresh.load_umec_state_dict(sd["optim"]["umec"])
        assert_same_state(fresh.umec_state_dict(), st)
        assert fresh.phase == ("fixed" if i == 1 else "search")
