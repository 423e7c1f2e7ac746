"""Particle-mesh machinery: CIC paint and readout (numba), FFT plans (pyFFTW), force kernels.

Mesh node j sits at x = j L / N_m. CIC assignment uses the same kernel for paint and readout, so
self-forces vanish and the total force is zero to round-off. Painting is parallel without races
and deterministic: particles are bucketed by x-plane (stable counting sort) and blocks of planes
are painted in two colours (even blocks, then odd blocks), so the sum at every node is taken in
the same order whatever the number of threads.

Meshes are float32 (memory and FFT speed); particle coordinates are float64.
"""

from __future__ import annotations

import os

import numba
import numpy as np

try:
    import pyfftw

    HAVE_PYFFTW = True
except ImportError:  # pragma: no cover - exercised only without pyFFTW
    HAVE_PYFFTW = False

_BLOCK = 2  # x-planes per paint block (each block also touches the next plane)


def default_threads(threads: int = 0) -> int:
    """Thread count: the given one, or every core this process may use when 0."""
    if threads > 0:
        return threads
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


# ---------------------------------------------------------------------------- CIC
@numba.njit(cache=True)
def _bucket_by_plane(pos, n, cell):
    """Stable counting sort of particles by the x-plane index of their lower CIC node."""
    npart = pos.shape[0]
    plane = np.empty(npart, dtype=np.int64)
    counts = np.zeros(n + 1, dtype=np.int64)
    for p in range(npart):
        i = int(np.floor(pos[p, 0] / cell)) % n
        plane[p] = i
        counts[i + 1] += 1
    for i in range(n):
        counts[i + 1] += counts[i]
    order = np.empty(npart, dtype=np.int64)
    fill = counts[:-1].copy()
    for p in range(npart):
        order[fill[plane[p]]] = p
        fill[plane[p]] += 1
    return order, counts


@numba.njit(cache=True, fastmath=False)
def _paint_particle(mesh, x, y, z, w, n, cell):
    fx, fy, fz = x / cell, y / cell, z / cell
    ix, iy, iz = int(np.floor(fx)), int(np.floor(fy)), int(np.floor(fz))
    dx, dy, dz = fx - ix, fy - iy, fz - iz
    ix, iy, iz = ix % n, iy % n, iz % n
    jx, jy, jz = (ix + 1) % n, (iy + 1) % n, (iz + 1) % n
    tx, ty, tz = 1.0 - dx, 1.0 - dy, 1.0 - dz
    mesh[ix, iy, iz] += w * tx * ty * tz
    mesh[ix, iy, jz] += w * tx * ty * dz
    mesh[ix, jy, iz] += w * tx * dy * tz
    mesh[ix, jy, jz] += w * tx * dy * dz
    mesh[jx, iy, iz] += w * dx * ty * tz
    mesh[jx, iy, jz] += w * dx * ty * dz
    mesh[jx, jy, iz] += w * dx * dy * tz
    mesh[jx, jy, jz] += w * dx * dy * dz


@numba.njit(parallel=True, cache=True)
def _paint_blocks(mesh, pos, weight, order, counts, n, cell, colour):
    nblocks = (n + _BLOCK - 1) // _BLOCK
    nb = (nblocks - colour + 1) // 2
    for b in numba.prange(nb):
        block = 2 * b + colour
        start = counts[block * _BLOCK]
        stop = counts[min((block + 1) * _BLOCK, n)]
        for s in range(start, stop):
            p = order[s]
            _paint_particle(mesh, pos[p, 0], pos[p, 1], pos[p, 2], weight, n, cell)


def paint_cic(positions, n_mesh: int, box_size: float, out=None, weight: float | None = None):
    """Paint particles onto a mesh with CIC, returning the density contrast δ (float32).

    positions: (N, 3) comoving positions [Mpc/h], any real dtype, periodically wrapped.
    n_mesh: cells per side; box_size: side [Mpc/h]. Each particle carries mass
    ``weight`` (default N_m³/N so that the mean density is 1); δ = ρ − 1 is returned in ``out``
    if given. Deterministic and race-free for any thread count.
    """
    pos = np.ascontiguousarray(positions, dtype=np.float64)
    if pos.ndim != 2 or pos.shape[1] != 3:
        raise ValueError(f"positions must have shape (N, 3), got {pos.shape}")
    if n_mesh % 2 or n_mesh < 2 * _BLOCK:
        raise ValueError(f"n_mesh={n_mesh} must be even and >= {2 * _BLOCK}")
    if out is None:
        out = np.empty((n_mesh,) * 3, dtype=np.float32)
    out[...] = 0.0
    cell = box_size / n_mesh
    w = n_mesh**3 / len(pos) if weight is None else weight
    order, counts = _bucket_by_plane(pos, n_mesh, cell)
    for colour in (0, 1):
        _paint_blocks(out, pos, np.float32(w), order, counts, n_mesh, cell, colour)
    if weight is None:
        out -= 1.0
    return out


@numba.njit(parallel=True, cache=True)
def _readout(meshes, pos, out, n, cell):
    ncomp = meshes.shape[0]
    for p in numba.prange(pos.shape[0]):
        fx, fy, fz = pos[p, 0] / cell, pos[p, 1] / cell, pos[p, 2] / cell
        ix, iy, iz = int(np.floor(fx)), int(np.floor(fy)), int(np.floor(fz))
        dx, dy, dz = fx - ix, fy - iy, fz - iz
        ix, iy, iz = ix % n, iy % n, iz % n
        jx, jy, jz = (ix + 1) % n, (iy + 1) % n, (iz + 1) % n
        tx, ty, tz = 1.0 - dx, 1.0 - dy, 1.0 - dz
        for c in range(ncomp):
            m = meshes[c]
            out[p, c] = (
                m[ix, iy, iz] * tx * ty * tz
                + m[ix, iy, jz] * tx * ty * dz
                + m[ix, jy, iz] * tx * dy * tz
                + m[ix, jy, jz] * tx * dy * dz
                + m[jx, iy, iz] * dx * ty * tz
                + m[jx, iy, jz] * dx * ty * dz
                + m[jx, jy, iz] * dx * dy * tz
                + m[jx, jy, jz] * dx * dy * dz
            )


def readout_cic(meshes, positions, box_size: float, out=None):
    """Interpolate mesh fields to particle positions with CIC.

    meshes: (C, N_m, N_m, N_m) or (N_m, N_m, N_m) array; positions [Mpc/h]. Returns (N, C)
    float64 values (or (N,) for a single mesh).
    """
    single = meshes.ndim == 3
    m = meshes[None] if single else meshes
    pos = np.ascontiguousarray(positions, dtype=np.float64)
    if out is None:
        out = np.empty((len(pos), m.shape[0]), dtype=np.float64)
    _readout(m, pos, out, m.shape[-1], box_size / m.shape[-1])
    return out[:, 0] if single else out


# ---------------------------------------------------------------------------- FFT
class FFT:
    """Cached real-to-complex / complex-to-real plans for one mesh shape (float32).

    Uses pyFFTW (threaded, FFTW_MEASURE once per process and shape) and falls back to
    numpy.fft if pyFFTW is missing. ``forward`` returns the unnormalised transform;
    ``backward`` includes the 1/N³ factor.
    """

    _plans: dict = {}

    def __init__(self, n: int, threads: int = 0):
        self.n = n
        self.threads = default_threads(threads)
        self.real_shape = (n, n, n)
        self.complex_shape = (n, n, n // 2 + 1)
        if HAVE_PYFFTW:
            key = (n, self.threads)
            if key not in FFT._plans:
                FFT._plans[key] = self._plan()
            self._real, self._cplx, self._fwd, self._bwd = FFT._plans[key]

    def _plan(self):
        real = pyfftw.empty_aligned(self.real_shape, dtype="float32")
        cplx = pyfftw.empty_aligned(self.complex_shape, dtype="complex64")
        flags = ("FFTW_MEASURE", "FFTW_DESTROY_INPUT")
        fwd = pyfftw.FFTW(real, cplx, axes=(0, 1, 2), direction="FFTW_FORWARD",
                          flags=flags, threads=self.threads)
        bwd = pyfftw.FFTW(cplx, real, axes=(0, 1, 2), direction="FFTW_BACKWARD",
                          flags=flags, threads=self.threads)
        return real, cplx, fwd, bwd

    def forward(self, field, out=None):
        """r2c transform of a real (N,N,N) field; returns complex64 (N,N,N/2+1)."""
        if not HAVE_PYFFTW:
            return np.fft.rfftn(field).astype(np.complex64)
        self._real[...] = field
        self._fwd()
        if out is None:
            return self._cplx.copy()
        out[...] = self._cplx
        return out

    def backward(self, modes, out=None):
        """c2r transform (normalised by 1/N³); returns float32 (N,N,N)."""
        if not HAVE_PYFFTW:
            return np.fft.irfftn(modes, s=self.real_shape).astype(np.float32)
        self._cplx[...] = modes
        self._bwd()  # pyFFTW normalises the backward transform by default
        if out is None:
            return self._real.copy()
        out[...] = self._real
        return out


def wavenumbers(n: int, box_size: float, dtype=np.float64):
    """Fundamental-unit wavevector components (kx, ky, kz) [h/Mpc], broadcastable to rfft shape."""
    kf = 2 * np.pi / box_size
    k = (np.fft.fftfreq(n, 1.0 / n) * kf).astype(dtype)
    kz = (np.arange(n // 2 + 1) * kf).astype(dtype)
    return k[:, None, None], k[None, :, None], kz[None, None, :]


# ---------------------------------------------------------------------------- kernels
def _kernel_1d(n: int, box_size: float, kernel: str):
    """Per-axis Laplacian and gradient symbols on the mesh: (k², D(k)) along one axis [h/Mpc]."""
    cell = box_size / n
    w = 2 * np.pi * np.fft.fftfreq(n)  # k * cell in (-π, π]
    if kernel == "fd":
        lap = (2.0 / cell * np.sin(w / 2)) ** 2
        grad = (8 * np.sin(w) - np.sin(2 * w)) / (6 * cell)  # 4-point FD, zero at Nyquist
    elif kernel == "exact":
        lap = (w / cell) ** 2
        grad = w / cell
        grad[n // 2] = 0.0
    else:
        raise ValueError(f"unknown force kernel {kernel!r}")
    return lap, grad


@numba.njit(parallel=True, cache=True)
def _force_modes(delta_k, out, lap_x, lap_y, lap_z, gx, gy, gz, factor):
    """out[c] = i D_c(k) factor δ_k / k²_lap; the k = 0 mode is zero."""
    nx, ny, nz = delta_k.shape
    for i in numba.prange(nx):
        for j in range(ny):
            for k in range(nz):
                k2 = lap_x[i] + lap_y[j] + lap_z[k]
                if k2 == 0.0:
                    out[0, i, j, k] = 0.0
                    out[1, i, j, k] = 0.0
                    out[2, i, j, k] = 0.0
                    continue
                v = delta_k[i, j, k] * (factor / k2)
                iv = 1j * v
                out[0, i, j, k] = iv * gx[i]
                out[1, i, j, k] = iv * gy[j]
                out[2, i, j, k] = iv * gz[k]


class ForceSolver:
    """PM gravity: F = −∇φ with ∇²φ = 3/2 Ω_m δ, on an N_m³ mesh, read back at particles.

    F has the units of p per unit a (dp/da = F / (a² E)); positions in [Mpc/h]. Plans, kernels
    and work arrays are allocated once. ``kernel`` is ``"fd"`` (discrete Laplacian and 4-point
    gradient, FastPM's default) or ``"exact"`` (−1/k², ik).
    """

    def __init__(self, n_mesh: int, box_size: float, Omega_m: float, kernel: str = "fd",
                 threads: int = 0):
        self.n, self.box_size, self.Omega_m = n_mesh, box_size, Omega_m
        self.fft = FFT(n_mesh, threads)
        lap, grad = _kernel_1d(n_mesh, box_size, kernel)
        nz = n_mesh // 2 + 1
        self._lap = (lap, lap, np.ascontiguousarray(lap[:nz]))
        zgrad = grad[:nz].copy()
        zgrad[-1] = 0.0  # Nyquist plane: odd kernel must vanish for a real field
        self._grad = (grad, grad, zgrad)
        self._delta = np.empty((n_mesh,) * 3, dtype=np.float32)
        self._modes = np.empty((3,) + self.fft.complex_shape, dtype=np.complex64)
        self._force_mesh = np.empty((3,) + (n_mesh,) * 3, dtype=np.float32)
        numba.set_num_threads(min(self.fft.threads, numba.config.NUMBA_NUM_THREADS))

    def density(self, positions):
        """δ on the mesh (float32, owned by the solver: copy it to keep it)."""
        return paint_cic(positions, self.n, self.box_size, out=self._delta)

    def force_mesh(self, delta):
        """(3, N_m, N_m, N_m) float32 force field from a density contrast."""
        delta_k = self.fft.forward(delta)
        _force_modes(delta_k, self._modes, *self._lap, *self._grad, 1.5 * self.Omega_m)
        for c in range(3):
            self.fft.backward(self._modes[c], out=self._force_mesh[c])
        return self._force_mesh

    def __call__(self, positions, out=None):
        """Force at each particle, (N, 3) float64."""
        return readout_cic(self.force_mesh(self.density(positions)), positions, self.box_size,
                           out=out)
