"""The forward model: layout, determinism, parameter plumbing, frames (tiny simulations)."""

import pickle

import numpy as np
import pytest

from cocasbi.config import load_config
from cocasbi.forward import ForwardModel, ForwardSpec
from cocasbi.frame import shipped_frame_path
from cocasbi.stats.power import power_spectrum

THETA = [0.3, 0.8]


@pytest.fixture(scope="module")
def tiny():
    return load_config("tiny")


@pytest.fixture(scope="module")
def model(tiny):
    return ForwardModel(tiny, threads=1, kmax=1.0)


class ZeroFrame:
    """COCA frame with p_ML = 0 everywhere (COCA then equals COLA)."""

    def __init__(self, n_particles):
        self.zeros = np.zeros((n_particles**3, 3))

    def residual_momentum(self, a):
        return self.zeros


class ZeroEmulator:
    """Frame emulator stand-in: counts binds and checks what it is bound to."""

    def __init__(self):
        self.binds = 0

    def bind(self, lpt, cosmo, box_size):
        self.binds += 1
        assert lpt.psi1.shape == (32**3, 3) and box_size == 64.0
        return ZeroFrame(32)


def test_summary_layout_matches_names(model, tiny):
    x = model(THETA, 3)
    assert x.dtype == np.float32
    assert x.shape == (len(model.names),) == model.k.shape
    # the layout is the binned log P(k) of the final particles, in order
    res = model.simulate(THETA, 3)
    ps = power_spectrum(res.final.positions, 64.0, n_mesh=64, kmax=1.0, threads=1)
    np.testing.assert_array_equal(x, np.log(ps.power).astype(np.float32))
    np.testing.assert_array_equal(model.k, ps.k)
    assert model.names == [f"log_pk[k={k:.4f}]" for k in ps.k]
    assert ps.k_edges[-1] <= 1.0 and len(x) == 9


def test_two_summaries_concatenate_in_order(tiny):
    both = ForwardModel(tiny, threads=1, kmax=0.5, summaries=("log_pk", "pk"))
    x = both(THETA, 3)
    m = len(x) // 2
    assert [n.split("[")[0] for n in both.names] == ["log_pk"] * m + ["pk"] * m
    np.testing.assert_array_equal(both.k[:m], both.k[m:])
    np.testing.assert_allclose(np.exp(x[:m]), x[m:], rtol=1e-6)


def test_deterministic_in_theta_and_seed(model):
    seed = np.random.SeedSequence(11, spawn_key=(4,))
    x = model(THETA, seed)
    np.testing.assert_array_equal(x, model(THETA, np.random.SeedSequence(11, spawn_key=(4,))))
    np.testing.assert_array_equal(x, pickle.loads(pickle.dumps(model))(THETA, seed))
    other = model(THETA, np.random.SeedSequence(11, spawn_key=(5,)))
    assert np.abs(x - other).max() > 0.05  # another seed is another realisation


def test_theta_sets_the_named_parameters(tiny, model):
    # σ8 scales the initial amplitude: in the linear regime P ∝ σ8² for the same phases (a
    # 256 Mpc/h box keeps the first bins linear; in tiny's 64 Mpc/h box mode coupling is
    # already 20 % at k_f)
    big = ForwardModel(tiny.replace(simulation={"box_size": 256.0}), threads=1, kmax=0.1)
    lo, hi = big([0.3, 0.7], 5), big([0.3, 0.9], 5)
    assert hi[0] - lo[0] == pytest.approx(2 * np.log(0.9 / 0.7), abs=0.02)
    assert np.all(hi > lo)
    swapped = ForwardModel(tiny.replace(simulation={"box_size": 256.0}), threads=1, kmax=0.1,
                           parameters=("sigma8", "Omega_m"))
    np.testing.assert_array_equal(swapped([0.7, 0.3], 5), lo)
    assert model.config_for([0.25, 0.7]).cosmology.Omega_m == 0.25
    assert model.config_for([0.25, 0.7]).cosmology.h == tiny.cosmology.h


def test_bad_inputs_are_named(tiny, model):
    with pytest.raises(ValueError, match="unknown parameter 'w0'"):
        ForwardModel(tiny, parameters=("Omega_m", "w0"))
    with pytest.raises(ValueError, match="unknown summary"):
        ForwardModel(tiny, summaries=("bispectrum",))
    with pytest.raises(ValueError, match="force schedule"):
        ForwardModel(tiny, forces="sometimes")
    with pytest.raises(ValueError, match="needs a frame"):
        ForwardModel(tiny, method="coca")
    with pytest.raises(ValueError, match="only used by method 'coca'"):
        ForwardModel(tiny, frame=ZeroFrame(32))
    with pytest.raises(ValueError, match="3 entries, expected 2"):
        model([0.3, 0.8, 1.0], 1)
    with pytest.raises(ValueError, match="not a valid cosmology"):
        model([-0.3, 0.8], 1)


def test_frames_reach_the_stepper(tiny, model):
    cola = model(THETA, 7)
    coca = ForwardModel(tiny, threads=1, kmax=1.0, method="coca", frame=ZeroFrame(32))
    np.testing.assert_array_equal(coca(THETA, 7), cola)
    emulator = ZeroEmulator()
    bound = ForwardModel(tiny, threads=1, kmax=1.0, method="coca", frame=emulator)
    np.testing.assert_array_equal(bound(THETA, 7), cola)
    bound(THETA, 8)
    assert emulator.binds == 2  # bound once per simulation


LOADS = []


def counting_loader(path):
    LOADS.append(path)
    return ZeroFrame(32)


def test_frame_path_is_loaded_lazily_once_per_process(tiny, tmp_path):
    loads = LOADS
    loads.clear()
    model = ForwardModel(tiny, threads=1, kmax=1.0, method="coca",
                         frame=tmp_path / "frame.npz", frame_loader=counting_loader)
    assert loads == []
    model(THETA, 1)
    model(THETA, 2)
    assert loads == [tmp_path / "frame.npz"]
    clone = pickle.loads(pickle.dumps(model))  # ships the path, not the loaded frame
    assert clone._frame is None
    clone(THETA, 1)
    assert len(loads) == 2


@pytest.mark.skipif(not shipped_frame_path("tiny").is_file(), reason="no shipped tiny frame")
def test_shipped_frame_runs_from_a_spec():
    spec = ForwardSpec(config="tiny", method="coca", frame="tiny", forces="even:2", kmax=1.0)
    model = ForwardModel.from_spec(spec, threads=1)
    assert model.n_force_evaluations == 2
    assert np.isfinite(model(THETA, 1)).all()
    assert model.provenance()["frame"] == "tiny"
