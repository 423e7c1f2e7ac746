"""Calibration diagnostics: pass on an exactly calibrated toy, fail on an over-confident one."""

import numpy as np
import pytest
import torch
from scipy import stats

from cocasbi.inference.config import DiagnosticsConfig
from cocasbi.inference.diagnostics import (
    coverage_from_ranks,
    plot_diagnostics,
    run_diagnostics,
    write_report,
)
from cocasbi.inference.gaussian_field import GaussianFieldModel

NOISE = 0.5
LOW, HIGH = -5.0, 5.0


class ToyPosterior:
    """Exact posterior of θ ~ U(LOW, HIGH), x = θ + N(0, NOISE²), widths scaled by ``scale``."""

    def __init__(self, scale=1.0):
        self.scale = scale

    def sample_batched(self, shape, x, show_progress_bars=False):
        x = x.numpy().astype(np.float64)[:, 0]
        sd = NOISE * self.scale
        a, b = (LOW - x) / sd, (HIGH - x) / sd
        draws = stats.truncnorm.rvs(a, b, loc=x, scale=sd, size=(shape[0], x.size),
                                    random_state=int(torch.randint(0, 2**31, ()).item()))
        return torch.as_tensor(draws[..., None], dtype=torch.float32)


def _toy_data(n=200):
    rng = np.random.default_rng(3)
    theta = rng.uniform(LOW, HIGH, size=(n, 1))
    return theta, theta + NOISE * rng.standard_normal((n, 1))


def _prior():
    from sbi.utils import BoxUniform

    return BoxUniform(torch.tensor([LOW]), torch.tensor([HIGH]))


@pytest.mark.parametrize("scale, passes", [(1.0, True), (0.4, False), (2.5, False)])
def test_verdict_calibrated_and_miscalibrated(scale, passes, tmp_path):
    theta, x = _toy_data()
    res = run_diagnostics(ToyPosterior(scale), _prior(), theta, x,
                          DiagnosticsConfig(n_posterior_samples=200), master_seed=5,
                          parameters=("t",), progress=False)
    assert res.passed is passes, res.to_dict()["checks"]
    if scale < 1:
        assert res.tarp_atc < 0  # over-confident: coverage below the diagonal
        assert (res.coverage[1:-1, 0] < res.levels[1:-1]).all()
    report = write_report(res, tmp_path / "diag.json")
    assert '"verdict"' in report.read_text()
    assert plot_diagnostics(res, tmp_path / "diag.png").stat().st_size > 1000


def test_coverage_from_uniform_ranks_is_diagonal():
    rng = np.random.default_rng(0)
    ranks = rng.integers(0, 1001, size=(20000, 2))
    cov = coverage_from_ranks(ranks, 1000)
    assert np.abs(cov - np.linspace(0, 1, 21)[:, None]).max() < 0.02


def test_too_few_held_out_is_an_error():
    theta, x = _toy_data(5)
    with pytest.raises(ValueError, match="held-out"):
        run_diagnostics(ToyPosterior(), _prior(), theta, x, DiagnosticsConfig(), 1)


def test_field_paths_agree_in_distribution():
    """The fast (gamma) and the real-field (FFT of white noise) paths draw the same x."""
    fast = GaussianFieldModel(n=8, method="exact")
    field = GaussianFieldModel(n=8, method="field")
    np.testing.assert_array_equal(fast.n_modes, field.n_modes)
    a = 1.3
    xf = np.array([fast([a], i) for i in range(4000)])
    xr = np.array([field([a], i) for i in range(400)])
    for b in range(fast.n_bins):
        assert stats.ks_2samp(xf[:, b], xr[:, b]).pvalue > 1e-3
        # mean A, variance A²/N_b: the exponential-variate law of the mode counting
        se = a / np.sqrt(fast.n_modes[b] * len(xr))
        assert abs(xr[:, b].mean() - a) < 4 * se
        np.testing.assert_allclose(xr[:, b].var() * fast.n_modes[b], a**2, rtol=0.3)
