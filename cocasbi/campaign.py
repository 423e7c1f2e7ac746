"""Simulation campaigns: plan θ and seeds, run them on Dask, store each result, merge.

A campaign is a YAML file (``configs/campaign_tiny.yaml``) and a directory
(:mod:`cocasbi.io.campaign_store`). The steps:

* **plan**: draw n θ from the prior box (Latin hypercube or uniform) with a Generator seeded by
  ``SeedSequence(master_seed)``, and give simulation i the initial-phase stream
  ``SeedSequence(master_seed, spawn_key=(i,))``, so a result never depends on worker count,
  order or resumption.
* **run**: submit every unfinished simulation to Dask (a LocalCluster sized for the machine, an
  existing scheduler, or dask-jobqueue). Each task writes one result file atomically and
  returns its index and status, never arrays. Re-running skips what is done: that is resume.
* **failures**: a simulation that raises, returns non-finite or ill-shaped x, or runs past the
  timeout is recorded in ``failures/`` with its error and never retried unless asked
  (``retry_failed``); the rest of the campaign completes. Hung simulations are detected by the
  driver from the worker's start marker and their worker process is restarted by its nanny.
* **merge**: one writer gathers everything into ``campaign.h5``.

Threads: a worker process runs one simulation at a time (the FFT plans of a process share
buffers, so a lock enforces this even on multi-threaded workers) with ``threads`` FFT / numba /
torch / BLAS threads. The default is one thread per simulation and one worker per core (capped
by memory), which keeps every core busy with no oversubscription: see docs/campaigns.md.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import sys
import threading
import time
import traceback
import uuid
from collections import Counter
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import dask
import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from tqdm.auto import tqdm

from cocasbi import __version__
from cocasbi.config import Config, ConfigError, resolve_config_path
from cocasbi.forward import ForwardModel, ForwardSpec
from cocasbi.io.campaign_store import CampaignStore, CampaignStoreError, Plan, Task
from cocasbi.threads import default_threads

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------- configuration
class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class JobqueueConfig(_Frozen):
    """A dask-jobqueue cluster (``pip install cocasbi[cluster]``)."""

    system: Literal["slurm", "pbs", "sge", "lsf", "htcondor"]
    jobs: int = Field(1, ge=1, description="batch jobs to start")
    options: dict = Field(default_factory=dict,
                          description="keyword arguments of e.g. SLURMCluster (cores, memory, ...)")


class ExecutionConfig(_Frozen):
    """Where and how simulations run; may change between runs of the same plan."""

    scheduler: str | None = Field(
        None, description="address of a running Dask scheduler, or a scheduler JSON file")
    workers: int = Field(0, ge=0, description="LocalCluster worker processes; 0 = auto")
    threads_per_worker: int = Field(0, ge=0, description="threads per simulation; 0 = auto")
    timeout: float | None = Field(600.0, gt=0, description="per-simulation limit [s]")
    dashboard_address: str | None = Field(None, description="e.g. ':8787'; None = off")
    jobqueue: JobqueueConfig | None = None


class CampaignConfig(_Frozen):
    """A campaign: forward model, prior box, design, size, master seed, execution."""

    name: str = "campaign"
    directory: Path = Path("output/campaign")
    n_simulations: int = Field(..., ge=1)
    master_seed: int = Field(..., ge=0)
    design: Literal["latin_hypercube", "uniform"] = "latin_hypercube"
    prior: dict[str, tuple[float, float]] = Field(
        ..., description="parameter → (low, high), a uniform box over forward.parameters")
    forward: ForwardSpec = ForwardSpec()
    execution: ExecutionConfig = ExecutionConfig()

    @model_validator(mode="after")
    def _prior_matches_parameters(self):
        if set(self.prior) != set(self.forward.parameters):
            raise ValueError(f"prior names {sorted(self.prior)} must be the forward "
                             f"parameters {list(self.forward.parameters)}")
        for name, (low, high) in self.prior.items():
            if not low < high:
                raise ValueError(f"prior {name}: low={low} must be below high={high}")
        return self

    def resolved(self) -> CampaignConfig:
        """A copy with the simulation config inlined, so the campaign is self-contained."""
        spec = self.forward.model_copy(
            update={"config": self.forward.simulation_config().model_dump(mode="json")})
        return self.model_copy(update={"forward": spec})

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def load_campaign_config(path: str | Path) -> CampaignConfig:
    """Load a campaign YAML file, or a built-in one by name (``campaign_tiny``).

    A relative ``forward.config`` path is taken relative to the campaign file.
    """
    path = resolve_config_path(path, "campaign configuration")
    try:
        data = yaml.safe_load(path.read_text()) or {}
        forward = data.get("forward") or {}
        sim = forward.get("config")
        if isinstance(sim, str) and Path(sim).suffix and not Path(sim).is_absolute():
            data["forward"] = {**forward, "config": str(path.parent / sim)}
        return CampaignConfig.model_validate(data)
    except (yaml.YAMLError, ValidationError, AttributeError) as err:
        raise ConfigError(f"invalid campaign configuration {path}:\n{err}") from None


# ---------------------------------------------------------------------------- planning
def latin_hypercube(n: int, d: int, rng: np.random.Generator) -> np.ndarray:
    """(n, d) points in [0, 1)^d with exactly one point in each of n slices of every axis."""
    strata = np.stack([rng.permutation(n) for _ in range(d)], axis=1)
    return (strata + rng.random((n, d))) / n


def make_plan(cfg: CampaignConfig, theta: np.ndarray | None = None) -> Plan:
    """Plan every simulation of ``cfg``: θ from its design (or the given (n, d) array) and
    seed spawn keys 0..n−1. Deterministic in the configuration."""
    cfg = cfg.resolved()
    names = cfg.forward.parameters
    lower = np.array([cfg.prior[p][0] for p in names], dtype=np.float64)
    upper = np.array([cfg.prior[p][1] for p in names], dtype=np.float64)
    n, d = cfg.n_simulations, len(names)
    design = cfg.design
    if theta is None:
        rng = np.random.default_rng(np.random.SeedSequence(cfg.master_seed))
        unit = latin_hypercube(n, d, rng) if design == "latin_hypercube" else rng.random((n, d))
        theta = lower + (upper - lower) * unit
    else:
        theta, design = np.array(theta, dtype=np.float64), "given"
        if theta.shape != (n, d):
            raise ValueError(f"θ design has shape {theta.shape}, expected {(n, d)}")
    seeds = np.arange(n, dtype=np.int64)
    planning = cfg.model_dump(mode="json", exclude={"execution", "directory", "name"})
    digest = hashlib.sha256(json.dumps(planning, sort_keys=True).encode())
    digest.update(design.encode() + theta.tobytes() + seeds.tobytes())
    return Plan(parameters=tuple(names), theta=theta, seeds=seeds, master_seed=cfg.master_seed,
                lower=lower, upper=upper, design=design, config_yaml=cfg.to_yaml(),
                plan_id=digest.hexdigest()[:16])


def plan_campaign(cfg: CampaignConfig, directory: str | Path | None = None,
                  force: bool = False, theta: np.ndarray | None = None) -> CampaignStore:
    """Write the plan of ``cfg`` into its directory (or ``directory``).

    An identical existing plan is kept (so planning twice is harmless); a different one is an
    error unless ``force`` (its results then fail the plan-id check and are set aside).
    """
    store = CampaignStore(directory or cfg.directory)
    plan = make_plan(cfg, theta)
    if store.plan_path.exists():
        old = store.read_plan()
        if old.plan_id == plan.plan_id:
            return store
        if not force:
            raise CampaignStoreError(
                f"{store.directory} holds a different plan ({old.plan_id}, not {plan.plan_id}); "
                "use another directory or --force")
    store.write_plan(plan)
    return store


def stored_config(store: CampaignStore) -> CampaignConfig:
    """The resolved campaign configuration saved next to the plan."""
    plan = store.read_plan()
    return CampaignConfig.model_validate(yaml.safe_load(plan.config_yaml))


# ---------------------------------------------------------------------------- threads
@dataclass(frozen=True)
class WorkerLayout:
    """``workers`` processes, each running one simulation at a time with ``threads`` threads."""

    workers: int
    threads: int


def simulation_memory(config: Config) -> int:
    """Rough peak memory of one worker running ``config`` [bytes]: ~300 MB of interpreter and
    libraries, ~350 B per particle and ~40 B per mesh cell (measured: 170 MB above the
    interpreter for 64³ particles on a 128³ mesh)."""
    sim = config.simulation
    return int(300e6 + 350 * sim.n_particles**3 + 40 * sim.n_mesh**3)


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


def thread_environment(threads: int) -> dict[str, str]:
    """Environment that caps every thread pool of a worker process at ``threads``."""
    return {name: str(threads) for name in (
        "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS")}


def limit_threads(threads: int, torch: bool = True) -> None:
    """Cap numba threads (of the calling thread) and, if loaded and ``torch``, torch's
    process-wide pool; FFT threads come from the forward model's config."""
    import numba

    numba.set_num_threads(max(1, min(threads, numba.config.NUMBA_NUM_THREADS)))
    if torch and "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(threads)


# ---------------------------------------------------------------------------- worker side
_SIMULATION_LOCK = threading.Lock()


def _worker_name() -> str:
    try:
        from distributed import get_worker

        return get_worker().address
    except (ImportError, ValueError):
        return "local"


def run_task(simulator, directory: str, task: Task, threads: int) -> tuple[int, str, str]:
    """Run one planned simulation and store its result or failure.

    Returns (index, status, path of the result or failure file). Idempotent: a simulation with
    a result or failure file returns at once, so a task that Dask re-runs after a worker was
    lost costs nothing.
    """
    store = CampaignStore(directory)
    result, failure = store.result_path(task.index), store.failure_path(task.index)
    if result.exists():
        return task.index, "ok", str(result)
    if failure.exists():
        return task.index, "failed", str(failure)
    worker = _worker_name()
    info = {"worker": worker, "host": socket.gethostname(), "pid": os.getpid()}
    with _SIMULATION_LOCK:
        # an in-process worker shares the caller's process: leave its torch pool alone
        limit_threads(threads, torch=not worker.startswith(("inproc://", "local")))
        store.mark_running(task.index, info)
        info["started"] = time.time()
        t0 = time.perf_counter()
        try:
            x = np.asarray(simulator(task.theta, task.seed_sequence()), dtype=np.float32)
            names = list(simulator.names)
            kind, error, trace = None, "", ""
            if x.shape != (len(names),):
                kind, error = "error", f"x has shape {x.shape}, expected ({len(names)},)"
            elif not np.isfinite(x).all():
                bad = [names[i] for i in np.flatnonzero(~np.isfinite(x))]
                kind, error = "nonfinite", f"non-finite summaries: {', '.join(bad)}"
        except Exception as err:
            kind, error, trace = "error", f"{type(err).__name__}: {err}", traceback.format_exc()
        info.update(wall_time=time.perf_counter() - t0, finished=time.time())
        if kind is None:
            path = store.write_result(task, x, names, getattr(simulator, "k", None), info)
        else:
            path = store.write_failure({"index": task.index, "kind": kind, "error": error,
                                        "traceback": trace, "theta": task.theta,
                                        "seed": task.seed, **info})
        store.clear_marker(task.index)
    return task.index, kind or "ok", str(path)


def _identity(obj):
    return obj


# ---------------------------------------------------------------------------- driver side
@dataclass
class RunReport:
    """What a run did: counts by status, wall time [s], layout and merged file."""

    planned: int
    counts: dict[str, int]
    ran: int
    wall_time: float
    layout: WorkerLayout
    merged: Path | None


@contextmanager
def open_client(execution: ExecutionConfig, layout: WorkerLayout):
    """A Dask client for ``execution``: an existing scheduler, a dask-jobqueue cluster or a
    LocalCluster of ``layout.workers`` single-threaded processes with capped thread pools."""
    from distributed import Client

    if execution.scheduler:
        sched = execution.scheduler
        kwargs = {"scheduler_file": sched} if sched.endswith(".json") else {"address": sched}
        with Client(**kwargs) as client:
            yield client
        return
    if execution.jobqueue:
        try:
            import dask_jobqueue
        except ImportError as err:
            raise ImportError("jobqueue execution needs `pip install cocasbi[cluster]`") from err
        jq = execution.jobqueue
        cls = getattr(dask_jobqueue, {"slurm": "SLURMCluster", "pbs": "PBSCluster",
                                      "sge": "SGECluster", "lsf": "LSFCluster",
                                      "htcondor": "HTCondorCluster"}[jq.system])
        with cls(**jq.options) as cluster, Client(cluster) as client:
            cluster.scale(jobs=jq.jobs)
            yield client
        return
    with local_cluster(layout, execution.dashboard_address) as cluster, Client(cluster) as client:
        yield client


def local_cluster(layout: WorkerLayout, dashboard_address: str | None = None):
    """A LocalCluster of ``layout.workers`` single-threaded worker processes whose thread
    pools are capped at ``layout.threads``.

    Dask sets ``MALLOC_TRIM_THRESHOLD_`` in its workers by default, which disables glibc's
    adaptive mmap threshold: every large numpy temporary is then mmap'ed and page-faulted
    afresh, and a paper-size simulation runs 1.5-1.9 times slower. It is left unset here.
    """
    from distributed import LocalCluster

    with dask.config.set({"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}):
        return LocalCluster(n_workers=layout.workers, threads_per_worker=1, processes=True,
                            dashboard_address=dashboard_address,
                            env=thread_environment(layout.threads), silence_logs=logging.ERROR)


class _Watchdog:
    """Finds simulations running past the timeout from their start markers, records them as
    failed and has the worker's nanny restart the process (in a thread: it takes seconds)."""

    def __init__(self, client, store: CampaignStore, timeout: float | None):
        self.client, self.store, self.timeout = client, store, timeout
        self.first_seen: dict[int, float] = {}
        self.restarts: list[threading.Thread] = []

    def expired(self, in_flight) -> list[int]:
        """Indices among ``in_flight`` whose run time exceeds the timeout; records them."""
        if self.timeout is None:
            return []
        now = time.monotonic()
        out = []
        for index in set(self.store.running()) & set(in_flight):
            if now - self.first_seen.setdefault(index, now) <= self.timeout:
                continue
            marker = self.store.read_marker(index) or {}
            worker = marker.get("worker", "unknown")
            self.store.write_failure({
                "index": index, "kind": "timeout", "worker": worker, "traceback": "",
                "error": f"no result after {self.timeout:g} s on worker {worker}; "
                         "worker restarted", "wall_time": now - self.first_seen[index],
                "host": marker.get("host"), "pid": marker.get("pid")})
            self.store.clear_marker(index)
            if worker not in ("unknown", "local"):
                t = threading.Thread(target=self._restart, args=(worker,), daemon=True)
                t.start()
                self.restarts.append(t)
            out.append(index)
        return out

    def _restart(self, worker: str) -> None:
        try:
            self.client.restart_workers([worker], timeout=60, raise_for_error=True)
        except Exception as err:
            log.warning("could not restart worker %s (%s): its hung simulation keeps running",
                        worker, err)

    def join(self) -> None:
        for t in self.restarts:
            t.join(timeout=90)


def run_campaign(directory: str | Path, simulator=None, *, client=None,
                 execution: ExecutionConfig | None = None, retry_failed: bool = False,
                 progress: bool = True, merge: bool = True, allow_corrupt: bool = False,
                 poll: float = 0.05) -> RunReport:
    """Run every unfinished simulation of the planned campaign in ``directory``.

    simulator: callable ``(θ, SeedSequence) -> x`` with ``names`` (and optionally ``k``);
    default the campaign's :class:`~cocasbi.forward.ForwardModel` with the layout's threads.
    client: an open Dask client to use (else one is opened from ``execution``, default the
    stored configuration's). Corrupt result files are moved aside and recomputed; failures are
    kept unless ``retry_failed``. Ends with a merge unless ``merge=False``.
    """
    t_start = time.perf_counter()
    store = CampaignStore(directory)
    plan, cfg = store.read_plan(), stored_config(store)
    execution = execution or cfg.execution
    store.clean()
    scan = store.scan(plan)
    for path, why in scan.corrupt.values():
        log.warning("moving corrupt %s aside (%s); it will be recomputed", path, why)
        store.quarantine(path)
    if retry_failed:
        for index in scan.failed:
            store.failure_path(index).unlink()
    todo = sorted([*scan.pending, *scan.corrupt, *(scan.failed if retry_failed else ())])
    sim_config = cfg.forward.simulation_config()
    layout = choose_layout(default_threads(), _free_memory(), simulation_memory(sim_config),
                           execution.workers, execution.threads_per_worker)
    if simulator is None:
        simulator = ForwardModel.from_spec(cfg.forward, threads=layout.threads)
    simulator.names  # noqa: B018 - compute the layout once, before the model is shipped
    if todo:
        settled = len(plan) - len(todo)
        bar = tqdm(total=len(plan), initial=settled, unit="sim", desc=cfg.name,
                   disable=not progress, dynamic_ncols=True)
        with bar, (nullcontext(client) if client else open_client(execution, layout)) as cl:
            _execute(cl, store, plan, simulator, todo, layout.threads, execution.timeout, bar,
                     poll)
    final = store.scan(plan)
    merged = None
    if merge:
        merged = store.merge(plan, provenance(cfg, simulator, layout),
                             allow_corrupt=allow_corrupt, scan=final)
    counts = Counter({"ok": len(final.done), "pending": len(final.pending),
                      "corrupt": len(final.corrupt)})
    counts.update(rec.get("kind", "error") for rec in final.failed.values())
    return RunReport(len(plan), dict(counts), len(todo), time.perf_counter() - t_start,
                     layout, merged)


def _execute(client, store, plan, simulator, todo, threads, timeout, bar, poll) -> None:
    from distributed import as_completed

    token = uuid.uuid4().hex[:8]
    model = client.submit(_identity, simulator, key=f"cocasbi-model-{token}")
    in_flight = {client.submit(run_task, model, str(store.directory), plan.task(i), threads,
                               key=f"cocasbi-sim-{i:06d}-{token}"): i for i in todo}
    watchdog = _Watchdog(client, store, timeout)
    completed = as_completed(list(in_flight))
    failed = 0
    try:
        while in_flight:
            batch = completed.next_batch(block=False)
            for fut in batch:
                index = in_flight.pop(fut, None)
                if index is None:
                    continue
                status = _outcome(fut, store, index)
                failed += status != "ok"
                bar.update()
            for index in watchdog.expired(in_flight.values()):
                fut = next(f for f, i in in_flight.items() if i == index)
                del in_flight[fut]
                fut.cancel()
                failed += 1
                bar.update()
            bar.set_postfix(failed=failed, refresh=False)
            if not batch:
                time.sleep(poll)
    finally:
        watchdog.join()
        client.cancel(list(in_flight) + [model])


def _outcome(fut, store: CampaignStore, index: int) -> str:
    """Status of a finished future; a task that died with its worker is recorded as crashed."""
    try:
        return fut.result()[1]
    except Exception as err:
        if not (store.result_path(index).exists() or store.failure_path(index).exists()):
            store.write_failure({"index": index, "kind": "crashed", "traceback": "",
                                 "error": f"{type(err).__name__}: {err}"})
        return "crashed"


def _free_memory() -> float:
    import psutil

    return psutil.virtual_memory().available


def provenance(cfg: CampaignConfig, simulator, layout: WorkerLayout | None) -> dict:
    """Where and how a campaign ran (stored in the merged file)."""
    describe = getattr(simulator, "provenance", None)
    return {
        "simulator": describe() if describe else repr(simulator),
        "execution": cfg.execution.model_dump(mode="json"),
        "layout": None if layout is None else vars(layout),
        "versions": {"cocasbi": __version__, "python": sys.version.split()[0],
                     "numpy": np.__version__, "dask": dask.__version__},
        "host": socket.gethostname(),
    }


# ---------------------------------------------------------------------------- status
def campaign_status(directory: str | Path) -> dict:
    """Counts by status, running markers, timing of finished simulations and merge state."""
    store = CampaignStore(directory)
    plan = store.read_plan()
    scan = store.scan(plan)
    counts = Counter(rec.get("kind", "error") for rec in scan.failed.values())
    wall = np.array([r.attrs.get("wall_time", np.nan) for r in scan.done.values()])
    finished = [r.attrs.get("finished", 0.0) for r in scan.done.values()]
    merged = store.merged_path.exists() and (
        not finished or store.merged_path.stat().st_mtime >= max(finished))
    return {
        "directory": str(store.directory), "plan_id": plan.plan_id, "planned": len(plan),
        "ok": len(scan.done), "failed": dict(counts), "corrupt": len(scan.corrupt),
        "pending": len(scan.pending), "running": len(store.running()),
        "mean_wall_time": float(np.mean(wall)) if wall.size else None,
        "merged": bool(merged),
    }
