"""Benchmark of the PM force evaluation, in one run.

Times, on the ``paper`` setup (64³ particles, 128³ mesh, L = 128 Mpc/h):

* one force evaluation ``ForceSolver.__call__`` and its parts (sort + paint, r2c, Green's
  function, c2r, gradient stencil, readout), on 2LPT positions at a = 0.05 and on the final
  positions (a = 1) of the COLA run;
* the floor: one CIC paint (``paint_cic``) plus one r2c and three c2r transforms of the mesh
  with the same library (pyFFTW), flags and threads;
* the spectral-gradient route (three c2r) and, with ``--baseline FILE``, an older ``mesh.py``;
* FFTW planner flags (ESTIMATE, MEASURE, optionally PATIENT) and threads (1 vs the benchmark's);
* full 20-step COLA runs of ``paper.yaml`` through ``cocasbi.simulation.simulate`` (their
  force time is ``ForceSolver.force_field``: the stepper fuses the readout into its particle
  pass).

Each figure is the median (and minimum) of ``--repeat`` timings after ``--warmup`` calls, with
time.perf_counter. The machine is described at the top, and the CPU time used by *other*
processes during the run is reported at the end (a shared machine inflates every figure).

    python experiments/bench_force.py [--threads 0] [--repeat 15] [--baseline old_mesh.py]
                                      [--patient] [--json out.json]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import subprocess
import sys
import time

import numba
import numpy as np

from cocasbi import cic, fft, gravity
from cocasbi.config import load_config
from cocasbi.cosmology import Cosmology
from cocasbi.simulation import initial_conditions, simulate
from cocasbi.threads import default_threads


# ---------------------------------------------------------------------------- helpers
def timed(fn, setup=None, repeat=15, warmup=3):
    """Median and minimum wall time [ms] of fn() over ``repeat`` calls; setup() is not timed."""
    for _ in range(warmup):
        if setup:
            setup()
        fn()
    ts = []
    for _ in range(repeat):
        if setup:
            setup()
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    ts = np.array(ts) * 1e3
    return float(np.median(ts)), float(ts.min())


def _busy_jiffies():
    """Busy CPU time of the whole machine [s] from /proc/stat (None if unavailable)."""
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
    except OSError:
        return None
    idle = v[3] + (v[4] if len(v) > 4 else 0)
    return (sum(v[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def machine():
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        model = next(ln.split(":", 1)[1].strip() for ln in lscpu.splitlines()
                     if ln.startswith("Model name"))
    except (OSError, StopIteration):
        model = platform.processor() or "?"
    return {
        "cpu": model,
        "cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "numba": numba.__version__,
        "pyfftw": (getattr(__import__("pyfftw"), "__version__", "?") if fft.HAVE_PYFFTW
                   else "missing"),
        "numba_threading_layer": None,  # filled after the first parallel call
    }


class TimedSolver:
    """A ForceSolver stand-in that records the wall time of each force evaluation."""

    def __init__(self, solver):
        self.solver, self.times = solver, []

    def __call__(self, positions, out=None):
        t0 = time.perf_counter()
        f = self.solver(positions, out=out)
        self.times.append(time.perf_counter() - t0)
        return f

    def force_field(self, positions):
        """Timed force mesh (the stepper fuses the readout into its particle pass)."""
        t0 = time.perf_counter()
        f = self.solver.force_field(positions)
        self.times.append(time.perf_counter() - t0)
        return f

    def __getattr__(self, name):
        return getattr(self.solver, name)


def load_module(path):
    name = os.path.splitext(os.path.basename(path))[0]  # numba's cache keys on the name
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def fft_plans(n, threads, flags=fft.FFTW_FLAGS):
    """Plain pyFFTW r2c plan and three c2r plans (each with its own input) for the floor."""
    import pyfftw

    real = pyfftw.empty_aligned((n,) * 3, dtype="float32")
    cplx = [pyfftw.empty_aligned((n, n, n // 2 + 1), dtype="complex64") for _ in range(4)]
    fwd = pyfftw.FFTW(real, cplx[0], axes=(0, 1, 2), direction="FFTW_FORWARD", flags=flags,
                      threads=threads)
    bwd = [pyfftw.FFTW(c, real, axes=(0, 1, 2), direction="FFTW_BACKWARD", flags=flags,
                       threads=threads) for c in cplx[1:]]
    return real, cplx, fwd, bwd


# ---------------------------------------------------------------------------- force parts
def force_parts(solver, pos, repeat, warmup):
    """Timings [ms] of one force evaluation and of each of its parts."""
    n, box = solver.n, solver.box_size
    cells = cic.locate(pos, n, box)
    sc, order, start = cic.sort_by_plane(cells, n)
    out = np.empty_like(pos)
    solver(pos, out=out)
    delta = solver.density(pos).copy()
    res = {}
    res["locate (CIC cells)"] = timed(lambda: cic.locate(pos, n, box, cells), repeat=repeat,
                                      warmup=warmup)
    res["sort (counting sort by mesh plane)"] = timed(
        lambda: cic.sort_by_plane(cells, n, sc, order), repeat=repeat, warmup=warmup)
    res["paint (CIC, sorted)"] = timed(lambda: cic.paint_sorted(solver._real, sc, start),
                                       repeat=repeat, warmup=warmup)

    def refill_real():
        solver._real[...] = delta

    res["r2c FFT"] = timed(solver._fwd.execute, refill_real, repeat, warmup)
    refill_real()
    solver._fwd.execute()
    modes = solver._cplx.copy()

    def refill_modes():
        solver._cplx[...] = modes

    res["Green's function (in place)"] = timed(
        lambda: gravity._apply_green(solver._cplx, *solver._lap, solver._factor),
        refill_modes, repeat, warmup)
    gravity._apply_green(solver._cplx, *solver._lap, solver._factor)
    pot = solver._cplx.copy()

    def refill_pot():
        solver._cplx[...] = pot

    res["c2r FFT (potential)"] = timed(solver._bwd.execute, refill_pot, repeat, warmup)
    refill_pot()
    solver._bwd.execute()
    scale = n / (12.0 * box)
    res["gradient (4-point stencil, 3 comp.)"] = timed(
        lambda: gravity._fd_gradient(solver._real, solver._force_mesh, scale),
        repeat=repeat, warmup=warmup)
    fm = solver._force_mesh
    res["readout (CIC, 3 comp.)"] = timed(
        lambda: cic.readout_cells(fm, sc, out=out, order=order),
        repeat=repeat, warmup=warmup)
    res["sum of parts"] = (sum(v[0] for v in res.values()), sum(v[1] for v in res.values()))
    res["force evaluation (ForceSolver.__call__)"] = timed(
        lambda: solver(pos, out=out), repeat=repeat, warmup=warmup)
    return res


def floor(pos, n, box, threads, repeat, warmup):
    """One paint (paint_cic) + one r2c + three c2r with the same library, flags and threads.

    Returns the part timings and (run, setup) for the floor itself.
    """
    real, cplx, fwd, bwd = fft_plans(n, threads)
    cic.paint_cic(pos, n, box, out=real)
    fwd.execute()
    modes = cplx[0].copy()

    def refill():  # c2r destroys its input: give each transform fresh modes (not timed)
        for c in cplx[1:]:
            c[...] = modes

    def run():
        cic.paint_cic(pos, n, box, out=real)
        fwd.execute()
        for b in bwd:
            b.execute()

    res = {
        "paint_cic (sort + paint)": timed(lambda: cic.paint_cic(pos, n, box, out=real),
                                          repeat=repeat, warmup=warmup),
        "r2c FFT": timed(fwd.execute, lambda: real.__setitem__(Ellipsis, 0.5), repeat, warmup),
        "3 x c2r FFT": timed(lambda: [b.execute() for b in bwd], refill, repeat, warmup),
    }
    return res, run, refill


def round_robin(contenders, repeat, warmup):
    """Time contenders {name: (fn, setup)} in turn, round after round, so that all of them see
    the same load on a shared machine. Returns {name: array of times [ms]}."""
    times = {k: [] for k in contenders}
    for r in range(warmup + repeat):
        for k, (fn, setup) in contenders.items():
            if setup:
                setup()
            t0 = time.perf_counter()
            fn()
            if r >= warmup:
                times[k].append((time.perf_counter() - t0) * 1e3)
    return {k: np.array(v) for k, v in times.items()}


def fft_variants(n, threads_list, flags_list, repeat, warmup):
    """Planning time and r2c / c2r time [ms] for each planner flag and thread count.

    Plans are made in order, so later ones may reuse FFTW wisdom gathered by earlier ones
    (an ESTIMATE plan does not help a MEASURE one; a MEASURE plan does help PATIENT).
    """
    import pyfftw

    rng = np.random.default_rng(0)
    field = rng.normal(size=(n,) * 3).astype(np.float32)
    res = {}
    for flag in flags_list:
        for th in threads_list:
            real = pyfftw.empty_aligned((n,) * 3, dtype="float32")
            cplx = pyfftw.empty_aligned((n, n, n // 2 + 1), dtype="complex64")
            flags = (flag, "FFTW_DESTROY_INPUT")
            t0 = time.perf_counter()
            fwd = pyfftw.FFTW(real, cplx, axes=(0, 1, 2), direction="FFTW_FORWARD",
                              flags=flags, threads=th)
            bwd = pyfftw.FFTW(cplx, real, axes=(0, 1, 2), direction="FFTW_BACKWARD",
                              flags=flags, threads=th)
            plan = time.perf_counter() - t0
            real[...] = field
            fwd.execute()
            modes = cplx.copy()
            r2c = timed(fwd.execute, lambda r=real: r.__setitem__(Ellipsis, field), repeat,
                        warmup)
            c2r = timed(bwd.execute, lambda c=cplx, m=modes: c.__setitem__(Ellipsis, m),
                        repeat, warmup)
            res[f"{flag} threads={th}"] = {"plan_s": plan, "r2c": r2c, "c2r": c2r}
    return res


# ---------------------------------------------------------------------------- main
def table(title, rows, ref=None):
    print(f"\n{title}")
    print(f"  {'part':<42} {'median ms':>10} {'min ms':>8}" + ("  share" if ref else ""))
    for k, (med, mn) in rows.items():
        share = f"  {med / ref:5.0%}" if ref else ""
        print(f"  {k:<42} {med:10.2f} {mn:8.2f}{share}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="paper")
    ap.add_argument("--threads", type=int, default=0, help="0 = every usable core")
    ap.add_argument("--repeat", type=int, default=15)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--cola-repeat", type=int, default=3)
    ap.add_argument("--baseline", help="path of an older mesh.py to time as well")
    ap.add_argument("--patient", action="store_true",
                    help="also plan with FFTW_PATIENT (slow planning)")
    ap.add_argument("--json", help="write every figure to this JSON file")
    args = ap.parse_args(argv)
    if args.baseline and not os.path.isfile(args.baseline):
        ap.error(f"--baseline {args.baseline}: no such file")

    wall0, busy0, cpu0 = time.perf_counter(), _busy_jiffies(), os.times()
    load0 = os.getloadavg()
    info = machine()
    cfg = load_config(args.config)
    sim = cfg.simulation
    cfg = cfg.model_copy(update={"simulation": sim.model_copy(update={"threads": args.threads})})
    sim = cfg.simulation
    n, box, threads = sim.n_mesh, sim.box_size, default_threads(args.threads)
    cosmo = Cosmology.from_config(cfg.cosmology)
    print(f"command: {' '.join([os.path.basename(sys.executable)] + sys.argv)}")
    print(f"machine: {info['cpu']}, {info['cpus']} CPUs ({info['usable_cpus']} usable); "
          f"load average at start {load0[0]:.2f} {load0[1]:.2f} {load0[2]:.2f}")
    print(f"setup: {args.config}: {sim.n_particles}^3 particles, {n}^3 mesh, L = {box} Mpc/h, "
          f"kernel {sim.kernel}, {threads} threads (FFTW and numba)")

    t0 = time.perf_counter()
    solver = gravity.ForceSolver(n, box, cosmo.Omega_m, sim.kernel, threads)
    t_plan = time.perf_counter() - t0
    info["numba_threads"] = numba.get_num_threads()
    lpt = initial_conditions(cfg, cosmo)
    pos_init = lpt.q + lpt.displacement(cosmo, sim.a_init)
    solver(pos_init)
    info["numba_threading_layer"] = numba.threading_layer()
    print(f"versions: python {info['python']}, numpy {info['numpy']}, numba {info['numba']} "
          f"(threading layer {info['numba_threading_layer']}), pyFFTW {info['pyfftw']}")
    print(f"first ForceSolver construction (FFTW planning, flags {fft.FFTW_FLAGS}): "
          f"{t_plan:.2f} s")

    results = {"machine": info, "threads": threads, "plan_s": t_plan, "command": sys.argv}

    # COLA runs first: they also give the late-time positions for the force timings
    cola = []
    timing = TimedSolver(solver)
    for _ in range(args.cola_repeat):
        timing.times.clear()
        t0 = time.perf_counter()
        res = simulate(cfg, solver=timing)
        cola.append((time.perf_counter() - t0, res.n_force_evaluations, sum(timing.times)))
    t_cola = simulate(cfg).wall_time  # with its own ForceSolver, as a user would call it
    pos_final = res.final.positions
    results["cola_s"] = [c[0] for c in cola]
    results["cola_force_s"] = [c[2] for c in cola]
    results["cola_own_solver_s"] = t_cola

    reps, warm = args.repeat, args.warmup
    results["force"] = {}
    for label, pos in (("2LPT a=0.05", pos_init), ("COLA a=1", pos_final)):
        pos = np.ascontiguousarray(pos)
        parts = force_parts(solver, pos, reps, warm)
        fl, floor_run, floor_setup = floor(pos, n, box, threads, reps, warm)
        out = np.empty_like(pos)
        contenders = {
            "force evaluation (ForceSolver.__call__)": (
                lambda p=pos, o=out: solver(p, out=o), None),
            "floor: paint + r2c + 3 c2r": (floor_run, floor_setup),
        }
        spectral = gravity.ForceSolver(n, box, cosmo.Omega_m, sim.kernel, threads,
                                    gradient="fourier")
        contenders["force, spectral gradient (1 r2c + 3 c2r)"] = (
            lambda p=pos, s=spectral: s(p), None)
        if args.baseline:
            old = load_module(args.baseline).ForceSolver(n, box, cosmo.Omega_m, sim.kernel,
                                                         threads)
            contenders["force, baseline " + os.path.basename(args.baseline)] = (
                lambda p=pos, s=old: s(p), None)
        paired = round_robin(contenders, reps, warm)
        table(f"force evaluation, positions {label}", parts,
              ref=parts["force evaluation (ForceSolver.__call__)"][0])
        table(f"floor, positions {label}", fl)
        ref = paired["floor: paint + r2c + 3 c2r"]
        print(f"\nround robin, positions {label} ({reps} rounds; ratio = median over rounds "
              "of time / floor time in the same round)")
        print(f"  {'':<42} {'median ms':>10} {'min ms':>8} {'ratio':>6}")
        for k, v in paired.items():
            print(f"  {k:<42} {np.median(v):10.2f} {v.min():8.2f} {np.median(v / ref):6.2f}")
        force = paired["force evaluation (ForceSolver.__call__)"]
        results["force"][label] = {
            "parts": parts, "floor": fl,
            "round_robin": {k: [float(np.median(v)), float(v.min()), float(np.median(v / ref))]
                            for k, v in paired.items()},
            "ratio_force_floor": float(np.median(force / ref)),
        }

    flag_list = ["FFTW_ESTIMATE", "FFTW_MEASURE"] + (["FFTW_PATIENT"] if args.patient else [])
    variants = fft_variants(n, sorted({1, threads}), flag_list, reps, warm)
    print(f"\nFFTW planner flags and threads (pyFFTW, float32 {n}^3, out of place; the force "
          f"uses {fft.FFTW_FLAGS[0]})")
    print(f"  {'':<28} {'planning s':>10} {'r2c ms':>8} {'c2r ms':>8}  (median)")
    for k, r in variants.items():
        print(f"  {k:<28} {r['plan_s']:10.2f} {r['r2c'][0]:8.2f} {r['c2r'][0]:8.2f}")
    results["fft_variants"] = variants

    print(f"\nCOLA {sim.n_steps} steps, {args.config}.yaml, simulate(cfg, solver=...): "
          + ", ".join(f"{c[0]:.2f} s" for c in cola)
          + f" (median {np.median([c[0] for c in cola]):.2f} s, {cola[0][1]} force evaluations)")
    print("  of which force evaluations: " + ", ".join(f"{c[2]:.2f} s" for c in cola)
          + f" ({1e3 * cola[-1][2] / cola[-1][1]:.1f} ms per evaluation in the last run)")
    print(f"COLA simulate(cfg) with its own ForceSolver: {t_cola:.2f} s")

    wall = time.perf_counter() - wall0
    cpu1 = os.times()
    own = (cpu1.user + cpu1.system) - (cpu0.user + cpu0.system)
    busy1 = _busy_jiffies()
    load1 = os.getloadavg()
    print(f"\nrun: {wall:.1f} s wall, {own:.1f} s CPU in this process; load average at end "
          f"{load1[0]:.2f} {load1[1]:.2f} {load1[2]:.2f}")
    if busy0 is not None and busy1 is not None:
        others = max(0.0, (busy1 - busy0) - own)
        print(f"CPU used by other processes during the run: {others:.1f} s "
              f"({others / wall:.2f} cores on average)")
        results["others_cores"] = others / wall
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1, default=str)


if __name__ == "__main__":
    main()
