"""Parameter-level check: NPE trained on the configuration under test, applied to PM data.

A neural posterior estimator (:mod:`cocasbi.inference`) is trained on simulations of the
configuration under test (θ from a Latin hypercube over the prior, seeds of the
certification's own plan, ``simulation_seed(master_seed, i)``). For every pair of the design it
is then evaluated twice: on the summary x of the run under test and on the summary x_ref of the
reference run from the same initial conditions. The *posterior mean shift*

    s = (mean[θ | x_ref] − mean[θ | x]) / std[θ | x_ref]

is what inference on real (reference-like) data would be off by, in posterior σ. Both posteriors
are sampled with the same random numbers (same POSTERIOR stream call), so s reflects x − x_ref
and not sampling noise. The *coverage* of the central 68 % and 95 % intervals of the posterior
given x_ref, counted over the pairs whose θ is inside the prior box (the corners lie on its
boundary, which a central interval cannot cover), checks calibration on reference observations
(with only a handful of pairs it is coarse: reported, not a threshold). The reference
summaries are also tested for misspecification against the training summaries
(:mod:`cocasbi.certify.misspecification`).

θ of the training set come from ``stream_seed(master_seed, Stream.CERTIFY, NPE_DESIGN)``.
"""

from __future__ import annotations

import numpy as np
from tqdm.auto import tqdm

from cocasbi.certify.misspecification import misspecification
from cocasbi.prior import BoxPrior
from cocasbi.seeds import Stream, simulation_seed, stream_seed

#: Stream index (CERTIFY) of the NPE training-set design draws.
NPE_DESIGN = 300_000
#: Central credible levels whose coverage is reported.
LEVELS = (0.68, 0.95)


def training_set(model, prior: BoxPrior, n: int, master_seed: int, progress: bool = True):
    """θ (n, d) from a Latin hypercube and x (n, p) = ``model(θ_i, simulation_seed(master, i))``."""
    rng = np.random.default_rng(stream_seed(master_seed, Stream.CERTIFY, NPE_DESIGN))
    theta = prior.design(n, rng, "latin_hypercube")
    x = np.stack([np.asarray(model(t, simulation_seed(master_seed, i)), dtype=np.float64)
                  for i, t in enumerate(tqdm(theta, desc="NPE training set", unit="sim",
                                             disable=not progress))])
    return theta, x


def train_posterior(theta, x, names, prior: BoxPrior, estimator, training, master_seed: int,
                    progress: bool = True):
    """sbi posterior of NPE trained on (θ, x) (:func:`cocasbi.inference.estimator
    .train_estimators` with ``estimator`` / ``training`` configs)."""
    from cocasbi.inference.data import from_arrays
    from cocasbi.inference.estimator import make_posterior, train_estimators

    data = from_arrays(theta, x, parameters=prior.names, names=names, prior=prior)
    members = train_estimators(data, estimator, training, master_seed, progress=progress)
    return make_posterior([m.net for m in members], prior.to_sbi())


def posterior_shift(posterior, pairs, n_samples: int, master_seed: int,
                    prior: BoxPrior | None = None) -> dict:
    """Mean shift in posterior σ and coverage of the true θ, over pairs with ``x``, ``x_ref``
    and ``theta``: ``shift`` (n_pairs, d), ``sigma_ref`` (n_pairs, d), ``coverage`` {level:
    (d,) fraction} and ``n_coverage``. With a ``prior``, coverage counts only pairs whose θ lies
    strictly inside the box: a central interval cannot cover a θ on the boundary (corners)."""
    from cocasbi.inference.posterior import sample_posterior

    shifts, sigmas, inside = [], [], {lv: [] for lv in LEVELS}
    for i, p in enumerate(pairs):
        ref = sample_posterior(posterior, p["x_ref"], n_samples, master_seed, call=i)
        run = sample_posterior(posterior, p["x"], n_samples, master_seed, call=i)
        sigma = ref.std(axis=0)
        shifts.append((ref.mean(axis=0) - run.mean(axis=0)) / sigma)
        sigmas.append(sigma)
        truth = np.asarray(p["theta"], dtype=np.float64)
        if prior is not None and not np.all((truth > prior.low) & (truth < prior.high)):
            continue
        for lv in LEVELS:
            lo, hi = np.quantile(ref, [(1 - lv) / 2, (1 + lv) / 2], axis=0)
            inside[lv].append((truth >= lo) & (truth <= hi))
    n_cov = len(inside[LEVELS[0]])
    coverage = {str(lv): (np.mean(inside[lv], axis=0).tolist() if n_cov else None)
                for lv in LEVELS}
    return {"shift": np.array(shifts), "sigma_ref": np.array(sigmas), "coverage": coverage,
            "n_coverage": n_cov}


def npe_check(cfg, candidate, pairs, prior: BoxPrior, progress: bool = True) -> dict:
    """Train NPE on the configuration under test and measure the shift on every pair."""
    from cocasbi.inference.config import EstimatorConfig, TrainingConfig

    spec = cfg.npe
    master = cfg.design.master_seed
    theta, x = training_set(candidate, prior, spec.n_train, master, progress)
    posterior = train_posterior(theta, x, candidate.names, prior,
                                EstimatorConfig(**spec.estimator),
                                TrainingConfig(**spec.training), master, progress)
    out = posterior_shift(posterior, pairs, spec.n_samples, master, prior)
    x_ref = np.stack([np.asarray(p["x_ref"], dtype=np.float64) for p in pairs])
    misspec = misspecification(x_ref, x, cfg.thresholds.misspecification_alpha, master,
                               spec.n_shuffle)
    return {"shift": out["shift"].tolist(), "sigma_ref": out["sigma_ref"].tolist(),
            "coverage": out["coverage"], "n_coverage": out["n_coverage"],
            "n_train": spec.n_train,
            "n_samples": spec.n_samples, "mean_abs_shift": np.abs(out["shift"]).mean(0).tolist(),
            "misspecification": misspec}
