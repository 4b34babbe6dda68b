"""Resource budgets: ``NAME=VALUE`` strings, relative to the dense model or absolute.

Grammar::

    flops=0.3                 # at most 30% of the dense model's dense-path FLOPs
    flops=30%                 # the same
    embedding_bytes=abs:64MiB # at most 64 MiB of embedding tables (absolute)
    flops=abs:2.5e6           # at most 2.5 MFLOPs per sample (absolute)
    lookup_bytes=0.4          # read at most 40% of the dense model's table bytes per sample
    latency=0.2               # at most 20% of the dense program's predicted serving time
    latency=abs:3ms           # at most 3 ms per call of the calibrated batch size

Absolute values accept the suffixes K, M, G (x1000) and KiB, MiB, GiB (x1024), B optional;
absolute latencies are in seconds, or with the suffix s, ms, us (x1e-3, x1e-6) or ns.
A ``latency`` budget needs a latency model (:mod:`umec_torchrec.umec.latency`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, List, Union

__all__ = ["Budget", "parse_budgets"]

_TIME_SUFFIX = {"": 1.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "ns": 1e-9}
_SUFFIX = {"": 1.0, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12, "ki": 1024.0, "mi": 1024.0**2, "gi": 1024.0**3,
           "ti": 1024.0**4}


@dataclass(frozen=True)
class Budget:
    """At most ``value`` of resource ``resource`` (a fraction of dense when ``relative``)."""

    resource: str
    value: float
    relative: bool = True

    def __str__(self) -> str:
        return f"{self.resource}={self.value:g}" if self.relative else f"{self.resource}=abs:{self.value:g}"

    @classmethod
    def parse(cls, text: str) -> "Budget":
        """Parse ``NAME=VALUE`` (see the module docstring); errors name the text."""
        from umec_torchrec.umec.resources import RESOURCES

        if "=" not in text:
            raise ValueError(f"budget {text!r}: expected NAME=VALUE, e.g. flops=0.3")
        name, raw = (t.strip() for t in text.split("=", 1))
        if name not in RESOURCES:
            raise ValueError(f"budget {text!r}: unknown resource {name!r}; known: {', '.join(sorted(RESOURCES))}")
        if raw.lower().startswith("abs:") and name == "latency":
            m = re.fullmatch(r"([0-9.eE+-]+)\s*(s|ms|us|ns)?", raw[4:].strip())
            try:
                v = float(m.group(1)) * _TIME_SUFFIX[m.group(2) or ""] if m else float("nan")
            except ValueError:
                v = float("nan")
            if not v == v:
                raise ValueError(f"budget {text!r}: cannot read the absolute time {raw[4:]!r} "
                                 "(e.g. abs:3ms, abs:0.003)")
            if not v > 0:
                raise ValueError(f"budget {text!r}: must be positive")
            return cls(name, v, relative=False)
        if raw.lower().startswith("abs:"):
            m = re.fullmatch(r"([0-9.eE+-]+)\s*([kKmMgGtT]i?)?[bB]?", raw[4:].strip())
            if not m:
                raise ValueError(f"budget {text!r}: cannot read the absolute value {raw[4:]!r}")
            try:
                v = float(m.group(1)) * _SUFFIX[(m.group(2) or "").lower()]
            except ValueError:
                raise ValueError(f"budget {text!r}: cannot read the absolute value {raw[4:]!r}") from None
            if not v > 0:
                raise ValueError(f"budget {text!r}: must be positive")
            return cls(name, v, relative=False)
        pct = raw.endswith("%")
        try:
            v = float(raw[:-1] if pct else raw) / (100.0 if pct else 1.0)
        except ValueError:
            raise ValueError(f"budget {text!r}: {raw!r} is not a number") from None
        if not 0.0 < v <= 1.0:
            raise ValueError(
                f"budget {text!r}: a relative budget must be in (0, 1] (a fraction of the dense model); "
                "use abs:VALUE for an absolute one"
            )
        return cls(name, v, relative=True)

    def fraction(self, dense_value: float) -> float:
        """This budget as a fraction of the dense model's cost."""
        if self.relative:
            return self.value
        f = self.value / dense_value
        if f > 1.0:
            raise ValueError(
                f"budget {self}: {self.value:g} exceeds the dense model's {dense_value:g}; nothing to compress"
            )
        return f


def parse_budgets(items: Iterable[Union[str, Budget]]) -> List[Budget]:
    """Parse budgets; at most one per resource."""
    out = [b if isinstance(b, Budget) else Budget.parse(b) for b in items]
    seen = set()
    for b in out:
        if b.resource in seen:
            raise ValueError(f"two budgets for {b.resource!r}")
        seen.add(b.resource)
    if not out:
        raise ValueError("give at least one budget, e.g. flops=0.3")
    return out
