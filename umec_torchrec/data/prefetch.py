"""Batch assembly ahead of the training step: :func:`prefetch` runs an iterator in a worker
thread, a bounded number of items ahead (the role of a ``DataLoader`` worker, without
pickling memory-mapped arrays into another process)."""

from __future__ import annotations

import queue
import threading
from typing import Iterable, Iterator, TypeVar

__all__ = ["PREFETCH_DEPTH", "THREAD_NAME", "prefetch"]

T = TypeVar("T")
#: items assembled ahead by default (``CTRData.prefetch`` of a prepared directory)
PREFETCH_DEPTH = 2
#: the worker threads' name
THREAD_NAME = "umec-prefetch"
_END = object()


class _Failed:
    def __init__(self, error: BaseException) -> None:
        self.error = error


def prefetch(items: Iterable[T], depth: int = PREFETCH_DEPTH) -> Iterator[T]:
    """Yield the items of ``items`` in order, produced by a worker thread up to ``depth`` ahead.

    An exception of ``items`` is raised here, at the item where it happened; closing the
    returned generator early (``break``, ``close()``, garbage collection) stops the worker
    and waits for it.

    Example::

        for batch in prefetch(data.batches(4096, shuffle=True), depth=2):
            step(batch)
    """
    if int(depth) < 1:
        raise ValueError(f"prefetch depth must be >= 1, got {depth}")
    q: "queue.Queue" = queue.Queue(maxsize=int(depth))
    stop = threading.Event()

    def put(x: object) -> bool:
        while not stop.is_set():
            try:
                q.put(x, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            for x in items:
                if not put(x):
                    return
            put(_END)
        except BaseException as e:  # handed to the consumer
            put(_Failed(e))

    t = threading.Thread(target=work, name=THREAD_NAME, daemon=True)
    t.start()
    try:
        while True:
            x = q.get()
            if x is _END:
                return
            if isinstance(x, _Failed):
                raise x.error
            yield x
    finally:
        stop.set()
        while t.is_alive():
            try:
                q.get_nowait()
            except queue.Empty:
                t.join(timeout=0.1)
