"""The cheap frame model: learned Fourier-space transfer functions applied to the LPT fields.

For each time-basis coefficient field c_k (see :mod:`cocasbi.frame.basis`) and each Cartesian
component i, the model is linear in the 2LPT displacements:

    c_k,i(k) = T1_k(|k|; θ) Ψ1,i(k) + T2_k(|k|; θ) Ψ2,i(k),

with real, isotropic transfer functions (rotation and parity invariance forbid anything else
for a linear map from a vector field to a vector field that is a gradient). Each T is a
piecewise-linear ("hat") function of |k| with nodes every fundamental mode k_f of the training
box, and depends on the cosmology θ through a polynomial of degree 0, 1 or 2 in the
normalised parameters x = (θ − centre) / scale:

    T_s,k(|k|; θ) = Σ_p φ_p(x) Σ_j h_j(|k|) τ[s, k, p, j].

Everything is linear in τ, so the fit is exact linear least squares over all Fourier modes of
all training simulations (normal equations accumulated one simulation at a time; a tiny ridge
fixes nodes that no mode constrains). The polynomial in θ (rather than fitting separate
cosmology bins) uses every simulation for every coefficient and interpolates smoothly across
the prior; degree 1 is enough inside a ±10 % box, degree 2 needs ≳ 6 cosmologies per feature.

What the model cannot represent: the transverse (curl) part of the residual and any
phase-incoherent (stochastic) small-scale motion. Its predictions are the conditional
mean given the LPT fields, i.e. a smoothed residual, which is what a frame needs.

Fields in and out are float64 [Mpc/h]; k in [h/Mpc].
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cocasbi.frame.basis import TimeBasis
from cocasbi.frame.data import iter_samples

COSMO_PARAMS = ("Omega_m", "sigma8")


@dataclass(frozen=True)
class CosmologyFeatures:
    """Polynomial features φ_p(θ) of degree ``degree`` in x = (θ − centre) / scale."""

    names: tuple[str, ...] = COSMO_PARAMS
    centre: tuple[float, ...] = (0.31, 0.81)
    scale: tuple[float, ...] = (0.06, 0.1)
    degree: int = 0

    def monomials(self) -> list[tuple[int, ...]]:
        out = [()]
        for d in range(1, self.degree + 1):
            out += list(itertools.combinations_with_replacement(range(len(self.names)), d))
        return out

    @property
    def size(self) -> int:
        return len(self.monomials())

    def __call__(self, cosmology: dict[str, float]) -> np.ndarray:
        x = [(float(cosmology[n]) - c) / s for n, c, s in zip(self.names, self.centre,
                                                              self.scale, strict=True)]
        return np.array([np.prod([x[i] for i in m]) if m else 1.0 for m in self.monomials()])


def _rfft_fields(field: np.ndarray, n: int) -> np.ndarray:
    """(N³, 3) or (N, N, N, 3) real → (3, N, N, N//2+1) complex128."""
    f = np.asarray(field, dtype=np.float64).reshape(n, n, n, 3)
    return np.fft.rfftn(np.moveaxis(f, -1, 0), axes=(1, 2, 3))


def _mode_geometry(n: int):
    """|k| in units of k_f for the rfft layout, and the Hermitian weight of each mode."""
    f = np.fft.fftfreq(n, 1.0 / n)
    fz = np.arange(n // 2 + 1)
    u = np.sqrt(f[:, None, None] ** 2 + f[None, :, None] ** 2 + fz[None, None, :] ** 2)
    w = np.full(u.shape, 2.0)
    w[..., 0] = 1.0
    if n % 2 == 0:
        w[..., -1] = 1.0
    return u, w


def _hat(u: np.ndarray, n_nodes: int):
    """Node index j and weight t of the hat functions at u (nodes at 0, 1, …): h_j = 1 − t,
    h_{j+1} = t. Beyond the last node the last value is held."""
    u = np.minimum(u, n_nodes - 1 - 1e-12)
    j = np.floor(u).astype(np.int64)
    return j, u - j


@dataclass
class TransferModel:
    """Fitted transfer functions.

    k_nodes: (J,) node wavenumbers [h/Mpc]; tau: (2, K, P, J) coefficients (s = 0: Ψ1,
    s = 1: Ψ2; K basis functions; P cosmology features); features: the θ polynomial.
    """

    k_nodes: np.ndarray
    tau: np.ndarray
    features: CosmologyFeatures
    n_fit_sims: int = 0

    @property
    def K(self) -> int:
        return self.tau.shape[1]

    def transfer(self, k, cosmology: dict[str, float]) -> np.ndarray:
        """T_s,k(|k|; θ) at wavenumbers k [h/Mpc] → (2, K, len(k)), dimensionless."""
        node_vals = np.tensordot(self.tau, self.features(cosmology), axes=(2, 0))  # (2, K, J)
        k = np.asarray(k, dtype=np.float64)
        return np.stack([[np.interp(k, self.k_nodes, node_vals[s, c]) for c in range(self.K)]
                         for s in range(2)])

    def predict(self, psi1: np.ndarray, psi2: np.ndarray, box_size: float,
                cosmology: dict[str, float]) -> np.ndarray:
        """Coefficient fields c_k (K, N³, 3) float64 [Mpc/h] from Ψ1, Ψ2 ((N³, 3), [Mpc/h])."""
        n = round((np.asarray(psi1).size / 3) ** (1 / 3))
        p1, p2 = _rfft_fields(psi1, n), _rfft_fields(psi2, n)
        u, _ = _mode_geometry(n)
        k = u * (2 * np.pi / box_size)
        t = self.transfer(k.ravel(), cosmology).reshape(2, self.K, *u.shape)
        out = np.empty((self.K, n, n, n, 3))
        for c in range(self.K):
            modes = t[0, c] * p1 + t[1, c] * p2
            out[c] = np.moveaxis(np.fft.irfftn(modes, s=(n, n, n), axes=(1, 2, 3)), 0, -1)
        return out.reshape(self.K, n**3, 3)

    def to_dict(self) -> dict:
        f = self.features
        return {"k_nodes": self.k_nodes, "tau": self.tau,
                "feature_names": np.array(f.names), "feature_centre": np.array(f.centre),
                "feature_scale": np.array(f.scale), "feature_degree": np.array(f.degree),
                "n_fit_sims": np.array(self.n_fit_sims)}

    @classmethod
    def from_dict(cls, d) -> TransferModel:
        feats = CosmologyFeatures(tuple(str(x) for x in d["feature_names"]),
                                  tuple(float(x) for x in d["feature_centre"]),
                                  tuple(float(x) for x in d["feature_scale"]),
                                  int(d["feature_degree"]))
        return cls(np.asarray(d["k_nodes"], dtype=np.float64),
                   np.asarray(d["tau"], dtype=np.float64), feats, int(d["n_fit_sims"]))


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
    from tqdm.auto import tqdm

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
    from tqdm.auto import tqdm

    from cocasbi.frame.basis import TimeBasis

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
    ev, vec = np.linalg.eigh(gram)
    order = np.argsort(ev)[::-1]
    ev, vec = ev[order], vec[:, order].T
    vec *= np.where(vec[:, -1] < 0, -1.0, 1.0)[:, None]
    full = TimeBasis(np.asarray(times, dtype=np.float64), vec, ev)
    basis = full.truncated(K)
    per_time = fitter.solve()
    tau = np.einsum("kt,stpj->skpj", basis.functions, per_time.tau)
    return full, basis, TransferModel(per_time.k_nodes, tau, features, per_time.n_fit_sims)
