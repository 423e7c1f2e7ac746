"""Linear growth of flat ΛCDM: the growth ODE of :mod:`cocasbi.cosmology` solved on a table.

The state y = [D1, G1, D2, G2] (G = a³ E dD/da) obeys, in s = ln a,

    dD1/ds = G1 / (a² E),   dG1/ds = 3/2 Ω_m D1 / (a E),
    dD2/ds = G2 / (a² E),   dG2/ds = 3/2 Ω_m (D2 − D1²) / (a E).

It is integrated with the classical fourth-order Runge-Kutta method on a fixed grid of
:data:`STEPS` equal steps in ln a (compiled with numba: about a millisecond, against 25-35 ms
for scipy's adaptive DOP853 with a Python right-hand side, which every simulation paid), and
evaluated between grid points by cubic Hermite interpolation of the states and their
derivatives. Both errors scale as h⁴; with h = ln(a_late / a_early) / STEPS ≈ 5e-4 the table
agrees with DOP853 at its tightest tolerance (rtol 2.3e-14) to better than 1e-12 relative, 40x
closer than the DOP853 solution at rtol 1e-12 it replaced (``tests/test_cosmology.py``).
Everything is float64.
"""

from __future__ import annotations

import numba
import numpy as np

STEPS = 16384


@numba.njit(cache=True, inline="always")
def _rhs(s, y0, y1, y2, y3, om):
    a = np.exp(s)
    e = np.sqrt(om / (a * a * a) + 1.0 - om)
    aae, ae = a * a * e, a * e
    return y1 / aae, 1.5 * om * y0 / ae, y3 / aae, 1.5 * om * (y2 - y0 * y0) / ae


@numba.njit(cache=True)
def _solve(om, s0, s1, y, steps):
    """States and derivatives (steps + 1, 4) on the grid s0 + i h, from y at s0 (RK4)."""
    h = (s1 - s0) / steps
    ys = np.empty((steps + 1, 4))
    dys = np.empty((steps + 1, 4))
    y0, y1, y2, y3 = y[0], y[1], y[2], y[3]
    for i in range(steps + 1):
        s = s0 + i * h
        k0, k1, k2, k3 = _rhs(s, y0, y1, y2, y3, om)
        ys[i, 0], ys[i, 1], ys[i, 2], ys[i, 3] = y0, y1, y2, y3
        dys[i, 0], dys[i, 1], dys[i, 2], dys[i, 3] = k0, k1, k2, k3
        if i == steps:
            break
        hh = 0.5 * h
        l0, l1, l2, l3 = _rhs(s + hh, y0 + hh * k0, y1 + hh * k1, y2 + hh * k2, y3 + hh * k3,
                              om)
        m0, m1, m2, m3 = _rhs(s + hh, y0 + hh * l0, y1 + hh * l1, y2 + hh * l2, y3 + hh * l3,
                              om)
        n0, n1, n2, n3 = _rhs(s + h, y0 + h * m0, y1 + h * m1, y2 + h * m2, y3 + h * m3, om)
        w = h / 6.0
        y0 = y0 + w * (k0 + 2.0 * (l0 + m0) + n0)
        y1 = y1 + w * (k1 + 2.0 * (l1 + m1) + n1)
        y2 = y2 + w * (k2 + 2.0 * (l2 + m2) + n2)
        y3 = y3 + w * (k3 + 2.0 * (l3 + m3) + n3)
    return ys, dys


class GrowthTable:
    """[D1, G1, D2, G2] of s = ln a on [s0, s1], from the state ``y0`` at s0 (raw growing mode).

    Calling it with s (scalar or array) returns an array of shape (4,) + s.shape, as scipy's
    dense ODE solutions do.
    """

    def __init__(self, omega_m: float, s0: float, s1: float, y0, steps: int = STEPS):
        self.s0, self.steps = float(s0), int(steps)
        self.h = (float(s1) - self.s0) / self.steps
        self._y, self._dy = _solve(float(omega_m), self.s0, float(s1),
                                   np.asarray(y0, dtype=np.float64), self.steps)

    def __call__(self, s):
        s = np.asarray(s, dtype=np.float64)
        u = (s - self.s0) / self.h
        i = np.clip(np.floor(u).astype(np.int64), 0, self.steps - 1)
        t = u - i
        t2, t3 = t * t, t * t * t
        h00, h10 = 2.0 * t3 - 3.0 * t2 + 1.0, t3 - 2.0 * t2 + t
        h01, h11 = -2.0 * t3 + 3.0 * t2, t3 - t2
        y, dy = self._y, self._dy
        out = (h00[..., None] * y[i] + (self.h * h10)[..., None] * dy[i]
               + h01[..., None] * y[i + 1] + (self.h * h11)[..., None] * dy[i + 1])
        return np.moveaxis(out, -1, 0)
