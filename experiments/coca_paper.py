"""COCA on paper.yaml: emulation only, COCA and COLA against the number of force evaluations.

Setup (see docs/coca.md):

* training: ``N_TRAIN`` COLA-20 runs of paper.yaml (64³ particles, 128 Mpc/h, 128³ mesh),
  ICs from ``SeedSequence(1, spawn_key=(i,))``, made with ``cocasbi frame make-data``;
  frame = SVD time basis (K = 4) + transfer functions (degree 0: the fiducial cosmology only);
* test: held-out seeds ``SeedSequence(2, spawn_key=(i,))`` (frame error on the stored
  ``paper_test`` files; N-body comparison on the first ``N_TEST`` of them);
* reference: FastPM-factor PM with ``N_REF`` steps, same ICs and mesh;
* runs, all without the force at a = 1 (``final_kick=False``, positions only): COLA with
  n = 1, 2, 4, 8, 20 steps (n forces); COCA on the 20-step schedule with n forces evenly
  spaced over boundaries 0 … 19 (n = 0: pure emulation); the zero frame with no force (2LPT);
* metrics at a = 1: P(k)/P_ref − 1 and 1 − r(k)² (CIC-compensated, 128³ mesh), rms position
  error [Mpc/h], wall time on this machine (ICs + model + stepping);
* robustness: the same frame on a cosmology outside its training set.

    python experiments/coca_paper.py DATA_DIR TEST_DIR [OUT_DIR]
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

from cocasbi.config import load_config
from cocasbi.frame.emulator import FrameEmulator, load_frame
from cocasbi.frame.training.basis import truncation_error
from cocasbi.frame.training.data import list_samples, read_sample
from cocasbi.frame.training.transfer import fit_basis_and_transfer
from cocasbi.frame.transfer import CosmologyFeatures
from cocasbi.nbody import force_schedule
from cocasbi.seeds import simulation_seed as ic_seed
from cocasbi.simulation import simulate
from cocasbi.stats.metrics import paired_metrics

K, N_REF, N_TEST = 4, 100, 2
FORCES = (0, 1, 2, 4, 8, 20)
OOD = {"Omega_m": 0.40, "sigma8": 0.95}
ROOT = Path(__file__).resolve().parents[1]


def train_frame(data_dir: Path, out: Path):
    """Basis + transfer functions in one pass over the training files (cached in ``out``)."""
    paths = list_samples(data_dir)
    t0 = time.perf_counter()
    basis_all, basis, model = fit_basis_and_transfer(paths, K, CosmologyFeatures(degree=0))
    fit_s = time.perf_counter() - t0
    emu = FrameEmulator("transfer", basis, model,
                        {"config": "paper", "n_train_sims": len(paths), "K": K})
    emu.save(out)
    np.savez(out.with_name("basis_all.npz"), **basis_all.to_dict())
    info = {"n_train": len(paths), "fit_seconds": fit_s,
            "captured_fraction": basis_all.captured_fraction()[:8].tolist()}
    return emu, info, basis_all


def frame_errors(emu: FrameEmulator, basis_all, test_paths) -> dict:
    """Fractional errors of p_ML against the stored COLA residual on held-out files."""
    out = {"transfer_all": [], "transfer_final": [], "truncation": []}
    for p in test_paths:
        s = read_sample(p)
        r = s.residual.reshape(len(s.times), -1, 3).astype(np.float64)
        c = emu.model.predict(s.psi1.reshape(-1, 3), s.psi2.reshape(-1, 3), s.box_size,
                              s.cosmology)
        pred = np.tensordot(emu.basis.functions.T, c, axes=(1, 0))
        out["transfer_all"].append(float(np.sqrt(((pred - r) ** 2).sum() / (r**2).sum())))
        out["transfer_final"].append(
            float(np.sqrt(((pred[-1] - r[-1]) ** 2).sum() / (r[-1] ** 2).sum())))
        out["truncation"].append(truncation_error(basis_all, r, [1, 2, 3, 4, 6, 8]))
    return out


def metrics(res, ref, box, n_mesh) -> dict:
    m = paired_metrics(res.final.positions, ref.final.positions, box, n_mesh)
    return {"k": m["k"].tolist(), "ratio": m["pk_ratio"].tolist(),
            "one_minus_r2": m["one_minus_r2"].tolist(), "rms_dx": float(m["rms_dx"])}


def run_seed(cfg, emu, seed) -> dict:
    sim = cfg.simulation
    t0 = time.perf_counter()
    ref = simulate(cfg.replace(simulation={"method": "pm", "n_steps": N_REF,
                                           "final_kick": False}), seed=seed)
    out = {"ref_seconds": time.perf_counter() - t0, "cola": {}, "coca": {}}
    box, nm = sim.box_size, sim.n_mesh
    lpt = simulate(cfg.replace(simulation={"method": "coca", "final_kick": False}), seed=seed,
                   frame=_Zero(sim.n_particles), forces="none")
    out["lpt"] = {**metrics(lpt, ref, box, nm), "seconds": lpt.wall_time, "forces": 0}
    for n in FORCES[1:]:
        r = simulate(cfg.replace(simulation={"n_steps": n, "final_kick": False}), seed=seed)
        out["cola"][n] = {**metrics(r, ref, box, nm), "seconds": r.wall_time,
                          "forces": r.n_force_evaluations}
    coca_cfg = cfg.replace(simulation={"final_kick": False})
    for n in FORCES:
        r = simulate(coca_cfg.replace(simulation={"method": "coca"}), frame=emu, seed=seed,
                     forces=force_schedule(f"even:{n}", sim.n_steps, final_kick=False))
        out["coca"][n] = {**metrics(r, ref, box, nm), "seconds": r.wall_time,
                          "frame_seconds": r.frame_seconds, "forces": r.n_force_evaluations}
    return out


class _Zero:
    def __init__(self, n):
        self.z = np.zeros((n**3, 3))

    def residual_momentum(self, a):
        return self.z


def summary_number(entry, kmax=0.5):
    k = np.array(entry["k"])
    sel = k <= kmax
    return (float(np.max(np.abs(np.array(entry["ratio"])[sel]))),
            float(np.max(np.array(entry["one_minus_r2"])[sel])))


def plot(results: dict, out_dir: Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig_dir = out_dir
    fig_dir.mkdir(parents=True, exist_ok=True)
    for tag, runs in (("fiducial", results["seeds"][0]), ("ood", results.get("ood"))):
        if runs is None:
            continue
        fig, ax = plt.subplots(1, 2, figsize=(11, 4.2))
        cmap = plt.get_cmap("viridis")
        for i, n in enumerate(FORCES):
            col = cmap(i / (len(FORCES) - 1))
            e = runs["coca"][str(n)] if str(n) in runs["coca"] else runs["coca"][n]
            ax[0].plot(e["k"], e["ratio"], color=col, label=f"COCA {n}")
            ax[1].semilogy(e["k"], e["one_minus_r2"], color=col)
            if n:
                c = runs["cola"][str(n)] if str(n) in runs["cola"] else runs["cola"][n]
                ax[0].plot(c["k"], c["ratio"], color=col, ls="--")
                ax[1].semilogy(c["k"], c["one_minus_r2"], color=col, ls="--")
        ax[0].plot(runs["lpt"]["k"], runs["lpt"]["ratio"], "k:", label="2LPT")
        ax[1].semilogy(runs["lpt"]["k"], runs["lpt"]["one_minus_r2"], "k:")
        ax[0].set(xlabel="k [h/Mpc]", ylabel="P/P_ref − 1", ylim=(-0.5, 0.1),
                  title=f"a = 1, {tag}: COCA (solid) vs COLA (dashed), n forces")
        ax[1].set(xlabel="k [h/Mpc]", ylabel="1 − r²", ylim=(1e-6, 1))
        ax[0].axhline(0, color="grey", lw=0.5)
        ax[0].legend(fontsize=8, ncol=2)
        fig.tight_layout()
        fig.savefig(fig_dir / f"coca_paper_pk_{tag}.png", dpi=110)
        plt.close(fig)
    # accuracy vs forces and wall time (mean over test seeds)
    fig, ax = plt.subplots(1, 2, figsize=(11, 4.2))
    for method, style in (("coca", "o-"), ("cola", "s--")):
        ns = [n for n in FORCES if str(n) in results["seeds"][0][method]]
        err = [np.mean([s[method][str(n)]["rms_dx"] for s in results["seeds"]]) for n in ns]
        r2 = [np.mean([summary_number(s[method][str(n)])[1] for s in results["seeds"]])
              for n in ns]
        sec = [np.mean([s[method][str(n)]["seconds"] for s in results["seeds"]]) for n in ns]
        ax[0].plot(ns, r2, style, label=method.upper())
        ax[1].plot(sec, r2, style, label=method.upper())
        for n, x, y in zip(ns, sec, r2, strict=True):
            ax[1].annotate(str(n), (x, y), fontsize=7)
        del err
    ax[0].set(xlabel="force evaluations", ylabel="max 1 − r² for k ≤ 0.5 h/Mpc", yscale="log",
              xscale="symlog")
    ax[1].set(xlabel="wall time [s] (ICs + model + stepping)", ylabel="max 1 − r², k ≤ 0.5",
              yscale="log")
    for a in ax:
        a.legend()
    fig.tight_layout()
    fig.savefig(fig_dir / "coca_paper_cost.png", dpi=110)
    plt.close(fig)


def main(data_dir, test_dir, out_dir):
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cfg = load_config("paper")
    frame_path = out_dir / "frame_paper.npz"
    emu, info, basis_all = train_frame(data_dir, frame_path)
    emu = load_frame(frame_path)
    results = {"train": info, "frame_errors": frame_errors(emu, basis_all,
                                                           list_samples(test_dir)),
               "seeds": []}
    print(json.dumps({k: results[k] for k in ("train", "frame_errors")}, indent=1)[:3000])
    for i in range(N_TEST):
        results["seeds"].append(json.loads(json.dumps(run_seed(cfg, emu, ic_seed(2, i)))))
        print("seed", i, "done", flush=True)
    ood_cfg = cfg.replace(cosmology=OOD)
    results["ood"] = json.loads(json.dumps(run_seed(ood_cfg, emu, ic_seed(2, 0))))
    results["ood_cosmology"] = OOD
    (out_dir / "coca_paper.json").write_text(json.dumps(results))
    plot(results, ROOT / "docs" / "figures")
    return results


if __name__ == "__main__":
    args = sys.argv[1:] + [None] * 3
    main(Path(args[0] or "experiments/out/frame_data_paper"),
         Path(args[1] or "experiments/out/frame_data_paper_test"),
         Path(args[2] or "experiments/out/coca_paper"))
