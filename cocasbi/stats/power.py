"""Auto and cross power spectra of particle sets and density meshes in a periodic box.

Conventions (docs/statistics.md):

* Fourier transform δ_k = Σ_x δ(x) e^{−ik·x} (unnormalised), P(k) = V/N⁶ |δ_k|² with V = L³
  and N the mesh cells per side.
* Particles are painted with CIC (:func:`cocasbi.cic.paint_cic`, mesh nodes at j L/N) and, by
  default, δ_k is divided by the CIC window Π_i sinc²(k_i Δ/2), Δ = L/N, sinc(x) = sin(x)/x.
  Aliasing is not corrected. Shot noise V/N_part is reported, never subtracted.
* Linear bins [k_min + i dk, k_min + (i+1) dk): by default dk = k_f = 2π/L and k_min = k_f/2,
  so bin i is centred on (i+1) k_f, and the last bin ends at or below k_max (default: the mesh
  Nyquist wavenumber π N/L). k = 0 is excluded. Pylians truncates |k|/k_f instead (its bin i
  is [i, i+1) k_f): pass kmin = dk = k_f to reproduce it.
* ``n_modes`` counts every wavevector of the full FFT grid in a bin, k and −k separately (as
  nbodykit does). With this count the Gaussian error is σ_P = P √(2/N_modes); the number of
  independent complex modes is about N_modes/2.

Meshes are transformed in single precision (the float32/complex64 plans of
:class:`cocasbi.fft.FFT`); bin sums are accumulated in float64.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path

import h5py
import numba
import numpy as np

from cocasbi import __version__
from cocasbi.cic import paint_cic
from cocasbi.fft import FFT, wavenumbers

__all__ = ["CrossPowerSpectrum", "PowerSpectrum", "cross_power", "power_spectrum"]


# ---------------------------------------------------------------------------- result objects
class _Saveable:
    """HDF5 save/load for the result dataclasses: arrays as datasets, numbers as attributes."""

    def save(self, path) -> Path:
        """Write the result to an HDF5 file at ``path`` (overwritten); returns the path.

        Array fields become datasets of the same name (float64, n_modes int64), scalar fields
        root attributes, ``attrs`` a JSON string attribute ``attrs_json``, and the class name
        the attribute ``kind``.
        """
        path = Path(path)
        with h5py.File(path, "w") as f:
            f.attrs["kind"] = type(self).__name__
            f.attrs["cocasbi_version"] = __version__
            for fld in fields(self):
                value = getattr(self, fld.name)
                if fld.name == "attrs":
                    f.attrs["attrs_json"] = json.dumps(value, default=_json_default)
                elif isinstance(value, np.ndarray):
                    f.create_dataset(fld.name, data=value)
                else:
                    f.attrs[fld.name] = value
        return path

    @classmethod
    def load(cls, path):
        """Read a result written by :meth:`save`; raises ValueError for another kind of file."""
        path = Path(path)
        with h5py.File(path, "r") as f:
            kind = f.attrs.get("kind")
            if kind != cls.__name__:
                raise ValueError(f"{path}: holds {kind!r}, not a {cls.__name__}")
            values = {}
            for fld in fields(cls):
                if fld.name == "attrs":
                    values["attrs"] = json.loads(f.attrs["attrs_json"])
                elif fld.name in f:
                    values[fld.name] = f[fld.name][...]
                else:
                    values[fld.name] = f.attrs[fld.name].item()
        return cls(**values)


def _json_default(obj):
    if isinstance(obj, np.generic | np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"attrs value {obj!r} of type {type(obj).__name__} is not JSON-serialisable")


@dataclass
class PowerSpectrum(_Saveable):
    """Binned auto power spectrum.

    Attributes
    ----------
    k : (n_bins,) float64
        Mean |k| of the modes in each bin [h/Mpc] (NaN for an empty bin).
    power : (n_bins,) float64
        Mean of V/N⁶ |δ_k|² over the bin [(Mpc/h)^3], shot noise included (NaN if empty).
    n_modes : (n_bins,) int64
        Wavevectors of the full FFT grid in each bin (k and −k counted separately).
    k_edges : (n_bins + 1,) float64
        Bin edges [h/Mpc].
    shot_noise : float
        Poisson shot noise V/N_part [(Mpc/h)^3] (0 for a mesh input); not subtracted.
    box_size : float
        Box side [Mpc/h].
    n_mesh : int
        Mesh cells per side used for the FFT.
    attrs : dict
        Inputs and conventions (JSON-serialisable).
    """

    k: np.ndarray
    power: np.ndarray
    n_modes: np.ndarray
    k_edges: np.ndarray
    shot_noise: float
    box_size: float
    n_mesh: int
    attrs: dict = field(default_factory=dict)

    def sigma(self) -> np.ndarray:
        """Gaussian (cosmic-variance) error of ``power``, P √(2/N_modes) [(Mpc/h)^3]."""
        return self.power * np.sqrt(2.0 / _nonzero(self.n_modes))


@dataclass
class CrossPowerSpectrum(_Saveable):
    """Binned cross power spectrum of fields a and b, with both auto spectra.

    Attributes
    ----------
    k : (n_bins,) float64
        Mean |k| of the modes in each bin [h/Mpc].
    power : (n_bins,) float64
        Cross spectrum P_ab = V/N⁶ Re(δ_a δ_b*) averaged over the bin [(Mpc/h)^3].
    power_a, power_b : (n_bins,) float64
        Auto spectra P_aa and P_bb on the same bins, shot noise included [(Mpc/h)^3].
    n_modes : (n_bins,) int64
        Wavevectors of the full FFT grid in each bin (k and −k counted separately).
    k_edges : (n_bins + 1,) float64
        Bin edges [h/Mpc].
    shot_noise_a, shot_noise_b : float
        Poisson shot noise of a and b, V/N_part or 0 for a mesh [(Mpc/h)^3]; P_ab carries no
        shot noise when a and b are different tracers.
    box_size : float
        Box side [Mpc/h].
    n_mesh : int
        Mesh cells per side used for the FFT.
    attrs : dict
        Inputs and conventions (JSON-serialisable).
    """

    k: np.ndarray
    power: np.ndarray
    power_a: np.ndarray
    power_b: np.ndarray
    n_modes: np.ndarray
    k_edges: np.ndarray
    shot_noise_a: float
    shot_noise_b: float
    box_size: float
    n_mesh: int
    attrs: dict = field(default_factory=dict)

    @property
    def r(self) -> np.ndarray:
        """Cross-correlation coefficient r(k) = P_ab / √(P_aa P_bb) (dimensionless)."""
        return self.power / np.sqrt(self.power_a * self.power_b)

    def sigma(self) -> np.ndarray:
        """Gaussian error of P_ab, √((P_ab² + P_aa P_bb) / N_modes) [(Mpc/h)^3].

        Reduces to P √(2/N_modes) when a = b.
        """
        return np.sqrt((self.power**2 + self.power_a * self.power_b) / _nonzero(self.n_modes))


def _nonzero(n_modes):
    """Mode counts as float64 with empty bins as NaN (so their errors are NaN, not inf)."""
    return np.where(n_modes > 0, n_modes, np.nan)


# ---------------------------------------------------------------------------- binning
@numba.njit(parallel=True, cache=True)
def _bin_modes_kernel(a_k, b_k, kx, ky, kz, zweight, edges):
    """Per-x-slab sums over rfft modes: counts, Σ w|k| and Σ w Re(a b*), float64.

    kx, ky, kz are integer wavenumbers (units of k_f) stored as float64, so |k|² is exact and
    |k| of a perfect square is an exact integer; ``edges`` are linear bin edges in units of
    k_f and a mode is in bin i iff edges[i] <= |k| < edges[i+1].
    """
    nx, ny, nz = a_k.shape
    n_bins = len(edges) - 1
    e0, de = edges[0], edges[1] - edges[0]
    counts = np.zeros((nx, n_bins))
    ksum = np.zeros((nx, n_bins))
    psum = np.zeros((nx, n_bins))
    for i in numba.prange(nx):
        for j in range(ny):
            for l in range(nz):
                k = np.sqrt(kx[i] * kx[i] + ky[j] * ky[j] + kz[l] * kz[l])
                if k == 0.0:
                    continue
                b = min(max(int(np.floor((k - e0) / de)), 0), n_bins - 1)
                if k < edges[b]:  # the division may round across an edge: compare exactly
                    b -= 1
                elif k >= edges[b + 1]:
                    b += 1
                if b < 0 or b >= n_bins:
                    continue
                a, c = a_k[i, j, l], b_k[i, j, l]
                re = np.float64(a.real) * np.float64(c.real) + np.float64(a.imag) * np.float64(
                    c.imag)
                w = zweight[l]
                counts[i, b] += w
                ksum[i, b] += w * k
                psum[i, b] += w * re
    return counts, ksum, psum


def _bin_modes(a_k, b_k, box_size: float, edges):
    """Bin Re(a_k b_k*) of two rfft-layout meshes over |k| shells.

    a_k, b_k: complex (N, N, N/2+1) arrays in the unnormalised convention; edges: (n_bins+1,)
    linear bin edges in units of k_f = 2π/L. Every rfft mode stands for itself and its
    conjugate except on the kz = 0 and (N even) kz = Nyquist planes, which hold both members
    of each pair already: weights are 2 and 1 respectively, so counts are full-grid wavevector
    counts. Binning in units of k_f keeps integer edges exact: a wavevector with |k| on an
    edge (e.g. |(6, 3, 2)| = 7 k_f) falls in the upper bin whatever the round-off in L.

    Returns n_modes (int64), mean |k| [h/Mpc] and mean V/N⁶ Re(a b*) [(Mpc/h)^3] per bin,
    NaN where a bin is empty.
    """
    n = a_k.shape[0]
    kxy = np.fft.fftfreq(n, 1.0 / n)
    kz = np.arange(n // 2 + 1, dtype=np.float64)
    zweight = np.full(kz.size, 2.0)
    zweight[0] = 1.0
    if n % 2 == 0:
        zweight[-1] = 1.0
    counts, ksum, psum = _bin_modes_kernel(a_k, b_k, kxy, kxy, kz, zweight, edges)
    counts, ksum, psum = counts.sum(axis=0), ksum.sum(axis=0), psum.sum(axis=0)
    n_modes = np.rint(counts).astype(np.int64)
    norm = _nonzero(counts)
    return n_modes, ksum / norm * (2 * np.pi / box_size), psum / norm * box_size**3 / float(n) ** 6


def _edges(box_size: float, n_mesh: int, dk, kmin, kmax):
    """Linear bin edges in units of k_f = 2π/L (defaults dk = k_f, kmin = k_f/2, kmax = π N/L).

    Arguments are in [h/Mpc]. Working in units of k_f keeps edges such as kmin = dk = k_f exact
    integers.
    """
    if not box_size > 0:
        raise ValueError(f"box_size must be positive, got {box_size}")
    kf = 2 * np.pi / box_size
    dk = 1.0 if dk is None else float(dk) / kf
    kmin = 0.5 if kmin is None else float(kmin) / kf
    kmax = n_mesh / 2 if kmax is None else float(kmax) / kf
    if dk <= 0 or kmin < 0:
        raise ValueError(f"need dk > 0 and kmin >= 0, got dk={dk * kf}, kmin={kmin * kf}")
    n_bins = int(np.floor((kmax - kmin) / dk * (1 + 1e-12)))
    if n_bins < 1:
        raise ValueError(f"no complete bin of width dk={dk * kf} between kmin={kmin * kf} and "
                         f"kmax={kmax * kf}")
    return kmin + dk * np.arange(n_bins + 1)


# ---------------------------------------------------------------------------- fields
def _deconvolve_cic(modes, box_size: float):
    """Divide rfft-layout modes in place by the CIC window Π_i sinc²(k_i Δ/2)."""
    n = modes.shape[0]
    cell = box_size / n
    # np.sinc(x) = sin(πx)/(πx), so sinc(k Δ/2) = np.sinc(k Δ / 2π)
    for k in wavenumbers(n, box_size):
        modes /= (np.sinc(k * cell / (2 * np.pi)) ** 2).astype(modes.real.dtype)
    return modes


def _input(field_or_positions, n_mesh):
    """Classify an input as particles or mesh and return (array, kind, mesh size), validated.

    Particles are (N, 3) positions [Mpc/h] and need ``n_mesh``; a mesh is a real cubic array
    whose size ``n_mesh`` must match if given.
    """
    data = np.asarray(field_or_positions)
    if data.ndim == 2 and data.shape[1] == 3:
        if n_mesh is None:
            raise ValueError("n_mesh is required to paint particles")
        if len(data) == 0:
            raise ValueError("cannot measure the power spectrum of zero particles")
        return data, "particles", int(n_mesh)
    if data.ndim == 3 and data.shape[0] == data.shape[1] == data.shape[2]:
        if np.iscomplexobj(data):
            raise ValueError("a mesh input must be a real field (the density contrast)")
        if n_mesh is not None and n_mesh != data.shape[0]:
            raise ValueError(f"n_mesh={n_mesh} does not match the mesh shape {data.shape}")
        return data, "mesh", data.shape[0]
    raise ValueError(
        f"expected (N, 3) particle positions or a cubic (N, N, N) mesh, got shape {data.shape}")


def _field_modes(data, kind: str, n: int, box_size: float, compensate: bool, threads: int):
    """δ_k (complex64, rfft layout) of an input classified by :func:`_input`, and its shot noise.

    Particles [Mpc/h] are painted with CIC on an n³ mesh and, if ``compensate``, deconvolved
    by the CIC window; shot noise V/N. A mesh is transformed as is (no window, shot noise 0).
    """
    if kind == "mesh":
        return FFT(n, threads).forward(data), 0.0
    modes = FFT(n, threads).forward(paint_cic(data, n, box_size))
    if compensate:
        _deconvolve_cic(modes, box_size)
    return modes, box_size**3 / len(data)


def _field_attrs(kind: str, compensate: bool, suffix: str = "") -> dict:
    """What was measured: input kind, mass-assignment window and whether it was deconvolved."""
    return {
        f"input{suffix}": kind,
        f"window{suffix}": "cic" if kind == "particles" else "none",
        f"compensated{suffix}": bool(compensate and kind == "particles"),
    }


def _attrs(k_edges, box_size: float, n_mesh: int, **extra) -> dict:
    return {
        "dk": float(k_edges[1] - k_edges[0]),
        "kmin": float(k_edges[0]),
        "kmax": float(k_edges[-1]),
        "k_fundamental": 2 * np.pi / box_size,
        "k_nyquist": np.pi * n_mesh / box_size,
        "convention": "delta_k = sum_x delta(x) exp(-ikx); P = V/N^6 |delta_k|^2",
        "cocasbi_version": __version__,
        **extra,
    }


def power_spectrum(field_or_positions, box_size: float, n_mesh: int | None = None,
                   dk: float | None = None, kmin: float | None = None,
                   kmax: float | None = None, compensate: bool = True,
                   threads: int = 0) -> PowerSpectrum:
    """Auto power spectrum of a particle set or a density-contrast mesh.

    Parameters
    ----------
    field_or_positions : (N, 3) array or (N_m, N_m, N_m) array
        Particle positions [Mpc/h] (any real dtype, need not be wrapped into the box), painted
        with CIC on an ``n_mesh``³ float32 mesh; or a real density contrast δ on a mesh
        (transformed as is, in float32).
    box_size : float
        Box side L [Mpc/h].
    n_mesh : int, optional
        Mesh cells per side; required for particles, must match the mesh if given with one.
    dk : float, optional
        Bin width [h/Mpc]; default k_f = 2π/L.
    kmin : float, optional
        Lower edge of the first bin [h/Mpc]; default k_f/2.
    kmax : float, optional
        Upper limit of the last bin [h/Mpc]; default the mesh Nyquist wavenumber π N_m / L.
        Only whole bins are kept, so the last edge is the largest kmin + i dk <= kmax.
    compensate : bool
        Divide δ_k of painted particles by the CIC window (ignored for a mesh input).
    threads : int
        FFT threads; 0 uses every core.

    Returns
    -------
    PowerSpectrum
        k [h/Mpc], power [(Mpc/h)^3] with shot noise V/N_part reported in ``shot_noise``.
    """
    data, kind, n = _input(field_or_positions, n_mesh)
    edges = _edges(box_size, n, dk, kmin, kmax)
    modes, shot = _field_modes(data, kind, n, box_size, compensate, threads)
    n_modes, k, power = _bin_modes(modes, modes, box_size, edges)
    k_edges = edges * (2 * np.pi / box_size)
    return PowerSpectrum(k=k, power=power, n_modes=n_modes, k_edges=k_edges, shot_noise=shot,
                         box_size=float(box_size), n_mesh=n,
                         attrs=_attrs(k_edges, box_size, n, **_field_attrs(kind, compensate)))


def cross_power(a, b, box_size: float, n_mesh: int | None = None, dk: float | None = None,
                kmin: float | None = None, kmax: float | None = None, compensate: bool = True,
                threads: int = 0) -> CrossPowerSpectrum:
    """Cross power spectrum P_ab and auto spectra P_aa, P_bb on the same bins.

    ``a`` and ``b`` are each (N, 3) particle positions [Mpc/h] or a real density-contrast mesh,
    as in :func:`power_spectrum` (whose parameters these are); both end up on the same mesh.
    ``n_mesh`` defaults to the size of a mesh input. The correlation coefficient is
    ``result.r`` = P_ab / √(P_aa P_bb).
    """
    if n_mesh is None:
        meshes = [np.shape(x)[0] for x in (a, b) if np.ndim(x) == 3]
        n_mesh = meshes[0] if meshes else None
    data_a, kind_a, n = _input(a, n_mesh)
    data_b, kind_b, _ = _input(b, n)
    edges = _edges(box_size, n, dk, kmin, kmax)
    a_k, shot_a = _field_modes(data_a, kind_a, n, box_size, compensate, threads)
    b_k, shot_b = _field_modes(data_b, kind_b, n, box_size, compensate, threads)
    n_modes, k, p_ab = _bin_modes(a_k, b_k, box_size, edges)
    _, _, p_aa = _bin_modes(a_k, a_k, box_size, edges)
    _, _, p_bb = _bin_modes(b_k, b_k, box_size, edges)
    k_edges = edges * (2 * np.pi / box_size)
    attrs = _attrs(k_edges, box_size, n, **_field_attrs(kind_a, compensate, "_a"),
                   **_field_attrs(kind_b, compensate, "_b"))
    return CrossPowerSpectrum(k=k, power=p_ab, power_a=p_aa, power_b=p_bb, n_modes=n_modes,
                              k_edges=k_edges, shot_noise_a=shot_a, shot_noise_b=shot_b,
                              box_size=float(box_size), n_mesh=n, attrs=attrs)
