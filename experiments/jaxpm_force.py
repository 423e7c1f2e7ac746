"""JaxPM's PM force on given positions: the reference timing of ``bench_engine.py --jaxpm``.

Runs in an interpreter where JaxPM is installed (it needs no cocasbi): reads positions [Mpc/h]
from an ``.npy`` file, evaluates JaxPM's force (its CIC paint, FFT, 1/k² and 4-point gradient
kernels, and CIC readout, as in ``jaxpm.pm.pm_forces``, called through the un-reshaped paint and
read implementations so that the particle count need not equal the mesh cell count) once to
compile, then ``--repeat`` times, and prints one JSON line: the best time [s] and the path of
the forces it wrote (float32, (N, 3), in JaxPM's units: positions in mesh cells, no 3/2 Ω_m).

    JAXPM_PYTHON experiments/jaxpm_force.py POSITIONS.npy N_MESH BOX_SIZE OUT.npy [--repeat 5]

JaxPM lives in its own environment (it pins its own jax; keep it away from the project's):

    python3 -m venv /tmp/jaxenv && /tmp/jaxenv/bin/pip install "jax[cpu]" jaxpm packaging
    python experiments/bench_engine.py --jaxpm /tmp/jaxenv/bin/python
"""

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
from jaxpm.distributed import fft3d, ifft3d
from jaxpm.kernels import fftk, gradient_kernel, invlaplace_kernel
from jaxpm.painting import _cic_paint_impl, _cic_read_impl


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("positions")
    ap.add_argument("n_mesh", type=int)
    ap.add_argument("box_size", type=float)
    ap.add_argument("out")
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    shape = (args.n_mesh,) * 3
    pos = jnp.asarray(np.load(args.positions) * (args.n_mesh / args.box_size) % args.n_mesh,
                      dtype=jnp.float32)

    @jax.jit
    def force(p):
        delta_k = fft3d(_cic_paint_impl(jnp.zeros(shape, dtype=jnp.float32), p))
        kvec = fftk(delta_k)
        pot_k = delta_k * invlaplace_kernel(kvec)
        return jnp.stack([_cic_read_impl(ifft3d(-gradient_kernel(kvec, i) * pot_k).real, p)
                          for i in range(3)], axis=-1)

    out = force(pos).block_until_ready()
    times = []
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        force(pos).block_until_ready()
        times.append(time.perf_counter() - t0)
    np.save(args.out, np.asarray(out, dtype=np.float32))
    print(json.dumps({"best": min(times), "all": times, "jax": jax.__version__,
                      "devices": str(jax.devices()), "out": args.out}))


if __name__ == "__main__":
    main()
