""":class:`QualityConfig`: the settings of one ``umec bench quality`` run."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict, List

from umec_torchrec.data.options import DataOptions
from umec_torchrec.umec.optimizer import UMECConfig

__all__ = ["DEFAULT_DATA", "DEFAULT_METHODS", "REFERENCES", "QualityConfig"]

DEFAULT_DATA = "criteo:../shared/data/criteo_kaggle_train_sample.tsv.gz"
#: the methods a run compares unless told otherwise (every registered one is in
#: :data:`umec_torchrec.bench.quality.methods.METHODS`)
DEFAULT_METHODS = ("umec", "umec_rewind", "uniform", "magnitude", "group_lasso", "random")
#: reference rows of every seed (budget 1.0)
REFERENCES = ("dense", "dense_ft")


@dataclass
class QualityConfig:
    """Settings of the quality benchmark (defaults: the README's Criteo run).

    Args:
        data: data spec; ``min_count``/``test_fraction``/``valid_fraction`` apply unless the
            spec sets them.
        budgets: relative budgets of ``resource`` (fractions of the dense model).
        field_shares: more budgets, each the ``resource`` fraction of a model that keeps
            ``round(share * n_features)`` features and every unit (features-only mode:
            "keep about 60 % of the fields").
        signal_budget: one more budget that fits exactly the data's ``signal_fields``
            (generated data with a known answer; ignored elsewhere).
        seeds: seeds ``0 .. seeds-1`` (split, init, data order).
        methods: registered method names (:data:`~umec_torchrec.bench.quality.methods.METHODS`).
        features_only: prune features only (Figure 3 of the paper).
        resource: ``flops`` (dense path) or ``embedding_bytes``.
        model: ``make_model_config`` overrides (cat DLRM, D=16, small MLPs).
        batch_size / dense_epochs / compress_epochs / finetune_epochs: training lengths.
        emb_lr / dense_lr: the dense model's rates; ``post_lr_factor`` scales them afterwards.
        umec: UMEC hyper-parameters (same for every budget).
        auto_scores: the score kinds ``umec_auto`` tries; it keeps the one with the best
            validation AUC (the test split never chooses).
        lasso_lam: group-lasso strength (scale-free, see :mod:`umec_torchrec.baselines.group_lasso`).
        min_count / test_fraction / valid_fraction: data options (defaults of
            :class:`~umec_torchrec.data.options.DataOptions` for the validation share).
        retrain_from_scratch: the ERASE protocol: after selection every method retrains
            the kept architecture from a fresh seeded init (the dense model's init and
            training config, masks fixed) for ``dense_epochs`` instead of fine-tuning from
            its compressed weights.
        split_valid: the validation split's first half is what scores read (the
            validation-measured UMEC scores, ``permutation``), its second half what chooses
            (``valid_auc``, ``umec_auto``), so a score measured on validation rows is not
            judged on the same rows; off: both read the whole split.

    Example::

        cfg = QualityConfig(data="clicklog:seed=1,rows=5000", budgets=[0.3], seeds=2)
        cfg.validate()
    """

    data: str = DEFAULT_DATA
    budgets: List[float] = field(default_factory=lambda: [0.5, 0.3, 0.1, 0.05])
    field_shares: List[float] = field(default_factory=list)
    signal_budget: bool = False
    seeds: int = 3
    methods: List[str] = field(default_factory=lambda: list(DEFAULT_METHODS))
    features_only: bool = False
    resource: str = "flops"
    model: Dict[str, Any] = field(default_factory=lambda: {"kind": "cat", "embedding_dim": 16, "bottom": [64, 32, 16],
                                                           "top": [128, 64, 1]})
    batch_size: int = 128
    dense_epochs: int = 1
    compress_epochs: int = 1
    finetune_epochs: int = 1
    emb_lr: float = 0.02
    dense_lr: float = 0.01
    post_lr_factor: float = 0.1
    umec: Dict[str, Any] = field(default_factory=lambda: dataclasses.asdict(UMECConfig()))
    auto_scores: List[str] = field(default_factory=lambda: ["activation", "weight"])
    lasso_lam: float = 1.0
    min_count: int = 3
    test_fraction: float = 0.23
    valid_fraction: float = field(default_factory=lambda: float(getattr(DataOptions(), "valid_fraction", 0.1)))
    eval_batch_size: int = 4096
    retrain_from_scratch: bool = False
    split_valid: bool = False

    def validate(self) -> None:
        """Raise ``ValueError`` naming the bad setting."""
        from umec_torchrec.bench.quality.methods import METHODS

        unknown = [m for m in self.methods if m not in METHODS]
        if unknown:
            raise ValueError(f"unknown method(s) {unknown}; known: {', '.join(METHODS)}")
        if not self.methods:
            raise ValueError("give at least one method")
        if self.seeds < 1:
            raise ValueError(f"seeds must be >= 1, got {self.seeds}")
        for b in self.budgets:
            if not 0.0 < b <= 1.0:
                raise ValueError(f"budget {b}: must be a fraction of the dense model in (0, 1]")
        for b in self.field_shares:
            if not 0.0 < b <= 1.0:
                raise ValueError(f"field share {b}: must be a fraction of the features in (0, 1]")
        if not (self.budgets or self.field_shares or self.signal_budget):
            raise ValueError("give at least one budget")
        for k in ("dense_epochs", "compress_epochs", "finetune_epochs"):
            if getattr(self, k) < 1:
                raise ValueError(f"{k} must be >= 1, got {getattr(self, k)}")
        if not 0.0 < self.post_lr_factor <= 1.0:
            raise ValueError(f"post_lr_factor must be in (0, 1], got {self.post_lr_factor}")
        if not 0.0 <= self.valid_fraction < 1.0:
            raise ValueError(f"valid_fraction must be in [0, 1), got {self.valid_fraction}")
        if "umec_auto" in self.methods and not self.auto_scores:
            raise ValueError("umec_auto needs at least one score kind in auto_scores")
        for s in self.auto_scores:
            UMECConfig(**{**self.umec, "score": s})
        UMECConfig(**self.umec)

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)
