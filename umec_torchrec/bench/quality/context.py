""":class:`SeedContext`: what every method of one seed shares (data, dense checkpoint, the
post-dense training configs), the masked fine-tuning (or, with ``retrain_from_scratch``, the
retraining of the kept architecture from a fresh init) and the result row."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

import torch

from umec_torchrec.bench.quality.config import QualityConfig
from umec_torchrec.distributed import DistContext
from umec_torchrec.train.build import build_training, make_model_config
from umec_torchrec.train.checkpoint import load_checkpoint, save_checkpoint
from umec_torchrec.train.config import TrainConfig
from umec_torchrec.train.fit import fit
from umec_torchrec.train.metrics import evaluate
from umec_torchrec.umec.allocation import resources_of_masks
from umec_torchrec.umec.groups import discover_groups
from umec_torchrec.umec.masked_optimizer import MaskedOptimizer
from umec_torchrec.umec.masks import PruningMasks

__all__ = ["MethodResult", "SeedContext", "Trained", "finetune", "load_bench_data", "make_row"]


def load_bench_data(spec: str, options: Any):
    """:func:`~umec_torchrec.data.load_data`, plus ``clicklog:`` specs while that kind is not
    registered in :mod:`umec_torchrec.data.spec`."""
    from umec_torchrec.data import load_data
    from umec_torchrec.data.spec import KINDS

    if spec.strip().lower().startswith("clicklog") and "clicklog" not in KINDS:
        import dataclasses

        from umec_torchrec.data.clicklog import load_clicklog, parse_clicklog_spec

        p = parse_clicklog_spec(spec)
        return load_clicklog(p["params"], dataclasses.replace(options, **p["options"]), source=spec.strip())
    return load_data(spec, options)


@dataclass
class MethodResult:
    """What a method returns: the compressed model and how it got there.

    Args:
        dmp / opt: the model (fine-tuned, masks applied) and its masked optimizer (whose
            ``feature_mask`` evaluation applies).
        spec: the group spec of ``dmp``.
        masks: the final masks (they meet the budget).
        steps: training steps after the dense model.
        extra: method-specific diagnostics (JSON-safe).
    """

    dmp: Any
    opt: MaskedOptimizer
    spec: Any
    masks: PruningMasks
    steps: int
    extra: Dict[str, Any] = field(default_factory=dict)


class SeedContext:
    """The data, model config and dense checkpoint of one seed.

    Loads the data (seeded split, ``split_seed = seed``), trains the dense model once and
    checkpoints it (model + optimizer); every method reloads that checkpoint. ``valid`` is
    the bundle's validation split, or (bundles without one) the last ``valid_fraction`` of a
    seeded permutation of train, carved out of train.
    """

    def __init__(self, cfg: QualityConfig, seed: int, ctx: DistContext, workdir: str, log: Callable[[str], None]):
        from umec_torchrec.data import DataOptions

        self.cfg, self.seed, self.ctx, self.log = cfg, seed, ctx, log
        #: UMEC searches' results of this seed, ``{(budgets, config): (masks, steps, extra)}``:
        #: ``umec_rewind`` reuses the masks of ``umec``'s search (same dense model, same data)
        self.searches: Dict[Any, Any] = {}
        kw: Dict[str, Any] = {"min_count": cfg.min_count, "test_fraction": cfg.test_fraction, "split_seed": seed}
        if "valid_fraction" in {f for f in DataOptions.__dataclass_fields__}:
            kw["valid_fraction"] = cfg.valid_fraction
        self.bundle = load_bench_data(cfg.data, DataOptions(**kw))
        self.train, self.test = self.bundle.train, self.bundle.test
        valid = getattr(self.bundle, "valid", None)
        if (valid is None or len(valid) == 0) and cfg.valid_fraction > 0:  # bundles without a validation split
            n = len(self.train)
            perm = torch.randperm(n, generator=torch.Generator().manual_seed(10_007 + seed))
            k = max(1, int(round(n * cfg.valid_fraction)))
            valid, self.train = self.train.subset(perm[n - k:]), self.train.subset(perm[:n - k].sort().values)
        self.valid = valid if valid is not None and len(valid) > 0 else None
        #: the rows validation-measured scores read (``cfg.split_valid``: the first half, and
        #: ``valid``, which chooses, keeps the second half)
        self.score_valid = self.valid
        if cfg.split_valid and self.valid is not None and len(self.valid) >= 2:
            half = len(self.valid) // 2
            self.score_valid = self.valid.subset(torch.arange(half))
            self.valid = self.valid.subset(torch.arange(half, len(self.valid)))
        self.truth = {k: self.bundle.info[k] for k in ("signal_fields", "noise_fields", "pair_fields")
                      if k in self.bundle.info}
        self.model_cfg = make_model_config(self.train, cfg.model)
        self.dense_tc = TrainConfig(batch_size=cfg.batch_size, epochs=cfg.dense_epochs, seed=seed, emb_lr=cfg.emb_lr,
                                    dense_lr=cfg.dense_lr, eval_batch_size=cfg.eval_batch_size, log_every=0)
        self.ckpt = os.path.join(workdir, f"dense_seed{seed}")
        t = time.perf_counter()
        dmp, opt = build_training(self.model_cfg, self.dense_tc, ctx)
        st = fit(dmp, opt, self.train, self.dense_tc, ctx, progress=False)
        self.dense_metrics = evaluate(dmp, self.test, cfg.eval_batch_size, ctx)
        self.dense_valid = self.evaluate_valid(dmp)
        self.dense_steps = int(st["steps"])
        save_checkpoint(self.ckpt, dmp, opt)
        self.dense_seconds = time.perf_counter() - t
        log(f"seed {seed}: {len(self.train)} train / {0 if self.valid is None else len(self.valid)} valid / "
            f"{len(self.test)} test rows, {len(self.train.feature_names)} features; dense AUC "
            f"{self.dense_metrics['auc']:.4f} ({self.dense_steps} steps, {self.dense_seconds:.1f}s)")

    def post_tc(self, phase: int, epochs: int) -> TrainConfig:
        """The training config after the dense model (rates times ``post_lr_factor``)."""
        c = self.cfg
        return TrainConfig(batch_size=c.batch_size, epochs=epochs, seed=1000 * self.seed + phase,
                           emb_lr=c.emb_lr * c.post_lr_factor, dense_lr=c.dense_lr * c.post_lr_factor,
                           eval_batch_size=c.eval_batch_size, log_every=0)

    def load_dense(self):
        """A fresh copy of the dense model and its optimizer state."""
        dmp, opt = build_training(self.model_cfg, self.post_tc(1, 1), self.ctx)
        load_checkpoint(self.ckpt, dmp, opt)
        return dmp, opt

    def spec(self, dmp):
        """The group spec of ``dmp`` (features only, or features and MLP units)."""
        joint = not self.cfg.features_only
        return discover_groups(dmp, prune_features=True, prune_bottom=joint, prune_top=joint)

    def evaluate_valid(self, dmp, batch_transform=None) -> Optional[Dict[str, float]]:
        """Metrics on the validation split (``None`` without one)."""
        if self.valid is None:
            return None
        return evaluate(dmp, self.valid, self.cfg.eval_batch_size, self.ctx, batch_transform=batch_transform)

    def field_budget(self, spec, n_keep: int) -> float:
        """The ``resource`` fraction of keeping the first ``n_keep`` features and every unit
        (every feature costs the same in the bench's models)."""
        names = list(spec.feature_names)
        res = resources_of_masks(spec, PruningMasks(names, names[:max(1, n_keep)]))
        return float(res[self.cfg.resource]["fraction"])

    def budgets(self) -> List[Tuple[float, Optional[str]]]:
        """``(budget, label)`` of this seed: ``cfg.budgets``, then one per field share
        (label ``"fields=0.6"``), then the signal budget (label ``"signal"``); a budget met
        twice runs once."""
        out: List[Tuple[float, Optional[str]]] = [(float(b), None) for b in self.cfg.budgets]
        if self.cfg.field_shares or (self.cfg.signal_budget and "signal_fields" in self.truth):
            spec = self.spec(self.load_dense()[0])
            n = len(spec.feature_names)
            for share in self.cfg.field_shares:
                out.append((self.field_budget(spec, int(round(share * n))), f"fields={share:g}"))
            if self.cfg.signal_budget and "signal_fields" in self.truth:
                out.append((self.field_budget(spec, len(self.truth["signal_fields"])), "signal"))
        seen: Dict[float, Optional[str]] = {}
        for b, label in out:  # one run per distinct budget (the first label names it)
            seen.setdefault(b, label)
        return list(seen.items())


class Trained(NamedTuple):
    """What :func:`finetune` returns: the trained model, its masked optimizer, the steps."""

    dmp: Any
    opt: MaskedOptimizer
    steps: int


def finetune(s: SeedContext, dmp, opt, masks: PruningMasks, phases: Sequence[Tuple[int, int]]) -> Trained:
    """Train ``dmp`` with ``masks`` fixed for ``phases`` = ``[(phase, epochs), ...]`` (the
    post-dense configs :meth:`SeedContext.post_tc`).

    With ``cfg.retrain_from_scratch`` (the ERASE protocol; every method goes through here)
    ``dmp``, ``opt`` and ``phases`` are not used: a fresh model from the dense model's
    seeded init is trained with ``masks`` fixed under the dense model's training config
    (``dense_epochs``, the dense rates), and returned in their place.

    Example::

        dmp, mopt, steps = finetune(s, dmp, opt, masks, [(2, s.cfg.finetune_epochs)])
    """
    if s.cfg.retrain_from_scratch:
        dmp, opt = build_training(s.model_cfg, s.dense_tc, s.ctx)
        configs = [s.dense_tc]
    else:
        configs = [s.post_tc(phase, epochs) for phase, epochs in phases]
    mopt = MaskedOptimizer(opt, dmp, masks)
    steps = 0
    for tc in configs:
        st = fit(dmp, mopt, s.train, tc, s.ctx, progress=False, batch_transform=mopt.feature_mask)
        steps += int(st["steps"])
    return Trained(dmp, mopt, steps)


def make_row(method: str, budget: float, s: SeedContext, m: Dict[str, float], spec, masks: PruningMasks, steps: int,
             secs: float, extra: Dict[str, Any], valid: Optional[Dict[str, float]] = None,
             label: Optional[str] = None) -> Dict[str, Any]:
    """One result row (the CSV fields of :data:`~umec_torchrec.bench.quality.report.CSV_FIELDS`
    plus ``valid_auc``, ``budget_label``, field recovery on known-answer data, ``extra``)."""
    res = resources_of_masks(spec, masks)
    eb = res.get("embedding_bytes", {"value": float("nan"), "fraction": float("nan")})
    row = {
        "method": method, "budget": float(budget), "seed": s.seed,
        "mode": "features" if s.cfg.features_only else "joint",
        "auc": m["auc"], "log_loss": m["log_loss"], "accuracy": m["accuracy"],
        "flops": res["flops"]["value"], "flops_fraction": res["flops"]["fraction"],
        "embedding_bytes": eb["value"], "embedding_bytes_fraction": eb["fraction"],
        "n_kept_features": len(masks.kept_features), "kept_features": ";".join(masks.kept_features),
        "kept_units": ";".join(f"{k}={v}" for k, v in masks.kept_units().items()),
        "train_steps": steps, "seconds": secs, "extra": extra,
        "valid_auc": None if valid is None else valid["auc"], "budget_label": label,
    }
    if "signal_fields" in s.truth:
        kept = set(masks.kept_features)
        sig, noise = s.truth["signal_fields"], s.truth.get("noise_fields", [])
        row["signal_kept"] = sum(f in kept for f in sig) / max(1, len(sig))
        row["noise_dropped"] = sum(f not in kept for f in noise) / max(1, len(noise))
    return row
