"""COCA invariants (docs/physics.md): frames plug into the COLA loop without changing physics."""

import numpy as np
import pytest

from cocasbi.config import load_config
from cocasbi.cosmology import Cosmology
from cocasbi.gravity import ForceSolver
from cocasbi.ic import LPTFields
from cocasbi.nbody import (
    OracleFrame,
    ResidualRecorder,
    Stepper,
    TimeSchedule,
    force_intervals,
    force_schedule,
)
from cocasbi.simulation import simulate
from cocasbi.stats.metrics import rms_displacement

CFG = load_config("tiny").replace(simulation={"n_steps": 6})
COCA = CFG.replace(simulation={"method": "coca"})


@pytest.fixture(scope="module")
def cola():
    recorder = ResidualRecorder()
    res = simulate(CFG, observers=[recorder])
    return res, recorder.frame()


def _rms(a, b):
    return rms_displacement(a, b, CFG.simulation.box_size)


def test_recorder_covers_every_query_time(cola):
    res, oracle = cola
    np.testing.assert_array_equal(oracle.times, res.schedule.query_times())
    assert not oracle.momenta[0].any()  # COLA residual starts at zero


def test_zero_frame_with_all_forces_is_cola_bit_for_bit(cola):
    res, oracle = cola
    zero = oracle.scaled(0.0)
    coca = simulate(COCA, frame=zero, lpt=res.lpt)
    np.testing.assert_array_equal(coca.final.positions, res.final.positions)
    np.testing.assert_array_equal(coca.final.momenta, res.final.momenta)
    assert coca.n_force_evaluations == res.n_force_evaluations


def test_oracle_frame_without_forces_reproduces_cola_bit_for_bit(cola):
    res, oracle = cola
    coca = simulate(COCA, frame=oracle, forces="none", lpt=res.lpt)
    assert coca.n_force_evaluations == 0
    np.testing.assert_array_equal(coca.final.positions, res.final.positions)
    np.testing.assert_array_equal(coca.final.momenta, res.final.momenta)


@pytest.mark.parametrize("forces", ["even:3", "last:2", "first:1", "all"])
def test_oracle_frame_with_any_forces_reproduces_cola_to_round_off(cola, forces):
    res, oracle = cola
    coca = simulate(COCA, frame=oracle, forces=forces, lpt=res.lpt)
    assert _rms(coca.final.positions, res.final.positions) < 1e-9
    np.testing.assert_allclose(coca.final.momenta, res.final.momenta, atol=1e-8)


def test_any_frame_with_all_forces_equals_cola(cola):
    res, oracle = cola
    rng = np.random.default_rng(1)
    noise = rng.normal(0, 5.0, oracle.momenta.shape[1:])  # time-coherent, big
    wrong = OracleFrame(oracle.times, oracle.momenta * 0.3 + noise[None] * oracle.times[:, None,
                                                                                       None])
    coca = simulate(COCA, frame=wrong, lpt=res.lpt)
    assert _rms(coca.final.positions, res.final.positions) < 1e-9


@pytest.mark.parametrize("kind", ["half", "noisy"])
def test_wrong_frame_is_corrected_as_forces_are_added(cola, kind):
    res, oracle = cola
    if kind == "half":
        frame = oracle.scaled(0.5)
    else:
        noise = np.random.default_rng(2).normal(0, 3.0, oracle.momenta.shape[1:])
        frame = OracleFrame(oracle.times, oracle.momenta + noise[None] * oracle.times[:, None,
                                                                                     None])
    errors = [_rms(simulate(COCA, frame=frame, forces=f, lpt=res.lpt).final.positions,
                   res.final.positions) for f in ("none", "every:3", "every:2", "all")]
    assert errors[0] > errors[1] > errors[2] > errors[3], errors
    assert errors[0] > 0.1 and errors[3] < 1e-9, errors


def test_frame_start_momentum_is_minus_p_ml(cola):
    # A frame carrying p_ML(a0) != 0: COCA must start from p_c = −p_ML(a0) (p = p_LPT exactly).
    res, oracle = cola
    offset = np.random.default_rng(3).normal(0, 1.0, oracle.momenta.shape[1:])
    shifted = OracleFrame(oracle.times, oracle.momenta + offset[None])
    coca = simulate(COCA, frame=shifted, lpt=res.lpt)  # all forces: frame telescopes out
    assert _rms(coca.final.positions, res.final.positions) < 1e-9


def test_coca_converges_with_steps_like_cola():
    ref = simulate(CFG.replace(simulation={"n_steps": 60}))
    errs = []
    for steps in (5, 10, 20):
        cfg = CFG.replace(simulation={"n_steps": steps})
        rec = ResidualRecorder()
        base = simulate(cfg, observers=[rec], lpt=ref.lpt)
        frame = rec.frame().scaled(0.5)  # a poor frame, forces everywhere
        coca = simulate(cfg.replace(simulation={"method": "coca"}), frame=frame, lpt=ref.lpt)
        assert _rms(coca.final.positions, base.final.positions) < 1e-9
        errs.append(_rms(coca.final.positions, ref.final.positions))
    assert errs[0] > errs[1] > errs[2], errs


def test_coca_is_deterministic(cola):
    res, oracle = cola
    runs = [simulate(COCA, frame=oracle.scaled(0.7), forces="even:3", lpt=res.lpt).final
            for _ in range(2)]
    np.testing.assert_array_equal(runs[0].positions, runs[1].positions)
    np.testing.assert_array_equal(runs[0].momenta, runs[1].momenta)


def test_frame_method_mismatch_is_an_error(cola):
    res, oracle = cola
    with pytest.raises(ValueError, match="needs a frame"):
        simulate(COCA)
    with pytest.raises(ValueError, match="only used by method 'coca'"):
        simulate(CFG, frame=oracle)
    with pytest.raises(ValueError, match="cannot skip forces"):
        simulate(CFG.replace(simulation={"method": "pm"}), forces="none")


def test_non_finite_simulation_is_a_clear_error(cola):
    res, oracle = cola
    broken = oracle.scaled(1.0)
    broken.momenta[3, 0, 0] = np.nan  # one NaN in the frame at one query time
    with pytest.raises(FloatingPointError, match="non-finite positions or momenta"):
        simulate(COCA, frame=broken, forces="none", lpt=res.lpt)


# ---------------------------------------------------------------------------- interval kicks
@pytest.mark.parametrize("final_kick", [True, False])
@pytest.mark.parametrize("method", ["pm", "cola", "coca"])
def test_interval_kicks_with_every_force_are_fine_bit_for_bit(cola, method, final_kick):
    res, oracle = cola
    cfg = CFG.replace(simulation={"method": method, "final_kick": final_kick})
    frame = oracle.scaled(0.5) if method == "coca" else None
    fine = simulate(cfg, frame=frame, lpt=res.lpt)
    interval = simulate(cfg.replace(simulation={"kicks": "interval"}), frame=frame, lpt=res.lpt)
    np.testing.assert_array_equal(interval.final.positions, fine.final.positions)
    np.testing.assert_array_equal(interval.final.momenta, fine.final.momenta)


def _stepper(res, frame, forces, **kw):
    sim = CFG.simulation
    solver = ForceSolver(sim.n_mesh, sim.box_size, res.cosmology.Omega_m)
    mask = force_schedule(forces, res.schedule.n_steps)
    return Stepper(res.cosmology, res.lpt, res.schedule, solver, sim.box_size, method="coca",
                   frame=frame, forces=mask, **kw).run()


@pytest.mark.parametrize("forces", ["even:3", "last:2", "first:1", "every:2", [2]])
def test_perfect_frame_with_interval_kicks_is_cola(cola, forces):
    # With the oracle frame the residual force F − F_LPT − F_ML vanishes: any force schedule
    # reproduces the COLA run the frame was recorded from. Taking g = F − F_LPT (ignoring the
    # frame's own force) kicks the frame's acceleration a second time over the interval.
    res, oracle = cola
    coca = simulate(COCA.replace(simulation={"kicks": "interval"}), frame=oracle,
                    forces=forces, lpt=res.lpt)
    assert _rms(coca.final.positions, res.final.positions) < 1e-9
    np.testing.assert_allclose(coca.final.momenta, res.final.momenta, atol=1e-8)
    lpt_only = _stepper(res, oracle, forces, kicks="interval", frame_force=False)
    assert _rms(lpt_only.x, res.final.positions) > 0.1


@pytest.mark.parametrize("final_kick", [True, False])
def test_cola_with_every_other_force_and_interval_kicks_is_cola_with_half_the_steps(
        cola, final_kick):
    # 2m fine steps, forces at every other boundary: each kick covers the coarse half step and
    # fine drifts add up to the coarse one, so interval kicks give COLA-m to round-off; fine
    # kicks (each force over one fine step) are more than 1 Mpc/h away from it.
    res, _ = cola
    coarse = simulate(CFG.replace(simulation={"n_steps": 3, "final_kick": final_kick}),
                      lpt=res.lpt)
    fine_cfg = CFG.replace(simulation={"final_kick": final_kick})
    fine = simulate(fine_cfg, forces="every:2", lpt=res.lpt)
    interval = simulate(fine_cfg.replace(simulation={"kicks": "interval"}), forces="every:2",
                        lpt=res.lpt)
    assert _rms(interval.final.positions, coarse.final.positions) < 1e-10
    np.testing.assert_allclose(interval.final.momenta, coarse.final.momenta, atol=1e-10)
    assert _rms(fine.final.positions, coarse.final.positions) > 0.3


@pytest.mark.parametrize("seed", range(6))
def test_interval_kicks_add_up_to_the_whole_run(seed):
    # No LPT displacement and a uniform force: p_c at the end is the force times the sum of
    # every kick factor, which must be K(a_0, a_n) for any schedule with a force at a_n (and
    # K(a_0, end of the last interval) without one).
    rng = np.random.default_rng(seed)
    n = int(rng.integers(3, 12))
    sched = TimeSchedule.build(0.05, 1.0, n, "log" if seed % 2 else "linear")
    mask = rng.random(n + 1) < 0.4
    mask[n] = seed < 4
    mask[int(rng.integers(0, n))] = True
    psi = np.zeros((8, 3))  # a 2³ lattice that does not move
    lpt = LPTFields(psi, psi, box_size=8.0, n_mesh=2)
    cosmo = Cosmology.from_config(CFG.cosmology)
    f = np.array([1.0, -2.0, 0.5])
    s = Stepper(cosmo, lpt, sched, lambda x: np.ones_like(x) * f, 8.0, method="cola",
                forces=mask, kicks="interval").run()
    start, end = force_intervals(sched, mask)
    last = np.flatnonzero(mask)[-1]
    total = cosmo.kick_factor(float(sched.boundaries[0]), float(end[last]))
    np.testing.assert_allclose(s.p_c, np.broadcast_to(f * total, s.p_c.shape), rtol=1e-12)
    if mask[n]:
        assert end[last] == sched.boundaries[-1]
    # consecutive intervals tile [a_0, end of the last one]
    idx = np.flatnonzero(mask)
    np.testing.assert_array_equal(start[idx[1:]], end[idx[:-1]])
    assert np.all(start[idx] <= end[idx]) and np.isnan(start[~mask]).all()


class _EveryBoundary:
    """An observer naming every boundary: the stepper then collapses no step."""

    def __init__(self, times):
        self.times = set(float(t) for t in times)

    def __call__(self, event, a, stepper):
        pass


@pytest.mark.parametrize("forces", ["even:3", [2, 5]])
def test_interval_kicks_with_an_emulated_frame_collapse_like_step_by_step(forces):
    from cocasbi.frame import load_frame

    cfg = COCA.replace(simulation={"kicks": "interval"})
    emu = load_frame("tiny")
    fast = simulate(cfg, seed=3, frame=emu, forces=forces)
    slow = simulate(cfg, seed=3, frame=emu, forces=forces,
                    observers=[_EveryBoundary(fast.schedule.boundaries)])
    fine = simulate(COCA, seed=3, frame=emu, forces=forces)
    scale = np.abs(slow.final.positions).max()
    np.testing.assert_allclose(fast.final.positions, slow.final.positions, rtol=0,
                               atol=1e-12 * scale)
    assert _rms(fast.final.positions, fine.final.positions) > 0.05
