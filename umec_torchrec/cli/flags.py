"""Flag groups shared by the command modules, and their converters to library objects.

Every default is read from the dataclass a group fills (:class:`TrainConfig`,
:class:`UMECConfig`, :class:`DataOptions`, :class:`ModelConfig`, :class:`CheckpointPolicy`),
so the command line and the library run the same settings; ``tests/test_cli_defaults.py``
checks it for every subcommand.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import Any, Dict, List, Optional

__all__ = [
    "DEFAULT_DATA",
    "field_default",
    "int_list",
    "add_data_args",
    "data_options_from_args",
    "add_model_args",
    "model_overrides_from_args",
    "add_train_args",
    "train_config_from_args",
    "add_umec_args",
    "umec_config_from_args",
    "add_latency_model_arg",
    "use_latency_model_from_args",
    "add_checkpoint_args",
    "checkpoint_policy_from_args",
    "add_run_args",
    "add_common_args",
    "add_trust_arg",
    "as_flag",
]

#: the data of ``umec train`` when ``--data`` is not given
DEFAULT_DATA = "synthetic"

#: DataOptions fields set by :func:`add_data_args`
DATA_FIELDS = ("test_fraction", "valid_fraction", "split_seed", "time_ordered", "vocab", "min_count", "hash_size",
               "skip_bad_lines", "max_rows")
#: UMECConfig fields set by :func:`add_umec_args`: {field: flag dest}
UMEC_FIELDS = {"s_lr": "s_lr", "y_lr": "y_lr", "z_lr": "z_lr", "prox_lr": "prox_lr", "score": "score",
               "warmup_steps": "umec_warmup_steps", "holdout_every": "holdout_every", "s_step": "s_step",
               "target_every": "target_every", "fisher_rows": "fisher_rows"}


def field_default(cls: type, name: str) -> Any:
    """The default of dataclass field ``name`` of ``cls`` (calls a ``default_factory``).

    Example::

        field_default(TrainConfig, "batch_size")  # 128
    """
    for f in dataclasses.fields(cls):
        if f.name == name:
            if f.default is not dataclasses.MISSING:
                return f.default
            if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
                return f.default_factory()  # type: ignore[misc]
            raise ValueError(f"{cls.__name__}.{name} has no default")
    raise ValueError(f"{cls.__name__} has no field {name!r}")


def int_list(text: str) -> List[int]:
    """``"512,256,64"`` -> ``[512, 256, 64]`` (argparse type)."""
    try:
        out = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not out or min(out) < 1:
        raise argparse.ArgumentTypeError(f"expected positive comma-separated integers, got {text!r}")
    return out


# --- data ----------------------------------------------------------------------------------
def add_data_args(p: argparse.ArgumentParser, default: Optional[str] = DEFAULT_DATA) -> None:
    """``--data SPEC`` and the :class:`DataOptions` flags."""
    from umec_torchrec.data import DataOptions

    def d(name: str) -> Any:
        return field_default(DataOptions, name)

    g = p.add_argument_group("data")
    g.add_argument("--data", default=default, metavar="SPEC",
                   help="data spec: synthetic[:rows=N,seed=S], criteo:PATH, criteo-npy:DIR, libsvm:PATH, csv:PATH,... "
                        "(default: %(default)s)")
    g.add_argument("--test-fraction", type=float, default=d("test_fraction"),
                   help="held-out share (default %(default)s)")
    g.add_argument("--valid-fraction", type=float, default=d("valid_fraction"),
                   help="validation share, carved from the training rows; everything chosen from data is "
                        "chosen on it (default %(default)s)")
    g.add_argument("--split-seed", type=int, default=d("split_seed"),
                   help="seed of the random split (default %(default)s)")
    g.add_argument("--time-ordered", action="store_true", default=d("time_ordered"),
                   help="first rows train, later rows test")
    g.add_argument("--vocab", choices=["min_count", "hash"], default=d("vocab"),
                   help="vocabulary mode (default %(default)s)")
    g.add_argument("--min-count", type=int, default=d("min_count"),
                   help="min training count for an own row (default %(default)s)")
    g.add_argument("--hash-size", type=int, default=d("hash_size"), help="rows per table for --vocab hash")
    g.add_argument("--skip-bad-lines", action="store_true", default=d("skip_bad_lines"),
                   help="skip malformed lines instead of failing")
    g.add_argument("--max-rows", type=int, default=d("max_rows"), help="read at most this many rows")


def data_options_from_args(args: argparse.Namespace) -> Any:
    """A validated ``DataOptions`` from the data flags."""
    from umec_torchrec.data import DataOptions

    opts = DataOptions(**{k: getattr(args, k) for k in DATA_FIELDS if hasattr(args, k)})
    opts.validate("command-line options")
    return opts


# --- model ---------------------------------------------------------------------------------
def add_model_args(p: argparse.ArgumentParser) -> None:
    """``--model``, ``--embedding-dim``, ``--bottom``, ``--top`` (:class:`ModelConfig`)."""
    from umec_torchrec.models import DEFAULT_MODEL_KIND, MODEL_KINDS, ModelConfig

    bottom = field_default(ModelConfig, "bottom")
    top = field_default(ModelConfig, "top")
    g = p.add_argument_group("model")
    g.add_argument("--model", choices=list(MODEL_KINDS), default=DEFAULT_MODEL_KIND,
                   help="interaction: cat (concatenation, the UMEC paper's), dot (DLRM), dcn (default %(default)s)")
    g.add_argument("--embedding-dim", type=int, default=field_default(ModelConfig, "embedding_dim"),
                   help="embedding dim D (default %(default)s)")
    g.add_argument("--bottom", type=int_list, default=None,
                   help=f"bottom MLP sizes, last = D (default {','.join(map(str, bottom[:-1]))},D)")
    g.add_argument("--top", type=int_list, default=top,
                   help=f"top MLP sizes ending in 1 (default {','.join(map(str, top))})")


def model_overrides_from_args(args: argparse.Namespace) -> Dict[str, Any]:
    """Model overrides for :func:`umec_torchrec.train.build.make_model_config`."""
    from umec_torchrec.train.build import default_bottom

    if args.embedding_dim < 1:
        raise ValueError(f"--embedding-dim must be >= 1, got {args.embedding_dim}")
    bottom = args.bottom or default_bottom(args.embedding_dim)
    return {"kind": args.model, "embedding_dim": args.embedding_dim, "bottom": bottom, "top": args.top}


# --- training ------------------------------------------------------------------------------
def add_train_args(p: argparse.ArgumentParser) -> None:
    """Optimiser, schedule, batch, length, sharding and seed flags (:class:`TrainConfig`).
    ``--warmup-steps`` is the learning-rate warm-up (UMEC's is ``--umec-warmup-steps``)."""
    from umec_torchrec.train.config import (
        DENSE_OPTIMIZERS,
        EMBEDDING_OPTIMIZERS,
        LR_SCHEDULES,
        SHARDING_TYPES,
        TrainConfig,
    )

    d = TrainConfig()
    g = p.add_argument_group("training")
    g.add_argument("--batch-size", type=int, default=d.batch_size, help="global batch size (default %(default)s)")
    g.add_argument("--epochs", type=int, default=d.epochs, help="passes over the training split (default %(default)s)")
    g.add_argument("--steps", type=int, default=d.steps, help="train exactly this many steps (overrides --epochs)")
    g.add_argument("--embedding-optimizer", choices=EMBEDDING_OPTIMIZERS, default=d.embedding_optimizer,
                   help="fused table optimizer (default %(default)s)")
    g.add_argument("--emb-lr", type=float, default=d.emb_lr, help="table learning rate (default %(default)s)")
    g.add_argument("--dense-optimizer", choices=DENSE_OPTIMIZERS, default=d.dense_optimizer,
                   help="MLP optimizer (default %(default)s)")
    g.add_argument("--dense-lr", type=float, default=d.dense_lr, help="MLP learning rate (default %(default)s)")
    g.add_argument("--lr-schedule", choices=LR_SCHEDULES, default=d.lr_schedule,
                   help="after warm-up (default %(default)s)")
    g.add_argument("--warmup-steps", type=int, default=d.warmup_steps,
                   help="linear learning-rate warm-up steps (default %(default)s)")
    g.add_argument("--sharding", choices=SHARDING_TYPES, default=d.sharding,
                   help="pin every table's sharding type (default: the planner's choice)")
    g.add_argument("--eval-batch-size", type=int, default=d.eval_batch_size,
                   help="evaluation batch size (default %(default)s)")
    g.add_argument("--seed", type=int, default=d.seed,
                   help="seed of the model init and data order (default %(default)s)")
    g.add_argument("--log-every", type=int, default=d.log_every,
                   help="steps between log lines (0: none; default %(default)s)")


def train_config_from_args(args: argparse.Namespace) -> Any:
    """A ``TrainConfig`` from the training flags; an invalid value is a ``ValueError``
    naming the flag (``--seed must be in [0, 2^63 - 1], got ...``)."""
    from umec_torchrec.stages.train import MAX_SEED
    from umec_torchrec.train.config import TrainConfig

    if not 0 <= args.seed <= MAX_SEED:
        raise ValueError(f"--seed must be in [0, 2^63 - 1], got {args.seed}")
    try:
        return TrainConfig(
            embedding_optimizer=args.embedding_optimizer, emb_lr=args.emb_lr,
            dense_optimizer=args.dense_optimizer, dense_lr=args.dense_lr,
            lr_schedule=args.lr_schedule, warmup_steps=args.warmup_steps,
            batch_size=args.batch_size, epochs=args.epochs, steps=args.steps,
            eval_batch_size=args.eval_batch_size, seed=args.seed, sharding=args.sharding,
            log_every=args.log_every,
        )
    except ValueError as e:
        raise ValueError(as_flag(str(e), {f: f for f in ("emb_lr", "dense_lr", "log_every", "batch_size", "epochs",
                                                         "eval_batch_size", "steps", "warmup_steps")})) from None


def as_flag(msg: str, fields: Dict[str, str]) -> str:
    """``msg`` with a leading field name (``s_lr must ...``) written as its flag
    (``--s-lr must ...``); ``fields`` maps field names to flag dests."""
    for f, dest in fields.items():
        if msg.startswith(f + " "):
            return "--" + dest.replace("_", "-") + msg[len(f):]
    return msg


# --- UMEC ----------------------------------------------------------------------------------
def add_umec_args(p: argparse.ArgumentParser) -> None:
    """The primal-dual hyper-parameters of :class:`UMECConfig`: ``--s-lr``, ``--y-lr``,
    ``--z-lr``, ``--prox-lr``, ``--score``, ``--holdout-every``, ``--s-step``, ``--target-every``,
    ``--fisher-rows``, ``--umec-warmup-steps`` (one group for
    ``umec compress`` and ``umec bench quality``)."""
    from umec_torchrec.umec.optimizer import UMECConfig

    d = UMECConfig()
    g = p.add_argument_group("UMEC hyper-parameters")
    g.add_argument("--s-lr", type=float, default=d.s_lr, help="prune-count step (default %(default)s)")
    g.add_argument("--y-lr", type=float, default=d.y_lr, help="per-layer dual step (default %(default)s)")
    g.add_argument("--z-lr", type=float, default=d.z_lr, help="budget dual step (default %(default)s)")
    g.add_argument("--prox-lr", type=float, default=d.prox_lr, help="prox step eta_1 (default %(default)s)")
    from umec_torchrec.umec.importance import ScoreKind

    g.add_argument("--score", choices=[k.value for k in ScoreKind], default=d.score,
                   help="group score: weight (the paper's norm), activation (E[x^2]-weighted), centered "
                        "(Var[x]-weighted), fisher (group Fisher on training batches), holdout (loss increase of "
                        "each removal on the validation split), mixed (the features as holdout, the units as fisher), "
                        "shrunk (as mixed, each measured feature cost shrunk toward its fisher by its standard "
                        "error) (default %(default)s)")
    g.add_argument("--holdout-every", type=int, default=d.holdout_every,
                   help="UMEC steps between refreshes of the holdout scores (default %(default)s)")
    from umec_torchrec.umec.optimizer import SStep

    g.add_argument("--s-step", choices=[k.value for k in SStep], default=d.s_step,
                   help="how the prune counts move: conditional (toward the greedy allocation of the budgets "
                        "at the current scores) or gradient (the paper's straight-through step with budget "
                        "duals) (default %(default)s)")
    g.add_argument("--target-every", type=int, default=d.target_every,
                   help="UMEC steps between recomputations of the conditional step's target (default %(default)s)")
    g.add_argument("--fisher-rows", type=int, default=d.fisher_rows,
                   help="rows of each local batch the fisher score is estimated on (every k-th row; 0: every row) "
                        "(default %(default)s)")
    g.add_argument("--umec-warmup-steps", type=int, default=d.warmup_steps,
                   help="plain training steps before the UMEC step starts (default %(default)s)")
    add_latency_model_arg(g)


def add_latency_model_arg(p: Any) -> None:
    """``--latency-model LATENCY.json``: the calibration of ``latency`` budgets and reports."""
    p.add_argument("--latency-model", metavar="LATENCY.json", default=None,
                   help="latency table written by umec calibrate on the serving machine: needed by --budget "
                        "latency=...; predicted latency is then reported too")


def use_latency_model_from_args(args: argparse.Namespace, threads: Optional[int] = None,
                                batch: Optional[int] = None, strict: bool = False) -> Any:
    """Load ``--latency-model`` (if given) and make it this process's latency table; warnings
    about other conditions are printed, ``strict`` ones refused (see
    :func:`umec_torchrec.export.calibrate.check_conditions`). Returns the table or ``None``."""
    path = getattr(args, "latency_model", None)
    if not path:
        return None
    from umec_torchrec.export.calibrate import check_conditions, load_latency_table
    from umec_torchrec.umec.latency import set_latency_table

    table = load_latency_table(path)
    for w in check_conditions(table, path, threads=threads, batch=batch, strict=strict):
        print(f"umec: warning: {w}", file=sys.stderr)
    set_latency_table(table)
    return table


def umec_config_from_args(args: argparse.Namespace) -> Any:
    """A validated ``UMECConfig`` from :func:`add_umec_args`'s flags (``ValueError`` naming
    the flag: ``--s-lr must be a finite number >= 0, got nan``); ``--latency-model``, when
    given, becomes the process's latency table (:func:`use_latency_model_from_args`)."""
    from umec_torchrec.umec.optimizer import UMECConfig

    cfg = UMECConfig(**{f: getattr(args, dest) for f, dest in UMEC_FIELDS.items()})
    try:
        cfg.validate()
    except ValueError as e:
        raise ValueError(as_flag(str(e), UMEC_FIELDS)) from None
    use_latency_model_from_args(args)
    return cfg


# --- checkpoints, run directory, process -----------------------------------------------------
def add_checkpoint_args(p: argparse.ArgumentParser) -> None:
    """``--checkpoint-every N``, ``--keep K``, ``--resume`` (:class:`CheckpointPolicy`)."""
    from umec_torchrec.train.ckpt_manager import CheckpointPolicy

    d = CheckpointPolicy()
    g = p.add_argument_group("checkpoints and resuming")
    g.add_argument("--checkpoint-every", type=int, default=d.every, metavar="N",
                   help="write RUN/checkpoints/step-N every N steps and at the end (0: only at the end; "
                        "default %(default)s)")
    g.add_argument("--keep", type=int, default=d.keep, metavar="K",
                   help="keep the newest K periodic checkpoints (default %(default)s)")
    g.add_argument("--resume", action="store_true", default=d.resume,
                   help="continue RUN from its newest complete checkpoint (same command line otherwise)")


def checkpoint_policy_from_args(args: argparse.Namespace) -> Any:
    """A ``CheckpointPolicy`` from :func:`add_checkpoint_args`'s flags."""
    from umec_torchrec.train.ckpt_manager import CheckpointPolicy

    return CheckpointPolicy(every=args.checkpoint_every, keep=args.keep, resume=args.resume)


def add_run_args(p: argparse.ArgumentParser, out_default: Optional[str] = None, required: bool = False) -> None:
    """``--out RUN``, ``--force``, ``--no-progress``, ``--backend``."""
    g = p.add_argument_group("run")
    g.add_argument("--out", default=out_default, required=required, metavar="RUN", help="run directory to write")
    g.add_argument("--force", action="store_true", help="overwrite an existing run directory")
    add_common_args(p)


def add_trust_arg(p: argparse.ArgumentParser) -> None:
    """``--trust-checkpoint``: load a checkpoint that has no ``manifest.json``."""
    p.add_argument("--trust-checkpoint", action="store_true",
                   help="load a checkpoint without manifest.json (written by another tool); its files are then not "
                        "verified (default: refuse it)")


def add_common_args(p: argparse.ArgumentParser) -> None:
    """``--no-progress`` and ``--backend``."""
    p.add_argument("--no-progress", action="store_true", help="no tqdm progress bars")
    p.add_argument("--backend", choices=["gloo", "nccl"], default=None,
                   help="process-group backend (default: nccl with CUDA, else gloo)")
