"""``RUN/history.jsonl``: a stage's trajectory, one JSON object per log step.

Each line is one record, e.g. the compress stage's::

    {"step": 50, "loss": 0.4712, "resources": {"flops": {"fraction": 0.41, "budget": 0.3}},
     "s": {"features": 9.5, ...}, "z": {"flops": 0.12}}

Records are appended as whole lines while the stage runs (one ``write`` and a flush each),
so ``umec plot RUN`` can read a job that is still running. A line cut short by a kill (the
last one, without its newline) is skipped when reading and removed on resume; any other
line that is not a JSON object with an integer ``step`` is an error naming the file and line.
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict, List

from umec_torchrec.io import atomic_write, finite_json

__all__ = ["HISTORY_FILE", "append_record", "read_history", "truncate_history"]

HISTORY_FILE = "history.jsonl"


def append_record(path: str, record: Dict[str, Any]) -> None:
    """Append ``record`` (a JSON object with an integer ``"step"``) as one line to ``path``.

    Example::

        append_record(run.file(HISTORY_FILE), {"step": 50, "loss": 0.47})
    """
    if not isinstance(record.get("step"), int):
        raise ValueError(f"{path}: a history record needs an integer 'step', got {record.get('step')!r}")
    line = json.dumps(finite_json(record), sort_keys=False, allow_nan=False) + "\n"
    with open(path, "a", encoding="utf-8") as f:
        f.write(line)
        f.flush()


def _parse(path: str) -> List[Dict[str, Any]]:
    """The records of ``path``; a torn last line is left out."""
    with open(path, "rb") as f:
        data = f.read()
    records: List[Dict[str, Any]] = []
    lines = data.split(b"\n")
    for i, raw in enumerate(lines, start=1):
        last = i == len(lines)
        if last and not raw:
            break
        try:
            rec = json.loads(raw.decode("utf-8"))
            if not isinstance(rec, dict) or not isinstance(rec.get("step"), int):
                raise ValueError("not a JSON object with an integer 'step'")
        except (ValueError, UnicodeDecodeError) as e:
            if last:  # no newline after it: cut short by a kill while it was written
                break
            raise ValueError(f"{path}:{i}: not a history record ({str(e).splitlines()[0]})") from None
        if last:  # complete JSON but no newline: treat as torn too (a later append would glue onto it)
            break
        records.append(rec)
    return records


def read_history(path: str) -> List[Dict[str, Any]]:
    """The records of ``path`` in file order (a torn last line is skipped).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: a line that is not a record, naming ``path:line``.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such history file")
    return _parse(path)


def truncate_history(path: str, last_step: int) -> int:
    """Keep the records of ``path`` up to ``last_step`` (a stage resumed from the checkpoint
    of that step writes the later ones again) and drop a torn last line; atomic. Returns
    the number of records kept (0 when the file does not exist)."""
    if not os.path.isfile(path):
        return 0
    records = _parse(path)
    keep = [r for r in records if r["step"] <= last_step]

    def write(f: Any) -> None:
        for r in keep:
            f.write(json.dumps(r) + "\n")
    atomic_write(path, write)
    return len(keep)
