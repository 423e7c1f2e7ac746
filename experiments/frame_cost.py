"""Cost of COCA and COLA runs on paper.yaml, robust to a shared machine.

One cosmology (fiducial), one seed, the shipped ``paper`` frame, final force skipped. For
each run: the best of ``REPEAT`` wall times and of CPU times (``time.process_time``: all
threads of this process, so it does not grow when other jobs take the cores; on an idle
2-core machine wall ≈ CPU / (1 … 2)). Runs: COLA-n; COCA with 0/1/2/4 forces on the 20-step
schedule, with force-free steps collapsed (default) and step by step (an observer that names
every boundary stops the collapsing), the largest position difference between the two;
COCA with 1/2/4 forces and ``kicks: interval``.

    python experiments/frame_cost.py RESULTS.json [FRAME]

(with FRAME, another frame than ``paper``, only the COCA runs are timed)
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

from cocasbi.config import load_config
from cocasbi.frame import load_frame
from cocasbi.nbody import TimeSchedule, force_schedule
from cocasbi.simulation import simulate

REPEAT = 3
COLA_STEPS = (1, 2, 3, 4, 6, 8, 12, 20)
COCA_FORCES = (0, 1, 2, 4)
INTERVAL_FORCES = (1, 2, 4)


class _EveryBoundary:
    def __init__(self, times):
        self.times = set(float(t) for t in times)

    def __call__(self, event, a, stepper):
        pass


def timed(fn) -> tuple[dict, object]:
    walls, cpus, res = [], [], None
    for _ in range(REPEAT):
        c0 = time.process_time()
        res = fn()
        cpus.append(time.process_time() - c0)
        walls.append(res.wall_time)
    return {"wall_s": min(walls), "cpu_s": min(cpus),
            "frame_s": float(getattr(res, "frame_seconds", 0.0))}, res


def main(out_json, frame=None):
    cfg = load_config("paper").replace(simulation={"final_kick": False})
    coca = cfg.replace(simulation={"method": "coca"})
    emu = load_frame(frame or "paper")
    boundaries = TimeSchedule.from_config(cfg.simulation).boundaries
    res = {"repeat": REPEAT, "cola": {}, "coca": {}, "coca_step_by_step": {},
           "coca_interval": {}}
    for n in COLA_STEPS if frame is None else ():
        res["cola"][n], _ = timed(lambda n=n: simulate(
            cfg.replace(simulation={"n_steps": n}), seed=1))
        print("cola", n, res["cola"][n], flush=True)
    for n in COCA_FORCES:
        forces = force_schedule(f"even:{n}", cfg.simulation.n_steps, final_kick=False)
        res["coca"][n], fast = timed(lambda f=forces: simulate(coca, seed=1, frame=emu,
                                                                 forces=f))
        res["coca_step_by_step"][n], slow = timed(lambda f=forces: simulate(
            coca, seed=1, frame=emu, forces=f, observers=[_EveryBoundary(boundaries)]))
        res["coca"][n]["max_dx_vs_step_by_step"] = float(
            np.abs(fast.final.positions - slow.final.positions).max())
        print("coca", n, res["coca"][n], res["coca_step_by_step"][n], flush=True)
    interval = coca.replace(simulation={"kicks": "interval"})
    for n in INTERVAL_FORCES:
        forces = force_schedule(f"even:{n}", cfg.simulation.n_steps, final_kick=False)
        res["coca_interval"][n], _ = timed(lambda f=forces: simulate(interval, seed=1,
                                                                      frame=emu, forces=f))
        print("coca interval", n, res["coca_interval"][n], flush=True)
    Path(out_json).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main(*sys.argv[1:3])
