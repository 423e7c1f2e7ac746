"""Posterior outputs for one observation: samples, moments, credible intervals, corner plot.

Samples are drawn with torch seeded from ``stream_seed(master, Stream.POSTERIOR, j)`` inside a
forked RNG state, so a call is reproducible and leaves the global torch state alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cocasbi.inference.estimator import torch_seed
from cocasbi.io.atomic import save_figure
from cocasbi.seeds import Stream, stream_seed


def sample_posterior(posterior, x, n: int, master_seed: int, call: int = 0,
                     progress: bool = False) -> np.ndarray:
    """(n, d) float64 samples of ``posterior`` given one x (m,), seeded from the tree."""
    import torch

    with torch.random.fork_rng():
        torch.manual_seed(torch_seed(stream_seed(master_seed, Stream.POSTERIOR, call)))
        s = posterior.sample((n,), x=torch.as_tensor(np.asarray(x, dtype=np.float32)),
                             show_progress_bars=progress)
    return s.detach().cpu().numpy().astype(np.float64)


@dataclass(frozen=True)
class PosteriorSummary:
    """Moments, equal-tailed credible intervals and the truth's percentile per parameter.

    ``intervals[level]`` is a (d, 2) array of [low, high]; ``truth_percentile`` is the
    percentage of samples below the truth (50 = at the median), None without a truth.
    """

    parameters: tuple[str, ...]
    samples: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    median: np.ndarray
    intervals: dict[float, np.ndarray]
    truth: np.ndarray | None
    truth_percentile: np.ndarray | None

    def to_dict(self) -> dict:
        out = {"n_samples": int(self.samples.shape[0]), "parameters": {}}
        for i, p in enumerate(self.parameters):
            entry = {"mean": float(self.mean[i]), "std": float(self.std[i]),
                     "median": float(self.median[i]),
                     "intervals": {f"{lvl:g}": self.intervals[lvl][i].tolist()
                                   for lvl in self.intervals}}
            if self.truth is not None:
                entry["truth"] = float(self.truth[i])
                entry["truth_percentile"] = float(self.truth_percentile[i])
            out["parameters"][p] = entry
        return out


def summarize(samples, parameters: Sequence[str], truth=None,
              levels: Sequence[float] = (0.68, 0.95)) -> PosteriorSummary:
    """Summary of (n, d) posterior samples (float64), with the truth if known."""
    samples = np.asarray(samples, dtype=np.float64)
    if samples.ndim != 2 or samples.shape[1] != len(parameters) or samples.shape[0] < 2:
        raise ValueError(f"samples have shape {samples.shape}, expected (n >= 2, "
                         f"{len(parameters)})")
    intervals = {float(lvl): np.quantile(samples, [(1 - lvl) / 2, (1 + lvl) / 2], axis=0).T
                 for lvl in levels}
    pct = None
    if truth is not None:
        truth = np.asarray(truth, dtype=np.float64).reshape(-1)
        pct = 100.0 * (samples < truth).mean(axis=0)
    return PosteriorSummary(tuple(parameters), samples, samples.mean(0), samples.std(0, ddof=1),
                            np.median(samples, axis=0), intervals, truth, pct)


def corner_plot(summary: PosteriorSummary, path: str | Path, prior=None,
                title: str | None = None, reference: np.ndarray | None = None,
                reference_label: str = "reference") -> Path:
    """Corner plot (PNG) of the samples: 1D histograms on the diagonal, 2D histograms below,
    the truth marked in red, optional ``reference`` samples (n, d) overlaid in grey."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s, d = summary.samples, len(summary.parameters)
    fig, axes = plt.subplots(d, d, figsize=(2.6 * d + 0.6, 2.6 * d + 0.4), squeeze=False)
    lo = s.min(0) if prior is None else np.asarray(prior.low)
    hi = s.max(0) if prior is None else np.asarray(prior.high)
    for i in range(d):
        for j in range(d):
            ax = axes[i, j]
            if j > i:
                ax.axis("off")
                continue
            if i == j:
                bins = np.linspace(lo[i], hi[i], 50)
                ax.hist(s[:, i], bins=bins, density=True, histtype="stepfilled", alpha=0.6,
                        color="C0", label="NPE")
                if reference is not None:
                    ax.hist(reference[:, i], bins=bins, density=True, histtype="step",
                            color="0.3", label=reference_label)
                for lvl, iv in summary.intervals.items():
                    ax.axvspan(*iv[i], color="C0", alpha=0.08 if lvl > 0.7 else 0.15, lw=0)
                if summary.truth is not None:
                    ax.axvline(summary.truth[i], color="C3", lw=1.5, label="truth")
                ax.set_yticks([])
                if i == 0 and d == 1:
                    ax.legend(fontsize=7)
            else:
                ax.hist2d(s[:, j], s[:, i], bins=40, range=[[lo[j], hi[j]], [lo[i], hi[i]]],
                          cmap="Blues")
                if summary.truth is not None:
                    ax.plot(summary.truth[j], summary.truth[i], "*", color="C3", ms=10)
            ax.set_xlim(lo[j], hi[j])
            if i == d - 1:
                ax.set_xlabel(summary.parameters[j])
            if j == 0 and i > 0:
                ax.set_ylabel(summary.parameters[i])
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)
