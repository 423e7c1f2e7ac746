"""``cocasbi campaign ...``: plan, run, check and merge simulation campaigns.

Every anticipated failure (bad configuration, directory in use, disk full, read-only
directory) ends as one ``error: ...`` line with exit code 2 (the CLI group's error path).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:
    from cocasbi.io.campaign_store import CampaignStore

# The farm (Dask, h5py, the simulation code) is imported inside the commands, so that
# `cocasbi campaign --help` starts at once.

app = typer.Typer(
    help="Simulation campaigns: plan θ and seeds, run them on Dask, check, merge.",
    no_args_is_help=True)

_CAMPAIGN = typer.Argument(..., help="campaign YAML, built-in name (campaign_tiny) or the "
                                     "campaign directory")
_DIRECTORY = typer.Option(None, "--directory", "-d",
                          help="campaign directory (default: the config's `directory`)")


class CampaignCommandError(ValueError):
    """A campaign command that cannot do what was asked (one line, exit code 2)."""


def _store_for(campaign: str, directory: Path | None, plan: bool = False,
               force: bool = False) -> CampaignStore:
    from cocasbi.campaign import load_campaign_config, make_plan, plan_campaign
    from cocasbi.io.campaign_store import CampaignStore, CampaignStoreError

    if Path(campaign).is_dir() and (Path(campaign) / "plan.h5").exists():
        return CampaignStore(campaign)
    if Path(campaign).is_dir():
        raise CampaignCommandError(f"{campaign} is a directory without a campaign plan")
    cfg = load_campaign_config(campaign)
    try:
        if plan:
            return plan_campaign(cfg, directory, force=force)
        store = CampaignStore(directory or cfg.directory)
        if store.read_plan().plan_id != make_plan(cfg).plan_id:
            raise CampaignCommandError(
                f"{store.directory} was planned from another configuration")
        return store
    except CampaignStoreError as err:
        raise CampaignCommandError(str(err)) from None


def _one_line(call, *args, **kwargs):
    """Run ``call`` turning store and run errors into the CLI's one-line ValueError."""
    from cocasbi.campaign import CampaignRunError
    from cocasbi.io.campaign_store import CampaignStoreError

    try:
        return call(*args, **kwargs)
    except (CampaignStoreError, CampaignRunError) as err:
        raise CampaignCommandError(str(err)) from None


@app.command("plan")
def plan_command(campaign: str = _CAMPAIGN, directory: Path | None = _DIRECTORY,
                 force: bool = typer.Option(False, help="replace a different existing plan")):
    """Validate the configuration, draw θ and seeds and write plan.h5 (nothing runs)."""
    store = _store_for(campaign, directory, plan=True, force=force)
    plan = _one_line(store.read_plan)
    typer.echo(f"planned {len(plan)} simulations ({plan.design}, master seed "
               f"{plan.master_seed}, plan {plan.plan_id}) in {store.directory}")


@app.command("run")
def run_command(
    campaign: str = _CAMPAIGN, directory: Path | None = _DIRECTORY,
    scheduler: str | None = typer.Option(None, help="address or scheduler file of a running "
                                                    "Dask cluster (default: a LocalCluster)"),
    workers: int | None = typer.Option(None, help="LocalCluster worker processes (0 = auto)"),
    threads_per_worker: int | None = typer.Option(
        None, help="FFT/numba/torch threads per simulation (0 = auto)"),
    timeout: float | None = typer.Option(None, help="per-simulation limit [s]"),
    dashboard: str | None = typer.Option(
        None, help="serve the Dask dashboard at HOST:PORT (e.g. 127.0.0.1:8787); default off"),
    retry_failed: bool = typer.Option(False, help="run recorded failures again"),
    merge: bool = typer.Option(True, help="merge into campaign.h5 at the end"),
    progress: bool = typer.Option(True, help="show a progress bar"),
):
    """Run every unfinished simulation (plans first if needed); re-running resumes."""
    from cocasbi.campaign import run_campaign, stored_config

    store = _store_for(campaign, directory, plan=True)
    execution = _one_line(stored_config, store).execution
    overrides = {"scheduler": scheduler, "workers": workers,
                 "threads_per_worker": threads_per_worker, "timeout": timeout,
                 "dashboard_address": dashboard}
    execution = type(execution).model_validate(
        {**execution.model_dump(), **{k: v for k, v in overrides.items() if v is not None}})
    report = _one_line(run_campaign, store.directory, execution=execution,
                       retry_failed=retry_failed, merge=merge, progress=progress)
    layout = report.layout
    where = (f"scheduler {execution.scheduler}" if execution.scheduler else
             "a jobqueue cluster" if execution.jobqueue else f"{layout.workers} worker(s)")
    typer.echo(f"ran {report.ran} simulations in {report.wall_time:.1f} s on {where}, "
               f"{layout.threads} thread(s) each: "
               + ", ".join(f"{k} {v}" for k, v in sorted(report.counts.items()) if v))
    if report.merged:
        typer.echo(f"merged into {report.merged}")


@app.command("status")
def status_command(campaign: str = _CAMPAIGN, directory: Path | None = _DIRECTORY,
                   as_json: bool = typer.Option(False, "--json", help="print JSON")):
    """Counts of finished, failed, pending and running simulations."""
    from cocasbi.campaign import campaign_status

    status = _one_line(campaign_status, _store_for(campaign, directory).directory)
    if as_json:
        typer.echo(json.dumps(status, indent=1))
        return
    failed = sum(status["failed"].values())
    kinds = ", ".join(f"{k} {v}" for k, v in sorted(status["failed"].items()))
    wall = status["mean_wall_time"]
    typer.echo("\n".join([
        f"campaign  {status['directory']} (plan {status['plan_id']})",
        f"planned   {status['planned']}",
        f"ok        {status['ok']}",
        f"failed    {failed}" + (f" ({kinds})" if kinds else ""),
        f"corrupt   {status['corrupt']}" + (f" (+{status['stray']} outside the plan)"
                                            if status["stray"] else ""),
        f"pending   {status['pending']} ({status['running']} with a running marker)",
        "wall time " + ("-" if wall is None else f"{wall:.2f} s per simulation (mean)"),
        f"merged    {'up to date' if status['merged'] else 'no'}",
    ]))


@app.command("merge")
def merge_command(campaign: str = _CAMPAIGN, directory: Path | None = _DIRECTORY,
                  allow_corrupt: bool = typer.Option(
                      False, help="record corrupt result files instead of failing")):
    """Gather every result and failure into campaign.h5 (θ, seed, x, status, timing)."""
    store = _store_for(campaign, directory)
    path = _one_line(_merge_locked, store, allow_corrupt)
    typer.echo(f"merged into {path}")


def _merge_locked(store: CampaignStore, allow_corrupt: bool):
    from cocasbi.campaign import merge_campaign

    with store.lock():
        return merge_campaign(store, allow_corrupt=allow_corrupt)
