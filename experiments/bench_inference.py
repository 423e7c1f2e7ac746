"""NPE benchmarks: training time and sampling throughput vs training-set size, known-answer
accuracy (C2ST, moments) vs training-set size, pipeline stage times (NPE against a Fisher
forecast: experiments/fisher_npe.py).

    python experiments/bench_inference.py timing            # 1k, 5k, 20k simulations
    python experiments/bench_inference.py accuracy          # known answer vs n
    python experiments/bench_inference.py pipeline DIR      # stage times of a finished run
    python experiments/bench_inference.py replot            # redraw the known-answer figure

Numbers go to experiments/results/inference_bench_*.json, plots to docs/figures/inference_*.png.
Timing uses the Gaussian-field model with 9 bins (the default log_pk summary length of
tiny.yaml) and the estimator of configs/inference/tiny.yaml, one torch thread.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from cocasbi.inference.config import EstimatorConfig, TrainingConfig, load_inference_config
from cocasbi.inference.data import from_model
from cocasbi.inference.estimator import make_posterior, torch_threads, train_estimators
from cocasbi.inference.gaussian_field import GaussianFieldModel, simulate_prior
from cocasbi.inference.posterior import sample_posterior
from cocasbi.seeds import simulation_seed

OUT = Path(__file__).resolve().parent.parent / "docs" / "figures"  # plots
RESULTS = Path(__file__).resolve().parent / "results"  # numbers (JSON)


def field_data(model, n, master=1):
    return from_model(model, *simulate_prior(model, n, master))


def timing(sizes=(1000, 5000, 20000), max_epochs=40):
    tiny = load_inference_config("tiny")
    model = GaussianFieldModel(n=16, n_bins=9)
    rows = []
    for n in sizes:
        data = field_data(model, n)
        training = tiny.training.model_copy(update={"max_epochs": max_epochs,
                                                    "batch_size": 200})
        t0 = time.perf_counter()
        members = train_estimators(data, tiny.estimator, training, 1, progress=False)
        t_train = time.perf_counter() - t0
        post = make_posterior([m.net for m in members], data.prior.to_sbi())
        x = model([1.1], 12345)
        with torch_threads(1):
            sample_posterior(post, x, 100, 1)
            t0 = time.perf_counter()
            sample_posterior(post, x, 10000, 1)
            t_sample = time.perf_counter() - t0
            xs = torch.as_tensor(np.stack([model([1.1], 100 + i) for i in range(100)]))
            t0 = time.perf_counter()
            post.sample_batched((1000,), x=xs, show_progress_bars=False)
            t_batched = time.perf_counter() - t0
        epochs = members[0].summary["epochs"]
        rows.append({"n": n, "train_s": t_train, "epochs": epochs,
                     "s_per_epoch": t_train / epochs,
                     "samples_per_s": 10000 / t_sample,
                     "batched_samples_per_s": 100 * 1000 / t_batched})
        print(json.dumps(rows[-1]), flush=True)
    (RESULTS / "inference_bench_timing.json").write_text(json.dumps(rows, indent=1))


def accuracy(sizes=(250, 500, 1000, 2000, 5000), models=("mdn", "nsf"), n_obs=3):
    from sbi.utils.metrics import c2st

    model = GaussianFieldModel(n=4, n_bins=2)
    rows = []
    for est in models:
        for n in sizes:
            data = field_data(model, n)
            cfg = EstimatorConfig(model=est, embedding="none")
            members = train_estimators(data, cfg, TrainingConfig(batch_size=100,
                                                                 learning_rate=1e-3),
                                       2, progress=False)
            post = make_posterior([m.net for m in members], data.prior.to_sbi())
            rng = np.random.default_rng(5)
            acc, dmean, dstd = [], [], []
            for j, a in enumerate(np.linspace(0.7, 1.7, n_obs)):
                x = model([a], simulation_seed(99, j))
                s = sample_posterior(post, x, 3000, 7, call=j)
                ex = model.exact_posterior(x)
                mean, std = ex.moments()
                ref = torch.as_tensor(ex.sample(3000, rng), dtype=torch.float32)
                acc.append(float(c2st(torch.as_tensor(s, dtype=torch.float32), ref)))
                dmean.append(abs(s.mean() - mean) / std)
                dstd.append(abs(s.std() / std - 1))
            rows.append({"estimator": est, "n": n, "c2st": float(np.mean(acc)),
                         "c2st_max": float(np.max(acc)), "mean_err_sigma": float(np.mean(dmean)),
                         "std_rel_err": float(np.mean(dstd)),
                         "epochs": members[0].summary["epochs"]})
            print(json.dumps(rows[-1]), flush=True)
    (RESULTS / "inference_bench_accuracy.json").write_text(json.dumps(rows, indent=1))
    plot_accuracy(rows)


def plot_accuracy(rows):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(11, 3.2))
    for est in sorted({r["estimator"] for r in rows}):
        rr = [r for r in rows if r["estimator"] == est]
        n = [r["n"] for r in rr]
        axes[0].plot(n, [r["c2st"] for r in rr], "o-", label=est)
        axes[1].plot(n, [r["mean_err_sigma"] for r in rr], "o-", label=est)
        axes[2].plot(n, [r["std_rel_err"] for r in rr], "o-", label=est)
    axes[0].axhline(0.5, color="0.5", lw=1)
    axes[0].axhline(0.6, color="C3", lw=1, ls="--")
    for ax, lab in zip(axes, ("C2ST accuracy", "|Δmean| / σ_exact", "|σ/σ_exact − 1|"),
                       strict=True):
        ax.set_xscale("log")
        sizes = sorted({r["n"] for r in rows})
        ax.set_xticks(sizes, [str(n) for n in sizes])
        ax.minorticks_off()
        ax.set_xlabel("training simulations")
        ax.set_ylabel(lab)
    axes[0].legend()
    fig.suptitle("NPE vs the exact Gaussian-field posterior (mean of 3 observations)",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(OUT / "inference_known_answer.png", dpi=110)


def replot():
    """Redraw the known-answer figure from its JSON."""
    plot_accuracy(json.loads((RESULTS / "inference_bench_accuracy.json").read_text()))


def pipeline(directory):
    s = json.loads((Path(directory) / "summary.json").read_text())
    print(json.dumps({"timings_s": s["timings_s"], "reused": s["reused"],
                      "verdict": (s["diagnostics"] or {}).get("verdict")}, indent=1))


if __name__ == "__main__":
    what = sys.argv[1] if len(sys.argv) > 1 else "timing"
    {"timing": timing, "accuracy": accuracy, "pipeline": pipeline, "replot": replot}[what](
        *sys.argv[2:])
