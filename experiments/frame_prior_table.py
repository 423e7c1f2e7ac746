"""COCA with a frame over the prior against COLA at equal wall time, five cosmologies.

paper.yaml (64³ particles, 128 Mpc/h, 128³ mesh, 20 steps from a = 0.05) at the cosmologies
and seeds of the held-out frame data set (``SeedSequence(2, (i,))``, Latin hypercube of
``cocasbi.prior.DEFAULT_PRIOR``). Reference: PM with ``N_REF`` FastPM steps, same ICs and mesh.
All runs skip the force at a = 1 (positions only). COLA-n: n steps and forces; COCA-n: the
20-step schedule with n forces evenly spaced over boundaries 0 … 19 (n = 0: emulation only),
the frame evaluated once per run (its time included), with the default fine kicks and with
``kicks: interval`` (a computed force kicks over the whole interval it stands for).
Metrics (``cocasbi.stats.metrics``): rms Δx [Mpc/h], P/P_ref − 1 and 1 − r² at k = 0.5 and
1 h/Mpc; wall time of ICs + frame + stepping on this machine (shared, noisy). Frame errors:
the exact held-out drift-weighted error of the frame's prediction against the stored COLA
residual (:func:`cocasbi.frame.training.local.held_out_terms`).

    python experiments/frame_prior_table.py FRAME TEST_DIR RESULTS.json FIGURE.png
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import h5py
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from cocasbi.config import load_config  # noqa: E402
from cocasbi.frame.emulator import load_frame  # noqa: E402
from cocasbi.frame.training.data import list_samples, read_sample  # noqa: E402
from cocasbi.frame.training.local import held_out_terms  # noqa: E402
from cocasbi.nbody import force_schedule  # noqa: E402
from cocasbi.simulation import simulate  # noqa: E402
from cocasbi.stats.metrics import paired_metrics  # noqa: E402

N_REF = 100
COLA_STEPS = (1, 2, 3, 4, 6, 8, 12, 20)
COCA_FORCES = (0, 1, 2, 4)
INTERVAL_FORCES = (1, 2, 4)  # COCA with kicks: interval (0 forces: the same as fine kicks)
K_REPORT = (0.5, 1.0)


def frame_error(emu, path) -> dict:
    """Held-out drift-weighted errors of the frame's p_ML on one data file (exact, any kind
    of frame: its prediction from the stored Ψ1, Ψ2 against the stored residual)."""
    s = read_sample(path, residual=False)
    c = emu.model.predict(s.psi1.reshape(-1, 3), s.psi2.reshape(-1, 3), s.box_size,
                          s.cosmology)
    return held_out_terms(path, emu.basis).errors(c)


def summary(res, ref, box, n_mesh) -> dict:
    pm = paired_metrics(res.final.positions, ref.final.positions, box, n_mesh)
    out = {"rms_dx": float(pm["rms_dx"]), "seconds": float(res.wall_time),
           "forces": int(res.n_force_evaluations)}
    for k in K_REPORT:
        i = int(np.argmin(np.abs(pm["k"] - k)))
        out[f"pk_{k:g}"] = float(pm["pk_ratio"][i])
        out[f"r2_{k:g}"] = float(pm["one_minus_r2"][i])
    return out


def run_cosmology(cfg, emu, seed) -> dict:
    sim = cfg.simulation
    box, nm = sim.box_size, sim.n_mesh
    ref = simulate(cfg.replace(simulation={"method": "pm", "n_steps": N_REF,
                                           "final_kick": False}), seed=seed)
    out = {"ref_seconds": float(ref.wall_time), "cola": {}, "coca": {}}
    for n in COLA_STEPS:
        r = simulate(cfg.replace(simulation={"n_steps": n, "final_kick": False}), seed=seed)
        out["cola"][n] = summary(r, ref, box, nm)
    for key, kicks, forces in (("coca", "fine", COCA_FORCES),
                               ("coca_interval", "interval", INTERVAL_FORCES)):
        coca = cfg.replace(simulation={"method": "coca", "final_kick": False, "kicks": kicks})
        out[key] = {}
        for n in forces:
            r = simulate(coca, frame=emu, seed=seed,
                         forces=force_schedule(f"even:{n}", sim.n_steps, final_kick=False))
            out[key][n] = {**summary(r, ref, box, nm), "frame_seconds": float(r.frame_seconds)}
    return out


def cola_at(entry: dict, seconds: float) -> dict:
    """The most accurate COLA run that took at most ``seconds`` (else the cheapest)."""
    runs = sorted(entry["cola"].items(), key=lambda kv: kv[1]["seconds"])
    ok = [(n, r) for n, r in runs if r["seconds"] <= seconds] or runs[:1]
    n, r = min(ok, key=lambda kv: kv[1]["rms_dx"])
    return {"steps": int(n), **r}


def plot(results, path, cost=None):
    """Errors against cost: the run's wall time, or with ``cost`` (frame_cost.py's results)
    the best-of-3 CPU time of the same run at the fiducial point."""
    fig, ax = plt.subplots(1, 3, figsize=(14, 4.2))
    for i, c in enumerate(results["cosmologies"]):
        col = f"C{i}"
        lab = f"Ωm {c['theta']['Omega_m']:.3f}, σ8 {c['theta']['sigma8']:.3f}"
        for method, style in (("cola", "s--"), ("coca", "o-"), ("coca_interval", "^:")):
            if method not in c or (cost and method not in cost):
                continue
            runs = list(c[method].values())
            sec = ([cost[method][n]["cpu_s"] for n in c[method]] if cost
                   else [r["seconds"] for r in runs])
            for a, key in zip(ax, ("rms_dx", "pk_1", "r2_1"), strict=True):
                y = [abs(r[key]) for r in runs]
                a.plot(sec, y, style, color=col, ms=4,
                       label=lab if (method == "coca" and key == "rms_dx") else None)
    for a, lab in zip(ax, ("rms Δx [Mpc/h]", "|P/P_ref − 1| at k = 1 h/Mpc",
                           "1 − r² at k = 1 h/Mpc"), strict=True):
        a.set(xlabel=("CPU time [s], best of 3" if cost else "wall time [s]")
              + " (ICs + frame + stepping)", ylabel=lab, xscale="log", yscale="log")
    ax[0].set_title("COCA (o, solid: 0/1/2/4 forces; ^, dotted: interval kicks) vs COLA "
                    "(s, dashed: 1…20 steps)", fontsize=8)
    ax[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(frame, test_dir, out_json, fig):
    cfg0 = load_config("paper")
    emu = load_frame(frame)
    results = {"frame": str(frame), "frame_meta": emu.meta, "cosmologies": []}
    for p in list_samples(test_dir):
        s = read_sample(p, residual=False)
        theta = {k: s.cosmology[k] for k in ("Omega_m", "sigma8")}
        with h5py.File(p, "r") as f:
            seed_json = f.attrs["seed_json"]
        entry = {"theta": theta, "seed": json.loads(seed_json)}
        entry["frame_error"] = frame_error(emu, p)
        entry.update(run_cosmology(cfg0.replace(cosmology=theta), emu, s.seed))
        entry["equal_time"] = {n: cola_at(entry, r["seconds"]) for n, r in entry["coca"].items()}
        results["cosmologies"].append(json.loads(json.dumps(entry)))
        print(json.dumps({"theta": theta, "frame_error": entry.get("frame_error"),
                          "coca": {n: (round(r["rms_dx"], 3), round(r["r2_1"], 4),
                                       round(r["pk_1"], 3), round(r["seconds"], 2))
                                   for n, r in entry["coca"].items()},
                          "cola": {n: (round(r["rms_dx"], 3), round(r["r2_1"], 4),
                                       round(r["pk_1"], 3), round(r["seconds"], 2))
                                   for n, r in entry["cola"].items()}}), flush=True)
        Path(out_json).write_text(json.dumps(results, indent=1))
    plot(results, fig)


def markdown(results) -> str:
    """The table of docs/coca.md: means over the cosmologies (min–max of rms Δx)."""
    cs = results["cosmologies"]

    def row(label, runs):
        dx = [r["rms_dx"] for r in runs]
        return (f"| {label} | {np.mean(dx):.2f} ({min(dx):.2f}–{max(dx):.2f}) | "
                f"{np.mean([r['pk_0.5'] for r in runs]):+.1%} | "
                f"{np.mean([r['pk_1'] for r in runs]):+.1%} | "
                f"{np.mean([r['r2_0.5'] for r in runs]):.3g} | "
                f"{np.mean([r['r2_1'] for r in runs]):.3g} | "
                f"{np.median([r['seconds'] for r in runs]):.2f} |")

    lines = ["| run | rms Δx [Mpc/h] | ΔP/P k=0.5 | ΔP/P k=1 | 1−r² k=0.5 | 1−r² k=1 | wall [s] |",
             "|---|---|---|---|---|---|---|"]
    for n in cs[0]["coca"]:
        lines.append(row(f"COCA, {n} forces", [c["coca"][n] for c in cs]))
    for n in cs[0].get("coca_interval", {}):
        lines.append(row(f"COCA, {n} forces, interval kicks",
                         [c["coca_interval"][n] for c in cs]))
    for n in cs[0]["cola"]:
        lines.append(row(f"COLA-{n}", [c["cola"][n] for c in cs]))
    for n in cs[0]["coca"]:
        lines.append(row(f"COLA at COCA-{n}'s wall time", [c["equal_time"][n] for c in cs]))
    fe = [c["frame_error"] for c in cs if "frame_error" in c]
    if fe:
        lines.append("")
        lines.append("frame error (drift-weighted, rms over time) per cosmology: "
                     + ", ".join(f"{e['drift']:.3f}" for e in fe))
    return "\n".join(lines)


if __name__ == "__main__":
    if sys.argv[1] == "--plot":  # --plot RESULTS.json COST.json FIGURE.png
        plot(json.loads(Path(sys.argv[2]).read_text()), sys.argv[4],
             json.loads(Path(sys.argv[3]).read_text()))
    elif sys.argv[1] == "--markdown":
        print(markdown(json.loads(Path(sys.argv[2]).read_text())))
    else:
        main(*sys.argv[1:5])
