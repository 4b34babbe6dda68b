"""Every flag default of the ``umec`` parser equals the library default it stands for.

No data involved: the test walks every subparser of :func:`umec_torchrec.cli.build_parser`
(nested ``bench`` subcommands included) and compares each flag's default with the field of
the dataclass it fills (TrainConfig, UMECConfig, DataOptions, ModelConfig,
CheckpointPolicy). A literal default typed into argparse that differs from the dataclass
fails here.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any, Dict, Iterator, Tuple

import pytest

from umec_torchrec.cli import build_parser
from umec_torchrec.data import DataOptions
from umec_torchrec.models import DEFAULT_MODEL_KIND, ModelConfig
from umec_torchrec.train.ckpt_manager import CheckpointPolicy
from umec_torchrec.train.config import TrainConfig
from umec_torchrec.umec.optimizer import UMECConfig

#: stage commands: every flag that fills a dataclass field must default to that field
STAGE_COMMANDS = ("train", "evaluate", "demo", "compress", "finetune", "export")


def _default(cls: type, name: str) -> Any:
    f = {f.name: f for f in dataclasses.fields(cls)}[name]
    return f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]


def _mapping() -> Dict[str, Tuple[str, Any]]:
    """flag dest -> (where the default comes from, the expected default)."""
    out: Dict[str, Tuple[str, Any]] = {}
    for f in dataclasses.fields(TrainConfig):
        out[f.name] = (f"TrainConfig.{f.name}", _default(TrainConfig, f.name))
    for name in ("test_fraction", "split_seed", "time_ordered", "vocab", "min_count", "hash_size", "skip_bad_lines",
                 "max_rows"):
        out[name] = (f"DataOptions.{name}", _default(DataOptions, name))
    for name in ("embedding_dim", "top"):
        out[name] = (f"ModelConfig.{name}", _default(ModelConfig, name))
    out["model"] = ("models.DEFAULT_MODEL_KIND", DEFAULT_MODEL_KIND)
    out["bottom"] = ("ModelConfig.bottom (None: the default with its last layer = --embedding-dim)", None)
    out["checkpoint_every"] = ("CheckpointPolicy.every", CheckpointPolicy().every)
    out["keep"] = ("CheckpointPolicy.keep", CheckpointPolicy().keep)
    out["resume"] = ("CheckpointPolicy.resume", CheckpointPolicy().resume)
    out.update(_umec_mapping())
    return out


def _umec_mapping() -> Dict[str, Tuple[str, Any]]:
    u = UMECConfig()
    return {"s_lr": ("UMECConfig.s_lr", u.s_lr), "y_lr": ("UMECConfig.y_lr", u.y_lr),
            "z_lr": ("UMECConfig.z_lr", u.z_lr), "prox_lr": ("UMECConfig.prox_lr", u.prox_lr),
            "score": ("UMECConfig.score", u.score),
            "umec_warmup_steps": ("UMECConfig.warmup_steps", u.warmup_steps)}


#: flags whose ``None`` default means "take it from the source run" (documented in --help)
INHERITED = {
    "compress": {"epochs", "steps"},
    "finetune": {"epochs", "steps"},
    "evaluate": {"batch_size"},  # the run's eval_batch_size
}
#: demo flags are run_demo's parameters, not a dataclass's
DEMO_PARAMS = {"epochs"}


def _subparsers(parser: argparse.ArgumentParser,
                path: Tuple[str, ...] = ()) -> Iterator[Tuple[Tuple[str, ...], argparse.ArgumentParser]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield path + (name,), sub
                yield from _subparsers(sub, path + (name,))


def _flags(p: argparse.ArgumentParser) -> Iterator[argparse.Action]:
    for a in p._actions:
        if a.option_strings and a.dest != "help":
            yield a


def test_walk_finds_every_command():
    names = {path for path, _ in _subparsers(build_parser())}
    assert {(c,) for c in STAGE_COMMANDS} <= names
    assert ("bench", "train") in names  # nested bench subcommands are walked too


@pytest.mark.parametrize("command", STAGE_COMMANDS)
def test_stage_flag_defaults_are_the_dataclass_defaults(command):
    subs = dict(_subparsers(build_parser()))
    mapping = _mapping()
    checked, wrong = 0, []
    for a in _flags(subs[(command,)]):
        if command == "demo" and a.dest in DEMO_PARAMS:
            from umec_torchrec.cli.train import demo_default

            where, want = f"run_demo({a.dest}=...)", demo_default(a.dest)
        elif a.dest in INHERITED.get(command, ()):
            where, want = "the source run", None
        elif a.dest in mapping:
            where, want = mapping[a.dest]
        else:
            continue
        checked += 1
        if a.default != want:
            wrong.append(f"umec {command} {a.option_strings[0]}: default {a.default!r}, {where} is {want!r}")
    assert not wrong, "\n".join(wrong)
    if command in ("train", "compress"):
        assert checked >= 6, f"only {checked} flags of umec {command} were compared"


def test_umec_flags_are_one_group_with_the_library_defaults():
    """In every (sub)command, a UMEC hyper-parameter flag defaults to UMECConfig's value;
    ``umec compress`` without --prox-lr runs the library's prox_lr; UMEC's warm-up has its own
    flag and --warmup-steps stays the learning-rate warm-up."""
    umec = _umec_mapping()
    wrong = []
    for path, p in _subparsers(build_parser()):
        for a in _flags(p):
            if a.dest in umec and a.default != umec[a.dest][1]:
                wrong.append(f"umec {' '.join(path)} {a.option_strings[0]}: {a.default!r} != {umec[a.dest]}")
    assert not wrong, "\n".join(wrong)
    args = build_parser().parse_args(["compress", "--from", "r", "--out", "o", "--budget", "flops=0.5"])
    from umec_torchrec.cli.flags import umec_config_from_args

    assert umec_config_from_args(args) == UMECConfig()
    args = build_parser().parse_args(["compress", "--from", "r", "--out", "o", "--budget", "flops=0.5",
                                      "--umec-warmup-steps", "7"])
    assert umec_config_from_args(args).warmup_steps == 7
    subs = dict(_subparsers(build_parser()))
    assert "warmup_steps" not in {a.dest for a in _flags(subs[("compress",)])}
    train_warm = [a for a in _flags(subs[("train",)]) if a.dest == "warmup_steps"]
    assert train_warm and train_warm[0].default == TrainConfig().warmup_steps


def test_a_literal_default_that_differs_is_caught(monkeypatch):
    """The check itself can fail: a flag added with a default other than TrainConfig's is reported."""
    from umec_torchrec.cli import flags

    orig = flags.add_train_args

    def drifted(p):
        orig(p)
        for a in p._actions:
            if a.dest == "dense_lr":
                a.default = 0.5
    monkeypatch.setattr(flags, "add_train_args", drifted)
    with pytest.raises(AssertionError, match="--dense-lr"):
        test_stage_flag_defaults_are_the_dataclass_defaults("train")
