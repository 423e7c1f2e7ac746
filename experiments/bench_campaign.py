"""Campaign benchmark: forward-model throughput and the campaign layer's overhead.

For each configuration (tiny, paper) it plans N simulations and times

* a bare loop ``model(θ_i, seed_i)`` in this process, one thread, after one warm-up run
  (measured before and after the campaign runs, to see the machine's drift);
* the same N simulations through :func:`cocasbi.campaign.run_campaign` on the campaign's
  LocalCluster (:func:`cocasbi.campaign.local_cluster`) with 1 worker × 1 thread, 2 workers
  × 1 thread and 1 worker × 2 threads, each cluster warmed up by a one-simulation-per-worker
  campaign first. ``run`` covers scan, submission, execution and result files; ``merge`` is
  timed on its own;
* the cold start of a cluster;
* a simulator that sleeps 0.1 s and uses no CPU: whatever its campaign takes beyond
  N × 0.1 s is the campaign layer's own cost per simulation, free of CPU-contention noise;
* the sealed result files: writing (HDF5 + SHA-256 seal) and verifying + reading one summary
  result, and a byte-flip sweep over every byte of one result file (each flip must be caught
  before HDF5 parses the file).

The overhead is reported as worker time outside the simulator per simulation,
(workers × run − Σ in-task simulator time) / N, and for 1 worker × 1 thread also as
(run − bare) / bare. Results go to
stdout as a Markdown table and, with ``--out``, are appended to that file.

Usage::

    python experiments/bench_campaign.py --tiny 40 --paper 8 --out docs/performance.md
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from distributed import Client

from cocasbi.campaign import (
    CampaignConfig,
    ExecutionConfig,
    WorkerLayout,
    local_cluster,
    make_plan,
    plan_campaign,
    run_campaign,
)
from cocasbi.forward import ForwardModel, ForwardSpec
from cocasbi.io.campaign_store import CampaignStore, CorruptResultError
from cocasbi.threads import default_threads

LAYOUTS = ((1, 1), (2, 1), (1, 2))
KMAX = {"tiny": 1.0, "paper": 0.8}  # [h/Mpc], as in configs/campaign_*.yaml


def campaign_config(name: str, n: int, directory: Path, master_seed: int) -> CampaignConfig:
    return CampaignConfig(
        name=f"bench_{name}", directory=directory, n_simulations=n, master_seed=master_seed,
        prior={"Omega_m": (0.2, 0.4), "sigma8": (0.65, 0.95)},
        forward=ForwardSpec(config=name, kmax=KMAX[name]), execution=ExecutionConfig())


def bare_loop(cfg: CampaignConfig) -> float:
    """Seconds for the planned simulations in a plain loop (after one warm-up run)."""
    plan = make_plan(cfg)
    model = ForwardModel.from_spec(cfg.forward, threads=1)
    model(plan.theta[0], np.random.SeedSequence(cfg.master_seed + 1))
    t0 = time.perf_counter()
    for i in range(len(plan)):
        model(plan.theta[i], plan.task(i).seed_sequence())
    return time.perf_counter() - t0


class SleepSimulator:
    """A simulator that takes exactly ``seconds`` and no CPU: what a campaign takes beyond
    N × seconds is the campaign layer's own cost."""

    names = ["a", "b"]

    def __init__(self, seconds: float):
        self.seconds = seconds

    def __call__(self, theta, seed):
        time.sleep(self.seconds)
        return np.asarray(theta, dtype=np.float32)


def campaign_run(cfg: CampaignConfig, workers: int, threads: int, scratch: Path,
                 simulator=None) -> dict:
    """Cold start, warm-up, run and merge times [s] of one campaign on a fresh LocalCluster."""
    t0 = time.perf_counter()
    with local_cluster(WorkerLayout(workers, threads)) as cluster, Client(cluster) as client:
        client.wait_for_workers(workers)
        startup = time.perf_counter() - t0
        execution = ExecutionConfig(threads_per_worker=threads)
        warm = cfg.model_copy(update={"n_simulations": workers,
                                      "master_seed": cfg.master_seed + 1})
        t0 = time.perf_counter()
        run_campaign(plan_campaign(warm, scratch / f"warm_{workers}x{threads}").directory,
                     simulator, client=client, execution=execution, progress=False,
                     merge=False)
        warmup = time.perf_counter() - t0
        store = plan_campaign(cfg, scratch / f"run_{workers}x{threads}")
        t0 = time.perf_counter()
        report = run_campaign(store.directory, simulator, client=client, execution=execution,
                              progress=False, merge=False)
        run = time.perf_counter() - t0
    store = CampaignStore(store.directory)
    plan = store.read_plan()
    scan = store.scan(plan)
    if len(scan.done) != cfg.n_simulations:
        raise RuntimeError(f"{report.counts}: {[f['error'] for f in scan.failed.values()]}")
    t0 = time.perf_counter()
    store.merge(plan, {}, scan=scan)
    merge = time.perf_counter() - t0
    in_task = sum(r.attrs["wall_time"] for r in scan.done.values())
    return {"startup": startup, "warmup": warmup, "run": run, "merge": merge,
            "in_task": in_task}


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (f"{cpu}, {default_threads()} cores, {mem:.0f} GiB, {platform.system()} "
            f"{platform.release()}, Python {platform.python_version()}")


def bench(name: str, n: int, scratch: Path) -> list[str]:
    cfg = campaign_config(name, n, scratch / name, master_seed=1234)
    load = [os.getloadavg()[0]]
    bare = [bare_loop(cfg)]
    runs = {}
    for workers, threads in LAYOUTS:
        runs[workers, threads] = campaign_run(cfg, workers, threads, scratch / name)
        load.append(os.getloadavg()[0])
    bare.append(bare_loop(cfg))
    load.append(os.getloadavg()[0])
    bare_mean = float(np.mean(bare))
    rows = [f"| {name} | bare loop | {n} | {bare_mean:.2f} (runs: {bare[0]:.2f}, "
            f"{bare[1]:.2f}) | {n / bare_mean * 3600:.0f} | | | |"]
    for (workers, threads), r in runs.items():
        outside = (workers * r["run"] - r["in_task"]) / n
        overhead = f"{outside * 1e3:.0f} worker-ms/sim outside the simulator"
        if (workers, threads) == (1, 1):
            overhead += (f"; vs bare {(r['run'] - bare_mean) / bare_mean:+.1%}")
        rows.append(
            f"| {name} | {workers} worker × {threads} thread | {n} | {r['run']:.2f} | "
            f"{n / r['run'] * 3600:.0f} | {overhead} | {r['startup']:.1f} / {r['warmup']:.1f} | "
            f"{r['merge']:.2f} |")
    rows.append(f"| {name} | load average during the runs | | "
                f"{', '.join(f'{x:.1f}' for x in load)} | | | | |")
    return rows


def bench_layer(n: int, seconds: float, scratch: Path) -> list[str]:
    """Campaign-layer cost per simulation, with a simulator that sleeps ``seconds``."""
    cfg = campaign_config("tiny", n, scratch / "sleep", master_seed=99)
    r = campaign_run(cfg, 1, 1, scratch / "sleep", SleepSimulator(seconds))
    per_sim = (r["run"] - n * seconds) / n
    return [f"| sleep {seconds:g} s | 1 worker × 1 thread | {n} | {r['run']:.2f} | "
            f"{n / r['run'] * 3600:.0f} | {per_sim * 1e3:.1f} ms/sim ({per_sim / seconds:.1%})"
            f" | {r['startup']:.1f} / {r['warmup']:.1f} | {r['merge']:.2f} |"]


def bench_files(n: int, scratch: Path) -> list[str]:
    """Cost of sealed result files and a full byte-flip sweep over one of them."""
    cfg = campaign_config("tiny", n, scratch / "files", master_seed=7)
    store = plan_campaign(cfg)
    plan = store.read_plan()
    names = [f"x{i}" for i in range(9)]
    x = np.arange(9, dtype=np.float32)
    t0 = time.perf_counter()
    for i in range(n):
        store.write_result(plan.task(i), {"x": x}, kind="summaries", names=names,
                           k=np.arange(9.0), info={"wall_time": 1.0})
    write = (time.perf_counter() - t0) / n
    t0 = time.perf_counter()
    for i in range(n):
        store.read_result(store.result_path(i), plan)
    read = (time.perf_counter() - t0) / n
    path = store.result_path(0)
    original = path.read_bytes()
    caught = 0
    t0 = time.perf_counter()
    for pos in range(len(original)):
        damaged = bytearray(original)
        damaged[pos] ^= 0x5A
        path.write_bytes(bytes(damaged))
        try:
            store.read_result(path, plan)
        except CorruptResultError:
            caught += 1
    sweep = time.perf_counter() - t0
    path.write_bytes(original)
    return [f"| sealed result files | write + seal / verify + read, {len(original)} B | {n} | "
            f"{write * 1e3:.2f} / {read * 1e3:.2f} ms per file | | | | |",
            f"| byte-flip sweep | every byte of one result file | {len(original)} | "
            f"{sweep:.1f} | | {caught} of {len(original)} flips caught | | |"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tiny", type=int, default=40, help="simulations of tiny.yaml")
    parser.add_argument("--paper", type=int, default=8, help="simulations of paper.yaml")
    parser.add_argument("--sleep-n", type=int, default=50,
                        help="simulations of the 0.1 s sleeping simulator")
    parser.add_argument("--files", type=int, default=200,
                        help="result files written and read for the file-cost row")
    parser.add_argument("--out", type=Path, help="append the results to this Markdown file")
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="bench_campaign_"))
    t0 = time.perf_counter()
    try:
        rows = bench_files(args.files, scratch) if args.files else []
        rows += bench_layer(args.sleep_n, 0.1, scratch) if args.sleep_n else []
        rows += [row for name in ("tiny", "paper") if getattr(args, name)
                 for row in bench(name, getattr(args, name), scratch)]
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    text = "\n".join([
        f"### Campaign throughput, {time.strftime('%Y-%m-%d %H:%M')}",
        "",
        f"Machine: {machine()}.",
        f"Command: `python experiments/bench_campaign.py --tiny {args.tiny} "
        f"--paper {args.paper} --sleep-n {args.sleep_n} --files {args.files}` "
        f"({time.perf_counter() - t0:.0f} s in all).",
        "",
        "| simulator | how | N | seconds for N sims | sims / hour | campaign overhead | "
        "cluster start / warm-up [s] | merge [s] |",
        "|---|---|---|---|---|---|---|---|",
        *rows,
        "",
    ])
    print(text)
    if args.out:
        with open(args.out, "a") as fh:
            fh.write(text + "\n")


if __name__ == "__main__":
    main()
