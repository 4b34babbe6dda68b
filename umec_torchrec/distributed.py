"""Process-group set-up: one code path for single- and multi-process runs.

``init_distributed()`` reads the torchrun environment (``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``). When the process was not launched
distributed it still creates a 1-rank group (a ``FileStore`` in a temp dir), so that
``DistributedModelParallel``, collectives and ``torch.distributed.checkpoint`` work the same
way for world size 1 and N. Backend: ``gloo`` on CPU, ``nccl`` on CUDA.

Under torchrun, a failure is reported once: :func:`first_to_fail` tells the first failing
worker of the job (a counter in the TorchElastic agent's store, reachable before any process
group exists), and :func:`record_error_file` writes the worker's TorchElastic error file,
which torchrun shows as the root cause of its ``ChildFailedError``.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Iterator, List, Optional, Tuple

import torch
import torch.distributed as dist

_OWNED: dict = {"initialised_here": False, "store_dir": None}


@dataclass
class DistContext:
    """Where this process sits in the job.

    Args:
        rank / world_size / local_rank: as set by torchrun (0 / 1 / 0 otherwise).
        device: ``cuda:<local_rank>`` with the nccl backend, else ``cpu``.
        pg: the default (WORLD) process group.
        backend: ``"gloo"`` or ``"nccl"``.
    """

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    pg: Optional[dist.ProcessGroup]
    backend: str

    @property
    def is_main(self) -> bool:
        """True on rank 0 (the rank that writes files and prints)."""
        return self.rank == 0

    def barrier(self) -> None:
        """Barrier over all ranks (no-op without a process group)."""
        barrier()


# --- the default group, whoever created it ------------------------------------------------
def is_distributed() -> bool:
    """True when a default process group exists."""
    return dist.is_available() and dist.is_initialized()


def rank_world() -> Tuple[int, int]:
    """``(rank, world size)`` of the default group; ``(0, 1)`` without one."""
    if is_distributed():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def get_rank() -> int:
    """This process's rank in the default group (0 without one)."""
    return rank_world()[0]


def get_world_size() -> int:
    """Size of the default group (1 without one)."""
    return rank_world()[1]


def barrier() -> None:
    """Barrier over the default group (no-op without one)."""
    if is_distributed():
        dist.barrier()


def local_tensors(value: Any) -> List[torch.Tensor]:
    """The tensors this rank holds of a (possibly sharded) state-dict value.

    ``ShardedTensor`` -> its local shards' tensors; ``DTensor`` -> its local tensor; a plain
    tensor (a replica) -> itself; anything else with ``local_shards()`` -> those shards;
    other values -> ``[]``.

    Example::

        n = sum(t.numel() for v in dmp.state_dict().values() for t in local_tensors(v))
    """
    if hasattr(value, "local_shards"):  # ShardedTensor (a Tensor subclass) and shard holders
        return [s.tensor for s in value.local_shards()]
    if isinstance(value, torch.Tensor):
        if hasattr(value, "to_local"):  # DTensor
            return [value.to_local()]
        return [value]
    return []


def _env_int(name: str, default: int) -> int:
    v = os.environ.get(name)
    if v is None or v == "":
        return default
    try:
        return int(v)
    except ValueError:
        raise ValueError(f"environment variable {name}={v!r} is not an integer") from None


def default_backend() -> str:
    """``nccl`` when CUDA is available, else ``gloo``."""
    return "nccl" if torch.cuda.is_available() else "gloo"


def init_distributed(backend: Optional[str] = None) -> DistContext:
    """Initialise (or reuse) the default process group and describe this process.

    Args:
        backend: ``"gloo"`` or ``"nccl"``; default :func:`default_backend`.

    Returns:
        a :class:`DistContext`. Calling it again while a group exists reuses that group.
    """
    if dist.is_initialized():
        backend = dist.get_backend()
    else:
        backend = backend or default_backend()
        if backend not in ("gloo", "nccl"):
            raise ValueError(f"unknown backend {backend!r}; expected 'gloo' or 'nccl'")
        if backend == "nccl" and not torch.cuda.is_available():
            raise ValueError("backend 'nccl' needs CUDA, but torch.cuda.is_available() is False")
        launched = "RANK" in os.environ and "WORLD_SIZE" in os.environ
        if launched:
            os.environ.setdefault("MASTER_ADDR", "localhost")
            if "MASTER_PORT" not in os.environ:
                raise ValueError("RANK/WORLD_SIZE are set but MASTER_PORT is not; launch with torchrun")
            if backend == "nccl":
                torch.cuda.set_device(_env_int("LOCAL_RANK", 0))
            dist.init_process_group(backend=backend)
        else:
            d = tempfile.mkdtemp(prefix="umec-pg-")
            atexit.register(shutil.rmtree, d, True)  # also when destroy() is never called
            store = dist.FileStore(os.path.join(d, "store"), 1)
            if backend == "nccl":
                torch.cuda.set_device(0)
            dist.init_process_group(backend=backend, store=store, rank=0, world_size=1)
            _OWNED["store_dir"] = d
        _OWNED["initialised_here"] = True
    rank, world = dist.get_rank(), dist.get_world_size()
    local_rank = _env_int("LOCAL_RANK", rank if world == 1 else rank)
    device = torch.device(f"cuda:{local_rank}") if backend == "nccl" else torch.device("cpu")
    return DistContext(rank, world, local_rank, device, dist.GroupMember.WORLD, backend)


def destroy() -> None:
    """Destroy the process group created by :func:`init_distributed` (no-op otherwise)."""
    if dist.is_initialized() and _OWNED["initialised_here"]:
        dist.destroy_process_group()
    _OWNED["initialised_here"] = False
    if _OWNED["store_dir"]:
        shutil.rmtree(_OWNED["store_dir"], ignore_errors=True)
        _OWNED["store_dir"] = None


@contextlib.contextmanager
def session(backend: Optional[str] = None) -> Iterator[DistContext]:
    """``with session() as ctx:`` - :func:`init_distributed`, and :func:`destroy` on exit
    only if this call created the group (an enclosing caller's group is left alone)."""
    created = not dist.is_initialized()
    ctx = init_distributed(backend)
    try:
        yield ctx
    finally:
        if created:
            destroy()


# --- failures under torchrun ---------------------------------------------------------------
def elastic_worker() -> bool:
    """Whether this process is a worker started by torchrun (TorchElastic)."""
    return "TORCHELASTIC_RUN_ID" in os.environ or "TORCHELASTIC_ERROR_FILE" in os.environ


def first_to_fail(timeout: float = 3.0) -> bool:
    """Whether this process is the first of its torchrun job (this restart attempt) to
    report a failure; call it once, when failing.

    The workers count their failures in the store that the TorchElastic agent serves at
    ``MASTER_ADDR:MASTER_PORT`` (``TORCHELASTIC_USE_AGENT_STORE=True``), so it works before
    and without a process group, across nodes. Outside torchrun, or when the store cannot be
    reached within ``timeout`` seconds, it returns ``True``: every failing process then
    reports (a duplicate line rather than none).

    Example::

        if first_to_fail():
            print("umec: error: ...", file=sys.stderr)
    """
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True" or "MASTER_PORT" not in os.environ:
        return True
    env = os.environ
    key = f"umec/failures/{env.get('TORCHELASTIC_RUN_ID', '')}/{env.get('TORCHELASTIC_RESTART_COUNT', '0')}"
    try:
        store = dist.TCPStore(os.environ.get("MASTER_ADDR", "localhost"), int(os.environ["MASTER_PORT"]),
                              is_master=False, timeout=timedelta(seconds=timeout), wait_for_workers=False)
        return int(store.add(key, 1)) == 1
    except Exception:  # noqa: BLE001 - the agent is gone or unreachable: report rather than stay silent
        return True


def record_error_file(message: str) -> Optional[str]:
    """Write ``message`` into this worker's TorchElastic error file (``TORCHELASTIC_ERROR_FILE``,
    the format of :class:`torch.distributed.elastic.multiprocessing.errors.ErrorHandler`, with
    the one line in place of a traceback), so that torchrun's failure summary shows it as the
    root cause; returns the file's path, or ``None`` outside torchrun (or when it cannot be
    written: reporting a failure must not fail).

    Example::

        record_error_file("umec: error: --embedding-dim must be >= 1, got -4")
    """
    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if not path:
        return None
    data = {"message": {"message": message, "extraInfo": {"py_callstack": message,
                                                            "timestamp": str(int(time.time()))}}}
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        with open(tmp, "w") as f:
            json.dump(data, f)
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        return None
    return path


__all__ = ["DistContext", "init_distributed", "destroy", "session", "default_backend", "is_distributed",
           "rank_world", "get_rank", "get_world_size", "barrier", "local_tensors", "elastic_worker", "first_to_fail",
           "record_error_file"]
