"""Power spectra: agreement with Pylians, known spectra within cosmic variance, mode counting."""

import numpy as np
import pytest
from scipy import stats

from cocasbi.cic import paint_cic
from cocasbi.stats import CrossPowerSpectrum, PowerSpectrum, cross_power, power_spectrum

L = 100.0  # box side [Mpc/h]
KF = 2 * np.pi / L
THREADS = 1  # small meshes: one thread avoids slow threaded FFTW planning on a busy machine


def _full_grid_k(n):
    """|k| / k_f of every wavevector of the full n³ FFT grid (brute force, no rfft layout)."""
    m = np.fft.fftfreq(n, 1.0 / n)
    mx, my, mz = np.meshgrid(m, m, m, indexing="ij")
    return np.sqrt(mx**2 + my**2 + mz**2)


def _bin_average(kmod, values, edges):
    """Full-grid counts and averages of ``values`` in [edges[i], edges[i+1]) (brute force)."""
    counts, means = [], []
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        sel = (kmod >= lo) & (kmod < hi)
        counts.append(sel.sum())
        means.append(values[sel].mean() if sel.any() else np.nan)
    return np.array(counts), np.array(means)


def _gaussian_field(n, power, rng):
    """Real Gaussian random field on an n³ mesh with P(k) = power(|k|) [(Mpc/h)^3] (numpy FFT)."""
    modes = np.fft.rfftn(rng.standard_normal((n, n, n)))
    kmod = _full_grid_k(n)[:, :, : n // 2 + 1] * KF
    amp = np.zeros_like(kmod)
    amp[kmod > 0] = np.sqrt(power(kmod[kmod > 0]) * n**3 / L**3)
    return np.fft.irfftn(modes * amp, s=(n, n, n), axes=(0, 1, 2))


def _clustered_particles(rng, n_part=20000):
    """Uniform background plus a few Gaussian clumps: a field with structure at every scale."""
    pos = rng.uniform(0, L, (n_part, 3))
    centres = rng.uniform(0, L, (10, 3))
    clump = pos[: n_part // 2]
    clump[:] = centres[rng.integers(0, 10, len(clump))] + rng.normal(0, 4.0, clump.shape)
    return pos  # clumps extend past the box edges: painting wraps them


# ------------------------------------------------------------------ (a) Pylians
@pytest.mark.parametrize("kind", ["particles", "mesh"])
def test_agrees_with_pylians(kind, reference):
    """Same field, Pylians' binning (bin i holds i k_f <= |k| < (i+1) k_f): P, k and mode counts
    agree. Pylians counts each ±k pair once, we count both members: N_ours = 2 N_Pylians below
    the Nyquist frequency (where there is no self-conjugate mode)."""
    PKL = reference("Pk_library")
    n = 32
    pos = _clustered_particles(np.random.default_rng(1))
    delta = paint_cic(pos, n, L)
    if kind == "particles":  # we paint and deconvolve CIC; Pylians deconvolves our mesh
        ours = power_spectrum(pos, L, n, kmin=KF, dk=KF, threads=THREADS)
        ref = PKL.Pk(delta.copy(), L, 0, "CIC", 1, False)
    else:
        ours = power_spectrum(delta, L, kmin=KF, dk=KF, threads=THREADS)
        ref = PKL.Pk(delta.copy(), L, 0, "None", 1, False)
    m = len(ours.k)
    assert m == n // 2 - 1
    np.testing.assert_allclose(ours.k, ref.k3D[:m], rtol=1e-10)
    np.testing.assert_allclose(ours.power, ref.Pk[:m, 0], rtol=1e-5)
    np.testing.assert_array_equal(ours.n_modes, 2 * ref.Nmodes3D[:m])
    assert ours.shot_noise == (L**3 / len(pos) if kind == "particles" else 0.0)


# ------------------------------------------------------------------ (b) known spectrum
def test_gaussian_field_recovers_input_power_within_cosmic_variance():
    """P(k) = A (k/k0)^-2: χ² of 8 realisations against the bin-averaged input with
    σ = P √(2/N_modes) is consistent with its degrees of freedom (a wrong normalisation, mode
    count or error bar moves it far outside)."""
    n = 32
    power = lambda k: 2.0e3 * (k / 0.1) ** -2  # noqa: E731
    rng = np.random.default_rng(2)
    kgrid = _full_grid_k(n)
    pgrid = np.zeros_like(kgrid)
    pgrid[kgrid > 0] = power(kgrid[kgrid > 0] * KF)
    chi2, dof = 0.0, 0
    for _ in range(8):
        ps = power_spectrum(_gaussian_field(n, power, rng), L, threads=THREADS)
        counts, expected = _bin_average(kgrid, pgrid, ps.k_edges / KF)
        np.testing.assert_array_equal(ps.n_modes, counts)
        sigma = expected * np.sqrt(2.0 / counts)
        chi2 += np.sum(((ps.power - expected) / sigma) ** 2)
        dof += len(ps.k)
        np.testing.assert_allclose(ps.sigma(), ps.power * np.sqrt(2.0 / counts))
    p_value = stats.chi2.sf(chi2, dof)
    assert 1e-3 < p_value < 0.999, (chi2, dof)


def test_plane_wave_normalisation():
    """δ = A cos(3 k_f x): all the power sits in the |k| = 3 k_f bin, Σ_bin P N_modes = V A²/2,
    and with bins covering every k, Σ P N_modes = V <δ²> (Parseval)."""
    n = 16
    x = np.arange(n) * L / n
    amp = 0.7
    delta = np.broadcast_to(amp * np.cos(3 * KF * x)[:, None, None], (n, n, n)).copy()
    ps = power_spectrum(delta, L, threads=THREADS)
    total = np.nansum(ps.power * ps.n_modes)
    np.testing.assert_allclose(total, L**3 * amp**2 / 2, rtol=1e-6)
    hot = np.argmax(np.nan_to_num(ps.power))
    assert ps.k_edges[hot] <= 3 * KF < ps.k_edges[hot + 1]
    np.testing.assert_allclose(ps.power[hot] * ps.n_modes[hot], total, rtol=1e-6)

    field = np.random.default_rng(3).standard_normal((n, n, n))
    field -= field.mean()
    all_k = power_spectrum(field, L, kmin=0.0, kmax=np.sqrt(3) * np.pi * n / L + KF,
                           threads=THREADS)
    np.testing.assert_allclose(np.nansum(all_k.power * all_k.n_modes),
                               L**3 * np.mean(field**2), rtol=1e-5)


# ------------------------------------------------------------------ (c) shot noise
def test_poisson_particles_have_shot_noise_power():
    """Uniform random particles: ⟨P⟩ = V/N × aliasing sum of the CIC window / W² (Jing 2005),
    which → V/N at low k. χ² over 4 realisations against that, and the low-k average alone
    agrees with the reported V/N."""
    n, n_part = 32, 32**3
    rng = np.random.default_rng(4)
    kgrid = _full_grid_k(n)
    s = [np.sin(np.pi * m / n) ** 2 for m in np.meshgrid(*[np.fft.fftfreq(n, 1.0 / n)] * 3,
                                                           indexing="ij")]
    w2 = [np.sinc(m / n) ** 4 for m in np.meshgrid(*[np.fft.fftfreq(n, 1.0 / n)] * 3,
                                                    indexing="ij")]
    aliased = np.prod([1 - 2.0 / 3.0 * si for si in s], axis=0) / np.prod(w2, axis=0)
    chi2, dof, low = 0.0, 0, []
    for _ in range(4):
        ps = power_spectrum(rng.uniform(0, L, (n_part, 3)), L, n, threads=THREADS)
        assert ps.shot_noise == pytest.approx(L**3 / n_part, rel=1e-12)
        _, shape = _bin_average(kgrid, aliased, ps.k_edges / KF)
        expected = ps.shot_noise * shape
        chi2 += np.sum(((ps.power - expected) / (expected * np.sqrt(2.0 / ps.n_modes))) ** 2)
        dof += len(ps.k)
        sel = ps.k < 0.25 * np.pi * n / L
        low.append((ps.power[sel] * ps.n_modes[sel]).sum() / ps.n_modes[sel].sum())
    assert 1e-3 < stats.chi2.sf(chi2, dof) < 0.999, (chi2, dof)
    n_low = 4 * ps.n_modes[sel].sum()
    assert abs(np.mean(low) / ps.shot_noise - 1) < 3 * np.sqrt(2.0 / n_low) + 0.01


# ------------------------------------------------------------------ (d) cross power
def test_cross_power_correlation_coefficient():
    """r = 1 for a field with itself; r ≈ 0 for independent fields (|r| < 3/√N_modes per bin);
    r = 1/√(1 + c²) for b = a + c × independent noise."""
    n = 32
    rng = np.random.default_rng(5)
    a, noise = rng.standard_normal((2, n, n, n))

    same = cross_power(a, a, L, threads=THREADS)
    np.testing.assert_allclose(same.r, 1.0, rtol=1e-12)
    auto = power_spectrum(a, L, threads=THREADS)
    np.testing.assert_array_equal(same.power_a, auto.power)
    np.testing.assert_array_equal(same.n_modes, auto.n_modes)

    indep = cross_power(a, noise, L, threads=THREADS)
    assert np.all(np.abs(indep.r) < 3 / np.sqrt(indep.n_modes))
    chi2 = np.sum(indep.r**2 * indep.n_modes)  # var(r) = 1/N_modes for independent fields
    assert 1e-3 < stats.chi2.sf(chi2, len(indep.r)) < 0.999

    c = 1.0
    part = cross_power(a, a + c * noise, L, threads=THREADS)
    r0 = 1 / np.sqrt(1 + c**2)
    sigma_r = (1 - r0**2) * np.sqrt(2.0 / part.n_modes)
    chi2 = np.sum(((part.r - r0) / sigma_r) ** 2)
    assert 1e-3 < stats.chi2.sf(chi2, len(part.r)) < 0.999, chi2


def test_cross_power_of_particles_with_themselves():
    pos = _clustered_particles(np.random.default_rng(6))
    cp = cross_power(pos, pos, L, 32, threads=THREADS)
    np.testing.assert_allclose(cp.r, 1.0, rtol=1e-12)
    assert cp.shot_noise_a == cp.shot_noise_b == pytest.approx(L**3 / len(pos))


# ------------------------------------------------------------------ (e) mode counting
@pytest.mark.parametrize("n", [8, 9])
@pytest.mark.parametrize("binning", [{}, {"kmin": 0.3 * KF, "dk": 0.65 * KF, "kmax": 0.5}])
def test_mode_counts_match_brute_force(n, binning):
    """Counts and mean |k| per bin equal a brute-force loop over every wavevector of the full
    n³ grid (even n has Nyquist planes, odd n has none); k = 0 is never counted; the number of
    independent modes is (N_modes + self-conjugate ones) / 2."""
    field = np.random.default_rng(7).standard_normal((n, n, n))
    ps = power_spectrum(field, L, **binning, threads=THREADS)
    kmod = _full_grid_k(n)
    kmin = binning.get("kmin", 0.5 * KF) / KF
    dk = binning.get("dk", KF) / KF
    kmax = binning.get("kmax", np.pi * n / L) / KF
    n_bins = int(np.floor((kmax - kmin) / dk + 1e-9))
    edges = kmin + dk * np.arange(n_bins + 1)
    counts, mean_k = _bin_average(kmod, kmod, edges)
    np.testing.assert_allclose(ps.k_edges / KF, edges, rtol=1e-12)
    np.testing.assert_array_equal(ps.n_modes, counts)
    np.testing.assert_allclose(ps.k / KF, mean_k, rtol=1e-12)
    in_range = (kmod > 0) & (kmod >= edges[0]) & (kmod < edges[-1])
    assert ps.n_modes.sum() == in_range.sum()
    m = np.fft.fftfreq(n, 1.0 / n)
    grid = np.stack(np.meshgrid(m, m, m, indexing="ij"), axis=-1).reshape(-1, 3)
    inside = grid[in_range.ravel()]
    pairs = {tuple(sorted([tuple(v), tuple(np.where(np.abs(-v) == n / 2, v, -v))]))
             for v in inside}
    self_conjugate = sum(1 for v in inside if np.all((v == 0) | (np.abs(v) == n / 2)))
    assert len(pairs) == (in_range.sum() + self_conjugate) // 2


# ------------------------------------------------------------------ results
def test_results_save_and_load(tmp_path):
    rng = np.random.default_rng(8)
    a, b = rng.standard_normal((2, 16, 16, 16))
    ps = power_spectrum(a, L, dk=2 * KF, threads=THREADS)
    ps.attrs["note"] = np.float32(1.5)
    back = PowerSpectrum.load(ps.save(tmp_path / "p.h5"))
    for name in ("k", "power", "n_modes", "k_edges"):
        np.testing.assert_array_equal(getattr(back, name), getattr(ps, name))
    assert (back.shot_noise, back.box_size, back.n_mesh) == (ps.shot_noise, L, 16)
    assert back.attrs["note"] == 1.5 and back.attrs["input"] == "mesh"
    cp = cross_power(a, b, L, threads=THREADS)
    cback = CrossPowerSpectrum.load(cp.save(tmp_path / "c.h5"))
    np.testing.assert_array_equal(cback.r, cp.r)
    with pytest.raises(ValueError, match="not a PowerSpectrum"):
        PowerSpectrum.load(tmp_path / "c.h5")


def test_rejects_bad_inputs():
    with pytest.raises(ValueError, match="n_mesh is required"):
        power_spectrum(np.zeros((10, 3)), L)
    with pytest.raises(ValueError, match="does not match"):
        power_spectrum(np.zeros((8, 8, 8)), L, n_mesh=16)
    with pytest.raises(ValueError, match="no complete bin"):
        power_spectrum(np.zeros((8, 8, 8)), L, kmin=1.0, kmax=1.01)
    with pytest.raises(ValueError, match="does not match"):
        cross_power(np.zeros((8, 8, 8)), np.zeros((10, 10, 10)), L)
