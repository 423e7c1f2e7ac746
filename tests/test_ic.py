"""Initial conditions: Gaussian field statistics and 2LPT against analytic solutions."""

import numpy as np
import pytest

from cocasbi.cosmology import Cosmology
from cocasbi.fft import wavenumbers
from cocasbi.ic import LPTFields, lagrangian_grid, linear_field_modes, lpt_fields

L, N = 100.0, 32


def _mode_power(modes, box, n):
    return np.abs(modes) ** 2 * box**3 / n**6


def test_linear_field_power_matches_input_within_cosmic_variance():
    from cocasbi.stats.power import power_spectrum

    c = Cosmology()
    n = 64
    chi2, dof = 0.0, 0
    for seed in (1, 2):
        delta = np.fft.irfftn(linear_field_modes(n, 256.0, c, seed), s=(n,) * 3, axes=(0, 1, 2))
        ps = power_spectrum(delta, 256.0, compensate=False)
        kx, ky, kz = wavenumbers(n, 256.0)
        sel = (ps.n_modes > 0) & (ps.k < 0.9 * np.pi * n / 256.0)
        expected = c.linear_power(ps.k[sel])
        sigma = expected * np.sqrt(2.0 / ps.n_modes[sel])
        chi2 += np.sum(((ps.power[sel] - expected) / sigma) ** 2)
        dof += sel.sum()
    # mean |k| of a bin vs P(mean k): curvature bias is far below cosmic variance here
    assert abs(chi2 - dof) < 4 * np.sqrt(2 * dof), (chi2, dof)


def test_fixed_amplitude_and_paired_fields():
    c = Cosmology()
    base = linear_field_modes(N, L, c, 7, fixed_amplitude=True)
    kx, ky, kz = wavenumbers(N, L)
    k = np.sqrt(kx**2 + ky**2 + kz**2)
    live = base != 0
    np.testing.assert_allclose(_mode_power(base, L, N)[live], c.linear_power(k[live]), rtol=1e-10)
    paired = linear_field_modes(N, L, c, 7, fixed_amplitude=True, paired=True)
    np.testing.assert_array_equal(paired, -base)


def test_nyquist_planes_and_mean_are_zero_and_seed_fixes_the_field():
    c = Cosmology()
    m = linear_field_modes(N, L, c, 3)
    assert m[0, 0, 0] == 0
    assert not m[N // 2].any() and not m[:, N // 2].any() and not m[:, :, N // 2].any()
    np.testing.assert_array_equal(m, linear_field_modes(N, L, c, 3))
    assert not np.array_equal(m, linear_field_modes(N, L, c, 4))


def _plane_wave_modes(n, box, waves):
    """δ(q) = Σ A cos(k·q) for integer wavevectors, as rfft modes."""
    q = np.arange(n) * box / n
    x, y, z = np.meshgrid(q, q, q, indexing="ij")
    delta = sum(amp * np.cos(2 * np.pi / box * (i * x + j * y + k * z)) for amp, (i, j, k) in waves)
    return np.fft.rfftn(delta), (x, y, z)


def test_first_order_displacement_of_a_plane_wave():
    amp, m = 0.3, 2
    modes, (x, _, _) = _plane_wave_modes(N, L, [(amp, (m, 0, 0))])
    f = lpt_fields(modes, L, 2 * N)
    kk = 2 * np.pi * m / L
    # ∇²φ1 = δ, Ψ1 = −∇φ1: Ψ1_x = −(A/k) sin(kx); 2LPT vanishes for a single plane wave
    np.testing.assert_allclose(f.psi1[:, 0], (-amp / kk * np.sin(kk * x)).ravel(), atol=1e-12)
    np.testing.assert_allclose(f.psi1[:, 1:], 0.0, atol=1e-12)
    np.testing.assert_allclose(f.psi2, 0.0, atol=1e-12)


def test_second_order_displacement_of_crossed_waves():
    a_amp, b_amp, m1, m2 = 0.2, 0.5, 1, 3
    modes, (x, y, _) = _plane_wave_modes(N, L, [(a_amp, (m1, 0, 0)), (b_amp, (0, m2, 0))])
    f = lpt_fields(modes, L, 2 * N)
    k1, k2 = 2 * np.pi * m1 / L, 2 * np.pi * m2 / L
    # φ1,xx = A cos k1x, φ1,yy = B cos k2y, φ1,xy = 0  =>  ∇²φ2 = AB cos k1x cos k2y
    phi2_amp = -a_amp * b_amp / (k1**2 + k2**2)
    psi2_x = -phi2_amp * k1 * np.sin(k1 * x) * np.cos(k2 * y)
    psi2_y = -phi2_amp * k2 * np.cos(k1 * x) * np.sin(k2 * y)
    np.testing.assert_allclose(f.psi2[:, 0], psi2_x.ravel(), atol=1e-12)
    np.testing.assert_allclose(f.psi2[:, 1], psi2_y.ravel(), atol=1e-12)
    np.testing.assert_allclose(f.psi2[:, 2], 0.0, atol=1e-12)


def test_lpt_force_is_the_second_derivative_of_the_trajectory():
    c = Cosmology()
    f = lpt_fields(linear_field_modes(16, 64.0, c, 5), 64.0, 32)
    a, h = 0.4, 1e-4
    # dp/da = F / (a² E) along the LPT trajectory (the growth equations)
    dpda = (f.momenta(c, a + h) - f.momenta(c, a - h)) / (2 * h)
    np.testing.assert_allclose(dpda * a**2 * c.E(a), f.acceleration(c, a), rtol=1e-6, atol=1e-9)
    # and dx/da = p / (a³ E)
    dxda = (f.displacement(c, a + h) - f.displacement(c, a - h)) / (2 * h)
    np.testing.assert_allclose(dxda * a**3 * c.E(a), f.momenta(c, a), rtol=1e-6, atol=1e-9)


def test_lattice_is_half_a_mesh_cell_off_the_nodes():
    q = lagrangian_grid(8, 80.0, 16)
    cell = 80.0 / 16
    np.testing.assert_allclose(np.mod(q / cell, 1.0), 0.5)
    assert len(np.unique(q[:, 0])) == 8


def test_lattice_is_computed_not_stored_with_the_same_bits():
    """LPTFields keeps no lattice (24 B per particle): q is lagrangian_grid, and a field on the
    lattice computed on the fly is array_equal to adding the stored lattice."""
    c = Cosmology()
    f = lpt_fields(linear_field_modes(N, L, c, 4), L, 3 * N)
    q = lagrangian_grid(N, L, 3 * N)
    np.testing.assert_array_equal(f.q, q)
    assert {"psi1", "psi2", "box_size", "n_mesh"} == set(vars(f))
    for a in (0.05, 0.7):
        np.testing.assert_array_equal(f.combine(c.D1(a), c.D2(a), lattice=True),
                                      f.combine(c.D1(a), c.D2(a), base=q))
    np.testing.assert_array_equal(f.positions(c, 1.0),
                                  np.mod(q + (c.D1(1.0) * f.psi1 + c.D2(1.0) * f.psi2), L))
    with pytest.raises(ValueError, match="not both"):
        f.combine(1.0, 1.0, base=q, lattice=True)
    with pytest.raises(ValueError, match="psi2 has shape"):
        LPTFields(f.psi1, f.psi2[:-1], L, 3 * N)


@pytest.mark.parametrize("order", [1, 2])
def test_lpt_displacement_divergence_is_minus_delta(order):
    c = Cosmology()
    modes = linear_field_modes(N, L, c, 11)
    f = lpt_fields(modes, L, 2 * N, order=order)
    kx, ky, kz = wavenumbers(N, L)
    psi1_k = [np.fft.rfftn(f.psi1[:, i].reshape((N,) * 3)) for i in range(3)]
    div = 1j * (kx * psi1_k[0] + ky * psi1_k[1] + kz * psi1_k[2])
    np.testing.assert_allclose(div, -modes, atol=1e-8 * np.abs(modes).max())


def test_numpy_fft_fallback_gives_the_same_fields(monkeypatch):
    """Without pyFFTW the initial conditions use numpy.fft: same fields to float64 round-off."""
    from cocasbi import fft

    c = Cosmology()
    modes = linear_field_modes(N, L, c, 9, threads=1)
    fields = lpt_fields(modes, L, 2 * N, threads=1)
    monkeypatch.setattr(fft, "HAVE_PYFFTW", False)
    modes_np = linear_field_modes(N, L, c, 9)
    np.testing.assert_allclose(modes_np, modes, rtol=0, atol=1e-12 * np.abs(modes).max())
    fields_np = lpt_fields(modes_np, L, 2 * N)
    for name in ("psi1", "psi2"):
        ref = getattr(fields, name)
        np.testing.assert_allclose(getattr(fields_np, name), ref, rtol=0,
                                   atol=1e-12 * np.abs(ref).max())
    np.testing.assert_array_equal(fields_np.q, fields.q)


def test_bad_lpt_input_is_refused():
    with pytest.raises(ValueError, match="rfft layout"):
        lpt_fields(np.zeros((8, 8, 8), dtype=complex), L, 16)
    with pytest.raises(ValueError, match="LPT order"):
        lpt_fields(np.zeros((8, 8, 5), dtype=complex), L, 16, order=3)
