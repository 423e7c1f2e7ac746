"""Fisher estimate of the parameter bias a summary error would cause.

For a Gaussian likelihood of the summary x with mean μ(θ) and covariance C, a systematic shift
Δx of the data moves the maximum-likelihood θ by (to first order)

    δθ = F⁻¹ Jᵀ C⁻¹ Δx,   F = Jᵀ C⁻¹ J,   J = ∂μ/∂θ,

and the posterior width of θ_i is σ_i = √(F⁻¹)_ii. The certification reports δθ_i / σ_i.
C⁻¹ is the Hartlap-corrected inverse of a sample covariance from n simulations,
(n − p − 2)/(n − 1) Ĉ⁻¹ for p summaries. All in float64.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from tqdm.auto import tqdm


def hartlap_precision(samples) -> np.ndarray:
    """Unbiased precision matrix (p, p) from (n, p) samples; ValueError if n <= p + 2."""
    x = np.asarray(samples, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"samples must be (n, p), got shape {x.shape}")
    n, p = x.shape
    if n <= p + 2:
        raise ValueError(f"a covariance of {p} summaries needs more than {p + 2} simulations, "
                         f"got {n}")
    cov = np.atleast_2d(np.cov(x, rowvar=False))
    return (n - p - 2) / (n - 1) * np.linalg.inv(cov)


def fisher_bias(jacobian, precision, delta_x) -> dict[str, np.ndarray]:
    """δθ = F⁻¹ Jᵀ C⁻¹ Δx and its size in posterior σ.

    Parameters
    ----------
    jacobian : (p, d) array
        ∂x/∂θ.
    precision : (p, p) array
        C⁻¹ of the summaries.
    delta_x : (p,) array
        Mean summary error (run under test − reference).

    Returns
    -------
    dict
        ``bias`` δθ (d,), ``sigma`` √diag F⁻¹ (d,), ``bias_sigma`` δθ/σ (d,), ``fisher`` F.
    """
    j = np.atleast_2d(np.asarray(jacobian, dtype=np.float64))
    prec = np.atleast_2d(np.asarray(precision, dtype=np.float64))
    dx = np.asarray(delta_x, dtype=np.float64).reshape(-1)
    if j.shape[0] != dx.size or prec.shape != (dx.size, dx.size):
        raise ValueError(f"inconsistent shapes: J {j.shape}, C^-1 {prec.shape}, Δx {dx.shape}")
    fisher = j.T @ prec @ j
    cov_theta = np.linalg.inv(fisher)
    bias = cov_theta @ (j.T @ prec @ dx)
    sigma = np.sqrt(np.diag(cov_theta))
    return {"bias": bias, "sigma": sigma, "bias_sigma": bias / sigma, "fisher": fisher}


def finite_difference_jacobian(model: Callable | None, theta0, steps, seeds: Sequence,
                               progress: bool = False,
                               run_all: Callable | None = None) -> np.ndarray:
    """(p, d) central differences of ``model(theta, seed) -> x`` at θ0, averaged over seeds.

    The same seeds are used on both sides of each difference, so cosmic variance largely
    cancels. ``steps`` (d,) are the θ offsets. ``run_all``: a callable that maps the list of
    (θ, seed) runs to their summaries, in order (e.g. on a process pool); by default
    ``model`` is called on each in turn (then ``model`` may be None).
    """
    theta0 = np.asarray(theta0, dtype=np.float64)
    steps = np.broadcast_to(np.asarray(steps, dtype=np.float64), theta0.shape)
    runs = [(theta0 + sign * steps[i] * np.eye(theta0.size)[i], seed)
            for i in range(theta0.size) for sign in (1, -1) for seed in seeds]
    if run_all is None:
        runs = tqdm(runs, desc="derivatives", unit="run", disable=not progress)
        x = [model(theta, seed) for theta, seed in runs]
    else:
        x = run_all(runs)
    x = np.asarray(x, dtype=np.float64).reshape(theta0.size, 2, len(seeds), -1)
    diffs = (x[:, 0] - x[:, 1]) / (2 * steps[:, None, None])
    return np.stack([np.mean(d, axis=0) for d in diffs], axis=1)


def sample_summaries(model: Callable, theta, seeds: Sequence, progress: bool = False):
    """(n, p) summaries ``model(theta, seed)`` for each seed."""
    return np.stack([np.asarray(model(theta, s), dtype=np.float64)
                     for s in tqdm(seeds, desc="covariance", unit="run", disable=not progress)])
