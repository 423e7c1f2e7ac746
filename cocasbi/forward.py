"""The stochastic forward model: (θ, seed) → summary vector x, the object inference calls.

A :class:`ForwardModel` is configured once (simulation config, method, COCA frame, force
schedule, summaries, k range, which cosmological parameters vary) and then called as
``model(theta, seed)``. The seed fixes the initial phases, so (θ, seed) → x is deterministic
and seeds carry the cosmic variance. The summary layout is documented by ``model.names`` and
``model.k``:

* ``log_pk``: natural log of the particle power spectrum P(k) [(Mpc/h)^3] at a_final, CIC
  compensated, shot noise included, in linear bins of width ``dk`` from ``kmin`` up to
  ``kmax`` (defaults: ``dk = power.dk_factor · k_f``, ``kmin = k_f/2``,
  ``kmax = power.kmax_factor · k_Nyq`` with k_Nyq = π N_p / L the particle Nyquist wavenumber),
  measured on the PM mesh (N_m³). Empty bins are left out. Names are ``log_pk[k=0.0982]``.
* ``pk``: the same bins, P(k) itself [(Mpc/h)^3]; names ``pk[k=0.0982]``.

* ``bk``: the bispectrum B(k1, k2, k3) [(Mpc/h)^6] of the particles at a_final
  (:func:`cocasbi.stats.bispectrum.bispectrum`: CIC compensated, Poisson shot noise
  subtracted) on the fixed triangles :attr:`ForwardModel.triangles`, every closed triangle
  k1 >= k2 >= k3 of the bin centres of ``bk_bins`` = (kmin, kmax, dk) [h/Mpc], shells of
  width dk (default: k_f, 13 k_f, 3 k_f: four bins, 13 triangles). Names
  ``bk[k=0.2454,0.2454,0.2454]``; :attr:`ForwardModel.k` gives k1 for these entries.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from functools import cached_property
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from cocasbi import __version__
from cocasbi.config import Config, config_from_dict, load_config
from cocasbi.cosmology import PARAMETERS
from cocasbi.ic import lagrangian_grid
from cocasbi.nbody import TimeSchedule, force_schedule
from cocasbi.simulation import SimulationResult, simulate
from cocasbi.stats.power import power_spectrum

#: Summary name → transform of the binned P(k) [(Mpc/h)^3] into that summary's block.
SUMMARIES: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "log_pk": np.log,
    "pk": np.asarray,
}

#: Summaries measured on the particles themselves rather than transforms of P(k).
FIELD_SUMMARIES: tuple[str, ...] = ("bk",)


class ForwardSpec(BaseModel):
    """What a campaign config says about its forward model (see :class:`ForwardModel`)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    config: str | dict = Field("tiny", description="built-in name, YAML path or inline mapping")
    method: Literal["pm", "cola", "coca"] | None = None
    frame: str | None = Field(None, description="path of a COCA frame (method coca)")
    forces: str = Field("all", description="force schedule: all, last:K, every:M, ...")
    parameters: tuple[str, ...] = ("Omega_m", "sigma8")
    summaries: tuple[str, ...] = ("log_pk",)
    kmin: float | None = Field(None, gt=0, description="[h/Mpc]")
    kmax: float | None = Field(None, gt=0, description="[h/Mpc]")
    dk: float | None = Field(None, gt=0, description="[h/Mpc]")
    bk_bins: tuple[float, float, float] | None = Field(
        None, description="bispectrum bins (kmin, kmax, dk) [h/Mpc] (summary bk)")

    def simulation_config(self) -> Config:
        """The simulation :class:`Config` this spec names or holds inline."""
        if isinstance(self.config, dict):
            return config_from_dict(self.config, source="forward.config")
        return load_config(self.config)


def default_frame_loader(path: Path):
    """Load a COCA frame emulator with :func:`cocasbi.frame.load_frame`."""
    from cocasbi.frame import load_frame

    return load_frame(path)


class ForwardModel:
    """θ, seed → float32 summary vector x; deterministic for a given (θ, seed).

    Parameters
    ----------
    config : Config
        Simulation configuration (box, resolution, steps, fixed cosmology).
    method : ``"pm"`` | ``"cola"`` | ``"coca"``, optional
        Overrides ``config.simulation.method``.
    frame : object, path or None
        COCA frame: a frame emulator (``bind(lpt, cosmo, box_size)`` → frame, bound to each
        simulation), a fixed frame (``residual_momentum(a)``, used as is), or a file path
        loaded lazily, once per process, by ``frame_loader``.
    frame_loader : callable, optional
        ``path -> frame``; default :func:`default_frame_loader` (``cocasbi.frame.load_frame``,
        which also accepts ``"tiny"`` for the shipped frame).
    forces : str
        Force schedule spec (:func:`cocasbi.nbody.force_schedule`).
    parameters : sequence of str
        Names of θ's entries, in order, from :data:`PARAMETERS`; the others keep
        their values in ``config``.
    summaries : sequence of str
        Summary blocks, concatenated in order, from :data:`SUMMARIES`.
    kmin, kmax, dk : float, optional
        Power-spectrum bins [h/Mpc] (defaults in the module docstring).
    bk_bins : (kmin, kmax, dk), optional
        Bispectrum bins [h/Mpc] of the ``bk`` summary (default in the module docstring).
    threads : int, optional
        FFT and numba threads per simulation; overrides ``config.simulation.threads``.
    """

    def __init__(self, config: Config, *, method: str | None = None, frame=None,
                 frame_loader: Callable | None = None, forces: str = "all",
                 parameters: Sequence[str] = ("Omega_m", "sigma8"),
                 summaries: Sequence[str] = ("log_pk",), kmin: float | None = None,
                 kmax: float | None = None, dk: float | None = None,
                 bk_bins: Sequence[float] | None = None, threads: int | None = None):
        sim_update = {}
        if method is not None:
            sim_update["method"] = method
        if threads is not None:
            sim_update["threads"] = threads
        self.config = config.replace(simulation=sim_update) if sim_update else config
        self.parameters = tuple(parameters)
        self.summaries = tuple(summaries)
        for name in self.parameters:
            if name not in PARAMETERS:
                raise ValueError(f"unknown parameter {name!r}; choose from {PARAMETERS}")
        if len(set(self.parameters)) != len(self.parameters):
            raise ValueError(f"repeated parameter in {self.parameters}")
        for name in self.summaries:
            if name not in SUMMARIES and name not in FIELD_SUMMARIES:
                raise ValueError(f"unknown summary {name!r}; choose from "
                                 f"{(*SUMMARIES, *FIELD_SUMMARIES)}")
        sim = self.config.simulation
        if sim.method == "coca" and frame is None:
            raise ValueError("method 'coca' needs a frame")
        if sim.method != "coca" and frame is not None:
            raise ValueError(f"a frame is only used by method 'coca', not {sim.method!r}")
        self.forces = forces
        self.force_mask = force_schedule(forces, TimeSchedule.from_config(sim).n_steps,
                                         sim.final_kick)
        default_dk, default_kmin, default_kmax = self.config.power_binning()
        self.dk = default_dk if dk is None else float(dk)
        self.kmin = default_kmin if kmin is None else float(kmin)
        self.kmax = default_kmax if kmax is None else float(kmax)
        kf = 2 * np.pi / sim.box_size
        self.bk_bins = ((kf, 13 * kf, 3 * kf) if bk_bins is None
                        else tuple(float(b) for b in bk_bins))
        if len(self.bk_bins) != 3:
            raise ValueError(f"bk_bins must be (kmin, kmax, dk) [h/Mpc], got {bk_bins!r}")
        self._frame_source = frame
        self._frame_loader = frame_loader or default_frame_loader
        self._frame = None if isinstance(frame, str | os.PathLike) else frame

    @classmethod
    def from_spec(cls, spec: ForwardSpec, threads: int | None = None) -> ForwardModel:
        """Build from a campaign's ``forward`` section."""
        return cls(spec.simulation_config(), method=spec.method, frame=spec.frame,
                   forces=spec.forces, parameters=spec.parameters, summaries=spec.summaries,
                   kmin=spec.kmin, kmax=spec.kmax, dk=spec.dk, bk_bins=spec.bk_bins,
                   threads=threads)

    # -- pickling: a frame loaded from a path is reloaded in each process, not shipped
    def __getstate__(self):
        state = self.__dict__.copy()
        if isinstance(self._frame_source, str | os.PathLike):
            state["_frame"] = None
        return state

    @property
    def frame(self):
        """The COCA frame (loaded on first use when given as a path), or None."""
        if self._frame is None and self._frame_source is not None:
            self._frame = self._frame_loader(Path(self._frame_source))
        return self._frame

    # -- layout
    @cached_property
    def _bins(self):
        """(k [h/Mpc], kept-bin mask) of the P(k) binning, probed on the particle lattice."""
        sim = self.config.simulation
        q = lagrangian_grid(sim.n_particles, sim.box_size, sim.n_mesh)
        ps = power_spectrum(q, sim.box_size, n_mesh=sim.n_mesh, dk=self.dk, kmin=self.kmin,
                            kmax=self.kmax, threads=sim.threads)
        keep = ps.n_modes > 0
        return ps.k[keep], keep

    @cached_property
    def triangles(self) -> np.ndarray:
        """(n, 3) triangles (k1, k2, k3) [h/Mpc] of the ``bk`` summary."""
        from cocasbi.stats.bispectrum import triangle_bins

        kmin, kmax, dk = self.bk_bins
        return triangle_bins(kmin, kmax, dk)

    @property
    def k(self) -> np.ndarray:
        """Wavenumber [h/Mpc] of each entry of x (mean |k| of its bin's modes; k1 of a
        triangle)."""
        k, _ = self._bins
        return np.concatenate([self.triangles[:, 0] if s in FIELD_SUMMARIES else k
                               for s in self.summaries])

    @property
    def names(self) -> list[str]:
        """Label of each entry of x, e.g. ``log_pk[k=0.0982]``."""
        k, _ = self._bins
        names = []
        for s in self.summaries:
            if s in FIELD_SUMMARIES:
                names += [f"{s}[k={t[0]:.4f},{t[1]:.4f},{t[2]:.4f}]" for t in self.triangles]
            else:
                names += [f"{s}[k={kk:.4f}]" for kk in k]
        return names

    @property
    def n_force_evaluations(self) -> int:
        """Force evaluations per simulation (from the force schedule)."""
        return int(self.force_mask.sum())

    def provenance(self) -> dict:
        """JSON-serialisable description of the model, for campaign files."""
        return {
            "model": "cocasbi.forward.ForwardModel",
            "cocasbi_version": __version__,
            "config": self.config.model_dump(mode="json"),
            "frame": None if self._frame_source is None else str(self._frame_source),
            "forces": self.forces,
            "n_force_evaluations": self.n_force_evaluations,
            "parameters": list(self.parameters),
            "summaries": list(self.summaries),
            "dk": self.dk, "kmin": self.kmin, "kmax": self.kmax,
            **({"bk_bins": list(self.bk_bins)} if "bk" in self.summaries else {}),
        }

    # -- evaluation
    def config_for(self, theta) -> Config:
        """The simulation config with θ's parameters set (raises ValueError if invalid)."""
        theta = np.asarray(theta, dtype=np.float64).reshape(-1)
        if theta.size != len(self.parameters):
            raise ValueError(f"θ has {theta.size} entries, expected {len(self.parameters)} "
                             f"({', '.join(self.parameters)})")
        try:
            return self.config.replace(
                cosmology=dict(zip(self.parameters, map(float, theta), strict=True)))
        except ValueError as err:  # pydantic's ValidationError or cocasbi's ConfigError
            raise ValueError(f"θ = {theta.tolist()} is not a valid cosmology: {err}") from None

    def simulate(self, theta, seed) -> SimulationResult:
        """Run the simulation for θ; ``seed`` (int or SeedSequence) fixes the initial phases.

        A frame emulator is bound to this simulation's initial conditions by
        :func:`cocasbi.simulation.simulate`; any other frame is used as is.
        """
        return simulate(self.config_for(theta), seed=seed, frame=self.frame,
                        forces=self.force_mask)

    def summarize(self, positions) -> np.ndarray:
        """Summary vector (float32) of final particle positions (N, 3) [Mpc/h]."""
        sim = self.config.simulation
        ps = power_spectrum(positions, sim.box_size, n_mesh=sim.n_mesh, dk=self.dk,
                            kmin=self.kmin, kmax=self.kmax, threads=sim.threads)
        _, keep = self._bins
        return np.concatenate([self._field_summary(s, positions) if s in FIELD_SUMMARIES
                               else SUMMARIES[s](ps.power[keep])
                               for s in self.summaries]).astype(np.float32)

    def _field_summary(self, name: str, positions) -> np.ndarray:
        """Block of a summary of :data:`FIELD_SUMMARIES` (float64)."""
        from cocasbi.stats.bispectrum import bispectrum

        sim = self.config.simulation
        return bispectrum(positions, sim.box_size, self.triangles, n_mesh=sim.n_mesh,
                          dk=self.bk_bins[2], threads=sim.threads).bispectrum

    def __call__(self, theta, seed) -> np.ndarray:
        """x for (θ, seed): float32, laid out as :attr:`names`; may hold non-finite values
        when the simulation produced an empty or negative bin (callers decide what to do)."""
        return self.summarize(self.simulate(theta, seed).final.positions)
