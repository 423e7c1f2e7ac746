"""Paired field metrics: periodic displacements, P(k) ratio, 1 − r², bispectrum ratio, and
their cosmic-variance units."""

import numpy as np
import pytest

from cocasbi.stats.bispectrum import bispectrum, equilateral, from_angle
from cocasbi.stats.metrics import (
    bispectrum_ratio,
    bispectrum_sigma,
    cosmic_variance,
    paired_metrics,
    power_metrics,
    rms_displacement,
    rms_velocity,
)
from cocasbi.stats.power import cross_power

L = 100.0
KF = 2 * np.pi / L


def _rng(seed):
    return np.random.default_rng(np.random.SeedSequence(seed))


def _gaussian(n, seed):
    return _rng(seed).standard_normal((n, n, n)).astype(np.float32)


def test_rms_displacement_uses_the_minimum_image():
    x = np.array([[0.1, 5.0, 5.0], [50.0, 50.0, 50.0]])
    x_ref = np.array([[L - 0.1, 5.0, 5.0], [50.0, 50.0, 50.3 + 2 * L]])  # unwrapped too
    assert rms_displacement(x, x_ref, L) == pytest.approx(np.sqrt((0.2**2 + 0.3**2) / 2))
    assert rms_velocity([[1.0, 0, 0]], [[0.0, 0, 4.0]]) == pytest.approx(np.sqrt(17.0))
    with pytest.raises(ValueError, match="same shape"):
        rms_displacement(x, x_ref[:1], L)


def test_power_metrics_of_scaled_and_noisy_fields():
    b = _gaussian(32, 1)
    m = power_metrics(cross_power(1.1 * b, b, L))
    np.testing.assert_allclose(m["pk_ratio"], 0.21, rtol=1e-5)
    np.testing.assert_allclose(m["one_minus_r2"], 0.0, atol=1e-5)
    np.testing.assert_allclose(m["sigma_cv"], np.sqrt(2.0 / m["n_modes"]))
    np.testing.assert_allclose(m["pk_ratio_cv"], 0.21 / m["sigma_cv"], rtol=1e-5)
    # independent noise of a quarter of the power: r² = P_b / (P_b + P_n) = 0.8
    noisy = b + 0.5 * _gaussian(32, 2)
    m = power_metrics(cross_power(noisy, b, L))
    sel = m["n_modes"] > 2000
    np.testing.assert_allclose(m["one_minus_r2"][sel], 0.2, atol=0.03)
    np.testing.assert_allclose(m["one_minus_r2_cv"], m["one_minus_r2"] / m["sigma_cv"])
    assert np.isnan(cosmic_variance([0, 2])[0]) and cosmic_variance([0, 2])[1] == 1.0


def test_bispectrum_ratio_of_a_scaled_field():
    g = _gaussian(32, 3)
    delta = g + 0.3 * (g**2 - 1)
    tri = equilateral([4 * KF, 6 * KF])
    b_ref = bispectrum(delta, L, tri, threads=1)
    b = bispectrum(1.1 * delta, L, tri, threads=1)
    m = bispectrum_ratio(b, b_ref)
    np.testing.assert_allclose(m["bk_ratio"], 1.1**3 - 1, rtol=1e-5)
    np.testing.assert_allclose(m["bk_ratio_cv"] * bispectrum_sigma(b_ref)
                               / np.abs(b_ref.bispectrum), m["bk_ratio"])
    with pytest.raises(ValueError, match="different triangles"):
        bispectrum_ratio(b, bispectrum(delta, L, equilateral([5 * KF, 6 * KF]), threads=1))


def test_bispectrum_sigma_matches_the_scatter_of_gaussian_fields():
    """σ_B = √(s V P1 P2 P3 / N_triangles) against 40 Gaussian realisations (±25 %)."""
    tri = np.concatenate([equilateral([5 * KF]), from_angle(4 * KF, 6 * KF, 1.2)])
    draws, sigmas = [], []
    for seed in range(40):
        b = bispectrum(_gaussian(24, 100 + seed), L, tri, threads=1)
        draws.append(b.bispectrum)
        sigmas.append(bispectrum_sigma(b))
    np.testing.assert_allclose(np.std(draws, axis=0), np.mean(sigmas, axis=0), rtol=0.25)


def test_paired_metrics_of_particles():
    rng = _rng(4)
    x_ref = rng.random((8000, 3)) * L
    x = x_ref + rng.normal(0.0, 0.5, x_ref.shape)
    tri = equilateral([3 * KF])
    m = paired_metrics(x, x_ref, L, 32, v=np.zeros_like(x), v_ref=np.ones_like(x),
                       kmax=0.5, triangles=tri)
    assert m["rms_dx"] == pytest.approx(0.5 * np.sqrt(3), rel=0.02)
    assert m["rms_dv"] == pytest.approx(np.sqrt(3))
    assert m["k"].max() <= 0.5 and m["bk_ratio"].shape == (1,)
    same = paired_metrics(x_ref, x_ref, L, 32, kmax=0.5)
    assert same["rms_dx"] == 0 and np.isnan(same["rms_dv"])
    np.testing.assert_allclose(same["pk_ratio"], 0.0, atol=1e-12)
    np.testing.assert_allclose(same["one_minus_r2"], 0.0, atol=1e-6)
