"""Bispectrum of particle sets and density meshes in a periodic box (FFT shell estimator).

Estimator (Scoccimarro 2000; Sefusatti et al. 2016), conventions of :mod:`cocasbi.stats.power`:

* δ_k = Σ_x δ(x) e^{−ik·x} (unnormalised); particles are painted with CIC and, by default,
  δ_k is divided by the CIC window, exactly as :func:`~cocasbi.stats.power.power_spectrum`.
* A *shell* of centre k_i and width dk holds the modes with k_i − dk/2 <= |q| < k_i + dk/2
  (compared exactly in units of k_f = 2π/L). For each shell, δ_i(x) is the inverse FFT of δ_k
  restricted to the shell and I_i(x) the inverse FFT of the shell's indicator.
* B(k1, k2, k3) = V²/N⁹ Σ_x δ_1 δ_2 δ_3 / Σ_x I_1 I_2 I_3: the mean of
  δ_{q1} δ_{q2} δ_{q3} over all closed triangles q1 + q2 + q3 = 0 with q_i in shell i, in
  [(Mpc/h)^6]. The triangle count is N⁶ Σ_x I_1 I_2 I_3.
* P_i, the power in shell i, is V/N⁶ Σ_x δ_i² / Σ_x I_i² (the mean of V/N⁶ |δ_q|² over the
  shell) [(Mpc/h)^3].
* Shot noise of a particle input (Poisson sampling with n̄ = N_part / V): P_i is reported with
  1/n̄ subtracted and B with B_SN = (P_1 + P_2 + P_3)/n̄ + 1/n̄² subtracted, P_i being the
  subtracted spectra. Aliasing of the CIC window is not corrected, so near the mesh Nyquist
  wavenumber the subtraction is approximate (see docs/statistics.md). Mesh inputs carry no
  shot noise.
* Reduced bispectrum Q = B / (P_1 P_2 + P_1 P_3 + P_2 P_3), with the subtracted B and P_i.

Triangles are given as (k1, k2, k3) shell centres [h/Mpc]; :func:`equilateral`,
:func:`squeezed`, :func:`from_angle` and :func:`triangle_bins` build common sets. A triangle
whose shells close no triangle of grid modes has count 0 and NaN B, Q.

Meshes are transformed in single precision (float32 fields of the
:class:`~cocasbi.fft.FFT` plans); the sums over the mesh are accumulated in float64. Memory:
two float32 meshes per distinct shell (2 × 4 N³ bytes each).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numba
import numpy as np
from tqdm.auto import tqdm

from cocasbi import __version__
from cocasbi.fft import FFT
from cocasbi.stats.power import _field_attrs, _field_modes, _input, _Saveable

__all__ = ["Bispectrum", "bispectrum", "equilateral", "from_angle", "squeezed",
           "triangle_bins"]


# ---------------------------------------------------------------------------- triangles
def _as_k(values, what: str) -> np.ndarray:
    k = np.atleast_1d(np.asarray(values, dtype=np.float64))
    if k.ndim != 1 or not np.all(np.isfinite(k)) or np.any(k <= 0):
        raise ValueError(f"{what} must be positive finite wavenumbers [h/Mpc], got {values!r}")
    return k


def equilateral(k) -> np.ndarray:
    """(n, 3) equilateral triangles k1 = k2 = k3 = k [h/Mpc]."""
    k = _as_k(k, "equilateral k")
    return np.stack([k, k, k], axis=1)


def squeezed(k_short, k_long) -> np.ndarray:
    """(n, 3) isosceles triangles (k_short, k_short, k_long), k_long < k_short [h/Mpc].

    ``k_short`` and ``k_long`` broadcast against each other.
    """
    ks, kl = np.broadcast_arrays(_as_k(k_short, "k_short"), _as_k(k_long, "k_long"))
    if np.any(kl >= ks):
        raise ValueError("a squeezed triangle needs k_long < k_short")
    return np.stack([ks, ks, kl], axis=1).astype(np.float64)


def from_angle(k1, k2, theta) -> np.ndarray:
    """(n, 3) triangles from two sides and the angle θ between the vectors k1 and k2 [rad].

    The third side closes the triangle, k3 = −(k1 + k2), so k3² = k1² + k2² + 2 k1 k2 cos θ
    (the convention of Pylians' ``Bk_library.Bk``): θ = 0 is the folded limit k3 = k1 + k2,
    θ = 2π/3 with k1 = k2 is equilateral, θ → π is squeezed. Arguments broadcast.
    """
    k1, k2, theta = np.broadcast_arrays(_as_k(k1, "k1"), _as_k(k2, "k2"),
                                        np.atleast_1d(np.asarray(theta, dtype=np.float64)))
    if not np.all(np.isfinite(theta)):
        raise ValueError("theta must be finite")
    k3 = np.sqrt(np.maximum(k1**2 + k2**2 + 2 * k1 * k2 * np.cos(theta), 0.0))
    return np.stack([k1, k2, k3], axis=1)


def triangle_bins(kmin: float, kmax: float, dk: float) -> np.ndarray:
    """All triangles k1 >= k2 >= k3 of bin centres kmin + (i + ½) dk below kmax that close
    (k1 <= k2 + k3), as an (n, 3) array [h/Mpc], ordered by k1, then k2, then k3."""
    if not (dk > 0 and kmin >= 0 and kmax > kmin):
        raise ValueError(f"need dk > 0 and 0 <= kmin < kmax, got kmin={kmin}, kmax={kmax}, "
                         f"dk={dk}")
    n = int(np.floor((kmax - kmin) / dk * (1 + 1e-12)))
    if n < 1:
        raise ValueError(f"no complete bin of width dk={dk} between kmin={kmin} and kmax={kmax}")
    centres = kmin + (np.arange(n) + 0.5) * dk
    out = [(centres[i], centres[j], centres[m]) for i in range(n) for j in range(i + 1)
           for m in range(j + 1) if centres[i] <= centres[j] + centres[m] + 1e-9 * dk]
    return np.array(out, dtype=np.float64).reshape(-1, 3)


# ---------------------------------------------------------------------------- result
@dataclass
class Bispectrum(_Saveable):
    """Binned bispectrum of a set of triangles.

    Attributes
    ----------
    k1, k2, k3 : (n,) float64
        Shell centres of the triangle sides [h/Mpc].
    bispectrum : (n,) float64
        B(k1, k2, k3), shot noise subtracted for particles [(Mpc/h)^6] (NaN if no triangle).
    reduced : (n,) float64
        Q = B / (P1 P2 + P1 P3 + P2 P3) (dimensionless).
    power1, power2, power3 : (n,) float64
        Power in each side's shell, shot noise subtracted for particles [(Mpc/h)^3].
    shot_noise : (n,) float64
        Subtracted Poisson term (P1 + P2 + P3)/n̄ + 1/n̄² [(Mpc/h)^6] (0 for a mesh input).
    n_triangles : (n,) float64
        Closed triangles of grid wavevectors in the three shells.
    dk : float
        Shell width [h/Mpc].
    box_size : float
        Box side [Mpc/h].
    n_mesh : int
        Mesh cells per side used for the FFT.
    attrs : dict
        Inputs and conventions (JSON-serialisable).
    """

    k1: np.ndarray
    k2: np.ndarray
    k3: np.ndarray
    bispectrum: np.ndarray
    reduced: np.ndarray
    power1: np.ndarray
    power2: np.ndarray
    power3: np.ndarray
    shot_noise: np.ndarray
    n_triangles: np.ndarray
    dk: float
    box_size: float
    n_mesh: int
    attrs: dict = field(default_factory=dict)

    @property
    def triangles(self) -> np.ndarray:
        """(n, 3) shell centres [h/Mpc]."""
        return np.stack([self.k1, self.k2, self.k3], axis=1)


# ---------------------------------------------------------------------------- kernels
@numba.njit(parallel=True, cache=True)
def _slab_sums3(a, b, c):
    """Per-x-slab Σ a b c of three float32 (N, N, N) arrays, accumulated in float64."""
    out = np.zeros(a.shape[0])
    for i in numba.prange(a.shape[0]):
        total = 0.0
        for j in range(a.shape[1]):
            for m in range(a.shape[2]):
                total += np.float64(a[i, j, m]) * np.float64(b[i, j, m]) * np.float64(c[i, j, m])
        out[i] = total
    return out


def _sum3(a, b, c) -> float:
    """Σ a b c over the mesh: slab sums in parallel, then added in a fixed order, so the
    result is bit-identical for any thread count."""
    return float(np.sum(_slab_sums3(a, b, c)))


def _sum2(a, b) -> float:
    """Σ a b over the mesh (as :func:`_sum3` with c = 1)."""
    return _sum3(a, b, np.ones_like(a))


class _Shells:
    """Shell-filtered real-space fields δ_i(x), I_i(x) of one δ_k, computed once per shell."""

    def __init__(self, modes, box_size: float, dk: float, threads: int):
        n = modes.shape[0]
        self.modes = modes
        self.fft = FFT(n, threads)
        kf = 2 * np.pi / box_size
        q = np.fft.fftfreq(n, 1.0 / n)
        qz = np.arange(n // 2 + 1, dtype=np.float64)
        self.q = np.sqrt(q[:, None, None] ** 2 + q[None, :, None] ** 2 + qz[None, None, :] ** 2)
        self.kf = kf
        self.half = 0.5 * dk / kf  # half-width in units of k_f
        self.cache: dict[float, tuple[np.ndarray, np.ndarray]] = {}

    def __call__(self, k: float):
        key = round(float(k) / self.kf, 9)
        if key not in self.cache:
            mask = (self.q >= key - self.half) & (self.q < key + self.half) & (self.q > 0)
            delta = self.fft.backward(np.where(mask, self.modes, 0).astype(np.complex64))
            unit = self.fft.backward(mask.astype(np.complex64))
            self.cache[key] = (delta, unit)
        return self.cache[key]


# ---------------------------------------------------------------------------- estimator
def bispectrum(field_or_positions, box_size: float, triangles, n_mesh: int | None = None,
               dk: float | None = None, compensate: bool = True,
               subtract_shot_noise: bool = True, threads: int = 0,
               progress: bool = False) -> Bispectrum:
    """Bispectrum of a particle set or a density-contrast mesh for a list of triangles.

    Parameters
    ----------
    field_or_positions : (N, 3) array or (N_m, N_m, N_m) array
        Particle positions [Mpc/h] (painted with CIC on an ``n_mesh``³ mesh) or a real
        density contrast on a mesh (used as is), as in
        :func:`~cocasbi.stats.power.power_spectrum`.
    box_size : float
        Box side L [Mpc/h].
    triangles : (n, 3) array
        Shell centres (k1, k2, k3) [h/Mpc] of each triangle (see :func:`equilateral`,
        :func:`squeezed`, :func:`from_angle`, :func:`triangle_bins`).
    n_mesh : int, optional
        Mesh cells per side; required for particles.
    dk : float, optional
        Shell width [h/Mpc]; default 2 k_f (Pylians' shells k ± k_f).
    compensate : bool
        Divide δ_k of painted particles by the CIC window.
    subtract_shot_noise : bool
        Subtract the Poisson shot noise of a particle input (module docstring).
    threads : int
        FFT threads; 0 uses every core.
    progress : bool
        Show a progress bar over the triangles.

    Returns
    -------
    Bispectrum
        B [(Mpc/h)^6], Q, shell powers [(Mpc/h)^3] and triangle counts per triangle.
    """
    tri = np.asarray(triangles, dtype=np.float64)
    if tri.ndim == 1 and tri.size == 3:
        tri = tri[None]
    if tri.ndim != 2 or tri.shape[1] != 3 or len(tri) == 0:
        raise ValueError(f"triangles must be an (n, 3) array of (k1, k2, k3), got shape "
                         f"{np.shape(triangles)}")
    if not np.all(np.isfinite(tri)) or np.any(tri <= 0):
        raise ValueError("triangle sides must be positive finite wavenumbers [h/Mpc]")
    if not box_size > 0:
        raise ValueError(f"box_size must be positive, got {box_size}")
    data, kind, n = _input(field_or_positions, n_mesh)
    kf = 2 * np.pi / box_size
    dk = 2 * kf if dk is None else float(dk)
    if not dk > 0:
        raise ValueError(f"shell width dk must be positive, got {dk}")
    k_nyq = np.pi * n / box_size
    if np.any(tri + 0.5 * dk > np.sqrt(3) * k_nyq):
        raise ValueError(f"a triangle side exceeds the mesh's largest wavenumber "
                         f"√3 k_Nyq = {np.sqrt(3) * k_nyq:.4g} h/Mpc")
    modes, shot_p = _field_modes(data, kind, n, box_size, compensate, threads)
    shells = _Shells(modes, box_size, dk, threads)

    volume = box_size**3
    p_norm = volume / float(n) ** 6
    b_norm = volume**2 / float(n) ** 9
    power = {}

    def shell_power(k):
        key = round(k / kf, 9)
        if key not in power:
            delta, unit = shells(k)
            count = _sum2(unit, unit)
            power[key] = _sum2(delta, delta) / count * p_norm if count > 0 else np.nan
        return power[key]

    n_tri = len(tri)
    out = {name: np.full(n_tri, np.nan) for name in ("b", "q", "p1", "p2", "p3", "sn")}
    counts = np.zeros(n_tri)
    shot = shot_p if (subtract_shot_noise and kind == "particles") else 0.0
    for t in tqdm(range(n_tri), desc="bispectrum", unit="triangle", disable=not progress):
        fields = [shells(k) for k in tri[t]]
        norm = _sum3(fields[0][1], fields[1][1], fields[2][1])
        counts[t] = norm * float(n) ** 6
        p = [shell_power(k) - shot for k in tri[t]]
        out["p1"][t], out["p2"][t], out["p3"][t] = p
        if counts[t] < 0.5:
            continue
        raw = _sum3(fields[0][0], fields[1][0], fields[2][0]) / norm * b_norm
        sn = (p[0] + p[1] + p[2]) * shot + shot**2
        out["sn"][t] = sn
        out["b"][t] = raw - sn
        out["q"][t] = out["b"][t] / (p[0] * p[1] + p[0] * p[2] + p[1] * p[2])
    attrs = {
        "dk": dk, "k_fundamental": kf, "k_nyquist": k_nyq,
        "convention": "B = V^2/N^9 sum_x d1 d2 d3 / sum_x I1 I2 I3; shells |q - k_i| < dk/2",
        "shot_noise_subtracted": bool(shot > 0), "n_bar": (1.0 / shot) if shot > 0 else 0.0,
        "cocasbi_version": __version__, **_field_attrs(kind, compensate),
    }
    return Bispectrum(k1=tri[:, 0].copy(), k2=tri[:, 1].copy(), k3=tri[:, 2].copy(),
                      bispectrum=out["b"], reduced=out["q"], power1=out["p1"],
                      power2=out["p2"], power3=out["p3"],
                      shot_noise=np.where(counts >= 0.5, out["sn"], np.nan),
                      n_triangles=np.rint(counts), dk=dk, box_size=float(box_size), n_mesh=n,
                      attrs=attrs)
