"""The command line as a user meets it: outputs written, bad input named before any work."""

import numpy as np
from typer.testing import CliRunner

from cocasbi.cli import app
from cocasbi.io.snapshot import read_snapshot
from cocasbi.stats.power import PowerSpectrum

runner = CliRunner()


def test_simulate_writes_snapshot_power_and_plot(tmp_path):
    result = runner.invoke(app, ["simulate", "tiny", "--steps", "2", "--out", str(tmp_path),
                                 "--no-progress"])
    assert result.exit_code == 0, result.output
    snap = read_snapshot(tmp_path / "tiny_cola_seed42.hdf5")
    assert snap.a == 1.0 and snap.positions.shape == (32**3, 3)
    assert snap.provenance["n_force_evaluations"] == 3
    pk = PowerSpectrum.load(tmp_path / "tiny_cola_seed42_pk.h5")
    assert np.all(np.isfinite(pk.power)) and pk.power[0] > 0
    assert (tmp_path / "tiny_cola_seed42_pk.png").stat().st_size > 10_000
    assert "force evaluations" in result.output and "P/P_lin" in result.output


def test_simulate_coca_with_the_shipped_frame(tmp_path):
    result = runner.invoke(app, ["simulate", "tiny", "--frame", "tiny", "--forces", "even:2",
                                 "--steps", "4", "--out", str(tmp_path), "--no-progress",
                                 "--no-plot", "--no-snapshot"])
    assert result.exit_code == 0, result.output
    assert "with 2 force evaluations" in result.output


def test_simulate_coca_with_interval_kicks_moves_the_particles_differently(tmp_path):
    """--kicks interval reaches the stepper: same ICs and forces, other final positions."""
    finals = {}
    for kicks in ("fine", "interval"):
        out = tmp_path / kicks
        result = runner.invoke(app, ["simulate", "tiny", "--frame", "tiny", "--forces", "even:2",
                                     "--steps", "4", "--kicks", kicks, "--out", str(out),
                                     "--no-progress", "--no-plot"])
        assert result.exit_code == 0, result.output
        finals[kicks] = read_snapshot(out / "tiny_coca_seed42.hdf5").positions
    assert not np.allclose(finals["fine"], finals["interval"], atol=1e-3)


def test_bad_input_is_named_before_work(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    cases = [
        (["simulate", "tiny", "--out", str(blocker / "sub")], "not writable"),
        (["simulate", str(tmp_path / "nope.yaml")], "not found"),
        (["simulate", "tiny", "--method", "coca"], "needs --frame"),
        (["simulate", "tiny", "--forces", "last:2"], "needs method coca"),
        (["simulate", "tiny", "--method", "tree"], "simulation.method"),
        (["simulate", "tiny", "--kicks", "long"], "simulation.kicks"),
    ]
    for args, message in cases:
        result = runner.invoke(app, args)
        assert result.exit_code != 0, args
        assert message in result.output, (args, result.output)


def test_every_command_and_option_has_help_text():
    import typer

    from cocasbi.cli import COMMANDS

    root = typer.main.get_command(app)
    missing = []

    def walk(cmd, path):
        for name, sub in (getattr(cmd, "commands", None) or {}).items():
            walk(sub, f"{path} {name}")
        if not (cmd.help or cmd.short_help):
            missing.append(path)
        missing.extend(f"{path} --{p.name}" for p in cmd.params
                       if p.param_type_name == "option" and not p.help and p.name != "help")

    for name in COMMANDS:
        walk(root.get_command(None, name), name)
    assert missing == []


def test_help_does_not_load_heavy_libraries():
    import subprocess
    import sys

    probe = ("import sys; from cocasbi.cli import main; sys.argv = ['cocasbi', '--help']\n"
             "try:\n    main()\nexcept SystemExit:\n    pass\n"
             "print(sorted(m for m in ('numba', 'pyfftw', 'torch', 'dask', 'sbi', 'scipy', "
             "'h5py') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip().splitlines()[-1] == "[]"
    assert all(name in out for name in ("simulate", "campaign", "infer", "certify", "frame"))


def test_frame_train_takes_a_make_data_directory(tmp_path):
    """make-data writes OUT/results/sim_*.h5; `frame train OUT` finds them there."""
    from cocasbi.config import load_config
    from cocasbi.frame import load_frame
    from cocasbi.frame.training.data import make_training_data

    cfg = load_config("tiny").replace(simulation={"n_steps": 3})
    make_training_data(cfg, tmp_path / "data" / "results", 2, master_seed=1, progress=False)
    out = tmp_path / "frame.npz"
    result = runner.invoke(app, ["frame", "train", str(tmp_path / "data"), "-K", "2",
                                 "--out", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert load_frame(out).basis.K == 2
