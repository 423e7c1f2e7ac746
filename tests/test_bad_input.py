"""Bad simulation input, from the API and the CLI: each ends in one clear error naming the
problem, before any work, and nothing is written over a good file.

(Campaign, frame, inference and certification inputs have their own lists beside their tests.)
"""

import math

import pytest
from typer.testing import CliRunner

from cocasbi.cli import app
from cocasbi.config import ConfigError, config_from_dict, load_config
from cocasbi.simulation import simulate

NAN, INF = math.nan, math.inf

#: (section, field, value, text the error must contain)
BAD_VALUES = [
    ("cosmology", "Omega_m", -0.3, "Omega_m"),
    ("cosmology", "Omega_m", 0.0, "Omega_m"),
    ("cosmology", "Omega_m", 1.5, "Omega_m"),
    ("cosmology", "Omega_m", NAN, "Omega_m"),
    ("cosmology", "Omega_m", INF, "Omega_m"),
    ("cosmology", "Omega_m", "0.3", "Omega_m"),
    ("cosmology", "Omega_m", True, "Omega_m"),
    ("cosmology", "sigma8", 0.0, "sigma8"),
    ("cosmology", "sigma8", -1.0, "sigma8"),
    ("cosmology", "sigma8", 1e3, "sigma8"),
    ("cosmology", "sigma8", 1e200, "sigma8"),
    ("cosmology", "sigma8", NAN, "sigma8"),
    ("cosmology", "h", 0.0, "h"),
    ("cosmology", "h", 3.0, "h"),
    ("cosmology", "n_s", 5.0, "n_s"),
    ("cosmology", "Omega_b", 0.5, "Omega_b"),
    ("cosmology", "transfer", "bbks", "transfer"),
    ("simulation", "box_size", 0.0, "box_size"),
    ("simulation", "box_size", -64.0, "box_size"),
    ("simulation", "box_size", NAN, "box_size"),
    ("simulation", "box_size", INF, "box_size"),
    ("simulation", "box_size", "big", "box_size"),
    ("simulation", "box_size", True, "box_size"),
    ("simulation", "n_particles", 1, "n_particles"),
    ("simulation", "n_particles", True, "n_particles"),
    ("simulation", "n_particles", 32.5, "n_particles"),
    ("simulation", "n_particles", "32", "n_particles"),
    ("simulation", "n_mesh", 48, "not a multiple"),
    ("simulation", "n_mesh", True, "n_mesh"),
    ("simulation", "a_init", 0.0, "a_init"),
    ("simulation", "a_init", NAN, "a_init"),
    ("simulation", "a_final", 0.01, "must exceed a_init"),
    ("simulation", "a_final", INF, "a_final"),
    ("simulation", "n_steps", 0, "n_steps"),
    ("simulation", "n_steps", -3, "n_steps"),
    ("simulation", "n_steps", True, "n_steps"),
    ("simulation", "n_steps", 2.5, "n_steps"),
    ("simulation", "schedule", "cubic", "schedule"),
    ("simulation", "schedule", [0.05, 0.5, 0.3, 1.0], "strictly increasing"),
    ("simulation", "schedule", [0.05], "at least two"),
    ("simulation", "schedule", [0.1, 1.0], "start at a_init"),
    ("simulation", "schedule", [0.05, NAN, 1.0], "schedule"),
    ("simulation", "method", "tree", "simulation.method"),
    ("simulation", "pm_factors", "leapfrog", "pm_factors"),
    ("simulation", "kernel", "spline", "kernel"),
    ("simulation", "kernel", "exact", "validated only"),
    ("simulation", "lpt_order", 3, "lpt_order"),
    ("simulation", "snapshots", [2.0], "outside"),
    ("simulation", "snapshots", [NAN], "snapshots"),
    ("simulation", "seed", -1, "seed"),
    ("simulation", "seed", 1.5, "seed"),
    ("simulation", "threads", -1, "threads"),
    ("simulation", "final_kick", "yes", "final_kick"),
    ("simulation", "n_stepz", 3, "n_stepz: unknown key"),
    ("power", "dk_factor", 0.0, "dk_factor"),
    ("power", "dk_factor", NAN, "dk_factor"),
    ("power", "kmax_factor", 2.0, "kmax_factor"),
    ("output", "plot", "sometimes", "plot"),
]


@pytest.mark.parametrize("section, field, value, message", BAD_VALUES,
                         ids=[f"{s}.{f}={v!r}" for s, f, v, _ in BAD_VALUES])
def test_bad_value_is_named(section, field, value, message):
    with pytest.raises(ConfigError, match=message):
        config_from_dict({section: {field: value}})


BAD_FILES = [
    (bytes(range(256)) * 4, "not a text"),
    (b"- just\n- a list\n", "must be a mapping"),
    (b"simulation: [unclosed", "not valid YAML"),
    (b"simulation:\n  n_steps: 3\n  n_steps: 4\n", "duplicate key 'n_steps'"),
    (b"name: a\nname: b\n", "duplicate key 'name'"),
    (b"colour: blue\n", "colour: unknown key"),
    (b"n_simulations: 4\nmaster_seed: 1\nprior: {}\n", "is a campaign configuration"),
]


@pytest.mark.parametrize("content, message", BAD_FILES)
def test_bad_file_is_named(tmp_path, content, message):
    path = tmp_path / "bad.yaml"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match=message):
        load_config(path)


def test_missing_and_misplaced_configs(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="no built-in simulation configuration named 'nosuch'"):
        load_config("nosuch")
    (tmp_path / "dir.yaml").mkdir()
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "dir.yaml")


def test_a_run_that_cannot_fit_is_refused_before_allocating():
    cfg = load_config("tiny").replace(simulation={"n_particles": 4096, "n_mesh": 4096})
    with pytest.raises(MemoryError, match=r"4096\^3 particles .* need about"):
        simulate(cfg)


runner = CliRunner()

BAD_COMMANDS = [
    (["simulate", "tiny", "--steps", "0"], "n_steps"),
    (["simulate", "tiny", "--steps", "abc"], "Invalid value"),
    (["simulate", "tiny", "--seed", "-1"], "seed"),
    (["simulate", "tiny", "--method", "tree"], "simulation.method"),
    (["simulate", "tiny", "--frame", "nosuch.pt"], "nosuch.pt"),
    (["simulate", "tiny", "--forces", "last:2"], "needs method coca"),
    (["simulate", "nosuch"], "no built-in simulation configuration"),
    (["simulate", "/nonexistent/dir/x.yaml"], "not found"),
    (["nosuchcommand"], "No such command"),
]


@pytest.mark.parametrize("args, message", BAD_COMMANDS, ids=[" ".join(a) for a, _ in BAD_COMMANDS])
def test_bad_command_line_ends_in_one_line(args, message):
    result = runner.invoke(app, args)
    assert result.exit_code == 2, (args, result.output)
    assert message in result.output, (args, result.output)
    assert "Traceback" not in result.output
    if "error:" in result.output:
        assert len(result.output.strip().splitlines()) == 1, result.output


def test_a_bad_yaml_file_from_the_cli_is_one_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_bytes(b"simulation:\n  n_steps: 3\n  box_size: .nan\n  method: tree\n")
    result = runner.invoke(app, ["simulate", str(path)])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    assert "simulation.box_size" in lines[0] and "simulation.method" in lines[0]


def test_a_good_file_is_not_overwritten_by_a_failed_run(tmp_path, monkeypatch):
    """A run that fails (here: non-finite results) leaves the previous outputs untouched."""
    args = ["simulate", "tiny", "--steps", "1", "--out", str(tmp_path), "--no-progress"]
    good = runner.invoke(app, args)
    assert good.exit_code == 0, good.output
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert len(before) == 3  # snapshot, P(k), plot

    def nan_run(*_, **__):
        raise FloatingPointError("simulation 'tiny' produced non-finite positions or momenta")

    monkeypatch.setattr("cocasbi.simulation.simulate", nan_run)
    bad = runner.invoke(app, args)
    assert bad.exit_code != 0
    assert bad.output.strip().splitlines()[-1].startswith("error: simulation 'tiny' produced")
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
