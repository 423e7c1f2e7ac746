"""The engine against an earlier commit, side by side in one process: 10-step COLA run times.

On a shared machine the speed of the same code drifts by tens of per cent from minute to
minute, so two benchmark runs taken one after the other can show a gain that is only the
drift. This script imports the package of an earlier commit next to the working tree's (a copy
of ``cocasbi/`` from ``git archive REV``, renamed ``cocasbi_<sha>``) and alternates the two,
run by run, in one process with the same threads: each round runs the initial conditions and a
10-step COLA simulation (``simulate(cfg, lpt=..., solver=...)``, as ``bench_engine.py``) of
each version, timing the force evaluations (``ForceSolver.force_field``) and the particle
passes (``nbody._particle_pass``) inside the run. Both versions see the same load, and the
report gives the minimum and the median over rounds, and the ratio of the medians.

    python experiments/bench_engine_ab.py REV [--sizes 128:128] [--rounds 12] [--threads 0]
                                              [--json out.json]
"""

from __future__ import annotations

import argparse
import importlib
import io
import json
import os
import re
import subprocess
import sys
import tarfile
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_engine import _config  # noqa: E402

PARTS = ("total", "ic", "forces", "passes", "rest")


def import_commit(rev: str) -> str:
    """Import the ``cocasbi`` package of commit ``rev`` under another name; returns the name.

    The copy lives in the temporary directory, one per commit, so that numba's cache of its
    kernels is reused by later runs.
    """
    root = subprocess.run(["git", "rev-parse", "--show-toplevel"], check=True,
                          capture_output=True, text=True).stdout.strip()
    sha = subprocess.run(["git", "rev-parse", "--short", rev], check=True, cwd=root,
                         capture_output=True, text=True).stdout.strip()
    name = f"cocasbi_{sha}"
    base = os.path.join(tempfile.gettempdir(), f"bench_engine_ab_{sha}")
    if not os.path.isdir(os.path.join(base, name)):
        archive = subprocess.run(["git", "archive", sha, "cocasbi"], check=True, cwd=root,
                                 capture_output=True).stdout
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            tar.extractall(base, filter="data")
        os.rename(os.path.join(base, "cocasbi"), os.path.join(base, name))
        for folder, _, files in os.walk(os.path.join(base, name)):
            for file in files:
                if file.endswith(".py"):
                    path = os.path.join(folder, file)
                    with open(path) as f:
                        text = f.read()
                    text = re.sub(r"\bcocasbi(?=[.\s\"'])", name, text)
                    with open(path, "w") as f:
                        f.write(text)
    sys.path.insert(0, base)
    return name


class _Version:
    """One version of the package, with its force evaluations and passes timed."""

    def __init__(self, package: str, n_particles: int, n_mesh: int, threads: int):
        def module(sub):
            return importlib.import_module(f"{package}.{sub}")

        self.name, self.acc = package, {"forces": 0.0, "passes": 0.0}
        self.simulation, nbody = module("simulation"), module("nbody")
        self.cfg = _config(n_particles, n_mesh, "cola", threads)
        self.cosmo = module("cosmology").Cosmology.from_config(self.cfg.cosmology)
        sim = self.cfg.simulation
        self.solver = module("gravity").ForceSolver(sim.n_mesh, sim.box_size,
                                                    self.cosmo.Omega_m, sim.kernel, threads)
        self.solver.force_field = self._timed(self.solver.force_field, "forces")
        nbody._particle_pass = self._timed(nbody._particle_pass, "passes")
        self.runs = {part: [] for part in PARTS}

    def _timed(self, fn, key):
        def wrapper(*args, **kwargs):
            t0 = time.perf_counter()
            out = fn(*args, **kwargs)
            self.acc[key] += time.perf_counter() - t0
            return out
        return wrapper

    def run(self, seed: int, keep: bool) -> None:
        self.acc.update(forces=0.0, passes=0.0)
        t0 = time.perf_counter()
        lpt = self.simulation.initial_conditions(self.cfg, self.cosmo, seed=seed)
        t_ic = time.perf_counter() - t0
        self.simulation.simulate(self.cfg, lpt=lpt, solver=self.solver)
        total = time.perf_counter() - t0
        if keep:
            for part, value in zip(PARTS, (total, t_ic, self.acc["forces"], self.acc["passes"],
                                           total - t_ic - self.acc["forces"]
                                           - self.acc["passes"]), strict=True):
                self.runs[part].append(value)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("rev", help="the earlier commit (anything git rev-parse accepts)")
    ap.add_argument("--sizes", default="128:128", help="comma-separated particles:mesh")
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--json", help="write every run time to this file")
    args = ap.parse_args(argv)
    from cocasbi.threads import configure_process, numba_threads

    configure_process(args.threads)
    old = import_commit(args.rev)
    report = {"rev": args.rev, "package": old, "threads": args.threads, "rounds": args.rounds,
              "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "sizes": {}}
    print(f"10-step COLA, {old} (before) and the working tree (now) alternating, "
          f"{args.rounds} rounds after a warm-up, threads={args.threads}; min / median [s]")
    print("| particles / mesh | version | total | ICs | forces | particle passes | rest |")
    print("|---|---|---|---|---|---|---|")
    with numba_threads(args.threads):
        for size in args.sizes.split(","):
            n_p, n_m = (int(v) for v in size.split(":"))
            versions = [_Version(p, n_p, n_m, args.threads) for p in (old, "cocasbi")]
            for r in range(args.rounds + 1):  # round 0 warms up (compilation, first touch)
                for v in versions:
                    v.run(seed=r, keep=r > 0)
            report["sizes"][size] = {v.name: v.runs for v in versions}
            for label, v in zip(("before", "now"), versions, strict=True):
                cells = " | ".join(f"{min(v.runs[p]):.3f} / {np.median(v.runs[p]):.3f}"
                                   for p in PARTS)
                print(f"| {n_p}³ / {n_m}³ | {label} | {cells} |")
            before, now = (v.runs for v in versions)
            ratio = " | ".join(f"{np.median(now[p]) / np.median(before[p]):.2f}" for p in PARTS)
            print(f"| {n_p}³ / {n_m}³ | now / before (medians) | {ratio} |", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
