"""Background and growth against analytic limits and independent codes."""

import numpy as np
import pytest
from scipy.integrate import quad

from cocasbi.cosmology import Cosmology


def test_einstein_de_sitter_growth_is_exact():
    eds = Cosmology(Omega_m=1.0, Omega_b=0.05)
    a = np.array([0.01, 0.05, 0.1, 0.5, 1.0, 2.0])
    d1, g1, d2, g2 = eds.growth_raw(a)
    np.testing.assert_allclose(d1, a, rtol=1e-12)
    np.testing.assert_allclose(d2, -3.0 / 7.0 * a**2, rtol=1e-12)
    np.testing.assert_allclose(g1, a**1.5, rtol=1e-12)  # a³ E dD1/da with E = a^-3/2


@pytest.mark.parametrize("Om", [0.1, 0.31, 0.6])
def test_lcdm_growth_matches_heath_integral(Om):
    c = Cosmology(Omega_m=Om, Omega_b=0.04)

    def heath(a):
        integral = quad(lambda x: 1.0 / (x * c.E(x)) ** 3, 0, a, epsabs=0, epsrel=1e-13)[0]
        return 2.5 * Om * c.E(a) * integral

    for a in (0.05, 0.2, 0.5, 0.8, 1.0, 1.5):
        assert c.D1(a) == pytest.approx(heath(a) / heath(1.0), rel=1e-8)


def test_growth_normalisation_and_second_order_ratio():
    c = Cosmology()
    assert c.D1(1.0) == pytest.approx(1.0, abs=1e-14)
    assert c.growth_raw(1.0)[0] == pytest.approx(0.7849, abs=2e-4)  # independent prototype: ≈ 0.785
    assert c.D2(1.0) / (-3 / 7) == pytest.approx(1.008, abs=1e-3)  # independent prototype: ≈ 1.008
    early = 1e-3
    assert c.D2(early) / (-3 / 7 * c.D1(early) ** 2) == pytest.approx(1.0, abs=1e-6)


def test_growth_derivatives_match_finite_differences():
    c = Cosmology()
    for a in (0.07, 0.3, 1.0):
        h = 1e-5 * a
        assert c.dD1da(a) == pytest.approx((c.D1(a + h) - c.D1(a - h)) / (2 * h), rel=1e-8)
        assert c.dD2da(a) == pytest.approx((c.D2(a + h) - c.D2(a - h)) / (2 * h), rel=1e-8)
        assert c.dG1da(a) == pytest.approx((c.G1(a + h) - c.G1(a - h)) / (2 * h), rel=1e-8)


def test_kdk_factors_are_the_defining_integrals():
    c = Cosmology(Omega_m=1.0, Omega_b=0.05)  # EdS: ∫ a^-1/2 da and ∫ a^-3/2 da
    a0, a1 = 0.2, 0.7
    assert c.kick_factor(a0, a1) == pytest.approx(2 * (a1**0.5 - a0**0.5), rel=1e-12)
    assert c.drift_factor(a0, a1) == pytest.approx(2 * (a0**-0.5 - a1**-0.5), rel=1e-12)


def test_fastpm_factors_reduce_to_exact_linear_motion():
    # p = G Ψ1 drifts x by ΔD1 Ψ1 exactly; F = a²E G' Ψ1 kicks p by ΔG Ψ1 exactly.
    c = Cosmology()
    a0, a1, ac = 0.3, 0.5, 0.4
    assert c.G1(ac) * c.fastpm_drift_factor(a0, a1, ac) == pytest.approx(c.D1(a1) - c.D1(a0))
    force = ac**2 * c.E(ac) * c.dG1da(ac)
    assert force * c.fastpm_kick_factor(a0, a1, ac) == pytest.approx(c.G1(a1) - c.G1(a0))


def test_sigma8_normalisation_and_linear_scaling():
    c = Cosmology(sigma8=0.7)
    assert c.sigma_r(8.0) == pytest.approx(0.7, rel=1e-10)
    k = np.array([0.01, 0.1, 1.0])
    np.testing.assert_allclose(c.linear_power(k, a=0.5), c.linear_power(k) * c.D1(0.5) ** 2)
    np.testing.assert_allclose(c.replace(sigma8=1.4).linear_power(k), 4 * c.linear_power(k))


def test_eisenstein_hu_against_colossus(reference):
    colossus = reference("colossus.cosmology.power_spectrum")
    c = Cosmology(Omega_m=0.31, Omega_b=0.049, h=0.677)
    k = np.logspace(-3, 1.3, 40)
    ref = colossus.modelEisenstein98(k, c.h, c.Omega_m, c.Omega_b, 2.7255)
    np.testing.assert_allclose(c.transfer_function(k), ref, rtol=1e-10)
    ref_nw = colossus.modelEisenstein98ZeroBaryon(k, c.h, c.Omega_m, c.Omega_b, 2.7255)
    nw = c.replace(transfer="eisenstein_hu_nowiggle")
    np.testing.assert_allclose(nw.transfer_function(k), ref_nw, rtol=1e-10)


@pytest.mark.parametrize(
    "field, value",
    [("Omega_m", -0.1), ("Omega_m", 0.0), ("sigma8", 0.0), ("sigma8", -1.0), ("h", np.nan)],
)
def test_invalid_cosmology_names_the_parameter(field, value):
    with pytest.raises(ValueError, match=field):
        Cosmology(**{field: value})


def test_camb_shape_agrees_with_eisenstein_hu(reference):
    reference("camb")
    k = np.logspace(-3, 0.5, 30)
    ratio = Cosmology(transfer="camb").linear_power(k) / Cosmology().linear_power(k)
    # EH98 is a fit good to a few per cent (BAO phase, radiation); both are σ8-normalised
    np.testing.assert_allclose(ratio, 1.0, atol=0.05)
    assert Cosmology(transfer="camb").sigma_r(8.0) == pytest.approx(0.81, rel=1e-8)


@pytest.mark.parametrize("Om", [0.1, 0.31, 0.9])
def test_growth_table_matches_an_adaptive_high_order_solution(Om):
    """The fixed-step RK4 table with Hermite interpolation (cocasbi.growth) agrees with scipy's
    DOP853 at its tightest tolerance to 2e-12 relative, at grid points and between them (the
    DOP853 solution at rtol 1e-12 the table replaced was off by up to 4e-11)."""
    from scipy.integrate import solve_ivp

    c = Cosmology(Omega_m=Om, Omega_b=0.04)

    def rhs(s, y):
        a = np.exp(s)
        e = np.sqrt(Om / a**3 + 1.0 - Om)
        return [y[1] / (a * a * e), 1.5 * Om * y[0] / (a * e), y[3] / (a * a * e),
                1.5 * Om * (y[2] - y[0] ** 2) / (a * e)]

    a0, a1 = 1e-3, 4.0
    e0 = np.sqrt(Om / a0**3 + 1.0 - Om)
    y0 = [a0, a0**3 * e0, -3.0 / 7.0 * a0**2, a0**3 * e0 * (-6.0 / 7.0 * a0)]
    s = np.log(np.geomspace(a0, a1, 3001))
    ref = solve_ivp(rhs, (s[0], s[-1]), y0, method="DOP853", rtol=2.3e-14, atol=1e-30,
                    t_eval=s).y
    np.testing.assert_allclose(c.growth_raw(np.exp(s)), ref, rtol=2e-12, atol=0)
    assert c.growth_raw(0.5).shape == (4,)
