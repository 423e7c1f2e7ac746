"""Time basis of the COLA residual momentum, so that one model evaluation serves a whole run.

Over a training set the residual p_res(q, a) = p − p_LPT [Mpc/h] is, to a good approximation,
separable in a few terms:

    p_res(q, a) ≈ Σ_{k<K} b_k(a) c_k(q).

The time functions b_k are the leading left singular vectors of the matrix
M[t, (sim, q, component)] of all stored residuals at the query times t (computed from the
n_t × n_t Gram matrix M Mᵀ accumulated one file at a time, so memory stays one simulation).
They are orthonormal over the query times, hence c_k(q) = Σ_t b_k(t) p_res(q, t) and a model
only has to predict the K coefficient fields c_k once per simulation.

A *weighted* basis (:func:`cocasbi.frame.training.basis.weighted_basis`) minimises the error
in a metric over time, e.g. the drift-weighted one: the position error that a residual error
causes by a = 1. Its functions are not orthonormal; it carries *dual* functions d_k with
Σ_t d_k(t) b_l(t) = δ_kl, and c_k(q) = Σ_t d_k(t) p_res(q, t).

b_k is stored at the query times of the training schedule. Other times are reached by a cubic
spline whose abscissa is the growth factor D1(a) of the simulated cosmology (the residual is a
smooth function of D1; at the stored times the stored values are returned exactly).
Fitting: :mod:`cocasbi.frame.training.basis`. All arrays are float64.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.interpolate import CubicSpline

from cocasbi.cosmology import Cosmology


@dataclass(frozen=True)
class TimeBasis:
    """K orthonormal time functions b_k at the training query times.

    times: (n_t,) scale factors; functions: (K, n_t) dimensionless; eigenvalues: (n_t,) the
    Gram eigenvalues over the training set (sum of squared residuals captured per mode,
    [Mpc/h]²), used to report the captured fraction; dual: (K, n_t) projection functions
    d_k of a weighted basis (None: the functions are orthonormal, d_k = b_k).
    """

    times: np.ndarray
    functions: np.ndarray
    eigenvalues: np.ndarray
    dual: np.ndarray | None = None

    @property
    def K(self) -> int:
        return self.functions.shape[0]

    def truncated(self, K: int) -> TimeBasis:
        if not 1 <= K <= len(self.times):
            raise ValueError(f"K={K} outside 1..{len(self.times)}")
        dual = None if self.dual is None else self.dual[:K]
        return TimeBasis(self.times, self.functions[:K], self.eigenvalues, dual)

    @property
    def projector(self) -> np.ndarray:
        """Dual functions d_k (K, n_t): c_k = Σ_t d_k(t) p_res(t)."""
        return self.functions if self.dual is None else self.dual

    def captured_fraction(self) -> np.ndarray:
        """Cumulative fraction of Σ|p_res|² (all times, all training sims) captured by K modes."""
        ev = np.clip(self.eigenvalues, 0, None)
        return np.cumsum(ev) / ev.sum()

    def project(self, residual: np.ndarray) -> np.ndarray:
        """Coefficient fields c_k = Σ_t d_k(t) p_res(t): (n_t, ...) → (K, ...)."""
        r = np.asarray(residual, dtype=np.float64)
        if r.shape[0] != len(self.times):
            raise ValueError(f"residual has {r.shape[0]} times, basis {len(self.times)}")
        return np.tensordot(self.projector, r, axes=(1, 0))

    def values(self, a, cosmo: Cosmology | None = None) -> np.ndarray:
        """b_k(a) for scalar or array a → (K,) or (K, len(a)).

        At a stored time the stored value is returned exactly; elsewhere a cubic spline in
        D1(a) of ``cosmo`` (default: the fiducial Cosmology()).
        """
        a_arr = np.atleast_1d(np.asarray(a, dtype=np.float64))
        out = np.empty((self.K, a_arr.size))
        idx = np.searchsorted(self.times, a_arr).clip(0, len(self.times) - 1)
        idx_lo = (idx - 1).clip(0)
        exact = np.where(np.abs(self.times[idx] - a_arr) <= 1e-12 * a_arr, idx,
                         np.where(np.abs(self.times[idx_lo] - a_arr) <= 1e-12 * a_arr, idx_lo, -1))
        hit = exact >= 0
        out[:, hit] = self.functions[:, exact[hit]]
        if (~hit).any():
            cosmo = cosmo or Cosmology()
            spline = CubicSpline(cosmo.D1(self.times), self.functions, axis=1)
            out[:, ~hit] = spline(cosmo.D1(a_arr[~hit]))
        return out[:, 0] if np.ndim(a) == 0 else out

    def to_dict(self) -> dict[str, np.ndarray]:
        d = {"basis_times": self.times, "basis_functions": self.functions,
             "basis_eigenvalues": self.eigenvalues}
        if self.dual is not None:
            d["basis_dual"] = self.dual
        return d

    @classmethod
    def from_dict(cls, d) -> TimeBasis:
        dual = d.get("basis_dual") if hasattr(d, "get") else None
        return cls(np.asarray(d["basis_times"], dtype=np.float64),
                   np.asarray(d["basis_functions"], dtype=np.float64),
                   np.asarray(d["basis_eigenvalues"], dtype=np.float64),
                   None if dual is None else np.asarray(dual, dtype=np.float64))
