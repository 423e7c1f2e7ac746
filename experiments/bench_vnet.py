"""Cost of the styled V-net frame emulator: forward pass and one training step.

Prints a Markdown table (parameters, forward time, training-step time) for a few base-channel
widths at 32^3 and 64^3, batch 1, float32. Times are the minimum over ``--repeats`` runs after
one warm-up run, wall clock and process CPU time, with the CPU thread count fixed by
``--threads``.

    python experiments/bench_vnet.py --threads 2
    python experiments/bench_vnet.py --device cuda --sizes 64 128
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import torch
import torch.nn.functional as F

from cocasbi.frame.checkpoint import resolve_device
from cocasbi.frame.vnet import StyledVNet


def _min_time(fn, repeats: int, device: torch.device) -> tuple[float, float]:
    """Minimum wall and process-CPU times of ``fn()`` over ``repeats`` runs after a warm-up [s].

    The CPU time (all threads of this process) is the better guide on a machine shared with
    other jobs, where the wall time of a multi-threaded run can be inflated many-fold.
    """
    fn()
    wall, cpu = [], []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return min(wall), min(cpu)


def bench(width: int, n: int, levels: int, repeats: int, device: torch.device) -> dict:
    """Parameter count, forward time and Adam training-step time for one configuration."""
    torch.manual_seed(0)
    net = StyledVNet(base_channels=width, levels=levels).to(device)
    x = torch.randn(1, 3, n, n, n, device=device)
    style = torch.rand(1, 3, device=device)
    target = torch.randn(1, 3, n, n, n, device=device)
    optimiser = torch.optim.Adam(net.parameters(), lr=1e-4)

    @torch.no_grad()
    def forward():
        net.eval()
        net(x, style)

    def step():
        net.train()
        optimiser.zero_grad(set_to_none=True)
        F.mse_loss(net(x, style), target).backward()
        optimiser.step()

    fwd_wall, fwd_cpu = _min_time(forward, repeats, device)
    step_wall, step_cpu = _min_time(step, repeats, device)
    return {
        "params": sum(p.numel() for p in net.parameters()),
        "forward_s": fwd_wall,
        "forward_cpu_s": fwd_cpu,
        "step_s": step_wall,
        "step_cpu_s": step_cpu,
    }


def main() -> None:
    """Run the benchmark grid and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--widths", type=int, nargs="+", default=[8, 16, 24])
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 64])
    parser.add_argument("--levels", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
    print(
        f"torch {torch.__version__}, device {device} ({name or platform.machine()}), "
        f"{args.threads} threads, levels={args.levels}, batch 1, float32, "
        f"load average at start {os.getloadavg()[0]:.1f}\n"
    )
    print(
        "| base channels | params | grid | forward wall [ms] | forward CPU [ms] "
        "| train step wall [ms] | train step CPU [ms] |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for width in args.widths:
        for n in args.sizes:
            r = bench(width, n, args.levels, args.repeats, device)
            print(
                f"| {width} | {r['params']:,} | {n}^3 | {1e3 * r['forward_s']:.0f} "
                f"| {1e3 * r['forward_cpu_s']:.0f} | {1e3 * r['step_s']:.0f} "
                f"| {1e3 * r['step_cpu_s']:.0f} |",
                flush=True,
            )
    print(f"\nload average at end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
