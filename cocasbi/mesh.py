"""Particle-mesh machinery: CIC paint and readout (numba), FFT plans (pyFFTW), force kernels.

Mesh node j sits at x = j L / N_m. CIC assignment uses the same kernel for paint and readout, so
self-forces vanish and the total force is zero to round-off. Positions may lie outside [0, L)
(unwrapped coordinates, negative ones included): paint and readout wrap them periodically.

Particles are first counting-sorted (stably) by the mesh column (ix, iy) of their lower CIC node,
and paint and readout walk them in that order, so that the mesh is visited in memory order even
for clustered particles stored in Lagrangian order (a factor ~2 at late times). Painting is
parallel, race-free and deterministic: the mesh is cut into slabs of x-planes, one task per
slab, and each task adds the sorted particles of its planes (and of the plane below) to the
nodes it owns. Every node is written by one task only and receives its contributions in the
sorted order, and a stable sort is unique, so the mesh is bit-identical whatever the number of
threads (no atomics, no per-thread copies of the mesh).

The force (finite-difference kernel, the default) takes one r2c and one c2r transform: the
potential ψ = 3/2 Ω_m δ_k / k²_lap is brought back to the mesh and differentiated there with the
4-point stencil [8(ψ₊₁ − ψ₋₁) − (ψ₊₂ − ψ₋₂)] / 12h, whose Fourier symbol is exactly the FD
gradient i(8 sin w − sin 2w)/6h (zero at Nyquist). That equals the three-c2r spectral route
to float32 round-off at a third of the FFT cost; the spectral route (``gradient="fourier"``)
remains, and is the only one for the exact kernel. Paint writes straight into the FFT input
buffer and the Green's function is applied in place on the FFT output: no copies.

Meshes are float32 (memory and FFT speed); particle coordinates are float64.
"""

from __future__ import annotations

import os

# numba (omp threading layer) and pyFFTW each run their own GNU OpenMP pool; by default their
# idle threads spin for ~300k iterations (several ms) after every parallel region, stealing the
# cores the other pool needs next (paint -> r2c -> Green -> c2r -> stencil -> readout alternate).
# A short spin keeps the pools responsive inside a transform but yields the cores soon after.
# Must precede the libgomp loads (pyFFTW's now, numba's at its first parallel call); an explicit
# OMP_WAIT_POLICY or GOMP_SPINCOUNT from the user wins.
if "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ:
    os.environ["GOMP_SPINCOUNT"] = "10000"

import numba  # noqa: E402
import numpy as np  # noqa: E402

try:
    import pyfftw

    HAVE_PYFFTW = True
except ImportError:  # pragma: no cover - exercised only without pyFFTW
    HAVE_PYFFTW = False

_FFTW_FLAGS = ("FFTW_ESTIMATE", "FFTW_DESTROY_INPUT")  # MEASURE is not reproducible


def default_threads(threads: int = 0) -> int:
    """Thread count: the given one, or every core this process may use when 0."""
    if threads > 0:
        return threads
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def _empty(shape, dtype):
    """SIMD-aligned empty array (pyFFTW's allocator when present)."""
    if HAVE_PYFFTW:
        return pyfftw.empty_aligned(shape, dtype=dtype)
    return np.empty(shape, dtype=dtype)


# ---------------------------------------------------------------------------- CIC
@numba.njit(cache=True, inline="always")
def _cic_axis(x, inv_cell, n):
    """Lower node (wrapped into [0, n)), upper node and fractional offset along one axis."""
    f = x * inv_cell
    fl = np.floor(f)
    d = f - fl
    i = int(fl)
    if i < 0 or i >= n:  # rare: only unwrapped positions pay for the modulo
        i = i % n
    j = i + 1
    if j == n:
        j = 0
    return i, j, d


@numba.njit(parallel=True, cache=True)
def _sort_by_column(pos, sorted_pos, n, inv_cell, nchunk):
    """Stable counting sort of particles by mesh column (ix, iy) of their lower CIC node.

    Fills ``sorted_pos`` = pos[order] and returns the permutation ``order`` and ``start``,
    with start[x] the first sorted index of x-plane x (start[n] = N). A stable sort is unique,
    so the result does not depend on ``nchunk`` (histogram and scatter run in parallel over
    particle chunks). Sorting makes paint and readout walk the mesh (and the positions) in
    memory order: late-time, clustered particles in Lagrangian order otherwise miss the cache.
    """
    npart = pos.shape[0]
    nkey = n * n
    key = np.empty(npart, dtype=np.int32)
    hist = np.zeros((nchunk, nkey), dtype=np.int64)  # before the prefix sum: counts
    for c in numba.prange(nchunk):
        h = hist[c]
        for p in range((c * npart) // nchunk, ((c + 1) * npart) // nchunk):
            ix, _, _ = _cic_axis(pos[p, 0], inv_cell, n)
            iy, _, _ = _cic_axis(pos[p, 1], inv_cell, n)
            k = ix * n + iy
            key[p] = k
            h[k] += 1
    start = np.empty(n + 1, dtype=np.int64)
    total = 0
    for k in range(nkey):  # exclusive prefix sum, key-major then chunk
        if k % n == 0:
            start[k // n] = total
        for c in range(nchunk):
            cnt = hist[c, k]
            hist[c, k] = total
            total += cnt
    start[n] = total
    order = np.empty(npart, dtype=np.int64)
    for c in numba.prange(nchunk):
        h = hist[c]
        for p in range((c * npart) // nchunk, ((c + 1) * npart) // nchunk):
            k = key[p]
            s = h[k]
            order[s] = p
            sorted_pos[s, 0] = pos[p, 0]
            sorted_pos[s, 1] = pos[p, 1]
            sorted_pos[s, 2] = pos[p, 2]
            h[k] = s + 1
    return order, start


@numba.njit(cache=True)
def _paint_range(mesh, pos, s0, s1, lo, hi, w, inv_cell):
    """Add the CIC weights of (sorted) particles s0..s1-1 to the nodes of x-planes [lo, hi).

    Plane indices are compared unwrapped: a particle's upper plane ix + 1 (= n across the
    boundary) is painted only if it lies in [lo, hi), so ranges may be given as [n, n + 1).
    """
    n = mesh.shape[0]
    one = np.float32(1.0)
    for p in range(s0, s1):
        ix, jx, dx = _cic_axis(pos[p, 0], inv_cell, n)
        iy, jy, dy = _cic_axis(pos[p, 1], inv_cell, n)
        iz, jz, dz = _cic_axis(pos[p, 2], inv_cell, n)
        fy, fz = np.float32(dy), np.float32(dz)
        gy, gz = one - fy, one - fz
        if ix >= lo and ix < hi:
            a = w * (one - np.float32(dx))
            a0, a1 = a * gy, a * fy
            mesh[ix, iy, iz] += a0 * gz
            mesh[ix, iy, jz] += a0 * fz
            mesh[ix, jy, iz] += a1 * gz
            mesh[ix, jy, jz] += a1 * fz
        if ix + 1 >= lo and ix + 1 < hi:
            a = w * np.float32(dx)
            a0, a1 = a * gy, a * fy
            mesh[jx, iy, iz] += a0 * gz
            mesh[jx, iy, jz] += a0 * fz
            mesh[jx, jy, iz] += a1 * gz
            mesh[jx, jy, jz] += a1 * fz


@numba.njit(parallel=True, cache=True)
def _paint(mesh, pos, start, w, init, inv_cell, ntask):
    """mesh = init + Σ_p w CIC(x_p), slab-parallel over x-planes.

    Task t owns planes [lo, hi) (cut to balance particle counts) and adds, in sorted order,
    the particles of planes lo−1 (periodic) to hi−1, keeping only the nodes it owns. Every node
    of plane x therefore receives the particles of plane x−1 and then those of plane x, in
    sorted order, whatever the cut: the mesh does not depend on the number of tasks.
    """
    n = mesh.shape[0]
    npart = start[n]
    bounds = np.empty(ntask + 1, dtype=np.int64)
    bounds[0], bounds[ntask] = 0, n
    x = 0
    for t in range(1, ntask):  # balance particles per task (plane granularity)
        target = (t * npart) // ntask
        while x < n and start[x] < target:
            x += 1
        bounds[t] = max(x, bounds[t - 1])
    for t in numba.prange(ntask):
        lo, hi = bounds[t], bounds[t + 1]
        if lo == hi:
            continue
        mesh[lo:hi] = init
        # the particles of plane lo − 1 feed plane lo (across the boundary when lo = 0) ...
        if lo == 0:
            _paint_range(mesh, pos, start[n - 1], start[n], n, n + 1, w, inv_cell)
        else:
            _paint_range(mesh, pos, start[lo - 1], start[lo], lo, lo + 1, w, inv_cell)
        # ... then those of planes lo..hi−1 feed every owned plane (not plane 0 again)
        _paint_range(mesh, pos, start[lo], start[hi], lo, hi, w, inv_cell)


def _sort(pos, sorted_pos, n, box_size):
    """Column sort (see _sort_by_column) with at most 2**24 histogram entries in all."""
    nchunk = max(1, min(_nthreads(), 2**24 // (n * n)))
    return _sort_by_column(pos, sorted_pos, n, n / box_size, nchunk)


def _as_positions(positions):
    pos = np.ascontiguousarray(positions, dtype=np.float64)
    if pos.ndim != 2 or pos.shape[1] != 3:
        raise ValueError(f"positions must have shape (N, 3), got {pos.shape}")
    return pos


def _nthreads():
    return max(1, numba.get_num_threads())


def _paint_sorted(out, sorted_pos, start, box_size, weight):
    n_mesh = out.shape[0]
    w = n_mesh**3 / len(sorted_pos) if weight is None else weight
    init = -1.0 if weight is None else 0.0
    _paint(out, sorted_pos, start, np.float32(w), np.float32(init), n_mesh / box_size,
           _nthreads())
    return out


def paint_cic(positions, n_mesh: int, box_size: float, out=None, weight: float | None = None):
    """Paint particles onto a mesh with CIC, returning the density contrast δ (float32).

    positions: (N, 3) comoving positions [Mpc/h], any real dtype, wrapped periodically (they
    may lie outside [0, L)). n_mesh: cells per side (even, >= 4); box_size: side [Mpc/h]. Each
    particle carries mass ``weight``; by default N_m³/N, so that the mean density is 1, and
    δ = ρ − 1 is returned; with an explicit ``weight`` the raw density ρ is returned. The result
    goes to ``out`` (C-contiguous float32 (N_m,)*3) if given. Deterministic and race-free:
    bit-identical for any thread count.
    """
    pos = _as_positions(positions)
    if n_mesh % 2 or n_mesh < 4:
        raise ValueError(f"n_mesh={n_mesh} must be even and >= 4")
    if out is None:
        out = _empty((n_mesh,) * 3, np.float32)
    elif out.shape != (n_mesh,) * 3 or out.dtype != np.float32 or not out.flags.c_contiguous:
        raise ValueError("out must be a C-contiguous float32 array of shape (n_mesh,)*3")
    sorted_pos = np.empty_like(pos)
    _, start = _sort(pos, sorted_pos, n_mesh, box_size)
    return _paint_sorted(out, sorted_pos, start, box_size, weight)


@numba.njit(parallel=True, cache=True)
def _readout(meshes, pos, order, out, inv_cell):
    """out[order[s], c] = Σ CIC weights × meshes[c] at the 8 nodes around pos[s]."""
    ncomp = meshes.shape[0]
    n = meshes.shape[1]
    one = np.float32(1.0)
    for s in numba.prange(pos.shape[0]):
        p = order[s]
        ix, jx, dx = _cic_axis(pos[s, 0], inv_cell, n)
        iy, jy, dy = _cic_axis(pos[s, 1], inv_cell, n)
        iz, jz, dz = _cic_axis(pos[s, 2], inv_cell, n)
        fx, fy, fz = np.float32(dx), np.float32(dy), np.float32(dz)  # as in _paint_range
        tx, ty, tz = one - fx, one - fy, one - fz
        w00, w01, w10, w11 = tx * ty, tx * fy, fx * ty, fx * fy
        for c in range(ncomp):
            out[p, c] = (
                (meshes[c, ix, iy, iz] * tz + meshes[c, ix, iy, jz] * fz) * w00
                + (meshes[c, ix, jy, iz] * tz + meshes[c, ix, jy, jz] * fz) * w01
                + (meshes[c, jx, iy, iz] * tz + meshes[c, jx, iy, jz] * fz) * w10
                + (meshes[c, jx, jy, iz] * tz + meshes[c, jx, jy, jz] * fz) * w11
            )


def readout_cic(meshes, positions, box_size: float, out=None, order=None):
    """Interpolate mesh fields to particle positions with CIC (the paint kernel).

    meshes: (C, N_m, N_m, N_m) or (N_m, N_m, N_m) array; positions [Mpc/h], wrapped
    periodically. Returns (N, C) float64 values (or (N,) for a single mesh). With ``order``
    (a permutation), ``positions`` are taken as sorted, row s belonging to particle order[s],
    and the values are returned in the original particle order.
    """
    single = meshes.ndim == 3
    m = meshes[None] if single else meshes
    pos = _as_positions(positions)
    if out is None:
        out = np.empty((len(pos), m.shape[0]), dtype=np.float64)
    if order is None:
        order = np.arange(len(pos))
    _readout(m, pos, order, out, m.shape[-1] / box_size)
    return out[:, 0] if single else out


# ---------------------------------------------------------------------------- FFT
class FFT:
    """Cached real-to-complex / complex-to-real plans for one mesh shape (float32).

    Uses pyFFTW (threaded, planned with ``_FFTW_FLAGS`` once per process and shape) and falls
    back to numpy.fft if pyFFTW is missing. ``forward`` returns the unnormalised transform;
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
        real = _empty(self.real_shape, np.float32)
        cplx = _empty(self.complex_shape, np.complex64)
        fwd = pyfftw.FFTW(real, cplx, axes=(0, 1, 2), direction="FFTW_FORWARD",
                          flags=_FFTW_FLAGS, threads=self.threads)
        bwd = pyfftw.FFTW(cplx, real, axes=(0, 1, 2), direction="FFTW_BACKWARD",
                          flags=_FFTW_FLAGS, threads=self.threads)
        return real, cplx, fwd, bwd

    def forward(self, field, out=None):
        """r2c transform of a real (N,N,N) field; returns complex64 (N,N,N/2+1)."""
        if not HAVE_PYFFTW:
            return np.fft.rfftn(field).astype(np.complex64)
        self._real[...] = field
        self._fwd.execute()
        if out is None:
            return self._cplx.copy()
        out[...] = self._cplx
        return out

    def backward(self, modes, out=None):
        """c2r transform (normalised by 1/N³); returns float32 (N,N,N)."""
        if not HAVE_PYFFTW:
            return np.fft.irfftn(modes, s=self.real_shape, axes=(0, 1, 2)).astype(np.float32)
        self._cplx[...] = modes
        self._bwd.execute()
        norm = np.float32(1.0 / self.n**3)
        if out is None:
            return self._real * norm
        np.multiply(self._real, norm, out=out)
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
    """out[c] = ∂_c ψ with the periodic 4-point stencil [8(ψ₊₁ − ψ₋₁) − (ψ₊₂ − ψ₋₂)] scale."""
    n = psi.shape[0]
    a = np.float32(8.0 * scale)
    b = np.float32(scale)
    for i in numba.prange(n):
        ip1, ip2, im1, im2 = (i + 1) % n, (i + 2) % n, (i - 1) % n, (i - 2) % n
        for j in range(n):
            jp1, jp2, jm1, jm2 = (j + 1) % n, (j + 2) % n, (j - 1) % n, (j - 2) % n
            r = psi[i, j]
            xp1, xm1, xp2, xm2 = psi[ip1, j], psi[im1, j], psi[ip2, j], psi[im2, j]
            yp1, ym1, yp2, ym2 = psi[i, jp1], psi[i, jm1], psi[i, jp2], psi[i, jm2]
            ox, oy, oz = out[0, i, j], out[1, i, j], out[2, i, j]
            for k in range(n):
                ox[k] = a * (xp1[k] - xm1[k]) - b * (xp2[k] - xm2[k])
                oy[k] = a * (yp1[k] - ym1[k]) - b * (yp2[k] - ym2[k])
            for k in range(2, n - 2):
                oz[k] = a * (r[k + 1] - r[k - 1]) - b * (r[k + 2] - r[k - 2])
            oz[0] = a * (r[1] - r[n - 1]) - b * (r[2] - r[n - 2])
            oz[1] = a * (r[2] - r[0]) - b * (r[3] - r[n - 1])
            oz[n - 2] = a * (r[n - 1] - r[n - 3]) - b * (r[0] - r[n - 4])
            oz[n - 1] = a * (r[0] - r[n - 2]) - b * (r[1] - r[n - 3])


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
        if n_mesh % 2 or n_mesh < 4:
            raise ValueError(f"n_mesh={n_mesh} must be even and >= 4")
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
        self._delta = _empty(shape, np.float32)
        self._sorted_pos = np.empty((0, 3))
        self._real = _empty(shape, np.float32)  # paint target and c2r output (ψ)
        self._cplx = _empty(cshape, np.complex64)  # r2c output, Green's function in place
        self._force_mesh = _empty((3,) + shape, np.float32)
        if HAVE_PYFFTW:
            self._fwd = pyfftw.FFTW(self._real, self._cplx, axes=(0, 1, 2),
                                    direction="FFTW_FORWARD", flags=_FFTW_FLAGS,
                                    threads=self.threads)
        if gradient == "mesh":
            if HAVE_PYFFTW:
                self._bwd = pyfftw.FFTW(self._cplx, self._real, axes=(0, 1, 2),
                                        direction="FFTW_BACKWARD", flags=_FFTW_FLAGS,
                                        threads=self.threads)
        else:
            self._work = _empty(cshape, np.complex64)
            if HAVE_PYFFTW:
                self._bwds = [pyfftw.FFTW(self._work, self._force_mesh[c], axes=(0, 1, 2),
                                          direction="FFTW_BACKWARD", flags=_FFTW_FLAGS,
                                          threads=self.threads) for c in range(3)]
        numba.set_num_threads(min(self.threads, numba.config.NUMBA_NUM_THREADS))

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
            _fd_gradient(self._real, self._force_mesh, self.n / (12.0 * self.box_size))
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

    def __call__(self, positions, out=None):
        """Force at each particle, (N, 3) float64."""
        pos = _as_positions(positions)
        if self._sorted_pos.shape != pos.shape:
            self._sorted_pos = np.empty_like(pos)
        sp = self._sorted_pos
        order, start = _sort(pos, sp, self.n, self.box_size)
        _paint_sorted(self._real, sp, start, self.box_size, None)
        return readout_cic(self._force_from_real(), sp, self.box_size, out=out, order=order)
