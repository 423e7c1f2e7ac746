"""Driver side: the Dask farm and the loop that watches files, not workers.

The driver submits one task per unfinished simulation and then only looks at the campaign
directory (which result and failure files exist, which start markers are too old) and at the
scheduler's view of the futures and workers. It never fetches a result from a worker, so a
worker hung in a C loop that holds the GIL cannot stall it:

* a simulation running past ``timeout`` is recorded as ``timeout`` and its worker process is
  killed (SIGKILL by pid when it runs on this host, else restarted through its nanny); the
  nanny starts a fresh worker;
* a task that ended without leaving a file (its worker died ``allowed-failures`` times, or it
  could not write) is recorded as ``crashed``, which a plain resume retries;
* when no worker is left for ``no_worker_grace`` seconds the driver restarts a cluster it owns
  and resubmits what is unfinished, or fails with a clear message for a cluster it joined.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
import uuid
from dataclasses import dataclass

import dask

from cocasbi.campaign.config import ExecutionConfig
from cocasbi.campaign.tasks import WorkerSetup, run_task
from cocasbi.io.campaign_store import CampaignStore, Plan
from cocasbi.threads import worker_environment

log = logging.getLogger(__name__)

#: Seconds without any worker before the driver restarts its cluster (or gives up on a
#: cluster it joined).
NO_WORKER_GRACE = 60.0


class CampaignRunError(ValueError):
    """A campaign run that cannot go on (no workers, directory not writable, ...); a
    ValueError so the CLI reports it as one line."""


@dataclass(frozen=True)
class WorkerLayout:
    """``workers`` processes, each running one simulation at a time with ``threads`` threads."""

    workers: int
    threads: int


def choose_layout(cores: int, memory: float, per_worker: float, workers: int = 0,
                  threads: int = 0) -> WorkerLayout:
    """Workers × threads for ``cores`` cores and ``memory`` [bytes] free.

    Defaults to one thread per simulation and as many workers as cores (independent
    simulations scale better than threads inside one), at most as many as 80 % of the memory
    holds. Given one of the two, the other fills the cores; given both, they are used as is.
    """
    fit = max(1, int(0.8 * memory // per_worker))
    if threads == 0:
        threads = 1 if workers == 0 else max(1, cores // workers)
    if workers == 0:
        workers = max(1, min(cores // threads, fit))
    if workers * threads > cores:
        log.warning("%d workers × %d threads oversubscribe %d cores", workers, threads, cores)
    return WorkerLayout(workers, threads)


def cluster_settings(threads: int, dashboard: bool) -> dict:
    """Dask configuration for a campaign's LocalCluster.

    The worker environment (:func:`cocasbi.threads.worker_environment`: BLAS / OpenMP pools,
    wait policy; never NUMBA_NUM_THREADS, which numba refuses to change once its pool runs)
    is applied by each nanny *before* it spawns its worker. ``MALLOC_TRIM_THRESHOLD_`` is left
    unset: Dask's default disables glibc's adaptive mmap threshold and makes a paper-size
    simulation 1.5-1.9 times slower. Without a dashboard the HTTP routes of the scheduler and
    workers are emptied (Dask opens their ports regardless; they stay on 127.0.0.1).
    """
    settings = {f"distributed.nanny.pre-spawn-environ.{key}": value
                for key, value in worker_environment(threads).items()}
    settings["distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_"] = None
    if not dashboard:
        settings["distributed.scheduler.http.routes"] = []
        settings["distributed.worker.http.routes"] = []
    return settings


def local_cluster(layout: WorkerLayout, dashboard_address: str | None = None):
    """A LocalCluster on 127.0.0.1 of ``layout.workers`` single-threaded worker processes
    whose thread pools are capped at ``layout.threads`` (:func:`cluster_settings`); the
    dashboard is off unless an address is given."""
    from distributed import LocalCluster

    with dask.config.set(cluster_settings(layout.threads, dashboard_address is not None)):
        return LocalCluster(n_workers=layout.workers, threads_per_worker=1, processes=True,
                            host="127.0.0.1", dashboard_address=dashboard_address,
                            worker_dashboard_address=None, silence_logs=logging.ERROR)


class Farm:
    """The Dask client a run submits to: a given client, an existing scheduler, a
    dask-jobqueue cluster, or a LocalCluster it owns (and may restart)."""

    def __init__(self, execution: ExecutionConfig, layout: WorkerLayout, client=None):
        self.execution, self.layout = execution, layout
        self.client, self.cluster = client, None
        self.owned = False
        self._given = client is not None

    def __enter__(self) -> Farm:
        if not self._given:
            self._open()
        self.client.register_plugin(WorkerSetup(self.layout.threads),
                                    name=WorkerSetup.name)
        return self

    def _open(self) -> None:
        from distributed import Client

        ex = self.execution
        if ex.scheduler:
            kwargs = ({"scheduler_file": ex.scheduler} if ex.scheduler.endswith(".json")
                      else {"address": ex.scheduler})
            self.client = Client(timeout=60, **kwargs)
            return
        if ex.jobqueue:
            try:
                import dask_jobqueue
            except ImportError as err:
                raise ImportError(
                    "jobqueue execution needs `pip install cocasbi[cluster]`") from err
            jq = ex.jobqueue
            cls = getattr(dask_jobqueue, {"slurm": "SLURMCluster", "pbs": "PBSCluster",
                                          "sge": "SGECluster", "lsf": "LSFCluster",
                                          "htcondor": "HTCondorCluster"}[jq.system])
            self.cluster = cls(**jq.options)
            self.cluster.scale(jobs=jq.jobs)
            self.client = Client(self.cluster)
            return
        self.cluster = local_cluster(self.layout, ex.dashboard_address)
        self.client = Client(self.cluster)
        self.owned = True

    def restart(self) -> None:
        """Replace an owned LocalCluster by a fresh one."""
        self._close()
        self._open()
        self.client.register_plugin(WorkerSetup(self.layout.threads), name=WorkerSetup.name)

    def n_workers(self) -> int:
        try:
            return len(self.client.scheduler_info(n_workers=-1)["workers"])
        except TypeError:  # older distributed: no n_workers argument
            return len(self.client.scheduler_info()["workers"])

    def kill_worker(self, marker: dict) -> None:
        """Stop the worker process a start marker names: SIGKILL by pid on this host (its
        nanny starts a new one), else a restart through the scheduler (in a thread)."""
        pid, host, worker = marker.get("pid"), marker.get("host"), marker.get("worker", "")
        if pid and host == socket.gethostname() and pid != os.getpid():
            try:
                os.kill(int(pid), signal.SIGKILL)
            except ProcessLookupError:
                pass
            return
        if worker and not worker.startswith(("inproc://", "local")):
            threading.Thread(target=self._restart_worker, args=(worker,), daemon=True).start()

    def _restart_worker(self, worker: str) -> None:
        try:
            self.client.restart_workers([worker], timeout=60, raise_for_error=True)
        except Exception as err:
            log.warning("could not restart worker %s (%s)", worker, err)

    def _close(self) -> None:
        if self._given:
            return
        for obj in (self.client, self.cluster):
            if obj is not None:
                try:
                    obj.close()
                except Exception as err:  # a cluster with killed workers may complain
                    log.debug("closing %s: %s", obj, err)
        self.client = self.cluster = None

    def __exit__(self, *exc) -> None:
        if self._given:
            try:
                self.client.unregister_worker_plugin(WorkerSetup.name)
            except Exception as err:
                log.debug("unregistering the worker plugin: %s", err)
        self._close()


def execute(farm: Farm, store: CampaignStore, plan: Plan, producer, todo: list[int],
            threads: int, timeout: float | None, bar, poll: float = 0.05,
            no_worker_grace: float | None = None) -> None:
    """Run the simulations ``todo`` on ``farm`` until each has a result or failure file."""
    no_worker_grace = NO_WORKER_GRACE if no_worker_grace is None else no_worker_grace
    token = uuid.uuid4().hex[:8]
    directory = str(store.directory)

    def submit(indices):
        return {farm.client.submit(run_task, producer, directory, plan.task(i), threads,
                                   key=f"cocasbi-sim-{i:06d}-{token}-{attempt}", pure=False): i
                for i in indices}

    attempt = 0
    in_flight = submit(todo)
    first_seen: dict[tuple[int, str], float] = {}
    failed = 0
    no_workers_since, last_check = None, 0.0
    try:
        while in_flight:
            progressed = False
            settled = store.settled()
            for fut, index in list(in_flight.items()):
                if index in settled:
                    del in_flight[fut]
                    failed += not store.result_path(index).exists()
                    bar.update()
                    progressed = True
                elif fut.status in ("error", "cancelled", "finished"):
                    if store.result_path(index).exists() or store.failure_path(index).exists():
                        continue  # written just now: counted on the next pass
                    _record_crash(store, fut, index)
                    del in_flight[fut]
                    failed += 1
                    bar.update()
                    progressed = True
            now = time.monotonic()
            for index in _expired(store, in_flight.values(), first_seen, timeout, now):
                marker = store.read_marker(index) or {}
                worker = marker.get("worker", "unknown")
                store.write_failure({
                    "index": index, "kind": "timeout", "worker": worker, "traceback": "",
                    "error": f"no result after {timeout:g} s on worker {worker}; worker killed",
                    "wall_time": now - first_seen[(index, marker.get("attempt", ""))],
                    "host": marker.get("host"), "pid": marker.get("pid")})
                store.clear_marker(index)
                farm.kill_worker(marker)
                fut = next(f for f, i in in_flight.items() if i == index)
                del in_flight[fut]
                fut.cancel()
                failed += 1
                bar.update()
                progressed = True
            if in_flight and now - last_check > 1.0:
                last_check = now
                if farm.n_workers() > 0:
                    no_workers_since = None
                elif no_workers_since is None:
                    no_workers_since = now
                elif now - no_workers_since > no_worker_grace:
                    if not farm.owned:
                        raise CampaignRunError(
                            f"no Dask worker left for {no_worker_grace:g} s with "
                            f"{len(in_flight)} simulations unfinished; start workers and run "
                            "again to resume")
                    log.warning("no worker left for %g s: restarting the cluster",
                                no_worker_grace)
                    remaining = sorted(set(in_flight.values()) - store.settled())
                    in_flight.clear()
                    farm.restart()
                    attempt += 1
                    in_flight = submit(remaining)
                    no_workers_since = None
            bar.set_postfix(failed=failed, refresh=False)
            if not progressed:
                time.sleep(poll)
    finally:
        if in_flight and farm.client is not None:
            try:
                farm.client.cancel(list(in_flight))
            except Exception as err:
                log.debug("cancelling: %s", err)


def _expired(store: CampaignStore, in_flight, first_seen: dict, timeout: float | None,
             now: float) -> list[int]:
    """Indices among ``in_flight`` whose current attempt (start marker) has run longer than
    ``timeout`` by the driver's clock."""
    if timeout is None:
        return []
    out = []
    running = set(store.running()) & set(in_flight)
    for index in running:
        marker = store.read_marker(index)
        if marker is None:
            continue
        started = first_seen.setdefault((index, marker.get("attempt", "")), now)
        if now - started > timeout:
            out.append(index)
    return out


def _record_crash(store: CampaignStore, fut, index: int) -> None:
    """A task that ended without a result or failure file: record ``crashed`` (the error
    comes from the scheduler, never from a worker)."""
    reason = f"task {fut.status}"
    if fut.status == "error":
        try:
            err = fut.exception(timeout=5)
            reason = f"{type(err).__name__}: {err}"
        except Exception as exc:
            reason = f"task failed ({type(exc).__name__})"
    try:
        store.write_failure({"index": index, "kind": "crashed", "traceback": "",
                             "error": reason})
    except OSError as err:
        raise CampaignRunError(f"cannot write to campaign directory {store.directory}: "
                               f"{err.strerror or err} (simulation {index}: {reason})") from None
