"""Campaigns that survive anything: hangs that hold the GIL, lost workers, damaged files,
shrunk plans, full disks, two drivers, a killed driver, a cold numba cache."""

import errno
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import distributed
import numpy as np
import pytest
from typer.testing import CliRunner

from cocasbi.campaign import (
    CampaignConfig,
    CampaignRunError,
    ExecutionConfig,
    WorkerLayout,
    local_cluster,
    plan_campaign,
    run_campaign,
)
from cocasbi.cli import app as cli_app
from cocasbi.forward import ForwardModel, ForwardSpec
from cocasbi.io.campaign_store import (
    DIGEST_BYTES,
    CampaignLockedError,
    CampaignStore,
    CorruptResultError,
    load_campaign,
)

TESTS = Path(__file__).parent


def campaign(directory, n=4, seed=3, timeout=60.0, workers=1, **forward):
    return CampaignConfig(
        name="robust", directory=directory, n_simulations=n, master_seed=seed,
        prior={"Omega_m": (0.25, 0.35), "sigma8": (0.7, 0.9)},
        forward=ForwardSpec(config="tiny", kmax=1.0, **forward),
        execution=ExecutionConfig(timeout=timeout, workers=workers, threads_per_worker=1))


class Quick:
    """A producer of kind summaries: x = (θ, 2 normals); hangs (holding the GIL in a C loop,
    or sleeping; ``nap``: sleeps 1 s) for the simulations whose index is in ``hang``."""

    kind = "summaries"
    names = ["t0", "t1", "n0", "n1"]
    merged = ("x",)

    def __init__(self, hang=(), how="gil"):
        self.hang, self.how = set(hang), how

    def __call__(self, theta, seed):
        if seed.spawn_key[0] in self.hang:
            if self.how == "gil":
                sum(range(10**13))  # a pure-C loop: holds the GIL, ignores signals
            time.sleep(1 if self.how == "nap" else 3600)
        rng = np.random.default_rng(seed)
        return {"x": np.concatenate([theta, rng.standard_normal(2)]).astype(np.float32)}

    def provenance(self):
        return {"producer": "Quick"}


def _run_in_thread(limit, **kwargs):
    out = []
    t = threading.Thread(daemon=True, target=lambda: out.append(run_campaign(**kwargs)))
    t.start()
    t.join(timeout=limit)
    assert not t.is_alive(), "the campaign did not finish"
    return out[0]


# ---------------------------------------------------------------------------- hangs
def test_a_gil_holding_hang_ends_as_a_timeout_and_the_campaign_finishes(tmp_path):
    """A simulation that holds the GIL forever (timeout 1 s) is recorded as a timeout, its
    worker killed and replaced, and the rest of the campaign completes."""
    store = plan_campaign(campaign(tmp_path, n=3, timeout=1.0))
    report = _run_in_thread(180, directory=store.directory, simulator=Quick(hang={0}),
                            progress=False)
    data = load_campaign(report.merged)
    assert data.status.tolist() == ["timeout", "ok", "ok"]
    assert "after 1 s" in data.error[0] and "killed" in data.error[0]


@pytest.mark.slow
def test_gil_holding_hangs_in_a_row(tmp_path):
    """Three such hangs in a row, one worker: each is killed and replaced in turn."""
    store = plan_campaign(campaign(tmp_path, n=6, timeout=1.0))
    report = _run_in_thread(240, directory=store.directory, simulator=Quick(hang={0, 1, 2}),
                            progress=False)
    data = load_campaign(report.merged)
    assert data.status.tolist() == ["timeout"] * 3 + ["ok"] * 3
    assert all("after 1 s" in e for e in data.error[:3])
    assert report.counts["timeout"] == 3 and report.counts["ok"] == 3


def test_no_worker_left_on_a_joined_cluster_fails_clearly(tmp_path, monkeypatch):
    from cocasbi.campaign import executor

    store = plan_campaign(campaign(tmp_path, n=2))
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                                  dashboard_address=None) as cluster:
        with distributed.Client(cluster) as client:
            monkeypatch.setattr(executor.Farm, "n_workers", lambda self: 0)
            monkeypatch.setattr(executor, "NO_WORKER_GRACE", 1.0)
            with pytest.raises(CampaignRunError, match="no Dask worker left"):
                run_campaign(store.directory, Quick(hang={0, 1}, how="nap"), client=client,
                             progress=False, execution=ExecutionConfig(timeout=None),
                             merge=False)


def test_an_owned_cluster_without_workers_is_restarted(tmp_path, monkeypatch):
    from cocasbi.campaign import executor

    store = plan_campaign(campaign(tmp_path, n=2))
    calls = {"n": 0, "restarts": 0}
    n_workers, restart = executor.Farm.n_workers, executor.Farm.restart

    def no_worker_at_first(self):
        calls["n"] += 1
        return 0 if calls["restarts"] == 0 else n_workers(self)

    def counted_restart(self):
        calls["restarts"] += 1
        restart(self)

    monkeypatch.setattr(executor.Farm, "n_workers", no_worker_at_first)
    monkeypatch.setattr(executor.Farm, "restart", counted_restart)
    monkeypatch.setattr(executor, "NO_WORKER_GRACE", 0.5)
    report = _run_in_thread(240, directory=store.directory,
                            simulator=Quick(hang={0, 1}, how="nap"), progress=False,
                            execution=ExecutionConfig(workers=1, timeout=None))
    assert calls["restarts"] == 1
    assert report.counts["ok"] == 2


# ---------------------------------------------------------------------------- files
def _sealed_result(tmp_path):
    store = plan_campaign(campaign(tmp_path, n=2))
    plan = store.read_plan()
    from cocasbi.campaign import run_task

    run_task(Quick(), str(store.directory), plan.task(0), 1)
    return store, plan, store.result_path(0)


def _sweep(store, plan, path, positions):
    original = path.read_bytes()
    good = store.read_result(path, plan)
    for pos in positions:
        damaged = bytearray(original)
        damaged[pos] ^= 0x5A
        path.write_bytes(bytes(damaged))
        with pytest.raises(CorruptResultError):
            store.read_result(path, plan)  # detected before HDF5 parses: never a silent change
    path.write_bytes(original)
    again = store.read_result(path, plan)
    np.testing.assert_array_equal(again.x, good.x)


def test_byte_flips_anywhere_are_detected(tmp_path):
    store, plan, path = _sealed_result(tmp_path)
    size = path.stat().st_size
    rng = np.random.default_rng(0)
    positions = [0, 14, 15, 78, DIGEST_BYTES - 1, DIGEST_BYTES, size - 1,
                 *rng.integers(0, size, 50)]
    _sweep(store, plan, path, positions)


@pytest.mark.slow
def test_byte_flip_sweep_over_every_position(tmp_path):
    store, plan, path = _sealed_result(tmp_path)
    _sweep(store, plan, path, range(path.stat().st_size))


def test_damaged_files_are_set_aside_and_recomputed(tmp_path, thread_client):
    store = plan_campaign(campaign(tmp_path, n=4))
    run_campaign(store.directory, Quick(), client=thread_client, progress=False)
    path = store.result_path(2)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptResultError, match="sim_000002.h5: SHA-256 digest mismatch"):
        store.merge(store.read_plan(), {})
    report = run_campaign(store.directory, Quick(), client=thread_client, progress=False)
    assert report.ran == 1 and report.counts["ok"] == 4
    assert [p.name.split(".")[0] for p in store.corrupt_dir.iterdir()] == ["sim_000002"]


def test_layout_disagreement_is_named(tmp_path, thread_client):
    store = plan_campaign(campaign(tmp_path, n=3))

    class Other(Quick):
        names = ["a", "b", "c", "d"]

    run_campaign(store.directory, Quick(), client=thread_client, progress=False, indices=[0])
    with pytest.raises(Exception, match="result 0 disagrees"):
        run_campaign(store.directory, Other(), client=thread_client, progress=False)


def test_files_outside_a_shrunk_plan_are_set_aside(tmp_path, thread_client):
    """plan --force with fewer simulations: the old results beyond the plan are moved aside
    (no IndexError) and the rest is recomputed for the new plan."""
    store = plan_campaign(campaign(tmp_path, n=6))
    run_campaign(store.directory, Quick(), client=thread_client,
                 progress=False, execution=ExecutionConfig(timeout=None), indices=range(5))
    store.write_failure({"index": 5, "kind": "error", "error": "old"})
    plan_campaign(campaign(tmp_path, n=3, seed=4), force=True)
    report = run_campaign(store.directory, Quick(), client=thread_client, progress=False)
    assert report.counts == {"ok": 3, "pending": 0, "corrupt": 0}
    moved = sorted(p.name.split(".")[0] for p in store.corrupt_dir.iterdir())
    assert moved == ["sim_000000", "sim_000001", "sim_000002", "sim_000003", "sim_000004",
                     "sim_000005"]


# ---------------------------------------------------------------------------- disk
def _enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_disk_full_is_a_crash_record_that_a_plain_resume_retries(tmp_path, thread_client,
                                                                 monkeypatch):
    store = plan_campaign(campaign(tmp_path, n=3))
    with monkeypatch.context() as m:
        m.setattr(CampaignStore, "write_result", _enospc)
        report = run_campaign(store.directory, Quick(), client=thread_client, progress=False)
    assert report.counts["crashed"] == 3
    assert "No space left on device" in load_campaign(report.merged).error[0]
    again = run_campaign(store.directory, Quick(), client=thread_client, progress=False)
    assert again.ran == 3 and again.counts["ok"] == 3


def test_disk_full_everywhere_is_one_clear_error(tmp_path, thread_client, monkeypatch):
    store = plan_campaign(campaign(tmp_path, n=2))
    monkeypatch.setattr(CampaignStore, "write_result", _enospc)
    monkeypatch.setattr(CampaignStore, "write_failure", _enospc)
    with pytest.raises(CampaignRunError, match="No space left on device"):
        run_campaign(store.directory, Quick(), client=thread_client, progress=False)


def test_read_only_directory_is_one_line(tmp_path, monkeypatch):
    cfg_path = tmp_path / "c.yaml"
    cfg_path.write_text(campaign(tmp_path / "out", n=2).to_yaml())

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(tmp_path / "out"))

    monkeypatch.setattr(Path, "mkdir", read_only)
    result = CliRunner().invoke(cli_app, ["campaign", "plan", str(cfg_path)])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "Read-only" in lines[0]
    assert "Traceback" not in result.output


# ---------------------------------------------------------------------------- drivers
def test_a_second_driver_is_refused(tmp_path, thread_client):
    store = plan_campaign(campaign(tmp_path, n=2))
    cfg_path = tmp_path / "c.yaml"
    cfg_path.write_text(campaign(tmp_path, n=2).to_yaml())
    with store.lock():
        with pytest.raises(CampaignLockedError, match="in use by another driver"):
            run_campaign(store.directory, Quick(), client=thread_client, progress=False)
        result = CliRunner().invoke(cli_app, ["campaign", "run", str(cfg_path)])
        assert result.exit_code == 2 and "in use by another driver" in result.output
        assert len(result.output.strip().splitlines()) == 1
    report = run_campaign(store.directory, Quick(), client=thread_client, progress=False)
    assert report.counts["ok"] == 2  # released: the next driver runs


def test_killing_the_driver_leaves_no_worker(tmp_path):
    """SIGKILL the driver while its worker holds the GIL in a C loop: the worker dies too."""
    store = plan_campaign(campaign(tmp_path / "c", n=1, timeout=None))
    script = tmp_path / "driver.py"
    script.write_text(textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(TESTS)!r})
        from cocasbi.campaign import run_campaign
        from test_campaign_robustness import Quick

        if __name__ == "__main__":
            run_campaign(sys.argv[1], Quick(hang={{0}}), progress=False)
    """))
    driver = subprocess.Popen([sys.executable, str(script), str(store.directory)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while (marker := store.read_marker(0)) is None:
        assert driver.poll() is None and time.monotonic() < deadline, "no simulation started"
        time.sleep(0.1)
    worker = int(marker["pid"])
    time.sleep(0.5)  # the worker is inside its C loop
    os.kill(driver.pid, signal.SIGKILL)
    driver.wait()
    deadline = time.monotonic() + 20
    while _alive(worker):
        if time.monotonic() > deadline:
            os.kill(worker, signal.SIGKILL)
            pytest.fail(f"worker {worker} outlived its driver")
        time.sleep(0.1)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


# ---------------------------------------------------------------------------- processes
def test_dashboard_is_off_and_everything_on_loopback():
    assert ExecutionConfig().dashboard_address is None
    assert ExecutionConfig(dashboard_address=True).dashboard_address == "127.0.0.1:8787"
    assert ExecutionConfig(dashboard_address=":8790").dashboard_address == "127.0.0.1:8790"
    with local_cluster(WorkerLayout(1, 1)) as cluster:
        assert cluster.scheduler_address.startswith("tcp://127.0.0.1:")
        port = cluster.scheduler.http_server.port
        for path in ("/status", "/health", "/metrics"):
            with pytest.raises(urllib.error.HTTPError) as err:
                urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10)
            assert err.value.code == 404


def test_two_simulations_side_by_side_in_one_process():
    """No process-wide lock: two simulations in two threads give the bits of each alone."""
    from cocasbi.config import load_config

    model = ForwardModel(load_config("tiny"), kmax=1.0, threads=1)
    seeds = [np.random.SeedSequence(5, spawn_key=(i,)) for i in range(2)]
    thetas = [np.array([0.3, 0.8]), np.array([0.27, 0.85])]
    alone = [model(t, s) for t, s in zip(thetas, seeds, strict=True)]
    together = [None, None]

    def one(i):
        together[i] = model(thetas[i], seeds[i])

    threads = [threading.Thread(target=one, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for a, b in zip(alone, together, strict=True):
        assert a.tobytes() == b.tobytes()


@pytest.mark.slow
def test_cold_numba_cache(tmp_path):
    """A fresh install: an empty numba cache, real tiny simulations in worker processes."""
    cfg_path = tmp_path / "c.yaml"
    cfg_path.write_text(campaign(tmp_path / "out", n=2, timeout=900.0).to_yaml())
    cache = tmp_path / "numba-cache"
    cache.mkdir()
    env = {**os.environ, "NUMBA_CACHE_DIR": str(cache)}
    run = subprocess.run([sys.executable, "-m", "cocasbi", "campaign", "run", str(cfg_path),
                          "--workers", "1", "--no-progress"], capture_output=True, text=True,
                         timeout=900, env=env)
    assert run.returncode == 0, run.stderr
    assert "ok 2" in run.stdout, run.stdout
    assert load_campaign(tmp_path / "out" / "campaign.h5").ok.all()
