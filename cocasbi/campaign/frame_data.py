"""COCA frame training data made on the campaign farm (``cocasbi frame make-data``).

A frame-data set is a campaign of kind ``frame_samples``: simulation ``i`` is a COLA run
from ``simulation_seed(master_seed, i)`` whose cosmology is row ``i`` of the prior's design
(``design_seed(master_seed)``), stored by :class:`~cocasbi.campaign.FrameSampleProducer` as
``results/sim_NNNNNN.h5`` in the layout of :mod:`cocasbi.frame.training.data`. The farm adds
resume, failure records, timeouts, sealed files and a progress bar.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

from cocasbi.campaign.config import campaign_config_from_dict
from cocasbi.campaign.plan import make_plan, plan_campaign
from cocasbi.campaign.run import RunReport, run_campaign
from cocasbi.config import Config
from cocasbi.cosmology import PARAMETERS
from cocasbi.io.campaign_store import CampaignStore
from cocasbi.prior import BoxPrior


def frame_data_config(config: Config, out: str | Path, n_sims: int, master_seed: int = 0,
                      prior: BoxPrior | Mapping | None = None,
                      design: str = "latin_hypercube", execution: Mapping | None = None):
    """The campaign configuration of a frame-data set of ``n_sims`` simulations in ``out``."""
    if isinstance(prior, BoxPrior):
        prior = prior.to_dict()
    bounds = {name: list(prior[name]) for name in PARAMETERS if name in (prior or {})}
    unknown = sorted(set(prior or {}) - set(PARAMETERS))
    if unknown:
        raise ValueError(f"unknown parameter(s) {unknown} in the prior; choose from {PARAMETERS}")
    data = {"name": f"frame_data_{config.name}", "directory": str(out),
            "kind": "frame_samples", "n_simulations": n_sims, "master_seed": master_seed,
            "design": design, "prior": bounds,
            "forward": {"config": config.model_dump(mode="json"), "method": "cola",
                        "parameters": list(bounds)},
            "execution": dict(execution or {})}
    return campaign_config_from_dict(data, source="frame data")


def make_frame_data(config: Config, out: str | Path, n_sims: int, master_seed: int = 0,
                    start: int = 0, prior: BoxPrior | Mapping | None = None,
                    design: str = "latin_hypercube", execution: Mapping | None = None,
                    progress: bool = True, force: bool = False,
                    client=None) -> tuple[list[Path], RunReport]:
    """Run simulations ``start … start+n_sims−1`` of a frame-data set in ``out`` on the farm.

    The plan holds the first ``start + n_sims`` simulations (so θ_i and the seed of
    simulation i do not depend on ``start``); re-running resumes. Returns the paths of the
    finished files among those asked for, and the run report (failures included).
    """
    if start < 0 or n_sims < 1:
        raise ValueError(f"start={start} must be >= 0 and n_sims={n_sims} >= 1")
    cfg = frame_data_config(config, out, start + n_sims, master_seed, prior, design, execution)
    store = CampaignStore(out)
    if store.plan_path.is_file() and not force:  # a larger plan of the same set covers it
        planned = len(store.read_plan())
        if planned > start + n_sims:
            larger = frame_data_config(config, out, planned, master_seed, prior, design,
                                       execution)
            if make_plan(larger).plan_id == store.read_plan().plan_id:
                cfg = larger
    store = plan_campaign(cfg, force=force)
    wanted: Iterable[int] = range(start, start + n_sims)
    report = run_campaign(store.directory, progress=progress, indices=wanted, client=client)
    return [store.result_path(i) for i in wanted if store.result_path(i).exists()], report
