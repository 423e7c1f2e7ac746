"""Mesh-level correctness: CIC paint/readout, determinism, FD kernels and the PM force."""

import numba
import numpy as np
import pytest

from cocasbi.cic import paint_cic, readout_cic
from cocasbi.fft import FFT
from cocasbi.gravity import ForceSolver

OMEGA_M = 0.3
THREADS = 1  # small meshes: one thread avoids slow threaded FFTW planning on a busy machine


def _lattice(n_p, box, n_mesh):
    axis = np.arange(n_p) * (box / n_p) + 0.5 * box / n_mesh
    return np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)


def _naive_paint(pos, n, box, weight):
    """Reference CIC (numpy, float64) for the mass density."""
    f = np.mod(pos, box) * (n / box)
    i = np.floor(f).astype(int)
    d = f - i
    rho = np.zeros((n, n, n))
    for ox in (0, 1):
        for oy in (0, 1):
            for oz in (0, 1):
                w = ((d[:, 0] if ox else 1 - d[:, 0]) * (d[:, 1] if oy else 1 - d[:, 1])
                     * (d[:, 2] if oz else 1 - d[:, 2]))
                np.add.at(rho, ((i[:, 0] + ox) % n, (i[:, 1] + oy) % n, (i[:, 2] + oz) % n),
                          weight * w)
    return rho


def _fd_symbols(n, box):
    """Per-axis FD Laplacian and 4-point gradient symbols, as functions of the integer mode m."""
    h = box / n

    def lap(m):
        return (2.0 / h * np.sin(np.pi * m / n)) ** 2

    def grad(m):
        w = 2 * np.pi * m / n
        return (8 * np.sin(w) - np.sin(2 * w)) / (6 * h)

    return lap, grad


# ---------------------------------------------------------------------------- paint / readout
def test_paint_matches_reference_cic_and_conserves_mass():
    rng = np.random.default_rng(1)
    n, box = 16, 32.0
    pos = rng.uniform(-box, 2 * box, (3000, 3))  # unwrapped, negative ones included
    rho = paint_cic(pos, n, box, weight=1.0)
    assert rho.dtype == np.float32
    np.testing.assert_allclose(rho, _naive_paint(pos, n, box, 1.0), rtol=0, atol=2e-5)
    assert abs(rho.sum(dtype=np.float64) - len(pos)) < 1e-3
    delta = paint_cic(pos, n, box)  # default: δ = ρ/ρ̄ − 1
    assert abs(delta.mean(dtype=np.float64)) < 1e-6
    np.testing.assert_allclose(delta, rho * (n**3 / len(pos)) - 1.0, atol=2e-5)


def test_paint_bit_identical_for_any_thread_count_and_periodic_shifts():
    rng = np.random.default_rng(2)
    n, box = 32, 64.0  # box / n a power of two, positions on a dyadic grid: shifts are exact
    pos = np.round(rng.uniform(0, box, (20000, 3)) * 2**20) / 2**20
    pos[:5000] = pos[0]  # many particles on one node: the summation order matters
    pos[5000:6000, 0] = pos[5000, 0]
    before = numba.get_num_threads()
    try:
        ref = {}
        for threads in sorted({1, 2, numba.config.NUMBA_NUM_THREADS}):
            numba.set_num_threads(threads)
            ref[threads] = paint_cic(pos, n, box).copy()
            shift = rng.integers(-2, 3, pos.shape) * box
            assert np.array_equal(paint_cic(pos + shift, n, box), ref[threads])
        first = ref[1]
        for mesh in ref.values():
            assert np.array_equal(mesh, first)
    finally:
        numba.set_num_threads(before)
    # a generic (non-dyadic) shift by ±L changes the result by round-off only
    np.testing.assert_allclose(paint_cic(pos - box + 1e-3, n, box),
                               paint_cic(pos + 1e-3, n, box), atol=1e-4)


def test_readout_of_a_linear_field_is_exact_and_periodic():
    rng = np.random.default_rng(3)
    n, box = 16, 32.0
    h = box / n
    j = np.arange(n, dtype=np.float32)
    meshes = np.empty((3, n, n, n), dtype=np.float32)
    meshes[0] = 2.0 * j[:, None, None] + 1.0
    meshes[1] = -3.0 * j[None, :, None]
    meshes[2] = 0.5 * j[None, None, :] + 7.0
    pos = rng.uniform(0.0, (n - 1) * h, (2000, 3))  # away from the periodic seam
    out = readout_cic(meshes, pos, box)
    u = pos / h
    np.testing.assert_allclose(out[:, 0], 2.0 * u[:, 0] + 1.0, rtol=0, atol=1e-5)
    np.testing.assert_allclose(out[:, 1], -3.0 * u[:, 1], rtol=0, atol=1e-5)
    np.testing.assert_allclose(out[:, 2], 0.5 * u[:, 2] + 7.0, rtol=0, atol=1e-5)
    shifted = readout_cic(meshes, pos + rng.integers(-2, 3, pos.shape) * box, box)
    np.testing.assert_allclose(shifted, out, rtol=0, atol=1e-4)
    np.testing.assert_allclose(readout_cic(meshes[2], pos, box), out[:, 2], atol=1e-5)


def test_readout_in_mesh_order_or_particle_order_gives_the_same_bits():
    """The solver's sorted readout (__call__), a readout of force_field in particle order at
    the solver's cells (what the stepper fuses into its kick) and readout_cic at the positions
    are the same float32 expressions: equal bits."""
    from cocasbi.cic import cell_views, locate, readout_cells, sort_by_plane

    rng = np.random.default_rng(4)
    n, box = 16, 32.0
    pos = rng.uniform(-box, 2 * box, (5000, 3))
    solver = ForceSolver(n, box, OMEGA_M, threads=THREADS)
    sorted_readout = solver(pos)
    mesh = solver.force_field(pos)
    np.testing.assert_array_equal(readout_cic(mesh, pos, box), sorted_readout)
    np.testing.assert_array_equal(readout_cells(mesh, solver.cells), sorted_readout)
    # the cells: wrapped lower node and offset in cells, per axis
    cells = locate(pos, n, box)
    np.testing.assert_array_equal(cells, solver.cells)
    node, frac = cell_views(cells)
    u = pos * n / box
    np.testing.assert_array_equal(node[:, ::2], np.floor(u).astype(int) % n)
    np.testing.assert_array_equal(frac[:, 1::2], (u - np.floor(u)).astype(np.float32))
    # the sort without its permutation fills the same sorted cells and plane starts
    sc1, order, start1 = sort_by_plane(cells, n)
    sc2, empty, start2 = sort_by_plane(cells, n, order=np.empty(0, dtype=np.int64))
    assert empty.size == 0
    np.testing.assert_array_equal(sc1, sc2)
    np.testing.assert_array_equal(start1, start2)
    np.testing.assert_array_equal(sc1, cells[order])
    # ... and is numpy's stable argsort by the (wrapped) plane of the lower CIC node
    plane = np.floor(pos[:, 0] * n / box).astype(int) % n
    np.testing.assert_array_equal(order, np.argsort(plane, kind="stable"))
    np.testing.assert_array_equal(start1[:-1], np.searchsorted(plane[order], np.arange(n)))
    np.testing.assert_array_equal(start1, np.searchsorted(plane[order], np.arange(n + 1)))


def test_released_particle_arrays_are_allocated_again_with_the_same_bits():
    """release_particles (a finished run frees the cells before its final momenta) drops the
    per-particle work arrays; the next evaluations, sorted and in particle order, allocate them
    again and give the same bits."""
    rng = np.random.default_rng(6)
    n, box = 16, 32.0
    pos = rng.uniform(0, box, (3000, 3))
    solver = ForceSolver(n, box, OMEGA_M, threads=THREADS)
    first = solver(pos)
    cells = solver.cells.copy()
    solver.release_particles()
    assert solver.cells is None
    np.testing.assert_array_equal(solver(pos), first)
    solver.release_particles()
    solver.force_field(pos)
    np.testing.assert_array_equal(solver.cells, cells)


def test_vector_readout_of_interleaved_nodes_gives_the_scalar_bits():
    """readout_nodes loads each z-pair of nodes as two 4-lane vectors (the 4th lane is the
    next value, or the padding after the mesh): its values equal the scalar readout of each
    component bit for bit, whatever the padding and the neighbouring values hold."""
    from cocasbi.cic import check_nodes, empty_nodes, interleave, readout_cells, readout_nodes

    rng = np.random.default_rng(5)
    n, box = 16, 32.0
    pos = rng.uniform(-box, 2 * box, (5000, 3))
    pos[:50, 2] = box * (1 - 1e-9)  # the last z plane: its upper node wraps to z = 0
    solver = ForceSolver(n, box, OMEGA_M, threads=THREADS)
    mesh = solver.force_field(pos).copy()
    cells = solver.cells.copy()
    scalar = readout_cells(mesh, cells)
    np.testing.assert_array_equal(readout_nodes(solver.force_nodes, n, cells), scalar)
    nodes = interleave(mesh)
    np.testing.assert_array_equal(nodes[:-1], solver.force_nodes[:-1])
    nodes[-1] = np.nan  # the padding lane must never reach a value
    np.testing.assert_array_equal(readout_nodes(nodes, n, cells), scalar)
    assert ForceSolver(n, box, OMEGA_M, kernel="exact", threads=THREADS).force_nodes is None
    assert empty_nodes(n).size == 3 * n**3 + 1
    with pytest.raises(ValueError, match="empty_nodes"):
        check_nodes(nodes[:-1], n)
    with pytest.raises(ValueError, match="empty_nodes"):
        readout_nodes(nodes.astype(np.float64), n, cells)


def test_fft_in_float64_and_bad_dtype():
    rng = np.random.default_rng(6)
    field = rng.normal(size=(8, 8, 8))
    fft = FFT(8, threads=THREADS, dtype=np.float64)
    modes = fft.forward(field)
    assert modes.dtype == np.complex128
    np.testing.assert_allclose(modes, np.fft.rfftn(field), rtol=0, atol=1e-12)
    np.testing.assert_allclose(fft.backward(modes), field, rtol=0, atol=1e-14)
    with pytest.raises(ValueError, match="dtype"):
        FFT(8, dtype=np.int32)


def test_fft_round_trip_and_normalisation():
    rng = np.random.default_rng(8)
    n = 16
    field = rng.normal(size=(n, n, n)).astype(np.float32)
    fft = FFT(n, threads=THREADS)
    modes = fft.forward(field)
    assert modes.shape == (n, n, n // 2 + 1) and modes.dtype == np.complex64
    np.testing.assert_allclose(modes, np.fft.rfftn(field), rtol=0, atol=1e-4)
    out = np.empty_like(field)
    assert fft.backward(modes, out=out) is out
    np.testing.assert_allclose(out, field, rtol=0, atol=1e-5)
    np.testing.assert_allclose(fft.backward(modes), field, rtol=0, atol=1e-5)


# ---------------------------------------------------------------------------- force kernels
@pytest.mark.parametrize("gradient", ["mesh", "fourier"])
def test_plane_wave_density_gives_the_fd_force(gradient):
    n, box = 32, 64.0
    m = np.array([1, 2, 3])  # wave vector in fundamental units
    x = np.arange(n) * (box / n)
    phase = (2 * np.pi / box) * (m[0] * x[:, None, None] + m[1] * x[None, :, None]
                                 + m[2] * x[None, None, :])
    amp = 0.3
    delta = (amp * np.cos(phase)).astype(np.float32)
    solver = ForceSolver(n, box, OMEGA_M, threads=THREADS, gradient=gradient)
    force = solver.force_mesh(delta)
    assert force.shape == (3, n, n, n) and force.dtype == np.float32
    lap, grad = _fd_symbols(n, box)
    k2 = sum(lap(mi) for mi in m)
    for c in range(3):
        expect = -1.5 * OMEGA_M * amp * grad(m[c]) / k2 * np.sin(phase)
        scale = np.abs(expect).max()
        np.testing.assert_allclose(force[c], expect, rtol=0, atol=2e-5 * scale)


def test_exact_kernel_plane_wave():
    n, box = 32, 64.0
    x = np.arange(n) * (box / n)
    k = 2 * np.pi / box * 3
    delta = np.broadcast_to(np.cos(k * x)[None, :, None], (n, n, n)).astype(np.float32)
    force = ForceSolver(n, box, OMEGA_M, kernel="exact", threads=THREADS).force_mesh(delta)
    expect = -1.5 * OMEGA_M / k * np.sin(k * x)[None, :, None]
    np.testing.assert_allclose(force[1], np.broadcast_to(expect, (n, n, n)), atol=1e-6)
    assert np.abs(force[0]).max() < 1e-6 and np.abs(force[2]).max() < 1e-6


def test_nyquist_mode_feels_no_fd_force():
    n, box = 16, 16.0
    alt = (-1.0) ** np.arange(n)
    delta = (alt[:, None, None] * np.ones((n, n, n))).astype(np.float32)
    for gradient in ("mesh", "fourier"):
        force = ForceSolver(n, box, OMEGA_M, threads=THREADS, gradient=gradient).force_mesh(delta)
        assert np.abs(force).max() < 1e-6


def test_unknown_kernel_or_gradient_rejected():
    with pytest.raises(ValueError):
        ForceSolver(16, 16.0, OMEGA_M, kernel="spline", threads=THREADS)
    with pytest.raises(ValueError):
        ForceSolver(16, 16.0, OMEGA_M, kernel="exact", threads=THREADS, gradient="mesh")


# ---------------------------------------------------------------------------- PM force
@pytest.mark.parametrize("n_p,n_mesh", [(16, 16), (16, 32), (16, 48)])
def test_lattice_feels_no_force(n_p, n_mesh):
    box = 64.0
    q = _lattice(n_p, box, n_mesh)
    solver = ForceSolver(n_mesh, box, OMEGA_M, threads=THREADS)
    rng = np.random.default_rng(4)
    perturbed = solver(q + rng.normal(0, 0.5, q.shape)).copy()
    scale = np.sqrt(np.mean(perturbed**2))
    shift = rng.integers(-1, 2, q.shape) * box  # unwrapped positions wrap periodically
    for x in (q, q + shift):
        f = solver(x)
        assert f.shape == q.shape and f.dtype == np.float64
        assert np.abs(f).max() < 1e-5 * scale


@pytest.mark.parametrize("kernel", ["fd", "exact"])
def test_total_force_vanishes(kernel):
    rng = np.random.default_rng(5)
    n, box = 32, 64.0
    pos = rng.uniform(0, box, (5000, 3))
    pos[:500] = rng.normal(20.0, 2.0, (500, 3))  # a clump, for strong forces
    f = ForceSolver(n, box, OMEGA_M, kernel=kernel, threads=THREADS)(pos)
    assert np.all(np.abs(f.sum(axis=0)) < 1e-5 * np.abs(f).sum(axis=0))


def test_mesh_and_fourier_gradients_agree():
    rng = np.random.default_rng(6)
    n, box = 32, 64.0
    pos = rng.uniform(0, box, (5000, 3))
    pos[:1000] = rng.normal(30.0, 3.0, (1000, 3))
    fm = ForceSolver(n, box, OMEGA_M, threads=THREADS, gradient="mesh")(pos)
    ff = ForceSolver(n, box, OMEGA_M, threads=THREADS, gradient="fourier")(pos)
    np.testing.assert_allclose(fm, ff, rtol=0, atol=1e-5 * np.abs(ff).max())


def test_two_particle_force_approaches_inverse_square():
    """Point masses m = L³/N (mean density 1): |F| → (3/2) Ω_m m / (4π r²) beyond a few cells."""
    n, box = 64, 64.0  # h = 1; periodic images change F by < 1 % at r <= L/8
    solver = ForceSolver(n, box, OMEGA_M, threads=THREADS)
    rng = np.random.default_rng(7)
    mass = box**3 / 2
    for r in (5.0, 8.0):
        ratios = []
        for _ in range(6):
            u = rng.normal(size=3)
            u /= np.linalg.norm(u)
            a = rng.uniform(0, box, 3)
            f = solver(np.stack([a, a + r * u]))
            newton = 1.5 * OMEGA_M * mass / (4 * np.pi * r**2)
            for fp, towards in ((f[1], -u), (f[0], u)):
                norm = np.linalg.norm(fp)
                assert np.dot(fp, towards) / norm > 0.998  # along the separation, attractive
                ratios.append(norm / newton)
            np.testing.assert_allclose(f[0], -f[1], atol=2e-5 * newton)  # action = reaction
        ratios = np.array(ratios)
        assert np.all(np.abs(ratios - 1) < 0.05), (r, ratios)
        assert abs(ratios.mean() - 1) < 0.02, (r, ratios.mean())


def test_numpy_fft_fallback_gives_the_same_force(monkeypatch):
    """Without pyFFTW the solver falls back to numpy.fft: same force to float32 round-off."""
    from cocasbi import gravity

    q = np.random.default_rng(5).uniform(0, 32.0, (512, 3))
    with_fftw = gravity.ForceSolver(16, 32.0, 0.3)(q)
    monkeypatch.setattr(gravity, "HAVE_PYFFTW", False)
    fallback = gravity.ForceSolver(16, 32.0, 0.3)(q)
    np.testing.assert_allclose(fallback, with_fftw, atol=1e-5 * np.abs(with_fftw).max())


def test_cells_wrap_far_positions_exactly_and_keep_non_finite_ones_on_the_mesh():
    """locate wraps any |x| < 2^53 cells exactly (x and x + k L give the same node and offset
    when x + k L is exact), and a NaN or infinite coordinate gets node 0 with a NaN offset: no
    index leaves the mesh, and the NaN reaches the painted density."""
    from cocasbi.cic import cell_views, locate

    n, box = 16, 32.0
    rng = np.random.default_rng(5)
    base = rng.integers(0, 64, (200, 3)) * 0.5 + 0.25  # dyadic: shifts by k L stay exact
    for k in (-(2**20), -3, -1, 1, 7, 2**30):
        np.testing.assert_array_equal(locate(base + k * box, n, box), locate(base, n, box))
    bad = base[:4].copy()
    bad[0, 0], bad[1, 1], bad[2, 2] = np.nan, np.inf, -np.inf
    node, frac = cell_views(locate(bad, n, box))
    assert node[:, ::2].max() < n
    assert node[0, 0] == node[1, 2] == node[2, 4] == 0
    assert np.isnan([frac[0, 1], frac[1, 3], frac[2, 5]]).all()
    assert np.isnan(paint_cic(bad, n, box)).any()
    # a cells array that locate could not fill in place is refused, not silently copied
    for wrong in (np.empty((200, 3), np.uint64)[:, ::-1], np.empty((200, 3), np.int64),
                  np.empty((100, 3), np.uint64)):
        with pytest.raises(ValueError, match="cells must be"):
            locate(base, n, box, wrong)
