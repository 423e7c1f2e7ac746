"""Periodic PM gravity: F = −∇φ with ∇²φ = 3/2 Ω_m δ on an N_m³ mesh, read back at particles.

The force (finite-difference kernel, the default) takes one r2c and one c2r transform: the
potential ψ = 3/2 Ω_m δ_k / k²_lap is brought back to the mesh and differentiated there with the
4-point stencil [8(ψ₊₁ − ψ₋₁) − (ψ₊₂ − ψ₋₂)] / 12h, whose Fourier symbol is exactly the FD
gradient i(8 sin w − sin 2w)/6h (zero at Nyquist). That equals the three-c2r spectral route
to float32 round-off at a third of the FFT cost; the spectral route (``gradient="fourier"``)
remains, and is the only one for the exact kernel. Paint writes straight into the FFT input
buffer and the Green's function is applied in place on the FFT output: no copies.

Each :class:`ForceSolver` owns its plans and work arrays; numba's thread count is that of the
calling thread (see :mod:`cocasbi.threads`). Meshes are float32; particle coordinates and
forces float64. A solver for the Dirichlet boundaries of sub-volume (sCOLA) tiles belongs
beside this periodic one.
"""

from __future__ import annotations

import numba
import numpy as np

from cocasbi.cic import (
    CELL_DTYPE,
    check_mesh_size,
    empty_nodes,
    locate,
    nodes_view,
    paint_cic,
    paint_sorted,
    readout_cells,
    readout_nodes,
    sort_by_plane,
)
from cocasbi.fft import FFT, HAVE_PYFFTW, empty_aligned, fftw_plan
from cocasbi.threads import default_threads


def _kernel_1d(n: int, box_size: float, kernel: str):
    """Per-axis Laplacian and gradient symbols on the mesh: (k², D(k)) along one axis [h/Mpc]."""
    cell = box_size / n
    w = 2 * np.pi * np.fft.fftfreq(n)  # k * cell in (-π, π]
    if kernel == "fd":
        lap = (2.0 / cell * np.sin(w / 2)) ** 2
        grad = (8 * np.sin(w) - np.sin(2 * w)) / (6 * cell)  # 4-point FD, zero at Nyquist
        grad[n // 2] = 0.0  # exactly (sin π is 1e-16 in floating point)
    elif kernel == "exact":
        lap = (w / cell) ** 2
        grad = w / cell
        grad[n // 2] = 0.0
    else:
        raise ValueError(f"unknown force kernel {kernel!r}")
    return lap, grad


@numba.njit(parallel=True, cache=True, error_model="numpy")
def _apply_green(modes, lap_x, lap_y, lap_z, factor):
    """modes *= factor / k²_lap in place; the k = 0 mode is set to zero."""
    nx, ny, nz = modes.shape
    for i in numba.prange(nx):
        g = np.empty(nz, dtype=np.float32)
        for j in range(ny):
            lxy = lap_x[i] + lap_y[j]
            for k in range(nz):
                g[k] = factor / (lxy + lap_z[k])
            if i == 0 and j == 0:
                g[0] = 0.0
            row = modes[i, j]
            for k in range(nz):
                row[k] = row[k] * g[k]


@numba.njit(parallel=True, cache=True, error_model="numpy")
def _gradient_modes(delta_k, out, lap_x, lap_y, lap_z, grad, axis, factor):
    """out = i D_axis(k) factor δ_k / k²_lap (one force component); the k = 0 mode is zero."""
    nx, ny, nz = delta_k.shape
    for i in numba.prange(nx):
        g = np.empty(nz, dtype=np.float32)
        for j in range(ny):
            lxy = lap_x[i] + lap_y[j]
            if axis == 2:
                for k in range(nz):
                    g[k] = factor * grad[k] / (lxy + lap_z[k])
            else:
                d = factor * (grad[i] if axis == 0 else grad[j])
                for k in range(nz):
                    g[k] = d / (lxy + lap_z[k])
            if i == 0 and j == 0:
                g[0] = 0.0
            src = delta_k[i, j]
            dst = out[i, j]
            for k in range(nz):
                v = src[k]
                dst[k] = complex(-v.imag * g[k], v.real * g[k])


@numba.njit(parallel=True, cache=True)
def _fd_gradient(psi, out, scale):
    """out[..., c] = ∂_c ψ with the periodic 4-point stencil [8(ψ₊₁ − ψ₋₁) − (ψ₊₂ − ψ₋₂)] scale;
    ``out`` is (n, n, n, 3): the three components of a node are written together."""
    n = psi.shape[0]
    a = np.float32(8.0 * scale)
    b = np.float32(scale)
    for i in numba.prange(n):
        ip1, ip2, im1, im2 = (i + 1) % n, (i + 2) % n, (i - 1) % n, (i - 2) % n
        rows = np.empty((3, n), dtype=np.float32)  # one row of each component, then interleaved
        for j in range(n):
            jp1, jp2, jm1, jm2 = (j + 1) % n, (j + 2) % n, (j - 1) % n, (j - 2) % n
            r = psi[i, j]
            xp1, xm1, xp2, xm2 = psi[ip1, j], psi[im1, j], psi[ip2, j], psi[im2, j]
            yp1, ym1, yp2, ym2 = psi[i, jp1], psi[i, jm1], psi[i, jp2], psi[i, jm2]
            ox, oy, oz = rows[0], rows[1], rows[2]
            for k in range(n):
                ox[k] = a * (xp1[k] - xm1[k]) - b * (xp2[k] - xm2[k])
                oy[k] = a * (yp1[k] - ym1[k]) - b * (yp2[k] - ym2[k])
            for k in range(2, n - 2):
                oz[k] = a * (r[k + 1] - r[k - 1]) - b * (r[k + 2] - r[k - 2])
            oz[0] = a * (r[1] - r[n - 1]) - b * (r[2] - r[n - 2])
            oz[1] = a * (r[2] - r[0]) - b * (r[3] - r[n - 1])
            oz[n - 2] = a * (r[n - 1] - r[n - 3]) - b * (r[0] - r[n - 4])
            oz[n - 1] = a * (r[0] - r[n - 2]) - b * (r[1] - r[n - 3])
            o = out[i, j]
            for k in range(n):
                o[k, 0], o[k, 1], o[k, 2] = ox[k], oy[k], oz[k]


class ForceSolver:
    """PM gravity: F = −∇φ with ∇²φ = 3/2 Ω_m δ, on an N_m³ mesh, read back at particles.

    F has the units of p per unit a (dp/da = F / (a² E)); positions in [Mpc/h]. Plans, kernels
    and work arrays are allocated once. ``kernel`` is ``"fd"`` (discrete Laplacian and 4-point
    gradient, FastPM's default) or ``"exact"`` (−1/k², ik). ``gradient`` picks where the FD
    gradient is taken: ``"mesh"`` (default for fd: one c2r of the potential, then the 4-point
    stencil on the mesh) or ``"fourier"`` (three c2r of i D(k) φ_k; the only choice for exact).
    Both give the same force to float32 round-off.
    """

    def __init__(self, n_mesh: int, box_size: float, Omega_m: float, kernel: str = "fd",
                 threads: int = 0, *, gradient: str | None = None):
        check_mesh_size(n_mesh)
        gradient = gradient or ("mesh" if kernel == "fd" else "fourier")
        if gradient not in ("mesh", "fourier") or (gradient == "mesh" and kernel != "fd"):
            raise ValueError(f"gradient={gradient!r} is not available for kernel={kernel!r}")
        self.n, self.box_size, self.Omega_m = n_mesh, box_size, Omega_m
        self.kernel, self.gradient = kernel, gradient
        self.threads = default_threads(threads)
        self._fft = None
        lap, grad = _kernel_1d(n_mesh, box_size, kernel)
        nz = n_mesh // 2 + 1
        self._lap = (lap, lap, np.ascontiguousarray(lap[:nz]))
        zgrad = grad[:nz].copy()
        zgrad[-1] = 0.0  # Nyquist plane: odd kernel must vanish for a real field
        self._grad = grad.copy()
        self._zgrad = zgrad
        self._factor = 1.5 * Omega_m / n_mesh**3  # Poisson factor and the c2r 1/N³
        shape, cshape = (n_mesh,) * 3, (n_mesh, n_mesh, nz)
        self._delta = empty_aligned(shape, np.float32)
        self._npart = -1  # particle work arrays are sized on the first paint
        self._cells = None
        self._real = empty_aligned(shape, np.float32)  # paint target and c2r output (ψ)
        self._cplx = empty_aligned(cshape, np.complex64)  # r2c output, Green's function in place
        self._nodes = None
        if gradient == "mesh":
            # components interleaved in memory (cic.empty_nodes), seen as (3, N, N, N): the
            # 24 mesh values of a CIC readout span a third as many cache lines (a 256³ mesh:
            # readout 93 -> 57 ms) and are read as 8 vector loads (cic.interpolate_nodes)
            self._nodes = empty_nodes(n_mesh)
            self._force_nodes = nodes_view(self._nodes, n_mesh)  # (N, N, N, 3)
            self._force_mesh = np.moveaxis(self._force_nodes, -1, 0)
        else:  # each component is the output of its own c2r: contiguous (strided FFTW output
            # made that route 2x slower)
            self._force_mesh = empty_aligned((3,) + shape, np.float32)
        if HAVE_PYFFTW:
            self._fwd = fftw_plan(self._real, self._cplx, "FFTW_FORWARD", self.threads)
        if gradient == "mesh":
            if HAVE_PYFFTW:
                self._bwd = fftw_plan(self._cplx, self._real, "FFTW_BACKWARD", self.threads)
        else:
            self._work = empty_aligned(cshape, np.complex64)
            if HAVE_PYFFTW:
                self._bwds = [fftw_plan(self._work, self._force_mesh[c], "FFTW_BACKWARD",
                                        self.threads) for c in range(3)]

    @property
    def fft(self) -> FFT:
        """r2c/c2r helper for this mesh and thread count (planned on first use)."""
        if self._fft is None:
            self._fft = FFT(self.n, self.threads)
        return self._fft

    def density(self, positions):
        """δ on the mesh (float32, owned by the solver: copy it to keep it)."""
        return paint_cic(positions, self.n, self.box_size, out=self._delta)

    def _r2c(self):
        if HAVE_PYFFTW:
            self._fwd.execute()
        else:
            self._cplx[...] = np.fft.rfftn(self._real)

    def _c2r(self, src, dst, c=0):
        if HAVE_PYFFTW:
            (self._bwd if src is self._cplx else self._bwds[c]).execute()
        else:
            dst[...] = np.fft.irfftn(src, s=dst.shape, axes=(0, 1, 2)) * self.n**3

    def _force_from_real(self):
        """Force mesh from the density contrast held in ``self._real`` (destroyed)."""
        self._r2c()
        if self.gradient == "mesh":
            _apply_green(self._cplx, *self._lap, self._factor)
            self._c2r(self._cplx, self._real)
            _fd_gradient(self._real, self._force_nodes, self.n / (12.0 * self.box_size))
        else:
            grads = (self._grad, self._grad, self._zgrad)
            for c in range(3):
                _gradient_modes(self._cplx, self._work, *self._lap, grads[c], c, self._factor)
                self._c2r(self._work, self._force_mesh[c], c)
        return self._force_mesh

    def force_mesh(self, delta):
        """(3, N_m, N_m, N_m) float32 force field from a density contrast (owned by the solver)."""
        self._real[...] = delta
        return self._force_from_real()

    def _paint(self, positions, with_order: bool):
        """Locate the particles, sort their cells by mesh plane and paint δ into
        ``self._real``; the permutation is returned if ``with_order`` (work arrays are reused
        between calls)."""
        npart = len(positions)
        if npart != self._npart:
            self._npart = npart
            self._cells = np.empty((npart, 3), dtype=CELL_DTYPE)
            self._sorted_cells = np.empty_like(self._cells)
            self._order = np.empty(0, dtype=np.int64)
        if with_order and len(self._order) != npart:
            self._order = np.empty(npart, dtype=np.int64)  # only for __call__'s readout
        locate(positions, self.n, self.box_size, self._cells)
        order = self._order if with_order else self._order[:0]
        _, _, start = sort_by_plane(self._cells, self.n, self._sorted_cells, order)
        paint_sorted(self._real, self._sorted_cells, start)
        return order

    def release_particles(self):
        """Drop the per-particle work arrays (the cells, their sorted copy and the permutation:
        48-56 B per particle); the next force evaluation allocates them again, and
        :attr:`cells` is None until then. A finished run frees them before computing its
        final momenta, which then take their place instead of raising the peak memory."""
        self._npart = -1
        self._cells = self._sorted_cells = None
        self._order = np.empty(0, dtype=np.int64)

    @property
    def cells(self):
        """The CIC cells (:func:`cocasbi.cic.locate`) of the positions of the last force
        evaluation, in their order (None before the first); a readout of the force mesh at
        those positions can use them instead of locating the particles again. Valid until the
        next call."""
        return self._cells

    @property
    def force_nodes(self):
        """The force mesh of :meth:`force_field` as an interleaved buffer
        (:func:`cocasbi.cic.empty_nodes`: the three components of a node side by side), for
        :func:`cocasbi.cic.readout_nodes` or a kernel that calls
        :func:`cocasbi.cic.interpolate_nodes`; None for ``gradient="fourier"``, whose
        components are separate arrays. Valid until the next call."""
        return self._nodes

    def force_field(self, positions):
        """(3, N_m, N_m, N_m) float32 force mesh of these particles (owned by the solver).

        The force on a particle is the CIC readout of this mesh at its position (mesh node j at
        x = j L / N_m): :func:`cocasbi.cic.readout_cells` of :attr:`cells` (or
        :func:`cocasbi.cic.readout_nodes` of :attr:`force_nodes`), or a caller's kernel that
        fuses the readout with its own per-particle work (:mod:`cocasbi.nbody`). Valid until the
        next call.
        """
        self._paint(positions, with_order=False)
        return self._force_from_real()

    def __call__(self, positions, out=None):
        """Force at each particle, (N, 3) float64 (read out in mesh order)."""
        order = self._paint(positions, with_order=True)
        mesh = self._force_from_real()
        if self._nodes is not None:
            return readout_nodes(self._nodes, self.n, self._sorted_cells, out=out, order=order)
        return readout_cells(mesh, self._sorted_cells, out=out, order=order)
