"""Interval kicks against fine kicks: COCA with few forces, good and weak frames.

paper.yaml (64³ particles, 128 Mpc/h, 128³ mesh, 20 steps from a = 0.05, no force at a = 1)
at the cosmologies and seeds of the held-out frame data set (``SeedSequence(2, (i,))``).
Reference: PM with ``N_REF`` FastPM steps from the same ICs (final positions cached as
``REFS/sim_NNNNN.npy``). Frames: the oracle residual recorded from COLA-20 of the same ICs
scaled by 1 − ε, the transfer frame ``experiments/results/frame_paper_psi.npz`` and the force-input
transfer frame ``experiments/results/frame_paper_force.npz``. n forces placed ``even``
(``even:n`` over boundaries 0 … 19, first and last included) or at the ``steps`` of an
n-step schedule (boundaries round(20 i / n), i < n: where COLA-n computes its forces). Kicks
(``cocasbi.nbody.Stepper``):

* ``fine``: a computed force kicks over the two fine half steps next to it;
* ``interval``: over the whole interval it stands for, residual g = F − F_LPT − F_ML;
* ``interval_lpt``: the same intervals with g = F − F_LPT (ignores the frame's own force);
* ``interval_to_end``: ``interval`` with the last computed force's interval running to
  a = 1 instead of the mid-point between it and a = 1 (the skipped final force);
* ``interval_smooth`` (``--smoothing``: first cosmology, ``steps`` placement): fine kicks
  plus, beyond the fine half steps, the residual g smoothed over the Lagrangian lattice
  (Gaussian radius R in ``SMOOTHING`` [Mpc/h]): only its coherent part is taken constant.

Also COLA on the 20-step schedule with n forces (fine and interval kicks) and COLA-n
(n steps). Metrics (``cocasbi.stats.metrics.paired_metrics``): rms Δx [Mpc/h], P/P_ref − 1 and
1 − r² at k = 0.5 and 1 h/Mpc; means over the cosmologies.

    python experiments/frame_interval_kicks.py TEST_DIR RESULTS.json FIGURE.png [N_COSMO]
    python experiments/frame_interval_kicks.py --markdown RESULTS.json
    python experiments/frame_interval_kicks.py --plot RESULTS.json FIGURE.png
    python experiments/frame_interval_kicks.py --smoothing TEST_DIR RESULTS_SMOOTHING.json
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from frame_prior_table import K_REPORT, N_REF  # noqa: E402

from cocasbi.config import load_config  # noqa: E402
from cocasbi.cosmology import Cosmology  # noqa: E402
from cocasbi.frame.emulator import load_frame  # noqa: E402
from cocasbi.frame.training.data import list_samples, read_sample  # noqa: E402
from cocasbi.gravity import ForceSolver  # noqa: E402
from cocasbi.nbody import (  # noqa: E402
    OracleFrame,
    ResidualRecorder,
    Stepper,
    TimeSchedule,
    _Force,
    force_schedule,
)
from cocasbi.seeds import describe  # noqa: E402
from cocasbi.simulation import initial_conditions, simulate  # noqa: E402
from cocasbi.stats.metrics import paired_metrics, rms_displacement  # noqa: E402
from cocasbi.threads import numba_threads  # noqa: E402

HERE = Path(__file__).resolve().parent
#: cache of the reference final positions (25-60 s each); REF_CACHE overrides it
REFS = Path(os.environ.get("REF_CACHE", Path(tempfile.gettempdir()) / "cocasbi_pm100_refs"))
FORCES = (1, 2, 4, 8)
EPSILONS = (0.05, 0.2, 0.5)
#: the transfer frame over the default prior (drift-weighted error 0.84, made by
#: frame_basis_study.py) and the force-input transfer frame (0.505, frame_force_frame.py)
EMULATED = {"transfer": str(HERE / "results" / "frame_paper_psi.npz"),
            "force": str(HERE / "results" / "frame_paper_force.npz")}
SMOOTHING = (1.5, 3.0, 6.0, 12.0)  # [Mpc/h] Lagrangian Gaussian radii of interval_smooth
KICKS = ("fine", "interval", "interval_lpt", "interval_to_end")
PLACEMENTS = {"even": KICKS, "steps": ("fine", "interval", "interval_to_end")}


def placement(kind: str, k: int, n_steps: int) -> np.ndarray:
    """Force mask with ``k`` forces over boundaries 0 … n−1 (none at a_n)."""
    if kind == "even":
        return force_schedule(f"even:{k}", n_steps, final_kick=False)
    idx = np.unique(np.round(np.linspace(0, n_steps, k + 1))[:-1].astype(int))
    return force_schedule(idx, n_steps)


class ScaledFrame:
    """An oracle frame times a factor, scaled when queried (no copy of the whole record)."""

    def __init__(self, oracle: OracleFrame, factor: float):
        self.oracle, self.factor = oracle, factor

    def residual_momentum(self, a: float) -> np.ndarray:
        return self.oracle.residual_momentum(a) * self.factor


class _ToEndStepper(Stepper):
    """Interval kicks whose last interval runs to a_n (instead of the mid-point between the
    last computed force and the skipped force at a_n)."""

    def _interval_extras(self):
        close, opening = super()._interval_extras()
        n, half, b = self.schedule.n_steps, self.schedule.half, self.schedule.boundaries
        last = int(np.flatnonzero(self.forces)[-1])
        if last < n:
            opening[last] = self.cosmo.kick_factor(float(half[last]), float(b[n]))
        return close, opening


def lagrangian_smooth(g: np.ndarray, box_size: float, radius: float) -> np.ndarray:
    """(N³, 3) field on the particle lattice smoothed with a Gaussian of ``radius`` [Mpc/h]
    (periodic, float64)."""
    n = round(g.shape[0] ** (1 / 3))
    k = 2 * np.pi * np.fft.fftfreq(n, d=box_size / n)
    kz = 2 * np.pi * np.fft.rfftfreq(n, d=box_size / n)
    k2 = k[:, None, None] ** 2 + k[None, :, None] ** 2 + kz[None, None, :] ** 2
    w = np.exp(-0.5 * k2 * radius**2)[..., None]
    modes = np.fft.rfftn(g.reshape(n, n, n, 3), axes=(0, 1, 2))
    return np.fft.irfftn(modes * w, s=(n, n, n), axes=(0, 1, 2)).reshape(-1, 3)


@dataclass
class _SmoothIntervalStepper(Stepper):
    """Interval kicks whose extension beyond the fine half steps uses the residual force
    smoothed over the Lagrangian lattice: it enters through the frame array of the fine kick
    (m0 + g_s K_extra), so the particle kernel is unchanged."""

    smoothing: float = 3.0  # [Mpc/h]

    def _force(self, index):
        self._g_s = None
        if not (self.forces[index] and (self._extra[0][index] > 0
                                        or self._extra[1][index] > 0)):
            return super()._force(index)
        self._flush()
        self.n_force_evaluations += 1
        a = float(self.schedule.boundaries[index])
        f = np.asarray(self.solver(self._x), dtype=np.float64)
        uses = int(index > 0) + int(index < self.schedule.n_steps)
        force = _Force(a, uses, values=f)
        self._pending.force = force
        g = f - self.lpt.acceleration(self.cosmo, a)
        if self.frame is not None:
            g -= self._frame_acceleration(index)
        self._g_s = lagrangian_smooth(g, self.box_size, self.smoothing)
        self._f_ml = None
        return force

    def _kick(self, force, a_force, a0, a1, extra=0.0):
        super()._kick(force, a_force, a0, a1)
        if force is None or extra <= 0 or self._g_s is None:
            return
        k, m0, m1 = self._pending.kicks[-1]
        add = self._g_s * extra  # the kernel subtracts (m1 − m0): adding to m0 adds the kick
        if m0 is None:
            m0, m1 = add, np.zeros_like(add)
        else:
            m0 = m0 + add
        self._pending.kicks[-1] = (k, m0, m1)


def step(ctx, method: str, frame, forces: np.ndarray, kicks: str, n_steps: int = 20,
         observers=(), **options) -> tuple[np.ndarray, float]:
    """Final positions [Mpc/h] of one run from the context's ICs and its wall time [s]."""
    sched = TimeSchedule.build(ctx["a_init"], ctx["a_final"], n_steps)
    cls = {"interval_to_end": _ToEndStepper,
           "interval_smooth": _SmoothIntervalStepper}.get(kicks, Stepper)
    t0 = time.perf_counter()
    with numba_threads(0):
        s = cls(ctx["cosmo"], ctx["lpt"], sched, ctx["solver"], ctx["box"], method=method,
                frame=frame, forces=forces, observers=list(observers),
                kicks="fine" if kicks == "fine" else "interval",
                frame_force=kicks != "interval_lpt", **options).run()
    return s.x, time.perf_counter() - t0


def metrics(x, ref, ctx, seconds) -> dict:
    pm = paired_metrics(x, ref, ctx["box"], ctx["n_mesh"])
    out = {"rms_dx": float(pm["rms_dx"]), "seconds": float(seconds)}
    for k in K_REPORT:
        i = int(np.argmin(np.abs(pm["k"] - k)))
        out[f"pk_{k:g}"] = float(pm["pk_ratio"][i])
        out[f"r2_{k:g}"] = float(pm["one_minus_r2"][i])
    return out


def reference(cfg, seed, path: Path) -> np.ndarray:
    """PM-N_REF final positions, cached."""
    if path.exists():
        return np.load(path)
    ref = simulate(cfg.replace(simulation={"method": "pm", "n_steps": N_REF,
                                           "final_kick": False}), seed=seed, progress=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, ref.final.positions)
    return ref.final.positions


def context(cfg, seed) -> dict:
    sim = cfg.simulation
    cosmo = Cosmology.from_config(cfg.cosmology)
    return {"cosmo": cosmo, "lpt": initial_conditions(cfg, cosmo, seed), "box": sim.box_size,
            "n_mesh": sim.n_mesh, "a_init": sim.a_init, "a_final": sim.a_final,
            "solver": ForceSolver(sim.n_mesh, sim.box_size, cosmo.Omega_m, sim.kernel)}


def smoothing_scan(test_dir, out_json):
    """interval_smooth against fine and interval kicks, first held-out cosmology."""
    p = list_samples(test_dir)[0]
    s = read_sample(p, residual=False)
    cfg = load_config("paper").replace(simulation={"final_kick": False}, cosmology={
        k: s.cosmology[k] for k in ("Omega_m", "sigma8")})
    ref = reference(cfg, s.seed, REFS / f"{p.stem}.npy")
    ctx = context(cfg, s.seed)
    n = cfg.simulation.n_steps
    rec = ResidualRecorder()
    step(ctx, "cola", None, force_schedule("all", n, final_kick=False), "fine", observers=[rec])
    oracle = rec.frame()
    del rec
    frames = {"oracle x 0.8": ScaledFrame(oracle, 0.8), "COLA (no frame)": None}
    for name, path in EMULATED.items():
        frames[name] = load_frame(path).bind(ctx["lpt"], ctx["cosmo"], ctx["box"])
    out = {"file": p.name, "forces": "steps", "smoothing": SMOOTHING, "runs": {}}
    for name, frame in tqdm(frames.items(), desc="frames"):
        method = "cola" if frame is None else "coca"
        entry = out["runs"][name] = {}
        for k in (2, 4, 8):
            mask = placement("steps", k, n)
            row = entry[k] = {}
            for kick in ("fine", "interval"):
                x, sec = step(ctx, method, frame, mask, kick)
                row[kick] = metrics(x, ref, ctx, sec)
            for r in SMOOTHING:
                x, sec = step(ctx, method, frame, mask, "interval_smooth", smoothing=r)
                row[f"smooth R={r:g}"] = metrics(x, ref, ctx, sec)
        print(name, {k: {v: round(m["rms_dx"], 3) for v, m in row.items()}
                     for k, row in entry.items()}, flush=True)
    Path(out_json).write_text(json.dumps(json.loads(json.dumps(out)), indent=1))


def run_cosmology(cfg, seed, ref, emulators) -> dict:
    sim = cfg.simulation
    ctx = context(cfg, seed)
    cosmo, lpt = ctx["cosmo"], ctx["lpt"]
    n = sim.n_steps
    masks = {(kind, k): placement(kind, k, n) for kind in PLACEMENTS for k in FORCES}
    none = force_schedule("none", n)
    out = {"cola_n": {}, "cola20": {kind: {kick: {} for kick in kicks if kick != "interval_lpt"}
                                    for kind, kicks in PLACEMENTS.items()},
           "coca": {}, "force_boundaries": {kind: {k: np.flatnonzero(masks[kind, k]).tolist()
                                                   for k in FORCES} for kind in PLACEMENTS}}
    rec = ResidualRecorder()
    x, sec = step(ctx, "cola", None, force_schedule("all", n, final_kick=False), "fine",
                  observers=[rec])
    out["cola_n"][n] = metrics(x, ref, ctx, sec)
    oracle, x20 = rec.frame(), x
    del rec
    for k in FORCES:
        x, sec = step(ctx, "cola", None, force_schedule("all", k, final_kick=False), "fine",
                      n_steps=k)
        out["cola_n"][k] = metrics(x, ref, ctx, sec)
        for kind, kicks in out["cola20"].items():
            for kick in kicks:
                x, sec = step(ctx, "cola", None, masks[kind, k], kick)
                kicks[kick][k] = metrics(x, ref, ctx, sec)
    frames = {f"oracle x {1 - e:g}": ScaledFrame(oracle, 1 - e) for e in EPSILONS}
    for name, emu in emulators.items():
        frames[name] = emu.bind(lpt, cosmo, sim.box_size)
    x, sec = step(ctx, "coca", oracle, masks["even", 2], "interval")  # perfect: = COLA-20
    out["perfect_frame_interval_2"] = {**metrics(x, ref, ctx, sec),
                                       "rms_dx_to_cola20": rms_displacement(x, x20, ctx["box"])}
    total = len(frames) * (1 + len(FORCES) * sum(map(len, PLACEMENTS.values())))
    bar = tqdm(total=total, desc="coca runs")
    for name, frame in frames.items():
        x, sec = step(ctx, "coca", frame, none, "fine")
        entry = {"0": metrics(x, ref, ctx, sec)}
        bar.update()
        for kind, kicks in PLACEMENTS.items():
            entry[kind] = {}
            for kick in kicks:
                entry[kind][kick] = {}
                for k in FORCES:
                    x, sec = step(ctx, "coca", frame, masks[kind, k], kick)
                    entry[kind][kick][k] = metrics(x, ref, ctx, sec)
                    bar.update()
        out["coca"][name] = entry
    bar.close()
    return out


def main(test_dir, out_json, fig, n_cosmo=2):
    cfg0 = load_config("paper").replace(simulation={"final_kick": False})
    emulators = {name: load_frame(path) for name, path in EMULATED.items()}
    out_path = Path(out_json)
    results = (json.loads(out_path.read_text()) if out_path.exists()
               else {"config": "paper.yaml, final_kick false", "n_ref": N_REF,
                     "frames": EMULATED, "cosmologies": []})
    done = {c["file"] for c in results["cosmologies"]}
    for p in list_samples(test_dir)[: int(n_cosmo)]:
        if p.name in done:
            continue
        s = read_sample(p, residual=False)
        theta = {k: s.cosmology[k] for k in ("Omega_m", "sigma8")}
        cfg = cfg0.replace(cosmology=theta)
        ref = reference(cfg, s.seed, REFS / f"{p.stem}.npy")
        t0 = time.perf_counter()
        entry = {"file": p.name, "theta": theta, "seed": describe(s.seed),
                 **run_cosmology(cfg, s.seed, ref, emulators)}
        entry["seconds"] = time.perf_counter() - t0
        results["cosmologies"].append(json.loads(json.dumps(entry)))
        out_path.write_text(json.dumps(results, indent=1))
        print(markdown(results), flush=True)
    plot(results, fig)


def _mean(runs, key):
    return float(np.mean([r[key] for r in runs]))


def plot(results, path):
    """rms Δx and 1 − r² at k = 1 against the number of forces, one column per frame, one row
    per metric and force placement."""
    cs = results["cosmologies"]
    names = [*cs[0]["coca"], "COLA (no frame)"]
    rows = [(key, kind) for key in ("rms_dx", "r2_1") for kind in PLACEMENTS]
    fig, ax = plt.subplots(len(rows), len(names), figsize=(3.0 * len(names), 2.6 * len(rows)),
                           sharex=True, sharey="row")
    styles = {"fine": ("o-", "C0"), "interval": ("s-", "C1"), "interval_lpt": ("^:", "C2"),
              "interval_to_end": ("v--", "C3")}
    for r, (key, kind) in enumerate(rows):
        for col, name in enumerate(names):
            a = ax[r, col]
            for kick in PLACEMENTS[kind]:
                if name == "COLA (no frame)":
                    if kick not in cs[0]["cola20"][kind]:
                        continue
                    runs = [[c["cola20"][kind][kick][str(k)] for c in cs] for k in FORCES]
                else:
                    runs = [[c["coca"][name][kind][kick][str(k)] for c in cs] for k in FORCES]
                a.plot(FORCES, [_mean(x, key) for x in runs], styles[kick][0], ms=4,
                       color=styles[kick][1], label=kick)
            y = [_mean([c["cola_n"][str(k)] for c in cs], key) for k in FORCES]
            a.plot(FORCES, y, "k--", lw=1, label="COLA-n (n steps)")
            if name != "COLA (no frame)":
                a.axhline(_mean([c["coca"][name]["0"] for c in cs], key), color="0.6", lw=1,
                          label="0 forces")
            a.set(xscale="log", yscale="log", xticks=FORCES)
            a.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
            a.set_xticklabels([str(k) for k in FORCES])
            if r == 0:
                a.set_title(name, fontsize=9)
            if r == len(rows) - 1:
                a.set_xlabel("forces")
        ax[r, 0].set_ylabel(("rms Δx [Mpc/h]" if key == "rms_dx" else "1 − r², k = 1 h/Mpc")
                            + f"\nforces: {kind}", fontsize=9)
    ax[0, 0].legend(fontsize=6)
    fig.suptitle(f"COCA on 20 steps: error against forces, mean over {len(cs)} cosmologies "
                 f"(reference PM-{results['n_ref']})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def markdown(results) -> str:
    """Tables per force placement: rms Δx / ΔP/P / 1 − r² (k = 1) for each number of forces."""
    cs = results["cosmologies"]

    def cell(runs):
        return (f"{_mean(runs, 'rms_dx'):.3g} / {_mean(runs, 'pk_1'):+.0%} / "
                f"{_mean(runs, 'r2_1'):.2g}")

    lines = [f"mean over {len(cs)} cosmologies; cells: rms Δx [Mpc/h] / ΔP/P at k=1 / "
             "1−r² at k=1"]
    for kind, kicks in PLACEMENTS.items():
        bounds = cs[0]["force_boundaries"][kind]
        lines += ["", f"forces {kind}: boundaries " + ", ".join(
            f"{k}: {bounds[str(k)]}" for k in FORCES), "",
            "| frame | kicks | 0 forces | " + " | ".join(f"{k} forces" for k in FORCES)
            + " |", "|---|---|---|" + "---|" * len(FORCES)]
        for name in cs[0]["coca"]:
            zero = cell([c["coca"][name]["0"] for c in cs])
            for kick in kicks:
                lines.append(f"| {name} | {kick} | {zero} | " + " | ".join(
                    cell([c["coca"][name][kind][kick][str(k)] for c in cs]) for k in FORCES)
                    + " |")
        for kick in cs[0]["cola20"][kind]:
            lines.append(f"| COLA, 20 steps | {kick} | – | " + " | ".join(
                cell([c["cola20"][kind][kick][str(k)] for c in cs]) for k in FORCES) + " |")
        lines.append("| COLA-n | n steps | – | " + " | ".join(
            cell([c["cola_n"][str(k)] for c in cs]) for k in FORCES) + " |")
    lines.append("")
    lines.append("COLA-20: " + cell([c["cola_n"]["20"] for c in cs]) + "; perfect frame, "
                 "2 forces, interval: " + cell([c["perfect_frame_interval_2"] for c in cs])
                 + f" ({max(c['perfect_frame_interval_2']['rms_dx_to_cola20'] for c in cs):.1e}"
                 " Mpc/h from COLA-20)")
    return "\n".join(lines)


if __name__ == "__main__":
    if sys.argv[1] == "--markdown":
        print(markdown(json.loads(Path(sys.argv[2]).read_text())))
    elif sys.argv[1] == "--smoothing":
        smoothing_scan(*sys.argv[2:4])
    elif sys.argv[1] == "--plot":
        plot(json.loads(Path(sys.argv[2]).read_text()), sys.argv[3])
    else:
        main(*sys.argv[1:5])
