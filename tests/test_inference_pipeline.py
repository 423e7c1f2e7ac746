"""The inference job end to end: the miniature Gaussian-field pipeline through the CLI (CI),
and a miniature COLA campaign pipeline (slow)."""

import json

import h5py
import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from cocasbi.cli import app
from cocasbi.inference.checkpoint import load_checkpoint, save_checkpoint

MINI = {
    "name": "mini", "master_seed": 3, "n_test": 40, "n_samples": 2000,
    "gaussian_field": {"n": 4, "n_bins": 2, "prior": [0.5, 2.0], "n_simulations": 640},
    "estimator": {"model": "mdn", "embedding": "none", "num_components": 3},
    "training": {"batch_size": 100, "learning_rate": 0.002, "stop_after_epochs": 10},
    "diagnostics": {"n_posterior_samples": 100, "sbc_min_p": 0.001,
                    "coverage_max_deviation": 0.25, "tarp_max_atc": 0.15},
    "observation": {"theta": {"A": 1.2}, "method": "field"},
}


def _invoke(*args):
    return CliRunner().invoke(app, ["infer", *map(str, args)], catch_exceptions=False)


@pytest.fixture(scope="module")
def mini_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("mini")
    config = root / "mini.yaml"
    config.write_text(yaml.safe_dump(MINI))
    first = _invoke("pipeline", config, "-d", root / "out", "--no-progress")
    return root, config, first


def test_pipeline_end_to_end_and_resume(mini_run):
    root, config, first = mini_run
    assert first.exit_code == 0, first.output
    out = root / "out"
    for name in ("simulations.npz", "observation.h5", "estimator.pt", "corner.png",
                 "diagnostics.json", "diagnostics.png", "report.md", "summary.json",
                 "posterior_samples.npy"):
        assert (out / name).is_file(), name
    assert "A: truth 1.2 at percentile" in first.output
    summary = json.loads((out / "summary.json").read_text())
    post = summary["posterior"]["parameters"]["A"]
    assert 0.5 <= post["mean"] <= 2.0 and post["std"] > 0
    assert 0 <= post["truth_percentile"] <= 100
    assert summary["n_train"] == 600 and summary["n_test"] == 40
    assert json.loads((out / "diagnostics.json").read_text())["verdict"] in ("pass", "fail")
    assert "| A |" in (out / "report.md").read_text()
    exact = summary["exact"]  # the known answer of the Gaussian field
    assert abs(post["mean"] - exact["mean"]) < 0.5 * exact["std"]
    assert abs(post["std"] / exact["std"] - 1) < 0.3
    weights = (out / "estimator.pt").read_bytes()
    second = _invoke("pipeline", config, "-d", out, "--no-progress")
    assert second.exit_code == 0, second.output
    for stage in ("simulate", "observe", "train"):
        assert f"[{stage}] reused" in second.output
    assert (out / "estimator.pt").read_bytes() == weights
    again = json.loads((out / "summary.json").read_text())["posterior"]["parameters"]["A"]
    assert again["mean"] == post["mean"]  # seeded sampling


def test_sample_command_and_layout_errors(mini_run, tmp_path):
    root, _, first = mini_run
    assert first.exit_code == 0
    out = root / "out"
    res = _invoke("sample", out / "estimator.pt", out / "observation.h5", "-o", tmp_path / "s",
                  "--n", 500, "--no-progress")
    assert res.exit_code == 0, res.output
    assert (tmp_path / "s" / "corner.png").is_file() and "A:" in res.output
    bad = tmp_path / "bad.h5"
    with h5py.File(bad, "w") as f:
        f["x"] = np.ones(2, dtype=np.float32)
        f.create_dataset("names", data=["log_pk[k=0.1]", "log_pk[k=0.2]"],
                         dtype=h5py.string_dtype())
    res = CliRunner().invoke(app, ["infer", "sample", str(out / "estimator.pt"), str(bad)])
    assert res.exit_code == 2
    assert "summary layout differs" in res.output and "log_pk[k=0.1]" in res.output
    assert len(res.output.strip().splitlines()) == 1


def test_failed_write_keeps_the_good_checkpoint(mini_run, monkeypatch):
    import torch

    out = mini_run[0] / "out"
    good = (out / "estimator.pt").read_bytes()
    ckpt = load_checkpoint(out / "estimator.pt")

    def broken(obj, f, *a, **k):
        open(f, "wb").write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(out / "estimator.pt", ckpt)
    assert (out / "estimator.pt").read_bytes() == good
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


def test_bad_pipeline_inputs_are_one_line_errors(tmp_path):
    cfg = {**MINI, "observation": {"theta": {"A": 5.0}, "method": "field"}}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    res = CliRunner().invoke(app, ["infer", "pipeline", str(path), "-d", str(tmp_path / "o"),
                                   "--no-progress"])
    assert res.exit_code == 2 and "A=5.0 outside the prior" in res.output
    few = {**MINI, "n_test": 630}
    path.write_text(yaml.safe_dump(few))
    res = CliRunner().invoke(app, ["infer", "pipeline", str(path), "-d", str(tmp_path / "o"),
                                   "--no-progress"])
    assert res.exit_code == 2 and "only 10 usable training simulations" in res.output


def _miniature_tiny_job(tmp_path, n_simulations, n_test, max_epochs, n_posterior, **extra):
    """The built-in tiny job shrunk to a few minutes, one worker, as a YAML file in tmp_path;
    returns the file and the configuration."""
    from cocasbi.inference.config import load_inference_config

    tiny = load_inference_config("tiny").model_dump(mode="json")
    tiny["campaign"]["n_simulations"] = n_simulations
    tiny["campaign"]["execution"] = {"workers": 1, "threads_per_worker": 1, "timeout": 120}
    tiny.update(n_test=n_test, n_samples=1000, directory=str(tmp_path / "out"), **extra)
    tiny["training"].update(max_epochs=max_epochs, min_simulations=20)
    tiny["diagnostics"]["n_posterior_samples"] = n_posterior
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny))
    return path, tiny


@pytest.mark.slow
def test_campaign_pipeline_miniature(tmp_path):
    """COLA campaign on tiny.yaml (80 runs), NPE, PM mock, diagnostics (a few minutes)."""
    path, _ = _miniature_tiny_job(tmp_path, 80, 20, 50, 100)
    res = _invoke("pipeline", path, "--no-progress")
    assert res.exit_code == 0, res.output
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["n_train"] == 60 and summary["n_test"] == 20
    assert set(summary["posterior"]["parameters"]) == {"Omega_m", "sigma8"}
    assert (tmp_path / "out" / "campaign" / "campaign.h5").is_file()
    ckpt = load_checkpoint(tmp_path / "out" / "estimator.pt")
    assert ckpt.names[0].startswith("log_pk[k=")


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore")
def test_sequential_rounds(tmp_path):
    """Two rounds on the Gaussian field: round 2 simulates at posterior draws given x_o, and
    the proposal-corrected posterior still matches the exact one."""
    from cocasbi.inference.config import PipelineConfig
    from cocasbi.inference.pipeline import run_pipeline

    cfg = PipelineConfig.model_validate(
        {**MINI, "estimator": {"model": "nsf", "embedding": "none", "num_transforms": 2,
                               "hidden_features": 20},
         "training": {**MINI["training"], "max_epochs": 30},
         "sequential": {"rounds": 2, "simulations_per_round": 200}})
    res = run_pipeline(cfg, tmp_path, progress=False, echo=lambda s: None)
    ckpt = load_checkpoint(tmp_path / "estimator.pt")
    assert ckpt.extra["rounds"] == 2
    assert ckpt.members[0].summary["n_train"] + ckpt.members[0].summary["n_validation"] == 800
    post = res.summary["parameters"]["A"]
    exact = json.loads((tmp_path / "summary.json").read_text())["exact"]  # the known answer
    assert abs(post["mean"] - exact["mean"]) < 0.5 * exact["std"]
    assert abs(post["std"] / exact["std"] - 1) < 0.3


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore")
def test_sequential_rounds_through_a_campaign(tmp_path):
    """Round 2 of a COLA campaign pipeline plans its own campaign at posterior draws given x_o,
    inside the prior; a job stopped before the estimator was saved resumes that campaign
    instead of simulating again, and ends with the same posterior."""
    from cocasbi.inference.data import training_set

    path, tiny = _miniature_tiny_job(tmp_path, 60, 10, 30, 50,
                                     sequential={"rounds": 2, "simulations_per_round": 20})
    out = tmp_path / "out"
    first = _invoke("pipeline", path, "--no-progress")
    assert first.exit_code == 0, first.output
    ckpt = load_checkpoint(out / "estimator.pt")
    assert ckpt.extra["rounds"] == 2
    member = ckpt.members[0].summary
    assert member["round"] == 1 and member["n_train"] + member["n_validation"] == 50 + 20
    theta = training_set(out / "round_1" / "campaign.h5").theta.numpy()
    assert theta.shape == (20, 2)
    for j, (lo, hi) in enumerate(tiny["campaign"]["prior"].values()):
        assert np.all((theta[:, j] >= lo) & (theta[:, j] <= hi))
    assert len(np.unique(theta[:, 0])) == 20  # posterior draws, not one point repeated
    results = sorted((out / "round_1" / "results").iterdir())
    stamps = [p.stat().st_mtime_ns for p in results]
    summary = json.loads((out / "summary.json").read_text())["posterior"]

    (out / "estimator.pt").unlink()  # as if stopped during the second training
    second = _invoke("pipeline", path, "--no-progress")
    assert second.exit_code == 0, second.output
    assert "[simulate] reused" in second.output
    assert [p.stat().st_mtime_ns for p in sorted((out / "round_1" / "results").iterdir())] \
        == stamps
    assert json.loads((out / "summary.json").read_text())["posterior"] == summary
