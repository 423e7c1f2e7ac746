"""Configuration validation: bad input fails early with the field named."""

from pathlib import Path

import pytest
import yaml

from cocasbi.config import KINDS, ConfigError, builtin_config_path, config_from_dict, load_config


def test_builtin_configs_load():
    tiny, paper = load_config("tiny"), load_config("paper")
    assert (tiny.simulation.n_particles, tiny.simulation.n_mesh) == (32, 64)
    assert (paper.simulation.box_size, paper.simulation.n_particles,
            paper.simulation.n_mesh) == (128.0, 64, 128)


@pytest.mark.parametrize(
    "data, field",
    [
        ({"cosmology": {"Omega_m": -0.3}}, "cosmology.Omega_m"),
        ({"cosmology": {"sigma8": 0.0}}, "cosmology.sigma8"),
        ({"simulation": {"n_particles": 32, "n_mesh": 48}}, "not a multiple"),
        ({"simulation": {"a_init": 0.5, "a_final": 0.2}}, "must exceed a_init"),
        ({"simulation": {"n_stepz": 3}}, "simulation.n_stepz: unknown key"),
        ({"colour": "blue"}, "colour: unknown key"),
        ({"simulation": {"method": "tree"}}, "simulation.method"),
        ({"simulation": {"kicks": "long"}}, "simulation.kicks: Input should be 'fine' or"),
        ({"simulation": {"kicks": 1}}, "simulation.kicks"),
        ({"simulation": {"snapshots": [2.0]}}, "outside"),
        ({"simulation": {"schedule": [0.05, 0.5, 0.3, 1.0]}}, "strictly increasing"),
    ],
)
def test_invalid_values_name_the_field(data, field):
    with pytest.raises(ConfigError, match=field):
        config_from_dict(data)


def test_config_is_frozen_and_replace_revalidates():
    cfg = load_config("tiny")
    with pytest.raises(Exception, match="frozen"):
        cfg.simulation.n_steps = 3
    assert cfg.replace(simulation={"n_steps": 3}).simulation.n_steps == 3
    assert cfg.replace(simulation={"n_steps": 3}).simulation.box_size == cfg.simulation.box_size
    with pytest.raises(ConfigError, match="not a multiple"):
        cfg.replace(simulation={"n_mesh": 50})


def test_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("simulation: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    good = tmp_path / "ok.yaml"
    good.write_text(yaml.safe_dump({"simulation": {"n_steps": 7}}))
    assert load_config(good).simulation.n_steps == 7


def test_configs_ship_as_package_data_by_kind():
    from importlib import resources

    root = resources.files("cocasbi") / "configs"
    assert not Path(str(root)).is_symlink()  # real files, so wheels and sdists carry them
    for kind in KINDS:
        assert any(p.name.endswith(".yaml") for p in (root / kind).iterdir()), kind


def test_a_config_of_another_kind_is_named_as_such():
    with pytest.raises(ConfigError, match="'campaign_tiny' is a built-in campaign configuration"):
        load_config("campaign_tiny")
    with pytest.raises(ConfigError, match="is a campaign configuration"):
        load_config(builtin_config_path("campaign_tiny", "campaign"))


def test_every_shipped_config_is_recognised_as_its_kind():
    from importlib import resources

    from cocasbi.config import config_kind, read_yaml

    root = resources.files("cocasbi") / "configs"
    for kind in KINDS:
        for path in (root / kind).iterdir():
            if path.name.endswith(".yaml"):
                assert config_kind(read_yaml(Path(str(path)))) == kind, path.name
