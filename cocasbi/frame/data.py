"""Training data for the COCA frame emulator: COLA runs stored one HDF5 file per simulation.

Each file ``sim_NNNNN.h5`` holds what a frame model sees (inputs) and what it must predict
(targets) for one COLA simulation:

* ``psi1``, ``psi2``: the a = 1 LPT displacement fields on the particle lattice,
  (N, N, N, 3) float32 [Mpc/h], lattice (C) order (ix, iy, iz, component);
* ``times``: every time the COCA stepper queries a frame (boundaries and half steps,
  :meth:`cocasbi.nbody.TimeSchedule.query_times`), float64;
* ``residual``: the COLA residual momentum p − p_LPT at each of those times,
  (n_times, N, N, N, 3) float32 [Mpc/h] (p = a² dx/dt / H0);
* attributes: the cosmology (``Omega_m``, ``sigma8``, ...), the seed stream (``master_seed``,
  ``index``: the ICs come from ``SeedSequence(master_seed, spawn_key=(index,))``), the full
  configuration as JSON, wall time and force count.

Files are written atomically (temporary file + rename), so an existing file means a finished
simulation and :func:`make_training_data` resumes by skipping it.

Sizes: tiny (32³, 10 steps, 21 times) 8 MB per file; paper (64³, 20 steps, 41 times) 130 MB.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
from tqdm.auto import tqdm

from cocasbi.config import Config
from cocasbi.io.atomic import atomic_path
from cocasbi.nbody import ResidualRecorder
from cocasbi.simulation import simulate

FORMAT_VERSION = 1
COSMO_KEYS = ("Omega_m", "Omega_b", "h", "n_s", "sigma8")
#: default prior box for cosmology-varying training sets (Quijote-like ranges)
DEFAULT_PRIOR = {"Omega_m": (0.25, 0.37), "sigma8": (0.7, 0.9)}


def ic_seed(master_seed: int, index: int) -> np.random.SeedSequence:
    """Seed stream of the initial conditions of simulation ``index``."""
    return np.random.SeedSequence(master_seed, spawn_key=(index,))


def draw_cosmology(cfg: Config, master_seed: int, index: int,
                   prior: dict[str, tuple[float, float]] | None) -> dict[str, float]:
    """Cosmological parameters of simulation ``index``: the config's, with the ``prior`` keys
    drawn uniformly in their box from ``SeedSequence(master_seed, spawn_key=(index, 1))``
    (a stream distinct from the ICs')."""
    params = {k: float(getattr(cfg.cosmology, k)) for k in COSMO_KEYS}
    if prior:
        rng = np.random.default_rng(np.random.SeedSequence(master_seed, spawn_key=(index, 1)))
        for key in sorted(prior):
            if key not in params:
                raise ValueError(f"prior key {key!r} is not one of {COSMO_KEYS}")
            lo, hi = prior[key]
            params[key] = float(rng.uniform(lo, hi))
    return params


def sample_path(out_dir: str | Path, index: int) -> Path:
    return Path(out_dir) / f"sim_{index:05d}.h5"


def _grid(field: np.ndarray, n: int) -> np.ndarray:
    return np.asarray(field, dtype=np.float32).reshape(n, n, n, 3)


def run_one(cfg: Config, master_seed: int, index: int,
            prior: dict[str, tuple[float, float]] | None = None):
    """Run the COLA simulation ``index`` and return (result, recorder, cosmology dict)."""
    params = draw_cosmology(cfg, master_seed, index, prior)
    run_cfg = cfg.replace(simulation={"method": "cola"}, cosmology=params)
    rec = ResidualRecorder()
    res = simulate(run_cfg, seed=ic_seed(master_seed, index), observers=[rec], forces="all")
    return res, rec, params


def write_sample(path: str | Path, cfg: Config, res, rec: ResidualRecorder, params: dict,
                 master_seed: int, index: int) -> Path:
    """Write one simulation atomically (``path`` appears only once complete)."""
    path = Path(path)
    n = cfg.simulation.n_particles
    frame = rec.frame()
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.attrs["format_version"] = FORMAT_VERSION
        f.attrs["master_seed"] = int(master_seed)
        f.attrs["index"] = int(index)
        f.attrs["config_json"] = res.config.model_dump_json()  # with the drawn cosmology
        f.attrs["box_size"] = float(cfg.simulation.box_size)
        f.attrs["n_particles"] = int(n)
        f.attrs["wall_time"] = float(res.wall_time)
        f.attrs["n_force_evaluations"] = int(res.n_force_evaluations)
        for k, v in params.items():
            f.attrs[k] = float(v)
        f.attrs["units"] = "Mpc/h; momenta p = a^2 dx/dt / H0"
        f.create_dataset("psi1", data=_grid(res.lpt.psi1, n))
        f.create_dataset("psi2", data=_grid(res.lpt.psi2, n))
        f.create_dataset("times", data=np.asarray(frame.times, dtype=np.float64))
        f.create_dataset("boundaries", data=res.schedule.boundaries)
        f.create_dataset("half", data=res.schedule.half)
        f.create_dataset(
            "residual",
            data=frame.momenta.astype(np.float32).reshape(len(frame.times), n, n, n, 3),
            chunks=(1, n, n, n, 3),
        )
    return path


def make_training_data(cfg: Config, out_dir: str | Path, n_sims: int, master_seed: int = 0,
                       start: int = 0, prior: dict[str, tuple[float, float]] | None = None,
                       progress: bool = True) -> list[Path]:
    """Run COLA simulations ``start … start+n_sims−1`` of ``cfg`` and store them in ``out_dir``.

    Resumable: a simulation whose file exists is skipped. ``prior`` (e.g.
    :data:`DEFAULT_PRIOR`) draws cosmologies per simulation; None keeps the config's.
    Returns the paths of all ``n_sims`` files.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    indices = range(start, start + n_sims)
    for index in tqdm(indices, desc="frame data", disable=not progress):
        path = sample_path(out_dir, index)
        if not path.exists():
            res, rec, params = run_one(cfg, master_seed, index, prior)
            write_sample(path, cfg, res, rec, params, master_seed, index)
        paths.append(path)
    return paths


@dataclass
class FrameSample:
    """One stored simulation. Arrays as in the file (float32 fields, float64 times)."""

    path: Path
    cosmology: dict[str, float]
    master_seed: int
    index: int
    box_size: float
    times: np.ndarray
    psi1: np.ndarray
    psi2: np.ndarray
    residual: np.ndarray | None = None

    @property
    def n(self) -> int:
        return self.psi1.shape[0]

    @property
    def seed(self) -> np.random.SeedSequence:
        return ic_seed(self.master_seed, self.index)


def read_sample(path: str | Path, residual: bool = True) -> FrameSample:
    """Load one file; ``residual=False`` skips the (large) residual array."""
    path = Path(path)
    with h5py.File(path, "r") as f:
        a = f.attrs
        return FrameSample(
            path=path,
            cosmology={k: float(a[k]) for k in COSMO_KEYS},
            master_seed=int(a["master_seed"]),
            index=int(a["index"]),
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
