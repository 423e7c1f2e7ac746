"""Second moments of one training simulation: linear frame fits and their exact errors.

Everything about a transfer-function frame (:mod:`cocasbi.frame.transfer`) is linear in its
coefficients, so a few second moments of each simulation determine both the least-squares fit
and the exact error of any fitted model on that simulation, for any subset of simulations,
cosmology polynomial, time basis and K, without reading the 130 MB files again:

* ``gram`` (n_t, n_t): Σ_modes p_t* p_u, the residual Gram matrix over the query times;
* ``cross`` (2, 2, J, J): Σ_modes h_j h_j' Ψ_s* Ψ_s' (hat functions h_j of |k|);
* ``vec`` (n_t, 2, J): Σ_modes h_j Ψ_s* p_t;
* ``drift`` (n_steps, n_t): :func:`cocasbi.frame.training.basis.drift_matrix` in the run's
  cosmology.

Sums run over the real-FFT modes with Hermitian weights (Σ over all modes of the full FFT,
= n³ Σ over particles); all float64, fields in [Mpc/h]. A model with effective per-time
transfer functions M_t (n_t, 2, J) then has the error Gram matrix
E = G − X − Xᵀ + M cross Mᵀ with X[t, u] = M_t · vec_u (:meth:`SimMoments.error_gram`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from cocasbi.cosmology import PARAMETERS, Cosmology
from cocasbi.frame.basis import TimeBasis
from cocasbi.frame.training.basis import drift_matrix
from cocasbi.frame.training.data import read_sample
from cocasbi.frame.training.transfer import TransferFitter
from cocasbi.frame.transfer import CosmologyFeatures, TransferModel, _rfft_fields


@dataclass(frozen=True)
class SimMoments:
    """The second moments of one simulation (see the module docstring)."""

    n: int
    box_size: float
    cosmology: dict[str, float]
    times: np.ndarray
    gram: np.ndarray
    cross: np.ndarray
    vec: np.ndarray
    drift: np.ndarray

    @property
    def J(self) -> int:
        return self.cross.shape[-1]

    def error_gram(self, per_time: np.ndarray) -> np.ndarray:
        """Error Gram matrix (n_t, n_t) of the prediction M_t Ψ with M_t = ``per_time``
        (n_t, S, J), the node values of the transfer functions at each query time."""
        x = np.einsum("tsj,usj->tu", per_time, self.vec)
        q = np.einsum("tsj,srjk,urk->tu", per_time, self.cross, per_time)
        return self.gram - x - x.T + q

    def save(self, path: str | Path) -> Path:
        np.savez(path, n=self.n, box_size=self.box_size, times=self.times, gram=self.gram,
                 cross=self.cross, vec=self.vec, drift=self.drift,
                 cosmology=np.array([self.cosmology[k] for k in PARAMETERS]))
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> SimMoments:
        with np.load(path, allow_pickle=False) as d:
            return cls(int(d["n"]), float(d["box_size"]),
                       dict(zip(PARAMETERS, map(float, d["cosmology"]), strict=True)),
                       d["times"], d["gram"], d["cross"], d["vec"], d["drift"])


def sample_moments(path: str | Path, extra: Sequence[np.ndarray] = ()) -> SimMoments:
    """The moments of one training file (reads it once; memory ≈ 2 × its residual).

    extra: further source fields ((N³, 3) or (N, N, N, 3), lattice order) after Ψ1 and Ψ2,
    for models with more inputs than the transfer frame (``cross`` and ``vec`` then have
    S = 2 + len(extra) sources).
    """
    s = read_sample(path)
    with h5py.File(path, "r") as f:
        boundaries, half = f["boundaries"][...], f["half"][...]
    n, nt = s.n, len(s.times)
    fitter = TransferFitter(n, s.box_size, 1, CosmologyFeatures(degree=0))
    fields = [_rfft_fields(f, n) for f in (s.psi1, s.psi2, *extra)]
    w, S = fitter._w, len(fields)
    cross = np.empty((S, S, fitter.J, fitter.J))
    for a in range(S):
        for b in range(S):
            cross[a, b] = fitter._pair_matrix(w * (np.conj(fields[a]) * fields[b]).real
                                              .sum(axis=0).ravel())
    vec = np.empty((nt, S, fitter.J))
    for t in range(nt):
        target = _rfft_fields(s.residual[t], n)
        for a in range(S):
            vec[t, a] = fitter._vector(w * (np.conj(fields[a]) * target).real.sum(axis=0)
                                       .ravel())
    m = s.residual.reshape(nt, -1).astype(np.float64)
    gram = (m @ m.T) * n**3  # Parseval: Σ over all FFT modes
    drift = drift_matrix(s.times, boundaries, half, Cosmology(**s.cosmology))
    return SimMoments(n, s.box_size, s.cosmology, s.times, gram, cross, vec, drift)


def cached_moments(paths: Sequence[Path], cache_dir: str | Path) -> list[SimMoments]:
    """:func:`sample_moments` of each file, kept as ``<cache_dir>/<stem>.npz``."""
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    out = []
    for p in paths:
        c = cache_dir / f"{Path(p).stem}.npz"
        if not c.exists():
            sample_moments(p).save(c)
        out.append(SimMoments.load(c))
    return out


def fit_per_time(moments: Sequence[SimMoments], features: CosmologyFeatures,
                 ridge: float = 1e-10) -> np.ndarray:
    """Least-squares transfer coefficients τ (n_t, S, P, J) for the residual at every query
    time (same normal equations as :class:`~cocasbi.frame.training.transfer.TransferFitter`;
    S = 2 sources Ψ1, Ψ2 unless the moments hold more)."""
    if not moments:
        raise ValueError("no training moments")
    P, J, nt = features.size, moments[0].J, len(moments[0].times)
    S = moments[0].cross.shape[0]
    a = np.zeros((S * P * J, S * P * J))
    b = np.zeros((nt, S * P * J))
    for m in moments:
        if m.J != J or len(m.times) != nt or m.cross.shape[0] != S:
            raise ValueError("moments of different grids or query times")
        phi = features(m.cosmology)
        a += np.einsum("p,q,stjk->spjtqk", phi, phi, m.cross).reshape(a.shape)
        b += np.einsum("p,tsj->tspj", phi, m.vec).reshape(b.shape)
    a += ridge * np.trace(a) / len(a) * np.eye(len(a))
    return np.linalg.solve(a, b.T).T.reshape(nt, S, P, J)


def project_model(tau_t: np.ndarray, basis: TimeBasis, features: CosmologyFeatures,
                  box_size: float, n_fit_sims: int,
                  force_times: tuple[float, ...] = ()) -> TransferModel:
    """The transfer model of the K coefficient fields of ``basis`` from per-time τ
    (sources beyond Ψ1, Ψ2: the forces at the LPT positions at ``force_times``)."""
    if tau_t.shape[1] != 2 + len(force_times):
        raise ValueError(f"{tau_t.shape[1]} sources for {len(force_times)} force times")
    tau = np.einsum("kt,tspj->skpj", basis.projector, tau_t)
    k_nodes = np.arange(tau_t.shape[-1]) * (2 * np.pi / box_size)
    return TransferModel(k_nodes, tau, features, n_fit_sims, tuple(force_times))


def model_error_gram(m: SimMoments, tau_t: np.ndarray, features: CosmologyFeatures,
                     basis: TimeBasis | None) -> np.ndarray:
    """Error Gram matrix on simulation ``m`` of the per-time fit ``tau_t`` reduced to the K
    time functions of ``basis`` (None: no time truncation)."""
    per_time = np.einsum("tspj,p->tsj", tau_t, features(m.cosmology))
    if basis is not None:
        per_time = np.einsum("kt,ku,usj->tsj", basis.functions, basis.projector, per_time)
    return m.error_gram(per_time)


def truncation_error_gram(m: SimMoments, basis: TimeBasis) -> np.ndarray:
    """Error Gram matrix of the K-term reconstruction with perfect coefficients."""
    r = np.eye(len(m.times)) - basis.functions.T @ basis.projector
    return r @ m.gram @ r.T
