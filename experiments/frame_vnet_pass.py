"""Cost of one V-net frame pass, before and after two changes with identical predictions.

1. periodic padding: three torch.cat (before) against one allocation (``vnet._periodic_pad``);
2. inputs: the FFTs of Ψ1, Ψ2 computed separately for the divergence inputs and for the base
   transfer model (before) against once, shared (``transfer.source_modes``).

paper.yaml ICs (64³, seed 1), the GPU-trained frame ``experiments/results/frame_paper_vnet.pt``;
best of 3 CPU (``time.process_time``) and wall times.

    python experiments/frame_vnet_pass.py [THREADS]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch

import cocasbi.frame.vnet as vnet
from cocasbi.config import load_config
from cocasbi.cosmology import PARAMETERS, Cosmology
from cocasbi.frame import load_frame
from cocasbi.frame.neural import lattice_divergence
from cocasbi.frame.transfer import source_modes
from cocasbi.simulation import initial_conditions


def cat_pad(x, width):
    """The padding before: three concatenations."""
    for dim in (2, 3, 4):
        n = x.shape[dim]
        x = torch.cat([x.narrow(dim, n - width, width), x, x.narrow(dim, 0, width)], dim=dim)
    return x


def best(fn, repeat=3) -> tuple[float, float]:
    out = []
    for _ in range(repeat):
        c0, w0 = time.process_time(), time.perf_counter()
        fn()
        out.append((time.process_time() - c0, time.perf_counter() - w0))
    return min(out)


def main(threads=1):
    torch.set_num_threads(int(threads))
    m = load_frame(Path(__file__).parent / "results" / "frame_paper_vnet.pt").model
    cfg = load_config("paper")
    cosmo = Cosmology.from_config(cfg.cosmology)
    lpt = initial_conditions(cfg, cosmo, seed=1)
    cd = {k: float(getattr(cosmo, k)) for k in PARAMETERS}
    p1, p2, box, n = lpt.psi1, lpt.psi2, cfg.simulation.box_size, cfg.simulation.n_particles
    x = torch.from_numpy(m.inputs(p1, p2))[None]
    s = torch.from_numpy(m.style(cd))[None]
    field = torch.randn(1, 16, n, n, n)
    new_pad, res, pred = vnet._periodic_pad, {}, {}
    with torch.no_grad():
        for name, pad in (("cat", cat_pad), ("one_alloc", new_pad)):
            vnet._periodic_pad = pad
            m.net(x, s)
            res[f"net_{name}"] = best(lambda: m.net(x, s))
            res[f"10_pads_16x{n}^3_{name}"] = best(lambda p=pad: [p(field, 1) for _ in range(10)])
            pred[name] = m.predict(p1, p2, box, cd)
    vnet._periodic_pad = new_pad

    def separate():
        fields = [np.moveaxis(p.reshape(n, n, n, 3), -1, 0) for p in (p1, p2)]
        [lattice_divergence(f) for f in fields]
        if m.base is not None:
            m.base.predict(p1, p2, box, cd)

    def shared():
        modes = source_modes((p1, p2), n)
        m.inputs(p1, p2, modes)
        if m.base is not None:
            m.base.predict(p1, p2, box, cd, modes=modes)

    res["inputs_separate"], res["inputs_shared"] = best(separate), best(shared)
    res["predict"] = best(lambda: m.predict(p1, p2, box, cd))
    print("largest |difference| of the predictions:",
          float(np.abs(pred["cat"] - pred["one_alloc"]).max()))
    for k, (cpu, wall) in res.items():
        print(f"{k}: CPU {cpu:.3f} s, wall {wall:.3f} s")


if __name__ == "__main__":
    main(*sys.argv[1:2])
