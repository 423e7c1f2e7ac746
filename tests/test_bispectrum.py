"""Bispectrum estimator: Pylians agreement, analytic cases, shot noise, triangles, I/O."""

import numpy as np
import pytest

from cocasbi.cic import paint_cic
from cocasbi.stats.bispectrum import (
    Bispectrum,
    bispectrum,
    equilateral,
    from_angle,
    squeezed,
    triangle_bins,
)
from cocasbi.stats.metrics import bispectrum_sigma

L, N = 100.0, 32
KF = 2 * np.pi / L


def _clustered_particles(seed=1, n=20000):
    rng = np.random.default_rng(np.random.SeedSequence(seed))
    centres = rng.random((400, 3)) * L
    x = centres[rng.integers(0, 400, n)] + rng.normal(0.0, 3.0, (n, 3))
    return np.mod(x, L)


def _gaussian_field(n, box, seed, slope=-1.0):
    """Gaussian δ on an n³ mesh with P(k) ∝ k^slope (mean zero)."""
    rng = np.random.default_rng(np.random.SeedSequence(seed))
    white = np.fft.rfftn(rng.standard_normal((n, n, n)))
    q = np.fft.fftfreq(n, 1.0 / n)
    qz = np.arange(n // 2 + 1)
    k = np.sqrt(q[:, None, None] ** 2 + q[None, :, None] ** 2 + qz[None, None, :] ** 2)
    amp = np.where(k > 0, np.maximum(k, 1e-12) ** (slope / 2), 0.0)
    g = np.fft.irfftn(white * amp, s=(n, n, n), axes=(0, 1, 2))
    return g / g.std()


def test_matches_pylians_on_a_mesh_and_with_cic_compensation(reference):
    pkl = reference("Pk_library")
    x = _clustered_particles()
    delta = paint_cic(x, N, L)
    k1, k2 = 4 * KF, 6 * KF
    theta = np.array([0.3, 1.0, 2.0, 2.8])
    ref = pkl.Bk(delta, L, k1, k2, theta, "None", 1)
    ours = bispectrum(delta, L, from_angle(k1, k2, theta), threads=1)
    np.testing.assert_allclose(ours.bispectrum, ref.B, rtol=1e-5)
    np.testing.assert_allclose(ours.reduced, ref.Q, rtol=1e-5)
    np.testing.assert_allclose(ours.power3, ref.Pk[2:], rtol=1e-5)
    ref = pkl.Bk(delta, L, k1, k2, theta, "CIC", 1)
    ours = bispectrum(x, L, from_angle(k1, k2, theta), n_mesh=N, threads=1,
                      subtract_shot_noise=False)
    np.testing.assert_allclose(ours.bispectrum, ref.B, rtol=1e-5)
    np.testing.assert_allclose(ours.reduced, ref.Q, rtol=1e-5)


def test_gaussian_field_has_zero_bispectrum_within_noise():
    g = _gaussian_field(N, L, seed=3)
    tri = np.concatenate([equilateral([4 * KF, 8 * KF]), squeezed(8 * KF, 2 * KF),
                          from_angle(5 * KF, 7 * KF, 1.5)])
    b = bispectrum(g, L, tri, threads=1)
    pull = b.bispectrum / bispectrum_sigma(b)
    assert np.all(np.abs(pull) < 4), pull


def test_quadratic_field_has_the_tree_level_reduced_bispectrum():
    """δ = g + f (g² − <g²>) with g Gaussian: B = 2f (P1P2 + P1P3 + P2P3) at tree level, so
    Q = 2f for every triangle. The Gaussian part's own (noise) bispectrum is removed by
    measuring g alone with the same phases; the rest scatters by ~15 % per triangle, so the
    mean over all 49 triangles of 2 k_f shells between 3 and 15 k_f is tested."""
    f = 0.05
    g = _gaussian_field(48, L, seed=5)
    delta = g + f * (g**2 - np.mean(g**2))
    tri = triangle_bins(3 * KF, 15 * KF, 2 * KF)
    b = bispectrum(delta, L, tri, threads=1)
    b0 = bispectrum(g, L, tri, threads=1)
    q = (b.bispectrum - b0.bispectrum) / (b.power1 * b.power2 + b.power1 * b.power3
                                          + b.power2 * b.power3)
    assert len(tri) == 49
    assert np.mean(q) == pytest.approx(2 * f, rel=0.1)
    assert np.median(q) == pytest.approx(2 * f, rel=0.1)


def test_poisson_particles_have_zero_bispectrum_after_shot_noise_subtraction():
    """Uniform random particles: B_raw = 1/n̄² (true P = B = 0). Few particles and many
    triangles (k ≈ 10-14 k_f on a 64³ mesh, where the CIC compensation is accurate) make the
    Poisson term stand well above its own scatter."""
    rng = np.random.default_rng(np.random.SeedSequence(7))
    x = rng.random((3000, 3)) * L
    tri = np.concatenate([equilateral([10 * KF, 12 * KF, 14 * KF]),
                          from_angle(10 * KF, 12 * KF, [1.0, 2.0])])
    raw = bispectrum(x, L, tri, n_mesh=64, threads=1, subtract_shot_noise=False)
    sub = bispectrum(x, L, tri, n_mesh=64, threads=1)
    nbar = len(x) / L**3
    assert np.mean(raw.bispectrum) * nbar**2 == pytest.approx(1.0, abs=0.15)
    assert abs(np.mean(sub.bispectrum)) * nbar**2 < 0.15
    np.testing.assert_allclose(sub.shot_noise, raw.bispectrum - sub.bispectrum)
    np.testing.assert_allclose(sub.power1, raw.power1 - 1 / nbar)
    assert sub.attrs["shot_noise_subtracted"] and sub.attrs["n_bar"] == pytest.approx(nbar)


def test_triangle_builders():
    np.testing.assert_allclose(from_angle(1.0, 1.0, 2 * np.pi / 3), [[1.0, 1.0, 1.0]])
    np.testing.assert_allclose(from_angle(1.0, 2.0, 0.0), [[1.0, 2.0, 3.0]])
    np.testing.assert_allclose(squeezed(0.5, [0.1, 0.2]), [[0.5, 0.5, 0.1], [0.5, 0.5, 0.2]])
    tri = triangle_bins(0.0, 0.4, 0.1)
    assert np.all(tri[:, 0] >= tri[:, 1]) and np.all(tri[:, 1] >= tri[:, 2])
    assert np.all(tri[:, 0] <= tri[:, 1] + tri[:, 2] + 1e-12)
    assert len(tri) == len({tuple(t) for t in tri}) == 13
    with pytest.raises(ValueError, match="k_long < k_short"):
        squeezed(0.1, 0.2)
    with pytest.raises(ValueError, match="positive"):
        equilateral(-1.0)


def test_bad_input_and_unclosed_triangles():
    g = _gaussian_field(16, L, seed=2)
    with pytest.raises(ValueError, match=r"\(n, 3\)"):
        bispectrum(g, L, [[0.1, 0.2]])
    with pytest.raises(ValueError, match="largest wavenumber"):
        bispectrum(g, L, [[5.0, 5.0, 5.0]])
    b = bispectrum(g, L, [[2 * KF, 2 * KF, 7 * KF]], threads=1)  # cannot close
    assert b.n_triangles[0] == 0 and np.isnan(b.bispectrum[0])


def test_round_trip(tmp_path):
    g = _gaussian_field(16, L, seed=2)
    b = bispectrum(g, L, equilateral([2 * KF, 3 * KF]), threads=1)
    back = Bispectrum.load(b.save(tmp_path / "bk.h5"))
    np.testing.assert_array_equal(back.bispectrum, b.bispectrum)
    np.testing.assert_array_equal(back.triangles, b.triangles)
    assert back.attrs == b.attrs and back.dk == b.dk


def test_forward_model_bk_summary_and_unchanged_pk_block():
    from cocasbi.config import load_config
    from cocasbi.forward import ForwardModel

    cfg = load_config("tiny").replace(simulation={"n_steps": 3, "threads": 1})
    both = ForwardModel(cfg, summaries=("log_pk", "bk"))
    pk_only = ForwardModel(cfg)
    res = both.simulate([0.3, 0.8], 1)
    x = both.summarize(res.final.positions)
    n_pk = len(pk_only.names)
    assert len(both.triangles) == 13 and x.shape == (n_pk + 13,) == (len(both.names),)
    assert both.names[n_pk].startswith("bk[k=0.2454,0.2454,0.2454]")
    np.testing.assert_array_equal(x[:n_pk], pk_only.summarize(res.final.positions))
    direct = bispectrum(res.final.positions, 64.0, both.triangles, n_mesh=64,
                        dk=both.bk_bins[2], threads=1)
    np.testing.assert_allclose(x[n_pk:], direct.bispectrum, rtol=1e-6)
    assert np.all(x[n_pk:n_pk + 4] > 0)  # gravity makes the large-scale bispectrum positive


def test_bit_identical_for_any_thread_count():
    import numba

    g = _gaussian_field(32, L, seed=9)
    tri = equilateral([3 * KF, 5 * KF])
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = bispectrum(g, L, tri, threads=1).bispectrum
        numba.set_num_threads(before)
        many = bispectrum(g, L, tri, threads=1).bispectrum
    finally:
        numba.set_num_threads(before)
    np.testing.assert_array_equal(one, many)
