"""Nothing changes the process at import; simulations set threads for their own thread only."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numba
import numpy as np
import pytest

from cocasbi.config import load_config
from cocasbi.simulation import simulate
from cocasbi.threads import configure_process, numba_threads, worker_environment

IMPORT_EVERYTHING = textwrap.dedent("""
    import importlib, json, os, pkgutil, sys
    import numba, torch
    import cocasbi
    before = (dict(os.environ), numba.get_num_threads(), torch.get_num_threads())
    names = sorted(m.name for m in pkgutil.walk_packages(cocasbi.__path__, "cocasbi.")
                   if not m.name.endswith("__main__"))
    for name in names:
        importlib.import_module(name)
    after = (dict(os.environ), numba.get_num_threads(), torch.get_num_threads())
    changed = sorted(k for k in set(before[0]) | set(after[0])
                     if before[0].get(k) != after[0].get(k))
    print(json.dumps({"modules": names, "env": changed, "numba": [before[1], after[1]],
                      "torch": [before[2], after[2]]}))
""")


def test_importing_every_module_changes_nothing():
    import json

    out = subprocess.run([sys.executable, "-c", IMPORT_EVERYTHING], capture_output=True,
                         text=True, timeout=300, check=True)
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert len(report["modules"]) > 20  # the walk really imported the package
    assert report["env"] == [], f"import changed the environment: {report['env']}"
    assert report["numba"][0] == report["numba"][1]
    assert report["torch"][0] == report["torch"][1]


def test_the_wait_policy_can_be_set_after_importing_cocasbi():
    """libgomp reads OMP policy once, when it loads: no cocasbi import may load it (pyFFTW is
    imported on first use), so configure_process() after the imports still takes effect."""
    probe = ("import sys, cocasbi.simulation, cocasbi.forward, cocasbi.campaign\n"
             "print('pyfftw' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "False"


def test_numba_threads_is_scoped_to_the_block():
    before = numba.get_num_threads()
    with numba_threads(1):
        assert numba.get_num_threads() == 1
    assert numba.get_num_threads() == before


def test_simulation_restores_the_callers_thread_count():
    cfg = load_config("tiny").replace(simulation={"n_steps": 1, "threads": 1})
    before = numba.get_num_threads()
    simulate(cfg)
    assert numba.get_num_threads() == before


def test_worker_environment_never_sets_numba_threads(monkeypatch):
    monkeypatch.delenv("GOMP_SPINCOUNT", raising=False)
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    env = worker_environment(3)
    assert "NUMBA_NUM_THREADS" not in env  # numba refuses a change once its pool runs
    assert env["OMP_NUM_THREADS"] == "3" and env["GOMP_SPINCOUNT"] == "10000"
    monkeypatch.setenv("OMP_WAIT_POLICY", "passive")  # the user's choice wins
    assert "GOMP_SPINCOUNT" not in worker_environment(3)


def test_configure_process_sets_the_calling_thread():
    before = numba.get_num_threads()
    try:
        assert configure_process(1) == 1 and numba.get_num_threads() == 1
    finally:
        numba.set_num_threads(before)


def test_same_bits_for_one_and_two_threads():
    cfg = load_config("tiny").replace(simulation={"n_steps": 3})
    one = simulate(cfg.replace(simulation={"threads": 1})).final.positions
    two = simulate(cfg.replace(simulation={"threads": 2})).final.positions
    np.testing.assert_array_equal(one, two)


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="needs Linux /proc")
@pytest.mark.parametrize("configure", [False, True])
def test_configured_process_keeps_freed_memory_for_the_next_simulation(configure):
    """After configure_process() a freed 128 MB array stays in the heap (resident, reused by
    the next allocation); without it glibc unmaps it at once."""
    code = textwrap.dedent(f"""
        import os, numpy as np
        from cocasbi.threads import configure_process
        if {configure}:
            configure_process(1)
        def rss():
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        a = np.ones(2**24)
        before = rss()
        del a
        print(before - rss())
    """)
    freed = int(subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                               text=True).stdout.strip().splitlines()[-1])
    if configure:
        assert freed < 16e6
    else:
        assert freed > 100e6


@pytest.mark.parametrize("environment", [None, "0", "1"])
def test_configure_process_turns_numpy_huge_page_advice_off_unless_the_user_set_it(environment):
    """configure_process() stops numpy's madvise(MADV_HUGEPAGE) (a first 128³ run stalled
    seconds on huge-page compaction), whether numpy is loaded before or after it; an explicit
    NUMPY_MADVISE_HUGEPAGE wins."""
    import os

    code = textwrap.dedent("""
        import sys
        from cocasbi.threads import configure_process
        early = "numpy" not in sys.modules
        configure_process(1)
        import numpy as np
        print(early, int(np._core.multiarray._get_madvise_hugepage()))
    """)
    env = {k: v for k, v in os.environ.items() if k != "NUMPY_MADVISE_HUGEPAGE"}
    if environment is not None:
        env["NUMPY_MADVISE_HUGEPAGE"] = environment
    for preload in ("", "import numpy\n"):
        out = subprocess.run([sys.executable, "-c", preload + code], check=True, env=env,
                             capture_output=True, text=True).stdout.split()
        assert out[0] == str(not preload)  # both orders are exercised
        assert out[1] == ("1" if environment == "1" else "0")


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc")
def test_estimated_memory_covers_a_measured_run():
    """simulation.estimated_memory (what simulate and campaign planning check before they
    allocate) is not below the measured peak of a 128³ COLA run on a 128³ mesh, above the
    warmed-up process (its 300 MB allowance for the process itself set apart), and not more
    than a third above it: a check that lets an oversized run through, or refuses runs that
    fit, fails here. The peak is reset after the warm-up, whose numba compilation (a cold
    cache) can use more memory than the run."""
    code = textwrap.dedent("""
        import json
        from cocasbi.threads import configure_process
        configure_process(1)
        from cocasbi.config import load_config
        from cocasbi.simulation import estimated_memory, simulate
        def cfg(n):
            return load_config("tiny").replace(simulation={
                "n_particles": n, "n_mesh": n, "box_size": 2.0 * n, "n_steps": 2,
                "threads": 1, "snapshots": []})
        def status(key):  # [bytes]
            with open("/proc/self/status") as f:
                return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key))
        simulate(cfg(16))  # numba kernels compiled (a cold cache) or loaded
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # the peak so far (compilation included) is forgotten
        base = status("VmRSS:")
        simulate(cfg(128))
        print(json.dumps([status("VmHWM:") - base, estimated_memory(cfg(128)) - 300e6]))
    """)
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                         text=True, timeout=300).stdout
    measured, estimated = json.loads(out.strip().splitlines()[-1])
    assert measured <= estimated <= 4 / 3 * measured, (measured, estimated)
