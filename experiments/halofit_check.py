"""Non-linear P(k) of paper.yaml COLA-20 runs against CAMB's halofit boost.

For each seed, the measured P(k) at a = 1 is divided by the P(k) of the run's own linear
field (so cosmic variance of the phases cancels) and compared with halofit's P_nl / P_lin
from CAMB for the same cosmology. Writes docs/figures/halofit.png.

    python experiments/halofit_check.py [--seeds 1 2 3]
"""

import argparse
from pathlib import Path

import numpy as np

from cocasbi.config import load_config
from cocasbi.ic import linear_field_modes
from cocasbi.simulation import simulate
from cocasbi.stats.power import power_spectrum


def halofit_boost(cosmo, k):
    """P_nl / P_lin from CAMB (halofit, Takahashi 2012) at z = 0, k in [h/Mpc]."""
    import camb

    h = cosmo.h
    pars = camb.set_params(H0=100 * h, ombh2=cosmo.Omega_b * h * h,
                           omch2=(cosmo.Omega_m - cosmo.Omega_b) * h * h, ns=cosmo.n_s,
                           As=2.1e-9, mnu=0.0, WantTransfer=True, kmax=10.0)
    pars.set_matter_power(redshifts=[0.0], kmax=10.0)
    spectra = {}
    for name, model in (("nl", camb.model.NonLinear_both), ("lin", camb.model.NonLinear_none)):
        pars.NonLinear = model
        kh, _, pk = camb.get_results(pars).get_matter_power_spectrum(minkh=1e-3, maxkh=5.0,
                                                                     npoints=400)
        spectra[name] = pk[0]
    return np.interp(k, kh, spectra["nl"] / spectra["lin"])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--out", type=Path, default=Path("docs/figures/halofit.png"))
    args = parser.parse_args()
    cfg = load_config("paper")
    sim = cfg.simulation
    ratios = []
    for seed in args.seeds:
        res = simulate(cfg, seed=seed)
        delta = np.fft.irfftn(linear_field_modes(sim.n_particles, sim.box_size, res.cosmology,
                                                 seed), s=(sim.n_particles,) * 3, axes=(0, 1, 2))
        lin = power_spectrum(delta, sim.box_size, compensate=False)
        ps = power_spectrum(res.final.positions, sim.box_size, n_mesh=sim.n_mesh,
                            kmax=lin.k_edges[-1])
        ratios.append(ps.power / lin.power)
    k, ratio = ps.k, np.mean(ratios, axis=0)
    boost = halofit_boost(res.cosmology, k)
    print(f"{'k [h/Mpc]':>10} {'COLA-20 / linear':>17} {'halofit':>8} {'ratio':>6}")
    for i in range(0, len(k), 2):
        print(f"{k[i]:10.3f} {ratio[i]:17.3f} {boost[i]:8.3f} {ratio[i] / boost[i]:6.3f}")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4))
    ax.semilogx(k, ratio, "o", ms=3, label=f"COLA-20, paper.yaml, {len(args.seeds)} seeds")
    ax.semilogx(k, boost, "k-", label="halofit (CAMB)")
    ax.set_xlabel(r"$k$ [$h\,\mathrm{Mpc}^{-1}$]")
    ax.set_ylabel(r"$P(k)/P_\mathrm{lin}(k)$ at $a=1$")
    ax.legend()
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=120)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
