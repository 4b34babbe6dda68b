"""UMECOptimizer and feature masks on ``DistributedModelParallel`` with 2 gloo ranks (spawned,
see ``tests/helpers/mp.py``) against 1 rank. Generated data only (``_data``: planted signal, 6 tables
of 1000-1500 rows so table-wise and column-wise placements are realistic).

One 2-rank spawn (module fixture) runs everything that needs two ranks and writes its
results to ``tmp_path`` with ``torch.save``; the tests compare them with 1-rank runs in the
test process (a 1-rank gloo group):

* compression for every CPU sharding type (TW, CW, TWCW, DP): same masks, logits within 1e-5;
* the same with a validation-measured score (``shrunk``: validation batches split over the ranks);
* a pruned feature's ids never reach the rank that owns its table (input dist inspected);
* the consistency check raises on every rank when one rank's state is desynchronised;
* a checkpoint written mid-search on 2 ranks resumes on 2 ranks and on 1 rank.
"""

from __future__ import annotations

import os
from typing import Any, Dict, List, Optional

import pytest
import torch
import torch.distributed as dist
from torchrec.optim.keyed import CombinedOptimizer, KeyedOptimizerWrapper

from helpers.mp import run_multiprocess
from helpers.umec_steps import masked_logits, umec_steps
from umec_torchrec.data.dataset import CTRData
from umec_torchrec.data.testing import planted_ctr
from umec_torchrec.distributed import init_distributed
from umec_torchrec.models import ModelConfig, find_dlrm
from umec_torchrec.train import TrainConfig, build_training, load_checkpoint, plan_summary, save_checkpoint
from umec_torchrec.umec import layout
from umec_torchrec.umec.optimizer import UMECConfig, UMECOptimizer, UMECStateMismatch

SHARDINGS = ("table_wise", "column_wise", "table_column_wise", "data_parallel")
SIZES = [1000, 1200, 1000, 1500, 1000, 1100]
FEATURES = [f"f{i}" for i in range(len(SIZES))]
BATCH = 64
SEARCH_STEPS = 20  # UMEC search, then finalize()
FIXED_STEPS = 4  # training with the masks fixed (pruned features dropped from the input)
SAVE_AT = 12  # the checkpoint test saves mid-search
# prunes features and hidden units within 20 steps (the test asserts >= 2 features); the scores at the
# cut are well apart (far above float noise from the 1- vs 2-rank reduction order)
BUDGETS = ["flops=0.4"]
# fisher scores (statistics of training batches, all-reduced) and the conditional s step: the
# sharding equivalence is about the distributed plumbing. The measured scores read validation
# batches (per-rank loss sums, summed): test_measured_score_on_two_ranks_equals_one_rank.
UCFG = dict(s_lr=0.05, check_every=5, score="fisher")


def _data(n: int = 1600, seed: int = 0) -> CTRData:
    """Generated rows: label from dense column 0 and features f0, f1; the rest is noise."""
    return planted_ctr(n, SIZES, n_dense=4, seed=seed, bias=0.0)


def _valid(ctx):
    """This rank's slices of 8 global validation batches (another draw of the generator)."""
    data = _data(n=8 * BATCH, seed=1)
    return lambda: data.batches(BATCH, rank=ctx.rank, world_size=ctx.world_size)


def _build(ctx, sharding: str, seed: int = 0, stateful: bool = False, score: str = UCFG["score"]):
    model_cfg = ModelConfig("cat", FEATURES, SIZES, 4, 8, [16, 8], [16, 8, 1])
    # SGD on both sides: Adagrad's first steps amplify rounding-level gradient differences.
    # The checkpoint test uses stateful optimizers, so that there is optimizer state to save.
    opts = dict(embedding_optimizer="rowwise_adagrad", dense_optimizer="adagrad", emb_lr=0.05, dense_lr=0.02) \
        if stateful else dict(embedding_optimizer="sgd", dense_optimizer="sgd", emb_lr=0.5, dense_lr=0.1)
    tc = TrainConfig(batch_size=BATCH, sharding=sharding, seed=seed, log_every=0, **opts)
    dmp, opt = build_training(model_cfg, tc, ctx)
    umec = UMECOptimizer(opt, dmp, BUDGETS, UMECConfig(**{**UCFG, "score": score}))
    if umec.score_kind.needs_holdout:
        umec.attach_holdout(_valid(ctx))
    return dmp, opt, umec


def _batches(ctx, first: int, last: int) -> List[Any]:
    """This rank's slices of global batches ``first..last-1`` (same for every world size)."""
    it = _data().batches(BATCH, shuffle=True, seed=0, rank=ctx.rank, world_size=ctx.world_size, start=first)
    return [b for _, b in zip(range(last - first), it)]


_steps = umec_steps


def _logits(dmp, umec) -> torch.Tensor:
    """Logits of the first 256 rows (every rank feeds the whole batch: full logits on each)."""
    return masked_logits(dmp, umec, _data().make_batch(torch.arange(256)))


def _finish(ctx, dmp, umec, start: int) -> Dict[str, Any]:
    """Search steps ``start..SEARCH_STEPS-1``, finalize, fixed steps; the result record."""
    _steps(dmp, umec, _batches(ctx, start, SEARCH_STEPS))
    masks = umec.finalize()
    _steps(dmp, umec, _batches(ctx, SEARCH_STEPS, SEARCH_STEPS + FIXED_STEPS))
    return {"masks": masks.to_dict(), "logits": _logits(dmp, umec), "state": umec.state_vector()}


def _compress(ctx, sharding: str, ckpt: Optional[str] = None, score: str = UCFG["score"]) -> Dict[str, Any]:
    dmp, opt, umec = _build(ctx, sharding, stateful=ckpt is not None, score=score)
    start = 0
    if ckpt is not None:
        _steps(dmp, umec, _batches(ctx, 0, SAVE_AT))
        save_checkpoint(ckpt, dmp, umec)  # "optim": the wrapped optimizers' state + the UMEC state (tensors)
        start = SAVE_AT
    out = _finish(ctx, dmp, umec, start)
    out["plans"] = sorted(set(plan_summary(dmp).values()))
    out["optims"] = [type(o).__name__ for _, o in opt._optims]
    out["fused_first"] = isinstance(opt, CombinedOptimizer) and opt._optims[0][1] is dmp.fused_optimizer
    out["dense_second"] = isinstance(opt._optims[-1][1], KeyedOptimizerWrapper)
    return out


def _resume(ctx, ckpt: str) -> Dict[str, Any]:
    """Fresh objects (other seed: everything must come from the checkpoint), load, finish."""
    dmp, opt, umec = _build(ctx, "table_wise", seed=7, stateful=True)
    load_checkpoint(ckpt, dmp, umec)
    loaded = umec.state_vector()
    out = _finish(ctx, dmp, umec, SAVE_AT)
    out["loaded_state"] = loaded
    return out


def _received_ids(dmp, umec, masked: bool) -> Dict[str, int]:
    """Ids per feature that reach this rank's table shards after the input distribution."""
    sebc = find_dlrm(dmp).sparse_arch.embedding_bag_collection
    seen: Dict[str, int] = {}
    original = sebc.compute_and_output_dist

    def spy(ctx, dist_input):
        for kjt in dist_input:
            for k, n in zip(kjt.keys(), kjt.length_per_key()):
                seen[k] = seen.get(k, 0) + int(n)
        return original(ctx, dist_input)

    sebc.compute_and_output_dist = spy
    try:
        b = _data().make_batch(torch.arange(256))
        with torch.no_grad():
            dmp(umec.feature_mask(b) if masked else b)
    finally:
        del sebc.compute_and_output_dist
    return seen


def _desync(ctx) -> Dict[str, Any]:
    """Rank 1's over-arch weight is perturbed after 3 steps; the check at step 5 must raise
    on every rank (and leave both ranks able to go on: no hang)."""
    dmp, _, umec = _build(ctx, "table_wise")
    batches = _batches(ctx, 0, 8)
    _steps(dmp, umec, batches[:3])
    if ctx.rank == 1:
        with torch.no_grad():
            layout.first_top_linear(find_dlrm(dmp)).weight.mul_(1.5)
    raised = None
    try:
        _steps(dmp, umec, batches[3:])
    except UMECStateMismatch as e:
        raised = {"step": umec.inner_step_count, "message": str(e)}
    # an explicit check on a deliberately changed s raises everywhere too
    if ctx.rank == 0:
        umec.s[0] += 1.0
    explicit = None
    try:
        umec.check_consistency()
    except UMECStateMismatch as e:
        explicit = str(e)
    dist.barrier()  # both ranks are still in lockstep
    return {"raised": raised, "explicit": explicit}


def _two_rank_worker(rank: int, world_size: int, out: str) -> None:
    ctx = init_distributed("gloo")
    res: Dict[str, Any] = {}
    for sharding in SHARDINGS:
        res[sharding] = _compress(ctx, sharding)
    res["measured_score"] = _compress(ctx, "table_wise", score="shrunk")
    res["saved"] = _compress(ctx, "table_wise", ckpt=f"{out}/ckpt")
    res["resumed_2"] = _resume(ctx, f"{out}/ckpt")
    # input distribution on a TW model: compress, then look at what each rank receives
    dmp, _, umec = _build(ctx, "table_wise")
    _steps(dmp, umec, _batches(ctx, 0, SEARCH_STEPS))
    masks = umec.finalize()
    res["input_dist"] = {"pruned": masks.pruned_features, "plans": plan_summary(dmp),
                         "masked": _received_ids(dmp, umec, True), "unmasked": _received_ids(dmp, umec, False)}
    res["desync"] = _desync(ctx)
    torch.save(res, os.path.join(out, f"rank{rank}.pt"))


@pytest.fixture(scope="module")
def two_rank(tmp_path_factory) -> Dict[str, Any]:
    out = tmp_path_factory.mktemp("umec_dist")
    run_multiprocess(_two_rank_worker, world_size=2, out=str(out))
    res = [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(2)]
    return {"ranks": res, "dir": str(out)}


@pytest.fixture(scope="module")
def ctx1():
    ctx = init_distributed("gloo")  # a 1-rank gloo group in this process (reused if one exists)
    assert ctx.world_size == 1
    return ctx


@pytest.mark.parametrize("sharding", SHARDINGS)
def test_compression_on_two_ranks_equals_one_rank(two_rank, ctx1, sharding):
    """Same global batches: identical masks on both ranks and on 1 rank, logits within 1e-5,
    identical UMEC state; the optimizer is CombinedOptimizer([dmp.fused_optimizer, dense])."""
    r0, r1 = (r[sharding] for r in two_rank["ranks"])
    ref = _compress(ctx1, sharding)
    assert r0["fused_first"] and r0["dense_second"] and ref["fused_first"], r0["optims"]
    assert all(p.startswith(f"{sharding}/") for p in r0["plans"]), r0["plans"]
    if sharding == "table_wise":
        assert {"ranks=[0]", "ranks=[1]"} <= {p.split(" ")[1] for p in r0["plans"]}, r0["plans"]
    elif sharding != "data_parallel":
        assert all(p.endswith("ranks=[0, 1]") for p in r0["plans"]), r0["plans"]
    assert r0["masks"] == r1["masks"] == ref["masks"]
    pruned = set(FEATURES) - set(ref["masks"]["kept_features"])
    assert len(pruned) >= 2, ref["masks"]  # it really pruned features within the run
    torch.testing.assert_close(r0["logits"], r1["logits"], rtol=0, atol=0)  # ranks agree exactly
    torch.testing.assert_close(r0["logits"], ref["logits"], rtol=0, atol=1e-5)
    torch.testing.assert_close(r0["state"], r1["state"], rtol=0, atol=0)
    torch.testing.assert_close(r0["state"], ref["state"], rtol=1e-5, atol=1e-6)


def test_measured_score_on_two_ranks_equals_one_rank(two_rank, ctx1):
    """A validation-measured score (``shrunk``: features measured on validation batches, each
    rank its share of every batch, and their standard errors): both ranks hold identical scores and
    state, and the masks, the state and the logits equal the 1-rank run's. The duals carry
    the scores' relative float error: a measured increase is a difference of float32 row
    losses (~1e-7 x 0.7 each) that the 64-row and 32-row forward passes round differently,
    against increases of ~1e-4 per row in this barely trained model, so the state agrees
    to 1e-4 (the fisher runs above: 1e-5)."""
    r0, r1 = (r["measured_score"] for r in two_rank["ranks"])
    ref = _compress(ctx1, "table_wise", score="shrunk")
    assert r0["masks"] == r1["masks"] == ref["masks"]
    assert set(FEATURES) - set(ref["masks"]["kept_features"]), ref["masks"]  # features were pruned
    torch.testing.assert_close(r0["state"], r1["state"], rtol=0, atol=0)
    torch.testing.assert_close(r0["state"], ref["state"], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(r0["logits"], ref["logits"], rtol=0, atol=1e-5)


def test_pruned_feature_never_reaches_its_table_owner(two_rank):
    """TW on 2 ranks: after finalize, the ids of pruned features are dropped before the input
    distribution, so no rank receives any for its tables (without the mask the owners do)."""
    recs = [r["input_dist"] for r in two_rank["ranks"]]
    pruned = recs[0]["pruned"]
    assert pruned and recs[0]["pruned"] == recs[1]["pruned"]
    owners = {f: int(recs[0]["plans"][f"t_{f}"].split("ranks=[")[1].rstrip("]")) for f in FEATURES}
    assert set(owners.values()) == {0, 1}, owners
    for rank, rec in enumerate(recs):
        for f in FEATURES:
            owned = owners[f] == rank
            assert (f in rec["unmasked"]) == owned, (rank, f, rec["unmasked"])
            if owned:
                assert rec["unmasked"][f] == 512  # both ranks fed the same 256 rows, one id each
                assert rec["masked"][f] == (0 if f in pruned else 512), (rank, f, rec["masked"])


def test_consistency_check_catches_a_desynchronised_rank(two_rank):
    """A perturbed dense weight on rank 1 makes the periodic check (every 5 steps) raise
    UMECStateMismatch on both ranks at the same step; so does a changed s on rank 0."""
    recs = [r["desync"] for r in two_rank["ranks"]]
    for rec in recs:
        assert rec["raised"] is not None and rec["raised"]["step"] == UCFG["check_every"], rec
        assert "rank 1" in rec["raised"]["message"] and "diverged" in rec["raised"]["message"]
        assert rec["explicit"] is not None and "differs between rank 0 and rank 1" in rec["explicit"]


def test_checkpoint_from_two_ranks_resumes_on_two_and_one_rank(two_rank, ctx1):
    """Saved mid-search on 2 ranks (sharded tables through DCP, optimizer, UMEC state):
    resuming on 2 ranks and on 1 rank finishes with the uninterrupted run's masks, UMEC
    state and logits (within 1e-5)."""
    full = two_rank["ranks"][0]["saved"]
    res2 = two_rank["ranks"][0]["resumed_2"]
    res1 = _resume(ctx1, f"{two_rank['dir']}/ckpt")
    assert float(res1["loaded_state"][-1]) == SAVE_AT  # the inner step count came back
    torch.testing.assert_close(res1["loaded_state"], res2["loaded_state"], rtol=0, atol=0)
    for res in (res2, res1):
        assert res["masks"] == full["masks"]
        torch.testing.assert_close(res["state"], full["state"], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(res["logits"], full["logits"], rtol=0, atol=1e-5)
