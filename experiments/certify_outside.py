"""Forces needed to pass: COCA with the shipped tiny frame outside its training range.

The tiny frame (``load_frame("tiny")``) was trained at the fiducial cosmology only. At the
prior centre, two prior corners and one cosmology beyond the default prior, the convergence
ladder of ``configs/certify/tiny.yaml`` (reference PM-100 with FastPM factors, first held-out
seed, thresholds 1 % on |P/P_ref − 1| and 1 − r² for k <= 0.785 h/Mpc) is run for COCA on a
40-step schedule with ``even:K`` forces and for COLA with n steps (n + 1 forces), and the
smallest force count at which both thresholds pass is reported (``forces_to_pass``). Writes
OUT_DIR/outside.json, docs/figures/certify_outside.png and prints the table of
docs/certification.md. A few minutes on 2 cores.

    python experiments/certify_outside.py [--threads 1] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from cocasbi.certify import load_certify_config
from cocasbi.certify.run import convergence_ladder

ROOT = Path(__file__).resolve().parents[1]
FIGURES = ROOT / "docs" / "figures"

#: (Ω_m, σ8): the training cosmology, two prior corners, one point beyond the prior.
COSMOLOGIES = {"fiducial": (0.3, 0.8), "corner low": (0.2, 0.65),
               "corner high": (0.4, 0.95), "beyond": (0.45, 1.0)}
#: run under test → its ladder (forces for COCA ``even:K``, steps for COLA).
RUNS = {
    "COCA-40 (tiny frame)": ({"method": "coca", "n_steps": 40, "frame": "tiny",
                              "forces": "even:5"}, [2, 3, 5, 10, 15, 20, 30, 41]),
    "COLA": ({"method": "cola", "n_steps": 10}, [2, 4, 5, 10, 15, 20, 30, 40]),
}


def plot(results: dict, path: Path, threshold: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from cocasbi.io.atomic import save_figure

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharex=True)
    for i, (cosmo, runs) in enumerate(results.items()):
        for (run, ladder), style in zip(runs.items(), ("o-", "s--"), strict=True):
            label = f"{run.split(' ')[0]} {cosmo} {tuple(COSMOLOGIES[cosmo])}"
            axes[0].loglog(ladder["n_forces"], ladder["pk_ratio"], style, color=f"C{i}",
                           ms=4, label=label)
            axes[1].loglog(ladder["n_forces"], np.maximum(ladder["one_minus_r2"], 1e-9),
                           style, color=f"C{i}", ms=4)
    for ax, name in zip(axes, ("max $|P/P_\\mathrm{ref}-1|$", "max $1-r^2$"), strict=True):
        ax.axhline(threshold, color="k", lw=1, ls=":")
        ax.set_xlabel("force evaluations")
        ax.set_xticks([2, 3, 5, 10, 20, 40], ["2", "3", "5", "10", "20", "40"])
        ax.minorticks_off()
        ax.set_ylabel(name + r", $k \leq 0.785\,h\,\mathrm{Mpc}^{-1}$")
    axes[0].legend(fontsize=7)
    fig.suptitle("tiny frame (trained at the fiducial cosmology): COCA (o, solid) vs COLA "
                 "(s, dashed) against PM-100", fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "output" / "certify_outside")
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()
    base = load_certify_config("tiny")
    results = {}
    for cosmo, theta in COSMOLOGIES.items():
        results[cosmo] = {}
        for run, (spec, levels) in RUNS.items():
            cfg = base.model_copy(update={
                "under_test": base.under_test.model_validate(spec), "threads": args.threads,
                "convergence": base.convergence.model_copy(update={"levels": levels})})
            ladder = convergence_ladder(cfg, theta, progress=False)
            results[cosmo][run] = ladder
            need = ladder["forces_to_pass"]
            print(f"{cosmo} {theta} {run}: forces {ladder['n_forces']} pk "
                  f"{np.round(ladder['pk_ratio'], 4).tolist()} 1-r2 "
                  f"{np.array(ladder['one_minus_r2']).round(5).tolist()} -> "
                  f"{need['n_forces']} (stable {need['stable']})", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "outside.json").write_text(json.dumps(results, indent=1, default=float))
    plot(results, FIGURES / "certify_outside.png", base.thresholds.pk_ratio)
    print("| cosmology (Ω_m, σ8) | " + " | ".join(f"{r}: forces to pass" for r in RUNS) + " |")
    print("| --- |" + " --- |" * len(RUNS))
    for cosmo, runs in results.items():
        cells = [str(ld["forces_to_pass"]["n_forces"] or "none within the ladder")
                 for ld in runs.values()]
        print(f"| {cosmo} {COSMOLOGIES[cosmo]} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
