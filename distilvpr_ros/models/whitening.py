"""Descriptor whitening: centring + PCA whitening of one branch's L2-normalised descriptors.

The teacher's ``whitened_concat`` fusion (``models.vpr.TeacherModel``) maps each branch ``x`` to
``l2((l2(x) - mean) @ projection)`` before the weighted concatenation. The statistics are fitted once, on
descriptors of the training region (``fit_whitening``), and travel with the checkpoint as model buffers.

``projection = V diag((lam' + eps)^(-power / 2))`` with ``V``, ``lam`` the eigenvectors / eigenvalues of the
sample covariance (``n - 1`` denominator, as scikit-learn's ``PCA``) sorted by decreasing variance and
``lam' = (1 - shrinkage) lam + shrinkage mean(lam)``: ``power = 1, shrinkage = 0`` is ``PCA(whiten=True)``
(up to the sign of each component), ``power = 0`` is centring alone (a rotation, which the cosine ignores).
"""

from __future__ import annotations

import numpy as np

from .vpr import l2_normalize


def fit_whitening(x: np.ndarray, power: float = 1.0, shrinkage: float = 0.0,
                  eps: float = 1e-6) -> tuple[np.ndarray, np.ndarray]:
    """``(mean (D,), projection (D, D))`` of the rows of ``x`` (already L2-normalised by the caller).

    ``eps`` is relative to the largest eigenvalue (directions without variance are not blown up).
    """
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or len(x) < 2:
        raise ValueError(f"need an N x D array with N >= 2, got shape {x.shape}")
    if not 0.0 <= power <= 1.0 or not 0.0 <= shrinkage <= 1.0:
        raise ValueError(f"power and shrinkage must be in [0, 1], got {power}, {shrinkage}")
    mean = x.mean(axis=0)
    centred = x - mean
    cov = centred.T @ centred / (len(x) - 1)
    lam, vectors = np.linalg.eigh(cov)
    order = np.argsort(lam)[::-1]
    lam, vectors = np.clip(lam[order], 0.0, None), vectors[:, order]
    lam = (1.0 - shrinkage) * lam + shrinkage * lam.mean()
    scale = (lam + eps * max(float(lam[0]), 1e-30)) ** (-power / 2.0)
    return mean.astype(np.float32), (vectors * scale).astype(np.float32)


def apply_whitening(x: np.ndarray, mean: np.ndarray, projection: np.ndarray) -> np.ndarray:
    """``l2((l2(x) - mean) @ projection)``: the whitened unit branch descriptors (as the model's forward)."""
    return l2_normalize((l2_normalize(x) - mean) @ projection)
