"""Certify COLA with few steps and COCA with the shipped frame at the same force count.

Setup: ``configs/certify/tiny.yaml`` (tiny.yaml: 32³ particles, 64³ mesh, 64 Mpc/h; reference
PM-100 with FastPM factors; prior Ω_m ∈ [0.2, 0.4], σ8 ∈ [0.65, 0.95]; centre, 4 corners and 2
interior points × 2 held-out seeds; convergence ladder; Fisher bias of log P(k), k <= 0.785
h/Mpc) with the run under test replaced by each entry of ``RUNS``. Writes every report to
OUT_DIR (default output/certify_paper), the plots to docs/figures/certify_<setup>_*.png, and
prints the table of docs/certification.md. ``--setup paper``: paper.yaml (64³ particles, 128³
mesh, 128 Mpc/h) with the V-net frame ``experiments/results/frame_paper_vnet.pt``, on the
centre and the 4 corners with one seed each.

    python experiments/certify_paper.py [--setup tiny|paper] [--runs cola4,coca5] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from cocasbi.certify import certify, load_certify_config, plot_report, write_report
from cocasbi.certify.config import RunSpec

ROOT = Path(__file__).resolve().parents[1]
FIGURES = ROOT / "docs" / "figures"

#: name → run under test. COLA-n evaluates n + 1 forces; COCA on the 10-step schedule with
#: ``even:K`` evaluates K.
RUNS = {
    "cola4": {"method": "cola", "n_steps": 4},
    "coca5": {"method": "coca", "n_steps": 10, "frame": "tiny", "forces": "even:5"},
    "cola10": {"method": "cola", "n_steps": 10},
    "coca11": {"method": "coca", "n_steps": 10, "frame": "tiny", "forces": "all"},
}

#: paper.yaml (64³ particles, 128³ mesh, 128 Mpc/h): the V-net frame on the 20-step schedule.
PAPER_RUNS = {
    "cola4": {"method": "cola", "n_steps": 4},
    "coca5": {"method": "coca", "n_steps": 20, "forces": "even:5",
              "frame": str(ROOT / "experiments" / "results" / "frame_paper_vnet.pt")},
}


def compare_plot(reports: dict, path: Path, title: str) -> None:
    """Worst |P/P_ref − 1| and 1 − r² over the design, every run in one figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for i, rep in enumerate(reports.values()):
        k = np.array(rep.k)
        label = f"{rep.under_test} ({rep.pairs[0]['n_forces']} forces)"
        axes[0].loglog(k, rep.summary["pk_ratio_worst"], "o-", color=f"C{i}", ms=3,
                       label=label)
        axes[1].loglog(k, rep.summary["one_minus_r2_worst"], "o-", color=f"C{i}", ms=3)
    th = {c.name: c.threshold for c in next(iter(reports.values())).checks}
    axes[0].axhline(th["pk_ratio"], color="k", ls="--", lw=1, label="threshold")
    axes[1].axhline(th["one_minus_r2"], color="k", ls="--", lw=1)
    axes[0].set_ylabel(r"worst $|P/P_\mathrm{ref}-1|$ over the design")
    axes[1].set_ylabel(r"worst $1-r^2$ over the design")
    for ax in axes:
        ax.set_xlabel(r"$k$ [$h\,\mathrm{Mpc}^{-1}$]")
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{title}: against PM-100 on the same mesh and initial conditions")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "output" / "certify_paper")
    parser.add_argument("--setup", choices=("tiny", "paper"), default="tiny",
                        help="paper: paper.yaml, centre and corners, one seed each")
    parser.add_argument("--runs", default=None, help="comma-separated names (default: all)")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--npe", type=int, default=0, metavar="N_TRAIN",
                        help="also train NPE on N_TRAIN runs of each configuration (slow); "
                        "figures are then not rewritten")
    args = parser.parse_args()
    base = load_certify_config("tiny")
    runs = RUNS if args.setup == "tiny" else PAPER_RUNS
    if args.npe:
        base = base.model_copy(update={"npe": base.npe.model_copy(
            update={"enabled": True, "n_train": args.npe})})
    if args.setup == "paper":
        base = base.model_copy(update={
            "simulation": "paper",
            "design": base.design.model_copy(update={"n_interior": 0, "n_seeds": 1})})
    reports = {}
    for name in (args.runs.split(",") if args.runs else runs):
        cfg = base.model_copy(update={"name": f"{args.setup}_{name}", "threads": args.threads,
                                      "under_test": RunSpec(**runs[name])})
        report = certify(cfg, progress=True)
        write_report(report, args.out)
        if not args.npe:
            plot_report(report, FIGURES)
        reports[name] = report
        print(report.markdown(), flush=True)
    if not args.npe:
        compare_plot(reports, FIGURES / f"certify_{args.setup}_compare.png", args.setup)
    print("| run | forces | verdict | max abs P ratio-1 | max 1-r^2 | max abs B ratio-1 | "
          "rms dx [Mpc/h] | rms dv [km/s] | Fisher bias (Om, s8) [σ] | s/run |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in reports.values():
        fb = r.fisher["bias_sigma"] if r.fisher else [np.nan, np.nan]
        if r.npe:
            print(f"{r.under_test}: NPE mean |shift| {r.npe['mean_abs_shift']}, worst "
                  f"{r.check('posterior_shift').value:.3f}, coverage {r.npe['coverage']}")
        print(f"| {r.under_test} | {r.pairs[0]['n_forces']} | "
              f"{'pass' if r.passed else 'FAIL ' + ','.join(r.failed)} | "
              f"{r.check('pk_ratio').value:.4f} | {r.check('one_minus_r2').value:.2e} | "
              f"{r.check('bk_ratio').value:.4f} | {r.summary['rms_dx_mean']:.3f} | "
              f"{r.summary['rms_dv_mean']:.1f} | {fb[0]:+.3f}, {fb[1]:+.3f} | "
              f"{r.timing['mean_seconds']:.2f} |")
    (args.out / f"summary_{args.setup}.json").write_text(json.dumps(
        {n: {"passed": r.passed, "failed": r.failed,
             "checks": [c.__dict__ for c in r.checks]} for n, r in reports.items()}, indent=1))


if __name__ == "__main__":
    main()
