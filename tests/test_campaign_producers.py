"""Producers of any kind on the one farm: summaries, frame samples, and a third-party kind
given through a configuration's ``producer.factory`` or directly to ``run_campaign``."""

import h5py
import numpy as np
import pytest

from cocasbi.campaign import (
    CampaignConfig,
    ExecutionConfig,
    ProducerSpec,
    plan_campaign,
    run_campaign,
)
from cocasbi.campaign.config import trust_producer_factory
from cocasbi.campaign.frame_data import make_frame_data
from cocasbi.config import load_config
from cocasbi.forward import ForwardSpec
from cocasbi.io.campaign_store import load_campaign


class Pairs:
    """A producer of kind ``pairs``: two arrays per task, deterministic in (θ, seed)."""

    kind = "pairs"

    def __init__(self, scale=1.0):
        self.scale = scale

    def __call__(self, theta, seed):
        rng = np.random.default_rng(seed)
        return {"a": self.scale * rng.standard_normal(2), "b": np.array(theta.sum()),
                "attrs/note": np.array("paired run")}

    def provenance(self):
        return {"producer": "Pairs", "scale": self.scale}


def make_pairs(cfg, threads=None, scale=1.0):
    """The factory a configuration names: ``test_campaign_producers:make_pairs``."""
    return Pairs(scale)


trust_producer_factory("test_campaign_producers:make_pairs")


def test_a_configuration_cannot_name_an_untrusted_factory(tmp_path):
    """A YAML file or campaign directory naming e.g. ``os:system`` imports and runs nothing."""
    import sys

    cfg = pairs_campaign(tmp_path).model_copy(
        update={"producer": ProducerSpec(factory="antigravity_probe_xyz:fly")})
    with pytest.raises(ValueError, match="is not trusted"):
        plan_campaign(cfg)
    assert "antigravity_probe_xyz" not in sys.modules
    assert not (tmp_path / "plan.h5").exists()


def pairs_campaign(directory, kind="pairs"):
    return CampaignConfig(
        name="pairs", directory=directory, kind=kind, n_simulations=3, master_seed=9,
        prior={"Omega_m": (0.25, 0.35), "sigma8": (0.7, 0.9)},
        forward=ForwardSpec(config="tiny"),
        producer=ProducerSpec(factory="test_campaign_producers:make_pairs",
                              options={"scale": 2.0}),
        execution=ExecutionConfig(timeout=60))


def _check_pairs(report, scale):
    data = load_campaign(report.merged)
    assert data.ok.all() and data.x is None
    plan_seeds = [np.random.SeedSequence(9, spawn_key=(i,)) for i in range(3)]
    with h5py.File(report.merged) as f:
        assert f.attrs["kind"] == "pairs"
        for i, seed in enumerate(plan_seeds):
            expected = scale * np.random.default_rng(seed).standard_normal(2)
            np.testing.assert_array_equal(f["a"][i], expected)
            assert f["b"][i] == pytest.approx(data.theta[i].sum())


def test_a_producer_from_a_configuration(tmp_path, thread_client):
    store = plan_campaign(pairs_campaign(tmp_path))
    report = run_campaign(store.directory, client=thread_client, progress=False)
    _check_pairs(report, 2.0)
    with h5py.File(store.result_path(0)) as f:  # a sealed file HDF5 reads as usual
        assert f.attrs["note"] == "paired run" and f.attrs["kind"] == "pairs"


def test_a_producer_given_directly(tmp_path, thread_client):
    store = plan_campaign(pairs_campaign(tmp_path))
    report = run_campaign(store.directory, Pairs(3.0), client=thread_client, progress=False)
    _check_pairs(report, 3.0)


def test_a_factory_of_the_wrong_kind_is_refused(tmp_path):
    with pytest.raises(ValueError, match="kind 'pairs'"):
        plan_campaign(pairs_campaign(tmp_path, kind="summaries"))


def test_frame_samples_on_the_farm_match_the_sequential_maker(tmp_path, thread_client):
    """make-data on the farm writes, for the same set, the samples the sequential maker does
    (read back with the frame reader), and resumes without rerunning anything."""
    from cocasbi.frame.training.data import make_training_data, read_sample

    cfg = load_config("tiny")
    prior = {"Omega_m": (0.25, 0.35), "sigma8": (0.7, 0.9)}
    paths, report = make_frame_data(cfg, tmp_path / "farm", 1, master_seed=4, start=1,
                                    prior=prior, progress=False, client=thread_client)
    assert report.counts["ok"] == 1 and len(paths) == 1
    ref = make_training_data(cfg, tmp_path / "ref", 1, master_seed=4, start=1, prior=prior,
                             progress=False)
    farm, seq = read_sample(paths[0]), read_sample(ref[0])
    assert farm.cosmology == seq.cosmology and farm.seed.spawn_key == seq.seed.spawn_key == (1,)
    for name in ("psi1", "psi2", "times", "residual"):
        assert getattr(farm, name).tobytes() == getattr(seq, name).tobytes(), name
    again, report = make_frame_data(cfg, tmp_path / "farm", 1, master_seed=4, start=1,
                                    prior=prior, progress=False, client=thread_client)
    assert again == paths and report.ran == 0
