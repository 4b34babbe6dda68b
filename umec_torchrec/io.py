"""File I/O of the package: atomic writes (temp file in the same directory, fsync, rename),
JSON, manifests (size and
SHA-256 of every file of a directory) and their verification, file fingerprints, and the
one message of a full disk."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import math
import os
import shutil
import tempfile
from typing import Any, Callable, Dict, Iterator, Optional, Tuple

__all__ = ["atomic_write", "write_json", "read_json", "sha256_file", "write_manifest",
           "read_manifest", "verify_manifest", "trusting", "trusted", "fingerprint", "DiskFull", "disk_full",
           "raise_if_disk_full", "own_temp_name", "MANIFEST", "plain_mode", "process_umask",
           "replaced_directory", "finite_json"]

MANIFEST = "manifest.json"
MANIFEST_FORMAT = 1
#: errno values that mean "the device is full" (no space, quota exceeded)
_FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}


class DiskFull(OSError):
    """No space left on the device while writing ``filename``; the message is the one line
    ``no space left on device while writing PATH``."""

    def __init__(self, path: str) -> None:
        super().__init__(errno.ENOSPC, "no space left on device", path)

    def __str__(self) -> str:
        return f"no space left on device while writing {self.filename}"


def disk_full(e: BaseException) -> bool:
    """Whether ``e`` (or an exception it wraps: ``__cause__``, ``__context__``, DCP's
    per-rank failures) is an ``ENOSPC`` / ``EDQUOT`` ``OSError``."""
    seen, todo = set(), [e]
    while todo:
        x = todo.pop()
        if x is None or id(x) in seen:
            continue
        seen.add(id(x))
        if isinstance(x, OSError) and x.errno in _FULL:
            return True
        if isinstance(x, BaseException) and "No space left on device" in str(x):
            return True
        todo += [getattr(x, "__cause__", None), getattr(x, "__context__", None)]
        failures = getattr(x, "failures", None)  # torch.distributed.checkpoint.api.CheckpointException
        if isinstance(failures, dict):
            for v in failures.values():
                todo.append(v[0] if isinstance(v, tuple) else v)
    return False


def raise_if_disk_full(e: BaseException, path: str) -> None:
    """Raise :class:`DiskFull` naming ``path`` when ``e`` is a full disk; else return."""
    if disk_full(e):
        raise DiskFull(path) from None


def own_temp_name(name: str) -> bool:
    """Whether ``name`` (a directory entry) is a temp file of :func:`atomic_write`."""
    return name.startswith(".tmp-")


def process_umask() -> int:
    """This process's umask (read without changing it where ``/proc`` tells it)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    old = os.umask(0o022)
    os.umask(old)
    return old


def plain_mode(path: str, directory: bool = False) -> int:
    """The permission bits ``open()`` / ``mkdir()`` would give ``path``: those of the existing
    file when there is one, else ``0o666`` (``0o777`` for a directory) less the umask.
    ``mkstemp`` / ``mkdtemp`` create 0600 / 0700, which other users cannot read."""
    if os.path.exists(path):
        return os.stat(path).st_mode & 0o7777
    return (0o777 if directory else 0o666) & ~process_umask()


def atomic_write(path: str, write: Callable[[Any], None], mode: str = "w") -> None:
    """Write ``path`` atomically: ``write(f)`` fills a temp file that is renamed over ``path``.

    A crash leaves either the old file or the new one, never a torn one. The file gets the
    permissions a plain ``open(path, "w")`` would (:func:`plain_mode`).
    """
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=d, prefix=".tmp-" + os.path.basename(path) + ".")
    try:
        os.fchmod(fd, plain_mode(path))
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise_if_disk_full(e, path)
        raise


@contextlib.contextmanager
def replaced_directory(path: str) -> Iterator[str]:
    """Yield a new temporary directory beside ``path`` (``.<name>.tmp-<pid>-*``, with the mode a
    plain ``mkdir`` gives); when the block ends without an error it replaces ``path`` (an
    existing ``path`` is moved aside first and removed after), so ``path`` is always either the
    old directory or the complete new one. On an error the temporary directory is removed and
    ``path`` is untouched (a full disk raises :class:`DiskFull` naming ``path``)."""
    parent, base, pid = os.path.dirname(path), os.path.basename(path), os.getpid()
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=parent, prefix=f".{base}.tmp-{pid}-")
    try:
        os.chmod(tmp, plain_mode(path, directory=True))  # mkdtemp's 0700: other users could not read it
        yield tmp
        old = None
        if os.path.exists(path):
            old = tempfile.mkdtemp(dir=parent, prefix=f".{base}.old-{pid}-")
            os.rename(path, os.path.join(old, "x"))
        os.rename(tmp, path)
        if old:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise_if_disk_full(e, path)
        raise


def finite_json(x: Any) -> Any:
    """``x`` with NaN/inf floats as ``None`` (JSON has no NaN)."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: finite_json(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [finite_json(v) for v in x]
    return x


def write_json(path: str, obj: Any) -> None:
    """Atomically write ``obj`` as indented, valid JSON (a NaN/inf float is written ``null``)."""
    obj = finite_json(obj)
    atomic_write(path, lambda f: (json.dump(obj, f, indent=2, sort_keys=False, allow_nan=False), f.write("\n")))


def read_json(path: str) -> Any:
    """Read JSON, with an error that names the file on a missing or corrupt file."""
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such file") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: corrupt JSON ({e})") from None


# --- manifests: size and SHA-256 of every file of a directory -------------------------------
_HASHES: Dict[Tuple[str, int, int], str] = {}
_TRUST = {"on": False}


def sha256_file(path: str) -> str:
    """SHA-256 of a file, hashed once per process for a given (path, size, mtime)."""
    st = os.stat(path)
    key = (os.path.realpath(path), st.st_size, st.st_mtime_ns)
    got = _HASHES.get(key)
    if got is None:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                h.update(chunk)
        got = _HASHES[key] = h.hexdigest()
    return got


def write_manifest(path: str, meta: Optional[Dict[str, Any]] = None) -> None:
    """Write ``path/manifest.json``: size and SHA-256 of every other file, plus ``meta``."""
    files = {}
    for name in sorted(os.listdir(path)):
        f = os.path.join(path, name)
        if name == MANIFEST or not os.path.isfile(f):
            continue
        files[name] = {"size": os.path.getsize(f), "sha256": sha256_file(f)}
    write_json(os.path.join(path, MANIFEST), {"format": MANIFEST_FORMAT, "complete": True, "files": files,
                                              **(meta or {})})


def read_manifest(path: str) -> Optional[Dict[str, Any]]:
    """The manifest of directory ``path`` (``None`` when it has none or it is unreadable)."""
    try:
        with open(os.path.join(path, MANIFEST)) as f:
            m = json.load(f)
        return m if isinstance(m, dict) else None
    except (OSError, ValueError):
        return None


@contextlib.contextmanager
def trusting(on: bool = True) -> Iterator[None]:
    """Within the block, a directory without ``manifest.json`` is accepted by
    :func:`verify_manifest` (a checkpoint written by another tool: ``--trust-checkpoint``).

    Example::

        with trusting(args.trust_checkpoint):
            evaluate_run(...)
    """
    before = _TRUST["on"]
    _TRUST["on"] = bool(on) or before
    try:
        yield
    finally:
        _TRUST["on"] = before


def trusted() -> bool:
    """Whether :func:`trusting` is on."""
    return _TRUST["on"]


def verify_manifest(path: str, hashes: bool = True, require: bool = True) -> Optional[str]:
    """Why directory ``path`` does not match its ``manifest.json``, or ``None`` when it does.

    Every listed file must exist with the listed size and (``hashes``) SHA-256. A missing
    manifest is a reason unless ``require`` is false or :func:`trusting` is on.
    """
    if not os.path.exists(os.path.join(path, MANIFEST)):
        if require and not trusted():
            return ("no manifest.json (incomplete, or written by another tool: pass --trust-checkpoint to load "
                    "it unverified)")
        return None
    m = read_manifest(path)
    if m is None or not m.get("complete") or not isinstance(m.get("files"), dict):
        return "manifest.json is unreadable or incomplete"
    for name, rec in m["files"].items():
        f = os.path.join(path, name)
        if not os.path.isfile(f):
            return f"file {name} is missing"
        size = os.path.getsize(f)
        if size != rec.get("size"):
            return f"file {name} has {size} bytes, expected {rec.get('size')} (truncated or corrupt)"
        if hashes and sha256_file(f) != rec.get("sha256"):
            return f"file {name} does not match its SHA-256 (corrupt)"
    return None


# --- fingerprints of input files --------------------------------------------------------------
_BLOCK = 1 << 16


def fingerprint(path: str) -> Optional[Dict[str, Any]]:
    """``{"size", "mtime", "head_tail_sha256"}`` of a regular file (SHA-256 of its first and
    last 64 KiB), ``{"files": {name: {"size", "mtime"}}}`` of a directory, ``None`` for
    anything else (a pipe is never read here).

    Example::

        fp = fingerprint("data/train.tsv")
    """
    try:
        st = os.stat(path)
    except OSError:
        return None
    import stat as _stat

    if _stat.S_ISDIR(st.st_mode):
        files = {}
        for name in sorted(os.listdir(path)):
            try:
                s2 = os.stat(os.path.join(path, name))
            except OSError:
                continue
            if _stat.S_ISREG(s2.st_mode):
                files[name] = {"size": s2.st_size, "mtime": s2.st_mtime}
        return {"files": files}
    if not _stat.S_ISREG(st.st_mode):
        return None
    h = hashlib.sha256()
    with open(path, "rb") as f:
        h.update(f.read(_BLOCK))
        if st.st_size > _BLOCK:
            f.seek(max(_BLOCK, st.st_size - _BLOCK))
            h.update(f.read(_BLOCK))
    return {"size": st.st_size, "mtime": st.st_mtime, "head_tail_sha256": h.hexdigest()}
