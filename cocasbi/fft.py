"""FFT plans and wavenumbers of periodic meshes (pyFFTW, numpy fallback).

Every :class:`FFT` owns its plans and buffers (nothing is shared between instances or cached at
class level), so two simulations in one process never touch each other's arrays. Plans use
``FFTW_ESTIMATE``: ``FFTW_MEASURE`` picks algorithms by timing and is not bit-reproducible.
Meshes are float32 (memory and FFT speed); wavenumbers float64.
"""

from __future__ import annotations

import numpy as np

from cocasbi.threads import default_threads

try:
    import pyfftw

    HAVE_PYFFTW = True
except ImportError:  # pragma: no cover - exercised only without pyFFTW
    HAVE_PYFFTW = False

FFTW_FLAGS = ("FFTW_ESTIMATE", "FFTW_DESTROY_INPUT")  # MEASURE is not reproducible


def empty_aligned(shape, dtype):
    """SIMD-aligned empty array (pyFFTW's allocator when present)."""
    if HAVE_PYFFTW:
        return pyfftw.empty_aligned(shape, dtype=dtype)
    return np.empty(shape, dtype=dtype)


def fftw_plan(src, dst, direction: str, threads: int):
    """A pyFFTW plan of a 3D r2c (``FFTW_FORWARD``) or c2r (``FFTW_BACKWARD``) transform
    from ``src`` to ``dst`` (unnormalised both ways)."""
    return pyfftw.FFTW(src, dst, axes=(0, 1, 2), direction=direction, flags=FFTW_FLAGS,
                       threads=threads)


class FFT:
    """Real-to-complex / complex-to-real plans for one mesh shape (float32), owned by this
    instance.

    Uses pyFFTW (threaded, planned with ``FFTW_FLAGS``) and falls back to numpy.fft if pyFFTW is
    missing. ``forward`` returns the unnormalised transform; ``backward`` includes the 1/N³
    factor. Reuse one instance for many transforms of the same shape.
    """

    def __init__(self, n: int, threads: int = 0):
        self.n = n
        self.threads = default_threads(threads)
        self.real_shape = (n, n, n)
        self.complex_shape = (n, n, n // 2 + 1)
        if HAVE_PYFFTW:
            self._real, self._cplx, self._fwd, self._bwd = self._plan()

    def _plan(self):
        real = empty_aligned(self.real_shape, np.float32)
        cplx = empty_aligned(self.complex_shape, np.complex64)
        return (real, cplx, fftw_plan(real, cplx, "FFTW_FORWARD", self.threads),
                fftw_plan(cplx, real, "FFTW_BACKWARD", self.threads))

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
