"""Fitting the transfer-function frame model (see :mod:`cocasbi.frame.transfer`).

Everything in the model is linear in its coefficients τ, so the fit is exact linear least
squares over all Fourier modes of all training simulations: the normal equations are
accumulated one simulation at a time (:class:`TransferFitter`) and a tiny ridge fixes nodes
that no mode constrains. Fields are float64 [Mpc/h]; k in [h/Mpc].
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from cocasbi.frame.basis import TimeBasis
from cocasbi.frame.training.basis import basis_from_gram
from cocasbi.frame.training.data import iter_samples
from cocasbi.frame.transfer import CosmologyFeatures, TransferModel, _mode_geometry, _rfft_fields


def _hat(u: np.ndarray, n_nodes: int):
    """Node index j and weight t of the hat functions at u (nodes at 0, 1, …): h_j = 1 − t,
    h_{j+1} = t. Beyond the last node the last value is held."""
    u = np.minimum(u, n_nodes - 1 - 1e-12)
    j = np.floor(u).astype(np.int64)
    return j, u - j


class TransferFitter:
    """Accumulates the normal equations of the transfer-function least-squares fit.

    n: grid cells per side; box_size [Mpc/h] of the training sims; K: number of target
    fields; features: the cosmology polynomial.
    """

    def __init__(self, n: int, box_size: float, K: int, features: CosmologyFeatures,
                 ridge: float = 1e-10):
        self.n, self.box_size, self.K, self.features, self.ridge = n, box_size, K, features, ridge
        u, w = _mode_geometry(n)
        self.J = int(np.ceil(u.max())) + 2
        j, t = _hat(u.ravel(), self.J)
        self._j, self._t, self._w = j, t, w.ravel()
        P = features.size
        dim = 2 * P * self.J
        self.A = np.zeros((dim, dim))
        self.b = np.zeros((K, dim))
        self.n_sims = 0

    def _pair_matrix(self, weights: np.ndarray) -> np.ndarray:
        """Σ_modes weights h_j h_j' as a (J, J) matrix (tridiagonal)."""
        j, t, J = self._j, self._t, self.J
        m = np.zeros((J, J))
        lo, hi = (1 - t), t
        d0 = np.bincount(j, weights * lo * lo, minlength=J)
        d1 = np.bincount(j + 1, weights * hi * hi, minlength=J + 1)[:J]
        off = np.bincount(j, weights * lo * hi, minlength=J)
        m[np.arange(J), np.arange(J)] = d0 + d1
        m[np.arange(J - 1), np.arange(1, J)] = off[: J - 1]
        m[np.arange(1, J), np.arange(J - 1)] = off[: J - 1]
        return m

    def _vector(self, weights: np.ndarray) -> np.ndarray:
        j, t, J = self._j, self._t, self.J
        return (np.bincount(j, weights * (1 - t), minlength=J)
                + np.bincount(j + 1, weights * t, minlength=J + 1)[:J])

    def add(self, psi1, psi2, coeffs, cosmology: dict[str, float]) -> None:
        """One simulation: Ψ1, Ψ2 (N³ × 3 values), coefficient fields (K, N³ × 3 values)."""
        n = self.n
        fields = [_rfft_fields(psi1, n), _rfft_fields(psi2, n)]
        phi = self.features(cosmology)
        P, J = len(phi), self.J
        w = self._w
        cross = np.empty((2, 2, J, J))
        for s in range(2):
            for s2 in range(s, 2):
                r = (np.conj(fields[s]) * fields[s2]).real.sum(axis=0).ravel()
                cross[s, s2] = self._pair_matrix(w * r)
                cross[s2, s] = cross[s, s2]
        # A[(s, p, j), (s', p', j')] = φ_p φ_p' cross[s, s', j, j']
        block = np.einsum("p,q,stjk->spjtqk", phi, phi, cross).reshape(2 * P * J, 2 * P * J)
        self.A += block
        for c in range(self.K):
            target = _rfft_fields(np.asarray(coeffs[c]), n)
            vec = np.stack([self._vector(w * (np.conj(fields[s]) * target).real.sum(axis=0)
                                         .ravel()) for s in range(2)])  # (2, J)
            self.b[c] += np.einsum("p,sj->spj", phi, vec).ravel()
        self.n_sims += 1

    def solve(self) -> TransferModel:
        A = self.A + self.ridge * np.trace(self.A) / len(self.A) * np.eye(len(self.A))
        sol = np.linalg.solve(A, self.b.T).T  # (K, 2 P J)
        P, J = self.features.size, self.J
        tau = sol.reshape(self.K, 2, P, J).transpose(1, 0, 2, 3)
        k_nodes = np.arange(J) * (2 * np.pi / self.box_size)
        return TransferModel(k_nodes, tau, self.features, self.n_sims)


def fit_transfer(paths: Sequence[Path], basis: TimeBasis,
                 features: CosmologyFeatures | None = None, progress: bool = False,
                 ridge: float = 1e-10) -> TransferModel:
    """Fit transfer functions for the K coefficient fields of ``basis`` over the files."""
    features = features or CosmologyFeatures()
    fitter = None
    for s in tqdm(iter_samples(paths), total=len(paths), desc="transfer fit",
                  disable=not progress):
        if fitter is None:
            fitter = TransferFitter(s.n, s.box_size, basis.K, features, ridge)
        coeffs = basis.project(s.residual)
        fitter.add(s.psi1, s.psi2, coeffs, s.cosmology)
    if fitter is None:
        raise ValueError("no training files")
    return fitter.solve()


def fit_basis_and_transfer(paths: Sequence[Path], K: int,
                           features: CosmologyFeatures | None = None, progress: bool = False,
                           ridge: float = 1e-10) -> tuple[TimeBasis, TimeBasis, TransferModel]:
    """Time basis and transfer model in one pass over the files (each is read once).

    The model is linear in its target, so fitting transfer functions to the residual at every
    query time t and projecting them, τ_k = Σ_t b_k(t) τ_t, equals fitting c_k directly.
    Returns (full basis, basis truncated to K, model for the K coefficient fields).
    """
    features = features or CosmologyFeatures()
    fitter, gram, times = None, None, None
    for s in tqdm(iter_samples(paths), total=len(paths), desc="basis+transfer fit",
                  disable=not progress):
        nt = len(s.times)
        m = s.residual.reshape(nt, -1).astype(np.float64)
        if fitter is None:
            fitter = TransferFitter(s.n, s.box_size, nt, features, ridge)
            gram, times = np.zeros((nt, nt)), s.times
        elif nt != len(times) or not np.allclose(s.times, times, rtol=1e-12):
            raise ValueError(f"{s.path}: query times differ from the first file's")
        gram += m @ m.T
        fitter.add(s.psi1, s.psi2, m, s.cosmology)
    if fitter is None:
        raise ValueError("no training files")
    full = basis_from_gram(gram, times)
    basis = full.truncated(K)
    per_time = fitter.solve()
    tau = np.einsum("kt,stpj->skpj", basis.projector, per_time.tau)
    return full, basis, TransferModel(per_time.k_nodes, tau, features, per_time.n_fit_sims)
