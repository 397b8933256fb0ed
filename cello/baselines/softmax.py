"""Per-type log-odds of rank-weighted gene evidence: multinomial logistic regression, fitted here.

A cell is a sparse vector over the gene vocabulary: gene g at rank r of its list contributes
w(r) (1/log2(r+2) by default), absent genes 0. The model learns one weight per (type, gene) and
one bias per type, so that z_t(cell) = b_t + sum_g W[t, g] x_g is the cell's log-odds for type
t against the others. Unlike a naive-Bayes count model, it weighs genes that co-occur (a
module of T-cell genes) once, and it learns from a gene's absence through the biases.

The loss is the summed cross-entropy plus l2/2 ||W||^2, minimised with L-BFGS (scipy); it is
convex, and the same data gives the same weights. A few lines of numpy instead of a
scikit-learn dependency: the baseline needs nothing beyond numpy and scipy.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import scipy.sparse as sp


def rank_weights(k: int, scheme: str) -> np.ndarray:
    """Weight of the genes at ranks 0..k-1 of a cell's list."""
    r = np.arange(k, dtype=np.float64)
    if scheme == "log":
        return 1.0 / np.log2(r + 2.0)
    if scheme == "linear":
        return 1.0 - r / max(k, 1)
    return np.ones(k)


def features(cells: Sequence[Sequence[str]], vocab: Mapping[str, int], *, scheme: str,
             top_k: int | None = None) -> sp.csr_matrix:
    """Cells x vocabulary, rank-weighted; genes outside the vocabulary are dropped before ranking,
    and a name listed twice (two var rows, one symbol) counts once."""
    indptr, indices, data = [0], [], []
    for genes in cells:
        genes = list(genes)[:top_k] if top_k else list(genes)
        # Ranks among the genes the model knows: a file that measures more genes than the train
        # data pushes the known ones down its lists, and that says nothing about the cell type.
        known = list(dict.fromkeys(j for j in (vocab.get(g) for g in genes) if j is not None))
        indices.extend(known)
        data.extend(rank_weights(len(known), scheme))
        indptr.append(len(indices))
    return sp.csr_matrix((np.asarray(data, dtype=np.float64), np.asarray(indices, dtype=np.int64), indptr),
                         shape=(len(indptr) - 1, len(vocab)))


def fit_softmax(x: sp.csr_matrix, y: np.ndarray, n_types: int, *, l2: float,
                max_iter: int = 500) -> tuple[np.ndarray, np.ndarray]:
    """(W [types x genes], b [types]) minimising cross-entropy + l2/2 ||W||^2 (L-BFGS)."""
    from scipy.optimize import minimize

    n, v = x.shape
    onehot = np.zeros((n, n_types))
    onehot[np.arange(n), y] = 1.0

    def loss(params: np.ndarray) -> tuple[float, np.ndarray]:
        w, b = params[: n_types * v].reshape(n_types, v), params[n_types * v :]
        z = x @ w.T + b
        z -= z.max(axis=1, keepdims=True)
        lse = np.log(np.exp(z).sum(axis=1, keepdims=True))
        logp = z - lse
        value = -(onehot * logp).sum() + 0.5 * l2 * float((w * w).sum())
        g = np.exp(logp) - onehot
        grad_w = np.asarray(x.T @ g).T + l2 * w
        return value, np.concatenate([grad_w.ravel(), g.sum(axis=0)])

    result = minimize(loss, np.zeros(n_types * (v + 1)), jac=True, method="L-BFGS-B",
                      options={"maxiter": max_iter})
    params = result.x
    return params[: n_types * v].reshape(n_types, v), params[n_types * v :]


def log_posteriors(x: sp.csr_matrix, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """log p(type | cell), cells x types."""
    z = np.asarray(x @ w.T) + b
    z -= z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))
