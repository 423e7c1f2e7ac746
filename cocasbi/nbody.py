"""Time stepping: schedules, force schedules, frames and one KDK loop for PM, COLA and COCA.

One loop serves every method. The state is (x, p_c) where p_c is the momentum relative to a
*frame*: no frame (PM, p_c = p), the LPT frame (COLA, p_c = p − p_LPT) or LPT plus an emulated
residual p_ML (COCA, p_c = p − p_LPT − p_ML). With the frame's acceleration known analytically
(LPT) or by differencing (ML), a half-kick next to boundary a_b whose force is evaluated is

    p_c += [F(x) − F_LPT(a_b)] K(a0, a1) − [p_ML(a1) − p_ML(a0)],

a half-kick next to a skipped boundary leaves p_c unchanged, and the drift is

    x += [Ψ_LPT(a_{i+1}) − Ψ_LPT(a_i)] + [p_ML(a_{i+½}) + p_c] D(a_i, a_{i+1}).

Positions [Mpc/h] (unwrapped: x − q is the displacement), momenta p = a² dx/dt / H0 [Mpc/h];
state arrays are float64.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
from tqdm.auto import tqdm

from cocasbi.cosmology import Cosmology
from cocasbi.ic import LPTFields
from cocasbi.gravity import ForceSolver


# ---------------------------------------------------------------------------- schedules
@dataclass(frozen=True)
class TimeSchedule:
    """Step boundaries a_0 < … < a_n and half-step times a_{i+½}.

    ``spacing`` is ``linear`` (arithmetic mid-points), ``log`` (geometric mid-points) or
    ``list`` (user boundaries, arithmetic mid-points).
    """

    boundaries: np.ndarray
    half: np.ndarray
    spacing: str

    @classmethod
    def build(cls, a_init: float, a_final: float, n_steps: int, spacing="linear",
              extra: Sequence[float] = ()) -> TimeSchedule:
        """Schedule with ``n_steps`` steps; ``extra`` times (snapshots) are added as boundaries."""
        if isinstance(spacing, str) and spacing == "linear":
            b = np.linspace(a_init, a_final, n_steps + 1)
        elif isinstance(spacing, str) and spacing == "log":
            b = np.geomspace(a_init, a_final, n_steps + 1)
        else:
            b, spacing = np.asarray(spacing, dtype=np.float64), "list"
        if np.any(np.diff(b) <= 0):
            raise ValueError("schedule boundaries must increase strictly")
        b = np.unique(np.concatenate([b, np.asarray(extra, dtype=np.float64)]))
        if spacing == "log":
            half = np.sqrt(b[:-1] * b[1:])
        else:
            half = 0.5 * (b[:-1] + b[1:])
        return cls(boundaries=b, half=half, spacing=spacing)

    @classmethod
    def from_config(cls, sim) -> TimeSchedule:
        return cls.build(sim.a_init, sim.a_final, sim.n_steps, sim.schedule, sim.snapshots)

    @property
    def n_steps(self) -> int:
        return len(self.half)

    def query_times(self) -> np.ndarray:
        """Every time at which a COCA frame is queried: boundaries and half steps, sorted."""
        return np.sort(np.concatenate([self.boundaries, self.half]))


def force_schedule(spec, n_steps: int, final_kick: bool = True) -> np.ndarray:
    """Boolean mask over the n+1 boundaries saying where forces are evaluated.

    spec: ``"all"``, ``"none"``, ``"last:K"``, ``"first:K"``, ``"even:K"`` (K boundaries evenly
    spaced, first and last included), ``"every:M"`` (every M-th boundary from a_0), a sequence
    of boundary indices, or a boolean mask of length n + 1 (both taken as given).
    With ``final_kick=False`` the named schedules place their forces on a_0 … a_{n−1} only:
    the force at a_n changes only the final momenta, never a position.
    """
    nb = n_steps + 1
    mask = np.zeros(nb, dtype=bool)
    if not isinstance(spec, str):
        given = np.asarray(spec)
        if given.dtype == bool:
            if given.shape != (nb,):
                raise ValueError(f"force schedule mask has {given.size} entries for {nb} "
                                 "boundaries")
            return given
        idx = given.astype(int)
        if idx.size and (idx.min() < -nb or idx.max() >= nb):
            raise ValueError(f"force schedule indices {idx.tolist()} outside 0..{nb - 1}")
        mask[idx] = True
        return mask
    usable = nb if final_kick else nb - 1
    kind, _, arg = spec.partition(":")
    try:
        count = int(arg) if arg else None
    except ValueError:
        raise ValueError(f"force schedule {spec!r}: {arg!r} is not an integer") from None
    if kind in ("all", "none") and count is None:
        mask[:usable] = kind == "all"
    elif kind in ("last", "first", "even") and count is not None and 0 <= count <= usable:
        if kind == "last":
            mask[usable - count:usable] = True
        elif kind == "first":
            mask[:count] = True
        elif count:
            mask[np.unique(np.round(np.linspace(0, usable - 1, count)).astype(int))] = True
    elif kind == "every" and count is not None and count >= 1:
        mask[:usable:count] = True
    elif kind in ("last", "first", "even", "every") and count is not None:
        raise ValueError(f"force schedule {spec!r}: K must be in 0..{usable} (M >= 1)")
    else:
        raise ValueError(
            f"unknown force schedule {spec!r}: use all, none, last:K, first:K, even:K, "
            "every:M or a list of boundary indices"
        )
    return mask


# ---------------------------------------------------------------------------- frames
class Frame(Protocol):
    """A COCA frame: the emulated COLA residual momentum p_ML(q, a) on the Lagrangian lattice.

    ``residual_momentum(a)`` returns an (N³, 3) float64 array [Mpc/h] in lattice order for
    every time of :meth:`TimeSchedule.query_times`.
    """

    def residual_momentum(self, a: float) -> np.ndarray: ...


@dataclass
class OracleFrame:
    """Frame read from residual momenta recorded at exact query times (e.g. by a COLA run)."""

    times: np.ndarray
    momenta: np.ndarray  # (n_times, N, 3)

    def residual_momentum(self, a: float) -> np.ndarray:
        i = int(np.argmin(np.abs(self.times - a)))
        if abs(self.times[i] - a) > 1e-12 * max(1.0, a):
            raise KeyError(f"oracle frame has no residual at a={a}")
        return self.momenta[i]

    def scaled(self, factor: float) -> OracleFrame:
        return OracleFrame(self.times, self.momenta * factor)


class ResidualRecorder:
    """Observer recording the residual momentum relative to LPT at every query time."""

    def __init__(self):
        self.times: list[float] = []
        self.momenta: list[np.ndarray] = []

    def __call__(self, event: str, a: float, stepper: Stepper) -> None:
        self.times.append(a)
        self.momenta.append(stepper.lpt_residual().copy())

    def frame(self) -> OracleFrame:
        return OracleFrame(np.array(self.times), np.stack(self.momenta))


# ---------------------------------------------------------------------------- stepper
METHODS = ("pm", "cola", "coca")


@dataclass
class Stepper:
    """KDK integrator for one simulation.

    method: ``pm`` | ``cola`` | ``coca``; pm_factors: ``standard`` | ``fastpm`` (PM only);
    frame: a :class:`Frame` for COCA; forces: boolean mask over boundaries (see
    :func:`force_schedule`). Observers are called as ``observer(event, a, stepper)`` with
    event ``start``, ``half`` or ``boundary`` at every query time.
    """

    cosmo: Cosmology
    lpt: LPTFields
    schedule: TimeSchedule
    solver: ForceSolver
    box_size: float
    method: str = "cola"
    pm_factors: str = "fastpm"
    frame: Frame | None = None
    forces: np.ndarray | None = None
    observers: list[Callable] = field(default_factory=list)
    n_force_evaluations: int = 0

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; choose from {METHODS}")
        nb = len(self.schedule.boundaries)
        if self.forces is None:
            self.forces = np.ones(nb, dtype=bool)
        self.forces = np.asarray(self.forces, dtype=bool)
        if self.forces.shape != (nb,):
            raise ValueError(f"force mask has {self.forces.size} entries for {nb} boundaries")
        if self.method == "coca" and self.frame is None:
            raise ValueError("method 'coca' needs a frame")
        if self.method != "coca" and self.frame is not None:
            raise ValueError(f"a frame is only used by method 'coca', not {self.method!r}")
        if self.method == "pm" and not self.forces[:-1].all():
            raise ValueError("plain PM cannot skip forces before a_final")

    def lpt_residual(self) -> np.ndarray:
        """Momentum relative to LPT at the current time, p − p_LPT [Mpc/h]."""
        if self.method == "pm":
            return self.p_c - self.lpt.momenta(self.cosmo, self.a)
        if self.frame is None:
            return self.p_c
        return np.asarray(self.frame.residual_momentum(self.a)) + self.p_c

    def momenta(self) -> np.ndarray:
        """Total momentum p [Mpc/h] at the current time."""
        if self.method == "pm":
            return self.p_c.copy()
        return self.lpt.momenta(self.cosmo, self.a) + self.lpt_residual()

    # -- the three verbs
    def _force(self, index: int):
        if not self.forces[index]:
            return None
        self.n_force_evaluations += 1
        return self.solver(self.x)

    def _kick(self, force, a_force: float, a0: float, a1: float):
        if force is None:
            return
        c = self.cosmo
        if self.method == "pm":
            if self.pm_factors == "fastpm":
                self.p_c += force * c.fastpm_kick_factor(a0, a1, a_force)
            else:
                self.p_c += force * c.kick_factor(a0, a1)
            return
        self.p_c += (force - self.lpt.acceleration(c, a_force)) * c.kick_factor(a0, a1)
        if self.frame is not None:
            self.p_c -= self._frame_delta(a0, a1)

    def _frame_delta(self, a0, a1):
        return np.asarray(self.frame.residual_momentum(a1)) - np.asarray(
            self.frame.residual_momentum(a0))

    def _drift(self, a0: float, ah: float, a1: float):
        c = self.cosmo
        if self.method == "pm":
            if self.pm_factors == "fastpm":
                self.x += self.p_c * c.fastpm_drift_factor(a0, a1, ah)
            else:
                self.x += self.p_c * c.drift_factor(a0, a1)
            return
        p_drift = self.p_c if self.frame is None else (
            np.asarray(self.frame.residual_momentum(ah)) + self.p_c)
        self.x += self.lpt.displacement_change(c, a0, a1) + p_drift * c.drift_factor(a0, a1)

    def _observe(self, event: str):
        for obs in self.observers:
            obs(event, self.a, self)

    def run(self, progress: bool = False) -> Stepper:
        """Integrate from a_0 to a_n, calling observers at every query time."""
        c, sched = self.cosmo, self.schedule
        b, half = sched.boundaries, sched.half
        self.a = float(b[0])
        self.x = self.lpt.q + self.lpt.displacement(c, self.a)
        if self.method == "pm":
            self.p_c = self.lpt.momenta(c, self.a)
        elif self.frame is None:
            self.p_c = np.zeros_like(self.x)
        else:
            self.p_c = -np.asarray(self.frame.residual_momentum(self.a), dtype=np.float64)
        self._observe("start")
        force = self._force(0)
        for i in tqdm(range(sched.n_steps), desc=f"{self.method} steps", disable=not progress,
                      leave=False):
            a0, ah, a1 = float(b[i]), float(half[i]), float(b[i + 1])
            self._kick(force, a0, a0, ah)
            self.a = ah
            self._observe("half")
            self._drift(a0, ah, a1)
            force = self._force(i + 1)
            self._kick(force, a1, ah, a1)
            self.a = a1
            self._observe("boundary")
        return self
