"""The observation x_o: read from an HDF5 file, or a mock made by a reference simulation.

An observation file holds ``x`` (float32 (m,)), ``names`` (m labels, the summary layout),
optionally ``k`` [h/Mpc] and the true ``theta`` with its ``parameters`` (mocks), and a JSON
``provenance`` attribute. A mock is one run of a reference forward model (by default PM with
more steps than the campaign's COLA) at a chosen θ, with initial phases from the held-out
stream ``stream_seed(master_seed, Stream.OBSERVATION, j)``: never a training seed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from cocasbi.io.atomic import atomic_path
from cocasbi.seeds import Stream, describe, stream_seed

FORMAT = "cocasbi-observation"


@dataclass(frozen=True)
class Observation:
    """x_o (float32 (m,)) with its layout; ``theta`` (float64) is the truth of a mock."""

    x: np.ndarray
    names: tuple[str, ...]
    k: np.ndarray | None = None
    parameters: tuple[str, ...] | None = None
    theta: np.ndarray | None = None
    provenance: dict = field(default_factory=dict)

    def __post_init__(self):
        x = np.asarray(self.x, dtype=np.float32).reshape(-1)
        if x.size != len(self.names):
            raise ValueError(f"observation has {x.size} values for {len(self.names)} names")
        bad = np.flatnonzero(~np.isfinite(x))
        if bad.size:
            raise ValueError(f"observation x holds non-finite values at {self.names[bad[0]]!r} "
                             f"and {bad.size - 1} more")
        object.__setattr__(self, "x", x)
        object.__setattr__(self, "names", tuple(str(n) for n in self.names))


def check_layout(names, k, expected_names, expected_k, what: str = "observation") -> None:
    """ValueError naming the first entry where ``names`` differ from ``expected_names``, or
    the largest k difference [h/Mpc] (relative tolerance 1e-6; skipped if a k is missing)."""
    names, expected = tuple(str(n) for n in names), tuple(expected_names)
    if names != expected:
        diff = next((i for i, (a, b) in enumerate(zip(names, expected, strict=False))
                     if a != b), min(len(names), len(expected)))
        got = names[diff] if diff < len(names) else "(end)"
        want = expected[diff] if diff < len(expected) else "(end)"
        raise ValueError(f"{what} summary layout differs from the estimator's: entry {diff} "
                         f"is {got!r}, expected {want!r} ({len(names)} vs {len(expected)} "
                         "entries)")
    if k is not None and expected_k is not None:
        k, expected_k = np.asarray(k, dtype=np.float64), np.asarray(expected_k, np.float64)
        if k.shape != expected_k.shape or not np.allclose(k, expected_k, rtol=1e-6, atol=0):
            raise ValueError(f"{what} k bins differ from the estimator's (max |Δk| = "
                             f"{np.max(np.abs(k - expected_k)):.3g} h/Mpc)")


def save_observation(path: str | Path, obs: Observation) -> Path:
    """Write ``obs`` to HDF5 atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.attrs.update(format=FORMAT, provenance=json.dumps(obs.provenance, default=str))
        f.create_dataset("x", data=obs.x)
        f.create_dataset("names", data=list(obs.names), dtype=h5py.string_dtype())
        if obs.k is not None:
            f.create_dataset("k", data=np.asarray(obs.k, dtype=np.float64))
        if obs.theta is not None:
            f.create_dataset("theta", data=np.asarray(obs.theta, dtype=np.float64))
            f["theta"].attrs["parameters"] = list(obs.parameters)
    return path


def load_observation(path: str | Path) -> Observation:
    """Read an observation file (ValueError for a missing, foreign or non-finite one)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"observation file {path} does not exist")
    try:
        with h5py.File(path, "r") as f:
            if "x" not in f or "names" not in f:
                raise ValueError(f"{path} has no 'x' and 'names' datasets")
            theta = f["theta"][...] if "theta" in f else None
            params = (tuple(str(p) for p in f["theta"].attrs["parameters"])
                      if theta is not None else None)
            return Observation(f["x"][...], tuple(s.decode() for s in f["names"][...]),
                               f["k"][...] if "k" in f else None, params, theta,
                               json.loads(f.attrs.get("provenance", "{}")))
    except OSError as err:
        raise ValueError(f"cannot read observation {path}: {err}") from None


def mock_observation(model, theta, master_seed: int, index: int = 0, prior=None
                     ) -> Observation:
    """x_o = model(θ, held-out seed ``(Stream.OBSERVATION, index)``) with the truth recorded.

    ``prior``: a box θ must lie in (ValueError naming the parameter otherwise).
    """
    theta = np.asarray(theta, dtype=np.float64).reshape(-1)
    if prior is not None:
        prior.check(theta)
    seed = stream_seed(master_seed, Stream.OBSERVATION, index)
    x = np.asarray(model(theta, seed), dtype=np.float32)
    prov = {"kind": "mock", "seed": describe(seed), "theta": theta.tolist(),
            "model": model.provenance()}
    k = getattr(model, "k", None)
    return Observation(x, tuple(model.names), None if k is None else np.asarray(k),
                       tuple(model.parameters), theta, prov)


def reference_model(spec, method: str = "pm", n_steps: int | None = None,
                    threads: int | None = None):
    """The campaign's forward model (a ``ForwardSpec``) as a reference run: ``method`` (PM by
    default, no frame) with ``n_steps`` time steps (default: the campaign's) and ``threads``
    per simulation (default: the simulation config's)."""
    from cocasbi.forward import ForwardModel

    config = spec.simulation_config()
    if n_steps is not None:
        config = config.replace(simulation={"n_steps": int(n_steps)})
    return ForwardModel(config, method=method, forces="all", parameters=spec.parameters,
                        summaries=spec.summaries, kmin=spec.kmin, kmax=spec.kmax, dk=spec.dk,
                        threads=threads)
