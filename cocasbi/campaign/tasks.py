"""Worker side of a campaign: process setup and one task (run, check, store).

A task never returns arrays: it writes its result or failure file, and the driver reads the
files. That way the driver never needs an answer from a worker, which a hung simulation
holding the GIL could not give.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import socket
import sys
import threading
import time
import traceback
import uuid

from cocasbi.campaign.producers import as_producer, split_output
from cocasbi.io.campaign_store import CampaignStore, Task
from cocasbi.threads import configure_process, numba_threads

try:
    from distributed.diagnostics.plugin import WorkerPlugin
except ImportError:  # the campaign layer is importable without Dask; running needs it
    WorkerPlugin = object

_PR_SET_PDEATHSIG = 1
_configured: dict[str, int] = {}


def die_with_parent() -> bool:
    """Make this spawned worker process die when its parent does (also on SIGKILL).

    Linux: ``prctl(PR_SET_PDEATHSIG, SIGKILL)``, which the kernel enforces even while the
    process holds the GIL in a C loop. Elsewhere a daemon thread checks the parent pid every
    second (it cannot run while the GIL is held). Only for a process started by
    ``multiprocessing`` (a Dask nanny's worker), never for the driver itself. Returns whether
    the process is now tied to its parent.
    """
    parent = multiprocessing.parent_process()
    if parent is None:
        return False
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent.pid:  # the parent died before the call above
        os._exit(1)

    def watch(ppid=parent.pid):
        while True:
            time.sleep(1.0)
            if os.getppid() != ppid:
                os._exit(1)

    threading.Thread(target=watch, name="cocasbi-parent-watch", daemon=True).start()
    return True


def setup_process(threads: int, in_process: bool = False) -> None:
    """Once per worker process: :func:`cocasbi.threads.configure_process` and
    :func:`die_with_parent` (both skipped for an in-process worker, which is the caller's own
    process)."""
    if _configured.get("threads") == threads or in_process:
        return
    configure_process(threads)
    die_with_parent()
    _configured["threads"] = threads


class WorkerSetup(WorkerPlugin):
    """Dask worker plugin running :func:`setup_process` on every worker, restarted ones
    included (``client.register_plugin``)."""

    name = "cocasbi-campaign-setup"

    def __init__(self, threads: int):
        self.threads = threads

    def setup(self, worker):
        setup_process(self.threads, in_process=str(worker.address).startswith("inproc://"))

    def teardown(self, worker):
        pass


def _worker_name() -> str:
    try:
        from distributed import get_worker

        return get_worker().address
    except (ImportError, ValueError):
        return "local"


def run_task(producer, directory: str, task: Task, threads: int) -> tuple[int, str]:
    """Run one planned simulation and store its result or failure; returns (index, status).

    Idempotent: a simulation with a result or failure file returns at once, so a task that
    Dask re-runs after its worker was lost or killed costs nothing. When the result cannot be
    stored (disk full, read-only directory) a ``crashed`` record is written if possible (a
    plain resume retries those); if not even that works, the OSError propagates.
    """
    producer = as_producer(producer)
    store = CampaignStore(directory)
    if store.result_path(task.index).exists():
        return task.index, "ok"
    if store.failure_path(task.index).exists():
        return task.index, "failed"
    worker = _worker_name()
    setup_process(threads, in_process=worker.startswith(("inproc://", "local")))
    info = {"worker": worker, "host": socket.gethostname(), "pid": os.getpid(),
            "attempt": uuid.uuid4().hex[:12]}
    store.mark_running(task.index, info)
    info["started"] = time.time()
    t0 = time.perf_counter()
    arrays, attributes, trace = {}, {}, ""
    try:
        with numba_threads(threads):
            output = producer(task.theta, task.seed_sequence())
        arrays, attributes, kind, error = split_output(producer, output)
    except Exception as err:
        kind, error, trace = "error", f"{type(err).__name__}: {err}", traceback.format_exc()
    info.update(wall_time=time.perf_counter() - t0, finished=time.time())
    try:
        if kind is None:
            store.write_result(task, arrays, kind=producer.kind,
                               names=getattr(producer, "names", None),
                               k=getattr(producer, "k", None), info=info, attributes=attributes)
        else:
            store.write_failure({"index": task.index, "kind": kind, "error": error,
                                 "traceback": trace, "theta": task.theta, "seed": task.seed,
                                 **info})
    except ValueError as err:  # a producer's attribute the store refuses
        store.write_failure({"index": task.index, "kind": "error", "traceback": "",
                             "error": f"cannot store the result: {err}", "theta": task.theta,
                             "seed": task.seed, **info})
        kind = "error"
    except OSError as err:
        store.write_failure({"index": task.index, "kind": "crashed", "traceback": "",
                             "error": f"cannot store the result: {err}", "theta": task.theta,
                             "seed": task.seed, **info})
        kind = "crashed"
    finally:
        try:
            store.clear_marker(task.index)
        except OSError:
            pass
    return task.index, kind or "ok"
