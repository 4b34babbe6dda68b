"""Export of a checkpoint written by 2 sharded gloo ranks, and the compact model sharded again
with DistributedModelParallel on 2 gloo ranks. Generated weights and inputs."""

from __future__ import annotations

import torch
from test_export import kjt_of, masked_logits, random_masks, small_config
from torchrec.datasets.utils import Batch

from helpers.mp import run_multiprocess
from umec_torchrec.export import export_run, load_compact
from umec_torchrec.export.samples import sample_inputs
from umec_torchrec.models import build_model
from umec_torchrec.umec import apply_masks_

KIND = "dcn"
KEPT = ["C0", "C2", "C3", "C5"]


def _model_and_masks():
    torch.manual_seed(0)
    cfg = small_config(KIND, sizes=[1200 + 10 * i for i in range(6)])  # large enough for TW sharding
    model = build_model(cfg)
    masks = random_masks(model.model, KEPT, seed=4)
    apply_masks_(model.model, masks)
    return cfg, model, masks


def _save_sharded(rank: int, world_size: int, ckpt: str):
    from umec_torchrec.distributed import init_distributed
    from umec_torchrec.train.checkpoint import save_checkpoint
    from umec_torchrec.train.sharding import plan_summary, shard_model

    ctx = init_distributed("gloo")
    _, model, _ = _model_and_masks()
    dmp = shard_model(model, ctx, sharding_type="table_wise")
    save_checkpoint(ckpt, dmp)
    return plan_summary(dmp)


def _reshard(rank: int, world_size: int, export_dir: str, dense: torch.Tensor, ids: torch.Tensor, names):
    from torchrec.models.dlrm import DLRMTrain

    from umec_torchrec.distributed import init_distributed
    from umec_torchrec.train.sharding import plan_summary, shard_model

    ctx = init_distributed("gloo")
    compact = load_compact(export_dir)
    dmp = shard_model(DLRMTrain(compact), ctx, sharding_type="table_wise")
    half = dense.shape[0] // world_size
    sl = slice(rank * half, (rank + 1) * half)
    batch = Batch(dense_features=dense[sl], sparse_features=kjt_of(ids[sl], names), labels=torch.zeros(half))
    dmp.eval()
    with torch.no_grad():
        _, (_, logits, _) = dmp(batch)
    return plan_summary(dmp), logits.detach().tolist()  # plain floats: no shared-memory tensor handoff


def test_two_rank_checkpoint_export_and_resharding(tmp_path):
    """Generated weights: a DCN model table-wise sharded on 2 gloo ranks and saved with DCP is
    exported in one process; its logits equal the masked model's (1e-5); the compact model
    sharded again on 2 ranks (kept tables only) gives the same logits."""
    from umec_torchrec.runs import Run

    cfg, model, masks = _model_and_masks()
    run = Run.create(str(tmp_path / "run"))
    run.write_config(model=cfg.to_dict(), data={"spec": None})
    masks.save(run.file("masks.json"))
    plans = run_multiprocess(_save_sharded, world_size=2, ckpt=run.checkpoint_dir)
    owners = {p.split("ranks=")[1] for p in plans[0].values()}
    assert all(p.startswith("table_wise") for p in plans[0].values()) and owners == {"[0]", "[1]"}

    out = str(tmp_path / "export")
    export_run(run.path, out)
    dense, ids = sample_inputs(cfg, n=64, seed=9)
    ref = masked_logits(model.model, masks, dense, kjt_of(ids, cfg.feature_names))
    with torch.no_grad():
        got = load_compact(out)(dense, kjt_of(ids, cfg.feature_names)).squeeze(-1)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=0)

    kept_idx = [cfg.feature_names.index(f) for f in KEPT]
    results = run_multiprocess(_reshard, world_size=2, export_dir=out, dense=dense, ids=ids[:, kept_idx], names=KEPT)
    plan = results[0][0]
    assert sorted(plan) == [f"t_{f}" for f in KEPT]  # pruned tables are not sharded at all
    assert all(p.startswith("table_wise") for p in plan.values())
    resharded = torch.tensor([x for r in results for x in r[1]])
    torch.testing.assert_close(resharded, ref, atol=1e-5, rtol=0)
