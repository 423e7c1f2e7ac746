"""The COCA frame emulator: training data, time basis, transfer model, Frame object.

(The stepper-level COCA invariants live in tests/test_coca.py.)
"""

from __future__ import annotations

import numpy as np
import pytest

from cocasbi.config import load_config
from cocasbi.cosmology import Cosmology
from cocasbi.frame.basis import TimeBasis
from cocasbi.frame.emulator import FrameEmulator, load_frame
from cocasbi.frame.training.basis import fit_time_basis
from cocasbi.frame.training.data import list_samples, make_training_data, read_sample
from cocasbi.frame.training.transfer import TransferFitter, fit_transfer
from cocasbi.frame.transfer import CosmologyFeatures
from cocasbi.nbody import ResidualRecorder
from cocasbi.seeds import simulation_seed
from cocasbi.simulation import simulate


@pytest.fixture(scope="module")
def small_cfg():
    return load_config("tiny").replace(
        simulation={"n_particles": 16, "n_mesh": 64, "n_steps": 3, "box_size": 32.0})


@pytest.fixture(scope="module")
def small_data(tmp_path_factory, small_cfg):
    out = tmp_path_factory.mktemp("frame_data")
    paths = make_training_data(small_cfg, out, 3, master_seed=5, progress=False)
    return out, paths


# ---------------------------------------------------------------------------- data
def test_data_round_trip(small_cfg, small_data):
    out, paths = small_data
    assert [p.name for p in paths] == ["sim_00000.h5", "sim_00001.h5", "sim_00002.h5"]
    s = read_sample(paths[1])
    n = 16
    assert s.psi1.shape == (n, n, n, 3) and s.psi1.dtype == np.float32
    assert s.residual.shape == (7, n, n, n, 3) and s.residual.dtype == np.float32
    assert s.cosmology["Omega_m"] == pytest.approx(0.31)
    assert s.seed.entropy == 5 and s.seed.spawn_key == (1,)  # simulation_seed(5, 1)
    # the stored data are those of an independent COLA run with the same seed stream
    rec = ResidualRecorder()
    res = simulate(small_cfg, seed=simulation_seed(5, 1), observers=[rec])
    np.testing.assert_array_equal(s.times, res.schedule.query_times())
    np.testing.assert_array_equal(s.psi1, res.lpt.psi1.reshape(n, n, n, 3).astype(np.float32))
    np.testing.assert_array_equal(
        s.residual, rec.frame().momenta.reshape(7, n, n, n, 3).astype(np.float32))
    assert np.all(s.residual[0] == 0)  # COLA residual starts at zero


def test_data_resume_skips_existing(small_cfg, small_data):
    out, paths = small_data
    mtimes = [p.stat().st_mtime_ns for p in paths]
    (out / ".sim_00003.h5.tmp-1").write_bytes(b"partial")  # a crashed writer leaves this
    more = make_training_data(small_cfg, out, 4, master_seed=5, progress=False)
    assert [p.stat().st_mtime_ns for p in more[:3]] == mtimes
    assert more[3].exists() and len(list_samples(out)) == 4
    more[3].unlink()


def test_data_cosmology_prior(small_cfg, tmp_path):
    cfg = small_cfg.replace(simulation={"n_steps": 1})
    prior = {"sigma8": (0.7, 0.9)}
    a = make_training_data(cfg, tmp_path, 2, master_seed=3, prior=prior, progress=False)
    s8 = [read_sample(p, residual=False).cosmology["sigma8"] for p in a]
    assert all(0.7 <= x <= 0.9 for x in s8) and s8[0] != s8[1]


# ---------------------------------------------------------------------------- basis
def test_basis_exact_for_low_rank_data(small_data):
    _, paths = small_data
    basis = fit_time_basis(paths)
    f = basis.functions
    np.testing.assert_allclose(f @ f.T, np.eye(len(f)), atol=1e-10)
    live = basis.eigenvalues > 1e-10 * basis.eigenvalues[0]
    assert 1 <= live.sum() < len(f)  # p_res(a_init) = 0 gives at least one null direction
    assert np.all(np.abs(f[live, 0]) < 1e-12)
    s = read_sample(paths[0])
    r = s.residual.astype(np.float64)
    rec = np.tensordot(basis.functions.T, basis.project(r), axes=(1, 0))
    np.testing.assert_allclose(rec, r, atol=1e-9 * np.abs(r).max())
    # stored times are returned exactly; other times interpolate smoothly in D1
    np.testing.assert_array_equal(basis.values(basis.times[3]), f[:, 3])
    mid = 0.5 * (basis.times[3] + basis.times[4])
    v = basis.values(mid, Cosmology())
    assert min(f[0, 3], f[0, 4]) < v[0] < max(f[0, 3], f[0, 4])  # leading mode is monotone


# ---------------------------------------------------------------------------- transfer
def _gradient_field(rng, n, box):
    """A random curl-free vector field (N³, 3) with a red spectrum."""
    from cocasbi.fft import wavenumbers

    kx, ky, kz = wavenumbers(n, box)
    k2 = kx**2 + ky**2 + kz**2
    k2[0, 0, 0] = 1.0
    phi = np.fft.rfftn(rng.standard_normal((n, n, n))) / k2 ** 1.5
    phi[n // 2], phi[:, n // 2], phi[:, :, n // 2] = 0, 0, 0
    comps = [np.fft.irfftn(1j * k * phi, s=(n, n, n), axes=(0, 1, 2)) for k in (kx, ky, kz)]
    return np.stack(comps, axis=-1).reshape(-1, 3)


def test_transfer_recovers_known_functions():
    """c = T1(k; θ) Ψ1 + T2(k; θ) Ψ2 with known smooth T and a linear σ8 dependence."""
    n, box = 16, 50.0
    rng = np.random.default_rng(np.random.SeedSequence(11))
    feats = CosmologyFeatures(degree=1)

    def t_true(k, s8):
        x = (s8 - 0.81) / 0.1
        return (np.exp(-k) * (1 + 0.3 * x), 0.5 * np.sin(2 * k) - 0.2 * x * k)

    fitter = TransferFitter(n, box, 1, feats)
    sims = []
    for s8 in (0.7, 0.8, 0.9, 0.75):
        p1, p2 = _gradient_field(rng, n, box), _gradient_field(rng, n, box)
        cosmo = {"Omega_m": 0.31 + 0.05 * rng.standard_normal(), "sigma8": s8}
        from cocasbi.frame.transfer import _mode_geometry, _rfft_fields

        u, _ = _mode_geometry(n)
        t1, t2 = t_true(u * 2 * np.pi / box, s8)
        c = sum(np.moveaxis(np.fft.irfftn(t * _rfft_fields(p, n), s=(n,) * 3, axes=(1, 2, 3)),
                            0, -1) for t, p in ((t1, p1), (t2, p2)))
        fitter.add(p1, p2, c.reshape(1, -1, 3), cosmo)
        sims.append((p1, p2, c.reshape(-1, 3), cosmo))
    model = fitter.solve()
    k = model.k_nodes[1:int(np.sqrt(3) * n / 2)]
    for s8 in (0.72, 0.85):
        got = model.transfer(k, {"Omega_m": 0.31, "sigma8": s8})[:, 0]
        np.testing.assert_allclose(got, np.array(t_true(k, s8)), atol=0.02)
    # the piecewise-linear functions reproduce the training targets closely
    p1, p2, c, cosmo = sims[0]
    pred = model.predict(p1, p2, box, cosmo)[0]
    assert np.sqrt(np.mean((pred - c) ** 2) / np.mean(c**2)) < 0.02


# ---------------------------------------------------------------------------- emulator
@pytest.fixture(scope="module")
def held_out():
    """A tiny COLA run from a seed stream the shipped frame never saw (train used master 1)."""
    cfg = load_config("tiny")
    seed = simulation_seed(2, 0)
    rec = ResidualRecorder()
    res = simulate(cfg, seed=seed, observers=[rec])
    return cfg, seed, res, rec.frame()


def test_shipped_frame_beats_zero_on_held_out_seed(held_out):
    cfg, seed, res, oracle = held_out
    emu = load_frame("tiny")
    frame = emu.bind(res.lpt, res.cosmology, cfg.simulation.box_size)
    truth = oracle.momenta
    pred = np.stack([frame.residual_momentum(a) for a in oracle.times])
    frac = np.sqrt(((pred - truth) ** 2).sum() / (truth**2).sum())
    frac_final = np.sqrt(((pred[-1] - truth[-1]) ** 2).sum() / (truth[-1] ** 2).sum())
    print(f"\nfractional frame error, all times {frac:.3f}, a=1 {frac_final:.3f}")
    assert frac < 0.9 and frac_final < 0.9  # zero frame: 1.0; measured 0.80 and 0.78
    assert np.all(pred[0] == 0)  # b_k(a_init) = 0 exactly


def test_frame_evaluates_model_once(held_out):
    cfg, seed, _, _ = held_out
    emu = load_frame("tiny")
    res = simulate(cfg.replace(simulation={"method": "coca"}), frame=emu, seed=seed,
                   forces="none")
    assert emu.n_evaluations == 1 and res.n_force_evaluations == 0
    assert res.frame_seconds < 1.0


def test_transfer_frame_save_load_round_trip(tmp_path, held_out):
    cfg, _, res, _ = held_out
    emu = load_frame("tiny")
    path = emu.save(tmp_path / "f.npz")
    back = load_frame(path)
    assert back.kind == "transfer" and back.K == emu.K and back.meta == emu.meta
    box = cfg.simulation.box_size
    np.testing.assert_array_equal(back.coefficients(res.lpt, res.cosmology, box),
                                  emu.coefficients(res.lpt, res.cosmology, box))


def test_vnet_frame_save_load_round_trip(tmp_path):
    torch = pytest.importorskip("torch")
    from cocasbi.frame.neural import VNetFrameModel
    from cocasbi.frame.vnet import StyledVNet

    n, K = 8, 2
    torch.manual_seed(0)
    net = StyledVNet(6, 3 * K, 2, base_channels=4, levels=1)
    basis = TimeBasis(np.array([0.1, 0.5, 1.0]), np.eye(3)[:K], np.array([2.0, 1.0, 0.0]))
    model = VNetFrameModel(net, K, [1.0, 0.5], [0.3, 0.1], CosmologyFeatures(degree=1))
    emu = FrameEmulator("vnet", basis, model, {"note": "test"})
    rng = np.random.default_rng(0)
    p1, p2 = rng.standard_normal((n**3, 3)), rng.standard_normal((n**3, 3))
    cosmo = {"Omega_m": 0.3, "sigma8": 0.8}
    before = model.predict(p1, p2, 10.0, cosmo)
    back = load_frame(emu.save(tmp_path / "f.pt"))
    assert back.kind == "vnet" and back.meta == {"note": "test"}
    np.testing.assert_allclose(back.model.predict(p1, p2, 10.0, cosmo), before, rtol=1e-6,
                               atol=1e-7)
    assert before.shape == (K, n**3, 3)


def test_coca_with_shipped_frame_beats_cola_at_one_force(held_out):
    """Equal cost in forces, positions only (no force at a = 1 for either run).

    COCA: the 10-step schedule of tiny.yaml with one force, at a_init; COLA: one step (one
    force). Reference: the full 10-step COLA run from the same ICs; metric: rms position
    error [Mpc/h]. (With 2 or more forces COLA with as many steps wins against the shipped
    transfer-function frame: see docs/coca.md. This test pins the regime where it holds.)
    """
    cfg, seed, ref, _ = held_out
    cfg1 = cfg.replace(simulation={"final_kick": False})
    coca = simulate(cfg1.replace(simulation={"method": "coca"}), frame=load_frame("tiny"),
                    seed=seed, forces=[0])
    cola = simulate(cfg1.replace(simulation={"n_steps": 1}), seed=seed)
    assert coca.n_force_evaluations == cola.n_force_evaluations == 1

    def err(r):
        return np.sqrt(np.mean(np.sum((r.final.positions - ref.final.positions) ** 2, axis=1)))

    e_coca, e_cola = err(coca), err(cola)
    print(f"\nrms position error vs COLA-10: COCA(1 force) {e_coca:.3f}, "
          f"COLA(1 step) {e_cola:.3f} Mpc/h")
    assert e_coca < 0.85 * e_cola


def test_fit_transfer_on_stored_data(small_data):
    _, paths = small_data
    basis = fit_time_basis(paths, K=2)
    model = fit_transfer(paths, basis)
    s = read_sample(paths[0])
    c = model.predict(s.psi1.reshape(-1, 3), s.psi2.reshape(-1, 3), s.box_size, s.cosmology)
    assert c.shape == (2, 16**3, 3) and np.all(np.isfinite(c))
