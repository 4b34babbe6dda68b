"""2-rank training (spawned gloo processes, see ``tests/helpers/mp.py``) against 1 rank.
Generated data only (``tests/helpers/data.py``: ``make_bundle``)."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from helpers.data import SMALL_MODEL, make_bundle
from helpers.mp import run_multiprocess
from umec_torchrec.distributed import init_distributed
from umec_torchrec.models import build_model
from umec_torchrec.train import (
    TrainConfig,
    build_training,
    evaluate,
    fit,
    load_checkpoint,
    make_model_config,
    plan_summary,
    save_checkpoint,
)

SHARDINGS = ("table_wise", "column_wise")
STEPS = 24


def _config(sharding: str) -> TrainConfig:
    # SGD: Adagrad's first steps are lr * sign(grad), which turns rounding-level differences
    # of near-zero gradients (summation order across ranks) into lr-sized ones.
    return TrainConfig(batch_size=64, steps=STEPS, sharding=sharding, seed=0, log_every=0,
                       embedding_optimizer="sgd", dense_optimizer="sgd", emb_lr=0.5, dense_lr=0.3,
                       lr_schedule="linear", warmup_steps=3)


def _train(ctx, sharding):
    b = make_bundle(1600)
    tc = _config(sharding)
    dmp, opt = build_training(make_model_config(b.train, SMALL_MODEL), tc, ctx)
    losses = []

    def on_step(i, loss):  # mean over ranks = the loss of the global batch (equal local sizes)
        t = torch.tensor([loss], dtype=torch.float64)
        if ctx.world_size > 1:
            dist.all_reduce(t)
        losses.append(t.item() / ctx.world_size)

    fit(dmp, opt, b.train, tc, ctx, progress=False, on_step=on_step)
    return b, dmp, opt, losses


def _worker(rank: int, world_size: int, out: str) -> dict:
    ctx = init_distributed("gloo")
    assert (ctx.rank, ctx.world_size) == (rank, world_size)
    result = {}
    for sharding in SHARDINGS:
        b, dmp, opt, losses = _train(ctx, sharding)
        plans = set(plan_summary(dmp).values())
        save_checkpoint(f"{out}/{sharding}", dmp, opt, extra={"progress": {"steps": STEPS}})
        result[sharding] = {"losses": losses, "metrics": evaluate(dmp, b.test, 256, ctx), "plans": sorted(plans)}
    # stateful optimizers (row-wise Adagrad tables + Adagrad MLPs) for the optimizer-state reshard check
    b = make_bundle(1600)
    tc = TrainConfig(batch_size=64, steps=6, sharding="table_wise", log_every=0)
    dmp, opt = build_training(make_model_config(b.train, SMALL_MODEL), tc, ctx)
    fit(dmp, opt, b.train, tc, ctx, progress=False)
    save_checkpoint(f"{out}/adagrad", dmp, opt)
    result["adagrad"] = evaluate(dmp, b.test, 256, ctx)
    return result


def test_two_ranks_match_one_rank_and_checkpoint_reshards(tmp_path):
    """TW and CW on 2 ranks: same loss trajectory as 1 rank on the same global batches
    (within 1e-4), same held-out metrics on every rank, and the 2-rank checkpoint (model +
    optimizer) loads into 1 rank and into a plain unsharded model."""
    res = run_multiprocess(_worker, world_size=2, out=str(tmp_path))
    ctx = init_distributed("gloo")
    for sharding in SHARDINGS:
        r0, r1 = res[0][sharding], res[1][sharding]
        assert r0["metrics"] == r1["metrics"]  # evaluation is gathered: identical on both ranks
        assert any("ranks=[1]" in p or "ranks=[0, 1]" in p for p in r0["plans"]), r0["plans"]
        b, dmp, opt, losses = _train(ctx, sharding)
        assert len(losses) == len(r0["losses"]) == STEPS
        assert max(abs(a - c) for a, c in zip(losses, r0["losses"])) < 1e-4, (losses, r0["losses"])
        assert sum(losses[-6:]) < sum(losses[:6]), losses  # it learns
        one = evaluate(dmp, b.test, 256, ctx)
        assert one["auc"] == pytest.approx(r0["metrics"]["auc"], abs=1e-4)

        # reshard: 2-rank checkpoint -> fresh 1-rank DMP (model + optimizer)
        dmp2, opt2 = build_training(make_model_config(b.train, SMALL_MODEL), _config(sharding).replace(seed=5), ctx)
        extra = {"progress": {"steps": 0}}
        load_checkpoint(f"{tmp_path}/{sharding}", dmp2, opt2, extra)
        assert extra["progress"]["steps"] == STEPS
        loaded = evaluate(dmp2, b.test, 256, ctx)
        assert loaded["auc"] == pytest.approx(r0["metrics"]["auc"], abs=1e-9)
        assert loaded["log_loss"] == pytest.approx(r0["metrics"]["log_loss"], abs=1e-7)
        key = "model.sparse_arch.embedding_bag_collection.embedding_bags.t_f1.weight"

        # and into a plain, unsharded model
        plain = build_model(make_model_config(b.train, SMALL_MODEL))
        load_checkpoint(f"{tmp_path}/{sharding}", plain)
        full = dmp2.state_dict()[key]
        shards = torch.cat([s.tensor for s in full.local_shards()], dim=1) if hasattr(full, "local_shards") else full
        assert torch.equal(plain.state_dict()[key], shards)

    # optimizer state written by 2 ranks (TW row-wise Adagrad + dense Adagrad) loads into 1 rank
    b = make_bundle(1600)
    tc = TrainConfig(batch_size=64, steps=6, sharding="table_wise", log_every=0)
    dmp3, opt3 = build_training(make_model_config(b.train, SMALL_MODEL), tc, ctx)

    def state_sums(o):
        st = o.state_dict()["state"]
        out = {}
        for k, v in st.items():
            for name, t in v.items():
                if hasattr(t, "local_shards"):
                    t = torch.cat([s.tensor.flatten() for s in t.local_shards()])
                if torch.is_tensor(t) and t.is_floating_point() and t.numel() > 1:
                    out[f"{k}/{name}"] = float(t.abs().sum())
        return out

    before = state_sums(opt3)
    assert before and all(v == 0.0 for v in before.values()), before
    load_checkpoint(f"{tmp_path}/adagrad", dmp3, opt3)
    after = state_sums(opt3)
    assert after.keys() == before.keys() and all(v > 0 for v in after.values()), after
    assert evaluate(dmp3, b.test, 256, ctx)["auc"] == pytest.approx(res[0]["adagrad"]["auc"], abs=1e-9)


# --- issue 16, item 22: the reported loss is the global mean, whatever the world size -----
RESUME_AT, RESUME_TOTAL = 20, 30


def _resume_config() -> TrainConfig:
    # log_every=0: one loss window over the whole run, so the window at the checkpoint
    # (steps 1-20, written by 2 ranks) is part of the final figure; small batches (8 rows a
    # rank) of a model that has learned something make the ranks' local losses differ
    return _config("table_wise").replace(batch_size=16, steps=RESUME_TOTAL, log_every=0)


def _fit_with_checkpoints(ctx, root: str) -> dict:
    from umec_torchrec.train.ckpt_manager import CheckpointManager, CheckpointPolicy

    b = make_bundle(1600)
    tc = _resume_config()
    dmp, opt = build_training(make_model_config(b.train, SMALL_MODEL), tc, ctx)
    mgr = CheckpointManager(root, CheckpointPolicy(every=RESUME_AT, keep=5))
    return fit(dmp, opt, b.train, tc, ctx, progress=False, checkpoints=mgr)


def _resume_worker(rank: int, world_size: int, root: str) -> dict:
    return _fit_with_checkpoints(init_distributed("gloo"), root)


def test_loss_is_the_global_mean_and_survives_a_world_size_change(tmp_path):
    """Generated data. A 2-rank run reports the same ``loss`` and ``mean_loss`` (the mean
    over ranks and steps) as a 1-rank run; its step-20 checkpoint resumed on 1 rank reports
    them too, not rank 0's local window."""
    import shutil

    from umec_torchrec.train.ckpt_manager import CheckpointManager

    two = run_multiprocess(_resume_worker, world_size=2, root=str(tmp_path / "two"))
    assert two[0]["loss"] == two[1]["loss"] and two[0]["mean_loss"] == two[1]["mean_loss"]
    ctx = init_distributed("gloo")
    one = _fit_with_checkpoints(ctx, str(tmp_path / "one"))
    for k in ("loss", "mean_loss"):
        assert two[0][k] == pytest.approx(one[k], abs=1e-5), (k, two[0][k], one[k])

    # resume the 2-rank run from its step-7 checkpoint on 1 rank
    root = tmp_path / "resume"
    root.mkdir()
    shutil.copytree(tmp_path / "two" / f"step-{RESUME_AT:06d}", root / f"step-{RESUME_AT:06d}")
    b = make_bundle(1600)
    tc = _resume_config()
    dmp, opt = build_training(make_model_config(b.train, SMALL_MODEL), tc.replace(seed=5), ctx)
    mgr = CheckpointManager(str(root))
    got = mgr.restore(dmp, opt)
    assert got is not None and got.step == RESUME_AT and len(got.progress["ranks"]) == 2
    resumed = fit(dmp, opt, b.train, tc, ctx, progress=False, resumed=got)
    assert resumed["steps"] == RESUME_TOTAL and resumed["samples"] == two[0]["samples"]
    for k in ("loss", "mean_loss"):
        # rank 0's local window instead of the mean over ranks is off by about 1e-3 here
        assert resumed[k] == pytest.approx(two[0][k], abs=1e-5), (k, resumed[k], two[0][k])
