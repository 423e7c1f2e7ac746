"""Bad campaign inputs: each ends, at `plan` time and before anything is written, in a one-line
error that names the problem."""

import copy
import os

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from cocasbi.cli import app as cli_app

BASE = {
    "name": "bad", "n_simulations": 4, "master_seed": 1, "design": "latin_hypercube",
    "prior": {"Omega_m": [0.25, 0.35], "sigma8": [0.7, 0.9]},
    "forward": {"config": "tiny", "method": "cola", "forces": "all",
                "parameters": ["Omega_m", "sigma8"], "summaries": ["log_pk"], "kmax": 1.0},
    "execution": {"workers": 1, "threads_per_worker": 1, "timeout": 60},
}
TINY_SIM = {"simulation": {"box_size": 64.0, "n_particles": 16, "n_mesh": 32, "n_steps": 4}}


def edit(path: str, value):
    """A campaign mapping with ``path`` (dotted) set to ``value`` (``...`` deletes it)."""
    data = copy.deepcopy(BASE)
    *parents, last = path.split(".")
    node = data
    for key in parents:
        node = node.setdefault(key, {})
    if value is ...:
        node.pop(last, None)
    else:
        node[last] = value
    return yaml.safe_dump(data, sort_keys=False)


def both(name, params, prior):
    data = copy.deepcopy(BASE)
    data["forward"]["parameters"] = params
    data["prior"] = prior
    return yaml.safe_dump(data, sort_keys=False)


def inline(**sections):
    cfg = copy.deepcopy(TINY_SIM)
    for section, values in sections.items():
        cfg.setdefault(section, {}).update(values)
    return edit("forward.config", cfg)


BASE_YAML = yaml.safe_dump(BASE, sort_keys=False)

CASES = [
    # top level
    ("unknown key", BASE_YAML + "workers: 2\n", "workers"),
    ("duplicate key", BASE_YAML + "n_simulations: 5\n", "duplicate key"),
    ("duplicate prior key", BASE_YAML.replace("  sigma8: [0.7, 0.9]", "  sigma8: [0.7, 0.9]"),
     None),  # placeholder replaced below
    ("random bytes", bytes(np.random.default_rng(1).integers(0, 256, 300, dtype=np.uint8)),
     "YAML"),
    ("top level list", "- 1\n- 2\n", "mapping"),
    ("empty file", "", "n_simulations"),
    ("syntax error", "n_simulations: [1, 2\n", "YAML"),
    ("kind without producer", edit("kind", "pairs"), "producer"),
    ("unimportable factory", edit("producer", {"factory": "nomodule_xyz:make"}), "nomodule_xyz"),
    ("malformed factory", edit("producer", {"factory": "nocolon"}), "factory"),
    ("factory not a string", edit("producer", {"factory": 3}), "factory"),
    ("name not a string", edit("name", 5), "name"),
    ("design unknown", edit("design", "sobol"), "design"),
    # size and seed
    ("n zero", edit("n_simulations", 0), "n_simulations"),
    ("n negative", edit("n_simulations", -1), "n_simulations"),
    ("n 2**31", edit("n_simulations", 2147483648), "n_simulations"),
    ("n huge", edit("n_simulations", 10**30), "n_simulations"),
    ("n bool", edit("n_simulations", True), "n_simulations"),
    ("n string", edit("n_simulations", "10"), "n_simulations"),
    ("n float", edit("n_simulations", 1.5), "n_simulations"),
    ("n missing", edit("n_simulations", ...), "n_simulations"),
    ("seed negative", edit("master_seed", -1), "master_seed"),
    ("seed bool", edit("master_seed", True), "master_seed"),
    ("seed 2**64", edit("master_seed", 2**64), "master_seed"),
    ("seed string", edit("master_seed", "abc"), "master_seed"),
    ("seed nan", BASE_YAML.replace("master_seed: 1", "master_seed: .nan"), "master_seed"),
    # prior
    ("prior infinite", edit("prior.Omega_m", [0.2, float("inf")]), "Omega_m"),
    ("prior nan", edit("prior.sigma8", [float("nan"), 0.9]), "sigma8"),
    ("prior sigma8 1e3", edit("prior.sigma8", [0.7, 1e3]), "sigma8"),
    ("prior reversed", edit("prior.sigma8", [0.9, 0.7]), "sigma8"),
    ("prior empty width", edit("prior.sigma8", [0.8, 0.8]), "sigma8"),
    ("prior one bound", edit("prior.Omega_m", [0.2]), "Omega_m"),
    ("prior three bounds", edit("prior.Omega_m", [0.2, 0.3, 0.4]), "Omega_m"),
    ("prior bool bound", edit("prior.Omega_m", [True, 0.4]), "number"),
    ("prior string bound", edit("prior.Omega_m", ["low", 0.4]), "number"),
    ("prior scalar", edit("prior.Omega_m", 0.3), "Omega_m"),
    ("prior not a mapping", edit("prior", [0.2, 0.4]), "prior"),
    ("prior Omega_m zero", edit("prior.Omega_m", [0.0, 0.4]), "Omega_m"),
    ("prior Omega_m negative", edit("prior.Omega_m", [-0.1, 0.4]), "Omega_m"),
    ("prior Omega_m above 1", edit("prior.Omega_m", [0.2, 1.5]), "Omega_m"),
    ("prior missing parameter", edit("prior.sigma8", ...), "prior names"),
    ("prior extra parameter", edit("prior.h", [0.6, 0.7]), "prior names"),
    ("prior Omega_b above Omega_m", both("b", ["Omega_m", "Omega_b"],
                                          {"Omega_m": [0.25, 0.35], "Omega_b": [0.04, 0.3]}),
     "Omega_b"),
    # forward model
    ("unknown parameter", both("w", ["Omega_m", "w0"], {"Omega_m": [0.2, 0.4],
                                                         "w0": [-1.2, -0.8]}), "w0"),
    ("repeated parameter", edit("forward.parameters", ["Omega_m", "Omega_m"]), "Omega_m"),
    ("parameters a string", edit("forward.parameters", "Omega_m"), "parameters"),
    ("unknown summary", edit("forward.summaries", ["bispectrum_xyz"]), "bispectrum_xyz"),
    ("coca without frame", edit("forward.method", "coca"), "frame"),
    ("frame without coca", edit("forward.frame", "tiny"), "frame"),
    ("missing frame file", BASE_YAML.replace("method: cola", "method: coca\n  frame: "
                                             "missing_frame.npz"), "missing_frame.npz"),
    ("unknown method", edit("forward.method", "nbody"), "method"),
    ("malformed forces", edit("forward.forces", "sometimes"), "sometimes"),
    ("forces bad count", edit("forward.forces", "every:-2"), "every"),
    ("kmin above kmax", edit("forward.kmin", 2.0), "kmin"),
    ("kmin equals kmax", edit("forward.kmin", 1.0), "kmin"),
    ("kmax negative", edit("forward.kmax", -1.0), "kmax"),
    ("kmax bool", edit("forward.kmax", True), "kmax"),
    ("kmin nan", edit("forward.kmin", float("nan")), "kmin"),
    ("dk zero", edit("forward.dk", 0.0), "dk"),
    ("no bin", BASE_YAML.replace("kmax: 1.0", "kmin: 0.001\n  kmax: 0.002"), "bin"),
    ("unknown forward key", edit("forward.smoothing", 2), "smoothing"),
    ("forward not a mapping", edit("forward", 5), "forward"),
    # the simulation config it names
    ("unknown builtin config", edit("forward.config", "no_such_config"), "no_such_config"),
    ("missing config file", edit("forward.config", "nowhere/sim.yaml"), "sim.yaml"),
    ("n_steps true", inline(simulation={"n_steps": True}), "n_steps"),
    ("n_steps string", inline(simulation={"n_steps": "ten"}), "n_steps"),
    ("sigma8 1e3 in config", inline(cosmology={"sigma8": 1e3}), "sigma8"),
    ("Omega_m nan in config", inline(cosmology={"Omega_m": float("nan")}), "Omega_m"),
    ("mesh not a multiple", inline(simulation={"n_mesh": 33}), "n_mesh"),
    ("4096^3 particles", inline(simulation={"n_particles": 4096, "n_mesh": 8192}), "GB"),
    ("box negative", inline(simulation={"box_size": -5.0}), "box_size"),
    # execution
    ("timeout zero", edit("execution.timeout", 0), "timeout"),
    ("timeout negative", edit("execution.timeout", -5), "timeout"),
    ("timeout nan", edit("execution.timeout", float("nan")), "timeout"),
    ("timeout infinite", edit("execution.timeout", float("inf")), "timeout"),
    ("timeout string", edit("execution.timeout", "soon"), "timeout"),
    ("workers negative", edit("execution.workers", -1), "workers"),
    ("workers bool", edit("execution.workers", True), "workers"),
    ("workers absurd", edit("execution.workers", 10**9), "workers"),
    ("threads string", edit("execution.threads_per_worker", "many"), "threads_per_worker"),
    ("dashboard nonsense", edit("execution.dashboard_address", "nonsense"), "dashboard"),
    ("unknown execution key", edit("execution.gpus", 1), "gpus"),
    ("jobqueue system", edit("execution.jobqueue", {"system": "kubernetes"}), "system"),
    ("scheduler and jobqueue", edit("execution.jobqueue", {"system": "slurm"}).replace(
        "execution:", "execution:\n  scheduler: tcp://127.0.0.1:8786"), "jobqueue"),
]
CASES[2] = ("duplicate prior key", BASE_YAML.replace(
    "  sigma8:\n", "  Omega_m:\n  - 0.2\n  - 0.3\n  sigma8:\n", 1), "duplicate key")


def _write(path, text):
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)


def test_there_are_enough_cases():
    assert len(CASES) >= 60 and len({name for name, _, _ in CASES}) == len(CASES)


@pytest.mark.parametrize(("name", "text", "expected"), CASES, ids=[c[0] for c in CASES])
def test_bad_campaign_input(tmp_path, name, text, expected):
    cfg = tmp_path / "campaign.yaml"
    _write(cfg, text)
    out = tmp_path / "out"
    result = CliRunner().invoke(cli_app, ["campaign", "plan", str(cfg), "-d", str(out)])
    lines = result.output.strip().splitlines()
    assert result.exit_code == 2, result.output
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    assert expected.lower() in lines[0].lower(), lines[0]
    assert not out.exists(), "something was written before validation finished"


def test_directory_that_is_a_file(tmp_path):
    cfg = tmp_path / "campaign.yaml"
    cfg.write_text(BASE_YAML)
    target = tmp_path / "taken"
    target.write_text("not a directory")
    result = CliRunner().invoke(cli_app, ["campaign", "plan", str(cfg), "-d", str(target)])
    assert result.exit_code == 2 and "is a file" in result.output
    assert target.read_text() == "not a directory"


def test_config_path_that_is_a_directory(tmp_path):
    result = CliRunner().invoke(cli_app, ["campaign", "plan", str(tmp_path)])
    assert result.exit_code == 2 and "directory" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_missing_campaign_file(tmp_path):
    result = CliRunner().invoke(cli_app, ["campaign", "plan", str(tmp_path / "nope.yaml")])
    assert result.exit_code == 2 and "nope.yaml" in result.output


def test_the_good_base_plans(tmp_path):
    cfg = tmp_path / "campaign.yaml"
    cfg.write_text(BASE_YAML)
    result = CliRunner().invoke(cli_app, ["campaign", "plan", str(cfg), "-d",
                                          str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert os.path.exists(tmp_path / "out" / "plan.h5")
