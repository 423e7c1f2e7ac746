"""Particle snapshots in a Gadget-4-like HDF5 layout (readable by Pylians' readgadget, yt, h5py).

Layout of one file (single file per snapshot, dark matter as ``PartType1``)::

    /Header       Gadget attributes: NumPart_ThisFile, NumPart_Total (uint64),
                  NumPart_Total_HighWord (uint32), MassTable [1e10 Msun/h], Time (= a),
                  Redshift, BoxSize [Mpc/h], NumFilesPerSnapshot, Omega0, OmegaLambda,
                  HubbleParam, Flag_* (0), unit attributes
    /Parameters   cosmology and units as Gadget-4 writes them (Omega0, OmegaBaryon, ...,
                  UnitLength_in_cm = 3.085678e24 for Mpc/h, UnitVelocity_in_cm_per_s = 1e5)
    /PartType1/Coordinates   (N, 3) comoving positions wrapped into [0, L) [Mpc/h]
    /PartType1/Velocities    (N, 3) Gadget velocities u = v_pec / √a [km/s]
    /PartType1/ParticleIDs   (N,) uint64 lattice index i N² + j N + k (0-based, row order)
    /Provenance   our own: config (JSON), seed, cocasbi version, method, n_force_evaluations,
                  creation time (UTC, ISO 8601), any extra attributes

Coordinates and velocities are float32 by default (``dtype="float64"`` for exact restarts);
every dataset carries a Fletcher-32 checksum, so a corrupted block is detected on reading.
Files are written to a temporary file in the target directory and renamed into place, so a
snapshot that exists is complete. Name files ``*.hdf5``: readgadget recognises HDF5 by that
suffix.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import h5py
import numpy as np

from cocasbi import __version__
from cocasbi.io.atomic import atomic_path

__all__ = ["SnapshotData", "SnapshotError", "particle_mass", "read_snapshot", "write_snapshot"]

RHO_CRIT_1E10 = 27.7536627
"""Critical density today in [1e10 (Msun/h) / (Mpc/h)^3]."""

UNIT_LENGTH_CM = 3.085678e24  # 1 Mpc/h (the h is implicit, Gadget convention)
UNIT_MASS_G = 1.989e43  # 1e10 Msun/h
UNIT_VELOCITY_CM_S = 1e5  # 1 km/s
_PTYPE = 1  # dark matter particle type
_NTYPES = 6


class SnapshotError(ValueError):
    """A snapshot file that cannot be read: truncated, corrupt, or not in our layout.

    The message names the file and the problem.
    """


@dataclass
class SnapshotData:
    """Contents of a snapshot file.

    Attributes
    ----------
    positions : (N, 3) ndarray
        Comoving positions wrapped into [0, L) [Mpc/h], in the stored dtype (float32 default).
    velocities : (N, 3) ndarray
        Peculiar velocities v = 100 p / a [km/s] (the stored Gadget u times √a), stored dtype.
    ids : (N,) uint64
        Lattice index of each particle.
    a : float
        Scale factor.
    header, parameters, provenance : dict
        Attributes of the ``Header``, ``Parameters`` and ``Provenance`` groups; the
        provenance ``config`` is parsed from JSON into a dict.
    path : Path
        The file read.
    """

    positions: np.ndarray
    velocities: np.ndarray
    ids: np.ndarray
    a: float
    header: dict = field(default_factory=dict)
    parameters: dict = field(default_factory=dict)
    provenance: dict = field(default_factory=dict)
    path: Path | None = None

    @property
    def box_size(self) -> float:
        """Box side [Mpc/h]."""
        return float(self.header["BoxSize"])

    @property
    def redshift(self) -> float:
        return float(self.header["Redshift"])

    def momenta(self) -> np.ndarray:
        """Momenta p = a v / 100 [Mpc/h], float64."""
        return self.a * self.velocities.astype(np.float64) / 100.0

    def config(self):
        """The :class:`cocasbi.config.Config` of the run that wrote the snapshot."""
        from cocasbi.config import config_from_dict

        return config_from_dict(self.provenance["config"], source=f"{self.path} (Provenance)")


def particle_mass(Omega_m: float, box_size: float, n_particles: int) -> float:
    """Mass of one of ``n_particles`` equal-mass particles [1e10 Msun/h].

    m = ρ_crit Ω_m L³ / N with ρ_crit = 27.7536627 [1e10 (Msun/h) / (Mpc/h)^3] and the box
    side L in [Mpc/h].
    """
    return RHO_CRIT_1E10 * Omega_m * box_size**3 / n_particles


# ---------------------------------------------------------------------------- writing
def _writable_dir(path: Path) -> Path:
    """The directory ``path`` will be written into, checked to exist and be writable."""
    directory = path.parent
    if not directory.exists():
        raise FileNotFoundError(f"cannot write snapshot {path}: directory {directory} does not "
                                "exist")
    if not directory.is_dir():
        raise NotADirectoryError(f"cannot write snapshot {path}: {directory} is not a directory")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise PermissionError(f"cannot write snapshot {path}: directory {directory} is not "
                              "writable")
    return directory


def _wrap(x: np.ndarray, box_size: float, dtype) -> np.ndarray:
    """Positions wrapped into [0, L) after the cast to ``dtype`` (rounding up to L maps to 0)."""
    wrapped = np.mod(x, box_size).astype(dtype)
    wrapped[wrapped >= dtype(box_size)] = 0
    return wrapped


def _seed_attrs(seed) -> dict:
    if isinstance(seed, np.random.SeedSequence):
        return {"seed_entropy": str(seed.entropy),
                "seed_spawn_key": np.asarray(seed.spawn_key, dtype=np.int64)}
    return {"seed": int(seed)}


def _h5_value(value):
    """An attribute value h5py can store: numbers, strings and arrays as they are, lists of
    numbers as arrays, anything else (dicts, None, mixed lists) as a JSON string."""
    if isinstance(value, str | bytes | int | float | np.generic | np.ndarray):
        return value
    if isinstance(value, Path):
        return str(value)
    if (isinstance(value, list | tuple) and value
            and all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)):
        return np.asarray(value)
    return json.dumps(value, default=str)


def write_snapshot(path, snapshot, config, seed, extra_attrs: dict | None = None, *,
                   n_force_evaluations: int | None = None, dtype="float32") -> Path:
    """Write one snapshot to ``path`` atomically (temporary file + rename).

    Parameters
    ----------
    path : str or Path
        Output file; should end in ``.hdf5`` (readgadget needs that suffix). Its directory
        must exist and be writable: this is checked before any other work.
    snapshot : Snapshot
        Anything with ``a`` (scale factor), ``positions`` (N, 3) [Mpc/h] (unwrapped is fine)
        and ``momenta`` (N, 3) p = a² dx/dt / H0 [Mpc/h], rows in lattice order.
    config : cocasbi.config.Config
        Run configuration: cosmology, box, method; stored in full in ``Provenance/config``.
    seed : int or numpy.random.SeedSequence
        Seed the initial conditions were drawn from.
    extra_attrs : dict, optional
        More ``Provenance`` attributes (numbers, strings, arrays; dicts are stored as JSON).
    n_force_evaluations : int, optional
        PM force evaluations the run spent, recorded in ``Provenance`` (-1 when not given).
    dtype : {"float32", "float64"}
        Storage type of Coordinates and Velocities.

    Returns
    -------
    Path
        The written file.
    """
    path = Path(path)
    _writable_dir(path)  # fails early, naming the directory
    dtype = np.dtype(dtype).type
    if dtype not in (np.float32, np.float64):
        raise ValueError(f"dtype must be float32 or float64, got {np.dtype(dtype).name}")
    sim, cos = config.simulation, config.cosmology
    x = np.asarray(snapshot.positions, dtype=np.float64)
    p = np.asarray(snapshot.momenta, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] != 3 or p.shape != x.shape:
        raise ValueError(f"positions {x.shape} and momenta {p.shape} must both be (N, 3)")
    if not (np.isfinite(x).all() and np.isfinite(p).all()):
        raise ValueError(f"refusing to write {path}: non-finite positions or momenta")
    a, n, box = float(snapshot.a), len(x), float(sim.box_size)

    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        _write_header(f, a, n, box, cos)
        _write_parameters(f, config)
        part = f.create_group(f"PartType{_PTYPE}")
        opts = {"fletcher32": True, "chunks": True}
        part.create_dataset("Coordinates", data=_wrap(x, box, dtype), **opts)
        part.create_dataset("Velocities", data=(100.0 * p / a**1.5).astype(dtype), **opts)
        part.create_dataset("ParticleIDs", data=np.arange(n, dtype=np.uint64), **opts)
        part["Coordinates"].attrs["units"] = "comoving Mpc/h, wrapped into [0, BoxSize)"
        part["Velocities"].attrs["units"] = "km/s; peculiar velocity / sqrt(a)"
        part["ParticleIDs"].attrs["units"] = "lattice index i*N^2 + j*N + k"
        prov = f.create_group("Provenance")
        prov.attrs.update({
            "config": config.model_dump_json(),
            **_seed_attrs(seed),
            "cocasbi_version": __version__,
            "method": sim.method,
            "n_force_evaluations": -1 if n_force_evaluations is None
            else int(n_force_evaluations),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        })
        for key, value in (extra_attrs or {}).items():
            prov.attrs[key] = _h5_value(value)
    return path


def _write_header(f, a: float, n: int, box: float, cos) -> None:
    counts = np.zeros(_NTYPES, dtype=np.uint64)
    counts[_PTYPE] = n
    masses = np.zeros(_NTYPES, dtype=np.float64)
    masses[_PTYPE] = particle_mass(cos.Omega_m, box, n)
    high = (counts >> np.uint64(32)).astype(np.uint32)
    f.create_group("Header").attrs.update({
        "NumPart_ThisFile": counts,
        "NumPart_Total": counts,
        "NumPart_Total_HighWord": high,
        "MassTable": masses,
        "Time": a,
        "Redshift": 1.0 / a - 1.0,
        "BoxSize": box,
        "NumFilesPerSnapshot": np.int32(1),
        "Omega0": cos.Omega_m,
        "OmegaLambda": 1.0 - cos.Omega_m,
        "OmegaBaryon": cos.Omega_b,
        "HubbleParam": cos.h,
        "Flag_Sfr": np.int32(0),
        "Flag_Cooling": np.int32(0),
        "Flag_StellarAge": np.int32(0),
        "Flag_Metals": np.int32(0),
        "Flag_Feedback": np.int32(0),
        "Flag_DoublePrecision": np.int32(0),
        "UnitLength_in_cm": UNIT_LENGTH_CM,
        "UnitMass_in_g": UNIT_MASS_G,
        "UnitVelocity_in_cm_per_s": UNIT_VELOCITY_CM_S,
    })


def _write_parameters(f, config) -> None:
    sim, cos = config.simulation, config.cosmology
    f.create_group("Parameters").attrs.update({
        "Omega0": cos.Omega_m,
        "OmegaLambda": 1.0 - cos.Omega_m,
        "OmegaBaryon": cos.Omega_b,
        "HubbleParam": cos.h,
        "Sigma8": cos.sigma8,
        "PrimordialIndex": cos.n_s,
        "BoxSize": float(sim.box_size),
        "ComovingIntegrationOn": np.int32(1),
        "PeriodicBoundariesOn": np.int32(1),
        "TimeBegin": float(sim.a_init),
        "TimeMax": float(sim.a_final),
        "UnitLength_in_cm": UNIT_LENGTH_CM,
        "UnitMass_in_g": UNIT_MASS_G,
        "UnitVelocity_in_cm_per_s": UNIT_VELOCITY_CM_S,
        "UnitLength": "Mpc/h (comoving)",
        "UnitMass": "1e10 Msun/h",
        "UnitVelocity": "km/s (Velocities dataset: peculiar velocity / sqrt(a))",
        "PMGRID": np.int32(sim.n_mesh),
        "NumPartPerDim": np.int32(sim.n_particles),
    })


# ---------------------------------------------------------------------------- reading
def _attrs_dict(group) -> dict:
    return {k: (v.item() if isinstance(v, np.generic) else v) for k, v in group.attrs.items()}


def read_snapshot(path) -> SnapshotData:
    """Read a snapshot written by :func:`write_snapshot`.

    Returns a :class:`SnapshotData` with positions [Mpc/h], peculiar velocities [km/s]
    (converted from the stored Gadget u = v/√a), ids, a and the Header / Parameters /
    Provenance attributes. Raises FileNotFoundError for a missing file and
    :class:`SnapshotError` (naming the file and the problem) for a truncated, corrupt or
    inconsistent one.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"snapshot {path} does not exist")
    try:
        f = h5py.File(path, "r")
    except OSError as err:
        raise SnapshotError(f"snapshot {path} is not a readable HDF5 file (truncated or "
                            f"corrupt?): {err}") from None
    with f:
        for name in ("Header", "Parameters", "Provenance", f"PartType{_PTYPE}"):
            if name not in f:
                raise SnapshotError(f"snapshot {path} has no /{name} group")
        try:
            header = _attrs_dict(f["Header"])
            parameters = _attrs_dict(f["Parameters"])
            provenance = _attrs_dict(f["Provenance"])
            part = f[f"PartType{_PTYPE}"]
            x = part["Coordinates"][...]
            u = part["Velocities"][...]
            ids = part["ParticleIDs"][...]
        except (OSError, KeyError, ValueError, RuntimeError) as err:
            raise SnapshotError(f"snapshot {path} cannot be read (truncated or corrupt?): "
                                f"{err}") from None
    try:
        a = float(header["Time"])
        n = int(np.asarray(header["NumPart_Total"])[_PTYPE])
        config = json.loads(provenance["config"])
    except (KeyError, IndexError, TypeError, ValueError) as err:
        raise SnapshotError(f"snapshot {path} has an incomplete header or provenance: "
                            f"{err!r}") from None
    if x.shape != (n, 3) or u.shape != (n, 3) or ids.shape != (n,):
        raise SnapshotError(
            f"snapshot {path}: header says {n} particles but Coordinates {x.shape}, "
            f"Velocities {u.shape}, ParticleIDs {ids.shape}")
    provenance["config"] = config
    return SnapshotData(positions=x, velocities=u * np.sqrt(a, dtype=u.dtype), ids=ids, a=a,
                        header=header, parameters=parameters, provenance=provenance, path=path)
