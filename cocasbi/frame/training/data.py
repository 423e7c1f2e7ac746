"""Training data for the COCA frame emulator: COLA runs stored one HDF5 file per simulation.

One training sample is what a frame model sees (inputs) and what it must predict (targets)
for one COLA simulation (:func:`training_sample` makes it, :func:`write_sample` stores it).
Each file ``sim_NNNNN.h5`` holds:

* ``psi1``, ``psi2``: the a = 1 LPT displacement fields on the particle lattice,
  (N, N, N, 3) float32 [Mpc/h], lattice (C) order (ix, iy, iz, component);
* ``times``: every time the COCA stepper queries a frame (boundaries and half steps,
  :meth:`cocasbi.nbody.TimeSchedule.query_times`), float64;
* ``residual``: the COLA residual momentum p − p_LPT at each of those times,
  (n_times, N, N, N, 3) float32 [Mpc/h] (p = a² dx/dt / H0);
* attributes: the cosmology (every name of :data:`cocasbi.cosmology.PARAMETERS`), the seed of
  the initial conditions (``seed_json``: :func:`cocasbi.seeds.describe`; for simulation
  ``index`` of a data set it is :func:`cocasbi.seeds.simulation_seed` ``(master_seed, index)``),
  the full configuration as JSON, wall time and force count.

Cosmologies: without a prior every run uses the configuration's cosmology; with a
:class:`cocasbi.prior.BoxPrior` (e.g. :data:`cocasbi.prior.DEFAULT_PRIOR`) simulation ``i``
takes row ``i`` of the prior's design of the data set's first ``start + n_sims`` simulations,
drawn from :func:`cocasbi.seeds.design_seed` ``(master_seed)`` (:func:`training_design`).

Files are written atomically (temporary file + rename), so an existing file means a finished
simulation and :func:`make_training_data` resumes by skipping it.

Sizes: tiny (32³, 10 steps, 21 times) 8 MB per file; paper (64³, 20 steps, 41 times) 130 MB.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
from tqdm.auto import tqdm

from cocasbi.config import Config
from cocasbi.cosmology import PARAMETERS
from cocasbi.io.atomic import atomic_path
from cocasbi.nbody import ResidualRecorder
from cocasbi.prior import BoxPrior, Design
from cocasbi.seeds import (
    as_seed_sequence,
    describe,
    design_seed,
    from_description,
    simulation_seed,
)
from cocasbi.simulation import simulate

FORMAT_VERSION = 2


@dataclass(frozen=True)
class TrainingSample:
    """One COLA run as frame training data (arrays as stored: float32 fields, float64 times).

    cosmology: every parameter of :data:`~cocasbi.cosmology.PARAMETERS`; seed: the
    :func:`cocasbi.seeds.describe` of the initial-condition stream; box_size [Mpc/h];
    psi1, psi2 (N, N, N, 3) [Mpc/h]; times, boundaries, half: scale factors;
    residual (n_times, N, N, N, 3) [Mpc/h]; config_json: the run's configuration;
    wall_time [s]; n_force_evaluations.
    """

    cosmology: dict[str, float]
    seed: dict
    box_size: float
    psi1: np.ndarray
    psi2: np.ndarray
    times: np.ndarray
    boundaries: np.ndarray
    half: np.ndarray
    residual: np.ndarray
    config_json: str
    wall_time: float
    n_force_evaluations: int


def training_design(prior: BoxPrior | Mapping, n_sims: int, master_seed: int,
                    design: Design = "latin_hypercube") -> list[dict[str, float]]:
    """θ of simulations ``0 … n_sims−1`` of a data set: the ``prior``'s ``design`` drawn from
    ``design_seed(master_seed)``, as one ``{name: value}`` dict per simulation."""
    if not isinstance(prior, BoxPrior):
        prior = BoxPrior.from_dict(prior)
    if n_sims < 0:
        raise ValueError(f"n_sims={n_sims} must be >= 0")
    theta = prior.design(n_sims, np.random.default_rng(design_seed(master_seed)), design)
    return [dict(zip(prior.names, map(float, row), strict=True)) for row in theta]


def training_sample(cfg: Config, theta_by_name: Mapping[str, float] | None,
                    seed) -> TrainingSample:
    """Run one COLA simulation of ``cfg`` and return it as a :class:`TrainingSample`.

    theta_by_name: cosmological parameters replacing the config's (None: keep them);
    seed: the initial-condition stream (a SeedSequence, e.g. ``simulation_seed(master, i)``,
    or an int). Deterministic in (cfg, θ, seed); every force is evaluated (plain COLA).
    """
    theta = dict(theta_by_name or {})
    unknown = sorted(set(theta) - set(PARAMETERS))
    if unknown:
        raise ValueError(f"unknown cosmological parameter(s) {unknown}; choose from {PARAMETERS}")
    seed = as_seed_sequence(seed)
    run_cfg = cfg.replace(simulation={"method": "cola"},
                          cosmology={k: float(v) for k, v in theta.items()})
    rec = ResidualRecorder()
    res = simulate(run_cfg, seed=seed, observers=[rec], forces="all")
    n = run_cfg.simulation.n_particles
    frame = rec.frame()
    return TrainingSample(
        cosmology={k: float(getattr(run_cfg.cosmology, k)) for k in PARAMETERS},
        seed=describe(seed),
        box_size=float(run_cfg.simulation.box_size),
        psi1=_grid(res.lpt.psi1, n),
        psi2=_grid(res.lpt.psi2, n),
        times=np.asarray(frame.times, dtype=np.float64),
        boundaries=np.asarray(res.schedule.boundaries, dtype=np.float64),
        half=np.asarray(res.schedule.half, dtype=np.float64),
        residual=frame.momenta.astype(np.float32).reshape(len(frame.times), n, n, n, 3),
        config_json=res.config.model_dump_json(),
        wall_time=float(res.wall_time),
        n_force_evaluations=int(res.n_force_evaluations),
    )


def _grid(field: np.ndarray, n: int) -> np.ndarray:
    return np.asarray(field, dtype=np.float32).reshape(n, n, n, 3)


def sample_path(out_dir: str | Path, index: int) -> Path:
    """File of simulation ``index`` in ``out_dir``: ``sim_NNNNN.h5``."""
    return Path(out_dir) / f"sim_{index:05d}.h5"


def write_sample(path: str | Path, sample: TrainingSample) -> Path:
    """Write one sample atomically (``path`` appears only once complete)."""
    path = Path(path)
    n = sample.psi1.shape[0]
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.attrs["format_version"] = FORMAT_VERSION
        f.attrs["seed_json"] = json.dumps(sample.seed)
        f.attrs["config_json"] = sample.config_json
        f.attrs["box_size"] = float(sample.box_size)
        f.attrs["n_particles"] = int(n)
        f.attrs["wall_time"] = float(sample.wall_time)
        f.attrs["n_force_evaluations"] = int(sample.n_force_evaluations)
        for k, v in sample.cosmology.items():
            f.attrs[k] = float(v)
        f.attrs["units"] = "Mpc/h; momenta p = a^2 dx/dt / H0"
        f.create_dataset("psi1", data=sample.psi1)
        f.create_dataset("psi2", data=sample.psi2)
        f.create_dataset("times", data=sample.times)
        f.create_dataset("boundaries", data=sample.boundaries)
        f.create_dataset("half", data=sample.half)
        f.create_dataset("residual", data=sample.residual, chunks=(1, n, n, n, 3))
    return path


def make_training_data(cfg: Config, out_dir: str | Path, n_sims: int, master_seed: int = 0,
                       start: int = 0, prior: BoxPrior | Mapping | None = None,
                       design: Design = "latin_hypercube",
                       progress: bool = True) -> list[Path]:
    """Run COLA simulations ``start … start+n_sims−1`` of ``cfg`` and store them in ``out_dir``.

    Simulation ``i`` starts from ``simulation_seed(master_seed, i)``; with a ``prior`` (e.g.
    :data:`cocasbi.prior.DEFAULT_PRIOR`, or ``{"sigma8": (0.7, 0.9)}``) its cosmology is row
    ``i`` of :func:`training_design` ``(prior, start + n_sims, master_seed, design)``; None
    keeps the config's. Resumable: a simulation whose file exists is skipped. Returns the
    paths of all ``n_sims`` files.
    """
    if start < 0 or n_sims < 0:
        raise ValueError(f"start={start} and n_sims={n_sims} must be >= 0")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    thetas = (training_design(prior, start + n_sims, master_seed, design) if prior is not None
              else [None] * (start + n_sims))
    paths = []
    for index in tqdm(range(start, start + n_sims), desc="frame data", disable=not progress):
        path = sample_path(out_dir, index)
        if not path.exists():
            write_sample(path, training_sample(cfg, thetas[index],
                                               simulation_seed(master_seed, index)))
        paths.append(path)
    return paths


@dataclass
class FrameSample:
    """One stored simulation. Arrays as in the file (float32 fields, float64 times)."""

    path: Path
    cosmology: dict[str, float]
    seed: np.random.SeedSequence
    box_size: float
    times: np.ndarray
    psi1: np.ndarray
    psi2: np.ndarray
    residual: np.ndarray | None = None

    @property
    def n(self) -> int:
        return self.psi1.shape[0]


def _stored_seed(attrs) -> np.random.SeedSequence:
    if "seed_json" in attrs:
        return from_description(json.loads(attrs["seed_json"]))
    return simulation_seed(int(attrs["master_seed"]), int(attrs["index"]))  # format 1


def read_sample(path: str | Path, residual: bool = True) -> FrameSample:
    """Load one file; ``residual=False`` skips the (large) residual array."""
    path = Path(path)
    with h5py.File(path, "r") as f:
        a = f.attrs
        return FrameSample(
            path=path,
            cosmology={k: float(a[k]) for k in PARAMETERS},
            seed=_stored_seed(a),
            box_size=float(a["box_size"]),
            times=f["times"][...],
            psi1=f["psi1"][...],
            psi2=f["psi2"][...],
            residual=f["residual"][...] if residual else None,
        )


def list_samples(data_dir: str | Path) -> list[Path]:
    """Finished simulation files in ``data_dir``, sorted by index."""
    return sorted(Path(data_dir).glob("sim_*.h5"))


def iter_samples(paths: Sequence[Path], residual: bool = True) -> Iterator[FrameSample]:
    for p in paths:
        yield read_sample(p, residual=residual)


def config_of(path: str | Path) -> Config:
    """The configuration a data file was generated with."""
    with h5py.File(path, "r") as f:
        return Config.model_validate(json.loads(f.attrs["config_json"]))
