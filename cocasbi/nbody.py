"""Time stepping: schedules, force schedules, frames and one KDK loop for PM, COLA and COCA.

One loop serves every method. The state is (x, p_c) where p_c is the momentum relative to a
*frame*: no frame (PM, p_c = p), the LPT frame (COLA, p_c = p − p_LPT) or LPT plus an emulated
residual p_ML (COCA, p_c = p − p_LPT − p_ML). With the frame's acceleration known analytically
(LPT) or by differencing (ML), a half-kick next to boundary a_b whose force is evaluated is

    p_c += [F(x) − F_LPT(a_b)] K(a0, a1) − [p_ML(a1) − p_ML(a0)],

a half-kick next to a skipped boundary leaves p_c unchanged (with ``kicks="interval"`` the
kicks of a computed force cover the whole interval it stands for instead: :class:`Stepper`),
and the drift is

    x += [Ψ_LPT(a_{i+1}) − Ψ_LPT(a_i)] + [p_ML(a_{i+½}) + p_c] D(a_i, a_{i+1}).

The verbs are not run one array statement at a time: per force evaluation, one parallel numba
pass (:func:`_particle_pass`) reads the force mesh at every particle and applies both half-kicks
that use it (with the LPT and frame terms) and the next drift, streaming each particle array
once, with the floating-point operations of the formulas above in their order (bit-identical to
one numpy statement per verb, and for any thread count).

Positions [Mpc/h] (unwrapped: x − q is the displacement), momenta p = a² dx/dt / H0 [Mpc/h];
state arrays are float64.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numba
import numpy as np
from tqdm.auto import tqdm

from cocasbi.cic import (
    NODES_PAD,
    cell_views,
    check_nodes,
    cic_weights,
    empty_nodes,
    interleave,
    interpolate_nodes,
    locate,
)
from cocasbi.cosmology import Cosmology
from cocasbi.gravity import ForceSolver
from cocasbi.ic import LPTFields


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


def force_intervals(schedule: TimeSchedule, forces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The interval [start, end] each computed force stands for (``kicks: interval``).

    Consecutive computed forces split the time between them at their mid-point (the
    schedule's rule: arithmetic, geometric for ``log``), kept between the fine half steps next
    to them, so adjacent forces split at a_{j+½}. The first interval starts at a_0. The end
    of the run belongs to a force at a_n, computed or not (a skipped one changes only the
    final momenta): a last computed force at j < n ends at the mid-point of a_j and a_n, as
    the last step of a leapfrog with n' steps does. With every force computed, every interval
    is the two fine half steps around its force.

    Returns
    -------
    start, end : (n + 1,) float64 arrays
        Scale factors bounding each computed force's interval; NaN at skipped boundaries.
    """
    b, half = schedule.boundaries, schedule.half
    n = schedule.n_steps
    mask = np.asarray(forces, dtype=bool)
    start, end = np.full(n + 1, np.nan), np.full(n + 1, np.nan)
    idx = np.flatnonzero(mask)
    if not idx.size:
        return start, end
    stops = idx if idx[-1] == n else np.append(idx, n)  # a_n stands for the end of the run
    start[idx[0]] = b[0]
    for jp, j in zip(stops[:-1], stops[1:], strict=True):
        mid = (np.sqrt(b[jp] * b[j]) if schedule.spacing == "log" else 0.5 * (b[jp] + b[j]))
        mid = min(max(mid, half[jp]), half[j - 1])
        end[jp] = mid
        if mask[j]:
            start[j] = mid
    if mask[n]:
        end[n] = b[n]
    return start, end


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


# ---------------------------------------------------------------------------- particle kernel
# Layout of the coefficient vector of one pass (float64 scalars).
_C_LPT, _C_D1, _C_E, _C_K2, _C_K1, _C_DD1, _C_DD2, _C_DRIFT = range(8)
# Layout of the flag vector.
_F_KICK2, _F_KICK1, _F_DRIFT, _F_LPT, _F_FRAME2, _F_FRAME1, _F_FRAME_DRIFT, _F_STORE = range(8)
# Where a pass takes the force from.
_NO_FORCE, _READOUT, _BUFFER = 0, 1, 2
_NO_ARRAY = np.zeros((1, 3))
_NO_NODES = np.zeros(1, dtype=np.float32)
_NO_CELLS = cell_views(np.zeros((1, 3), dtype=np.uint64))


@numba.njit(parallel=True, cache=True)
def _particle_pass(source, x, p, psi1, psi2, nodes, n_mesh, node, frac, force, coef, flags,
                   k2_m0, k2_m1, k1_m0, k1_m1, drift_m):
    """Up to two kicks and one drift of every particle, in one parallel pass.

    source: _READOUT (the force is the CIC readout at x, before the drift, of the interleaved
    n_mesh³ force mesh ``nodes`` (:func:`cocasbi.cic.interpolate_nodes`), from the particles'
    cells located when the mesh was painted, as the views ``node``, ``frac`` of
    :func:`cocasbi.cic.cell_views`; stored in ``force`` if flags[_F_STORE]), _BUFFER (read from
    ``force``) or _NO_FORCE (drift only).
    Particles are visited in Lagrangian order, so every particle array streams through memory
    once; the mesh gathers stay local as long as displacements are coherent (a mesh-sorted
    walk reads the particle arrays out of order and was 2-3x slower). Per particle and axis,
    in this order (float64):

        g = F − c_lpt (d1 ψ1 + e ψ2)   (COLA/COCA; g = F for PM)
        p = p + g K2 [− (k2_m1 − k2_m0)],   p = p + g K1 [− (k1_m1 − k1_m0)]
        x = x + ((ΔD1 ψ1 + ΔD2 ψ2) + (p [+ drift_m]) D)   (COLA/COCA; x = x + p D for PM)

    the same operations, in the same order, as one numpy statement per verb: splitting a
    pass in two (an observer looking in between) does not change a bit. Particles are
    independent, so the result does not depend on the number of threads.
    """
    n = np.uint64(n_mesh)
    kick2, kick1, drift = flags[_F_KICK2], flags[_F_KICK1], flags[_F_DRIFT]
    lpt, store = flags[_F_LPT], flags[_F_STORE]
    fr2, fr1, frd = flags[_F_FRAME2], flags[_F_FRAME1], flags[_F_FRAME_DRIFT]
    c_lpt, d1, e = coef[_C_LPT], coef[_C_D1], coef[_C_E]
    k2, k1 = coef[_C_K2], coef[_C_K1]
    dd1, dd2, dfac = coef[_C_DD1], coef[_C_DD2], coef[_C_DRIFT]
    kick = source != _NO_FORCE and (kick2 or kick1)
    readout = source == _READOUT
    z32 = np.float32(0.0)
    for i in numba.prange(x.shape[0]):
        f0 = f1 = f2 = z32  # the force, its three components read by vector loads
        if readout:
            ix, jx, iy, jy, iz, jz, w00, w01, w10, w11, tz, fz = cic_weights(node, frac, i, n)
            f0, f1, f2 = interpolate_nodes(nodes, n, ix, jx, iy, jy, iz, jz, w00, w01, w10,
                                           w11, tz, fz)
        for c in range(3):
            v = p[i, c]
            if kick:
                if readout:
                    f = np.float64(f0 if c == 0 else (f1 if c == 1 else f2))
                    if store:
                        force[i, c] = f
                else:
                    f = force[i, c]
                g = f - c_lpt * (d1 * psi1[i, c] + e * psi2[i, c]) if lpt else f
                if kick2:
                    v = v + g * k2
                    if fr2:
                        v = v - (k2_m1[i, c] - k2_m0[i, c])
                if kick1:
                    v = v + g * k1
                    if fr1:
                        v = v - (k1_m1[i, c] - k1_m0[i, c])
                p[i, c] = v
            if drift:
                pd = drift_m[i, c] + v if frd else v
                if lpt:
                    x[i, c] = x[i, c] + ((dd1 * psi1[i, c] + dd2 * psi2[i, c]) + pd * dfac)
                else:
                    x[i, c] = x[i, c] + pd * dfac


class _Force:
    """A force evaluated at boundary a_force and not yet used by all its kicks."""

    def __init__(self, a_force: float, uses: int, nodes=None, n_mesh=0, cells=None,
                 values=None):
        self.a_force, self.uses = a_force, uses
        self.nodes = nodes  # interleaved force mesh (cic.empty_nodes), to be read out ...
        self.n_mesh = n_mesh
        self.cells = cells  # ... at the current positions, whose CIC cells were located
        self.values = values  # (N, 3) float64 force per particle, once read out


@dataclass
class _Pass:
    """Work waiting for the next particle pass: [force readout] kick, kick, drift."""

    force: _Force | None = None
    kicks: list = field(default_factory=list)  # (factor, frame m(a0) or None, m(a1) or None)
    drift: tuple | None = None  # (ΔD1, ΔD2, drift factor, frame m(a_half) or None)

    def empty(self) -> bool:
        return not self.kicks and self.drift is None


# ---------------------------------------------------------------------------- stepper
METHODS = ("pm", "cola", "coca")
KICKS = ("fine", "interval")


@dataclass
class Stepper:
    """KDK integrator for one simulation.

    method: ``pm`` | ``cola`` | ``coca``; pm_factors: ``standard`` | ``fastpm`` (PM only);
    frame: a :class:`Frame` for COCA; forces: boolean mask over boundaries (see
    :func:`force_schedule`). Observers are called as ``observer(event, a, stepper)`` with
    event ``start``, ``half`` or ``boundary`` at every query time.

    The per-particle work is deferred and fused: the readout of a :class:`ForceSolver`'s
    force, the two half-kicks that use it, the LPT (and frame) terms and the next drift run in
    one pass over the particles (:func:`_particle_pass`). Reading ``x``, ``p_c``,
    :meth:`momenta` or :meth:`lpt_residual` first completes the pending work, so observers see
    the state of their query time; the result does not depend on what they read.

    kicks: ``fine`` (a computed force kicks over the two fine half steps next to it) or
    ``interval`` (its kicks cover the whole interval of :func:`force_intervals`: beyond the
    fine half steps the residual force g = F − F_LPT(a_j) − F_ML(a_j) is taken constant, with
    F_ML(a_j) = [p_ML(a_{j+½}) − p_ML(a_{j−½})] / K(a_{j−½}, a_{j+½}) the frame's own force,
    one-sided at a_0 and a_n; F_ML = 0 without a frame). With every force computed both are
    the same, bit for bit. frame_force=False (a study control, not a method) takes
    g = F − F_LPT(a_j) instead: it breaks the perfect-frame invariant.
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
    kicks: str = "fine"
    frame_force: bool = True

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; choose from {METHODS}")
        if self.kicks not in KICKS:
            raise ValueError(f"unknown kicks {self.kicks!r}; choose from {KICKS}")
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
        self._pending = _Pass()
        self._x = self._p = None
        self._nodes = None  # interleaved copy of a force mesh given as separate components
        self._extra = self._interval_extras()  # (closing, opening) extra kick factors
        self._f_ml = None  # the frame's force at the live computed force (interval kicks)

    # -- state (reading it completes the pending particle work)
    @property
    def x(self) -> np.ndarray:
        """Positions [Mpc/h] (N, 3) float64, unwrapped."""
        self._flush()
        return self._x

    @x.setter
    def x(self, value):
        self._flush()
        self._x = value

    @property
    def p_c(self) -> np.ndarray:
        """Momentum relative to the frame [Mpc/h] (N, 3) float64."""
        self._flush()
        return self._p

    @p_c.setter
    def p_c(self, value):
        self._flush()
        self._p = value

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
        c, a = self.cosmo, self.a
        return self.lpt.combine(c.G1(a), c.G2(a), base=self.lpt_residual())  # p_LPT + residual

    # -- the three verbs (queued; _flush runs them)
    def _force(self, index: int):
        if not self.forces[index]:
            return None
        self._flush()  # the force needs the current positions
        self.n_force_evaluations += 1
        a = float(self.schedule.boundaries[index])
        uses = int(index > 0) + int(index < self.schedule.n_steps)
        if hasattr(self.solver, "force_field"):
            field_ = self.solver.force_field(self._x)
            n_mesh = field_.shape[1]
            nodes = getattr(self.solver, "force_nodes", None)
            if nodes is None:  # separate component meshes: interleaved into our own buffer
                if self._nodes is None or self._nodes.size != 3 * n_mesh**3 + NODES_PAD:
                    self._nodes = empty_nodes(n_mesh)
                nodes = interleave(field_, self._nodes)
            check_nodes(nodes, n_mesh)
            cells = getattr(self.solver, "cells", None)
            if cells is None:  # a solver that does not share its cells
                cells = locate(self._x, n_mesh, self.box_size)
            force = _Force(a, uses, nodes=nodes, n_mesh=n_mesh, cells=cells)
        else:  # any callable x -> (N, 3) forces
            force = _Force(a, uses, values=np.asarray(self.solver(self._x), dtype=np.float64))
        self._pending.force = force
        self._f_ml = None
        if (self.frame is not None and self.frame_force
                and (self._extra[0][index] > 0 or self._extra[1][index] > 0)):
            self._f_ml = self._frame_acceleration(index)
        return force

    def _frame_acceleration(self, index: int) -> np.ndarray:
        """F_ML(a_j): the frame's force on the fine step around boundary j, one-sided at a_0
        and a_n, (N, 3) float64 [Mpc/h per unit kick factor]."""
        b, half, n = self.schedule.boundaries, self.schedule.half, self.schedule.n_steps
        lo = float(half[index - 1] if index > 0 else b[0])
        hi = float(half[index] if index < n else b[n])
        dp = (np.asarray(self.frame.residual_momentum(hi), dtype=np.float64)
              - np.asarray(self.frame.residual_momentum(lo), dtype=np.float64))
        return dp / self.cosmo.kick_factor(lo, hi)

    def _interval_extras(self) -> tuple[np.ndarray, np.ndarray]:
        """Kick factors the closing and the opening kick at each boundary add beyond their
        fine half step: K(start, a_{j−½}) and K(a_{j+½}, end) (0 for ``fine`` kicks)."""
        nb = len(self.schedule.boundaries)
        close, opening = np.zeros(nb), np.zeros(nb)
        if self.kicks == "fine":
            return close, opening
        start, end = force_intervals(self.schedule, self.forces)
        half, k = self.schedule.half, self.cosmo.kick_factor
        for j in np.flatnonzero(self.forces):
            if j > 0 and start[j] < half[j - 1]:
                close[j] = k(float(start[j]), float(half[j - 1]))
            if j < nb - 1 and end[j] > half[j]:
                opening[j] = k(float(half[j]), float(end[j]))
        return close, opening

    def _kick(self, force, a_force: float, a0: float, a1: float, extra: float = 0.0):
        """Queue one kick of ``force`` over [a0, a1], plus ``extra`` (an interval kick's kick
        factor beyond [a0, a1], with the frame's force F_ML subtracted over it)."""
        if force is None:
            return
        pend = self._pending
        if pend.drift is not None or len(pend.kicks) == 2 or pend.force is not force:
            self._flush()
            pend = self._pending
            pend.force = force
        c = self.cosmo
        if self.method == "pm":
            k = (c.fastpm_kick_factor(a0, a1, a_force) if self.pm_factors == "fastpm"
                 else c.kick_factor(a0, a1))
        else:
            k = c.kick_factor(a0, a1)
        m0 = m1 = None
        if self.frame is not None:
            m0 = np.asarray(self.frame.residual_momentum(a0), dtype=np.float64)
            m1 = np.asarray(self.frame.residual_momentum(a1), dtype=np.float64)
        if extra > 0:  # g K_extra with g = F − F_LPT − F_ML: kick factor and frame array
            k = k + extra
            if self._f_ml is not None:
                m0 = m0 - self._f_ml * extra
        pend.kicks.append((float(k), m0, m1))
        force.uses -= 1

    def _drift(self, a0: float, ah: float, a1: float):
        if self._pending.drift is not None:
            self._flush()
        c = self.cosmo
        mh = None
        if self.method == "pm":
            dd1 = dd2 = 0.0
            d = (c.fastpm_drift_factor(a0, a1, ah) if self.pm_factors == "fastpm"
                 else c.drift_factor(a0, a1))
        else:
            dd1, dd2 = float(c.D1(a1) - c.D1(a0)), float(c.D2(a1) - c.D2(a0))
            d = c.drift_factor(a0, a1)
            if self.frame is not None:
                mh = np.asarray(self.frame.residual_momentum(ah), dtype=np.float64)
        self._pending.drift = (dd1, dd2, float(d), mh)

    def _flush(self):
        """Run the pending kicks and drift in one pass over the particles."""
        pend = self._pending
        if pend.empty():
            return
        self._pending = _Pass()
        force = pend.force if pend.kicks else None
        if (force is None and pend.force is not None and pend.force.nodes is not None
                and pend.drift is not None):
            raise RuntimeError("a force mesh would be read out after the particles moved")
        coef = np.zeros(8)
        flags = np.zeros(8, dtype=np.bool_)
        arrays = [_NO_ARRAY] * 5  # k2_m0, k2_m1, k1_m0, k1_m1, drift_m
        nodes, n_mesh, (node, frac), values = _NO_NODES, 0, _NO_CELLS, _NO_ARRAY
        source = _NO_FORCE
        if force is not None:
            if force.nodes is not None:
                source = _READOUT
                nodes, n_mesh, (node, frac) = force.nodes, force.n_mesh, cell_views(force.cells)
                if force.uses > 0:  # a later kick needs this force: keep it
                    force.values = np.empty_like(self._x)
                    force.nodes = force.cells = None
                    flags[_F_STORE] = True
                    values = force.values
            else:
                source, values = _BUFFER, force.values
            if self.method != "pm":
                c = self.cosmo
                d1, d2 = c.D1(force.a_force), c.D2(force.a_force)
                coef[_C_LPT], coef[_C_D1], coef[_C_E] = 1.5 * c.Omega_m, d1, d2 - d1 * d1
            # the first queued kick goes in slot 2 (closes a step), a second in slot 1
            for slot, (k, m0, m1) in zip(((_C_K2, _F_KICK2, _F_FRAME2, 0),
                                          (_C_K1, _F_KICK1, _F_FRAME1, 2)), pend.kicks,
                                         strict=False):
                ck, fk, ff, a = slot
                coef[ck], flags[fk] = k, True
                if m0 is not None:
                    flags[ff] = True
                    arrays[a], arrays[a + 1] = m0, m1
        if pend.drift is not None:
            dd1, dd2, d, mh = pend.drift
            coef[_C_DD1], coef[_C_DD2], coef[_C_DRIFT] = dd1, dd2, d
            flags[_F_DRIFT] = True
            if mh is not None:
                flags[_F_FRAME_DRIFT] = True
                arrays[4] = mh
        flags[_F_LPT] = self.method != "pm"
        _particle_pass(source, self._x, self._p, self.lpt.psi1, self.lpt.psi2, nodes, n_mesh,
                       node, frac, values, coef, flags, *arrays)

    def _observe(self, event: str):
        for obs in self.observers:
            obs(event, self.a, self)

    def run(self, progress: bool = False) -> Stepper:
        """Integrate from a_0 to a_n, calling observers at every query time."""
        c, sched = self.cosmo, self.schedule
        b, half = sched.boundaries, sched.half
        self.a = float(b[0])
        self._pending = _Pass()
        self._x = self.lpt.combine(c.D1(self.a), c.D2(self.a), lattice=True)  # q + Ψ_LPT
        if self.method == "pm":
            self._p = self.lpt.momenta(c, self.a)
        elif self.frame is None:
            self._p = np.zeros_like(self._x)
        else:
            self._p = -np.asarray(self.frame.residual_momentum(self.a), dtype=np.float64)
        self._observe("start")
        force = self._force(0)
        stops = self._collapse_stops()
        bar = tqdm(total=sched.n_steps, desc=f"{self.method} steps", disable=not progress,
                   leave=False)
        i = 0
        while i < sched.n_steps:
            j = i + 1
            while stops is not None and j < sched.n_steps and not stops[j]:
                j += 1
            a0, ah, a1 = float(b[i]), float(half[i]), float(b[j])
            self._kick(force, a0, a0, ah, float(self._extra[1][i]))
            self.a = ah
            self._observe("half")
            if j == i + 1:
                self._drift(a0, ah, a1)
            else:
                self._drift_run(i, j)
            force = self._force(j)
            self._kick(force, a1, float(half[j - 1]), a1, float(self._extra[0][j]))
            self.a = a1
            self._observe("boundary")
            bar.update(j - i)
            i = j
        bar.close()
        self._flush()
        return self

    def _collapse_stops(self) -> np.ndarray | None:
        """Boundaries a run of skipped steps must stop at, or None (no collapsing).

        Between two computed forces a COCA particle only drifts (p_c is constant), so the
        steps collapse exactly into one LPT update and one weighted frame sum. Done only for
        frames with ``weighted_residual`` (an emulated frame: one K-term sum) and when every
        observer names the boundaries it needs (``times``, e.g. snapshots); any other
        observer sees every step.
        """
        if self.method != "coca" or not hasattr(self.frame, "weighted_residual"):
            return None
        stops = self.forces.copy()
        for obs in self.observers:
            times = getattr(obs, "times", None)
            if times is None:
                return None
            stops |= np.isin(self.schedule.boundaries, np.asarray(sorted(times), dtype=float))
        return stops

    def _drift_run(self, i: int, j: int):
        """The drifts of steps i … j−1 (no force in between) as one drift: ΔD1, ΔD2 from a_i to
        a_j, factor Σ D_s and frame term Σ_s D_s p_ML(a_{s+½}) / Σ D_s."""
        if self._pending.drift is not None:
            self._flush()
        c, b, half = self.cosmo, self.schedule.boundaries, self.schedule.half
        d = np.array([c.drift_factor(float(b[s]), float(b[s + 1])) for s in range(i, j)])
        total = float(d.sum())
        mh = np.asarray(self.frame.weighted_residual(half[i:j], d / total), dtype=np.float64)
        dd1 = float(c.D1(float(b[j])) - c.D1(float(b[i])))
        dd2 = float(c.D2(float(b[j])) - c.D2(float(b[i])))
        self._pending.drift = (dd1, dd2, total, mh)
