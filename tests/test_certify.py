"""Certification: good configurations pass, degraded ones fail naming the metric, the Fisher
bias of a known shift is recovered, reports round-trip, the command's exit codes."""

import json
import pickle

import numpy as np
import pytest
import yaml

from cocasbi.certify import (
    CertificationReport,
    PairTask,
    certify,
    certify_config_from_dict,
    design,
    finite_difference_jacobian,
    fisher_bias,
    hartlap_precision,
    load_certify_config,
    make_models,
    write_report,
)
from cocasbi.certify.convergence import default_levels, forces_to_pass, is_converging
from cocasbi.certify.fisher import sample_summaries
from cocasbi.certify.misspecification import misspecification, zscore
from cocasbi.certify.run import convergence_ladder
from cocasbi.config import ConfigError, load_config
from cocasbi.nbody import ResidualRecorder
from cocasbi.prior import DEFAULT_PRIOR
from cocasbi.seeds import Stream, stream_seed
from cocasbi.simulation import simulate

TINY = load_config("tiny").replace(simulation={"threads": 1})


class OracleEmulator:
    """A frame emulator that records the COLA residual of each run it is bound to (a perfect
    frame), optionally at a wrong Ω_m (a frame queried at the wrong cosmology)."""

    def __init__(self, omega_m_shift: float = 0.0):
        self.shift = omega_m_shift

    def bind(self, lpt, cosmo, box_size):
        cfg = TINY.replace(cosmology={"Omega_m": cosmo.Omega_m + self.shift,
                                      "sigma8": cosmo.sigma8})
        recorder = ResidualRecorder()
        simulate(cfg, lpt=lpt, observers=[recorder])
        return recorder.frame()


def _config(**changes):
    data = {"name": "test", "simulation": {**TINY.model_dump(mode="json")},
            "under_test": {"method": "coca", "frame": "tiny", "forces": "even:3"},
            "reference": {"method": "cola", "n_steps": 10},
            "design": {"corners": False, "n_interior": 1, "n_seeds": 1},
            "fisher": {"enabled": False}, "threads": 1}
    data.update(changes)
    return certify_config_from_dict(data)


@pytest.fixture(scope="module")
def good_report(tmp_path_factory):
    """COCA with a perfect frame and 3 forces against COLA with all 10 steps' forces."""
    out = tmp_path_factory.mktemp("good")
    return certify(_config(), frame=OracleEmulator(), out_dir=out, progress=False), out


def test_good_configuration_passes(good_report):
    report, _ = good_report
    assert report.passed and report.exit_code == 0, report.markdown()
    assert report.check("pk_ratio").value < 1e-6
    assert report.check("one_minus_r2").value < 1e-9
    assert report.check("bk_ratio").value < 1e-5
    assert report.check("convergence").passed
    assert report.summary["rms_dx_worst"] < 1e-6
    assert len(report.design) == 2 and len(report.pairs) == 2
    assert all(p["n_forces"] == 3 for p in report.pairs)


def test_frame_at_the_wrong_cosmology_fails_on_the_power_spectrum():
    report = certify(_config(), frame=OracleEmulator(omega_m_shift=0.15), progress=False)
    assert not report.passed and report.exit_code == 1
    assert "pk_ratio" in report.failed
    assert report.check("pk_ratio").value > 0.01
    assert "k = " in report.check("pk_ratio").detail
    # forces still correct a wrong frame: the errors fall as forces are added
    assert report.check("convergence").passed, report.convergence
    assert report.check("one_minus_r2").passed  # the phases are right, the amplitude is not


def test_too_few_steps_fail_and_the_ladder_converges():
    cfg = _config(under_test={"method": "cola", "n_steps": 3},
                  reference={"method": "cola", "n_steps": 30},
                  convergence={"levels": [2, 3, 6, 12]})
    report = certify(cfg, progress=False)
    assert not report.passed
    assert {"pk_ratio", "bk_ratio"} <= set(report.failed)
    assert report.check("convergence").passed
    ladder = report.convergence
    assert ladder["rms_dx"][-1] < 0.5 * ladder["rms_dx"][0]
    assert ladder["n_forces"] == [3, 4, 7, 13]
    need = ladder["forces_to_pass"]
    th = report.config["thresholds"]
    passes = [p < th["pk_ratio"] and r < th["one_minus_r2"]
              for p, r in zip(ladder["pk_ratio"], ladder["one_minus_r2"], strict=True)]
    assert need["passes"] == passes
    assert need["n_forces"] == (ladder["n_forces"][passes.index(True)] if any(passes) else None)


def test_report_round_trips_through_json(good_report, tmp_path):
    report, out = good_report
    assert {p.name for p in out.iterdir()} >= {"test.json", "test.md", "certify_test_pk.png",
                                                "certify_test_bk.png",
                                                "certify_test_convergence.png"}
    back = CertificationReport.load(out / "test.json")
    assert back.to_dict() == json.loads(json.dumps(report.to_dict()))
    assert back.passed == report.passed and back.check("pk_ratio") == report.check("pk_ratio")
    back.save(tmp_path / "again.json")
    assert (tmp_path / "again.json").read_text() == (out / "test.json").read_text()
    assert "**PASS**" in back.markdown()
    write_report(back, tmp_path)  # plots from a reloaded report


def test_fisher_bias_recovers_a_known_shift_in_a_linear_gaussian_model():
    rng = np.random.default_rng(np.random.SeedSequence(11))
    p, d = 12, 2
    a = rng.normal(size=(p, d))
    chol = np.tril(rng.normal(size=(p, p))) * 0.3 + np.eye(p)
    cov = chol @ chol.T

    def model(theta, seed):
        noise = np.random.default_rng(seed).standard_normal(p)
        return a @ np.asarray(theta) + chol @ noise

    theta0 = np.array([0.3, 0.8])
    seeds = [stream_seed(0, Stream.CERTIFY, j) for j in range(200)]
    jac = finite_difference_jacobian(model, theta0, [0.01, 0.02], seeds[:3])
    np.testing.assert_allclose(jac, a, atol=1e-9)  # common seeds: the noise cancels exactly
    runs = []
    pooled = finite_difference_jacobian(  # the runs handed over in one list, in order
        None, theta0, [0.01, 0.02], seeds[:3],
        run_all=lambda batch: runs.extend(batch) or [model(t, s) for t, s in batch])
    assert np.array_equal(pooled, jac) and len(runs) == 2 * 2 * 3
    precision = hartlap_precision(sample_summaries(model, theta0, seeds))
    delta = np.array([0.004, -0.01])
    out = fisher_bias(jac, precision, a @ delta)
    np.testing.assert_allclose(out["bias"], delta, rtol=1e-8)
    true_sigma = np.sqrt(np.diag(np.linalg.inv(a.T @ np.linalg.inv(cov) @ a)))
    np.testing.assert_allclose(out["sigma"], true_sigma, rtol=0.2)
    np.testing.assert_allclose(out["bias_sigma"], delta / out["sigma"])
    # a shift the summaries cannot tell from noise along no parameter direction: no bias
    orth = np.linalg.svd(a)[0][:, d]
    out = fisher_bias(a, np.linalg.inv(cov), cov @ orth)
    np.testing.assert_allclose(out["bias"], 0.0, atol=1e-12)
    with pytest.raises(ValueError, match="more than"):
        hartlap_precision(np.zeros((5, 4)))


def test_convergence_rule():
    assert is_converging([1.0, 0.5, 0.2, 0.05])
    assert is_converging([1.0, 1.1, 0.8, 0.05])  # a bump on the way is allowed
    assert not is_converging([1.0, 0.3, 0.2, 0.4])  # the most forces are not the best
    assert not is_converging([1.0, 0.9, 0.85, 0.8])  # does not fall toward zero
    assert is_converging([1.0, 1e-4, 2e-4, 1e-4], floor=1e-3)  # at the floor: converged
    assert not is_converging([1.0, np.nan])
    assert default_levels("cola", 10, 11, 11) == [5, 10, 20, 40]
    assert default_levels("coca", 10, 3, 11) == [1, 3, 6, 11]


def test_forces_to_pass_on_a_synthetic_ladder():
    ladder = {"levels": [1, 2, 4, 8], "n_forces": [2, 3, 5, 9],
              "pk_ratio": [0.2, -0.05, 0.008, 0.002], "one_minus_r2": [0.1, 0.005, 0.02, 0.001]}
    th = {"pk_ratio": 0.01, "one_minus_r2": 0.01}
    out = forces_to_pass(ladder, th)  # level 4 passes P(k) but not r²; |−0.05| counts
    assert out["passes"] == [False, False, False, True]
    assert (out["level"], out["n_forces"], out["stable"]) == (8, 9, True)
    out = forces_to_pass(ladder, {"pk_ratio": 0.1})  # P(k) alone: from level 2
    assert (out["level"], out["n_forces"]) == (2, 3)
    unstable = forces_to_pass({**ladder, "pk_ratio": [0.2, 0.001, 0.008, 0.5]}, th)
    assert unstable["n_forces"] == 3 and not unstable["stable"]
    none = forces_to_pass(ladder, {"pk_ratio": 0.001})
    assert none["n_forces"] is None and none["level"] is None and not any(none["passes"])
    assert forces_to_pass({**ladder, "pk_ratio": [np.nan] * 4}, th)["n_forces"] is None
    with pytest.raises(ValueError, match="lacks bk_ratio"):
        forces_to_pass(ladder, {"bk_ratio": 0.02})
    with pytest.raises(ValueError, match="3 values for 4 levels"):
        forces_to_pass({**ladder, "pk_ratio": [1, 2, 3]}, th)


def test_cola_ladder_outside_the_prior_passes_at_some_step_count():
    """At Ω_m = 0.45, σ8 = 1 (beyond the default prior) COLA against COLA-16 fails with 2
    steps and passes before it reaches the reference's 16 steps."""
    cfg = _config(under_test={"method": "cola", "n_steps": 4},
                  reference={"method": "cola", "n_steps": 16},
                  convergence={"levels": [2, 8, 16]})
    ladder = convergence_ladder(cfg, [0.45, 1.0], progress=False)
    need = ladder["forces_to_pass"]
    assert ladder["theta"] == [0.45, 1.0] and ladder["n_forces"] == [3, 9, 17]
    assert need["passes"][0] is False and need["passes"][-1] is True  # 16 = the reference
    assert need["n_forces"] in (9, 17) and need["stable"]
    assert ladder["pk_ratio"][-1] < 1e-6
    with pytest.raises(ValueError, match="theta must have 2 values"):
        convergence_ladder(cfg, [0.3], progress=False)


def test_misspecification_flags_a_shifted_set_and_not_a_matching_one():
    rng = np.random.default_rng(np.random.SeedSequence(0))
    scale = np.array([1.0, 10.0, 0.01, 3.0, 1.0])  # z-scoring puts them on one scale
    train = rng.normal(size=(120, 5)) * scale + 2.0
    same = rng.normal(size=(8, 5)) * scale + 2.0
    shifted = same + 1.5 * scale  # 1.5 σ in every summary
    ok = misspecification(same, train, alpha=0.05, n_shuffle=200)
    bad = misspecification(shifted, train, alpha=0.05, n_shuffle=200)
    assert ok["p_value"] > 0.05 and not ok["flagged"]
    assert bad["p_value"] < 0.01 and bad["flagged"]
    assert bad["fraction_flagged"] > 0.5 > ok["fraction_flagged"]
    assert len(bad["p_values"]) == 8 and bad["n_train"] == 120
    assert misspecification(same, train, n_shuffle=200) == ok  # seeded: reproducible
    z_obs, z = zscore(same, train)
    np.testing.assert_allclose(z.mean(0), 0, atol=1e-12)
    np.testing.assert_allclose(z.std(0), 1)
    with pytest.raises(ValueError, match="more training summaries"):
        misspecification(train, same)
    with pytest.raises(ValueError, match="same p"):
        misspecification(same[:, :3], train)
    with pytest.raises(ValueError, match="alpha"):
        misspecification(same, train, alpha=1.5)


def test_design_and_seeds_are_held_out_and_deterministic():
    thetas = design(DEFAULT_PRIOR, True, 3, master_seed=5)
    np.testing.assert_array_equal(thetas[0], DEFAULT_PRIOR.center)
    np.testing.assert_array_equal(thetas[1:5], DEFAULT_PRIOR.corners())
    assert len(thetas) == 8 and DEFAULT_PRIOR.contains(thetas).all()
    np.testing.assert_array_equal(thetas, design(DEFAULT_PRIOR, True, 3, master_seed=5))


def test_pair_task_is_a_picklable_producer():
    cfg = _config(under_test={"method": "cola", "n_steps": 2},
                  reference={"method": "cola", "n_steps": 4})
    cand, ref = make_models(cfg.simulation_config(), cfg.under_test, cfg.reference,
                            ("Omega_m", "sigma8"), ["log_pk"], kmax=0.6)
    task = PairTask(cand, ref, kmax=0.6, triangles=[[0.3, 0.3, 0.3]])
    assert task.kind == "pairs"
    json.dumps(task.provenance())
    seed = stream_seed(0, Stream.CERTIFY, 0)
    out = task([0.3, 0.8], seed)
    again = pickle.loads(pickle.dumps(task))([0.3, 0.8], seed)
    assert set(out) >= {"rms_dx", "rms_dv", "k", "pk_ratio", "one_minus_r2", "pk_ratio_cv",
                        "bk_ratio", "x", "x_ref", "n_forces"}
    for key in ("rms_dx", "pk_ratio", "bk_ratio", "x"):
        np.testing.assert_array_equal(out[key], again[key])
    assert out["rms_dx"] > 0 and np.all(out["k"] <= 0.6)
    with pytest.raises(ValueError, match="n_mesh"):
        PairTask(cand, make_models(cfg.simulation_config().replace(simulation={"n_mesh": 32}),
                                   cfg.under_test, cfg.reference, ("Omega_m", "sigma8"),
                                   ["log_pk"])[1], kmax=0.6)


def test_configuration_errors():
    assert load_certify_config("tiny").under_test.method == "cola"
    with pytest.raises(ConfigError, match="typo"):
        _config(typo=1)
    with pytest.raises(ConfigError, match="needs a frame"):
        _config(under_test={"method": "coca"})
    with pytest.raises(ConfigError, match="reference"):
        _config(reference={"method": "coca", "frame": "tiny"})
    with pytest.raises(ConfigError, match="prior"):
        _config(prior={"Omega_m": [0.4, 0.2]})
    with pytest.raises(ConfigError, match="misspecification_alpha"):
        _config(thresholds={"misspecification_alpha": 1.5})


def test_command_exit_codes(tmp_path):
    from typer.testing import CliRunner

    from cocasbi.cli import app

    path = tmp_path / "fail.yaml"
    path.write_text(yaml.safe_dump({
        "name": "fail", "simulation": "tiny", "threads": 1,
        "under_test": {"method": "cola", "n_steps": 2},
        "reference": {"method": "cola", "n_steps": 4},
        "thresholds": {"pk_ratio": 0.000001},
        "design": {"corners": False, "n_interior": 0, "n_seeds": 1},
        "convergence": {"enabled": False}, "fisher": {"enabled": False}}))
    runner = CliRunner()
    result = runner.invoke(app, ["certify", str(path), "--out", str(tmp_path / "o"),
                                 "--no-progress"])
    assert result.exit_code == 1, result.output
    assert "FAIL" in result.output and (tmp_path / "o" / "fail.json").is_file()
    bad = tmp_path / "bad.yaml"
    bad.write_text("thresholds: {pk_ratio: -1}\nunder_test: {method: cola}\n")
    result = runner.invoke(app, ["certify", str(bad), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "pk_ratio" in result.output


@pytest.mark.slow
def test_cola_with_many_steps_passes_against_pm():
    """The shipped tiny certification with COLA-40: passes every check, Fisher included."""
    cfg = load_certify_config("tiny")
    cfg = cfg.model_copy(update={"under_test": cfg.under_test.model_copy(
        update={"n_steps": 40}), "threads": 1})
    report = certify(cfg, progress=False)
    assert report.passed, report.markdown()
    assert abs(report.check("parameter_bias").value) < 0.05


@pytest.mark.slow
def test_pairs_on_the_campaign_farm_equal_the_in_process_loop(tmp_path):
    cfg = _config(under_test={"method": "cola", "n_steps": 3},
                  reference={"method": "cola", "n_steps": 6}, convergence={"enabled": False})
    local = certify(cfg, progress=False)
    farm = cfg.model_copy(update={"farm": cfg.farm.model_copy(
        update={"enabled": True, "workers": 2, "threads_per_worker": 1})})
    remote = certify(farm, out_dir=tmp_path, progress=False)
    assert (tmp_path / "pairs" / "plan.json").exists() or any((tmp_path / "pairs").iterdir())
    for a, b in zip(local.pairs, remote.pairs, strict=True):
        assert a["seed"] == b["seed"] and a["theta"] == b["theta"]
        for key in ("rms_dx", "rms_dv", "pk_ratio", "one_minus_r2", "bk_ratio"):
            assert a[key] == b[key], key
    assert [c.value for c in local.checks] == [c.value for c in remote.checks]


class _ShiftedPosterior:
    """A fake posterior: θ | x ~ N((x0, x1), diag(0.1², 0.2²)), sampled with torch's RNG."""

    def sample(self, shape, x, show_progress_bars=False):
        import torch

        scale = torch.tensor([0.1, 0.2])
        return x[:2].double() + scale.double() * torch.randn(shape + (2,), dtype=torch.float64)


def test_npe_posterior_shift_and_coverage_logic():
    from cocasbi.certify.npe import posterior_shift

    pairs = [{"x": np.array([0.30, 0.80]), "x_ref": np.array([0.31, 0.80]),
              "theta": np.array([0.31, 0.80])},
             {"x": np.array([0.25, 0.70]), "x_ref": np.array([0.25, 0.76]),
              "theta": np.array([0.9, 0.76])}]
    out = posterior_shift(_ShiftedPosterior(), pairs, 4000, master_seed=3)
    # same random numbers for both posteriors: the shift is (x_ref - x) / σ exactly (float32 x)
    np.testing.assert_allclose(out["shift"] * out["sigma_ref"], [[0.01, 0.0], [0.0, 0.06]],
                               atol=1e-6)
    np.testing.assert_allclose(out["sigma_ref"], [[0.1, 0.2]] * 2, rtol=0.05)
    assert out["coverage"]["0.68"] == [0.5, 1.0]  # the second θ_Ωm is 6.5 σ away
    inside = posterior_shift(_ShiftedPosterior(), pairs, 100, 3, prior=DEFAULT_PRIOR)
    assert inside["n_coverage"] == 1 and inside["coverage"]["0.95"] == [1.0, 1.0]


@pytest.mark.slow
def test_npe_check_runs_and_names_the_shift(tmp_path):
    cfg = _config(under_test={"method": "cola", "n_steps": 2},
                  reference={"method": "cola", "n_steps": 8}, convergence={"enabled": False},
                  npe={"enabled": True, "n_train": 120, "n_samples": 400,
                       "estimator": {"model": "mdn", "num_components": 2},
                       "training": {"max_epochs": 60, "stop_after_epochs": 10}})
    report = certify(cfg, out_dir=tmp_path, progress=False)
    check = report.check("posterior_shift")
    assert np.isfinite(check.value) and "coverage" in check.detail
    assert np.asarray(report.npe["shift"]).shape == (2, 2)
    mis = report.check("misspecification")
    assert 0 <= mis.value <= 1 and mis.threshold == 0.05 and mis.passed == (mis.value >= 0.05)
    assert len(report.npe["misspecification"]["p_values"]) == 2
    assert CertificationReport.load(tmp_path / "test.json").npe == json.loads(
        json.dumps(report.npe))
