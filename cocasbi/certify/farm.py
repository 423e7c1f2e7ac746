"""Paired runs on the campaign farm (:mod:`cocasbi.campaign`): Dask workers, resume, failures.

The certification's pairs become a campaign of kind ``"pairs"`` with the design θ given
explicitly (each θ repeated once per seed). Campaign simulation i is design point
i // n_seeds with the held-out seed ``stream_seed(master_seed, Stream.CERTIFY, i % n_seeds)``,
so the pairs are the same, bit for bit, as in process, and never use a campaign's own seeds.
The campaign directory can be resumed with ``cocasbi campaign run DIR`` (the producer is
rebuilt from the stored certification configuration).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cocasbi.seeds import Stream, describe, stream_seed

#: Keys renamed on the way into the campaign store (it reserves ``x``, ``k`` for summaries).
_RENAMED = {"x": "x_run", "k": "k_bins"}


class CampaignPairs:
    """Producer adapter: a :class:`~cocasbi.certify.pairs.PairTask` driven by campaign seeds.

    Parameters
    ----------
    task : PairTask
        The pair to run.
    master_seed : int
        Master seed of the certification (of its CERTIFY stream).
    n_seeds : int
        Seeds per design point.
    """

    kind = "pairs"
    merged = ()  # results stay one file per pair; certify reads them back

    def __init__(self, task, master_seed: int, n_seeds: int):
        self.task, self.master_seed, self.n_seeds = task, int(master_seed), int(n_seeds)

    def held_out_seed(self, index: int):
        """The CERTIFY seed of campaign simulation ``index``."""
        return stream_seed(self.master_seed, Stream.CERTIFY, index % self.n_seeds)

    def __call__(self, theta, seed) -> dict[str, np.ndarray]:
        index = int(seed.spawn_key[-1])
        out = self.task(theta, self.held_out_seed(index))
        if not self.task.velocities:
            out.pop("rms_dv", None)  # NaN by design; the store keeps finite arrays only
        return {_RENAMED.get(key, key): value for key, value in out.items()}

    def provenance(self) -> dict:
        return {**self.task.provenance(), "master_seed": self.master_seed,
                "n_seeds": self.n_seeds, "seeds": "stream_seed(master_seed, CERTIFY, i % n_seeds)"}


def campaign_producer(config, threads: int | None = None, certify: dict | None = None,
                      **_options):
    """Campaign ``producer.factory``: rebuild the pairs producer from the stored
    certification configuration (``certify``, a mapping)."""
    from cocasbi.certify.config import certify_config_from_dict
    from cocasbi.certify.run import build_task

    cfg = certify_config_from_dict(certify or {}, source="campaign producer.options.certify")
    if threads is not None:
        cfg = cfg.model_copy(update={"threads": threads})
    return CampaignPairs(build_task(cfg)[0], cfg.design.master_seed, cfg.design.n_seeds)


def campaign_runner(cfg, directory, *, workers: int = 0, threads_per_worker: int = 0,
                    progress: bool = True):
    """A ``pair_runner`` for :func:`cocasbi.certify.certify` that runs the pairs as a campaign
    in ``directory`` (a local Dask cluster of ``workers`` processes; 0 = automatic)."""
    from cocasbi.campaign import campaign_config_from_dict, plan_campaign, run_campaign
    from cocasbi.io.campaign_store import CampaignStore

    def run(task, thetas, seeds):
        n_seeds = len(seeds)
        producer = CampaignPairs(task, cfg.design.master_seed, n_seeds)
        base = cfg.simulation_config()
        campaign = campaign_config_from_dict({
            "name": f"certify_{cfg.name}", "directory": str(directory), "kind": "pairs",
            "n_simulations": len(thetas) * n_seeds, "master_seed": cfg.design.master_seed,
            "prior": {k: list(v) for k, v in cfg.prior.items()},
            "forward": {"config": base.model_dump(mode="json"),
                        "parameters": list(cfg.prior_box().names)},
            "producer": {"factory": "cocasbi.certify.farm:campaign_producer",
                         "options": {"certify": cfg.model_dump(mode="json")}},
            "execution": {"workers": workers, "threads_per_worker": threads_per_worker}})
        design_rows = np.repeat(np.asarray(thetas, dtype=np.float64), n_seeds, axis=0)
        plan_campaign(campaign, directory, theta=design_rows)
        report = run_campaign(directory, producer, progress=progress, merge=False)
        store = CampaignStore(directory)
        plan = store.read_plan()
        scan = store.scan(plan, load=True)
        if len(scan.done) != len(plan):
            problems = {i: r.get("error", r.get("kind")) for i, r in scan.failed.items()}
            raise RuntimeError(f"{len(plan) - len(scan.done)} of {len(plan)} pairs did not "
                               f"finish ({report.counts}); first failures: "
                               f"{dict(list(problems.items())[:3])}; see {Path(directory)}")
        pairs = []
        for i in range(len(plan)):
            arrays = dict(scan.done[i].arrays)
            for key, stored in _RENAMED.items():
                if stored in arrays:
                    arrays[key] = arrays.pop(stored)
            arrays.setdefault("rms_dv", np.float64(np.nan))
            arrays["theta"] = np.asarray(scan.done[i].theta)
            arrays["design_index"] = np.int64(i // n_seeds)
            arrays["seed"] = describe(producer.held_out_seed(i))
            pairs.append(arrays)
        return pairs

    return run
