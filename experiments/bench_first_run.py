"""The first simulation of a process with and without numpy's huge-page advice.

numpy advises transparent huge pages (madvise MADV_HUGEPAGE) for every array of 4 MB or more;
``cocasbi.threads.configure_process`` turns that off. This script measures why: in fresh
processes, alternating the two settings (``NUMPY_MADVISE_HUGEPAGE=1`` restores numpy's
default, which ``configure_process`` then respects), each process configures itself as the
command line does, warms numba up on a 16³ run, then times ``--runs`` 10-step COLA simulations
of one size (ICs included) with different seeds. The first run is what a ``cocasbi simulate``
call or a campaign worker's first task pays; the later ones reuse the heap.

    python experiments/bench_first_run.py [--size 128:128] [--processes 4] [--runs 4]
                                          [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

WORKER = """
import json, sys, time
from cocasbi.threads import configure_process
configure_process(0)
sys.path.insert(0, {here!r})
from bench_engine import _config, _warm_up
from cocasbi.simulation import simulate
_warm_up(0)
cfg = _config({n_p}, {n_m}, "cola", 0)
times = []
for seed in range({runs}):
    t0 = time.perf_counter()
    simulate(cfg, seed=seed)
    times.append(time.perf_counter() - t0)
print(json.dumps(times))
"""


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="128:128", help="particles:mesh (cells per side)")
    ap.add_argument("--processes", type=int, default=4, help="processes per setting")
    ap.add_argument("--runs", type=int, default=4, help="simulations per process")
    ap.add_argument("--json", help="write the times to this file")
    args = ap.parse_args(argv)
    n_p, n_m = (int(v) for v in args.size.split(":"))
    code = WORKER.format(here=os.path.dirname(os.path.abspath(__file__)), n_p=n_p, n_m=n_m,
                         runs=args.runs)
    settings = {"advice on (numpy default)": "1", "advice off (configure_process)": None}
    times = {name: [] for name in settings}
    for _ in range(args.processes):
        for name, value in settings.items():
            env = {k: v for k, v in os.environ.items() if k != "NUMPY_MADVISE_HUGEPAGE"}
            if value is not None:
                env["NUMPY_MADVISE_HUGEPAGE"] = value
            out = subprocess.run([sys.executable, "-c", code], env=env, check=True,
                                 capture_output=True, text=True).stdout
            times[name].append(json.loads(out.strip().splitlines()[-1]))
    print(f"10-step COLA {n_p}³ / {n_m}³, {args.processes} fresh processes per setting, "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} [s]")
    print("| numpy huge-page advice | first run of each process | later runs, median |")
    print("|---|---|---|")
    for name, runs in times.items():
        first = ", ".join(f"{r[0]:.2f}" for r in runs)
        later = float(np.median([t for r in runs for t in r[1:]]))
        print(f"| {name} | {first} | {later:.2f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"size": args.size, "times": times}, f, indent=1)


if __name__ == "__main__":
    main()
