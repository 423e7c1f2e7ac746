"""FFT plans and wavenumbers of periodic meshes (pyFFTW, numpy fallback).

Every :class:`FFT` owns its plans and buffers (nothing is shared between instances or cached at
class level), so two simulations in one process never touch each other's arrays. Plans use
``FFTW_ESTIMATE``: ``FFTW_MEASURE`` picks algorithms by timing and is not bit-reproducible.
Force meshes are float32 (memory and FFT speed); the initial conditions transform in float64
(``FFT(n, dtype=np.float64)``); wavenumbers are float64.
"""

from __future__ import annotations

import importlib
import importlib.util

import numpy as np

from cocasbi.threads import default_threads

#: pyFFTW is installed. It is imported on first use, not here: importing it loads libgomp, which
#: reads the OpenMP wait policy once, so :func:`cocasbi.threads.configure_process` must be able
#: to run after ``import cocasbi...`` and before the first transform.
HAVE_PYFFTW = importlib.util.find_spec("pyfftw") is not None

FFTW_FLAGS = ("FFTW_ESTIMATE", "FFTW_DESTROY_INPUT")  # MEASURE is not reproducible


def empty_aligned(shape, dtype):
    """SIMD-aligned empty array (pyFFTW's allocator when present)."""
    if HAVE_PYFFTW:
        return importlib.import_module("pyfftw").empty_aligned(shape, dtype=dtype)
    return np.empty(shape, dtype=dtype)


def fftw_plan(src, dst, direction: str, threads: int):
    """A pyFFTW plan of a 3D r2c (``FFTW_FORWARD``) or c2r (``FFTW_BACKWARD``) transform
    from ``src`` to ``dst`` (unnormalised both ways)."""
    pyfftw = importlib.import_module("pyfftw")
    return pyfftw.FFTW(src, dst, axes=(0, 1, 2), direction=direction, flags=FFTW_FLAGS,
                       threads=threads)


class FFT:
    """Real-to-complex / complex-to-real plans for one mesh shape, owned by this instance.

    dtype: float32 (default; complex64 modes) or float64 (complex128 modes). Uses pyFFTW
    (threaded, planned with ``FFTW_FLAGS``) and falls back to numpy.fft if pyFFTW is missing.
    ``forward`` returns the unnormalised transform; ``backward`` includes the 1/N³ factor.
    For work without copies, fill :attr:`real` or :attr:`modes` and call :meth:`r2c` or
    :meth:`c2r` (unnormalised, in the owned buffers; the input is destroyed). Reuse one
    instance for many transforms of the same shape.
    """

    def __init__(self, n: int, threads: int = 0, dtype=np.float32):
        dtype = np.dtype(dtype)
        if dtype not in (np.float32, np.float64):
            raise ValueError(f"FFT dtype must be float32 or float64, got {dtype}")
        self.n = n
        self.threads = default_threads(threads)
        self.dtype = dtype
        self.complex_dtype = np.complex64 if dtype == np.float32 else np.complex128
        self.real_shape = (n, n, n)
        self.complex_shape = (n, n, n // 2 + 1)
        self.real = empty_aligned(self.real_shape, dtype)
        self.modes = empty_aligned(self.complex_shape, self.complex_dtype)
        if HAVE_PYFFTW:
            self._fwd = fftw_plan(self.real, self.modes, "FFTW_FORWARD", self.threads)
            self._bwd = fftw_plan(self.modes, self.real, "FFTW_BACKWARD", self.threads)

    def r2c(self):
        """modes = Σ_x real(x) e^{−ik·x} (unnormalised), in place of the owned buffers."""
        if HAVE_PYFFTW:
            self._fwd.execute()
        else:
            self.modes[...] = np.fft.rfftn(self.real)

    def c2r(self):
        """real = Σ_k modes(k) e^{ik·x} (unnormalised: N³ × the inverse transform)."""
        if HAVE_PYFFTW:
            self._bwd.execute()
        else:
            self.real[...] = np.fft.irfftn(self.modes, s=self.real_shape, axes=(0, 1, 2))
            self.real *= self.n**3

    def forward(self, field, out=None):
        """r2c transform of a real (N,N,N) field; returns (N,N,N/2+1) modes."""
        self.real[...] = field
        self.r2c()
        if out is None:
            return self.modes.copy()
        out[...] = self.modes
        return out

    def backward(self, modes, out=None):
        """c2r transform (normalised by 1/N³); returns a real (N,N,N) field."""
        self.modes[...] = modes
        self.c2r()
        norm = self.dtype.type(1.0 / self.n**3)
        if out is None:
            return self.real * norm
        np.multiply(self.real, norm, out=out)
        return out


def wavenumbers(n: int, box_size: float, dtype=np.float64):
    """Fundamental-unit wavevector components (kx, ky, kz) [h/Mpc], broadcastable to rfft shape."""
    kf = 2 * np.pi / box_size
    k = (np.fft.fftfreq(n, 1.0 / n) * kf).astype(dtype)
    kz = (np.arange(n // 2 + 1) * kf).astype(dtype)
    return k[:, None, None], k[None, :, None], kz[None, None, :]
