"""A Criteo-like synthetic click log with a known answer.

``generate(rows, seed)`` draws ``n_dense`` dense counts ``I1..`` and ``n_sparse``
categoricals ``C1..`` whose table sizes are log-uniform over orders of magnitude
(3 .. ``max_cardinality``) and whose id frequencies are Zipf-like. A few features carry
the signal, the rest are pure noise. The label is Bernoulli of ``sigmoid(logit)`` with

.. math::

    \\mathrm{logit} = b + \\sum_{j \\in S} a_j[x_j] + \\sum_{(j,k) \\in P} \\langle u_j[x_j], u_k[x_k] \\rangle
    + \\sum_{d \\in S_d} w_d z_d

where :math:`S` are the signal categoricals with per-id random effects :math:`a_j`,
:math:`P` pairs of signal categoricals interacting through rank-``rank`` id vectors
(the shape a DLRM's dot interaction models), and :math:`z_d` the standardised
``log1p`` of the signal dense features. Components are scaled to the given shares of the
logit variance (``logit_std``), and :math:`b` sets the click rate ``ctr``.

The ground truth is returned in ``info``: ``signal_features``, ``signal_dense``,
``noise_features``, ``noise_dense``, ``signal_pairs``, ``cardinalities`` and
``bayes_auc`` (the AUC of the true click probabilities: the ceiling of any model).
Everything is a deterministic function of the arguments (numpy ``default_rng(seed)``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Tuple

import numpy as np

from umec_torchrec.classification import roc_auc
from umec_torchrec.data.raw import MISSING, RawTable


@dataclass
class SyntheticData:
    """Raw arrays of :func:`generate`.

    Args:
        dense: ``float64 [N, n_dense]`` raw counts (``NaN`` = missing, ``-1`` occurs like in Criteo).
        sparse: ``int64 [N, n_sparse]`` raw ids (random 32-bit values, like Criteo's hashed
            hex ids; ``MISSING`` = missing).
        labels: ``int64 [N]`` in {0, 1}.
        prob: ``float64 [N]`` the true click probabilities.
        dense_names / feature_names: ``I1..`` / ``C1..``.
        info: ground truth (see module docstring).
    """

    dense: np.ndarray
    sparse: np.ndarray
    labels: np.ndarray
    prob: np.ndarray
    dense_names: List[str]
    feature_names: List[str]
    info: Dict[str, Any]

    def to_raw(self) -> RawTable:
        return RawTable(self.dense, self.sparse, self.labels, list(self.dense_names),
                        list(self.feature_names), dict(self.info))


def click_probability(logit: np.ndarray, ctr: float) -> np.ndarray:
    """``sigmoid(logit + b)`` with the bias ``b`` (bisection) that makes the mean click rate ``ctr``."""
    lo, hi = -20.0, 20.0
    for _ in range(60):
        mid = (lo + hi) / 2
        if np.mean(1.0 / (1.0 + np.exp(-(logit + mid)))) < ctr:
            lo = mid
        else:
            hi = mid
    return 1.0 / (1.0 + np.exp(-(logit + (lo + hi) / 2)))


def _zipf_ids(rng: np.random.Generator, n: int, card: int, s: float) -> np.ndarray:
    """``n`` draws from ``{0..card-1}`` with P(rank k) ~ (k+1)^-s, ranks shuffled over ids."""
    p = (np.arange(1, card + 1, dtype=np.float64)) ** (-s)
    cdf = np.cumsum(p / p.sum())
    cdf[-1] = 1.0
    ranks = np.searchsorted(cdf, rng.random(n), side="right")
    perm = rng.permutation(card)
    return perm[np.minimum(ranks, card - 1)]


def _standardise(v: np.ndarray) -> np.ndarray:
    sd = v.std()
    return (v - v.mean()) / (sd if sd > 0 else 1.0)


def generate(
    rows: int = 20000,
    seed: int = 0,
    n_dense: int = 13,
    n_sparse: int = 26,
    signal_sparse: int = 8,
    signal_dense: int = 4,
    min_cardinality: int = 3,
    max_cardinality: int = 100_000,
    zipf_s: float = 1.1,
    rank: int = 4,
    logit_std: float = 3.0,
    shares: Tuple[float, float, float] = (0.55, 0.30, 0.15),
    ctr: float = 0.25,
    missing_features: int = 4,
) -> SyntheticData:
    """Draw a synthetic click log (see module docstring); deterministic per arguments.

    Args:
        rows: number of rows.
        seed: the random seed.
        n_dense / n_sparse: feature counts (names ``I1..`` and ``C1..``).
        signal_sparse / signal_dense: how many of them carry signal (the rest is noise).
        min_cardinality / max_cardinality: range of the log-uniform table sizes.
        zipf_s: Zipf exponent of the id frequencies.
        rank: rank of the pairwise interaction vectors.
        logit_std: standard deviation of the logit (signal strength).
        shares: logit variance shares of (per-id effects, pairwise interactions, dense).
        ctr: the mean click rate.
        missing_features: how many *noise* categoricals have missing values (30-80%).
    """
    if rows < 2:
        raise ValueError(f"rows must be >= 2, got {rows}")
    if not (0 <= signal_sparse <= n_sparse and 0 <= signal_dense <= n_dense and n_sparse >= 1):
        raise ValueError("need 1 <= n_sparse, 0 <= signal_sparse <= n_sparse, 0 <= signal_dense <= n_dense")
    rng = np.random.default_rng(seed)
    feature_names = [f"C{i + 1}" for i in range(n_sparse)]
    dense_names = [f"I{i + 1}" for i in range(n_dense)]

    # table sizes over orders of magnitude (log-uniform grid, shuffled over features)
    cards = np.unique(np.round(np.exp(np.linspace(np.log(min_cardinality), np.log(max_cardinality),
                                                  n_sparse))).astype(np.int64))
    cards = np.resize(cards, n_sparse)
    cards = cards[rng.permutation(n_sparse)]
    # signal features: drawn among the tables small enough to be learnable from `rows` rows
    learnable = np.flatnonzero(cards <= max(min_cardinality, rows // 20))
    pool = learnable if len(learnable) >= signal_sparse else np.argsort(cards)[:signal_sparse]
    sig = np.sort(rng.choice(pool, size=signal_sparse, replace=False)) if signal_sparse else np.zeros(0, np.int64)
    sig_d = np.sort(rng.choice(n_dense, size=signal_dense, replace=False)) if signal_dense else np.zeros(0, np.int64)

    # ids: Zipf-like frequencies; raw values are distinct random 32-bit codes (like hashed hex)
    ids = np.empty((rows, n_sparse), dtype=np.int64)
    raw = np.empty((rows, n_sparse), dtype=np.int64)
    for j in range(n_sparse):
        ids[:, j] = _zipf_ids(rng, rows, int(cards[j]), zipf_s)
        codes = rng.choice(2**32, size=int(cards[j]), replace=False).astype(np.int64)
        raw[:, j] = codes[ids[:, j]]
    noise = np.setdiff1d(np.arange(n_sparse), sig)
    miss_cols = rng.choice(noise, size=min(missing_features, len(noise)), replace=False) if len(noise) else []
    for j in miss_cols:
        raw[rng.random(rows) < rng.uniform(0.3, 0.8), j] = MISSING

    # dense: lognormal counts, some -1 and missing values, like Criteo's I1..I13
    mu = rng.uniform(0.0, 5.0, n_dense)
    sd = rng.uniform(0.5, 2.0, n_dense)
    dense = np.floor(np.exp(rng.normal(mu, sd, size=(rows, n_dense)))).astype(np.float64)
    dense[rng.random((rows, n_dense)) < 0.02] = -1.0
    dense_miss = rng.uniform(0.0, 0.3, n_dense)
    dense_miss[sig_d] = 0.0
    dense[rng.random((rows, n_dense)) < dense_miss] = np.nan

    # logit components
    main = np.zeros(rows)
    for j in sig:
        main += rng.normal(0.0, 1.0, int(cards[j]))[ids[:, j]]
    pairs: List[Tuple[int, int]] = []
    if len(sig) >= 2:
        pairs = [(int(sig[i]), int(sig[(i + 1) % len(sig)])) for i in range(len(sig) if len(sig) > 2 else 1)]
    vecs = {int(j): rng.normal(0.0, 1.0, (int(cards[j]), rank)) for j in sig}
    inter = np.zeros(rows)
    for a, b in pairs:
        inter += np.einsum("nr,nr->n", vecs[a][ids[:, a]], vecs[b][ids[:, b]])
    w = rng.choice([-1.0, 1.0], size=len(sig_d)) * rng.uniform(0.5, 1.0, len(sig_d))
    dz = np.zeros(rows)
    for wd, d in zip(w, sig_d):
        dz += wd * _standardise(np.log1p(np.maximum(np.nan_to_num(dense[:, d]), 0.0)))
    parts = []
    for comp, share in zip((main, inter, dz), shares):
        parts.append(_standardise(comp) * np.sqrt(share) if comp.std() > 0 else comp * 0.0)
    logit = sum(parts)
    logit = _standardise(logit) * logit_std
    prob = click_probability(logit, ctr)
    labels = (rng.random(rows) < prob).astype(np.int64)

    info: Dict[str, Any] = {
        "generator": "umec_torchrec.data.synthetic.generate",
        "rows": int(rows),
        "seed": int(seed),
        "signal_features": [feature_names[j] for j in sig],
        "noise_features": [feature_names[j] for j in noise],
        "signal_dense": [dense_names[d] for d in sig_d],
        "noise_dense": [dense_names[d] for d in np.setdiff1d(np.arange(n_dense), sig_d)],
        "signal_pairs": [[feature_names[a], feature_names[b]] for a, b in pairs],
        "dense_weights": {dense_names[d]: float(wd) for wd, d in zip(w, sig_d)},
        "cardinalities": {feature_names[j]: int(cards[j]) for j in range(n_sparse)},
        "zipf_s": float(zipf_s),
        "logit_std": float(logit_std),
        "variance_shares": {"per_id": shares[0], "pairwise": shares[1], "dense": shares[2]},
        "label_rate": float(labels.mean()),
        "bayes_auc": roc_auc(prob, labels),
    }
    return SyntheticData(dense, raw, labels, prob, dense_names, feature_names, info)
