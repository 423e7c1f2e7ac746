"""Simulation campaigns: plan θ and seeds, run producers on one Dask farm, store, merge.

A campaign is a YAML file (``configs/campaign/campaign_tiny.yaml``) and a directory
(:mod:`cocasbi.io.campaign_store`). The steps:

* **plan** (:mod:`~cocasbi.campaign.plan`): validate everything, then draw n θ from the prior
  box and give simulation i the seed ``simulation_seed(master_seed, i)``, so a result never
  depends on worker count, order or resumption;
* **run** (:mod:`~cocasbi.campaign.run`, :mod:`~cocasbi.campaign.executor`): submit every
  unfinished simulation to Dask; each task (:mod:`~cocasbi.campaign.tasks`) runs a *producer*
  (:mod:`~cocasbi.campaign.producers`: summaries, frame samples, or any object obeying the
  protocol) and writes one sealed result file or a failure record; the driver watches files,
  times out hung simulations by killing their worker, and resumes after anything;
* **merge**: one writer gathers everything into ``campaign.h5``.

See docs/campaigns.md for the guarantees and their limits.
"""

from cocasbi.campaign.config import (
    CampaignConfig,
    ExecutionConfig,
    JobqueueConfig,
    ProducerSpec,
    campaign_config_from_dict,
    load_campaign_config,
)
from cocasbi.campaign.executor import (
    CampaignRunError,
    WorkerLayout,
    choose_layout,
    cluster_settings,
    local_cluster,
)
from cocasbi.campaign.plan import (
    make_plan,
    plan_campaign,
    stored_config,
    validate_campaign,
)
from cocasbi.campaign.producers import (
    FrameSampleProducer,
    SummaryProducer,
    as_producer,
    producer_from_config,
)
from cocasbi.campaign.run import (
    RunReport,
    campaign_status,
    merge_campaign,
    provenance,
    run_campaign,
)
from cocasbi.campaign.tasks import run_task

__all__ = [
    "CampaignConfig", "CampaignRunError", "ExecutionConfig", "FrameSampleProducer",
    "JobqueueConfig", "ProducerSpec", "RunReport", "SummaryProducer", "WorkerLayout",
    "as_producer", "campaign_config_from_dict", "campaign_status", "choose_layout",
    "cluster_settings", "load_campaign_config", "local_cluster", "make_plan", "merge_campaign",
    "plan_campaign", "producer_from_config", "provenance", "run_campaign", "run_task",
    "stored_config", "validate_campaign",
]
