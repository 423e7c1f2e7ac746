"""An NPE posterior against a Fisher forecast and against many data sets at the truth.

    python experiments/fisher_npe.py DIR [DIR ...] [--n-cov 300] [--n-der 8] [--step 0.05]
                                     [--n-ref 60 --ref-method pm --ref-steps 40]
                                     [--learning-curve 350,700] [--theta 0.25,0.75 --tag T]

DIR is a finished ``cocasbi infer pipeline`` directory of a campaign job (the first one's
campaign configuration defines the forward model; further DIRs, e.g. an ensemble trained on
the same campaign, are compared against the same simulations). At the job's true θ it runs

* ``n_cov`` simulations with held-out seeds (``Stream.CERTIFY``, offset 100000): their sample
  covariance (Hartlap-corrected) is C;
* central differences of ``step`` prior widths on ``n_der`` seeds shared by both sides
  (offset 200000): J = dμ/dθ;

and reports σ_F = sqrt(diag F⁻¹), F = Jᵀ C⁻¹ J; the same Gaussian cut by the prior box
(centred at the truth, and averaged over centres drawn from N(truth, F⁻¹), where data sets
put it), with the bias at the truth of that ideal posterior's mean; and, for every DIR, the
NPE posterior of each of the ``n_cov`` data sets: its mean width (to compare with the
forecast), the scatter of its means across data sets (equal to the width for a calibrated
posterior whose prior is not cutting), the bias of those means and the fraction of
68 %/95 % intervals that hold the truth. Those data sets come from the very forward model the
estimator was trained on, so this tests the estimator, not the model. With ``--n-ref``, the
first ``n_ref`` of those seeds are also run with the reference method (the mock
observation's, e.g. PM with 40 steps): the mean paired shift of the NPE means, reference −
trained model, in posterior σ, is the bias that the trained model's error puts into a
posterior of reference-like data. Simulations run on ``--workers`` processes of one thread
each. ``--learning-curve`` retrains the first DIR's estimator (one network) on the first n
of its training runs and measures it the same way. Numbers go to
experiments/results/fisher_npe_<tag>.json and the figure to
docs/figures/fisher_npe_<tag>.png (tag: ``--tag``, default the job's name).
"""

from __future__ import annotations

import argparse
import json
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from cocasbi.campaign.config import load_campaign_config
from cocasbi.certify.fisher import finite_difference_jacobian, hartlap_precision
from cocasbi.certify.run import COVARIANCE_SEEDS, DERIVATIVE_SEEDS, certification_seeds
from cocasbi.forward import ForwardModel
from cocasbi.inference.checkpoint import Checkpoint, load_checkpoint
from cocasbi.inference.data import training_set
from cocasbi.inference.estimator import train_estimators
from cocasbi.inference.observation import reference_model
from cocasbi.inference.pipeline import split_held_out
from cocasbi.inference.posterior import sample_posterior
from cocasbi.threads import configure_process

RESULTS = Path(__file__).resolve().parent / "results"
FIGURES = Path(__file__).resolve().parent.parent / "docs" / "figures"
_MODEL = None


def forward_model(campaign_yaml: str, method: str | None = None,
                  n_steps: int | None = None) -> ForwardModel:
    """The campaign's forward model, or its reference run (another method and step count),
    one thread per simulation."""
    spec = load_campaign_config(campaign_yaml).forward
    if method is None:
        return ForwardModel.from_spec(spec, threads=1)
    return reference_model(spec, method, n_steps, threads=1)


def _start_worker(campaign_yaml: str, method, n_steps) -> None:
    global _MODEL
    configure_process(1)
    _MODEL = forward_model(campaign_yaml, method, n_steps)


def _simulate(task):
    theta, seed = task
    return np.asarray(_MODEL(theta, seed), dtype=np.float64)


def simulate_all(campaign_yaml: Path, tasks, workers: int, desc: str, method=None,
                 n_steps=None) -> np.ndarray:
    ctx = get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_start_worker,
                             initargs=(str(campaign_yaml), method, n_steps)) as pool:
        return np.stack(list(tqdm(pool.map(_simulate, tasks), total=len(tasks), desc=desc,
                                  unit="sim")))


def boxed_gaussian(centre, cov, low, high, n=400_000, seed=0, moments=False):
    """Marginal stds and the correlation of N(centre, cov) cut by the box [low, high]
    (and its mean, with ``moments``)."""
    draws = np.random.default_rng(seed).multivariate_normal(centre, cov, size=n)
    draws = draws[np.all((draws >= low) & (draws <= high), axis=1)]
    out = draws.std(axis=0), float(np.corrcoef(draws.T)[0, 1]) if len(centre) == 2 else None
    return (*out, draws.mean(axis=0)) if moments else out


def npe_at_truth(posterior, x_sets, truth, master_seed: int, n_samples: int,
                 desc: str) -> dict:
    """The NPE posterior of each data set at the truth: widths, scatter, bias, coverage.
    Data set j is sampled with the same random numbers whatever the data (call 500000 + j)."""
    means, stds, corrs, in68, in95 = [], [], [], [], []
    for j, x in enumerate(tqdm(x_sets, desc=desc, unit="x")):
        s = sample_posterior(posterior, x.astype(np.float32), n_samples, master_seed,
                             call=500_000 + j)
        means.append(s.mean(axis=0))
        stds.append(s.std(axis=0))
        if len(truth) == 2:
            corrs.append(np.corrcoef(s.T)[0, 1])
        lo68, hi68 = np.percentile(s, [16, 84], axis=0)
        lo95, hi95 = np.percentile(s, [2.5, 97.5], axis=0)
        in68.append((lo68 <= truth) & (truth <= hi68))
        in95.append((lo95 <= truth) & (truth <= hi95))
    means, stds = np.array(means), np.array(stds)
    n = len(x_sets)
    return {"means": means, "mean_std": stds.mean(axis=0).tolist(),
            "scatter_of_means": means.std(axis=0, ddof=1).tolist(),
            "bias": (means.mean(axis=0) - truth).tolist(),
            "bias_error": (means.std(axis=0, ddof=1) / np.sqrt(n)).tolist(),
            "coverage_68": np.mean(in68, axis=0).tolist(),
            "coverage_95": np.mean(in95, axis=0).tolist(),
            "mean_correlation": float(np.mean(corrs)) if corrs else None}


def learning_curve(directory: Path, n_test: int, sizes, x_sets, truth, master_seed: int,
                   n_samples: int, sigma_boxed) -> dict:
    """One network trained, as the job trains it, on the first n training runs, per n."""
    ckpt = load_checkpoint(directory / "estimator.pt")
    train, _ = split_held_out(training_set(directory / "campaign" / "campaign.h5"), n_test, 2)
    training = ckpt.training.model_copy(update={"ensemble": 1})
    out = {}
    for n in sizes:
        t0 = time.perf_counter()
        members = train_estimators(train.subset(np.arange(n)), ckpt.estimator, training,
                                   master_seed, progress=False)
        seconds = time.perf_counter() - t0
        posterior = Checkpoint(ckpt.estimator, training, ckpt.prior, ckpt.names, ckpt.k,
                               members, {}).posterior()
        res = npe_at_truth(posterior, x_sets, truth, master_seed, n_samples, f"n = {n}")
        res.pop("means")
        res["ratio_to_fisher_in_prior_scattered_centre"] = (np.array(res["mean_std"])
                                                            / sigma_boxed).tolist()
        res["epochs"], res["train_s"] = members[0].summary["epochs"], round(seconds, 1)
        out[str(n)] = res
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("dirs", nargs="+", type=Path)
    ap.add_argument("--n-cov", type=int, default=300)
    ap.add_argument("--n-der", type=int, default=8)
    ap.add_argument("--step", type=float, default=0.05, help="in prior widths")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--n-samples", type=int, default=2000)
    ap.add_argument("--n-ref", type=int, default=0, help="seeds also run with the reference")
    ap.add_argument("--ref-method", default="pm")
    ap.add_argument("--ref-steps", type=int, default=40)
    ap.add_argument("--learning-curve", default="", help="training-set sizes, e.g. 350,700")
    ap.add_argument("--tag", default=None, help="name of the outputs (default: the job's)")
    ap.add_argument("--theta", default="", help="measure at this θ, e.g. 0.25,0.75, instead "
                    "of the mock's truth")
    args = ap.parse_args(argv)

    first = args.dirs[0]
    summary = json.loads((first / "summary.json").read_text())
    campaign_yaml = first / "campaign" / "campaign.yaml"
    ccfg = load_campaign_config(campaign_yaml)
    names = list(ccfg.prior)
    low = np.array([ccfg.prior[p][0] for p in names], dtype=np.float64)
    high = np.array([ccfg.prior[p][1] for p in names], dtype=np.float64)
    truth = np.array([summary["posterior"]["parameters"][p]["truth"] for p in names])
    if args.theta:  # another point of the prior instead of the mock's truth
        truth = np.array([float(v) for v in args.theta.split(",")])
    master = int(ccfg.master_seed)

    cov_seeds = certification_seeds(master, args.n_cov, COVARIANCE_SEEDS)
    steps = args.step * (high - low)
    der_seeds = certification_seeds(master, args.n_der, DERIVATIVE_SEEDS)
    at = f"_at_{args.theta}" if args.theta else ""
    cache = first / (f"fisher_npe_sims_{args.n_cov}_{args.n_der}_{args.step:g}_{args.n_ref}_"
                     f"{args.ref_method}{args.ref_steps}{at}.npz")
    if cache.is_file():  # the simulations of an earlier call with the same arguments
        with np.load(cache) as f:
            x_cov, jac, x_ref = f["x_cov"], f["jac"], f["x_ref"] if args.n_ref else None
            t_sim = float(f["seconds"])
    else:
        t0 = time.perf_counter()
        x_cov = simulate_all(campaign_yaml, [(truth, s) for s in cov_seeds], args.workers,
                             "covariance")
        jac = finite_difference_jacobian(
            None, truth, steps, der_seeds,
            run_all=lambda runs: simulate_all(campaign_yaml, runs, args.workers, "derivatives"))
        x_ref = None
        if args.n_ref:
            x_ref = simulate_all(campaign_yaml, [(truth, s) for s in cov_seeds[:args.n_ref]],
                                 args.workers, "reference", args.ref_method, args.ref_steps)
        t_sim = time.perf_counter() - t0
        np.savez(cache, x_cov=x_cov, jac=jac, seconds=t_sim,
                 **({"x_ref": x_ref} if x_ref is not None else {}))
    precision = hartlap_precision(x_cov)
    fisher = jac.T @ precision @ jac
    cov_theta = np.linalg.inv(fisher)
    sigma_f = np.sqrt(np.diag(cov_theta))
    boxed_std, boxed_corr = boxed_gaussian(truth, cov_theta, low, high)
    # where a data set puts the Gaussian's centre scatters by F^-1 too: average over centres
    rng = np.random.default_rng(1)
    centres = rng.multivariate_normal(truth, cov_theta, size=2000)  # bias error ~0.02 σ
    cut = [boxed_gaussian(c, cov_theta, low, high, n=20_000, seed=j, moments=True)
           for j, c in enumerate(centres)]
    boxed_avg = np.mean([c[0] for c in cut], axis=0)
    # the bias at the truth of the posterior mean of that ideal (Gaussian-likelihood) posterior
    ideal_bias = (np.mean([c[2] for c in cut], axis=0) - truth) / boxed_avg

    out = {"job": summary["name"], "parameters": names, "truth": truth.tolist(),
           "n_summaries": int(x_cov.shape[1]), "n_cov": args.n_cov, "n_der": args.n_der,
           "step_prior_widths": args.step, "simulation_s": round(t_sim, 1),
           "reference": {"method": args.ref_method, "n_steps": args.ref_steps,
                         "n": args.n_ref} if args.n_ref else None,
           "fisher": {"sigma": sigma_f.tolist(),
                      "correlation": float(cov_theta[0, 1] / (sigma_f[0] * sigma_f[1]))
                      if len(names) == 2 else None,
                      "sigma_in_prior": boxed_std.tolist(), "correlation_in_prior": boxed_corr,
                      "sigma_in_prior_scattered_centre": boxed_avg.tolist(),
                      "ideal_posterior_mean_bias_sigma": ideal_bias.tolist()},
           "npe": {}}
    npe_means = {}
    for directory in args.dirs:
        job = json.loads((directory / "summary.json").read_text())
        posterior = load_checkpoint(directory / "estimator.pt").posterior()
        res = npe_at_truth(posterior, x_cov, truth, master, args.n_samples, directory.name)
        means = res.pop("means")
        members = len(job["training"])
        label = "NPE" if members == 1 else f"NPE, ensemble of {members}"
        npe_means[label] = (means, np.array(res["mean_std"]))
        if x_ref is not None:
            ref = npe_at_truth(posterior, x_ref, truth, master, args.n_samples,
                               f"{directory.name} reference")
            shift = (ref.pop("means") - means[:args.n_ref]) / np.array(ref["mean_std"])
            res["reference"] = {**ref, "paired_shift_sigma": shift.mean(axis=0).tolist(),
                                "paired_shift_sigma_error": (shift.std(axis=0, ddof=1)
                                                             / np.sqrt(args.n_ref)).tolist()}
        res["observation"] = {p: {k: job["posterior"]["parameters"][p][k]
                                  for k in ("mean", "std", "truth_percentile")} for p in names}
        res["n_train"] = job["n_train"]
        res["ensemble"] = members
        res["ratio_to_fisher_in_prior"] = (np.array(res["mean_std"]) / boxed_std).tolist()
        res["ratio_to_fisher_in_prior_scattered_centre"] = (np.array(res["mean_std"])
                                                            / boxed_avg).tolist()
        out["npe"][str(directory)] = res
    if args.learning_curve:
        out["learning_curve"] = learning_curve(
            first, summary["n_test"], [int(n) for n in args.learning_curve.split(",")], x_cov,
            truth, master, args.n_samples, boxed_avg)
    print(json.dumps(out, indent=1))
    tag = args.tag or summary["name"]
    (RESULTS / f"fisher_npe_{tag}.json").write_text(json.dumps(out, indent=1))
    if len(names) == 2:
        plot(FIGURES / f"fisher_npe_{tag}.png", names, truth, cov_theta, low, high,
             sigma_f, boxed_avg, npe_means)


def plot(path, names, truth, cov_theta, low, high, sigma_f, sigma_boxed, npe):
    """Left: NPE means of the data sets at the truth against the Fisher ellipses (1σ, 2σ) and
    the prior box; right: the widths side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Ellipse, Rectangle

    from cocasbi.io.atomic import save_figure

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(10, 4.3))
    vals, vecs = np.linalg.eigh(cov_theta)
    angle = np.degrees(np.arctan2(vecs[1, -1], vecs[0, -1]))
    for chi2, ls in ((2.30, "-"), (6.18, "--")):  # 68 % and 95 % of a 2-d Gaussian
        w, h = 2 * np.sqrt(chi2 * vals[::-1])
        ax.add_patch(Ellipse(truth, w, h, angle=angle, fill=False, color="k", ls=ls))
    ax.add_patch(Rectangle(low, *(high - low), fill=False, color="grey", lw=2))
    for (label, (means, _)), colour in zip(npe.items(), ("C0", "C1", "C2"), strict=False):
        ax.plot(means[:, 0], means[:, 1], ".", ms=3, color=colour, alpha=0.6,
                label=f"{label}: posterior means")
    ax.plot(*truth, "r*", ms=12, label="truth")
    ax.plot([], [], "k-", label="Fisher 68 % / 95 %")
    ax.set(xlabel=names[0], ylabel=names[1], xlim=(low[0] - 0.02, high[0] + 0.02),
           ylim=(low[1] - 0.02, high[1] + 0.02),
           title=f"{len(next(iter(npe.values()))[0])} data sets at the truth")
    ax.legend(fontsize=7, loc="lower left")
    bars = {"Fisher": sigma_f, "Fisher cut by the prior": sigma_boxed}
    bars.update({f"{label}: mean width": std for label, (_, std) in npe.items()})
    x = np.arange(len(names))
    for i, (label, sig) in enumerate(bars.items()):
        bx.bar(x + (i - (len(bars) - 1) / 2) * 0.8 / len(bars), sig, 0.8 / len(bars),
               label=label)
    bx.set_xticks(x, names)
    bx.set_ylabel("posterior standard deviation")
    bx.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)


if __name__ == "__main__":
    main()
