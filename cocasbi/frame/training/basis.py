"""Fitting the time basis of the COLA residual momentum (see :mod:`cocasbi.frame.basis`).

The time functions b_k are the leading left singular vectors of the matrix
M[t, (sim, q, component)] of all stored residuals at the query times t, computed from the
n_t × n_t Gram matrix M Mᵀ accumulated one file at a time (memory: one simulation).
All arrays are float64.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from cocasbi.frame.basis import TimeBasis
from cocasbi.frame.training.data import iter_samples


def basis_from_gram(gram: np.ndarray, times: np.ndarray) -> TimeBasis:
    """All n_t time functions from the Gram matrix (n_t, n_t) [(Mpc/h)²] of the residuals at
    ``times``, by decreasing eigenvalue; each function is positive at the last time."""
    ev, vec = np.linalg.eigh(gram)
    order = np.argsort(ev)[::-1]
    ev, vec = ev[order], vec[:, order].T  # rows = time functions
    vec *= np.where(vec[:, -1] < 0, -1.0, 1.0)[:, None]
    return TimeBasis(np.asarray(times, dtype=np.float64), vec, ev)


def fit_time_basis(paths: Sequence[Path], K: int | None = None) -> TimeBasis:
    """SVD time basis of the stored residuals of ``paths`` (all must share the query times).

    K: number of functions kept (default: all n_t).
    """
    gram, times = None, None
    for s in iter_samples(paths):
        m = s.residual.reshape(len(s.times), -1).astype(np.float64)
        if times is None:
            times, gram = s.times, np.zeros((len(s.times), len(s.times)))
        elif len(s.times) != len(times) or not np.allclose(s.times, times, rtol=1e-12):
            raise ValueError(f"{s.path}: query times differ from the first file's")
        gram += m @ m.T
    if gram is None:
        raise ValueError("no training files")
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
