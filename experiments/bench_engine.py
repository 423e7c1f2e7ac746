"""Benchmark of the simulation engine beyond 64³: wall time, its breakdown and peak memory.

For each size (particles³ / mesh³, L = 2 Mpc/h per particle spacing, as in ``paper``), in a
fresh process per size:

* a 10-step COLA run (initial conditions + ``simulate(cfg, lpt=..., solver=...)``), ``--repeat``
  times after one warm-up run; the minimum is reported, split into the initial conditions
  (``initial_conditions``: white noise, float64 FFTs, 2LPT), the force evaluations
  (``ForceSolver.force_field``: sort, paint, r2c, Green's function, c2r, gradient stencil), the
  particle passes (``nbody._particle_pass``: CIC readout of the force fused with the kicks, LPT
  terms and drift) and the rest (growth and kick/drift factors, set-up, final momenta). The
  readout's share of the particle passes is measured by running the same readout alone
  (``cic._readout_nodes``, same cells and mesh) after every pass, outside the run's time (the
  mesh is then warm in cache: the readout is estimated on the low side and the particle work on
  the high side). Three shares are printed: everything but the
  force evaluations; the same with the readout counted as force work; and the particle work
  alone (passes without the readout, and the rest: neither ICs nor forces).
* with ``--memory``, the peak resident memory (VmHWM, reset after the warm-up) of one PM, COLA
  and COCA run, each in its own process, above the process's resident memory after imports and
  a 16³ warm-up run.
  COCA uses a synthetic frame with the memory of an emulated one: K coefficient fields (K, N³, 3)
  float64 and a cache of the last 4 query times (the network's own memory is not included).

Each worker process is configured as the command line configures itself
(:func:`cocasbi.threads.configure_process`). With ``--jaxpm PYTHON`` (an interpreter where JaxPM
is installed), JaxPM's force (``experiments/jaxpm_force.py``) is timed on the same final
positions as one cocasbi force evaluation (paint to readout), and the two force fields'
correlation is printed as a check that both computed the same physics.

Numba threads and FFTW threads are ``--threads`` (0 = every core). The load average before and
after each size is printed: other jobs on the machine inflate every figure. The CPU time of the
same run (``time.process_time``, all threads of this process) is printed below each wall time:
with ``--threads 1`` it is what the run would take on an otherwise idle core.

    python experiments/bench_engine.py [--sizes 64:128,128:128,128:256] [--repeat 3]
                                       [--threads 0] [--memory] [--no-time]
                                       [--json out.json] [--jaxpm PYTHON]
    python experiments/bench_engine.py --plot before=OLD.json after=NEW.json [--out PNG]

A report of ``bench_engine_ab.py`` given to ``--plot`` draws the medians of both its versions.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

N_STEPS = 10
FRAME_K = 4


def _config(n_particles: int, n_mesh: int, method: str = "cola", threads: int = 0):
    from cocasbi.config import load_config

    return load_config("tiny").replace(simulation={
        "n_particles": n_particles, "n_mesh": n_mesh, "box_size": 2.0 * n_particles,
        "n_steps": N_STEPS, "method": method, "threads": threads, "snapshots": [],
    })


class _SyntheticFrame:
    """Memory stand-in for an emulated COCA frame: p_ML(a) = Σ_k b_k(a) c_k, cached 4 times."""

    def __init__(self, lpt, cosmo, k: int = FRAME_K):
        g = np.array([cosmo.G1(1.0) * 0.01 * (j + 1) for j in range(k)])
        self.coeffs = g[:, None, None] * lpt.psi1[None]  # (K, N, 3) float64
        self.cache: dict[float, np.ndarray] = {}

    def residual_momentum(self, a: float) -> np.ndarray:
        out = self.cache.get(float(a))
        if out is None:
            b = np.array([a ** (j + 1) for j in range(len(self.coeffs))])
            out = np.tensordot(b, self.coeffs, axes=(0, 0))
            if len(self.cache) >= 4:
                del self.cache[next(iter(self.cache))]
            self.cache[float(a)] = out
        return out


def _rss_bytes() -> int:
    """Peak resident memory of this process so far, or since :func:`_forget_peak` [bytes]
    (Linux: VmHWM; ru_maxrss where /proc has no status)."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _forget_peak() -> None:
    """Reset the peak resident memory to the current one (Linux ≥ 4.0; elsewhere nothing):
    the warm-up's numba compilation, with a cold cache, can peak above the run itself."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def _current_rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _warm_up(threads: int):
    from cocasbi.simulation import simulate

    for method in ("cola", "pm"):  # compile / load every numba kernel once
        simulate(_config(16, 32, method, threads))


# ---------------------------------------------------------------------------- workers
def worker_time(n_particles: int, n_mesh: int, repeat: int, threads: int,
                positions_out: str = "") -> dict:
    """10-step COLA runs with the time split into ICs, forces, particle passes and the rest;
    then one force evaluation alone (force mesh + readout in particle order) on the final
    positions, which are saved to ``positions_out`` (.npy) for JaxPM if given."""
    from cocasbi import cic, nbody
    from cocasbi.cic import readout_nodes
    from cocasbi.cosmology import Cosmology
    from cocasbi.gravity import ForceSolver
    from cocasbi.simulation import initial_conditions, simulate
    from cocasbi.threads import numba_threads

    _warm_up(threads)
    cfg = _config(n_particles, n_mesh, "cola", threads)
    sim = cfg.simulation
    cosmo = Cosmology.from_config(cfg.cosmology)
    solver = ForceSolver(sim.n_mesh, sim.box_size, cosmo.Omega_m, sim.kernel, sim.threads)
    acc = dict.fromkeys(("forces", "passes", "forces_cpu", "passes_cpu", "readout",
                         "readout_cpu"), 0.0)
    force_field, particle_pass = solver.force_field, nbody._particle_pass

    def timed(fn, key):
        def wrapper(*args):
            t0, c0 = time.perf_counter(), time.process_time()
            out = fn(*args)
            acc[key] += time.perf_counter() - t0
            acc[key + "_cpu"] += time.process_time() - c0
            return out
        return wrapper

    timed_force_field, timed_readout = timed(force_field, "forces"), timed(cic._readout_nodes,
                                                                          "readout")
    scratch, no_order = np.empty((n_particles**3, 3)), np.empty(0, dtype=np.int64)

    def timed_pass(source, x, p, psi1, psi2, nodes, n, node, frac, *rest):
        """The pass, then (outside the run's time) the same readout alone: the pass's
        readout share, measured on the cells of every pass (with the mesh warm in cache from
        the pass: an estimate on the low side)."""
        timed(particle_pass, "passes")(source, x, p, psi1, psi2, nodes, n, node, frac, *rest)
        if source == nbody._READOUT:
            timed_readout(nodes, n, node, frac, no_order, scratch)

    solver.force_field = timed_force_field
    nbody._particle_pass = timed_pass
    runs = []
    try:
        for r in range(repeat + 1):  # run 0 warms this size up (page cache, allocator)
            acc.update(dict.fromkeys(acc, 0.0))
            t0, c0 = time.perf_counter(), time.process_time()
            lpt = initial_conditions(cfg, cosmo, seed=r)
            t_ic, c_ic = time.perf_counter() - t0, time.process_time() - c0
            res = simulate(cfg, lpt=lpt, solver=solver)
            total = time.perf_counter() - t0 - acc["readout"]  # not the extra readouts
            cpu = time.process_time() - c0 - acc["readout_cpu"]
            run = {"total": total, "ic": t_ic, "n_forces": res.n_force_evaluations,
                   "total_cpu": cpu, "ic_cpu": c_ic, **acc}
            run["rest"] = total - t_ic - run["forces"] - run["passes"]
            run["rest_cpu"] = cpu - c_ic - run["forces_cpu"] - run["passes_cpu"]
            if r:
                runs.append(run)
    finally:
        nbody._particle_pass = particle_pass
    # the readout alone, on the final positions in particle order (as in the particle pass)
    with numba_threads(threads):
        pos = res.final.positions
        force_field(pos)
        out = np.empty_like(pos)
        ts, tf = [], []
        for _ in range(5):
            t0 = time.perf_counter()
            readout_nodes(solver.force_nodes, n_mesh, solver.cells, out=out)
            ts.append(time.perf_counter() - t0)
        for _ in range(5):
            t0 = time.perf_counter()
            force_field(pos)
            readout_nodes(solver.force_nodes, n_mesh, solver.cells, out=out)
            tf.append(time.perf_counter() - t0)
    if positions_out:
        np.save(positions_out, pos)
        np.save(positions_out.replace(".npy", "_force.npy"), out.astype(np.float32))
    best = min(runs, key=lambda r: r["total"])
    best["readout_each"] = min(ts)
    best["force_each"] = min(tf)
    best["all_totals"] = [r["total"] for r in runs]
    return best


def worker_memory(n_particles: int, n_mesh: int, method: str, threads: int) -> dict:
    """Peak resident memory of one 10-step run above the warmed-up process."""
    from cocasbi.cosmology import Cosmology
    from cocasbi.simulation import initial_conditions, simulate

    _warm_up(threads)
    base_peak = _rss_bytes()
    _forget_peak()
    base_current = _current_rss()
    cfg = _config(n_particles, n_mesh, method, threads)
    cosmo = Cosmology.from_config(cfg.cosmology)
    lpt = initial_conditions(cfg, cosmo)
    frame = _SyntheticFrame(lpt, cosmo) if method == "coca" else None
    simulate(cfg, lpt=lpt, frame=frame)
    peak = _rss_bytes()
    return {"base_rss": base_current, "base_peak": base_peak, "peak": peak,
            "above_base": peak - base_current, "per_particle": (peak - base_current)
            / n_particles**3}


# ---------------------------------------------------------------------------- driver
def _run_worker(kind: str, *args) -> dict:
    cmd = [sys.executable, __file__, "--worker", kind, *map(str, args)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def _jaxpm(python: str, positions: str, n_mesh: int, box_size: float) -> dict:
    """JaxPM's force on the saved positions (experiments/jaxpm_force.py in ``python``), and
    the correlation of its force components with ours (same positions; the two codes differ
    in the Laplacian kernel and normalisation, so only the correlation is compared)."""
    out = positions.replace(".npy", "_jaxpm.npy")
    cmd = [python, os.path.join(os.path.dirname(__file__), "jaxpm_force.py"), positions,
           str(n_mesh), str(box_size), out]
    res = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True)
                     .stdout.strip().splitlines()[-1])
    ours = np.load(positions.replace(".npy", "_force.npy")).astype(np.float64)
    theirs = np.load(out).astype(np.float64)
    res["correlation"] = min(float(np.corrcoef(ours[:, c], theirs[:, c])[0, 1])
                             for c in range(3))
    return res


def plot(reports: dict[str, dict], path: str) -> None:
    """Stacked bars of the 10-step COLA wall time (ICs, forces, particle passes, rest) per
    size, one group of bars per labelled report (e.g. before / after)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from cocasbi.io.atomic import save_figure

    parts = (("ic", "initial conditions"), ("forces", "forces (sort, paint, FFTs, gradient)"),
             ("passes", "particle passes (readout, kicks, drift)"), ("rest", "rest"))
    sizes = sorted({k for r in reports.values() for k in r["time"]},
                   key=lambda k: tuple(int(v) for v in k.split(":")))
    fig, axes = plt.subplots(1, len(sizes), figsize=(3.2 * len(sizes) + 3, 3.6), squeeze=False)
    for ax, size in zip(axes[0], sizes, strict=True):
        labels = [label for label, r in reports.items() if size in r["time"]]
        for i, label in enumerate(labels):
            r, bottom = reports[label]["time"][size], 0.0
            for j, (key, name) in enumerate(parts):
                ax.bar(i, r[key], bottom=bottom, color=f"C{j}", label=name if i == 0 else None)
                bottom += r[key]
            ax.text(i, bottom, f"{bottom:.2f} s", ha="center", va="bottom", fontsize=8)
        n_p, n_m = size.split(":")
        ax.set_xticks(range(len(labels)), labels, fontsize=7)
        ax.set_title(f"{n_p}³ particles / {n_m}³ mesh", fontsize=9)
        ax.set_ylabel("wall time [s]")
    handles, names = axes[0][0].get_legend_handles_labels()
    fig.legend(handles[::-1], names[::-1], fontsize=7, loc="center right")
    fig.subplots_adjust(left=0.06, right=0.8, wspace=0.35)
    fig.suptitle("10-step COLA run on 2 threads (experiments/bench_engine.py)", fontsize=9)
    save_figure(fig, path, dpi=120)


def _load() -> str:
    return ", ".join(f"{x:.2f}" for x in os.getloadavg())


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="64:128,128:128,128:256",
                    help="comma-separated particles:mesh (cells per side)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--memory", action="store_true", help="also peak memory of PM/COLA/COCA")
    ap.add_argument("--no-time", action="store_true", help="skip the timed runs")
    ap.add_argument("--json", help="write every figure to this file")
    ap.add_argument("--jaxpm", metavar="PYTHON",
                    help="an interpreter with JaxPM: also time its force on the same positions")
    ap.add_argument("--plot", nargs="+", metavar="LABEL=REPORT.json",
                    help="draw the breakdown of saved reports (no runs) into --out PNG")
    ap.add_argument("--out", default="docs/figures/bench_engine.png")
    ap.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.plot:
        reports = {}
        for item in args.plot:
            label, _, file = item.partition("=")
            with open(file) as f:
                report = json.load(f)
            if "rev" in report:  # bench_engine_ab.py: the medians of both versions
                for version, name in ((report["package"], report["rev"]), ("cocasbi", "now")):
                    reports[f"{label} {name}"] = {"time": {
                        size: {part: float(np.median(v)) for part, v in runs[version].items()}
                        for size, runs in report["sizes"].items()}}
            else:
                reports[label] = report
        plot(reports, args.out)
        return
    if args.worker:
        from cocasbi.threads import configure_process

        kind, *rest = args.worker
        configure_process(int(rest[3]))  # as the command line does: OpenMP wait policy
        if kind == "time":
            res = worker_time(int(rest[0]), int(rest[1]), int(rest[2]), int(rest[3]),
                              *rest[4:])
        else:
            res = worker_memory(int(rest[0]), int(rest[1]), rest[2], int(rest[3]))
        print(json.dumps(res))
        return
    sizes = [tuple(int(v) for v in s.split(":")) for s in args.sizes.split(",")]
    report = {"time": {}, "memory": {}, "cpus": len(os.sched_getaffinity(0)),
              "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}
    print(f"10-step COLA, {report['cpus']} cores, threads={args.threads}, "
          f"best of {args.repeat} runs")
    print("| particles / mesh | total [s] | ICs [s] | forces [s] | particle passes [s] "
          "(readout) | rest [s] | non-force share | particle work share | all runs [s] "
          "| load before/after |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    scratch = tempfile.mkdtemp(prefix="bench_engine_")
    for n_p, n_m in [] if args.no_time else sizes:
        before = _load()
        positions = os.path.join(scratch, f"pos_{n_p}_{n_m}.npy")
        r = _run_worker("time", n_p, n_m, args.repeat, args.threads, positions)
        if args.jaxpm:
            r["jaxpm"] = _jaxpm(args.jaxpm, positions, n_m, 2.0 * n_p)
        report["time"][f"{n_p}:{n_m}"] = r
        readout = r["readout"]
        share = 1 - r["forces"] / r["total"]
        share_ro = 1 - (r["forces"] + readout) / r["total"]
        share_particles = (r["passes"] - readout + r["rest"]) / r["total"]
        print(f"| {n_p}³ / {n_m}³ | {r['total']:.3f} | {r['ic']:.3f} | {r['forces']:.3f} | "
              f"{r['passes']:.3f} ({readout:.3f}) | {r['rest']:.3f} | {share:.0%} "
              f"({share_ro:.0%} with the readout as force) | {share_particles:.0%} | "
              f"{', '.join(f'{t:.2f}' for t in r['all_totals'])} | {before} / {_load()} |",
              flush=True)
        print(f"| (CPU time, same run) | {r['total_cpu']:.3f} | {r['ic_cpu']:.3f} | "
              f"{r['forces_cpu']:.3f} | {r['passes_cpu']:.3f} | {r['rest_cpu']:.3f} | "
              f"{1 - r['forces_cpu'] / r['total_cpu']:.0%} | | | |", flush=True)
    print("\nOne force evaluation (paint, FFTs, gradient, CIC readout in particle order) on the "
          "final positions, best of 5 [s]")
    print("| particles / mesh | cocasbi | JaxPM | JaxPM / cocasbi | min corr. of components |")
    print("|---|---|---|---|---|")
    for key, r in report["time"].items():
        j = r.get("jaxpm")
        n_p, n_m = key.split(":")
        print(f"| {n_p}³ / {n_m}³ | {r['force_each']:.4f} | "
              + (f"{j['best']:.4f} | {j['best'] / r['force_each']:.1f} | {j['correlation']:.4f} |"
                 if j else "– | – | – |"))
    if args.memory:
        print("\nPeak memory above the warmed-up process (ru_maxrss), one 10-step run each")
        print("| particles / mesh | method | peak above base [MB] | bytes per particle |")
        print("|---|---|---|---|")
        for n_p, n_m in sizes:
            for method in ("pm", "cola", "coca"):
                m = _run_worker("memory", n_p, n_m, method, args.threads)
                report["memory"][f"{n_p}:{n_m}:{method}"] = m
                print(f"| {n_p}³ / {n_m}³ | {method} | {m['above_base'] / 1e6:.0f} | "
                      f"{m['per_particle']:.0f} |", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
