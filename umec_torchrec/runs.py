"""Run directories: ``config.json``, ``metrics.json``, ``checkpoint/`` (see CONTRIBUTING).

``config.json`` = ``{"model": ModelConfig dict, "data": {"spec", "options", "table_sizes",
"feature_names", "info"}, "train": TrainConfig dict, "versions": {...}}``. Other stages
(compress, finetune, export) add their own keys and files.
"""

from __future__ import annotations

import os
import platform
import shutil
from typing import Any, Dict, Optional

from umec_torchrec.io import read_json, write_json

CONFIG = "config.json"
METRICS = "metrics.json"
CHECKPOINT = "checkpoint"


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
    does not hold ``marker`` (so a typo cannot delete an unrelated folder). Writes nothing.

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
    if os.path.isdir(path) and os.listdir(path):
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

    # --- creation / opening -------------------------------------------------------------
    @classmethod
    def create(cls, out: str, force: bool = False) -> "Run":
        """Make an empty run directory ``out``.

        An existing non-empty directory is refused (``FileExistsError``) unless ``force``;
        with ``force`` it is deleted first, but only if it is a run directory (has a
        ``config.json``), so a typo cannot delete an unrelated folder.
        """
        path = os.path.abspath(out)
        if os.path.exists(path):
            if not os.path.isdir(path):
                raise FileExistsError(f"{path}: exists and is not a directory")
            if os.listdir(path):
                if not force:
                    raise FileExistsError(f"{path}: run directory already exists; pass --force to overwrite it")
                if not os.path.isfile(os.path.join(path, CONFIG)):
                    raise FileExistsError(
                        f"{path}: not empty and not a run directory (no {CONFIG}); refusing to delete it"
                    )
                shutil.rmtree(path)
        os.makedirs(path, exist_ok=True)
        return cls(path, {})

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
        """Reload the data from the recorded spec and options; check that the rebuilt
        table sizes equal the recorded ones (``ValueError`` if the data changed)."""
        from umec_torchrec.data import DataOptions, load_data

        d = self.config["data"]
        spec = d.get("spec")
        if not spec:
            raise ValueError(
                f"{self.file(CONFIG)}: the run was trained on in-memory data (no data spec recorded); "
                "pass the data explicitly"
            )
        bundle = load_data(spec, DataOptions(**d.get("options", {})))
        check_data_matches(bundle.train, d, where=self.file(CONFIG))
        return bundle


def data_record(spec: Optional[str], options: Any, train_data: Any, info: Optional[Dict[str, Any]] = None) -> Dict[str,
                                                                                                                   Any]:
    """The ``"data"`` section of ``config.json``."""
    opts = options.to_dict() if hasattr(options, "to_dict") else dict(options or {})
    return {
        "spec": spec,
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


__all__ = ["Run", "check_out_dir", "versions", "data_record", "check_data_matches", "CONFIG", "METRICS", "CHECKPOINT"]
