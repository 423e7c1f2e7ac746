"""One simulation from a :class:`~cocasbi.config.Config`: ICs, stepping, snapshots.

``simulate(cfg)`` is the Python entry point behind ``cocasbi simulate``; it returns a
:class:`SimulationResult` holding the final particles and any requested snapshots.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

import numpy as np

from cocasbi.config import Config
from cocasbi.cosmology import Cosmology
from cocasbi.gravity import ForceSolver
from cocasbi.ic import LPTFields, linear_field_modes, lpt_fields
from cocasbi.nbody import Frame, Stepper, TimeSchedule, force_schedule
from cocasbi.seeds import as_seed_sequence, describe
from cocasbi.threads import numba_threads


@dataclass
class Snapshot:
    """Particles at one time: positions x [Mpc/h] (unwrapped, float64) and momenta
    p = a² dx/dt / H0 [Mpc/h]; peculiar velocity v = 100 p / a [km/s]."""

    a: float
    positions: np.ndarray
    momenta: np.ndarray

    def velocities(self) -> np.ndarray:
        """Peculiar velocities [km/s]."""
        return 100.0 * self.momenta / self.a


@dataclass
class SimulationResult:
    """One finished run. ``seed`` records the stream the initial phases came from, as
    ``{"entropy": int, "spawn_key": [...]}`` (:func:`cocasbi.seeds.describe`), whether it was
    passed as an int or as a SeedSequence."""

    config: Config
    seed: dict
    cosmology: Cosmology
    lpt: LPTFields
    schedule: TimeSchedule
    final: Snapshot
    snapshots: dict[float, Snapshot] = field(default_factory=dict)
    n_force_evaluations: int = 0
    wall_time: float = 0.0  # [s], everything: ICs, frame model, stepping
    frame_seconds: float = 0.0  # [s] spent evaluating a frame emulator (part of wall_time)


class _SnapshotTaker:
    def __init__(self, times):
        self.times = set(float(t) for t in times)
        self.taken: dict[float, Snapshot] = {}

    def __call__(self, event, a, stepper):
        if event == "boundary" and a in self.times:
            self.taken[a] = Snapshot(a, stepper.x.copy(), stepper.momenta())


def estimated_memory(cfg: Config) -> int:
    """Peak memory of one simulation of ``cfg`` in a fresh process [bytes]: 300 MB of
    interpreter and libraries, 169 B per particle for PM and COLA (407 B for COCA: the frame's
    cached fields) and 25 B per mesh cell. Measured (experiments/bench_engine.py --memory,
    docs/performance.md): 225 MB, 154 B (COCA 370 B) and 23 B; the estimate keeps a 10 %
    margin, as the same run's peak moves by a few per cent with the process's history
    (tests/test_process_state.py)."""
    sim = cfg.simulation
    per_particle = 407 if sim.method == "coca" else 169
    return int(300e6 + per_particle * sim.n_particles**3 + 25 * sim.n_mesh**3)


def available_memory() -> int:
    """Memory this machine can still give [bytes] (MemAvailable on Linux)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def check_memory(cfg: Config) -> None:
    """MemoryError naming the sizes if a simulation of ``cfg`` would not fit in memory."""
    need, have = estimated_memory(cfg), available_memory()
    if need > have:
        sim = cfg.simulation
        raise MemoryError(f"{sim.n_particles}^3 particles on a {sim.n_mesh}^3 mesh need about "
                          f"{need / 1e9:.3g} GB; only {have / 1e9:.3g} GB are available")


def initial_conditions(cfg: Config, cosmo: Cosmology, seed=None) -> LPTFields:
    """LPT fields for the configured grid; ``seed`` (int or SeedSequence) overrides the config."""
    sim = cfg.simulation
    modes = linear_field_modes(
        sim.n_particles, sim.box_size, cosmo, as_seed_sequence(sim.seed if seed is None else seed),
        fixed_amplitude=sim.fixed_amplitude, paired=sim.paired, threads=sim.threads,
    )
    return lpt_fields(modes, sim.box_size, sim.n_mesh, order=sim.lpt_order, threads=sim.threads)


def simulate(cfg: Config, seed=None, frame: Frame | None = None, forces="all",
             observers=(), progress: bool = False, solver: ForceSolver | None = None,
             lpt: LPTFields | None = None) -> SimulationResult:
    """Run one simulation of ``cfg`` (method, schedule and seed from the config).

    seed: overrides ``cfg.simulation.seed``; frame: a COCA frame (method ``coca``), or a
    frame emulator (:func:`cocasbi.frame.load_frame`), bound here to this run's ICs;
    forces: force schedule spec or boolean mask (see :func:`cocasbi.nbody.force_schedule`);
    observers: callables ``(event, a, stepper)``; solver / lpt: reuse a force solver or
    precomputed LPT fields.
    """
    t0 = time.perf_counter()
    sim = cfg.simulation
    if lpt is None:
        check_memory(cfg)
    seed = as_seed_sequence(sim.seed if seed is None else seed)
    cosmo = Cosmology.from_config(cfg.cosmology)
    schedule = TimeSchedule.from_config(sim)
    mask = force_schedule(forces, schedule.n_steps, sim.final_kick)
    if lpt is None:
        lpt = initial_conditions(cfg, cosmo, seed)
    t_frame = time.perf_counter()
    if hasattr(frame, "bind"):  # a trained frame emulator: one model evaluation for this run
        frame = frame.bind(lpt, cosmo, sim.box_size)
    t_frame = time.perf_counter() - t_frame
    owned = solver is None
    if owned:
        solver = ForceSolver(sim.n_mesh, sim.box_size, cosmo.Omega_m, sim.kernel, sim.threads)
    snaps = _SnapshotTaker(sim.snapshots)
    with numba_threads(sim.threads):
        stepper = Stepper(
            cosmo, lpt, schedule, solver, sim.box_size, method=sim.method,
            pm_factors=sim.pm_factors, frame=frame, forces=mask, kicks=sim.kicks,
            observers=[snaps, *observers],
        ).run(progress=progress)
    if owned:
        solver.release_particles()  # the final momenta take the place of its work arrays
    final = Snapshot(float(schedule.boundaries[-1]), stepper.x, stepper.momenta())
    if not (np.isfinite(final.positions).all() and np.isfinite(final.momenta).all()):
        raise FloatingPointError(
            f"simulation {cfg.name!r} (seed {describe(seed)}) produced non-finite positions "
            "or momenta")
    return SimulationResult(
        config=cfg, seed=describe(seed), cosmology=cosmo, lpt=lpt,
        schedule=schedule, final=final, snapshots=snaps.taken,
        n_force_evaluations=stepper.n_force_evaluations,
        wall_time=time.perf_counter() - t0, frame_seconds=t_frame,
    )
