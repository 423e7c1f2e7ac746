"""Start-up time of the command line: ``cocasbi --help`` and ``cocasbi <group> --help``.

    python experiments/bench_cli.py [--repeat 10]

Runs each command ``--repeat`` times in a fresh process and reports the median and minimum wall
time, and which heavy libraries (numba, pyFFTW, torch, Dask, sbi) ``cocasbi --help`` imported
(it should import none of them: the command groups are loaded lazily).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time

HEAVY = ("numba", "pyfftw", "torch", "dask", "distributed", "sbi", "h5py", "scipy")
PROBE = ("import sys; from cocasbi.cli import main; sys.argv = ['cocasbi', '--help']\n"
         "try:\n    main()\nexcept SystemExit:\n    pass\n"
         f"print(sorted(m for m in {HEAVY!r} if m in sys.modules), file=sys.stderr)")


def timed(cmd: list[str], repeat: int) -> list[float]:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        subprocess.run(cmd, capture_output=True, check=True)  # a failing command is no timing
        times.append(time.perf_counter() - t0)
    return times


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=10)
    args = parser.parse_args()
    exe = shutil.which("cocasbi") or f"{sys.executable} -m cocasbi"
    base = exe.split()
    rows = {}
    for extra in ([], ["simulate"], ["campaign"], ["frame"], ["infer"], ["certify"]):
        cmd = [*base, *extra, "--help"]
        t = timed(cmd, args.repeat)
        rows[" ".join(["cocasbi", *extra, "--help"])] = (statistics.median(t), min(t))
    probe = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True)
    heavy = probe.stderr.strip().splitlines()[-1]
    t = timed([sys.executable, "-c", "pass"], args.repeat)
    print(f"machine: {os.cpu_count()} cores; python {sys.version.split()[0]}; "
          f"bare interpreter start {statistics.median(t):.3f} s (median)")
    print(f"{'command':36s} {'median [s]':>10s} {'min [s]':>8s}")
    for name, (med, low) in rows.items():
        print(f"{name:36s} {med:10.3f} {low:8.3f}")
    print(f"heavy libraries imported by `cocasbi --help`: {heavy}")
    print(json.dumps({k: v[0] for k, v in rows.items()}))


if __name__ == "__main__":
    main()
