"""``umec``: the command line, a thin layer over the library.

Subcommands live in the modules of :data:`COMMAND_MODULES`; each has
``add_parser(subparsers)`` that adds one or more subparsers and sets ``func=handler``
(``handler(args) -> int``) on them. To add a command, write such a module and append its
path here. The shared flag groups (:func:`add_data_args`, :func:`add_model_args`,
:func:`add_train_args`, :func:`add_run_args`) and their converters
(:func:`data_options_from_args`, :func:`model_overrides_from_args`,
:func:`train_config_from_args`) are for those modules.

Works the same as ``umec ...``, ``python -m umec_torchrec ...`` and under
``torchrun --nproc_per_node N -m umec_torchrec.cli ...``.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import warnings
from typing import Any, Dict, List, Optional

COMMAND_MODULES: List[str] = [
    "umec_torchrec.train.commands",  # train, evaluate, demo
    "umec_torchrec.compress.commands",  # compress, finetune
    "umec_torchrec.bench.commands",  # bench (subcommands: see umec_torchrec.bench.BENCH_MODULES)
    "umec_torchrec.export.cli_export",  # export
]

PROG = "umec"


class UserError(Exception):
    """An error caused by the user's input: printed as one line, exit status 2."""


def _user_error_types() -> tuple:
    types: list = [UserError, ValueError, FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError]
    try:
        from umec_torchrec.data import DataError

        types.append(DataError)
    except ImportError:  # pragma: no cover
        pass
    return tuple(types)


# ---------------------------------------------------------------------------------------------
# shared flags
def int_list(text: str) -> List[int]:
    """``"512,256,64"`` -> ``[512, 256, 64]`` (argparse type)."""
    try:
        out = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not out or min(out) < 1:
        raise argparse.ArgumentTypeError(f"expected positive comma-separated integers, got {text!r}")
    return out


def add_data_args(p: argparse.ArgumentParser, default: Optional[str] = "synthetic") -> None:
    """``--data SPEC`` and the DataOptions flags."""
    g = p.add_argument_group("data")
    g.add_argument("--data", default=default, metavar="SPEC",
                   help="data spec: synthetic[:rows=N,seed=S], criteo:PATH, criteo-npy:DIR, libsvm:PATH, csv:PATH,... "
                        f"(default: {default})")
    g.add_argument("--test-fraction", type=float, default=None, help="held-out share (default 0.23)")
    g.add_argument("--split-seed", type=int, default=None, help="seed of the random split (default 0)")
    g.add_argument("--time-ordered", action="store_true", default=None, help="first rows train, later rows test")
    g.add_argument("--vocab", choices=["min_count", "hash"], default=None, help="vocabulary mode (default min_count)")
    g.add_argument("--min-count", type=int, default=None, help="min training count for an own row (default 1)")
    g.add_argument("--hash-size", type=int, default=None, help="rows per table for --vocab hash")
    g.add_argument("--skip-bad-lines", action="store_true", default=None, help="skip malformed lines instead of failing")
    g.add_argument("--max-rows", type=int, default=None, help="read at most this many rows")


def data_options_from_args(args: argparse.Namespace) -> Any:
    """A ``DataOptions`` from the data flags (unset flags keep the defaults)."""
    from umec_torchrec.data import DataOptions

    keys = ("test_fraction", "split_seed", "time_ordered", "vocab", "min_count", "hash_size", "skip_bad_lines", "max_rows")
    opts = DataOptions(**{k: getattr(args, k) for k in keys if getattr(args, k, None) is not None})
    opts.validate("command-line options")
    return opts


def add_model_args(p: argparse.ArgumentParser) -> None:
    """``--model``, ``--embedding-dim``, ``--bottom``, ``--top``."""
    g = p.add_argument_group("model")
    g.add_argument("--model", choices=["dot", "dcn", "cat"], default="cat",
                   help="interaction: cat (concatenation, the UMEC paper's; default), dot (DLRM), dcn")
    g.add_argument("--embedding-dim", type=int, default=16, help="embedding dim D (default 16)")
    g.add_argument("--bottom", type=int_list, default=None,
                   help="bottom MLP sizes, last = D (default 512,256,64,D)")
    g.add_argument("--top", type=int_list, default=[512, 256, 1], help="top MLP sizes ending in 1 (default 512,256,1)")


def model_overrides_from_args(args: argparse.Namespace) -> Dict[str, Any]:
    """Model overrides for :func:`umec_torchrec.train.api.make_model_config`."""
    bottom = args.bottom or [512, 256, 64, args.embedding_dim]
    return {"kind": args.model, "embedding_dim": args.embedding_dim, "bottom": bottom, "top": args.top}


def add_train_args(p: argparse.ArgumentParser) -> None:
    """Optimiser, schedule, batch, length, sharding and seed flags (TrainConfig)."""
    from umec_torchrec.train.optim import (DENSE_OPTIMIZERS, EMBEDDING_OPTIMIZERS, LR_SCHEDULES, SHARDING_TYPES,
                                           TrainConfig)

    d = TrainConfig()
    g = p.add_argument_group("training")
    g.add_argument("--batch-size", type=int, default=d.batch_size, help=f"global batch size (default {d.batch_size})")
    g.add_argument("--epochs", type=int, default=d.epochs, help=f"passes over the training split (default {d.epochs})")
    g.add_argument("--steps", type=int, default=None, help="train exactly this many steps (overrides --epochs)")
    g.add_argument("--embedding-optimizer", choices=EMBEDDING_OPTIMIZERS, default=d.embedding_optimizer,
                   help=f"fused table optimizer (default {d.embedding_optimizer})")
    g.add_argument("--emb-lr", type=float, default=d.emb_lr, help=f"table learning rate (default {d.emb_lr})")
    g.add_argument("--dense-optimizer", choices=DENSE_OPTIMIZERS, default=d.dense_optimizer,
                   help=f"MLP optimizer (default {d.dense_optimizer})")
    g.add_argument("--dense-lr", type=float, default=d.dense_lr, help=f"MLP learning rate (default {d.dense_lr})")
    g.add_argument("--lr-schedule", choices=LR_SCHEDULES, default=d.lr_schedule, help="after warm-up (default constant)")
    g.add_argument("--warmup-steps", type=int, default=d.warmup_steps, help="linear warm-up steps (default 0)")
    g.add_argument("--sharding", choices=SHARDING_TYPES, default=None,
                   help="pin every table's sharding type (default: the planner's choice)")
    g.add_argument("--eval-batch-size", type=int, default=d.eval_batch_size, help="evaluation batch size")
    g.add_argument("--seed", type=int, default=d.seed, help="seed of the model init and data order (default 0)")
    g.add_argument("--log-every", type=int, default=d.log_every, help="steps between log lines (0: none)")


def train_config_from_args(args: argparse.Namespace) -> Any:
    """A ``TrainConfig`` from the training flags."""
    from umec_torchrec.train.optim import TrainConfig

    return TrainConfig(
        embedding_optimizer=args.embedding_optimizer, emb_lr=args.emb_lr,
        dense_optimizer=args.dense_optimizer, dense_lr=args.dense_lr,
        lr_schedule=args.lr_schedule, warmup_steps=args.warmup_steps,
        batch_size=args.batch_size, epochs=args.epochs, steps=args.steps,
        eval_batch_size=args.eval_batch_size, seed=args.seed, sharding=args.sharding,
        log_every=args.log_every,
    )


def add_run_args(p: argparse.ArgumentParser, out_default: Optional[str] = None, required: bool = False) -> None:
    """``--out RUN``, ``--force``, ``--no-progress``, ``--backend``."""
    g = p.add_argument_group("run")
    g.add_argument("--out", default=out_default, required=required, metavar="RUN", help="run directory to write")
    g.add_argument("--force", action="store_true", help="overwrite an existing run directory")
    add_common_args(p)


def add_common_args(p: argparse.ArgumentParser) -> None:
    """``--no-progress`` and ``--backend``."""
    p.add_argument("--no-progress", action="store_true", help="no tqdm progress bars")
    p.add_argument("--backend", choices=["gloo", "nccl"], default=None,
                   help="process-group backend (default: nccl with CUDA, else gloo)")


# ---------------------------------------------------------------------------------------------
def quiet_libraries() -> None:
    """Hide TorchRec/FBGEMM/torch warnings that say nothing to a user."""
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    for name in ("torchrec", "torch.fx._symbolic_trace", "torch.distributed", "fbgemm_gpu"):
        logging.getLogger(name).setLevel(logging.ERROR)


def build_parser() -> argparse.ArgumentParser:
    """The full parser: one subparser (or more) per module of :data:`COMMAND_MODULES`."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="UMEC compression for TorchRec DLRM models: train, evaluate, demo, bench.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for path in COMMAND_MODULES:
        importlib.import_module(path).add_parser(sub)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of the ``umec`` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    quiet_libraries()
    try:
        return int(args.func(args) or 0)
    except _user_error_types() as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"{PROG}: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    # under ``python -m umec_torchrec.cli`` / torchrun this file runs as ``__main__``: call the
    # imported module's main so exception classes match the ones command modules raise
    from umec_torchrec.cli import main as _main

    sys.exit(_main())
