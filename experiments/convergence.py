"""Convergence of PM (standard / FastPM factors) and COLA with the number of steps.

Reference: PM (FastPM factors) with many steps on the same mesh and initial conditions.
Prints the rms position error [Mpc/h] and writes docs/figures/convergence.png.

    python experiments/convergence.py [--n-ref 400]
"""

import argparse
from pathlib import Path

import numpy as np

from cocasbi.config import load_config
from cocasbi.simulation import simulate
from cocasbi.stats.metrics import paired_metrics

STEPS = (5, 10, 20, 40, 80)
RUNS = (("pm", "standard"), ("pm", "fastpm"), ("cola", "standard"))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-ref", type=int, default=400)
    parser.add_argument("--out", type=Path, default=Path("docs/figures/convergence.png"))
    args = parser.parse_args()
    # the independent prototype's setup: 32³ particles on a 64³ mesh in 128 Mpc/h
    cfg = load_config("tiny").replace(simulation={"box_size": 128.0})
    ref = simulate(cfg.replace(simulation={"method": "pm", "n_steps": args.n_ref}))
    table = {}
    for method, factors in RUNS:
        for steps in STEPS:
            sim = {"method": method, "pm_factors": factors, "n_steps": steps}
            x = simulate(cfg.replace(simulation=sim), lpt=ref.lpt).final.positions
            m = paired_metrics(x, ref.final.positions, 128.0, 64, kmax=0.5)
            table[method, factors, steps] = (float(m["rms_dx"]), float(np.max(m["one_minus_r2"])),
                                             float(np.max(np.abs(m["pk_ratio"]))))
    print(f"rms position error [Mpc/h] against PM-{args.n_ref} (FastPM factors), "
          "max 1-r^2 and max |P/P_ref-1| for k <= 0.5 h/Mpc")
    print(f"{'method':16s}" + "".join(f"{s:>24d}" for s in STEPS))
    for method, factors in RUNS:
        cells = "".join(f"{table[method, factors, s][0]:8.4f} {table[method, factors, s][1]:7.1e}"
                        f" {table[method, factors, s][2]:6.3f}" for s in STEPS)
        print(f"{method + '/' + factors:16s}{cells}")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4))
    for method, factors in RUNS:
        ax.loglog(STEPS, [table[method, factors, s][0] for s in STEPS], "o-",
                  label=f"{method.upper()} ({factors})")
    ax.set_xticks(STEPS, [str(s) for s in STEPS])
    ax.minorticks_off()
    ax.set_xlabel("number of steps")
    ax.set_ylabel(f"rms position error vs PM-{args.n_ref} [Mpc/h]")
    ax.set_title(r"$32^3$ particles, $64^3$ mesh, $L=128\,h^{-1}$Mpc")
    ax.legend()
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=120)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
