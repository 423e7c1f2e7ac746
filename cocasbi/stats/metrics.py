"""Paired field metrics: a run against a reference run with the same initial conditions.

Both runs share the box, mesh and initial phases (particle i of one is particle i of the
other), so differences are errors of the method under test, not cosmic variance. Each metric is
also given in units of the cosmic-variance error of the box, the relative Gaussian error
σ_P/P = √(2/N_modes) of a bin (``n_modes`` as in :mod:`cocasbi.stats.power`) and σ_B/B for a
triangle (:func:`bispectrum_sigma`): a value of 0.1 means "a tenth of what cosmic variance
hides in this box".

============================  ==================================================  ==========
name                          definition                                          units
============================  ==================================================  ==========
``rms_dx``                    √⟨|x − x_ref|²⟩, periodic minimum image             [Mpc/h]
``rms_dv``                    √⟨|v − v_ref|²⟩ over particles                      [km/s]
``pk_ratio``                  P(k) / P_ref(k) − 1 per bin
``one_minus_r2``              1 − r(k)², r = P_×/√(P P_ref)
``bk_ratio``                  B / B_ref − 1 per triangle
``*_cv``                      the metric divided by σ_P/P (σ_B/B for ``bk``)
============================  ==================================================  ==========

Power spectra are CIC compensated with shot noise included (it cancels in the ratio of two
runs with the same particle number); bispectra are shot-noise subtracted. Everything is float64.
"""

from __future__ import annotations

import numpy as np

from cocasbi.stats.bispectrum import Bispectrum, bispectrum
from cocasbi.stats.power import CrossPowerSpectrum, cross_power

__all__ = ["bispectrum_ratio", "bispectrum_sigma", "cosmic_variance", "paired_metrics",
           "power_metrics", "rms_displacement", "rms_velocity"]


def _pair(a, b, what: str):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 2 or a.shape[1] != 3:
        raise ValueError(f"{what} must be two (N, 3) arrays of the same shape, got {a.shape} "
                         f"and {b.shape}")
    return a, b


def rms_displacement(x, x_ref, box_size: float) -> float:
    """RMS distance between paired particles [Mpc/h], periodic minimum image.

    x, x_ref: (N, 3) positions [Mpc/h], wrapped or not; box_size: L [Mpc/h].
    """
    x, x_ref = _pair(x, x_ref, "positions")
    if not box_size > 0:
        raise ValueError(f"box_size must be positive, got {box_size}")
    d = x - x_ref
    d -= box_size * np.rint(d / box_size)
    return float(np.sqrt(np.mean(np.sum(d**2, axis=1))))


def rms_velocity(v, v_ref) -> float:
    """RMS difference of paired peculiar velocities [km/s]; v, v_ref: (N, 3) [km/s]."""
    v, v_ref = _pair(v, v_ref, "velocities")
    return float(np.sqrt(np.mean(np.sum((v - v_ref) ** 2, axis=1))))


def cosmic_variance(n_modes) -> np.ndarray:
    """Relative Gaussian error of P in a bin, √(2/N_modes) (NaN for an empty bin)."""
    n = np.asarray(n_modes, dtype=np.float64)
    return np.sqrt(2.0 / np.where(n > 0, n, np.nan))


def power_metrics(cross: CrossPowerSpectrum) -> dict[str, np.ndarray]:
    """Per-bin P ratio − 1 and 1 − r² of a cross spectrum (a: the run, b: the reference),
    each also in units of √(2/N_modes); with ``k`` [h/Mpc], ``n_modes`` and ``sigma_cv``."""
    sigma = cosmic_variance(cross.n_modes)
    ratio = cross.power_a / cross.power_b - 1.0
    decorrelation = 1.0 - cross.r**2
    return {"k": np.asarray(cross.k, dtype=np.float64),
            "n_modes": np.asarray(cross.n_modes, dtype=np.int64),
            "sigma_cv": sigma, "pk_ratio": ratio, "one_minus_r2": decorrelation,
            "pk_ratio_cv": ratio / sigma, "one_minus_r2_cv": decorrelation / sigma}


def bispectrum_sigma(b: Bispectrum) -> np.ndarray:
    """Gaussian error of B per triangle, √(s₁₂₃ V P1 P2 P3 / N_triangles) [(Mpc/h)^6].

    s₁₂₃ = 6, 2, 1 for equilateral, isosceles and scalene triangles; P_i are the shell powers
    with shot noise (the noise of B includes it); V = L³.
    """
    k = b.triangles
    same = (np.isclose(k[:, 0], k[:, 1]).astype(int) + np.isclose(k[:, 1], k[:, 2])
            + np.isclose(k[:, 0], k[:, 2]))
    s = np.where(same == 3, 6.0, np.where(same >= 1, 2.0, 1.0))
    n_bar = b.attrs.get("n_bar", 0.0)
    shot = 1.0 / n_bar if n_bar else 0.0
    p = (b.power1 + shot) * (b.power2 + shot) * (b.power3 + shot)
    n = np.where(b.n_triangles > 0, b.n_triangles, np.nan)
    return np.sqrt(s * b.box_size**3 * np.abs(p) / n)


def bispectrum_ratio(b: Bispectrum, b_ref: Bispectrum) -> dict[str, np.ndarray]:
    """B / B_ref − 1 per triangle and the same in units of σ_B/|B_ref| (of the reference)."""
    if not np.allclose(b.triangles, b_ref.triangles):
        raise ValueError("bispectra of different triangles cannot be compared")
    ratio = b.bispectrum / b_ref.bispectrum - 1.0
    rel_sigma = bispectrum_sigma(b_ref) / np.abs(b_ref.bispectrum)
    return {"triangles": b_ref.triangles, "bk_ratio": ratio, "bk_ratio_cv": ratio / rel_sigma}


def paired_metrics(x, x_ref, box_size: float, n_mesh: int, *, v=None, v_ref=None,
                   dk: float | None = None, kmin: float | None = None,
                   kmax: float | None = None, triangles=None, bk_dk: float | None = None,
                   threads: int = 0) -> dict[str, np.ndarray]:
    """All paired metrics of a run against its reference, as float64 arrays.

    Parameters
    ----------
    x, x_ref : (N, 3) arrays
        Final positions of the run and the reference [Mpc/h].
    box_size : float
        Box side [Mpc/h].
    n_mesh : int
        Mesh cells per side for the spectra.
    v, v_ref : (N, 3) arrays, optional
        Peculiar velocities [km/s]; ``rms_dv`` is NaN without them.
    dk, kmin, kmax : float, optional
        P(k) bins [h/Mpc] (defaults of :func:`~cocasbi.stats.power.cross_power`).
    triangles : (n, 3) array, optional
        Bispectrum triangles [h/Mpc]; no bispectrum metrics without them.
    bk_dk : float, optional
        Bispectrum shell width [h/Mpc] (default of :func:`~cocasbi.stats.bispectrum.bispectrum`).
    threads : int
        FFT threads (0: all cores).

    Returns
    -------
    dict
        ``rms_dx`` [Mpc/h] and ``rms_dv`` [km/s] (0-d arrays), the entries of
        :func:`power_metrics` and, with triangles, of :func:`bispectrum_ratio`.
    """
    out = {"rms_dx": np.float64(rms_displacement(x, x_ref, box_size)),
           "rms_dv": np.float64(np.nan if v is None or v_ref is None
                                else rms_velocity(v, v_ref))}
    cross = cross_power(x, x_ref, box_size, n_mesh=n_mesh, dk=dk, kmin=kmin, kmax=kmax,
                        threads=threads)
    out.update(power_metrics(cross))
    if triangles is not None:
        b = bispectrum(x, box_size, triangles, n_mesh=n_mesh, dk=bk_dk, threads=threads)
        b_ref = bispectrum(x_ref, box_size, triangles, n_mesh=n_mesh, dk=bk_dk,
                           threads=threads)
        out.update(bispectrum_ratio(b, b_ref))
    return {key: np.asarray(value) for key, value in out.items()}
