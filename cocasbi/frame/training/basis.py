"""Fitting the time basis of the COLA residual momentum (see :mod:`cocasbi.frame.basis`).

The time functions b_k are the leading left singular vectors of the matrix
M[t, (sim, q, component)] of all stored residuals at the query times t, computed from the
n_t × n_t Gram matrix M Mᵀ accumulated one file at a time (memory: one simulation).
All arrays are float64.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import h5py
import numpy as np

from cocasbi.cosmology import Cosmology
from cocasbi.frame.basis import TimeBasis
from cocasbi.frame.training.data import read_sample


def basis_from_gram(gram: np.ndarray, times: np.ndarray) -> TimeBasis:
    """All n_t time functions from the Gram matrix (n_t, n_t) [(Mpc/h)²] of the residuals at
    ``times``, by decreasing eigenvalue; each function is positive at the last time."""
    ev, vec = np.linalg.eigh(gram)
    order = np.argsort(ev)[::-1]
    ev, vec = ev[order], vec[:, order].T  # rows = time functions
    vec *= np.where(vec[:, -1] < 0, -1.0, 1.0)[:, None]
    return TimeBasis(np.asarray(times, dtype=np.float64), vec, ev)


#: default ridge of the drift metric (chosen by the held-out drift-weighted error on paper.yaml
#: over the default prior: experiments/frame_basis_study.py, docs/coca.md)
DRIFT_RIDGE = 0.01


def fit_time_basis(paths: Sequence[Path], K: int | None = None,
                   drift_ridge: float = DRIFT_RIDGE) -> TimeBasis:
    """Time basis of the stored residuals of ``paths`` (all must share the query times).

    K: number of functions kept (default: all n_t); drift_ridge: the ridge of the drift
    metric :func:`drift_metric` (averaged over the runs' cosmologies; default
    :data:`DRIFT_RIDGE`), ∞ for the plain SVD basis (orthonormal functions).
    """
    gram, times, drift = None, None, []
    for path in paths:
        s = read_sample(path)
        m = s.residual.reshape(len(s.times), -1).astype(np.float64)
        if times is None:
            times, gram = s.times, np.zeros((len(s.times), len(s.times)))
        elif len(s.times) != len(times) or not np.allclose(s.times, times, rtol=1e-12):
            raise ValueError(f"{s.path}: query times differ from the first file's")
        gram += m @ m.T
        if np.isfinite(drift_ridge):
            with h5py.File(path, "r") as f:
                drift.append(drift_matrix(s.times, f["boundaries"][...], f["half"][...],
                                          Cosmology(**s.cosmology)))
    if gram is None:
        raise ValueError("no training files")
    if np.isfinite(drift_ridge):
        basis = weighted_basis(gram, times, drift_metric(np.mean(drift, axis=0), drift_ridge))
    else:
        basis = basis_from_gram(gram, times)
    return basis.truncated(K) if K else basis


def truncation_error(basis: TimeBasis, residual: np.ndarray, K_values: Sequence[int]) -> dict:
    """Relative error of the K-term reconstruction of one simulation's residual.

    Returns {K: (all-times rms error / rms residual, error at the last time / rms there)}.
    """
    r = np.asarray(residual, dtype=np.float64).reshape(len(basis.times), -1)
    out = {}
    for K in K_values:
        b = basis.functions[:K]
        rec = b.T @ (b @ r)
        err = rec - r
        out[K] = (float(np.sqrt((err**2).sum() / (r**2).sum())),
                  float(np.sqrt((err[-1] ** 2).sum() / (r[-1] ** 2).sum())))
    return out


def drift_matrix(times: np.ndarray, boundaries: np.ndarray, half: np.ndarray,
                 cosmo: Cosmology) -> np.ndarray:
    """The map from a residual time series to the position offsets it causes.

    With the forces skipped, a COCA run drifts by D_i p(a_{i+½}) over step i (D_i the drift
    factor from boundary a_i to a_{i+1}), so an error δp(t) at the query times moves the
    particles by E_j = Σ_{i<j} D_i δp(a_{i+½}) by boundary j. Returns L (n_steps, n_t) with
    E = L δp: row j−1 is boundary j = 1 … n_steps (the last row is a = 1); [Mpc/h per Mpc/h],
    float64. The same L applied to the COLA residual gives the COLA displacement beyond LPT.
    """
    times = np.asarray(times, dtype=np.float64)
    half = np.asarray(half, dtype=np.float64)
    b = np.asarray(boundaries, dtype=np.float64)
    if len(half) != len(b) - 1:
        raise ValueError(f"{len(half)} half steps for {len(b)} boundaries")
    idx = np.searchsorted(times, half)
    if np.any(idx >= len(times)) or not np.allclose(times[idx.clip(0, len(times) - 1)], half,
                                                    rtol=1e-12, atol=0):
        raise ValueError("the half steps are not among the query times")
    steps = np.zeros((len(half), len(times)))
    steps[np.arange(len(half)), idx] = [cosmo.drift_factor(b[i], b[i + 1])
                                        for i in range(len(half))]
    return np.cumsum(steps, axis=0)


def drift_metric(L: np.ndarray, ridge: float) -> np.ndarray:
    """Metric over time M = LᵀL + ridge · tr(LᵀL)/n_t · I (n_t, n_t), positive definite.

    ‖L δp‖² is the drift-weighted error summed over the boundaries; it does not see the
    residual at the boundary times (only the half steps are drifted), which enter the kicks
    next to a computed force; the ridge keeps those weighted. ridge = ∞ means the plain
    (unweighted) metric, returned as the identity.
    """
    if not ridge > 0:
        raise ValueError(f"ridge={ridge} must be > 0 (inf: the plain metric)")
    n_t = L.shape[1]
    if np.isinf(ridge):
        return np.eye(n_t)
    m = L.T @ L
    return m + ridge * np.trace(m) / n_t * np.eye(n_t)


def weighted_basis(gram: np.ndarray, times: np.ndarray, metric: np.ndarray) -> TimeBasis:
    """All n_t time functions that best reconstruct the residuals in ``metric``.

    Minimises Σ_sims (p − p̂)ᵀ M (p − p̂) over rank-K reconstructions p̂ = Σ_k b_k c_k for
    every K at once: with S = M^½ the leading eigenvectors u_k of S G S give b_k = S⁻¹ u_k
    and the duals d_k = S u_k (c_k = Σ_t d_k(t) p(t)). The identity metric gives
    :func:`basis_from_gram`. gram: (n_t, n_t) [(Mpc/h)²]; eigenvalues in the metric's units.
    """
    ev_m, vec_m = np.linalg.eigh(np.asarray(metric, dtype=np.float64))
    if ev_m.min() <= 0:
        raise ValueError("the metric over time is not positive definite")
    s = (vec_m * np.sqrt(ev_m)) @ vec_m.T
    s_inv = (vec_m / np.sqrt(ev_m)) @ vec_m.T
    ev, u = np.linalg.eigh(s @ gram @ s)
    order = np.argsort(ev)[::-1]
    ev, u = ev[order], u[:, order]
    functions, dual = (s_inv @ u).T, (s @ u).T
    sign = np.where(functions[:, -1] < 0, -1.0, 1.0)[:, None]
    return TimeBasis(np.asarray(times, dtype=np.float64), functions * sign, ev, dual * sign)


def relative_errors(err_gram: np.ndarray, res_gram: np.ndarray, L: np.ndarray) -> dict:
    """Relative rms errors of a reconstruction from its error Gram matrix over time.

    err_gram, res_gram: Σ over particles of δp(t)·δp(t') and p(t)·p(t') (n_t, n_t), any
    common normalisation; L: :func:`drift_matrix`. Returns ``all`` / ``final`` (momentum
    error over all query times / at the last), ``drift`` / ``drift_final`` (the position
    error it causes, rms over the boundaries / at a = 1, relative to the COLA displacement
    beyond LPT), all dimensionless.
    """
    def ratio(num, den):
        return float(np.sqrt(max(num, 0.0) / den))

    de, dr = L @ err_gram @ L.T, L @ res_gram @ L.T
    return {"all": ratio(np.trace(err_gram), np.trace(res_gram)),
            "final": ratio(err_gram[-1, -1], res_gram[-1, -1]),
            "drift": ratio(np.trace(de), np.trace(dr)),
            "drift_final": ratio(de[-1, -1], dr[-1, -1])}
