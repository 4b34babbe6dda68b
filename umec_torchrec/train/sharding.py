"""Shard a ``DLRMTrain`` with ``DistributedModelParallel`` (any world size, CPU or CUDA), and the
record of a plan that later stages reuse.

A plan's record (:func:`plan_record`, kept in a run's ``config.json`` under ``"sharding_plan"``)
is ``{table: {"sharding_type", "compute_kernel", "ranks", "shard_sizes"}}``. Rebuilding with it
(``shard_model(..., table_plan=record)``) pins every recorded table to its sharding type and
compute kernel, on any world size; the planner places the shards (column blocks of the recorded
width where that still fits). What must not change between stages is the type: a data-parallel
table is trained by the dense optimizer, a sharded one by the fused table optimizer, and their
optimizer states do not convert; shards on other ranks are resharded by DCP on load.
"""

from __future__ import annotations

import os
from typing import Any, Dict, Mapping, Optional

from torch import nn
from torchrec.distributed.model_parallel import DistributedModelParallel
from torchrec.distributed.planner import EmbeddingShardingPlanner, Topology
from torchrec.distributed.planner.types import ParameterConstraints
from torchrec.distributed.sharding_plan import get_default_sharders
from torchrec.distributed.types import ShardingType

from umec_torchrec.distributed import DistContext
from umec_torchrec.log import quiet_torchrec
from umec_torchrec.models import find_dlrm
from umec_torchrec.train.config import SHARDING_TYPES

_KERNELS = {"data_parallel": ["dense"]}


def _constraints(model: nn.Module, sharding_type: str, world_size: int) -> Dict[str, ParameterConstraints]:
    ebc = find_dlrm(model).sparse_arch.embedding_bag_collection
    out: Dict[str, ParameterConstraints] = {}
    for cfg in ebc.embedding_bag_configs():
        kw = {}
        if sharding_type in ("column_wise", "table_column_wise"):
            # one column block per rank when D divides evenly, else blocks of 4 columns
            d = cfg.embedding_dim
            kw["min_partition"] = d // world_size if d % world_size == 0 and d >= 4 * world_size else 4
        out[cfg.name] = ParameterConstraints(
            sharding_types=[ShardingType(sharding_type).value],
            compute_kernels=_KERNELS.get(sharding_type),
            **kw,
        )
    return out


def _recorded_constraints(model: nn.Module, table_plan: Mapping[str, Mapping[str, Any]],
                          world_size: int) -> Dict[str, ParameterConstraints]:
    """Constraints that give every table of ``table_plan`` its recorded sharding type and compute
    kernel (column blocks of the recorded width when it divides the table's dimension)."""
    ebc = find_dlrm(model).sparse_arch.embedding_bag_collection
    out: Dict[str, ParameterConstraints] = {}
    for cfg in ebc.embedding_bag_configs():
        rec = table_plan.get(cfg.name)
        if rec is None:
            continue  # a table the record does not know: the planner's choice
        st = str(rec.get("sharding_type"))
        if st not in SHARDING_TYPES:
            raise ValueError(f"table {cfg.name}: the recorded sharding type {st!r} is not available here "
                             f"(expected one of {SHARDING_TYPES}); rebuild with a pinned --sharding")
        kw: Dict[str, Any] = {}
        if st in ("column_wise", "table_column_wise"):
            widths = [int(sz[1]) for sz in rec.get("shard_sizes") or []]
            w = min(widths) if widths else cfg.embedding_dim
            d = cfg.embedding_dim
            if d % w or d // w > world_size:  # the recorded blocks do not fit: as many as the ranks allow
                w = d // world_size if d % world_size == 0 and d >= 4 * world_size else 4
            kw["min_partition"] = w
        kernel = rec.get("compute_kernel")
        out[cfg.name] = ParameterConstraints(sharding_types=[ShardingType(st).value],
                                             compute_kernels=[str(kernel)] if kernel else _KERNELS.get(st), **kw)
    return out


def _tables_on_meta(model: nn.Module) -> bool:
    ebc = find_dlrm(model).sparse_arch.embedding_bag_collection
    return any(p.is_meta for p in ebc.parameters())


def shard_model(
    model: nn.Module,
    ctx: DistContext,
    sharding_type: Optional[str] = None,
    batch_size: int = 512,
    quiet: bool = True,
    table_plan: Optional[Mapping[str, Mapping[str, Any]]] = None,
) -> DistributedModelParallel:
    """Wrap an (unsharded) ``DLRMTrain`` in ``DistributedModelParallel``.

    Tag the tables with a fused optimizer first
    (:func:`umec_torchrec.train.optim.apply_embedding_optimizer`).

    Args:
        model: the model; tables on the ``meta`` device are initialised by DMP per shard,
            otherwise their current values are copied into the shards (so a seeded model
            gets the same weights on any world size).
        ctx: from :func:`umec_torchrec.distributed.init_distributed`.
        sharding_type: ``None`` = planner's choice, or one of ``"table_wise"``,
            ``"column_wise"``, ``"table_column_wise"``, ``"data_parallel"`` for every table.
        batch_size: per-rank batch size hint for the planner.
        quiet: silence TorchRec's planner warnings.
        table_plan: a :func:`plan_record` to reuse (e.g. the source run's): its tables keep their
            sharding types and compute kernels on any world size. Takes precedence over
            ``sharding_type``, which then applies to tables the record does not name.

    Example::

        dmp = shard_model(model, ctx, table_plan=json.load(open("RUN/config.json"))["sharding_plan"])
    """
    if sharding_type is not None and sharding_type not in SHARDING_TYPES:
        raise ValueError(f"unknown sharding type {sharding_type!r}; expected one of {SHARDING_TYPES}")
    full_state = None if _tables_on_meta(model) else {k: v.detach().clone() for k, v in model.state_dict().items()}
    constraints = _constraints(model, sharding_type, ctx.world_size) if sharding_type else None
    if table_plan:
        constraints = dict(constraints or {}, **_recorded_constraints(model, table_plan, ctx.world_size))
    sharders = get_default_sharders()
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", ctx.world_size))
    with quiet_torchrec(quiet):
        topology = Topology(world_size=ctx.world_size, compute_device=ctx.device.type, local_world_size=local_world)
        planner = EmbeddingShardingPlanner(topology=topology, batch_size=batch_size, constraints=constraints)
        plan = planner.collective_plan(model, sharders, ctx.pg)
        dmp = DistributedModelParallel(module=model, device=ctx.device, plan=plan, sharders=sharders)
        if full_state is not None:
            dmp.load_state_dict(full_state)
    return dmp


def plan_record(dmp: DistributedModelParallel) -> Dict[str, Dict[str, Any]]:
    """``{table: {"sharding_type", "compute_kernel", "ranks", "shard_sizes"}}`` of the DMP plan
    (JSON-able; ``shard_sizes`` lists ``[rows, columns]`` per shard, empty for data-parallel
    tables), for :func:`shard_model`'s ``table_plan``."""
    out: Dict[str, Dict[str, Any]] = {}
    for _, module_plan in dmp.plan.plan.items():
        for name, ps in module_plan.items():  # type: ignore[union-attr]
            spec = getattr(ps, "sharding_spec", None)
            shards = getattr(spec, "shards", None) or []
            out[name] = {"sharding_type": str(ps.sharding_type), "compute_kernel": str(ps.compute_kernel),
                         "ranks": [int(r) for r in (ps.ranks or [])],
                         "shard_sizes": [[int(x) for x in sh.shard_sizes] for sh in shards]}
    return out


def plan_summary(dmp: DistributedModelParallel) -> Dict[str, str]:
    """``{table name: "sharding_type/compute_kernel ranks=[...]"}`` from the DMP plan."""
    out: Dict[str, str] = {}
    for _, module_plan in dmp.plan.plan.items():
        for name, ps in module_plan.items():  # type: ignore[union-attr]
            out[name] = f"{ps.sharding_type}/{ps.compute_kernel} ranks={ps.ranks}"
    return out


__all__ = ["shard_model", "plan_record", "plan_summary"]
