"""Planning: every (θ, seed) of a campaign fixed before anything runs, after validating it all.

θ is the prior's design (:meth:`cocasbi.prior.BoxPrior.design`) drawn with
``default_rng(design_seed(master_seed))``; simulation ``i`` draws its initial phases from
``simulation_seed(master_seed, i)`` (:mod:`cocasbi.seeds`). A result therefore never depends on
worker count, order or resumption.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import yaml

from cocasbi.campaign.config import CampaignConfig, campaign_config_from_dict, check_frame_source
from cocasbi.campaign.producers import producer_from_config
from cocasbi.io.campaign_store import CampaignStore, CampaignStoreError, Plan
from cocasbi.seeds import design_seed
from cocasbi.simulation import estimated_memory


def total_memory() -> float:
    """Physical memory of this machine [bytes]."""
    import psutil

    return float(psutil.virtual_memory().total)


def validate_campaign(cfg: CampaignConfig) -> None:
    """Everything that can be checked without running: ValueError naming the problem.

    The simulation must fit in this machine's memory when it runs here (checked from sizes,
    before anything is allocated); the producer must build (summaries, parameters, force
    schedule, frame); a frame file must exist; kmin < kmax; at least one P(k) bin.
    """
    fwd = cfg.forward
    sim_config = fwd.simulation_config()
    if fwd.kmin is not None and fwd.kmax is not None and fwd.kmin >= fwd.kmax:
        raise ValueError(f"forward: kmin={fwd.kmin} must be below kmax={fwd.kmax} [h/Mpc]")
    need = estimated_memory(sim_config)
    local = not (cfg.execution.scheduler or cfg.execution.jobqueue)
    have = total_memory()
    if local and need > 0.9 * have:
        sim = sim_config.simulation
        raise ValueError(f"one simulation of {sim.n_particles}^3 particles on a {sim.n_mesh}^3 "
                         f"mesh needs about {need / 1e9:.3g} GB, more than this machine's "
                         f"{have / 1e9:.3g} GB")
    check_frame_source(fwd.frame)
    prior = cfg.box_prior()
    for corner in () if prior is None else prior.corners():
        values = dict(zip(prior.names, map(float, corner), strict=True))
        try:
            sim_config.replace(cosmology=values)
        except ValueError as err:
            raise ValueError(f"prior corner {values} is not a valid cosmology: "
                             f"{' '.join(str(err).split())}") from None
    producer = producer_from_config(cfg, threads=1)
    names = getattr(producer, "names", None)
    if names is not None and not list(names):
        raise ValueError(f"forward: no P(k) bin between kmin={fwd.kmin} and kmax={fwd.kmax} "
                         "[h/Mpc] on this box")


def make_plan(cfg: CampaignConfig, theta: np.ndarray | None = None) -> Plan:
    """Plan every simulation of ``cfg``: θ from its design (or the given (n, d) array) and
    seed spawn keys 0..n−1. Deterministic in the configuration."""
    cfg = cfg.resolved()
    prior = cfg.box_prior()
    n, d = cfg.n_simulations, 0 if prior is None else prior.dim
    design = cfg.design
    if prior is None:
        if theta is not None:
            raise ValueError("a campaign without a prior takes no θ design")
        theta, design = np.zeros((n, 0)), "fixed"
        names, low, high = (), np.zeros(0), np.zeros(0)
    else:
        names, low, high = prior.names, prior.low.copy(), prior.high.copy()
    if prior is None:
        pass
    elif theta is None:
        theta = prior.design(n, np.random.default_rng(design_seed(cfg.master_seed)), design)
    else:
        theta, design = np.array(theta, dtype=np.float64), "given"
        if theta.shape != (n, d):
            raise ValueError(f"θ design has shape {theta.shape}, expected {(n, d)}")
        prior.check(theta)
    seeds = np.arange(n, dtype=np.int64)
    planning = cfg.model_dump(mode="json", exclude={"execution", "directory", "name"})
    if planning.get("kind") == "summaries" and planning.get("producer") is None:
        del planning["kind"], planning["producer"]  # plan ids of summary campaigns as before
    digest = hashlib.sha256(json.dumps(planning, sort_keys=True).encode())
    digest.update(design.encode() + theta.tobytes() + seeds.tobytes())
    return Plan(parameters=tuple(names), theta=theta, seeds=seeds, master_seed=cfg.master_seed,
                lower=low, upper=high, design=design,
                config_yaml=cfg.to_yaml(), plan_id=digest.hexdigest()[:16])


def plan_campaign(cfg: CampaignConfig, directory: str | Path | None = None,
                  force: bool = False, theta: np.ndarray | None = None) -> CampaignStore:
    """Validate ``cfg`` and write its plan into its directory (or ``directory``).

    Nothing is written unless everything validates. An identical existing plan is kept (so
    planning twice is harmless); a different one is an error unless ``force`` (its results
    then fail the plan-id check, or lie outside the plan, and are set aside by the next run).
    """
    store = CampaignStore(directory or cfg.directory)
    if store.directory.exists() and not store.directory.is_dir():
        raise CampaignStoreError(f"campaign directory {store.directory} is a file")
    validate_campaign(cfg)
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
    try:
        data = yaml.safe_load(plan.config_yaml)
    except yaml.YAMLError as err:
        raise CampaignStoreError(f"{store.plan_path}: stored configuration unreadable: "
                                 f"{err}") from None
    return campaign_config_from_dict(data, str(store.config_path))
