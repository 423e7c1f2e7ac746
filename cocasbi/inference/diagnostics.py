"""Calibration diagnostics of a posterior on held-out simulations (``sbi.diagnostics``).

For n held-out pairs (θ_i, x_i) drawn from the prior and the simulator:

* **SBC** (``run_sbc`` / ``check_sbc``): rank of each true θ among L posterior samples given
  its x, per parameter. A calibrated posterior gives uniform ranks: KS p-values, a C2ST of the
  ranks against uniform ranks, and a C2ST of the data-averaged posterior against the prior.
* **Expected coverage**: from the same ranks, the fraction of truths inside the central
  credible interval of each level α, per parameter; calibrated means coverage(α) ≈ α.
* **TARP** (``run_tarp`` / ``check_tarp``): expected coverage of random-reference balls in the
  joint space, its area to the diagonal (ATC: < 0 over-confident, > 0 under-confident) and a
  KS p-value.

The verdict passes when the smallest SBC KS p-value, the largest coverage deviation and |ATC|
are all within the thresholds of :class:`~cocasbi.inference.config.DiagnosticsConfig`. Sampling
is seeded from ``stream_seed(master, Stream.POSTERIOR, call)``.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cocasbi.inference.config import DiagnosticsConfig
from cocasbi.inference.estimator import torch_seed
from cocasbi.io.atomic import atomic_path, save_figure
from cocasbi.seeds import Stream, stream_seed

LEVELS = np.linspace(0.0, 1.0, 21)  #: credibility levels of the coverage curve


@dataclass(frozen=True)
class DiagnosticsResult:
    """Everything computed by :func:`run_diagnostics` (numpy arrays, float64)."""

    parameters: tuple[str, ...]
    ranks: np.ndarray  # (n, d) SBC ranks in 0..L
    n_posterior_samples: int
    ks_pvals: np.ndarray  # (d,)
    c2st_ranks: np.ndarray  # (d,)
    c2st_dap: float
    levels: np.ndarray  # (q,)
    coverage: np.ndarray  # (q, d)
    tarp_ecp: np.ndarray
    tarp_alpha: np.ndarray
    tarp_atc: float
    tarp_ks_pval: float
    thresholds: DiagnosticsConfig

    @property
    def coverage_deviation(self) -> np.ndarray:
        """(d,) largest |coverage(α) − α| over the levels."""
        return np.abs(self.coverage - self.levels[:, None]).max(axis=0)

    @property
    def checks(self) -> dict[str, bool]:
        t = self.thresholds
        return {"sbc_ks": bool(self.ks_pvals.min() >= t.sbc_min_p),
                "coverage": bool(self.coverage_deviation.max() <= t.coverage_max_deviation),
                "tarp_atc": bool(abs(self.tarp_atc) <= t.tarp_max_atc)}

    @property
    def passed(self) -> bool:
        return all(self.checks.values())

    def to_dict(self) -> dict:
        return {"verdict": "pass" if self.passed else "fail", "checks": self.checks,
                "n_simulations": int(self.ranks.shape[0]),
                "n_posterior_samples": self.n_posterior_samples,
                "parameters": list(self.parameters),
                "sbc": {"ks_pvals": self.ks_pvals.tolist(),
                        "c2st_ranks": self.c2st_ranks.tolist(), "c2st_dap": self.c2st_dap},
                "coverage": {"levels": self.levels.tolist(),
                             "coverage": self.coverage.T.tolist(),
                             "max_deviation": self.coverage_deviation.tolist()},
                "tarp": {"atc": self.tarp_atc, "ks_pval": self.tarp_ks_pval,
                         "alpha": self.tarp_alpha.tolist(), "ecp": self.tarp_ecp.tolist()},
                "thresholds": self.thresholds.model_dump()}


def coverage_from_ranks(ranks, n_samples: int, levels=LEVELS) -> np.ndarray:
    """(q, d) fraction of truths inside the central credible interval of each level."""
    u = (np.asarray(ranks, dtype=np.float64) + 0.5) / (n_samples + 1)
    levels = np.asarray(levels, dtype=np.float64)
    return (np.abs(u[None, :, :] - 0.5) <= levels[:, None, None] / 2).mean(axis=1)


def run_diagnostics(posterior, prior, theta, x, cfg: DiagnosticsConfig, master_seed: int,
                    call: int = 1, parameters=None, progress: bool = True
                    ) -> DiagnosticsResult:
    """SBC, coverage and TARP of ``posterior`` on held-out θ (n, d) and x (n, m).

    ``posterior``: an sbi posterior, or any object with ``sample_batched((L,), x=xs,
    show_progress_bars=...)`` returning (L, n, d). ``prior``: the sbi prior (for the
    data-averaged-posterior check).
    """
    import torch
    from sbi.diagnostics import check_sbc, check_tarp, run_sbc, run_tarp

    theta = torch.as_tensor(np.asarray(theta, dtype=np.float32))
    x = torch.as_tensor(np.asarray(x, dtype=np.float32))
    if theta.ndim != 2 or x.ndim != 2 or theta.shape[0] != x.shape[0]:
        raise ValueError(f"held-out θ {tuple(theta.shape)} and x {tuple(x.shape)} must be "
                         "(n, d) and (n, m)")
    if theta.shape[0] < 10:
        raise ValueError(f"only {theta.shape[0]} held-out simulations; diagnostics need >= 10")
    if not (torch.isfinite(theta).all() and torch.isfinite(x).all()):
        raise ValueError("held-out θ or x holds non-finite values")
    n_post = cfg.n_posterior_samples
    parameters = tuple(parameters or (f"theta_{i}" for i in range(theta.shape[1])))
    with torch.random.fork_rng(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sbi warns below 100 held-out pairs; we report n
        torch.manual_seed(torch_seed(stream_seed(master_seed, Stream.POSTERIOR, call)))
        ranks, dap = run_sbc(theta, x, posterior, num_posterior_samples=n_post,
                             show_progress_bar=progress)
        checks = check_sbc(ranks, prior.sample((theta.shape[0],)), dap,
                           num_posterior_samples=n_post)
        ecp, alpha = run_tarp(theta, x, posterior, num_posterior_samples=n_post,
                              show_progress_bar=progress)
        atc, tarp_p = check_tarp(ecp, alpha)
    ranks = ranks.cpu().numpy().astype(np.float64)
    return DiagnosticsResult(
        parameters, ranks, n_post, checks["ks_pvals"].cpu().numpy().astype(np.float64),
        checks["c2st_ranks"].cpu().numpy().astype(np.float64).reshape(-1),
        float(checks["c2st_dap"].reshape(-1)[0]), LEVELS.copy(),
        coverage_from_ranks(ranks, n_post), ecp.cpu().numpy().astype(np.float64),
        alpha.cpu().numpy().astype(np.float64), float(atc), float(tarp_p), cfg)


def write_report(result: DiagnosticsResult, path: str | Path) -> Path:
    """The diagnostics as JSON (atomic write)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(result.to_dict(), indent=1))
    return path


def plot_diagnostics(result: DiagnosticsResult, path: str | Path) -> Path:
    """One PNG: SBC rank histograms per parameter, expected coverage curves and TARP."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    d, n = len(result.parameters), result.ranks.shape[0]
    fig, axes = plt.subplots(1, d + 1, figsize=(3.2 * (d + 1), 3.0), squeeze=False)
    n_bins = max(5, min(20, n // 10))
    edges = np.linspace(0, result.n_posterior_samples, n_bins + 1)
    expected = n / n_bins
    band = 2 * np.sqrt(expected * (1 - 1 / n_bins))
    for i, p in enumerate(result.parameters):
        ax = axes[0, i]
        ax.hist(result.ranks[:, i], bins=edges, color="C0", alpha=0.7)
        ax.axhspan(expected - band, expected + band, color="0.5", alpha=0.2, lw=0)
        ax.axhline(expected, color="0.3", lw=1)
        ax.set_title(f"SBC ranks: {p}\nKS p = {result.ks_pvals[i]:.2g}", fontsize=9)
        ax.set_xlabel("rank")
    ax = axes[0, d]
    ax.plot([0, 1], [0, 1], color="0.3", lw=1, ls="--")
    for i, p in enumerate(result.parameters):
        ax.plot(result.levels, result.coverage[:, i], marker=".", label=f"coverage {p}")
    ax.plot(result.tarp_alpha, result.tarp_ecp, color="k",
            label=f"TARP (ATC {result.tarp_atc:+.3f})")
    ax.set_xlabel("credibility level")
    ax.set_ylabel("expected coverage")
    ax.set_title(f"verdict: {'pass' if result.passed else 'fail'} ({n} held-out)", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return save_figure(fig, path)
