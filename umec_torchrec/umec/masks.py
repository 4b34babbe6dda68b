"""The result of compression as a plain structure: kept features and kept units per layer."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List

from umec_torchrec.io import read_json, write_json

__all__ = ["PruningMasks"]


@dataclass
class PruningMasks:
    """What survives compression.

    Args:
        feature_names: every sparse feature of the model, in model order.
        kept_features: the features that keep their table (model order).
        layers: for each prunable hidden layer, keyed by the Perceptron's FQN relative to the
            DLRM (``"dense_arch.model._mlp.0"``, ``"over_arch.model.0._mlp.1"``), the sorted
            indices of the kept output units.
        layer_widths: the original width of each layer in ``layers``.
        dense_kept: whether the dense-arch output still feeds the over-arch.
    """

    feature_names: List[str]
    kept_features: List[str]
    layers: Dict[str, List[int]] = field(default_factory=dict)
    layer_widths: Dict[str, int] = field(default_factory=dict)
    dense_kept: bool = True

    def __post_init__(self) -> None:
        unknown = set(self.kept_features) - set(self.feature_names)
        if unknown:
            raise ValueError(f"kept features not in the model: {sorted(unknown)}")
        order = {f: i for i, f in enumerate(self.feature_names)}
        self.kept_features = sorted(self.kept_features, key=order.__getitem__)
        for name, kept in self.layers.items():
            w = self.layer_widths.get(name)
            if w is None:
                raise ValueError(f"layer {name!r} has no recorded width")
            if not kept or min(kept) < 0 or max(kept) >= w:
                raise ValueError(f"layer {name!r}: kept units must be a non-empty subset of range({w})")
            self.layers[name] = sorted(set(int(i) for i in kept))

    @property
    def pruned_features(self) -> List[str]:
        kept = set(self.kept_features)
        return [f for f in self.feature_names if f not in kept]

    def kept_units(self) -> Dict[str, int]:
        return {k: len(v) for k, v in self.layers.items()}

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "PruningMasks":
        return cls(**d)

    def save(self, path: str) -> None:
        write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str) -> "PruningMasks":
        d = read_json(path)
        try:
            return cls.from_dict(d)
        except TypeError as e:
            raise ValueError(f"{path}: not a masks file ({e})") from None
