"""Running a planned campaign: resume, set damaged files aside, execute, merge, report."""

from __future__ import annotations

import logging
import socket
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import dask
import numpy as np
from tqdm.auto import tqdm

from cocasbi import __version__
from cocasbi.campaign.config import CampaignConfig, ExecutionConfig
from cocasbi.campaign.executor import Farm, WorkerLayout, choose_layout, execute
from cocasbi.campaign.plan import stored_config
from cocasbi.campaign.producers import as_producer, producer_from_config
from cocasbi.io.campaign_store import CampaignStore
from cocasbi.simulation import estimated_memory
from cocasbi.threads import default_threads

log = logging.getLogger(__name__)

#: Failure kinds a plain resume runs again: they describe the environment (a worker that
#: died, a full disk), not the simulation.
RETRIED_KINDS = ("crashed",)


@dataclass
class RunReport:
    """What a run did: counts by status, wall time [s], layout and merged file."""

    planned: int
    counts: dict[str, int]
    ran: int
    wall_time: float
    layout: WorkerLayout
    merged: Path | None


def _free_memory() -> float:
    import psutil

    return psutil.virtual_memory().available


def run_campaign(directory: str | Path, simulator=None, *, client=None,
                 execution: ExecutionConfig | None = None, retry_failed: bool = False,
                 progress: bool = True, merge: bool = True, allow_corrupt: bool = False,
                 poll: float = 0.05, indices=None) -> RunReport:
    """Run every unfinished simulation of the planned campaign in ``directory``.

    simulator: a producer (:mod:`cocasbi.campaign.producers`) or a ``(θ, SeedSequence) -> x``
    callable with ``names``; default the campaign configuration's producer with the layout's
    threads. client: an open Dask client to use (else one is opened from ``execution``,
    default the stored configuration's). indices: run only these planned simulations.

    Holds the directory's lock for the whole run (a second driver is refused). Damaged result
    files and files outside the plan are moved to ``corrupt/`` (the damaged ones are
    recomputed); ``crashed`` records are retried, other failures only with ``retry_failed``.
    Ends with a merge unless ``merge=False``.
    """
    t_start = time.perf_counter()
    store = CampaignStore(directory)
    plan, cfg = store.read_plan(), stored_config(store)
    execution = execution or cfg.execution
    with store.lock():
        store.clean()
        scan = store.scan(plan)
        for path, why in [*scan.corrupt.values(), *scan.stray.items()]:
            log.warning("moving %s aside (%s)", path, why)
            store.quarantine(path)
        retried = [i for i, rec in scan.failed.items()
                   if retry_failed or rec.get("kind") in RETRIED_KINDS]
        for index in retried:
            store.failure_path(index).unlink()
        todo = sorted({*scan.pending, *scan.corrupt, *retried})
        if indices is not None:
            todo = sorted(set(todo) & {int(i) for i in indices})
        sim_config = cfg.forward.simulation_config()
        layout = choose_layout(default_threads(), _free_memory(), estimated_memory(sim_config),
                               execution.workers, execution.threads_per_worker)
        producer = (producer_from_config(cfg, threads=layout.threads) if simulator is None
                    else as_producer(simulator))
        _ = getattr(producer, "names", None)  # compute a layout once, before shipping
        if todo:
            settled = len(plan) - len(todo)
            bar = tqdm(total=len(plan), initial=settled, unit="sim", desc=cfg.name,
                       disable=not progress, dynamic_ncols=True)
            with bar, Farm(execution, layout, client) as farm:
                execute(farm, store, plan, producer, todo, layout.threads, execution.timeout,
                        bar, poll)
        final = store.scan(plan)
        merged = None
        if merge:
            merged = merge_campaign(store, producer, layout, allow_corrupt=allow_corrupt,
                                    scan=final, cfg=cfg)
    counts = Counter({"ok": len(final.done), "pending": len(final.pending),
                      "corrupt": len(final.corrupt)})
    counts.update(rec.get("kind", "error") for rec in final.failed.values())
    return RunReport(len(plan), dict(counts), len(todo), time.perf_counter() - t_start,
                     layout, merged)


def merge_campaign(store: CampaignStore, producer=None, layout: WorkerLayout | None = None,
                   allow_corrupt: bool = False, scan=None, cfg: CampaignConfig | None = None):
    """Merge the campaign in ``store`` into ``campaign.h5``. With a ``producer`` every result
    must match its layout (names, k); without one (default: the stored configuration's
    producer kind) the results must agree among themselves."""
    cfg = cfg or stored_config(store)
    names = None if producer is None else getattr(producer, "names", None)
    producer = producer or producer_from_config(cfg)
    return store.merge(store.read_plan(), provenance(cfg, producer, layout),
                       allow_corrupt=allow_corrupt, scan=scan,
                       kind=getattr(producer, "kind", "summaries"),
                       merged_arrays=getattr(producer, "merged", None),
                       layout=None if names is None else (names, getattr(producer, "k", None)))


def provenance(cfg: CampaignConfig, simulator, layout: WorkerLayout | None) -> dict:
    """Where and how a campaign ran (stored in the merged file)."""
    describe = getattr(simulator, "provenance", None)
    return {
        "simulator": describe() if describe else repr(simulator),
        "kind": getattr(simulator, "kind", cfg.kind),
        "execution": cfg.execution.model_dump(mode="json"),
        "layout": None if layout is None else vars(layout),
        "versions": {"cocasbi": __version__, "python": sys.version.split()[0],
                     "numpy": np.__version__, "dask": dask.__version__},
        "host": socket.gethostname(),
    }


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
        "stray": len(scan.stray), "pending": len(scan.pending),
        "running": len(store.running()),
        "mean_wall_time": float(np.mean(wall)) if wall.size else None,
        "merged": bool(merged),
    }
