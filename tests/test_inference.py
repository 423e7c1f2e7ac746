"""NPE on sbi: known answer, checkpoints, layouts, bad input, training data, observations."""

import json

import h5py
import numpy as np
import pytest
import torch

from cocasbi.config import ConfigError
from cocasbi.inference.box import ParameterBox
from cocasbi.inference.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from cocasbi.inference.config import (
    EstimatorConfig,
    PipelineConfig,
    TrainingConfig,
    load_inference_config,
)
from cocasbi.inference.data import from_arrays, from_model, training_set
from cocasbi.inference.estimator import train_estimators
from cocasbi.inference.gaussian_field import GaussianFieldModel, independent_modes, simulate_prior
from cocasbi.inference.observation import (
    Observation,
    load_observation,
    mock_observation,
    reference_model,
    save_observation,
)
from cocasbi.inference.posterior import sample_posterior, summarize
from cocasbi.io.campaign_store import CAMPAIGN_FORMAT
from cocasbi.prior import DEFAULT_PRIOR
from cocasbi.seeds import simulation_seed


def _field_data(model, n, master=1):
    return from_model(model, *simulate_prior(model, n, master))


@pytest.fixture(scope="module")
def small_model():
    return GaussianFieldModel(n=4, n_bins=2)


@pytest.fixture(scope="module")
def trained(small_model):
    """An MDN trained on 2000 Gaussian-field simulations (about 15 s on one core)."""
    data = _field_data(small_model, 2000)
    members = train_estimators(data, EstimatorConfig(model="mdn", embedding="none"),
                               TrainingConfig(batch_size=100, learning_rate=1e-3), 3,
                               progress=False)
    return Checkpoint(EstimatorConfig(model="mdn", embedding="none"),
                      TrainingConfig(batch_size=100, learning_rate=1e-3), data.prior,
                      data.names, data.k, members, {})


# ----------------------------------------------------------------------- known answer
def test_mode_counting():
    for n in (4, 6, 8):
        signed, index = independent_modes(n)
        assert len(signed) == (n**3 - 8) // 2  # all modes but the 8 self-conjugate, halved
        keys = {tuple(v) for v in signed}
        assert not any(tuple(-v) in keys for v in signed)  # never both k and −k


def test_exact_posterior_sampling_matches_quadrature(small_model):
    x = small_model([1.1], 4)
    post = small_model.exact_posterior(x)
    s = post.sample(200_000, np.random.default_rng(0))
    mean, std = post.moments()
    assert ((s >= 0.5) & (s <= 2.0)).all()
    assert abs(s.mean() - mean) < 0.01 * std
    assert abs(s.std() - std) < 0.01 * std


def test_npe_matches_exact_posterior(trained, small_model):
    from sbi.utils.metrics import c2st

    post = trained.posterior()
    rng = np.random.default_rng(11)
    for j, a in enumerate((0.8, 1.6)):
        x = small_model([a], simulation_seed(99, j))
        npe = sample_posterior(post, x, 1500, master_seed=5, call=j)
        exact = small_model.exact_posterior(x)
        mean, std = exact.moments()
        ref = torch.as_tensor(exact.sample(1500, rng), dtype=torch.float32)
        assert float(c2st(torch.as_tensor(npe, dtype=torch.float32), ref)) < 0.6
        assert abs(npe.mean() - mean) < 0.3 * std
        assert abs(npe.std() / std - 1) < 0.2


# ----------------------------------------------------------------------- checkpoints
def test_checkpoint_round_trip_on_cpu(trained, tmp_path):
    path = save_checkpoint(tmp_path / "npe.pt", trained)
    raw = torch.load(path, map_location="cpu", weights_only=True)  # no pickled objects
    assert json.loads(raw["metadata"])["names"] == list(trained.names)
    back = load_checkpoint(path)
    theta = torch.tensor([[0.8], [1.3]])
    x = torch.as_tensor(np.stack([[0.8, 0.9], [1.2, 1.4]]), dtype=torch.float32)
    a = trained.members[0].net.log_prob(theta[None], x).detach()
    b = back.members[0].net.log_prob(theta[None], x).detach()
    torch.testing.assert_close(a, b)
    assert back.prior.names == ("A",) and isinstance(back.prior, ParameterBox)
    assert back.estimator == trained.estimator
    np.testing.assert_allclose(back.k, trained.k)


def test_checkpoint_refuses_other_files_and_versions(trained, tmp_path):
    bad = tmp_path / "notes.pt"
    bad.write_text("hello")
    with pytest.raises(ValueError, match="not a readable checkpoint"):
        load_checkpoint(bad)
    path = save_checkpoint(tmp_path / "npe.pt", trained)
    raw = torch.load(path, weights_only=True)
    meta = json.loads(raw["metadata"])
    meta["versions"]["sbi"] = "0.1.0"
    raw["metadata"] = json.dumps(meta)
    torch.save(raw, tmp_path / "old.pt")
    with pytest.raises(ValueError, match="sbi 0.1.0"):
        load_checkpoint(tmp_path / "old.pt")
    with pytest.raises(ValueError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")


def test_layout_mismatch_is_named(trained):
    trained.check_layout(trained.names, trained.k)
    with pytest.raises(ValueError, match="entry 1 is 'other'"):
        trained.check_layout([trained.names[0], "other"])
    with pytest.raises(ValueError, match="3 vs 2 entries"):
        trained.check_layout([*trained.names, "extra"])
    with pytest.raises(ValueError, match="k bins differ"):
        trained.check_layout(trained.names, trained.k * 1.1)


@pytest.mark.filterwarnings("ignore:Maximum number of epochs")
def test_training_is_seeded(small_model, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # and writes nothing into the working directory (sbi-logs)
    data = _field_data(small_model, 200)
    cfg, tr = EstimatorConfig(model="mdn", embedding="none"), TrainingConfig(max_epochs=3)
    a = train_estimators(data, cfg, tr, 1, progress=False)[0].net.state_dict()
    torch.manual_seed(123)  # the global state must not matter
    b = train_estimators(data, cfg, tr, 1, progress=False)[0].net.state_dict()
    c = train_estimators(data, cfg, tr, 2, progress=False)[0].net.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------- training data
def test_bad_rows_are_dropped_and_counted():
    rng = np.random.default_rng(0)
    theta = DEFAULT_PRIOR.design(30, rng)
    x = rng.normal(size=(30, 3))
    x[3, 1] = np.nan
    x[7, 0] = np.inf
    status = np.array(["ok"] * 30, dtype=object)
    status[[10, 11]] = "error"
    status[12] = "timeout"
    data = from_arrays(theta, x, parameters=DEFAULT_PRIOR.names, names=["a", "b", "c"],
                       prior=DEFAULT_PRIOR, status=status)
    assert len(data) == 25 and data.report.n_total == 30
    assert data.report.dropped == {"nonfinite": 2, "error": 2, "timeout": 1}
    assert data.theta.dtype == torch.float32 and data.x.dtype == torch.float32
    assert 3 not in data.index and 10 not in data.index
    with pytest.raises(ValueError, match="only 25 usable simulations, need at least 26"):
        from_arrays(theta, x, parameters=DEFAULT_PRIOR.names, names=["a", "b", "c"],
                    prior=DEFAULT_PRIOR, status=status, min_rows=26)
    theta[0, 0] = 0.9
    with pytest.raises(ValueError, match="Omega_m=0.9 outside the prior"):
        from_arrays(theta, x, parameters=DEFAULT_PRIOR.names, names=["a", "b", "c"],
                    prior=DEFAULT_PRIOR)


def test_training_set_from_merged_campaign(tmp_path):
    rng = np.random.default_rng(1)
    n = 12
    theta = DEFAULT_PRIOR.design(n, rng)
    x = rng.normal(size=(n, 2)).astype(np.float32)
    status = ["ok"] * n
    status[2], status[5] = "crashed", "pending"
    x[2] = x[5] = np.nan
    text = h5py.string_dtype()
    path = tmp_path / "campaign.h5"
    with h5py.File(path, "w") as f:
        f.attrs.update(format=CAMPAIGN_FORMAT, parameters=list(DEFAULT_PRIOR.names))
        f["theta"], f["seed"], f["x"] = theta, np.arange(n), x
        f.create_dataset("names", data=["log_pk[k=0.1]", "log_pk[k=0.2]"], dtype=text)
        f.create_dataset("status", data=status, dtype=text)
        f.create_dataset("error", data=[""] * n, dtype=text)
        f["wall_time"] = np.ones(n)
        f["lower"], f["upper"] = DEFAULT_PRIOR.low, DEFAULT_PRIOR.high
    data = training_set(path)
    assert len(data) == 10 and data.report.dropped == {"crashed": 1, "pending": 1}
    assert data.prior.names == DEFAULT_PRIOR.names
    np.testing.assert_array_equal(data.prior.low, DEFAULT_PRIOR.low)
    np.testing.assert_array_equal(data.index, [0, 1, 3, 4, 6, 7, 8, 9, 10, 11])


# ----------------------------------------------------------------------- observations
def test_observation_round_trip_and_bad_input(tmp_path, small_model):
    obs = mock_observation(small_model, [1.3], master_seed=4, index=2, prior=small_model.prior)
    again = mock_observation(small_model, [1.3], master_seed=4, index=2)
    other = mock_observation(small_model, [1.3], master_seed=4, index=3)
    np.testing.assert_array_equal(obs.x, again.x)
    assert not np.array_equal(obs.x, other.x)
    path = save_observation(tmp_path / "obs.h5", obs)
    back = load_observation(path)
    np.testing.assert_array_equal(back.x, obs.x)
    assert back.names == obs.names and back.parameters == ("A",)
    np.testing.assert_allclose(back.theta, [1.3])
    with pytest.raises(ValueError, match="A=2.5 outside the prior"):
        mock_observation(small_model, [2.5], 4, prior=small_model.prior)
    with pytest.raises(ValueError, match="non-finite values at 'b'"):
        Observation(np.array([1.0, np.nan]), ("a", "b"))
    with h5py.File(tmp_path / "nan.h5", "w") as f:
        f["x"] = np.array([1.0, np.nan], dtype=np.float32)
        f.create_dataset("names", data=["a", "b"], dtype=h5py.string_dtype())
    with pytest.raises(ValueError, match="non-finite"):
        load_observation(tmp_path / "nan.h5")
    with pytest.raises(ValueError, match="does not exist"):
        load_observation(tmp_path / "none.h5")


def test_posterior_summary_percentiles():
    rng = np.random.default_rng(0)
    s = rng.normal(size=(100_000, 2))
    summ = summarize(s, ("a", "b"), truth=[0.0, 1.0])
    np.testing.assert_allclose(summ.truth_percentile, [50.0, 84.13], atol=0.5)
    np.testing.assert_allclose(summ.intervals[0.68][0], [-0.994, 0.994], atol=0.03)


def test_reference_model_is_the_campaign_model_with_another_method_steps_and_threads():
    from cocasbi.forward import ForwardSpec

    spec = ForwardSpec(config="tiny", method="cola", kmax=0.8)
    ref = reference_model(spec, n_steps=40, threads=1)
    sim = ref.config.simulation
    assert (sim.method, sim.n_steps, sim.threads) == ("pm", 40, 1)
    assert ref.kmax == 0.8 and ref.parameters == spec.parameters
    default = reference_model(spec).config.simulation
    assert (default.n_steps, default.threads) == (10, spec.simulation_config().simulation.threads)


# ----------------------------------------------------------------------- configuration
def test_builtin_configs_load_and_unknown_keys_fail(tmp_path):
    tiny = load_inference_config("tiny")
    assert tiny.campaign["forward"]["method"] == "cola"
    assert tiny.estimator.model == "nsf" and tiny.estimator.embedding == "mlp"
    quick = load_inference_config("field_quick")
    assert quick.gaussian_field is not None
    paper = load_inference_config("paper")  # the paper-size job: tiny's, on paper.yaml
    assert paper.campaign["forward"] == {**tiny.campaign["forward"], "config": "paper"}
    assert paper.estimator == tiny.estimator
    assert paper.training == tiny.training.model_copy(update={"ensemble": 5})
    bad = tmp_path / "bad.yaml"
    bad.write_text("master_seed: 1\ngaussian_field: {}\nobservation: {theta: {A: 1}, "
                   "method: field}\nestimator: {model: nsf, hiden_features: 3}\n")
    with pytest.raises(ConfigError, match="hiden_features"):
        load_inference_config(bad)
    with pytest.raises(ValueError, match="exactly one"):
        PipelineConfig(master_seed=1, observation={"theta": {"A": 1.0}})


@pytest.mark.filterwarnings("ignore:Maximum number of epochs")
def test_ensemble_members_differ_and_round_trip(small_model, tmp_path):
    from sbi.inference.posteriors import EnsemblePosterior

    data = _field_data(small_model, 200)
    est, tr = EstimatorConfig(model="mdn", embedding="mlp"), TrainingConfig(max_epochs=3,
                                                                            ensemble=2)
    members = train_estimators(data, est, tr, 4, progress=False)
    a, b = (m.net.state_dict() for m in members)
    assert not all(torch.equal(a[k], b[k]) for k in a)
    ckpt = Checkpoint(est, tr, data.prior, data.names, data.k, members, {})
    back = load_checkpoint(save_checkpoint(tmp_path / "ens.pt", ckpt))
    assert len(back.members) == 2 and isinstance(back.posterior(), EnsemblePosterior)
    x = small_model([1.0], 5)
    s1 = sample_posterior(ckpt.posterior(), x, 200, master_seed=1)
    s2 = sample_posterior(back.posterior(), x, 200, master_seed=1)
    np.testing.assert_allclose(s1, s2, rtol=1e-5)
    assert ((s1 >= 0.5) & (s1 <= 2.0)).all()


def test_held_out_rows_are_the_last_plan_indices():
    from cocasbi.inference.pipeline import split_held_out

    rng = np.random.default_rng(2)
    theta = DEFAULT_PRIOR.design(20, rng)
    status = np.array(["ok"] * 20, dtype=object)
    status[[3, 18, 19]] = "error"
    data = from_arrays(theta, rng.normal(size=(20, 2)), parameters=DEFAULT_PRIOR.names,
                       names=["a", "b"], prior=DEFAULT_PRIOR, status=status)
    train, test = split_held_out(data, 5, min_train=2)
    np.testing.assert_array_equal(test.index, [15, 16, 17])
    assert 3 not in train.index and len(train) == 14 and train.index.max() == 14
    with pytest.raises(ValueError, match="only 14 usable training simulations"):
        split_held_out(data, 5, min_train=15)
