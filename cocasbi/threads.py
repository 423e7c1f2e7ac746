"""Explicit process state: thread counts, the OpenMP wait policy, malloc's reuse of freed
memory and numpy's huge-page advice, set only when asked.

No cocasbi module changes the process at import. Entry points call :func:`configure_process`
once (the ``cocasbi`` CLI does, and so does every campaign worker before its first simulation);
library users may call it too, first thing. A simulation sets numba's thread count only for its
own calling thread and restores it afterwards (:func:`numba_threads`), so two simulations may
run side by side in one process.

Why the wait policy: numba (omp threading layer) and pyFFTW each run their own GNU OpenMP pool;
by default their idle threads spin for ~300k iterations (several ms) after every parallel
region, stealing the cores the other pool needs next (paint → r2c → Green → c2r → stencil →
readout alternate). A short spin (``GOMP_SPINCOUNT=10000``) keeps the pools responsive inside a
transform but yields the cores soon after. It must be in the environment before libgomp loads
(before pyFFTW or numba's parallel code are imported or spawned); an explicit
``OMP_WAIT_POLICY`` or ``GOMP_SPINCOUNT`` from the user wins.
"""

from __future__ import annotations

import ctypes
import os
import sys
from contextlib import contextmanager

SPIN_COUNT = "10000"
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # glibc mallopt parameters (malloc.h)
_KEEP_FREED_BYTES = 2**31 - 1  # the largest trim threshold mallopt accepts (an int)
_POOLS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def default_threads(threads: int = 0) -> int:
    """Thread count: the given one, or every core this process may use when 0."""
    if threads > 0:
        return threads
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def wait_policy_environment(environ=None) -> dict[str, str]:
    """The OpenMP wait-policy variables to add to ``environ`` (default ``os.environ``)."""
    environ = os.environ if environ is None else environ
    if "OMP_WAIT_POLICY" in environ or "GOMP_SPINCOUNT" in environ:
        return {}
    return {"GOMP_SPINCOUNT": SPIN_COUNT}


def worker_environment(threads: int) -> dict[str, str]:
    """Environment for a worker *process about to be spawned*: caps the BLAS / OpenMP pools
    at ``threads`` and sets the wait policy. NUMBA_NUM_THREADS is deliberately absent: numba
    refuses a change of it once its pool runs; :func:`configure_process` in the worker sets
    numba's count instead."""
    env = {name: str(threads) for name in _POOLS}
    env.update(wait_policy_environment())
    return env


def keep_freed_memory() -> bool:
    """Let glibc's malloc keep freed memory for reuse instead of returning it to the kernel.

    A simulation allocates and frees arrays of N × 3 float64 (50 MB at 128³) that glibc serves
    with mmap and gives back with munmap, so the next simulation in the process pays for fresh,
    zeroed pages again. With mmap off and a 2 GB trim threshold the heap keeps them: on this
    project's 2-core VM the 10-step COLA run at 128³/128³ took 1.35–1.69 s per run instead of
    alternating between 1.8 and 3.4 s (docs/performance.md). The process then keeps its peak
    heap (up to 2 GB above the live data), which is what a simulation worker wants. Returns
    whether it took effect (glibc only; elsewhere nothing changes).
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    mallopt = getattr(libc, "mallopt", None)
    if mallopt is None:
        return False
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, _KEEP_FREED_BYTES))


def skip_huge_page_advice() -> bool:
    """Stop numpy from advising transparent huge pages for its large new arrays.

    On Linux numpy calls madvise(MADV_HUGEPAGE) on every array of 4 MB or more. Where the
    kernel then compacts memory to find a free 2 MB page at the first touch (THP ``defrag`` set
    to ``madvise``, as on this project's VMs), the first simulation of a process stalls: a
    first 10-step 128³ COLA run took 3.1–3.9 s with the advice and 1.0–1.1 s without, while
    later runs, which reuse the heap, took 0.82–0.83 s either way (docs/performance.md,
    ``experiments/bench_first_run.py``). An explicit
    ``NUMPY_MADVISE_HUGEPAGE`` in the environment wins. Returns whether the advice is now off.
    """
    if "NUMPY_MADVISE_HUGEPAGE" in os.environ:
        return os.environ["NUMPY_MADVISE_HUGEPAGE"] == "0"
    numpy = sys.modules.get("numpy")
    if numpy is None:  # read when numpy loads
        os.environ["NUMPY_MADVISE_HUGEPAGE"] = "0"
        return True
    core = getattr(numpy, "_core", None) or getattr(numpy, "core", None)
    setter = getattr(getattr(core, "multiarray", None), "_set_madvise_hugepage", None)
    if setter is None:  # a numpy without the switch (before 1.20)
        return False
    setter(False)
    return True


def configure_process(threads: int = 0) -> int:
    """Configure this process for simulations with ``threads`` threads (0 = all cores).

    Sets the OpenMP wait policy (effective only if libgomp is not loaded yet), numba's thread
    count for the calling thread (capped at NUMBA_NUM_THREADS), torch's intra-op pool if torch
    is loaded, lets malloc keep freed memory for the next simulation
    (:func:`keep_freed_memory`) and turns numpy's huge-page advice off
    (:func:`skip_huge_page_advice`). Imports neither numba nor torch: a library loaded later
    starts with its own default (all cores), and each simulation sets numba's count for its run
    (:func:`numba_threads`). Returns the thread count used.
    """
    keep_freed_memory()
    skip_huge_page_advice()
    for key, value in wait_policy_environment().items():
        os.environ.setdefault(key, value)
    threads = default_threads(threads)
    if "numba" in sys.modules:
        numba = sys.modules["numba"]
        numba.set_num_threads(max(1, min(threads, numba.config.NUMBA_NUM_THREADS)))
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(threads)
    return threads


@contextmanager
def numba_threads(threads: int = 0):
    """Run the block with numba's thread count (of this thread only) set to ``threads``
    (0 = all cores, capped at NUMBA_NUM_THREADS); the previous count is restored."""
    import numba

    previous = numba.get_num_threads()
    numba.set_num_threads(max(1, min(default_threads(threads), numba.config.NUMBA_NUM_THREADS)))
    try:
        yield
    finally:
        numba.set_num_threads(previous)
