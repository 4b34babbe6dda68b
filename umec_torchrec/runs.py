"""Run directories: ``config.json``, ``metrics.json``, ``checkpoint/`` (see CONTRIBUTING).

``config.json`` = ``{"model": ModelConfig dict, "data": {"spec", "options", "table_sizes",
"feature_names", "info"}, "train": TrainConfig dict, "versions": {...}}``. Other stages
(compress, finetune, export) add their own keys and files. ``vocabulary.npz``: the data's
vocabulary (raw value -> table row, :class:`~umec_torchrec.data.vocab.Vocabulary`), written
by every stage whose data has one, so the run (and its export) maps raw ids without the data.
"""

from __future__ import annotations

import os
import platform
import shutil
import socket
import tempfile
import time
from typing import Any, Dict, List, Optional

from umec_torchrec.io import fingerprint, own_temp_name, read_json, write_json

CONFIG = "config.json"
METRICS = "metrics.json"
CHECKPOINT = "checkpoint"
MASKS = "masks.json"
VOCABULARY = "vocabulary.npz"
#: the stages whose run holds masks.json (written before metrics.json, the last file of a run)
MASKED_STAGES = ("compress", "finetune")


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this host."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stale_pid_name(name: str, prefix: str) -> bool:
    """Whether ``name`` is ``<prefix><pid>-...`` of a process no longer running here (or a
    ``<prefix>...`` name without a pid, from an older version)."""
    if not name.startswith(prefix):
        return False
    head = name[len(prefix):].split("-", 1)[0]
    return not (head.isdigit() and pid_alive(int(head)))


def remove_stale_replacements(path: str) -> None:
    """Remove ``.<name>.tmp-<pid>-*`` / ``.<name>.old-<pid>-*`` beside ``path`` whose process no
    longer runs (left by :func:`umec_torchrec.io.replaced_directory` in a killed process: an
    export, a prepared dataset); another live process's are kept."""
    out = os.path.abspath(path)
    parent, base = os.path.dirname(out), os.path.basename(out)
    if not os.path.isdir(parent):
        return
    for n in os.listdir(parent):
        if stale_pid_name(n, f".{base}.tmp-") or stale_pid_name(n, f".{base}.old-"):
            shutil.rmtree(os.path.join(parent, n), ignore_errors=True)


def entries(path: str) -> List[str]:
    """The entries of directory ``path`` that are not temp files of our atomic writes (a
    directory holding only those is a run that never started)."""
    return [n for n in os.listdir(path) if not own_temp_name(n)]


def remove_own_temp_files(path: str) -> None:
    """Remove the atomic-write temp files (``.tmp-*``) in ``path``; call only while holding
    the run's lock (they are then left over from a killed process)."""
    if not os.path.isdir(path):
        return
    for n in os.listdir(path):
        if own_temp_name(n):
            full = os.path.join(path, n)
            if os.path.isdir(full):
                shutil.rmtree(full, ignore_errors=True)
            else:
                try:
                    os.unlink(full)
                except OSError:
                    pass


def lock_path(path: str) -> str:
    """The lock file of run directory ``path``: ``.<name>.lock`` beside it (so it survives
    the rename of ``--force``)."""
    p = os.path.abspath(path).rstrip(os.sep)
    return os.path.join(os.path.dirname(p), f".{os.path.basename(p)}.lock")


def _lock_holder(lp: str) -> Optional[tuple]:
    """``(pid, host)`` recorded in lock file ``lp``; ``None`` when it is gone; ``(0, "")``
    when it is unreadable."""
    try:
        with open(lp) as f:
            parts = f.read().split()
    except FileNotFoundError:
        return None
    except OSError:
        return (0, "")
    try:
        return (int(parts[0]), parts[1] if len(parts) > 1 else "")
    except (IndexError, ValueError):
        return (0, "")


def lock_holder(path: str) -> Optional[str]:
    """``"pid N on HOST"`` of another live process holding run ``path``'s lock, else ``None``."""
    h = _lock_holder(lock_path(path))
    if h is None or _stale(lock_path(path), h):
        return None
    return f"pid {h[0]} on {h[1]}"


def _stale(lp: str, holder: tuple) -> bool:
    pid, host = holder
    if pid == 0:  # unreadable or half-written: stale once it is a few seconds old
        try:
            return time.time() - os.path.getmtime(lp) > 5.0
        except OSError:
            return True
    if host != socket.gethostname():
        return False  # another host: cannot tell
    return pid == os.getpid() or not pid_alive(pid)


def acquire_lock(path: str) -> str:
    """Take run directory ``path``'s lock (``O_EXCL`` lock file holding ``pid host``; a lock
    of a process no longer running on this host is stale and taken over). Returns the lock
    file; ``FileExistsError`` naming the holder when another process writes the run.

    Example::

        lp = acquire_lock("runs/r1"); ...; release_lock(lp)
    """
    lp = lock_path(path)
    os.makedirs(os.path.dirname(lp), exist_ok=True)
    me = f"{os.getpid()} {socket.gethostname()}\n"
    for _ in range(3):
        try:
            fd = os.open(lp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            holder = _lock_holder(lp)
            if holder is None:
                continue
            if _stale(lp, holder):
                if _lock_holder(lp) == holder:  # still the same stale lock
                    try:
                        os.unlink(lp)
                    except FileNotFoundError:
                        pass
                continue
            raise FileExistsError(
                f"{os.path.abspath(path)}: another umec process (pid {holder[0]} on {holder[1]}) is writing this run; "
                f"wait for it to finish, or remove {lp} if no such process runs") from None
        with os.fdopen(fd, "w") as f:
            f.write(me)
        return lp
    raise FileExistsError(f"{os.path.abspath(path)}: could not take the lock {lp}; another process keeps taking it")


def release_lock(lp: Optional[str]) -> None:
    """Remove lock file ``lp`` if this process holds it."""
    if lp and _lock_holder(lp) == (os.getpid(), socket.gethostname()):
        try:
            os.unlink(lp)
        except FileNotFoundError:
            pass


def versions() -> Dict[str, str]:
    """Versions of the stack, recorded in every run."""
    out: Dict[str, str] = {"python": platform.python_version()}
    for mod in ("torch", "torchrec", "fbgemm_gpu", "umec_torchrec"):
        try:
            m = __import__(mod)
            out[mod] = str(getattr(m, "__version__", "unknown"))
        except Exception:  # pragma: no cover - a missing optional package
            out[mod] = "not installed"
    return out


def check_out_dir(
    out_dir: str,
    force: bool = False,
    resume: bool = False,
    source: Optional[str] = None,
    *,
    marker: Optional[str] = CONFIG,
    what: str = "run directory",
    kind: str = "a run directory",
    resumable: bool = True,
) -> str:
    """Refuse an output directory that cannot be written, before any work is done.

    The one check of every output (a stage's run directory, an export directory). Raises
    ``ValueError`` / ``FileExistsError`` naming the path when: ``resume`` and ``force`` are
    both set; the output is the ``source`` run; the path exists and is not a directory; its
    nearest existing ancestor is not a writable directory; it is a non-empty directory and
    neither ``force`` nor ``resume`` is set; with ``force``, a non-empty directory that
    does not hold ``marker`` (so a typo cannot delete an unrelated folder). A directory
    holding only our own temp files (``.tmp-*``: a first write that was killed) counts as
    empty. Writes nothing.

    Args:
        out_dir: the output directory.
        force: the caller will replace an existing output.
        resume: the caller will continue an existing output (a run's ``--resume``).
        source: the input run, which the output must not be.
        marker: the file that proves an existing directory is ours (``config.json`` for a
            run, ``manifest.json`` for an export; ``None``: no such check).
        what: how messages name the output (``"run directory"``, ``"output"``).
        kind: what a directory holding ``marker`` is (``"a run directory"``, ``"an export"``).
        resumable: the refusal of an existing output mentions ``--resume``.

    Returns:
        the absolute path.

    Example::

        check_out_dir("runs/c", force=False, source="runs/dense")
        check_out_dir("exports/c", force=True, marker="manifest.json", what="output", kind="an export",
                      resumable=False)
    """
    path = os.path.abspath(out_dir).rstrip(os.sep) or os.sep
    if resume and force:
        raise ValueError("--resume and --force exclude each other (--resume continues RUN, --force deletes it)")
    if source is not None and os.path.abspath(source) == path:
        raise ValueError(f"{path}: the output run is the source run; choose another --out")
    if os.path.exists(path) and not os.path.isdir(path):
        raise FileExistsError(f"{path}: exists and is not a directory")
    probe = path
    while not os.path.exists(probe):
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        probe = parent
    if not os.path.isdir(probe):
        raise ValueError(f"{path}: cannot create the {what}: {probe} is not a directory")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ValueError(f"{path}: cannot write the {what}: {probe} is not writable")
    if os.path.isdir(path) and entries(path):
        if not (force or resume):
            hint = "pass --force to overwrite it" + (" or --resume to continue it" if resumable else "")
            raise FileExistsError(f"{path}: {what} already exists; {hint}")
        if force and marker is not None and not os.path.isfile(os.path.join(path, marker)):
            raise FileExistsError(f"{path}: not empty and not {kind} (no {marker}); refusing to overwrite it")
    return path


class Run:
    """A run directory. Create with :meth:`create`, reopen with :meth:`open`.

    Args:
        path: the directory.
        config: its ``config.json`` (``{}`` for a new run).
        resumed: True when a stage reopened the run to continue it (``--resume``).
    """

    def __init__(self, path: str, config: Optional[Dict[str, Any]] = None, resumed: bool = False) -> None:
        self.path = os.path.abspath(path)
        self.config: Dict[str, Any] = config or {}
        self.resumed = bool(resumed)
        self.lock: Optional[str] = None  # the lock file while this process writes the run
        self.replaced: Optional[str] = None  # the run --force replaced, renamed aside until the new one starts

    def unlock(self) -> None:
        """Release the run's lock (no-op when not held)."""
        release_lock(self.lock)
        self.lock = None

    def discard_replaced(self) -> None:
        """Remove the run that ``--force`` renamed aside (once the new run has started)."""
        if self.replaced:
            shutil.rmtree(self.replaced, ignore_errors=True)
            self.replaced = None

    def check_complete(self) -> None:
        """``FileNotFoundError`` naming the missing file unless the stage that wrote this run
        finished: ``checkpoint/``, ``masks.json`` (compress, finetune) and ``metrics.json``
        (written last) exist for a run a stage wrote (one with a ``train`` section); a run
        being written by another live process is refused too."""
        holder = lock_holder(self.path)
        if holder is not None:
            raise FileExistsError(f"{self.path}: the run is being written by another umec process ({holder}); "
                                  "wait for it to finish")
        stage = (self.config.get("umec") or {}).get("stage")
        need = [CHECKPOINT]
        if stage in MASKED_STAGES:
            need.append(MASKS)
        if "train" in self.config:
            need.append(METRICS)
        for name in need:
            if not os.path.exists(self.file(name)):
                what = "checkpoint/" if name == CHECKPOINT else name
                raise FileNotFoundError(f"{self.path}: incomplete run: the run has no {what} (its stage did not "
                                        "finish); run the stage again with --resume")

    # --- creation / opening -------------------------------------------------------------
    @classmethod
    def create(cls, out: str, force: bool = False) -> "Run":
        """Make an empty run directory ``out``.

        An existing non-empty directory is refused (``FileExistsError``) unless ``force``;
        with ``force`` it is deleted first, but only if it is a run directory (has a
        ``config.json``), so a typo cannot delete an unrelated folder.
        """
        path = os.path.abspath(out)
        replaced = None
        if os.path.exists(path):
            if not os.path.isdir(path):
                raise FileExistsError(f"{path}: exists and is not a directory")
            if entries(path):
                if not force:
                    raise FileExistsError(f"{path}: run directory already exists; pass --force to overwrite it")
                if not os.path.isfile(os.path.join(path, CONFIG)):
                    raise FileExistsError(
                        f"{path}: not empty and not a run directory (no {CONFIG}); refusing to delete it"
                    )
                # rename first, remove once the new run has started (discard_replaced)
                parent, base = os.path.dirname(path), os.path.basename(path)
                replaced = tempfile.mkdtemp(dir=parent, prefix=f".{base}.replaced-{os.getpid()}-")
                os.rename(path, os.path.join(replaced, base))
            else:
                remove_own_temp_files(path)
        cls.remove_stale_replaced(path)
        os.makedirs(path, exist_ok=True)
        run = cls(path, {})
        run.replaced = replaced
        return run

    @staticmethod
    def remove_stale_replaced(path: str) -> None:
        """Remove ``.<name>.replaced-<pid>-*`` beside ``path`` left by killed processes."""
        parent, base = os.path.dirname(os.path.abspath(path)), os.path.basename(os.path.abspath(path))
        if not os.path.isdir(parent):
            return
        for n in os.listdir(parent):
            if stale_pid_name(n, f".{base}.replaced-"):
                shutil.rmtree(os.path.join(parent, n), ignore_errors=True)

    @classmethod
    def open(cls, path: str, resumed: bool = False) -> "Run":
        """Open an existing run; clear errors for a missing directory or ``config.json``.
        ``resumed``: the caller continues this run (see :attr:`resumed`)."""
        p = os.path.abspath(path)
        if not os.path.isdir(p):
            raise FileNotFoundError(f"{p}: no such run directory")
        cfg_path = os.path.join(p, CONFIG)
        if not os.path.isfile(cfg_path):
            raise FileNotFoundError(f"{cfg_path}: missing; {p} is not a run directory")
        cfg = read_json(cfg_path)
        if not isinstance(cfg, dict):
            raise ValueError(f"{cfg_path}: expected a JSON object")
        for key in ("model", "data"):
            if key not in cfg:
                raise ValueError(f"{cfg_path}: missing the {key!r} section")
        return cls(p, cfg, resumed=resumed)

    # --- paths ----------------------------------------------------------------------------
    def file(self, name: str) -> str:
        return os.path.join(self.path, name)

    @property
    def checkpoint_dir(self) -> str:
        return self.file(CHECKPOINT)

    # --- config / metrics -----------------------------------------------------------------
    def write_config(self, **sections: Any) -> None:
        """Set (replace) the given top-level sections and write ``config.json`` atomically;
        ``versions`` is always refreshed."""
        self.config.update(sections)
        self.config["versions"] = versions()
        write_json(self.file(CONFIG), self.config)

    def write_vocabulary(self, vocabulary: Any) -> None:
        """Write the data's vocabulary (a :class:`~umec_torchrec.data.vocab.Vocabulary`) into
        ``vocabulary.npz``, atomically."""
        vocabulary.save(self.file(VOCABULARY))

    def vocabulary(self):
        """The recorded :class:`~umec_torchrec.data.vocab.Vocabulary`, or ``None`` when the run has
        none (in-memory data, or a run made before vocabularies were recorded)."""
        p = self.file(VOCABULARY)
        if not os.path.isfile(p):
            return None
        from umec_torchrec.data import Vocabulary

        return Vocabulary.load(p)

    def read_metrics(self) -> Dict[str, Any]:
        p = self.file(METRICS)
        return read_json(p) if os.path.isfile(p) else {}

    def write_metrics(self, metrics: Dict[str, Any], section: Optional[str] = None) -> Dict[str, Any]:
        """Merge ``metrics`` (under ``section`` if given) into ``metrics.json``; returns it."""
        cur = self.read_metrics()
        if section is None:
            cur.update(metrics)
        else:
            cur[section] = metrics
        write_json(self.file(METRICS), cur)
        return cur

    def model_config(self):
        """The recorded :class:`~umec_torchrec.models.ModelConfig`."""
        from umec_torchrec.models import ModelConfig

        try:
            return ModelConfig.from_dict(self.config["model"])
        except (TypeError, ValueError) as e:
            raise ValueError(f"{self.file(CONFIG)}: bad 'model' section ({e})") from None

    def train_config(self):
        """The recorded :class:`~umec_torchrec.train.config.TrainConfig`."""
        from umec_torchrec.train.config import TrainConfig

        try:
            return TrainConfig.from_dict(self.config.get("train", {}))
        except (TypeError, ValueError) as e:
            raise ValueError(f"{self.file(CONFIG)}: bad 'train' section ({e})") from None

    def load_data(self):
        """Reload the data from the recorded spec and options; check that the input file is
        the one the run was made from (:func:`check_fingerprint`: refused when its size or
        first/last blocks changed, a warning when only its mtime did) and that the rebuilt
        table sizes equal the recorded ones (``ValueError`` if the data changed)."""
        from umec_torchrec.data import DataOptions, load_data

        d = self.config["data"]
        spec = d.get("spec")
        if not spec:
            raise ValueError(
                f"{self.file(CONFIG)}: the run was trained on in-memory data (no data spec recorded); "
                "pass the data explicitly"
            )
        warning = check_fingerprint(d, where=self.file(CONFIG))
        if warning:
            from umec_torchrec.distributed import get_rank

            if get_rank() == 0:
                import sys

                print(f"umec: warning: {warning}", file=sys.stderr, flush=True)
        bundle = load_data(spec, DataOptions(**d.get("options", {})))
        check_data_matches(bundle.train, d, where=self.file(CONFIG))
        return bundle


def data_record(spec: Optional[str], options: Any, train_data: Any, info: Optional[Dict[str, Any]] = None,
                source: Optional[str] = None) -> Dict[str, Any]:
    """The ``"data"`` section of ``config.json``; ``source``: the absolute path of the input
    file or directory, whose :func:`~umec_torchrec.io.fingerprint` is recorded too."""
    opts = options.to_dict() if hasattr(options, "to_dict") else dict(options or {})
    extra: Dict[str, Any] = {}
    if source is not None:
        extra = {"source": source, "fingerprint": fingerprint(source)}
    return {
        "spec": spec,
        **extra,
        "options": opts,
        "feature_names": list(train_data.feature_names),
        "dense_names": list(train_data.dense_names),
        "table_sizes": [int(s) for s in train_data.table_sizes],
        "info": _jsonable(info if info is not None else getattr(train_data, "info", {})),
    }


def check_data_matches(data: Any, record: Dict[str, Any], where: str) -> None:
    """``ValueError`` unless ``data``'s features and table sizes equal the recorded ones."""
    want_f, want_s = record.get("feature_names"), record.get("table_sizes")
    if want_f is not None and list(data.feature_names) != list(want_f):
        raise ValueError(
            f"{where}: the data's features changed since the run was made: "
            f"recorded {want_f}, now {list(data.feature_names)}"
        )
    if want_s is not None and [int(s) for s in data.table_sizes] != [int(s) for s in want_s]:
        diff = [
            f"{f}: {a} -> {b}"
            for f, a, b in zip(data.feature_names, want_s, data.table_sizes)
            if int(a) != int(b)
        ]
        raise ValueError(f"{where}: the data changed since the run was made (table sizes {', '.join(diff[:5])})")


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (str, int, float, bool)) or x is None:
        return x
    if hasattr(x, "item"):
        try:
            return x.item()
        except Exception:
            pass
    return str(x)


def check_fingerprint(record: Dict[str, Any], where: str) -> Optional[str]:
    """``ValueError`` when the recorded input file changed since the run was made (size or
    first/last blocks differ); returns a warning when only its mtime changed, else ``None``."""
    src, want = record.get("source"), record.get("fingerprint")
    if not src or not want:
        return None
    now = fingerprint(src)
    if now is None:
        return None
    if "files" in want:
        if now.get("files") != want["files"]:
            changed = sorted(set(want["files"]) ^ set(now.get("files", {}))
                             | {k for k in want["files"] if now.get("files", {}).get(k) != want["files"][k]})
            raise ValueError(f"{where}: the data in {src} changed since the run was made ({', '.join(changed[:5])}); "
                             "evaluate on the original data, or make a new run")
        return None
    if now.get("size") != want.get("size") or now.get("head_tail_sha256") != want.get("head_tail_sha256"):
        raise ValueError(f"{where}: the data file {src} changed since the run was made (size "
                         f"{want.get('size')} -> {now.get('size')} bytes or different content); use the original "
                         "file, or make a new run")
    if now.get("mtime") != want.get("mtime"):
        return f"{src}: modified since the run was made (same size and first/last blocks); using it"
    return None


__all__ = ["Run", "check_out_dir", "versions", "data_record", "check_data_matches", "check_fingerprint", "entries",
           "acquire_lock", "release_lock", "lock_holder", "lock_path", "pid_alive", "stale_pid_name",
           "remove_own_temp_files", "CONFIG", "METRICS", "CHECKPOINT", "MASKS", "MASKED_STAGES", "VOCABULARY"]
