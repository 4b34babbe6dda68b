"""Training library on one process (a 1-rank gloo group). All data is generated
(planted-signal random tensors, see ``tests/helpers/data.py``); no real data."""

from __future__ import annotations

import json
import math
import os

import pytest
import torch

from helpers.data import SIZES, SMALL_MODEL, make_bundle, make_data
from umec_torchrec.distributed import init_distributed
from umec_torchrec.models import build_model
from umec_torchrec.runs import Run
from umec_torchrec.stages import evaluate_run, train_run
from umec_torchrec.train import (
    LRSchedule,
    TrainConfig,
    binary_metrics,
    build_training,
    evaluate,
    fit,
    load_checkpoint,
    make_model_config,
    plan_summary,
    roc_auc,
    save_checkpoint,
    train_batches,
    train_steps,
)


@pytest.fixture(scope="module")
def ctx():
    return init_distributed("gloo")


def test_roc_auc_matches_pairwise_count_with_ties():
    """Generated scores with many ties: rank formula == brute-force pair count."""
    g = torch.Generator().manual_seed(3)
    s = torch.randint(0, 6, (300,), generator=g).double()
    y = (torch.rand(300, generator=g) < 0.4).float()
    pos, neg = s[y == 1], s[y == 0]
    diff = pos[:, None] - neg[None, :]
    brute = ((diff > 0).double().sum() + 0.5 * (diff == 0).double().sum()) / (pos.numel() * neg.numel())
    assert roc_auc(s, y) == pytest.approx(brute.item(), abs=1e-12)
    assert roc_auc(torch.tensor([0.1, 0.9]), torch.tensor([0.0, 1.0])) == 1.0
    assert math.isnan(roc_auc(torch.tensor([0.1, 0.9]), torch.tensor([1.0, 1.0])))


def test_binary_metrics_values():
    """Hand-checked log loss and accuracy on 4 generated logits."""
    logits = torch.tensor([2.0, -1.0, 0.5, -3.0])
    labels = torch.tensor([1.0, 0.0, 0.0, 1.0])
    m = binary_metrics(logits, labels)
    want = torch.nn.functional.binary_cross_entropy(torch.sigmoid(logits), labels).item()
    assert m["log_loss"] == pytest.approx(want, rel=1e-6)
    assert m["accuracy"] == 0.5 and m["rows"] == 4 and m["auc"] == 0.5


def test_train_config_validation():
    with pytest.raises(ValueError, match="embedding optimizer"):
        TrainConfig(embedding_optimizer="adam")
    with pytest.raises(ValueError, match="sharding"):
        TrainConfig(sharding="row_wise")
    with pytest.raises(ValueError, match="emb_lr"):
        TrainConfig(emb_lr=-1)
    assert TrainConfig.from_dict(TrainConfig(steps=3).to_dict()).steps == 3
    with pytest.raises(ValueError, match="unknown train config keys"):
        TrainConfig.from_dict({"bogus": 1})


def test_lr_schedule_warmup_then_linear_decay():
    """Schedule factors and the lr written into the param groups (generated model)."""
    class Opt:
        param_groups = [{"lr": 0.1}, {"lr": 0.2}]

    opt = Opt()
    sched = LRSchedule(opt, TrainConfig(lr_schedule="linear", warmup_steps=2, min_lr_factor=0.0), total_steps=6)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.05)  # step 0: 1/2 warm-up
    factors = [sched.factor(i) for i in range(7)]
    assert factors[:3] == pytest.approx([0.5, 1.0, 1.0 * (1 - 0 / 4)])
    assert factors[4] == pytest.approx(0.5) and factors[6] == pytest.approx(0.0)
    sched.step()
    assert opt.param_groups[1]["lr"] == pytest.approx(0.2)


def test_train_batches_same_global_batches_for_any_world_size():
    """Union over 2 ranks of step i == the 1-rank batch i (generated data, odd size)."""
    data = make_data(1001)
    one = [b.labels for b in train_batches(data, 100, world_size=1, seed=4)]
    r0 = [b.dense_features for b in train_batches(data, 100, rank=0, world_size=2, seed=4)]
    r1 = [b.dense_features for b in train_batches(data, 100, rank=1, world_size=2, seed=4)]
    full = [b.dense_features for b in train_batches(data, 100, world_size=1, seed=4)]
    assert len(one) == 11 and len(r0) == len(r1) == 10  # the 1-row tail cannot feed 2 ranks: dropped there
    for a, b, f in zip(r0, r1, full):
        assert torch.equal(torch.cat([a, b]), f)
    assert len(list(train_batches(data, 100, steps=25))) == 25


@pytest.mark.parametrize("emb,dense,sharding", [
    ("rowwise_adagrad", "adagrad", None),
    ("adagrad", "adam", "table_wise"),
    ("sgd", "sgd", "data_parallel"),
    ("rowwise_adagrad", "adagrad", "column_wise"),
])
def test_training_learns_the_planted_signal(ctx, emb, dense, sharding):
    """Every optimizer/sharding combination beats chance clearly on generated data."""
    b = make_bundle()
    lr = {"sgd": 0.2}.get(emb, 0.05)
    tc = TrainConfig(embedding_optimizer=emb, dense_optimizer=dense, emb_lr=lr,
                     dense_lr=0.3 if dense == "sgd" else 0.01,
                     batch_size=64, epochs=3, sharding=sharding, log_every=0)
    dmp, opt = build_training(make_model_config(b.train, SMALL_MODEL), tc, ctx)
    if sharding:
        assert all(v.startswith(sharding) for v in plan_summary(dmp).values())
    before = evaluate(dmp, b.test, 512, ctx)
    stats = fit(dmp, opt, b.train, tc, ctx, progress=False)
    after = evaluate(dmp, b.test, 512, ctx)
    assert stats["steps"] == 3 * -(-len(b.train) // 64)
    assert after["auc"] > 0.72 and after["auc"] > before["auc"] + 0.1
    assert after["log_loss"] < before["log_loss"]


def test_train_steps_calls_transform_and_callback(ctx):
    """batch_transform sees every batch before the model; on_step gets each loss (generated data)."""
    b = make_bundle(600)
    tc = TrainConfig(batch_size=50, log_every=0)
    dmp, opt = build_training(make_model_config(b.train, SMALL_MODEL), tc, ctx)
    seen, losses = [], []

    def zero_dense(batch):
        seen.append(batch.labels.shape[0])
        batch.dense_features = torch.zeros_like(batch.dense_features)
        return batch

    out = train_steps(dmp, opt, train_batches(b.train, 50), batch_transform=zero_dense,
                      on_step=lambda i, loss: losses.append((i, loss)), progress=False, log_every=0)
    assert out["steps"] == 9 and seen == [50] * 9 and [i for i, _ in losses] == list(range(9))
    assert all(math.isfinite(loss) for _, loss in losses)
    # with the dense input zeroed in evaluation too, dense column 0 carries no signal
    m0 = evaluate(dmp, b.test, 100, ctx, batch_transform=zero_dense)
    m1 = evaluate(dmp, b.test, 100, ctx)
    assert m0["auc"] != m1["auc"]


def test_checkpoint_round_trip_and_errors(ctx, tmp_path):
    """Save/load model + optimizer + extra; missing and corrupt checkpoints name the path (generated data)."""
    b = make_bundle(800)
    tc = TrainConfig(batch_size=100, dense_optimizer="adam", log_every=0)
    mcfg = make_model_config(b.train, SMALL_MODEL)
    dmp, opt = build_training(mcfg, tc, ctx)
    fit(dmp, opt, b.train, tc, ctx, progress=False)
    path = str(tmp_path / "ck")
    save_checkpoint(path, dmp, opt, extra={"progress": {"steps": 7}})
    save_checkpoint(path, dmp, opt, extra={"progress": {"steps": 7}})  # overwrite in place
    assert not os.path.exists(path + ".tmp")
    tc2 = tc.replace(seed=9)
    dmp2, opt2 = build_training(mcfg, tc2, ctx)
    extra = {"progress": {"steps": 0}}
    load_checkpoint(path, dmp2, opt2, extra)
    assert extra["progress"]["steps"] == 7
    assert evaluate(dmp2, b.test, 200, ctx) == evaluate(dmp, b.test, 200, ctx)
    # a plain unsharded model loads it too
    plain = build_model(mcfg)
    load_checkpoint(path, plain)
    sd, sd_plain = dmp.state_dict(), plain.state_dict()
    w = "model.dense_arch.model._mlp.0._linear.weight"
    assert torch.equal(sd[w], sd_plain[w])
    # optimizer state continues identically: one more step on both gives equal weights
    batch = next(iter(train_batches(b.train, 100)))
    for m, o in ((dmp, opt), (dmp2, opt2)):
        loss, _ = m(batch)
        loss.backward()
        o.step()
        o.zero_grad()
    assert torch.equal(dmp.state_dict()[w], dmp2.state_dict()[w])
    with pytest.raises(FileNotFoundError, match="nope"):
        load_checkpoint(str(tmp_path / "nope"), dmp2)
    os.remove(os.path.join(path, ".metadata"))
    with pytest.raises(ValueError, match=str(tmp_path)):
        load_checkpoint(path, dmp2)


def test_train_run_writes_run_directory_and_evaluate_reloads(ctx, tmp_path):
    """train_run -> config/metrics/checkpoint; evaluate_run gives the same metrics (generated data)."""
    b = make_bundle(1200)
    out = str(tmp_path / "run")
    m = train_run(b, SMALL_MODEL, TrainConfig(batch_size=64, epochs=2, log_every=0), out, ctx, progress=False)
    cfg = json.load(open(os.path.join(out, "config.json")))
    assert set(cfg) >= {"model", "data", "train", "versions"}
    assert cfg["data"]["table_sizes"] == SIZES and cfg["model"]["kind"] == "cat"
    assert cfg["versions"]["torchrec"] and os.path.isfile(os.path.join(out, "checkpoint", ".metadata"))
    saved = json.load(open(os.path.join(out, "metrics.json")))
    assert saved["test"]["auc"] == pytest.approx(m["test"]["auc"]) and m["test"]["rows"] == len(b.test)
    ev = evaluate_run(out, ctx, data=b)
    assert ev["auc"] == pytest.approx(m["test"]["auc"], abs=1e-9)
    assert json.load(open(os.path.join(out, "metrics.json")))["evaluate"]["rows"] == len(b.test)
    with pytest.raises(FileExistsError, match="--force"):
        train_run(b, SMALL_MODEL, TrainConfig(steps=1), out, ctx, progress=False)
    # the run was made from in-memory data: reopening without data says so
    with pytest.raises(ValueError, match="no data spec"):
        evaluate_run(out, ctx)
    # data with other table sizes is refused
    other = make_bundle(1200)
    other.train.table_sizes = [s + 1 for s in SIZES]
    with pytest.raises(ValueError, match="data changed"):
        evaluate_run(out, ctx, data=other)


def test_run_directory_errors(tmp_path):
    """Run.create / Run.open refuse clearly (no data involved)."""
    with pytest.raises(FileNotFoundError, match="no such run directory"):
        Run.open(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="config.json"):
        Run.open(str(tmp_path / "empty"))
    other = tmp_path / "notarun"
    other.mkdir()
    (other / "precious.txt").write_text("x")
    with pytest.raises(FileExistsError, match="refusing"):
        Run.create(str(other), force=True)
    assert (other / "precious.txt").exists()
    r = Run.create(str(tmp_path / "r"))
    r.write_config(model={"kind": "cat"}, data={"spec": None})
    r.write_metrics({"a": 1})
    r.write_metrics({"auc": 0.5}, section="evaluate")
    assert Run.open(r.path).read_metrics() == {"a": 1, "evaluate": {"auc": 0.5}}
    Run.create(r.path, force=True)
    assert os.listdir(r.path) == []
