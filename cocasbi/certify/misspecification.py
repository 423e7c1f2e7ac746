"""Misspecification check: are the reference summaries inside the training distribution?

An NPE trained on the configuration under test is only trustworthy on data that look like its
training set. sbi's MMD test (:func:`sbi.diagnostics.calc_misspecification_mmd`, ``mode =
"x_space"``, RBF kernel with the median-heuristic bandwidth) compares observed summaries with
the training summaries; its p-value is the fraction of MMDs between random splits of the
training set (the null distribution) at least as large as the observed one. Both sets are
z-scored with the training set's mean and std first, so every summary counts on the same scale.

Two tests are run: on the set of all reference summaries (one p-value, the check) and on each
reference summary alone (one p-value per pair; the fraction below ``alpha`` is reported).
The shuffles draw from torch's global RNG, seeded from ``stream_seed(master_seed,
Stream.CERTIFY, MISSPECIFICATION + j)`` inside a forked RNG state (reproducible, and the
caller's torch state is left alone).
"""

from __future__ import annotations

import numpy as np

from cocasbi.seeds import Stream, stream_seed

#: Stream index offset (CERTIFY) of the shuffles of the misspecification test.
MISSPECIFICATION = 400_000


def zscore(x_obs, x_train) -> tuple[np.ndarray, np.ndarray]:
    """``x_obs`` and ``x_train`` standardised with the training set's mean and std (float64;
    a constant training summary is left unscaled)."""
    x_train = np.asarray(x_train, dtype=np.float64)
    x_obs = np.atleast_2d(np.asarray(x_obs, dtype=np.float64))
    if x_train.ndim != 2 or x_obs.shape[1] != x_train.shape[1]:
        raise ValueError(f"summaries must be (n, p) arrays with the same p; got x_obs "
                         f"{x_obs.shape} and x_train {x_train.shape}")
    mean, std = x_train.mean(axis=0), x_train.std(axis=0)
    std = np.where(std > 0, std, 1.0)
    return (x_obs - mean) / std, (x_train - mean) / std


def mmd_p_value(x_obs, x_train, master_seed: int = 0, call: int = 0,
                n_shuffle: int = 1000) -> tuple[float, float]:
    """p-value and MMD of sbi's x-space misspecification test of ``x_obs`` (n_obs, p) against
    ``x_train`` (n, p), n > n_obs, both z-scored with the training statistics."""
    import torch
    from sbi.diagnostics import calc_misspecification_mmd

    from cocasbi.inference.estimator import torch_seed

    z_obs, z = zscore(x_obs, x_train)
    if len(z_obs) >= len(z):
        raise ValueError(f"the misspecification test needs more training summaries "
                         f"({len(z)}) than observations ({len(z_obs)})")
    if not (np.all(np.isfinite(z_obs)) and np.all(np.isfinite(z))):
        raise ValueError("the misspecification test needs finite summaries")
    threads = torch.get_num_threads()
    try:  # a thousand small kernels: one thread is fastest and spares busy cores
        torch.set_num_threads(1)
        with torch.random.fork_rng():
            torch.manual_seed(torch_seed(stream_seed(master_seed, Stream.CERTIFY,
                                                     MISSPECIFICATION + call)))
            p_value, (_, mmd) = calc_misspecification_mmd(
                torch.as_tensor(z_obs, dtype=torch.float32),
                torch.as_tensor(z, dtype=torch.float32),
                mode="x_space", n_shuffle=n_shuffle, max_samples=len(z))
    finally:
        torch.set_num_threads(threads)
    return float(p_value), float(mmd)


def misspecification(x_obs, x_train, alpha: float = 0.05, master_seed: int = 0,
                     n_shuffle: int = 1000) -> dict:
    """MMD misspecification test of reference summaries against a training set.

    Parameters
    ----------
    x_obs : array (n_obs, p)
        Reference (observed) summaries, one row per pair.
    x_train : array (n, p), n > n_obs
        Summaries of the training set of the configuration under test.
    alpha : float
        Significance level: a p-value below it flags misspecification.
    master_seed : int
        Seeds the shuffles of the null distribution.
    n_shuffle : int
        Random splits of the training set in the null distribution.

    Returns
    -------
    dict
        ``p_value``, ``mmd`` and ``flagged`` of the set test; ``p_values`` and ``flagged_each``
        per observation; ``fraction_flagged``; ``alpha``, ``n_train``, ``n_shuffle``.
    """
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    x_obs = np.atleast_2d(np.asarray(x_obs, dtype=np.float64))
    p_set, mmd_set = mmd_p_value(x_obs, x_train, master_seed, 0, n_shuffle)
    each = np.array([mmd_p_value(row[None], x_train, master_seed, 1 + i, n_shuffle)[0]
                     for i, row in enumerate(x_obs)])
    flagged = each < alpha
    return {"p_value": p_set, "mmd": mmd_set, "flagged": bool(p_set < alpha),
            "p_values": each.tolist(), "flagged_each": flagged.tolist(),
            "fraction_flagged": float(flagged.mean()), "alpha": float(alpha),
            "n_train": int(len(x_train)), "n_shuffle": int(n_shuffle)}
