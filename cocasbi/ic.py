"""Initial conditions: seeded Gaussian linear fields and 1LPT/2LPT displacements and momenta.

Conventions (docs/physics.md): δ_L is the linear density at a = 1 on the N_p³ particle grid;
Ψ1 = −∇φ1 with ∇²φ1 = δ_L, Ψ2 = ∇φ2 with ∇²φ2 = Σ_{i>j} [φ1,ii φ1,jj − φ1,ij²], and

    x(a) = q + D1(a) Ψ1 + D2(a) Ψ2,   p(a) = a³ E (D1' Ψ1 + D2' Ψ2),
    F_LPT(a) = 3/2 Ω_m [D1 Ψ1 + (D2 − D1²) Ψ2].

Fourier convention: δ_k = Σ_x δ(x) e^{−ik·x} (unnormalised), P(k) = V/N⁶ ⟨|δ_k|²⟩.
Fields are float64 (they set every particle's displacement; computed once per simulation), and
so are their transforms: pyFFTW plans owned by one :class:`cocasbi.fft.FFT` (numpy.fft without
pyFFTW), 15 transforms for 2LPT.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np

from cocasbi.cosmology import Cosmology
from cocasbi.fft import FFT, wavenumbers
from cocasbi.seeds import as_seed_sequence


def linear_field_modes(n: int, box_size: float, cosmo: Cosmology, seed,
                       fixed_amplitude: bool = False, paired: bool = False, threads: int = 0):
    """Fourier modes δ_k (complex128, rfft layout) of the linear density at a = 1.

    n: grid cells per side; box_size [Mpc/h]; seed: int or numpy SeedSequence. White noise is
    drawn in real space (so the field is real for any seed), then coloured by √P(k); P is
    evaluated once per distinct |k|. The k = 0 mode and the Nyquist planes are zeroed.
    ``fixed_amplitude`` sets |δ_k|² = ⟨|δ_k|²⟩ and ``paired`` flips the sign of every mode
    (Angulo & Pontzen 2016). threads: FFT threads (0 = all cores).
    """
    rng = np.random.default_rng(as_seed_sequence(seed))
    fft = FFT(n, threads, dtype=np.float64)
    rng.standard_normal(out=fft.real)
    fft.r2c()
    modes = fft.modes  # handed over: this FFT is not used again
    if fixed_amplitude:
        amp = np.abs(modes)
        modes = np.where(amp > 0, modes / np.where(amp > 0, amp, 1.0), 0.0) * np.sqrt(n**3)
    m2_max = 3 * (n // 2) ** 2
    k = 2 * np.pi / box_size * np.sqrt(np.arange(m2_max + 1, dtype=np.float64))
    _colour(modes, np.sqrt(cosmo.linear_power(k) * n**3 / box_size**3))
    return -modes if paired else modes


@numba.njit(parallel=True, cache=True)
def _colour(modes, amplitude):
    """modes *= amplitude[|m|²] (m in fundamental units); the k = 0 mode and the Nyquist planes
    are set to zero."""
    n = modes.shape[0]
    nyq = n // 2
    for ip in numba.prange(n):
        i = np.int64(ip)  # numba's prange index is unsigned; mixed with signed ints it
        # would be promoted to float
        mi = i if i < nyq else i - n
        for j in range(n):
            mj = j if j < nyq else j - n
            mij = mi * mi + mj * mj
            for k in range(modes.shape[2]):
                if i == nyq or j == nyq or k == nyq:
                    modes[i, j, k] = 0.0
                else:
                    v = modes[i, j, k]
                    amp = amplitude[mij + k * k]
                    modes[i, j, k] = complex(v.real * amp, v.imag * amp)
    modes[0, 0, 0] = 0.0


def lattice_axis(n_particles: int, box_size: float, n_mesh: int):
    """(spacing, offset) [Mpc/h] of the lattice: axis value j spacing + offset, half a mesh cell
    off the mesh nodes."""
    return box_size / n_particles, 0.5 * box_size / n_mesh


def lagrangian_grid(n_particles: int, box_size: float, n_mesh: int):
    """Lattice positions q [Mpc/h], (N³, 3) float64, half a mesh cell off the mesh nodes."""
    spacing, offset = lattice_axis(n_particles, box_size, n_mesh)
    axis = np.arange(n_particles) * spacing + offset
    q = np.empty((n_particles**3, 3))
    _fill_lattice(axis, q)
    return q


@numba.njit(parallel=True, cache=True)
def _fill_lattice(axis, q):
    """q[(i n + j) n + k] = (axis[i], axis[j], axis[k])."""
    n = axis.shape[0]
    for i in numba.prange(n):
        for j in range(n):
            row = (i * n + j) * n
            for k in range(n):
                q[row + k, 0] = axis[i]
                q[row + k, 1] = axis[j]
                q[row + k, 2] = axis[k]


@numba.njit(parallel=True, cache=True)
def _combine(c1, psi1, c2, psi2, scale, base, n_lattice, spacing, offset, out):
    """out = base + scale (c1 ψ1 + c2 ψ2), one pass (scale 1 is exact). The base is the
    (N, 3) array ``base`` if it is not empty, else with ``n_lattice`` > 0 the lattice q of
    :func:`lagrangian_grid` computed on the fly (axis value j spacing + offset for particle
    (i n + j) n + k, the same float64 operations), else nothing."""
    if n_lattice > 0:
        n = n_lattice
        for r in numba.prange(out.shape[0] // n):  # one (i, j) row of the lattice
            qx = np.float64(r // n) * spacing + offset
            qy = np.float64(r % n) * spacing + offset
            for k in range(n):
                i = r * n + k
                q = (qx, qy, np.float64(k) * spacing + offset)
                for c in range(3):
                    out[i, c] = q[c] + scale * (c1 * psi1[i, c] + c2 * psi2[i, c])
        return
    with_base = base.shape[0] > 0
    for i in numba.prange(out.shape[0]):
        for c in range(3):
            v = scale * (c1 * psi1[i, c] + c2 * psi2[i, c])
            out[i, c] = base[i, c] + v if with_base else v


_NO_BASE = np.zeros((0, 3))


@dataclass(frozen=True)
class LPTFields:
    """Lagrangian displacement fields on the particle lattice, (N³, 3) float64 [Mpc/h].

    psi1 and psi2 are the a = 1 fields (multiply by D1(a), D2(a)). The lattice q
    (:func:`lagrangian_grid` of box_size [Mpc/h] and n_mesh) is not stored (24 B per
    particle): :attr:`q` computes it, and :meth:`combine` adds it on the fly. Every derived
    field is one parallel pass (:meth:`combine`), with the same floating-point operations as
    the numpy expression in its docstring.
    """

    psi1: np.ndarray
    psi2: np.ndarray
    box_size: float
    n_mesh: int

    def __post_init__(self):
        n = self.n_particles
        for name in ("psi1", "psi2"):
            if getattr(self, name).reshape(-1, 3).shape != (n**3, 3):
                raise ValueError(f"{name} has shape {getattr(self, name).shape}; expected "
                                 f"({n**3}, 3) on a {n}^3 lattice")

    @property
    def n_particles(self) -> int:
        """Particles per side of the lattice."""
        return round((self.psi1.size // 3) ** (1 / 3))

    @property
    def q(self) -> np.ndarray:
        """Lattice positions [Mpc/h], (N³, 3) float64, computed on each access."""
        return lagrangian_grid(self.n_particles, self.box_size, self.n_mesh)

    def combine(self, c1: float, c2: float, scale: float = 1.0, base=None, out=None,
                lattice: bool = False):
        """base + scale (c1 Ψ1 + c2 Ψ2), (N³, 3) float64 (base: None or an (N³, 3) array;
        ``lattice=True`` takes the lattice q as the base, without storing it)."""
        psi1, psi2 = self.psi1.reshape(-1, 3), self.psi2.reshape(-1, 3)
        if out is None:
            out = np.empty(psi1.shape)
        if base is not None and lattice:
            raise ValueError("give a base array or lattice=True, not both")
        base = _NO_BASE if base is None else np.asarray(base, dtype=np.float64).reshape(-1, 3)
        n = self.n_particles if lattice else 0
        spacing, offset = lattice_axis(self.n_particles, self.box_size, self.n_mesh)
        _combine(float(c1), psi1, float(c2), psi2, float(scale), base, n, spacing, offset, out)
        return out

    def displacement(self, cosmo: Cosmology, a: float):
        """Ψ_LPT(a) = D1 Ψ1 + D2 Ψ2 [Mpc/h]."""
        return self.combine(cosmo.D1(a), cosmo.D2(a))

    def displacement_change(self, cosmo: Cosmology, a0: float, a1: float):
        """Ψ_LPT(a1) − Ψ_LPT(a0) = ΔD1 Ψ1 + ΔD2 Ψ2 [Mpc/h] (one pass over the fields)."""
        return self.combine(cosmo.D1(a1) - cosmo.D1(a0), cosmo.D2(a1) - cosmo.D2(a0))

    def positions(self, cosmo: Cosmology, a: float):
        """x = q + Ψ_LPT(a), wrapped into [0, L) [Mpc/h]."""
        x = self.combine(cosmo.D1(a), cosmo.D2(a), lattice=True)
        return np.mod(x, self.box_size, out=x)

    def momenta(self, cosmo: Cosmology, a: float):
        """p_LPT(a) = a³E (D1' Ψ1 + D2' Ψ2) = G1 Ψ1 + G2 Ψ2 [Mpc/h, p = a² dx/dt / H0]."""
        return self.combine(cosmo.G1(a), cosmo.G2(a))

    def acceleration(self, cosmo: Cosmology, a: float):
        """F_LPT(a) = 3/2 Ω_m [D1 Ψ1 + (D2 − D1²) Ψ2], the force that moves particles on LPT."""
        d1, d2 = cosmo.D1(a), cosmo.D2(a)
        return self.combine(d1, d2 - d1 * d1, scale=1.5 * cosmo.Omega_m)


@numba.njit(parallel=True, cache=True)
def _inverse_laplacian(src, out, kx, ky, kz):
    """out = src / (−k²) with k² = (kx² + ky²) + kz² [(h/Mpc)²], as numpy divides a complex
    array by a real one (times the reciprocal); the k = 0 mode is divided by −1 (its source is
    zero)."""
    for i in numba.prange(src.shape[0]):
        for j in range(src.shape[1]):
            kxy = kx[i] * kx[i] + ky[j] * ky[j]
            for k in range(src.shape[2]):
                s = 1.0 / -(kxy + kz[k] * kz[k]) if i or j or k else -1.0
                v = src[i, j, k]
                out[i, j, k] = complex(v.real * s, v.imag * s)


@numba.njit(parallel=True, cache=True)
def _scaled_modes(src, out, coef, fx, fy, fz):
    """out[i, j, k] = src[i, j, k] × coef fx[i] fy[j] fz[k] (separable Fourier factor)."""
    nx, ny, nz = src.shape
    for i in numba.prange(nx):
        for j in range(ny):
            cij = coef * (fx[i] * fy[j])
            for k in range(nz):
                out[i, j, k] = src[i, j, k] * (cij * fz[k])


@numba.njit(parallel=True, cache=True)
def _store_component(field, psi, c):
    """psi[..., c] = field (an (n, n, n) field into one component of (n, n, n, 3))."""
    for i in numba.prange(field.shape[0]):
        for j in range(field.shape[1]):
            for k in range(field.shape[2]):
                psi[i, j, k, c] = field[i, j, k]


@numba.njit(parallel=True, cache=True)
def _diagonal_source(h00, h11, h22, out):
    """out = h00 h11 + h00 h22 + h11 h22 (the diagonal part of the 2LPT source)."""
    for i in numba.prange(out.shape[0]):
        for j in range(out.shape[1]):
            for k in range(out.shape[2]):
                a, b, c = h00[i, j, k], h11[i, j, k], h22[i, j, k]
                out[i, j, k] = (a * b + a * c) + b * c


@numba.njit(parallel=True, cache=True)
def _subtract_square(out, h):
    """out −= h² (an off-diagonal term of the 2LPT source)."""
    for i in numba.prange(out.shape[0]):
        for j in range(out.shape[1]):
            for k in range(out.shape[2]):
                out[i, j, k] -= h[i, j, k] * h[i, j, k]


def lpt_fields(delta_k, box_size: float, n_mesh: int, order: int = 2,
               threads: int = 0) -> LPTFields:
    """1LPT and (order=2) 2LPT displacement fields from linear modes δ_k (rfft layout).

    threads: FFT threads (0 = all cores). One float64 FFT of the grid serves every transform;
    the 1/N³ of each inverse transform is folded into its Fourier-space factor.
    """
    n = delta_k.shape[0]
    if delta_k.shape != (n, n, n // 2 + 1):
        raise ValueError(f"delta_k has shape {delta_k.shape}; expected rfft layout "
                         f"{(n, n, n // 2 + 1)}")
    if order not in (1, 2):
        raise ValueError(f"LPT order must be 1 or 2, got {order}")
    fft = FFT(n, threads, dtype=np.float64)
    kx, ky, kz = (k.ravel() for k in wavenumbers(n, box_size))
    phi1 = np.empty_like(delta_k)
    _inverse_laplacian(delta_k, phi1, kx, ky, kz)  # ∇²φ1 = δ
    norm = 1.0 / n**3

    def to_real(modes, coef, *axes):
        """c2r of modes × coef Π k_axis, normalised, in fft.real (overwritten by the next
        call)."""
        factors = [np.ones_like(kx), np.ones_like(ky), np.ones_like(kz)]
        for a in axes:
            factors[a] = factors[a] * (kx, ky, kz)[a]
        _scaled_modes(modes, fft.modes, coef, *factors)
        fft.c2r()
        return fft.real

    psi1 = np.empty((n, n, n, 3))
    for i in range(3):
        _store_component(to_real(phi1, -1j * norm, i), psi1, i)
    if order == 1:
        psi2 = np.zeros_like(psi1)
    else:

        def hess(i, j):
            return to_real(phi1, complex(-norm), i, j)

        # source = Σ_{i>j} [φ1,ii φ1,jj − φ1,ij²], three diagonal fields held at most
        h00, h11 = hess(0, 0).copy(), hess(1, 1).copy()
        source = h00
        _diagonal_source(h00, h11, hess(2, 2), source)
        del h11
        for i, j in ((0, 1), (0, 2), (1, 2)):
            _subtract_square(source, hess(i, j))
        fft.real[...] = source
        del source, h00
        fft.r2c()
        phi2 = phi1  # φ1 is no longer needed
        _inverse_laplacian(fft.modes, phi2, kx, ky, kz)  # ∇²φ2 = source
        psi2 = np.empty_like(psi1)
        phi2[0, 0, 0] = 0.0
        nyq = n // 2  # odd derivatives of the Nyquist planes are not real: drop them
        phi2[nyq], phi2[:, nyq], phi2[:, :, nyq] = 0.0, 0.0, 0.0
        for i in range(3):
            _store_component(to_real(phi2, 1j * norm, i), psi2, i)
    return LPTFields(psi1=psi1.reshape(-1, 3), psi2=psi2.reshape(-1, 3), box_size=box_size,
                     n_mesh=n_mesh)
