"""Known-answer test model: a Gaussian random field whose amplitude posterior is exact.

A Gaussian random field δ on an n³ periodic grid of side L [Mpc/h] has power spectrum
``A · P_fid(k)``. Its summary is, per k bin b,

    x_b = < |δ_k|² / P_fid(k) >   over the N_b independent complex modes of bin b,

where k and −k count once and the self-conjugate modes (every component 0 or n/2, whose
Fourier coefficient is real) are left out. Each |δ_k|² / (A P_fid(k)) is then an independent
Exp(1) variate, so the likelihood of A is ``∏_b A^(−N_b) exp(−N_b x_b / A)`` and, under a
uniform prior on A in [lo, hi], the posterior is

    p(A | x) ∝ A^(−N) exp(−S / A),   N = Σ_b N_b,   S = Σ_b N_b x_b,

an inverse gamma of shape N − 1 and scale S truncated to the box (:class:`ExactPosterior`).

Two simulation paths give the same distribution of x:

* ``method="exact"`` (default): N_b x_b / A is a sum of N_b Exp(1) variates, i.e. a
  Gamma(N_b, 1) variate; one draw per bin, no field, microseconds per call.
* ``method="field"``: white noise on the grid, coloured in Fourier space by
  sqrt(A P_fid(k)), transformed to a real field and measured back with an FFT: the slow path
  that checks the mode counting.

:class:`GaussianFieldModel` has the interface of :class:`cocasbi.forward.ForwardModel`
(``model(theta, seed) -> x`` float32, ``names``, ``k``, ``parameters``, ``provenance()``), so
it can stand in for it in inference and as a campaign simulator.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
from scipy import stats

from cocasbi import __version__
from cocasbi.inference.box import ParameterBox
from cocasbi.seeds import as_seed_sequence, design_seed, simulation_seed

PARAMETER = "A"  #: name of the one parameter: the amplitude of A · P_fid(k) (dimensionless)


def fiducial_power(k) -> np.ndarray:
    """P_fid(k) [(Mpc/h)^3] of wavenumber k [h/Mpc]: 1e4 (k / 0.1)^−1.5 (float64).

    Its shape cancels in x (x divides by it); it only shapes the real field of the slow path.
    """
    return 1e4 * (np.asarray(k, dtype=np.float64) / 0.1) ** -1.5


def independent_modes(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Integer wave vectors (m, 3) of the independent, non-self-conjugate modes of an n³ real
    field, each pair (k, −k) counted once, and their indices (m, 3) in ``rfftn``'s half space.

    Modes with 0 < k_z < n/2 are all independent; on the planes k_z = 0 and k_z = n/2 the
    half of each (k, −k) pair with the smaller flat index is kept; self-conjugate modes and
    k = 0 are dropped.
    """
    if n < 2 or n % 2:
        raise ValueError(f"grid size n={n} must be even and >= 2")
    ix, iy, iz = np.meshgrid(np.arange(n), np.arange(n), np.arange(n // 2 + 1), indexing="ij")
    flat = ix * n + iy
    mirror = ((-ix) % n) * n + (-iy) % n
    edge = (iz == 0) | (iz == n // 2)
    keep = ~edge | (flat < mirror)  # flat == mirror: self-conjugate (or k = 0)
    index = np.stack([ix[keep], iy[keep], iz[keep]], axis=1)
    signed = np.where(index > n // 2, index - n, index)
    signed[:, 2] = index[:, 2]
    return signed, index


@dataclass(frozen=True)
class ExactPosterior:
    """p(A | x) ∝ A^(−N) exp(−S/A) on [low, high]: inverse gamma (shape N − 1, scale S),
    truncated. ``n_modes`` is N, ``s`` is S = Σ_b N_b x_b (float64)."""

    n_modes: int
    s: float
    low: float
    high: float

    @property
    def _gamma(self):
        # A ~ InvGamma(α, S)  <=>  S / A ~ Gamma(α, 1); A in [lo, hi] <=> S/A in [S/hi, S/lo]
        return stats.gamma(self.n_modes - 1)

    def _bounds(self) -> tuple[float, float]:
        g = self._gamma
        # P(S/A > S/lo) <= P(S/A > S/hi); survival functions stay accurate in the tails
        return g.sf(self.s / self.low), g.sf(self.s / self.high)

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """(n, 1) exact posterior draws of A (float64), by inverse-CDF sampling."""
        lo, hi = self._bounds()
        u = lo + (hi - lo) * rng.random(n)
        return (self.s / self._gamma.isf(u)).reshape(n, 1)

    def log_prob(self, a) -> np.ndarray:
        """Normalised log density of A (−inf outside [low, high])."""
        a = np.asarray(a, dtype=np.float64)
        lo, hi = self._bounds()
        with np.errstate(divide="ignore", invalid="ignore"):
            logp = stats.invgamma(self.n_modes - 1, scale=self.s).logpdf(a) - np.log(hi - lo)
        return np.where((a >= self.low) & (a <= self.high), logp, -np.inf)

    def moments(self, n_grid: int = 20001) -> tuple[float, float]:
        """(mean, std) of A by quadrature on a fine grid (float64)."""
        a = np.linspace(self.low, self.high, n_grid)
        p = np.exp(self.log_prob(a))
        w = p / np.trapezoid(p, a)
        mean = np.trapezoid(w * a, a)
        return float(mean), float(np.sqrt(np.trapezoid(w * (a - mean) ** 2, a)))


class GaussianFieldModel:
    """θ = (A,), seed → x (float32): binned |δ_k|²/P_fid of a Gaussian field of power A·P_fid.

    Parameters
    ----------
    n : int
        Grid cells per side (even).
    box_size : float
        Side of the periodic box [Mpc/h].
    n_bins : int
        Linear k bins from ``kmin`` to ``kmax``.
    kmin, kmax : float, optional
        Bin range [h/Mpc]; default k_f/2 to (n/2 + 1/2) k_f (k_f = 2π/L, the fundamental).
    method : ``"exact"`` | ``"field"``
        Draw the binned summary directly (gamma variates) or make and measure a real field.
    prior : (float, float)
        Uniform prior box [low, high] of A.
    """

    parameters = (PARAMETER,)

    def __init__(self, n: int = 8, box_size: float = 256.0, n_bins: int = 4,
                 kmin: float | None = None, kmax: float | None = None,
                 method: str = "exact", prior: tuple[float, float] = (0.5, 2.0)):
        if method not in ("exact", "field"):
            raise ValueError(f"unknown method {method!r}; choose 'exact' or 'field'")
        if not (np.isfinite(box_size) and box_size > 0):
            raise ValueError(f"box_size={box_size} must be positive [Mpc/h]")
        if n_bins < 1:
            raise ValueError(f"n_bins={n_bins} must be >= 1")
        self.n, self.box_size, self.n_bins, self.method = int(n), float(box_size), n_bins, method
        k_f = 2 * np.pi / self.box_size
        self.kmin = 0.5 * k_f if kmin is None else float(kmin)
        self.kmax = (self.n // 2 + 0.5) * k_f if kmax is None else float(kmax)
        if not 0 <= self.kmin < self.kmax:
            raise ValueError(f"k range [{self.kmin}, {self.kmax}] h/Mpc is empty")
        self.prior = ParameterBox((PARAMETER,), [prior[0]], [prior[1]])
        if self.prior.low[0] <= 0:
            raise ValueError(f"prior of A must be positive, got [{prior[0]}, {prior[1]}]")
        self._layout  # noqa: B018 - fail now on an empty bin

    @cached_property
    def _layout(self):
        """(bin of each independent mode (−1 = outside), N_b, mean |k| per bin [h/Mpc],
        rfftn indices of the modes)."""
        signed, index = independent_modes(self.n)
        kmag = np.sqrt((signed.astype(np.float64) ** 2).sum(axis=1)) * 2 * np.pi / self.box_size
        edges = np.linspace(self.kmin, self.kmax, self.n_bins + 1)
        b = np.digitize(kmag, edges) - 1
        b[(b < 0) | (b >= self.n_bins) | (kmag < self.kmin) | (kmag >= self.kmax)] = -1
        counts = np.bincount(b[b >= 0], minlength=self.n_bins)
        if (counts == 0).any():
            raise ValueError(f"k bins {np.flatnonzero(counts == 0).tolist()} hold no modes; "
                             "use fewer bins or a larger grid")
        kmean = np.bincount(b[b >= 0], weights=kmag[b >= 0], minlength=self.n_bins) / counts
        return b, counts, kmean, index

    @property
    def n_modes(self) -> np.ndarray:
        """N_b: independent complex modes per bin (int64)."""
        return self._layout[1]

    @property
    def k(self) -> np.ndarray:
        """Mean |k| [h/Mpc] of each bin's modes."""
        return self._layout[2]

    @property
    def names(self) -> list[str]:
        return [f"pk_ratio[k={kk:.4f}]" for kk in self.k]

    def provenance(self) -> dict:
        return {"model": "cocasbi.inference.gaussian_field.GaussianFieldModel",
                "cocasbi_version": __version__, "n": self.n, "box_size": self.box_size,
                "n_bins": self.n_bins, "kmin": self.kmin, "kmax": self.kmax,
                "method": self.method, "parameters": list(self.parameters),
                "prior": [float(self.prior.low[0]), float(self.prior.high[0])]}

    def _amplitude(self, theta) -> float:
        theta = np.asarray(theta, dtype=np.float64).reshape(-1)
        if theta.size != 1:
            raise ValueError(f"θ has {theta.size} entries, expected 1 (A)")
        a = float(theta[0])
        if not (np.isfinite(a) and a > 0):
            raise ValueError(f"amplitude A={a} must be finite and positive")
        return a

    def __call__(self, theta, seed) -> np.ndarray:
        """x for (θ, seed): float32 (n_bins,); ``seed`` is an int or a SeedSequence."""
        a = self._amplitude(theta)
        rng = np.random.default_rng(as_seed_sequence(seed))
        if self.method == "exact":
            counts = self.n_modes
            return (a * rng.gamma(counts) / counts).astype(np.float32)
        return self.measure(self.field(a, rng))

    def field(self, a: float, rng: np.random.Generator) -> np.ndarray:
        """A real Gaussian field (n, n, n) (float64, dimensionless) with power A·P_fid(k)."""
        n, volume = self.n, self.box_size**3
        white = np.fft.rfftn(rng.standard_normal((n, n, n)))  # E|W_k|² = n³
        kmag = _grid_k(n, self.box_size)
        with np.errstate(divide="ignore"):
            amp = np.sqrt(a * fiducial_power(kmag) * n**3 / volume)
        amp[0, 0, 0] = 0.0
        return np.fft.irfftn(white * amp, s=(n, n, n), axes=(0, 1, 2))

    def measure(self, delta: np.ndarray) -> np.ndarray:
        """Summary x (float32) of a real field: mean |δ_k|²/P_fid per bin over independent modes,
        with P̂(k) = |FFT δ|² V / n⁶ [(Mpc/h)^3]."""
        n = self.n
        b, counts, _, index = self._layout
        modes = np.fft.rfftn(delta)[index[:, 0], index[:, 1], index[:, 2]]
        kmag = _grid_k(n, self.box_size)[index[:, 0], index[:, 1], index[:, 2]]
        ratio = np.abs(modes) ** 2 * self.box_size**3 / n**6 / fiducial_power(kmag)
        inside = b >= 0
        return (np.bincount(b[inside], weights=ratio[inside], minlength=self.n_bins)
                / counts).astype(np.float32)

    def exact_posterior(self, x) -> ExactPosterior:
        """The exact posterior of A given x under the uniform prior box."""
        x = np.asarray(x, dtype=np.float64).reshape(-1)
        if x.shape != (self.n_bins,) or not np.isfinite(x).all() or (x <= 0).any():
            raise ValueError(f"x must be {self.n_bins} finite positive values, got {x}")
        return ExactPosterior(int(self.n_modes.sum()), float(self.n_modes @ x),
                              float(self.prior.low[0]), float(self.prior.high[0]))


def _grid_k(n: int, box_size: float) -> np.ndarray:
    """|k| [h/Mpc] on rfftn's half-space grid (n, n, n/2+1), float64."""
    k1 = np.fft.fftfreq(n, d=1.0 / n) * 2 * np.pi / box_size
    kz = np.arange(n // 2 + 1) * 2 * np.pi / box_size
    return np.sqrt(k1[:, None, None] ** 2 + k1[None, :, None] ** 2 + kz[None, None, :] ** 2)


def simulate_prior(model, n: int, master_seed: int, progress: bool = False):
    """θ (n, d) drawn uniformly from ``model.prior`` (stream ``design_seed(master_seed)``) and
    x (n, m) with simulation i seeded by ``simulation_seed(master_seed, i)``."""
    from tqdm.auto import tqdm

    theta = model.prior.design(n, np.random.default_rng(design_seed(master_seed)), "uniform")
    x = np.stack([model(t, simulation_seed(master_seed, i)) for i, t in
                  enumerate(tqdm(theta, desc="simulate", unit="sim", disable=not progress))])
    return theta, x
