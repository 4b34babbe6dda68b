"""Multi-process test helper modelled on TorchRec's ``MultiProcessTestBase``.

``run_multiprocess(fn, world_size=2, **kwargs)`` spawns one process per rank with the
torchrun environment (``MASTER_ADDR=localhost``, a free ``MASTER_PORT``, ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``GLOO_DEVICE_TRANSPORT=TCP``), calls
``fn(rank=..., world_size=..., **kwargs)`` (``fn`` must be a module-level function), and
returns the per-rank return values; a failure on any rank re-raises with its traceback.
"""

from __future__ import annotations

import multiprocessing
import os
import socket
import traceback
from typing import Any, Callable, List


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _worker(fn: Callable, rank: int, world_size: int, port: int, queue: Any, kwargs: dict) -> None:
    os.environ.update(MASTER_ADDR="localhost", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world_size),
                      LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world_size), GLOO_DEVICE_TRANSPORT="TCP")
    try:
        queue.put((rank, "ok", fn(rank=rank, world_size=world_size, **kwargs)))
    except BaseException:
        queue.put((rank, "error", traceback.format_exc()))
        raise
    finally:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def run_multiprocess(fn: Callable, world_size: int = 2, timeout: float = 300.0, **kwargs: Any) -> List[Any]:
    """Run ``fn`` on ``world_size`` spawned ranks; return ``[result of rank 0, rank 1, ...]``."""
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=_worker, args=(fn, r, world_size, port, queue, kwargs)) for r in range(world_size)]
    for p in procs:
        p.start()
    results: dict = {}
    errors = []
    for _ in range(world_size):
        try:
            rank, status, value = queue.get(timeout=timeout)
        except Exception:
            errors.append(f"timed out after {timeout}s waiting for the ranks")
            break
        if status == "ok":
            results[rank] = value
        else:
            errors.append(f"rank {rank} failed:\n{value}")
            break
    for p in procs:
        p.join(timeout=30 if not errors else 5)
        if p.is_alive():
            p.kill()
            p.join()
    codes = [p.exitcode for p in procs]
    if errors:
        raise AssertionError("\n".join(errors) + f"\nexit codes: {codes}")
    assert all(c == 0 for c in codes), f"exit codes: {codes}"
    return [results[r] for r in range(world_size)]
