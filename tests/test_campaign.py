"""Campaigns: plans, determinism across worker counts, resume after a kill, failures, merge."""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import distributed
import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

from cocasbi.campaign import (
    CampaignConfig,
    ExecutionConfig,
    WorkerLayout,
    campaign_status,
    choose_layout,
    load_campaign_config,
    local_cluster,
    make_plan,
    plan_campaign,
    run_campaign,
    run_task,
)
from cocasbi.cli import app as cli_app
from cocasbi.config import ConfigError
from cocasbi.forward import ForwardSpec
from cocasbi.io.campaign_store import CampaignStore, CorruptResultError, load_campaign
from cocasbi.seeds import simulation_seed

TESTS = Path(__file__).parent


def campaign(directory, n=8, seed=7, timeout=60.0, **forward):
    return CampaignConfig(
        name="test", directory=directory, n_simulations=n, master_seed=seed,
        prior={"Omega_m": (0.25, 0.35), "sigma8": (0.7, 0.9)},
        forward=ForwardSpec(config="tiny", kmax=1.0, **forward),
        execution=ExecutionConfig(timeout=timeout))


class Fake:
    """Cheap deterministic simulator: x = (θ, 3 normals from the seed); optional faults keyed
    by θ; appends the spawn key of every call to ``log``."""

    names = ["t0", "t1", "n0", "n1", "n2"]

    def __init__(self, log=None, sleep=0.0, raises=(), nans=(), hangs=()):
        self.log, self.sleep = log, sleep
        self.raises, self.nans, self.hangs = list(raises), list(nans), list(hangs)

    @staticmethod
    def expected(theta, seed):
        return np.concatenate([theta, np.random.default_rng(seed).standard_normal(3)]).astype(
            np.float32)

    def __call__(self, theta, seed):
        if self.log:
            with open(self.log, "a") as fh:
                fh.write(f"{seed.spawn_key[0]}\n")
        time.sleep(self.sleep)
        if any(np.array_equal(theta, t) for t in self.hangs):
            time.sleep(3600)
        if any(np.array_equal(theta, t) for t in self.raises):
            raise RuntimeError("injected failure")
        x = self.expected(theta, seed)
        if any(np.array_equal(theta, t) for t in self.nans):
            x[3] = np.nan
        return x


@pytest.fixture(scope="module")
def process_client():
    """Two single-threaded worker processes, shared by the tests that need real processes."""
    with local_cluster(WorkerLayout(2, 1)) as cluster:
        with distributed.Client(cluster) as client:
            yield client


# ---------------------------------------------------------------------------- plans
def test_plan_is_a_seeded_latin_hypercube(tmp_path):
    cfg = campaign(tmp_path, n=50)
    plan = make_plan(cfg)
    assert plan.theta.shape == (50, 2) and plan.parameters == ("Omega_m", "sigma8")
    for j, (low, high) in enumerate([(0.25, 0.35), (0.7, 0.9)]):
        strata = np.floor((plan.theta[:, j] - low) / (high - low) * 50).astype(int)
        assert sorted(strata) == list(range(50))  # one point per slice of each axis
    again = make_plan(campaign(tmp_path / "elsewhere", n=50))
    np.testing.assert_array_equal(again.theta, plan.theta)
    assert again.plan_id == plan.plan_id  # the directory is not part of the plan
    assert make_plan(campaign(tmp_path, n=50, seed=8)).plan_id != plan.plan_id
    uniform = make_plan(cfg.model_copy(update={"design": "uniform"}))
    assert uniform.plan_id != plan.plan_id and uniform.theta.min(axis=0)[0] >= 0.25
    # simulation i draws its phases from SeedSequence(master, spawn_key=(i,))
    np.testing.assert_array_equal(plan.seeds, np.arange(50))
    state = plan.task(17).seed_sequence().generate_state(4)
    np.testing.assert_array_equal(
        state, np.random.SeedSequence(7, spawn_key=(17,)).generate_state(4))


def test_campaign_config_errors_name_the_field(tmp_path):
    with pytest.raises(ValueError, match="prior names"):
        CampaignConfig(n_simulations=2, master_seed=0, prior={"Omega_m": (0.2, 0.4)})
    with pytest.raises(ValueError, match="low=0.4 must be below"):
        CampaignConfig(n_simulations=2, master_seed=0,
                       prior={"Omega_m": (0.4, 0.2), "sigma8": (0.7, 0.9)})
    bad = tmp_path / "bad.yaml"
    bad.write_text("n_simulations: 2\nmaster_seed: 0\nprior: {Omega_m: [0.2, 0.4], "
                   "sigma8: [0.7, 0.9]}\nworkers: 2\n")
    with pytest.raises(ConfigError, match="workers"):
        load_campaign_config(bad)
    shipped = load_campaign_config("campaign_tiny")
    assert shipped.forward.parameters == ("Omega_m", "sigma8")
    assert load_campaign_config("campaign_paper").forward.simulation_config().name == "paper"


def test_replanning_differently_needs_force(tmp_path):
    plan_campaign(campaign(tmp_path))
    plan_campaign(campaign(tmp_path))  # identical: kept
    with pytest.raises(Exception, match="different plan"):
        plan_campaign(campaign(tmp_path, n=9))
    store = plan_campaign(campaign(tmp_path, n=9), force=True)
    assert len(store.read_plan()) == 9


def test_worker_layout_fills_cores_without_oversubscribing():
    gb = 1e9
    assert vars(choose_layout(8, 64 * gb, 0.5 * gb)) == {"workers": 8, "threads": 1}
    assert vars(choose_layout(8, 64 * gb, 0.5 * gb, workers=2)) == {"workers": 2, "threads": 4}
    assert vars(choose_layout(8, 64 * gb, 0.5 * gb, threads=2)) == {"workers": 4, "threads": 2}
    assert vars(choose_layout(8, 2 * gb, 0.5 * gb)) == {"workers": 3, "threads": 1}  # memory


# ---------------------------------------------------------------------------- running
def test_same_x_on_one_and_two_workers(tmp_path, thread_client, process_client):
    """Real tiny simulations: the worker count must not change a single bit of x."""
    merged = []
    for name, client in (("one", thread_client), ("two", process_client)):
        store = plan_campaign(campaign(tmp_path / name, n=6))
        report = run_campaign(store.directory, client=client, progress=False,
                              execution=ExecutionConfig(threads_per_worker=1))
        assert report.counts["ok"] == 6
        merged.append(load_campaign(report.merged))
    one, two = merged
    np.testing.assert_array_equal(one.theta, two.theta)
    np.testing.assert_array_equal(one.seed, two.seed)
    assert one.names == two.names and len(one.names) == 9
    for i in range(6):
        np.testing.assert_array_equal(one.x[i], two.x[i], err_msg=f"simulation {i}")
    assert len(set(_workers(report.merged))) == 2  # both processes took part


def test_faults_are_recorded_and_the_rest_completes(tmp_path, process_client):
    store = plan_campaign(campaign(tmp_path, n=10, timeout=3.0))
    plan = store.read_plan()
    theta = plan.theta
    fake = Fake(raises=theta[[1, 6]], nans=theta[[2]], hangs=theta[[4]])
    reports = []
    runner = threading.Thread(daemon=True, target=lambda: reports.append(run_campaign(
        store.directory, fake, client=process_client, progress=False,
        execution=ExecutionConfig(timeout=3.0))))
    runner.start()
    runner.join(timeout=120)
    assert not runner.is_alive(), "the hung simulation hung the campaign"
    report = reports[0]
    data = load_campaign(report.merged)
    expected = ["ok", "error", "nonfinite", "ok", "timeout", "ok", "error", "ok", "ok", "ok"]
    assert data.status.tolist() == expected
    assert "RuntimeError: injected failure" in data.error[1]
    assert "n1" in data.error[2] and "after 3 s" in data.error[4]
    ok = data.ok
    assert np.isnan(data.x[~ok]).all()
    for i in np.flatnonzero(ok):
        np.testing.assert_array_equal(data.x[i], Fake.expected(theta[i],
                                                               plan.task(i).seed_sequence()))
    theta_train, x_train = data.training_set()
    assert theta_train.shape == (6, 2) and np.isfinite(x_train).all()
    failure = json.loads(store.failure_path(1).read_text())
    assert failure["kind"] == "error" and "Traceback" in failure["traceback"]
    # failures are final: a rerun runs nothing and keeps them
    again = run_campaign(store.directory, fake, client=process_client, progress=False)
    assert again.ran == 0 and again.counts == report.counts
    process_client.wait_for_workers(2, timeout=60)  # the restarted worker is back


def test_resume_after_kill(tmp_path, thread_client):
    """Kill a running campaign process (SIGKILL), rerun: exactly the planned set, each
    simulation computed once after the kill, none lost or duplicated."""
    store = plan_campaign(campaign(tmp_path / "c", n=40))
    script = tmp_path / "run.py"
    script.write_text(textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(TESTS)!r})
        from distributed import Client, LocalCluster
        from cocasbi.campaign import run_campaign
        from test_campaign import Fake

        if __name__ == "__main__":
            with LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                              dashboard_address=None) as cluster, Client(cluster) as client:
                run_campaign(sys.argv[1], Fake(sys.argv[2], sleep=0.1), client=client,
                             progress=False)
    """))
    first_log, second_log = tmp_path / "first.log", tmp_path / "second.log"
    proc = subprocess.Popen([sys.executable, str(script), str(store.directory), str(first_log)],
                            start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while len(list(store.results_dir.glob("sim_*.h5"))) < 8:
        assert proc.poll() is None and time.monotonic() < deadline, "campaign did not start"
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    plan = store.read_plan()
    done_at_kill = set(store.scan(plan).done)
    assert 8 <= len(done_at_kill) < 40 and not store.merged_path.exists()

    report = run_campaign(store.directory, Fake(second_log), client=thread_client,
                          progress=False)
    rerun = [int(s) for s in second_log.read_text().split()]
    assert sorted(rerun) == sorted(set(range(40)) - done_at_kill)  # each missing one, once
    assert report.counts == {"ok": 40, "pending": 0, "corrupt": 0}
    names = sorted(p.name for p in store.results_dir.iterdir())
    assert names == [f"sim_{i:06d}.h5" for i in range(40)]  # no temporary files left
    data = load_campaign(report.merged)
    for i in range(40):
        np.testing.assert_array_equal(data.x[i], Fake.expected(plan.theta[i],
                                                               plan.task(i).seed_sequence()))


def test_existing_scheduler_by_address(tmp_path, process_client):
    store = plan_campaign(campaign(tmp_path, n=4))
    address = process_client.scheduler.address
    report = run_campaign(store.directory, Fake(), progress=False,
                          execution=ExecutionConfig(scheduler=address))
    assert report.counts["ok"] == 4
    assert set(_workers(report.merged)) <= set(process_client.scheduler_info()["workers"])


def _workers(merged):
    with h5py.File(merged) as f:
        return [s.decode() for s in f["worker"][...]]


# ---------------------------------------------------------------------------- store
def _run_directly(store, fake):
    plan = store.read_plan()
    for i in range(len(plan)):
        run_task(fake, str(store.directory), plan.task(i), 1)
    return plan


def test_corrupt_and_truncated_results_are_detected_on_merge(tmp_path, thread_client):
    store = plan_campaign(campaign(tmp_path, n=6))
    plan = _run_directly(store, Fake())
    truncated, flipped, foreign = (store.result_path(i) for i in (1, 3, 4))
    truncated.write_bytes(truncated.read_bytes()[:1000])
    with h5py.File(flipped, "r") as f:
        offset = f["x"].id.get_chunk_info(0).byte_offset
    with open(flipped, "r+b") as fh:
        fh.seek(offset + 2)
        byte = fh.read(1)
        fh.seek(offset + 2)
        fh.write(bytes([byte[0] ^ 0xFF]))
    other = dataclasses.replace(plan.task(4), plan_id="0123456789abcdef")  # a sealed file
    store.write_result(other, {"x": np.zeros(5)}, kind="summaries", names=Fake.names)
    with pytest.raises(CorruptResultError) as err:
        store.merge(plan, {})
    assert set(err.value.files) == {truncated, flipped, foreign}
    for path in (truncated, flipped, foreign):
        assert str(path) in str(err.value)
    merged = load_campaign(store.merge(plan, {}, allow_corrupt=True))
    assert merged.status.tolist() == ["ok", "corrupt", "ok", "corrupt", "corrupt", "ok"]
    assert str(flipped) in merged.error[3] and "plan" in merged.error[4]
    # a run sets them aside and recomputes them
    report = run_campaign(store.directory, Fake(), client=thread_client, progress=False)
    assert report.ran == 3 and report.counts["ok"] == 6
    assert len(list(store.corrupt_dir.iterdir())) == 3


def test_run_task_checks_shape_and_is_idempotent(tmp_path):
    store = plan_campaign(campaign(tmp_path, n=3))
    plan = store.read_plan()

    class WrongShape(Fake):
        def __call__(self, theta, seed):
            return np.zeros(2)

    assert run_task(WrongShape(), str(store.directory), plan.task(0), 1) == (0, "error")
    assert "shape (2,)" in json.loads(store.failure_path(0).read_text())["error"]
    log = tmp_path / "calls.log"
    assert run_task(Fake(log), str(store.directory), plan.task(1), 1) == (1, "ok")
    assert run_task(Fake(log), str(store.directory), plan.task(1), 1) == (1, "ok")
    assert run_task(Fake(log), str(store.directory), plan.task(0), 1) == (0, "failed")
    assert log.read_text().split() == ["1"]  # the done and the failed one did not run again
    assert not list(store.running_dir.iterdir())


def test_cli_plan_status_merge(tmp_path):
    cfg_path = tmp_path / "c.yaml"
    cfg_path.write_text(campaign(tmp_path / "out", n=4).to_yaml())
    runner = CliRunner()
    result = runner.invoke(cli_app, ["campaign", "plan", str(cfg_path)])
    assert result.exit_code == 0, result.output
    assert "planned 4 simulations" in result.output
    store = CampaignStore(tmp_path / "out")
    _run_directly(store, Fake())
    store.result_path(2).unlink()
    result = runner.invoke(cli_app, ["campaign", "status", str(store.directory)])
    assert result.exit_code == 0, result.output
    assert "ok        3" in result.output and "pending   1" in result.output
    status = campaign_status(store.directory)
    assert status["ok"] == 3 and not status["merged"]
    result = runner.invoke(cli_app, ["campaign", "merge", str(cfg_path)])
    assert result.exit_code == 0, result.output
    assert load_campaign(store.merged_path).status.tolist() == ["ok", "ok", "pending", "ok"]
    cfg_path.write_text(campaign(tmp_path / "out", n=5).to_yaml())
    result = runner.invoke(cli_app, ["campaign", "status", str(cfg_path)])
    assert result.exit_code == 2 and "planned from another configuration" in result.output


def test_cli_run_end_to_end(tmp_path):
    """`python -m cocasbi campaign run` on real tiny simulations, in a fresh process."""
    cfg_path = tmp_path / "c.yaml"
    cfg_path.write_text(campaign(tmp_path / "out", n=4).to_yaml())
    run = subprocess.run([sys.executable, "-m", "cocasbi", "campaign", "run", str(cfg_path),
                          "--workers", "2", "--no-progress"], capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr
    assert "ok 4" in run.stdout
    assert load_campaign(tmp_path / "out" / "campaign.h5").ok.all()


def test_summaries_match_the_forward_model_and_the_reference(tmp_path, thread_client):
    """x of a small tiny campaign equals, bit for bit, the forward model called directly with
    the same (θ, seed), and agrees with what the campaign layer computed before it became a
    farm of producers (tests/data/campaign_tiny_reference.npz) to float32 round-off: the
    plane-sorted paint adds the particles of a cell in another order (1 ulp of log P)."""
    from cocasbi.forward import ForwardModel

    ref = np.load(TESTS / "data" / "campaign_tiny_reference.npz")
    config = campaign(tmp_path, n=4)
    store = plan_campaign(config)
    report = run_campaign(store.directory, client=thread_client, progress=False,
                          execution=ExecutionConfig(threads_per_worker=1))
    data = load_campaign(report.merged)
    np.testing.assert_array_equal(data.theta, ref["theta"])
    assert data.names == [str(s) for s in ref["names"]]
    np.testing.assert_array_equal(data.k, ref["k"])
    model = ForwardModel.from_spec(config.forward, threads=1)
    direct = np.stack([np.asarray(model(theta, simulation_seed(config.master_seed, i)),
                                  dtype=np.float32) for i, theta in enumerate(data.theta)])
    assert data.x.dtype == np.float32 and data.x.tobytes() == direct.tobytes()
    np.testing.assert_allclose(data.x, ref["x"], rtol=1e-6, atol=1e-6)
    with h5py.File(report.merged) as f:  # the merged layout is unchanged
        assert {"theta", "seed", "x", "names", "k", "status", "error", "worker", "wall_time",
                "finished", "lower", "upper", "provenance"} <= set(f)
