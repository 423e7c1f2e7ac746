"""Flat ΛCDM background, linear growth (D1, D2), time-integration factors and linear P(k).

Conventions (see docs/physics.md): time variable is the scale factor a; E(a) = H(a)/H0 with
E² = Ω_m a⁻³ + Ω_Λ (radiation neglected). The growth factors solve

    d/da (a³ E dD1/da) = 3/2 Ω_m D1 / (a² E)
    d/da (a³ E dD2/da) = 3/2 Ω_m (D2 − D1²) / (a² E)

for the growing modes D1 → a, D2 → −3/7 a² at early times; both are then normalised so that
D1(a=1) = 1 (D2 by the same factor squared). All quantities are float64.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

T_CMB = 2.7255  # [K]
_A_EARLY = 1e-3  # start of the growth integration (pure matter domination there)
_A_LATE = 4.0  # growth tables cover a up to this value

#: The cosmological parameters of a :class:`Cosmology`, in this order: the only names a prior,
#: a forward model, a frame or a campaign may vary.
PARAMETERS = ("Omega_m", "Omega_b", "h", "n_s", "sigma8")

#: Open-closed range (low, high] in which each parameter is accepted (flat ΛCDM; σ8 above 3 or
#: n_s above 2 is far outside anything the growth and transfer models were checked for).
PARAMETER_RANGES = {"Omega_m": (0.0, 1.0), "Omega_b": (0.0, 1.0), "h": (0.0, 2.0),
                    "n_s": (0.0, 2.0), "sigma8": (0.0, 3.0)}


def check_parameter(name: str, value: float) -> float:
    """``value`` as a float if it is a finite number inside ``PARAMETER_RANGES[name]``."""
    if name not in PARAMETER_RANGES:
        raise ValueError(f"unknown cosmological parameter {name!r}; choose from {PARAMETERS}")
    low, high = PARAMETER_RANGES[name]
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"cosmology: {name}={value!r} is not a number") from None
    if not (np.isfinite(value) and low < value <= high):
        raise ValueError(f"cosmology: {name}={value} must be finite and in ({low:g}, {high:g}]")
    return value


@dataclass(frozen=True)
class Cosmology:
    """Flat ΛCDM cosmology.

    Omega_m: total matter density today; Omega_b: baryons; h: H0/(100 km/s/Mpc);
    n_s: primordial spectral index; sigma8: rms linear overdensity in top-hat spheres of
    8 [Mpc/h] at a = 1; transfer: linear transfer back-end (``eisenstein_hu`` built in,
    ``eisenstein_hu_nowiggle``, or ``camb`` / ``class`` when installed).
    """

    Omega_m: float = 0.31
    Omega_b: float = 0.049
    h: float = 0.677
    n_s: float = 0.9665
    sigma8: float = 0.81
    transfer: str = "eisenstein_hu"
    _cache: dict = field(default_factory=dict, repr=False, compare=False, hash=False)

    def __post_init__(self):
        for name in PARAMETERS:
            check_parameter(name, getattr(self, name))
        if self.Omega_b >= self.Omega_m:
            raise ValueError(f"cosmology: Omega_b={self.Omega_b} must be < Omega_m")

    @classmethod
    def from_config(cls, cfg) -> Cosmology:
        """From a :class:`cocasbi.config.CosmologyConfig`."""
        return cls(**cfg.model_dump())

    def replace(self, **changes) -> Cosmology:
        params = {k: getattr(self, k) for k in PARAMETERS}
        return Cosmology(**{**params, "transfer": self.transfer, **changes})

    @property
    def Omega_L(self) -> float:
        return 1.0 - self.Omega_m

    # ------------------------------------------------------------------ background
    def E(self, a):
        """Dimensionless Hubble rate H(a)/H0."""
        a = np.asarray(a, dtype=np.float64)
        return np.sqrt(self.Omega_m / a**3 + self.Omega_L)

    def Omega_m_a(self, a):
        """Matter density parameter at a."""
        return self.Omega_m / (np.asarray(a, dtype=np.float64) ** 3 * self.E(a) ** 2)

    # ------------------------------------------------------------------ growth
    @cached_property
    def _growth(self):
        """Raw growing-mode solution (D1 → a early) as a function of s = ln a.

        State: [D1, G1, D2, G2] with G = a³ E dD/da (:class:`cocasbi.growth.GrowthTable`).
        """
        from cocasbi.growth import GrowthTable

        a0 = _A_EARLY
        E0 = np.sqrt(self.Omega_m / a0**3 + 1.0 - self.Omega_m)
        y0 = [a0, a0**3 * E0, -3.0 / 7.0 * a0**2, a0**3 * E0 * (-6.0 / 7.0 * a0)]
        return GrowthTable(self.Omega_m, np.log(a0), np.log(_A_LATE), y0)

    def growth_raw(self, a):
        """Un-normalised [D1, G1, D2, G2](a), with D1 → a and D2 → −3/7 a² early on."""
        a = np.asarray(a, dtype=np.float64)
        if np.any(a < _A_EARLY) or np.any(a > _A_LATE):
            raise ValueError(f"growth tables cover {_A_EARLY} <= a <= {_A_LATE}")
        return self._growth(np.log(a))

    @cached_property
    def _d1_today(self) -> float:
        return float(self.growth_raw(1.0)[0])

    def D1(self, a):
        """Linear growth factor, normalised to D1(1) = 1."""
        return self.growth_raw(a)[0] / self._d1_today

    def D2(self, a):
        """Second-order growth factor, ≈ −3/7 D1² early, same normalisation as D1 (squared)."""
        return self.growth_raw(a)[2] / self._d1_today**2

    def dD1da(self, a):
        """dD1/da [1/a]."""
        a = np.asarray(a, dtype=np.float64)
        return self.growth_raw(a)[1] / (a**3 * self.E(a) * self._d1_today)

    def dD2da(self, a):
        """dD2/da [1/a]."""
        a = np.asarray(a, dtype=np.float64)
        return self.growth_raw(a)[3] / (a**3 * self.E(a) * self._d1_today**2)

    def G1(self, a):
        """G = a³ E dD1/da (the 1LPT momentum per unit Ψ1)."""
        return self.growth_raw(a)[1] / self._d1_today

    def G2(self, a):
        """a³ E dD2/da (the 2LPT momentum per unit Ψ2)."""
        return self.growth_raw(a)[3] / self._d1_today**2

    def dG1da(self, a):
        """dG/da = 3/2 Ω_m D1 / (a² E), from the growth equation."""
        a = np.asarray(a, dtype=np.float64)
        return 1.5 * self.Omega_m * self.D1(a) / (a**2 * self.E(a))

    def growth_rate(self, a):
        """f = dln D1 / dln a."""
        a = np.asarray(a, dtype=np.float64)
        return a * self.dD1da(a) / self.D1(a)

    # ------------------------------------------------------------------ time integration
    def kick_factor(self, a0: float, a1: float) -> float:
        """Standard kick factor ∫ da / (a² E) from a0 to a1 (Δp = F × factor)."""
        from scipy.integrate import quad

        return quad(lambda a: 1.0 / (a * a * self.E(a)), a0, a1, epsabs=0, epsrel=1e-13)[0]

    def drift_factor(self, a0: float, a1: float) -> float:
        """Standard drift factor ∫ da / (a³ E) from a0 to a1 (Δx = p × factor) [Mpc/h per p]."""
        from scipy.integrate import quad

        return quad(lambda a: 1.0 / (a**3 * self.E(a)), a0, a1, epsabs=0, epsrel=1e-13)[0]

    def fastpm_kick_factor(self, a0: float, a1: float, ac: float) -> float:
        """FastPM kick factor [G(a1) − G(a0)] / (a_c² E(a_c) G'(a_c)), force evaluated at a_c."""
        return float(
            (self.G1(a1) - self.G1(a0)) / (ac * ac * self.E(ac) * self.dG1da(ac))
        )

    def fastpm_drift_factor(self, a0: float, a1: float, ac: float) -> float:
        """FastPM drift factor [D1(a1) − D1(a0)] / (a_c³ E(a_c) D1'(a_c)), p taken at a_c."""
        return float((self.D1(a1) - self.D1(a0)) / self.G1(ac))

    # ------------------------------------------------------------------ linear power
    def transfer_function(self, k):
        """Matter transfer function T(k) (→ 1 as k → 0); k in [h/Mpc]."""
        k = np.asarray(k, dtype=np.float64)
        if self.transfer == "eisenstein_hu":
            return _eh98_transfer(k * self.h, self.Omega_m, self.Omega_b, self.h)
        if self.transfer == "eisenstein_hu_nowiggle":
            return _eh98_nowiggle_transfer(k * self.h, self.Omega_m, self.Omega_b, self.h)
        raise ValueError(
            f"transfer back-end {self.transfer!r} has no fitting formula: use linear_power")

    @cached_property
    def _boltzmann_table(self):
        from cocasbi.boltzmann import linear_power_table

        return linear_power_table(self)

    def _power_unnormalised(self, k):
        k = np.asarray(k, dtype=np.float64)
        if self.transfer in ("camb", "class"):
            from cocasbi.boltzmann import interpolate_power

            return interpolate_power(k, *self._boltzmann_table)
        return k**self.n_s * self.transfer_function(k) ** 2

    @cached_property
    def _power_amplitude(self) -> float:
        return self.sigma8**2 / sigma_r_squared(self._power_unnormalised, 8.0)

    def linear_power(self, k, a: float = 1.0):
        """Linear matter power spectrum P(k, a) [(Mpc/h)³], k in [h/Mpc], σ8-normalised at a=1."""
        k = np.asarray(k, dtype=np.float64)
        p = np.zeros_like(k)
        pos = k > 0
        p[pos] = self._power_amplitude * self._power_unnormalised(k[pos])
        return p * (self.D1(a) ** 2 if a != 1.0 else 1.0)

    def sigma_r(self, r: float, a: float = 1.0) -> float:
        """rms linear overdensity in top-hat spheres of radius r [Mpc/h]."""
        return float(np.sqrt(sigma_r_squared(self.linear_power, r)) * self.D1(a))


def sigma_r_squared(power, r: float) -> float:
    """σ²(R) = ∫ dln k k³ P(k) W²(kR) / (2π²), top-hat window, k over [1e-5, 1e3] h/Mpc."""
    lnk = np.linspace(np.log(1e-5), np.log(1e3), 8193)
    k = np.exp(lnk)
    x = k * r
    w = 3.0 * (np.sin(x) - x * np.cos(x)) / x**3
    from scipy.integrate import simpson

    return float(simpson(k**3 * power(k) * w**2 / (2 * np.pi**2), x=lnk))


def _eh98_params(Omega_m, Omega_b, h):
    theta = T_CMB / 2.7
    omh2, obh2 = Omega_m * h * h, Omega_b * h * h
    fb = Omega_b / Omega_m
    return theta, omh2, obh2, fb


def _eh98_transfer(k, Omega_m, Omega_b, h):
    """Eisenstein & Hu (1998) CDM+baryon transfer function with acoustic wiggles, k in [1/Mpc]."""
    theta, omh2, obh2, fb = _eh98_params(Omega_m, Omega_b, h)
    fc = 1.0 - fb
    z_eq = 2.50e4 * omh2 / theta**4
    k_eq = 7.46e-2 * omh2 / theta**2
    b1 = 0.313 * omh2**-0.419 * (1 + 0.607 * omh2**0.674)
    b2 = 0.238 * omh2**0.223
    z_d = 1291 * omh2**0.251 / (1 + 0.659 * omh2**0.828) * (1 + b1 * obh2**b2)
    R_d = 31.5 * obh2 / theta**4 * (1000 / z_d)
    R_eq = 31.5 * obh2 / theta**4 * (1000 / z_eq)
    s = (
        2.0 / (3 * k_eq) * np.sqrt(6 / R_eq)
        * np.log((np.sqrt(1 + R_d) + np.sqrt(R_d + R_eq)) / (1 + np.sqrt(R_eq)))
    )
    k_silk = 1.6 * obh2**0.52 * omh2**0.73 * (1 + (10.4 * omh2) ** -0.95)
    a1 = (46.9 * omh2) ** 0.670 * (1 + (32.1 * omh2) ** -0.532)
    a2 = (12.0 * omh2) ** 0.424 * (1 + (45.0 * omh2) ** -0.582)
    alpha_c = a1**-fb * a2 ** (-(fb**3))
    bb1 = 0.944 / (1 + (458 * omh2) ** -0.708)
    bb2 = (0.395 * omh2) ** -0.0266
    beta_c = 1.0 / (1 + bb1 * (fc**bb2 - 1))
    y = (1 + z_eq) / (1 + z_d)
    sq = np.sqrt(1 + y)
    G = y * (-6 * sq + (2 + 3 * y) * np.log((sq + 1) / (sq - 1)))
    alpha_b = 2.07 * k_eq * s * (1 + R_d) ** -0.75 * G
    beta_node = 8.41 * omh2**0.435
    beta_b = 0.5 + fb + (3 - 2 * fb) * np.sqrt((17.2 * omh2) ** 2 + 1)

    q = k / (13.41 * k_eq)
    ks = k * s

    def t0(alpha, beta):
        L = np.log(np.e + 1.8 * beta * q)
        C = 14.2 / alpha + 386.0 / (1 + 69.9 * q**1.08)
        return L / (L + C * q * q)

    f = 1.0 / (1 + (ks / 5.4) ** 4)
    T_c = f * t0(1.0, beta_c) + (1 - f) * t0(alpha_c, beta_c)
    s_tilde = s / (1 + (beta_node / ks) ** 3) ** (1.0 / 3.0)
    kst = k * s_tilde
    j0 = np.sinc(kst / np.pi)
    T_b = (
        t0(1.0, 1.0) / (1 + (ks / 5.2) ** 2)
        + alpha_b / (1 + (beta_b / ks) ** 3) * np.exp(-((k / k_silk) ** 1.4))
    ) * j0
    return fb * T_b + fc * T_c


def _eh98_nowiggle_transfer(k, Omega_m, Omega_b, h):
    """Eisenstein & Hu (1998) zero-baryon-oscillation ("no wiggle") fit, k in [1/Mpc]."""
    theta, omh2, obh2, fb = _eh98_params(Omega_m, Omega_b, h)
    s = 44.5 * np.log(9.83 / omh2) / np.sqrt(1 + 10 * obh2**0.75)
    alpha_g = 1 - 0.328 * np.log(431 * omh2) * fb + 0.38 * np.log(22.3 * omh2) * fb**2
    gamma_eff = Omega_m * h * (alpha_g + (1 - alpha_g) / (1 + (0.43 * k * s) ** 4))
    q = (k / h) * theta**2 / gamma_eff
    L0 = np.log(2 * np.e + 1.8 * q)
    C0 = 14.2 + 731.0 / (1 + 62.5 * q)
    return L0 / (L0 + C0 * q * q)
