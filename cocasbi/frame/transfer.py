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

Everything is linear in τ, so the fit (:mod:`cocasbi.frame.training.transfer`) is exact
linear least squares over all Fourier modes of
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
from dataclasses import dataclass

import numpy as np

from cocasbi.cosmology import PARAMETERS
from cocasbi.prior import DEFAULT_PRIOR

#: default style / feature parameters: those the default prior varies
COSMO_PARAMS = DEFAULT_PRIOR.names


@dataclass(frozen=True)
class CosmologyFeatures:
    """Polynomial features φ_p(θ) of degree ``degree`` in x = (θ − centre) / scale."""

    names: tuple[str, ...] = COSMO_PARAMS
    centre: tuple[float, ...] = (0.31, 0.81)
    scale: tuple[float, ...] = (0.06, 0.1)
    degree: int = 0

    def __post_init__(self):
        unknown = [n for n in self.names if n not in PARAMETERS]
        if unknown:
            raise ValueError(f"cosmology features {unknown} are not parameters {PARAMETERS}")
        if not len(self.names) == len(self.centre) == len(self.scale):
            raise ValueError(f"cosmology features: {len(self.names)} names, "
                             f"{len(self.centre)} centres, {len(self.scale)} scales")
        if not all(np.isfinite(self.centre)) or not all(s > 0 for s in self.scale):
            raise ValueError("cosmology features: centres must be finite, scales positive")
        if self.degree not in (0, 1, 2):
            raise ValueError(f"cosmology features: degree {self.degree} is not 0, 1 or 2")

    def monomials(self) -> list[tuple[int, ...]]:
        out = [()]
        for d in range(1, self.degree + 1):
            out += list(itertools.combinations_with_replacement(range(len(self.names)), d))
        return out

    @property
    def size(self) -> int:
        return len(self.monomials())

    def normalised(self, cosmology: dict[str, float]) -> np.ndarray:
        """x = (θ − centre) / scale of each parameter, (F,) float64 (the degree-1 features)."""
        return np.array([(float(cosmology[n]) - c) / s for n, c, s in
                         zip(self.names, self.centre, self.scale, strict=True)])

    def __call__(self, cosmology: dict[str, float]) -> np.ndarray:
        x = self.normalised(cosmology)
        return np.array([np.prod([x[i] for i in m]) if m else 1.0 for m in self.monomials()])


def _rfft_fields(field: np.ndarray, n: int) -> np.ndarray:
    """(N³, 3) or (N, N, N, 3) real → (3, N, N, N//2+1) complex128."""
    f = np.asarray(field, dtype=np.float64).reshape(n, n, n, 3)
    return np.fft.rfftn(np.moveaxis(f, -1, 0), axes=(1, 2, 3))


def source_modes(fields, n: int) -> list[np.ndarray]:
    """Fourier modes (3, N, N, N//2+1) complex128 of each (N³, 3) source field (Ψ1, Ψ2,
    forces), computed once and shared by the transfer model and the local inputs."""
    return [_rfft_fields(f, n) for f in fields]


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


def lpt_forces(psi1: np.ndarray, psi2: np.ndarray, box_size: float,
               cosmology: dict[str, float], times, mesh_ratio: int = 2) -> list[np.ndarray]:
    """PM forces at the 2LPT positions q + D1(a)Ψ1 + D2(a)Ψ2 for each a in ``times``, read
    back on the Lagrangian lattice: (N³, 3) float64 each (the force of
    :class:`cocasbi.gravity.ForceSolver`, mesh ``mesh_ratio`` N per side). Nonlinear inputs
    of a transfer frame (one force evaluation each)."""
    from cocasbi.cosmology import Cosmology
    from cocasbi.gravity import ForceSolver
    from cocasbi.ic import lagrangian_grid

    p1 = np.asarray(psi1, dtype=np.float64).reshape(-1, 3)
    p2 = np.asarray(psi2, dtype=np.float64).reshape(-1, 3)
    n = round((p1.size / 3) ** (1 / 3))
    c = Cosmology(**{k: v for k, v in cosmology.items() if k in PARAMETERS})
    q = lagrangian_grid(n, box_size, mesh_ratio * n)
    solver = ForceSolver(mesh_ratio * n, box_size, c.Omega_m)
    return [solver(q + c.D1(a) * p1 + c.D2(a) * p2) for a in times]


@dataclass
class TransferModel:
    """Fitted transfer functions.

    k_nodes: (J,) node wavenumbers [h/Mpc]; tau: (S, K, P, J) coefficients (s = 0: Ψ1,
    s = 1: Ψ2, s = 2…: the PM forces at the LPT positions at ``force_times``, see
    :func:`lpt_forces`; K basis functions; P cosmology features); features: the θ
    polynomial; force_mesh: mesh cells per particle and side of those forces.
    """

    k_nodes: np.ndarray
    tau: np.ndarray
    features: CosmologyFeatures
    n_fit_sims: int = 0
    force_times: tuple[float, ...] = ()
    force_mesh: int = 2

    @property
    def K(self) -> int:
        return self.tau.shape[1]

    @property
    def n_sources(self) -> int:
        return self.tau.shape[0]

    def transfer(self, k, cosmology: dict[str, float]) -> np.ndarray:
        """T_s,k(|k|; θ) at wavenumbers k [h/Mpc] → (S, K, len(k)), dimensionless."""
        node_vals = np.tensordot(self.tau, self.features(cosmology), axes=(2, 0))  # (S, K, J)
        k = np.asarray(k, dtype=np.float64)
        return np.stack([[np.interp(k, self.k_nodes, node_vals[s, c]) for c in range(self.K)]
                         for s in range(self.n_sources)])

    def forces(self, psi1: np.ndarray, psi2: np.ndarray, box_size: float,
               cosmology: dict[str, float]) -> list[np.ndarray]:
        """The model's force inputs (:func:`lpt_forces` at ``force_times``; [] if none)."""
        if not self.force_times:
            return []
        return lpt_forces(psi1, psi2, box_size, cosmology, self.force_times, self.force_mesh)

    def predict(self, psi1: np.ndarray, psi2: np.ndarray, box_size: float,
                cosmology: dict[str, float], modes=None) -> np.ndarray:
        """Coefficient fields c_k (K, N³, 3) float64 [Mpc/h] from Ψ1, Ψ2 ((N³, 3), [Mpc/h])
        (and the forces at the LPT positions, computed here, if the model has force inputs).
        ``modes``: the Fourier modes of all sources if the caller has them
        (:func:`source_modes` of Ψ1, Ψ2 and :meth:`forces`)."""
        n = round((np.asarray(psi1).size / 3) ** (1 / 3))
        if modes is None:
            modes = source_modes((psi1, psi2, *self.forces(psi1, psi2, box_size, cosmology)), n)
        if len(modes) != self.n_sources:
            raise ValueError(f"{len(modes)} source fields for a model with {self.n_sources}")
        fields = modes
        u, _ = _mode_geometry(n)
        k = u * (2 * np.pi / box_size)
        t = self.transfer(k.ravel(), cosmology).reshape(self.n_sources, self.K, *u.shape)
        out = np.empty((self.K, n, n, n, 3))
        for c in range(self.K):
            modes = sum(t[s, c] * f for s, f in enumerate(fields))
            out[c] = np.moveaxis(np.fft.irfftn(modes, s=(n, n, n), axes=(1, 2, 3)), 0, -1)
        return out.reshape(self.K, n**3, 3)

    def to_dict(self) -> dict:
        f = self.features
        d = {"k_nodes": self.k_nodes, "tau": self.tau,
             "feature_names": np.array(f.names), "feature_centre": np.array(f.centre),
             "feature_scale": np.array(f.scale), "feature_degree": np.array(f.degree),
             "n_fit_sims": np.array(self.n_fit_sims)}
        if self.force_times:
            d["force_times"] = np.array(self.force_times, dtype=np.float64)
            d["force_mesh"] = np.array(self.force_mesh)
        return d

    @classmethod
    def from_dict(cls, d) -> TransferModel:
        feats = CosmologyFeatures(tuple(str(x) for x in d["feature_names"]),
                                  tuple(float(x) for x in d["feature_centre"]),
                                  tuple(float(x) for x in d["feature_scale"]),
                                  int(d["feature_degree"]))
        times = tuple(float(x) for x in d["force_times"]) if "force_times" in d else ()
        return cls(np.asarray(d["k_nodes"], dtype=np.float64),
                   np.asarray(d["tau"], dtype=np.float64), feats, int(d["n_fit_sims"]),
                   times, int(d["force_mesh"]) if "force_mesh" in d else 2)
