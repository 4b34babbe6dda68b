"""A family of generated click logs with a known answer, for the quality suite.

Where :mod:`umec_torchrec.data.synthetic` varies table sizes and plants signal in small
tables, this family plants the cases that fool a field-importance score. Every field has a
*role*; the generator seed permutes the roles over the column names ``C1..``, so each seed
is a different draw of *which* fields carry signal:

=================  ======  =========================================================
role               signal  what it is
=================  ======  =========================================================
``high_signal``    yes     a large Zipf table (``high_cardinality`` ids), per-id effects
``mid_signal``     yes     a mid-size Zipf table, per-id effects
``low_signal``     yes     3-12 ids, near uniform, per-id effects
``pair``           joint   two fields with an even number of uniform ids each; the logit
                           gets ``c * s_a[a] * s_b[b]`` with balanced signs ``s = +-1``, so
                           either field alone carries no signal, only the pair does
``constant``       no      one value in ~95 % of rows (a large uncentered second moment)
``memorise``       no      near-unique ids per row (ids drawn from ``8 * rows`` values):
                           a table can memorise training labels, nothing generalises
``high_noise``     no      a large Zipf table, no effect
``low_noise``      no      a small table, no effect
=================  ======  =========================================================

Dense features ``I1..``: lognormal counts; ``signal_dense`` of them (chosen by the seed)
add ``w_d * z_d`` to the logit, ``z_d`` the standardised ``log1p`` of the count.

The label is Bernoulli of ``sigmoid(logit)``, the logit being the sum of the components
above, scaled so each signal field has about the same marginal strength, plus a bias for
the click rate ``ctr``. The answer is in ``info``: ``signal_fields`` (every field that
carries signal, the pair included), ``noise_fields``, ``pair_fields``, ``roles`` (field ->
role), ``signal_dense``, ``noise_dense``, ``cardinalities`` (ids drawn), ``bayes_auc``.
``signal_features`` / ``noise_features`` repeat the field lists under the names
:mod:`~umec_torchrec.data.synthetic` uses.

Data spec: ``clicklog:seed=S,rows=N`` (other params: ``signal_dense``, ``n_dense``,
``high_cardinality``, ``ctr``). The rows go through the common split / vocabulary / encode
path of :func:`umec_torchrec.data.loader.encode`.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

import numpy as np

from umec_torchrec.classification import roc_auc
from umec_torchrec.data.synthetic import SyntheticData, click_probability

__all__ = ["ROLES", "SIGNAL_ROLES", "NOISE_ROLES", "DEFAULT_LAYOUT", "PARAMS", "generate_clicklog", "load_clicklog",
           "parse_clicklog_spec"]

SIGNAL_ROLES = ("high_signal", "mid_signal", "low_signal", "pair")
NOISE_ROLES = ("constant", "memorise", "high_noise", "low_noise")
ROLES = SIGNAL_ROLES + NOISE_ROLES
# 14 fields: 7 carry signal (2 high, 1 mid, 2 low, the pair), 7 are noise (2 near-constant, 2 memorisable, 3 plain).
DEFAULT_LAYOUT: Dict[str, int] = {"high_signal": 2, "mid_signal": 1, "low_signal": 2, "pair": 2,
                                  "constant": 2, "memorise": 2, "high_noise": 2, "low_noise": 1}


def _zipf(rng: np.random.Generator, n: int, card: int, s: float) -> np.ndarray:
    p = np.arange(1, card + 1, dtype=np.float64) ** (-s)
    cdf = np.cumsum(p / p.sum())
    cdf[-1] = 1.0
    return rng.permutation(card)[np.minimum(np.searchsorted(cdf, rng.random(n), side="right"), card - 1)]


def _standardise(v: np.ndarray) -> np.ndarray:
    sd = v.std()
    return (v - v.mean()) / (sd if sd > 0 else 1.0)


def _ids(rng: np.random.Generator, role: str, rows: int, high: int) -> np.ndarray:
    """Ids ``0..card-1`` of one field of ``role`` (the id distribution; effects come later)."""
    if role in ("high_signal", "high_noise"):
        return _zipf(rng, rows, int(rng.integers(high // 2, high + 1)), 1.05)
    if role == "mid_signal":
        return _zipf(rng, rows, int(rng.integers(40, 121)), 0.8)
    if role in ("low_signal", "low_noise"):
        return rng.integers(0, int(rng.integers(3, 13)), rows)
    if role == "pair":
        return rng.integers(0, 2 * int(rng.integers(2, 6)), rows)
    if role == "constant":
        rest = 1 + rng.integers(0, 50, rows)
        return np.where(rng.random(rows) < 0.95, 0, rest)
    if role == "memorise":
        return rng.integers(0, 8 * rows, rows)
    raise ValueError(f"unknown role {role!r}; known: {', '.join(ROLES)}")


def generate_clicklog(rows: int = 20000, seed: int = 0, n_dense: int = 6, signal_dense: int = 3,
                      high_cardinality: int = 2000, ctr: float = 0.25, field_effect: float = 0.8,
                      pair_effect: float = 1.2, dense_effect: float = 0.5,
                      layout: Optional[Dict[str, int]] = None) -> SyntheticData:
    """Draw one click log of the family (see module docstring); deterministic per arguments.

    Args:
        rows: number of rows (>= 100).
        seed: the generator seed: which column gets which role, cardinalities, effects, rows.
        n_dense / signal_dense: dense features, and how many of them carry signal.
        high_cardinality: upper end of the large tables' id counts.
        ctr: the mean click rate.
        field_effect: std of the logit contribution of one signal field.
        pair_effect: ``c`` of the pairwise term ``c * s_a[a] * s_b[b]``.
        dense_effect: ``|w_d|`` of a signal dense feature.
        layout: role -> number of fields (default :data:`DEFAULT_LAYOUT`; ``pair`` must be 0 or 2).

    Returns:
        a :class:`~umec_torchrec.data.synthetic.SyntheticData` (``sparse [rows, F]`` int64
        raw ids, ``dense [rows, n_dense]`` float64 counts, ``labels [rows]``, ``prob``,
        ``info`` with the answer).

    Example::

        d = generate_clicklog(rows=5000, seed=1)
        d.info["signal_fields"], d.info["pair_fields"]
    """
    layout = dict(DEFAULT_LAYOUT if layout is None else layout)
    bad = [r for r in layout if r not in ROLES]
    if bad:
        raise ValueError(f"unknown role(s) {bad} in layout; known: {', '.join(ROLES)}")
    if layout.get("pair", 0) not in (0, 2):
        raise ValueError(f"layout['pair'] must be 0 or 2 (one interacting pair), got {layout['pair']}")
    if rows < 100:
        raise ValueError(f"rows must be >= 100, got {rows}")
    if not 0 <= signal_dense <= n_dense:
        raise ValueError(f"need 0 <= signal_dense <= n_dense, got signal_dense={signal_dense}, n_dense={n_dense}")
    if high_cardinality < 20:
        raise ValueError(f"high_cardinality must be >= 20, got {high_cardinality}")
    if not 0.0 < ctr < 1.0:
        raise ValueError(f"ctr must be in (0, 1), got {ctr}")
    rng = np.random.default_rng([int(seed), 0xC11C])
    roles: List[str] = [r for r in ROLES for _ in range(int(layout.get(r, 0)))]
    if not roles:
        raise ValueError("layout has no fields")
    roles = [roles[i] for i in rng.permutation(len(roles))]  # the seed decides which column carries what
    names = [f"C{j + 1}" for j in range(len(roles))]
    dense_names = [f"I{d + 1}" for d in range(n_dense)]

    ids = np.stack([_ids(rng, r, rows, high_cardinality) for r in roles], axis=1)  # [rows, F]
    logit = np.zeros(rows)
    for j, r in enumerate(roles):
        if r in ("high_signal", "mid_signal", "low_signal"):
            eff = rng.normal(0.0, 1.0, int(ids[:, j].max()) + 1)
            logit += field_effect * _standardise(eff[ids[:, j]])
    pair = [j for j, r in enumerate(roles) if r == "pair"]
    if pair:
        a, b = pair
        signs = []
        for j in pair:  # balanced +-1 over an even number of uniform ids: zero marginal effect
            k = int(ids[:, j].max()) + 1
            k += k % 2
            signs.append(rng.permutation(np.repeat([-1.0, 1.0], k // 2)))
        logit += pair_effect * signs[0][ids[:, a]] * signs[1][ids[:, b]]
    mu = rng.uniform(0.5, 4.0, n_dense)
    sd = rng.uniform(0.5, 1.5, n_dense)
    dense = np.floor(np.exp(rng.normal(mu, sd, size=(rows, n_dense)))).astype(np.float64)
    sig_d = np.sort(rng.choice(n_dense, size=signal_dense, replace=False)) if signal_dense else np.zeros(0, np.int64)
    w = rng.choice([-1.0, 1.0], size=len(sig_d)) * dense_effect
    for wd, d in zip(w, sig_d):
        logit += wd * _standardise(np.log1p(dense[:, d]))
    prob = click_probability(logit, ctr)
    labels = (rng.random(rows) < prob).astype(np.int64)
    # raw values: distinct random 63-bit codes per field (like hashed ids), never MISSING
    raw = np.empty_like(ids)
    for j in range(len(roles)):
        k = int(ids[:, j].max()) + 1
        codes = rng.choice(2**62, size=k, replace=False).astype(np.int64)
        raw[:, j] = codes[ids[:, j]]

    signal = [names[j] for j, r in enumerate(roles) if r in SIGNAL_ROLES]
    noise = [names[j] for j, r in enumerate(roles) if r in NOISE_ROLES]
    info: Dict[str, Any] = {
        "generator": "umec_torchrec.data.clicklog.generate_clicklog",
        "rows": int(rows),
        "seed": int(seed),
        "roles": dict(zip(names, roles)),
        "signal_fields": signal,
        "noise_fields": noise,
        "pair_fields": [names[j] for j in pair],
        "signal_features": list(signal),
        "noise_features": list(noise),
        "signal_dense": [dense_names[d] for d in sig_d],
        "noise_dense": [dense_names[d] for d in range(n_dense) if d not in set(sig_d.tolist())],
        "dense_weights": {dense_names[d]: float(wd) for wd, d in zip(w, sig_d)},
        "cardinalities": {n: int(len(np.unique(ids[:, j]))) for j, n in enumerate(names)},
        "label_rate": float(labels.mean()),
        "bayes_auc": roc_auc(prob, labels),
    }
    return SyntheticData(dense, raw, labels, prob, dense_names, names, info)


PARAMS = {"rows": int, "seed": int, "n_dense": int, "signal_dense": int, "high_cardinality": int, "ctr": float}


def load_clicklog(params: Dict[str, Any], options: Any = None, source: str = "clicklog"):
    """One log of the family as a :class:`~umec_torchrec.data.bundle.DataBundle`, through the
    common split / vocabulary / encode path (:func:`umec_torchrec.data.loader.encode`).

    Args:
        params: :func:`generate_clicklog` keyword arguments (``seed``, ``rows``, ...).
        options: :class:`~umec_torchrec.data.options.DataOptions` (split, vocabulary);
            ``max_rows`` caps ``rows``.
        source: the spec text recorded in ``info["source"]``.
    """
    from umec_torchrec.data.errors import DataError
    from umec_torchrec.data.loader import encode
    from umec_torchrec.data.options import DataOptions

    opts = options or DataOptions()
    p = dict(params)
    if opts.max_rows is not None:
        p["rows"] = min(int(p.get("rows", 20000)), int(opts.max_rows))
    try:
        raw = generate_clicklog(**p).to_raw()
    except (TypeError, ValueError) as e:
        raise DataError(source, None, None, str(e)) from None
    return encode(raw, opts, source=source)


def parse_clicklog_spec(spec: str) -> Dict[str, Any]:
    """``"clicklog:seed=1,rows=5000,valid_fraction=0.1"`` -> ``{"params": {...}, "options": {...}}``
    (used until ``clicklog`` is a kind of :mod:`umec_torchrec.data.spec`)."""
    from umec_torchrec.data.errors import DataError

    kind, _, body = spec.strip().partition(":")
    if kind.strip().lower() != "clicklog":
        raise DataError(spec, None, None, full_path=True, reason="not a clicklog spec")
    params: Dict[str, Any] = {}
    options: Dict[str, Any] = {}
    for item in (s.strip() for s in body.split(",")):
        if not item:
            continue
        key, eq, value = item.partition("=")
        key = key.strip().lower()
        try:
            if not eq:
                raise ValueError("expected KEY=VALUE")
            if key in PARAMS:
                params[key] = PARAMS[key](value)
            elif key in ("test_fraction", "valid_fraction"):
                options[key] = float(value)
            elif key in ("split_seed", "min_count", "max_rows"):
                options[key] = int(value)
            elif key == "time_ordered":
                options[key] = value.strip().lower() in ("1", "true", "yes", "on")
            else:
                raise ValueError(f"unknown key; expected one of {', '.join(sorted(PARAMS))}, test_fraction, "
                                 f"valid_fraction, split_seed, min_count, max_rows, time_ordered")
        except ValueError as e:
            raise DataError(spec, None, key, full_path=True, reason=f"{item!r}: {e}") from None
    return {"params": params, "options": options}
