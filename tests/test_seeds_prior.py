"""The seed tree and the box prior: distinct streams, reproducible designs, sbi's BoxUniform."""

import numpy as np
import pytest
import torch

from cocasbi.prior import DEFAULT_PRIOR, BoxPrior, latin_hypercube
from cocasbi.seeds import (
    Stream,
    as_seed_sequence,
    describe,
    design_seed,
    from_description,
    simulation_seed,
    stream_seed,
)


def _state(seq):
    return tuple(seq.generate_state(4))


def test_streams_are_distinct_and_reproducible():
    master = 123
    states = [_state(design_seed(master))]
    states += [_state(simulation_seed(master, i)) for i in range(50)]
    states += [_state(stream_seed(master, s, j)) for s in Stream for j in range(5)]
    assert len(set(states)) == len(states)  # no two purposes share a stream
    assert _state(simulation_seed(master, 7)) == _state(simulation_seed(master, 7))
    # the campaign convention, unchanged: SeedSequence(master, spawn_key=(i,))
    assert _state(simulation_seed(master, 7)) == _state(
        np.random.SeedSequence(master, spawn_key=(7,)))


def test_seed_description_round_trips_both_forms():
    for seed in (42, simulation_seed(3, 11), stream_seed(3, Stream.OBSERVATION, 2)):
        rebuilt = from_description(describe(seed))
        assert _state(rebuilt) == _state(as_seed_sequence(seed))


@pytest.mark.parametrize("bad", [-1, 1.5, "3", True])
def test_bad_master_seeds_are_refused(bad):
    with pytest.raises((ValueError, TypeError)):
        design_seed(bad)


def test_simulation_index_range():
    with pytest.raises(ValueError, match="outside"):
        simulation_seed(0, 2**31)


def test_latin_hypercube_has_one_point_per_slice():
    n, d = 37, 3
    unit = latin_hypercube(n, d, np.random.default_rng(0))
    assert unit.shape == (n, d) and np.all((unit >= 0) & (unit < 1))
    for axis in range(d):
        assert sorted(np.floor(unit[:, axis] * n).astype(int)) == list(range(n))


def test_design_is_inside_the_box_and_reproducible():
    prior = BoxPrior.from_dict({"sigma8": (0.7, 0.9), "Omega_m": (0.2, 0.4)},
                               names=("Omega_m", "sigma8"))
    for kind in ("latin_hypercube", "uniform"):
        a = prior.design(64, np.random.default_rng(design_seed(5)), kind)
        b = prior.design(64, np.random.default_rng(design_seed(5)), kind)
        np.testing.assert_array_equal(a, b)
        assert prior.contains(a).all()
    # uniform draws fill the box: mean within 4 sigma of the centre
    u = prior.design(4000, np.random.default_rng(1), "uniform")
    sigma = prior.width / np.sqrt(12 * 4000)
    assert np.all(np.abs(u.mean(axis=0) - prior.center) < 4 * sigma)
    assert prior.corners().shape == (4, 2) and prior.contains(prior.corners()).all()


@pytest.mark.parametrize("bounds, message", [
    ({"Omega_m": (0.4, 0.2)}, "below"),
    ({"Omega_m": (0.2, float("inf"))}, "finite"),
    ({"Omega_m": (float("nan"), 0.3)}, "finite"),
    ({"Omega_m": (-0.1, 0.3)}, "Omega_m"),
    ({"Omega_m": (0.2, 1.5)}, "Omega_m"),
    ({"sigma8": (0.5, 1e3)}, "sigma8"),
    ({"w0": (-1.2, -0.8)}, "unknown parameter"),
    ({"Omega_m": (0.2,)}, "low, high"),
])
def test_bad_priors_are_named(bounds, message):
    with pytest.raises(ValueError, match=message):
        BoxPrior.from_dict(bounds)


def test_check_names_the_parameter_outside_the_box():
    with pytest.raises(ValueError, match="sigma8=1.2 outside the prior"):
        DEFAULT_PRIOR.check([0.3, 1.2])
    with pytest.raises(ValueError, match="shape"):
        DEFAULT_PRIOR.check([0.3, 0.8, 1.0])


def test_sbi_box_uniform_has_the_same_support():
    prior = DEFAULT_PRIOR.to_sbi()
    inside = torch.tensor([[0.3, 0.8]])
    outside = torch.tensor([[0.45, 0.8]])
    density = 1.0 / float(np.prod(DEFAULT_PRIOR.width))
    assert torch.exp(prior.log_prob(inside)).item() == pytest.approx(density, rel=1e-5)
    assert torch.isinf(prior.log_prob(outside)).all()
    draws = prior.sample((2000,)).numpy()
    assert DEFAULT_PRIOR.contains(draws.astype(np.float64)).all()


def test_derived_master_seeds_start_new_trees():
    from cocasbi.seeds import derived_master_seed

    seeds = [derived_master_seed(9, Stream.ROUND, r) for r in range(20)]
    assert len(set(seeds)) == 20 and all(0 <= s < 2**63 for s in seeds)
    assert seeds[3] == derived_master_seed(9, Stream.ROUND, 3)
    # a round's phases never coincide with the parent's (or a neighbouring master's)
    parent = {_state(simulation_seed(m, i)) for m in (9, 10) for i in range(100)}
    child = {_state(simulation_seed(seeds[1], i)) for i in range(100)}
    assert not parent & child
