"""Initial conditions: seeded Gaussian linear fields and 1LPT/2LPT displacements and momenta.

Conventions (docs/physics.md): δ_L is the linear density at a = 1 on the N_p³ particle grid;
Ψ1 = −∇φ1 with ∇²φ1 = δ_L, Ψ2 = ∇φ2 with ∇²φ2 = Σ_{i>j} [φ1,ii φ1,jj − φ1,ij²], and

    x(a) = q + D1(a) Ψ1 + D2(a) Ψ2,   p(a) = a³ E (D1' Ψ1 + D2' Ψ2),
    F_LPT(a) = 3/2 Ω_m [D1 Ψ1 + (D2 − D1²) Ψ2].

Fourier convention: δ_k = Σ_x δ(x) e^{−ik·x} (unnormalised), P(k) = V/N⁶ ⟨|δ_k|²⟩.
Fields are float64 (they are computed once per simulation).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cocasbi.cosmology import Cosmology
from cocasbi.fft import wavenumbers
from cocasbi.seeds import as_seed_sequence


def linear_field_modes(n: int, box_size: float, cosmo: Cosmology, seed,
                       fixed_amplitude: bool = False, paired: bool = False):
    """Fourier modes δ_k (complex128, rfft layout) of the linear density at a = 1.

    n: grid cells per side; box_size [Mpc/h]; seed: int or numpy SeedSequence. White noise is
    drawn in real space (so the field is real for any seed), then coloured by √P(k). The k = 0
    mode and the Nyquist planes are zeroed. ``fixed_amplitude`` sets |δ_k|² = ⟨|δ_k|²⟩ and
    ``paired`` flips the sign of every mode (Angulo & Pontzen 2016).
    """
    rng = np.random.default_rng(as_seed_sequence(seed))
    white = rng.standard_normal((n, n, n))
    modes = np.fft.rfftn(white)
    if fixed_amplitude:
        amp = np.abs(modes)
        modes = np.where(amp > 0, modes / np.where(amp > 0, amp, 1.0), 0.0) * np.sqrt(n**3)
    kx, ky, kz = wavenumbers(n, box_size)
    k = np.sqrt(kx**2 + ky**2 + kz**2)
    modes *= np.sqrt(cosmo.linear_power(k) * n**3 / box_size**3)
    nyq = n // 2
    modes[nyq, :, :] = 0.0
    modes[:, nyq, :] = 0.0
    modes[:, :, nyq] = 0.0
    modes[0, 0, 0] = 0.0
    return -modes if paired else modes


def lagrangian_grid(n_particles: int, box_size: float, n_mesh: int):
    """Lattice positions q [Mpc/h], (N³, 3) float64, half a mesh cell off the mesh nodes."""
    spacing = box_size / n_particles
    axis = np.arange(n_particles) * spacing + 0.5 * box_size / n_mesh
    q = np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), axis=-1)
    return q.reshape(-1, 3)


@dataclass(frozen=True)
class LPTFields:
    """Lagrangian displacement fields on the particle lattice, (N³, 3) float64 [Mpc/h].

    psi1 and psi2 are the a = 1 fields (multiply by D1(a), D2(a)); q is the lattice.
    """

    q: np.ndarray
    psi1: np.ndarray
    psi2: np.ndarray

    def displacement(self, cosmo: Cosmology, a: float):
        """Ψ_LPT(a) = D1 Ψ1 + D2 Ψ2 [Mpc/h]."""
        return cosmo.D1(a) * self.psi1 + cosmo.D2(a) * self.psi2

    def displacement_change(self, cosmo: Cosmology, a0: float, a1: float):
        """Ψ_LPT(a1) − Ψ_LPT(a0) = ΔD1 Ψ1 + ΔD2 Ψ2 [Mpc/h] (one pass over the fields)."""
        return (cosmo.D1(a1) - cosmo.D1(a0)) * self.psi1 + (cosmo.D2(a1) - cosmo.D2(a0)) * self.psi2

    def positions(self, cosmo: Cosmology, a: float, box_size: float):
        """x = q + Ψ_LPT(a), wrapped into [0, L) [Mpc/h]."""
        return np.mod(self.q + self.displacement(cosmo, a), box_size)

    def momenta(self, cosmo: Cosmology, a: float):
        """p_LPT(a) = a³E (D1' Ψ1 + D2' Ψ2) = G1 Ψ1 + G2 Ψ2 [Mpc/h, p = a² dx/dt / H0]."""
        return cosmo.G1(a) * self.psi1 + cosmo.G2(a) * self.psi2

    def acceleration(self, cosmo: Cosmology, a: float):
        """F_LPT(a) = 3/2 Ω_m [D1 Ψ1 + (D2 − D1²) Ψ2], the force that moves particles on LPT."""
        d1, d2 = cosmo.D1(a), cosmo.D2(a)
        return 1.5 * cosmo.Omega_m * (d1 * self.psi1 + (d2 - d1 * d1) * self.psi2)


def lpt_fields(delta_k, box_size: float, n_mesh: int, order: int = 2) -> LPTFields:
    """1LPT and (order=2) 2LPT displacement fields from linear modes δ_k (rfft layout)."""
    n = delta_k.shape[0]
    kx, ky, kz = wavenumbers(n, box_size)
    k2 = kx**2 + ky**2 + kz**2
    k2[0, 0, 0] = 1.0
    phi1 = -delta_k / k2  # ∇²φ1 = δ
    kvec = (kx, ky, kz)

    def to_real(modes):
        return np.fft.irfftn(modes, s=(n, n, n), axes=(0, 1, 2))

    psi1 = np.stack([to_real(-1j * kvec[i] * phi1) for i in range(3)], axis=-1)
    if order == 1:
        psi2 = np.zeros_like(psi1)
    else:
        hess = {(i, j): to_real(-kvec[i] * kvec[j] * phi1) for i in range(3) for j in range(i, 3)}
        source = (
            hess[0, 0] * hess[1, 1] + hess[0, 0] * hess[2, 2] + hess[1, 1] * hess[2, 2]
            - hess[0, 1] ** 2 - hess[0, 2] ** 2 - hess[1, 2] ** 2
        )
        phi2 = -np.fft.rfftn(source) / k2
        phi2[0, 0, 0] = 0.0
        nyq = n // 2  # odd derivatives of the Nyquist planes are not real: drop them
        phi2[nyq], phi2[:, nyq], phi2[:, :, nyq] = 0.0, 0.0, 0.0
        psi2 = np.stack([to_real(1j * kvec[i] * phi2) for i in range(3)], axis=-1)
    q = lagrangian_grid(n, box_size, n_mesh)
    return LPTFields(q=q, psi1=psi1.reshape(-1, 3), psi2=psi2.reshape(-1, 3))
