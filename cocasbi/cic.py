"""Cloud-in-cell (CIC) paint and readout of particles on a periodic mesh (numba).

Mesh node j sits at x = j L / N_m. CIC assignment uses the same kernel for paint and readout, so
self-forces vanish and the total force is zero to round-off. Positions may lie outside [0, L)
(unwrapped coordinates, negative ones included): paint and readout wrap them periodically.

Both start from the particles' *cells* (:func:`locate`): per particle and axis, the lower mesh
node (wrapped into [0, N_m)) and the offset from it in cells (the CIC weight of the upper node),
packed into one 8-byte word: a uint32 node and a float32 offset. A cells array is (N, 3) uint64;
kernels read it through two (N, 6) views, ``cells.view(np.uint32)[:, 2a]`` (node of axis a) and
``cells.view(np.float32)[:, 2a + 1]`` (offset), and the sort moves 24 bytes per particle, as
many as the positions it replaces. Locating is a branch-free loop that the compiler
vectorises; a force evaluation locates its particles once, and its paint and the readout of the
resulting force use the same cells (a readout that recomputed them spent a third of its time
there).

Particles are then counting-sorted (stably) by the x-plane of their lower node, and paint walks
them in that order, so that each task works on two mesh planes at a time even for clustered
particles stored in Lagrangian order (a factor ~2 at late times). A readout may walk them in the
same order (``readout_cells(..., order=)``) or, fused with per-particle work that streams the
particle arrays, in Lagrangian order (:mod:`cocasbi.nbody`). A force mesh with its three
components interleaved (:func:`empty_nodes`) is read by :func:`interpolate_nodes`
(:func:`readout_nodes`): the two nodes of a z-pair are two 4-lane vector loads, with the
scalar readout's bits. Painting is parallel, race-free and deterministic: the mesh is cut into
slabs of x-planes, one task per slab, and each task adds the sorted particles of its planes
(and of the plane below) to the nodes it owns. Every node is written by one task only and
receives its contributions in the sorted order, and a stable sort is unique, so the mesh is
bit-identical whatever the number of threads (no atomics, no per-thread copies of the mesh).
numba's thread count is that of the calling thread (:func:`cocasbi.threads.numba_threads`).

Meshes are float32; particle coordinates float64; cell offsets float32 (the precision of the
mesh values they weight).
"""

from __future__ import annotations

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

from cocasbi.fft import empty_aligned

CELL_DTYPE = np.uint64  # one word per axis: uint32 lower node, float32 offset
NODES_PAD = 1  # zeroed floats after an interleaved mesh: the vector readout's last load reads one


def check_mesh_size(n_mesh: int) -> None:
    """Raise ValueError unless ``n_mesh`` is even and >= 4."""
    if n_mesh % 2 or n_mesh < 4:
        raise ValueError(f"n_mesh={n_mesh} must be even and >= 4")


def cell_views(cells):
    """The (N, 6) uint32 (nodes in even columns) and float32 (offsets in odd columns) views
    of an (N, 3) cells array."""
    return cells.view(np.uint32), cells.view(np.float32)


@numba.njit(parallel=True, cache=True)
def _locate(coords, node, frac, inv_cell, n):
    """node[2i] = floor(x_i / h) wrapped into [0, n), frac[2i + 1] = x_i / h − floor(x_i / h)
    for every coordinate of the flat (3N,) array ``coords`` (``node``, ``frac``: flat views
    of the cells' words).

    One flat, branch-free loop, so that LLVM vectorises it (it is then bound by memory
    bandwidth). The wrap floor − n floor(floor / n) is exact for |x / h| < 2⁵³; a non-finite
    coordinate gets node 0 (its NaN offset then poisons the mesh, which the simulation
    reports), so no index can leave the mesh.
    """
    nf = np.float64(n)
    for i in numba.prange(coords.shape[0]):
        f = coords[i] * inv_cell
        fl = np.floor(f)
        w = fl - nf * np.floor(fl / nf)
        node[2 * i] = np.uint32(w) if w >= 0.0 and w < nf else np.uint32(0)
        frac[2 * i + 1] = np.float32(f - fl)


def locate(positions, n_mesh: int, box_size: float, cells=None):
    """CIC cells of particles on an n_mesh³ mesh: an (N, 3) uint64 array (see the module
    docstring), filled in ``cells`` if given (C-contiguous).

    positions [Mpc/h], wrapped periodically.
    """
    pos = as_positions(positions)
    if cells is None:
        cells = np.empty(pos.shape, dtype=CELL_DTYPE)
    elif (cells.shape != pos.shape or cells.dtype != CELL_DTYPE
          or not cells.flags.c_contiguous):  # a copy would be filled instead, and lost
        raise ValueError(f"cells must be a C-contiguous {np.dtype(CELL_DTYPE)} array of shape "
                         f"{pos.shape}")
    node, frac = cell_views(cells)
    _locate(pos.reshape(-1), node.reshape(-1), frac.reshape(-1), n_mesh / box_size, n_mesh)
    return cells


@numba.njit(parallel=True, cache=True)
def _sort_by_plane(cells, node, sorted_cells, order, n, nchunk):
    """Stable counting sort of particle cells by their x-plane (``node`` = the uint32 view).

    Fills ``sorted_cells`` = cells[order] and the permutation ``order`` (skipped if ``order``
    is empty) and returns ``start``, with start[x] the first sorted index of x-plane x
    (start[n] = N). A stable sort is unique, so the result does not depend on ``nchunk``
    (histogram and scatter run in parallel over particle chunks). Within a plane the particles
    keep their Lagrangian order, which is coherent in (y, z): the two planes a slab of
    particles paints (n² nodes each) stay in cache. Sorting by plane rather than by mesh column
    (x, y) keeps that locality with an n-entry histogram, and the scatter writes to n streams
    instead of n², which made the sort 2.5x faster.
    """
    npart = cells.shape[0]
    with_order = order.shape[0] > 0
    hist = np.zeros((nchunk, n), dtype=np.int64)  # before the prefix sum: counts
    for c in numba.prange(nchunk):
        h = hist[c]
        for p in range((c * npart) // nchunk, ((c + 1) * npart) // nchunk):
            h[node[p, 0]] += 1
    start = np.empty(n + 1, dtype=np.int64)
    total = 0
    for k in range(n):  # exclusive prefix sum, plane-major then chunk
        start[k] = total
        for c in range(nchunk):
            cnt = hist[c, k]
            hist[c, k] = total
            total += cnt
    start[n] = total
    for c in numba.prange(nchunk):
        h = hist[c]
        for p in range((c * npart) // nchunk, ((c + 1) * npart) // nchunk):
            k = node[p, 0]
            s = h[k]
            if with_order:
                order[s] = p
            sorted_cells[s, 0] = cells[p, 0]
            sorted_cells[s, 1] = cells[p, 1]
            sorted_cells[s, 2] = cells[p, 2]
            h[k] = s + 1
    return start


def sort_by_plane(cells, n_mesh: int, sorted_cells=None, order=None):
    """Plane sort (see _sort_by_plane) of particle cells from :func:`locate`.

    Returns ``(sorted_cells, order, start)``. ``order`` (int64, N) receives the permutation;
    allocated if None, not computed if empty (paint alone needs only ``start``).
    ``sorted_cells`` is filled if given.
    """
    if sorted_cells is None:
        sorted_cells = np.empty_like(cells)
    if order is None:
        order = np.empty(len(cells), dtype=np.int64)
    start = _sort_by_plane(cells, cells.view(np.uint32), sorted_cells, order, n_mesh,
                           _nthreads())
    return sorted_cells, order, start


@numba.njit(cache=True)
def _paint_range(mesh, node, frac, s0, s1, lo, hi, w):
    """Add the CIC weights of (sorted) particles s0..s1-1 to the nodes of x-planes [lo, hi)
    (``node``, ``frac``: the views of :func:`cell_views`).

    Plane indices are compared unwrapped: a particle's upper plane x + 1 (= n across the
    boundary) is painted only if it lies in [lo, hi), so ranges may be given as [n, n + 1).
    """
    u = np.uint64  # unsigned nodes: indexing without the negative-index test (23 % faster)
    n = u(mesh.shape[0])
    one = np.float32(1.0)
    for p in range(s0, s1):
        ix, iy, iz = np.int64(node[p, 0]), u(node[p, 2]), u(node[p, 4])
        jy, jz = _upper(iy, n), _upper(iz, n)
        fy, fz = frac[p, 3], frac[p, 5]
        gy, gz = one - fy, one - fz
        if ix >= lo and ix < hi:
            a = w * (one - frac[p, 1])
            a0, a1 = a * gy, a * fy
            plane = mesh[u(ix)]
            plane[iy, iz] += a0 * gz
            plane[iy, jz] += a0 * fz
            plane[jy, iz] += a1 * gz
            plane[jy, jz] += a1 * fz
        if ix + 1 >= lo and ix + 1 < hi:
            a = w * frac[p, 1]
            a0, a1 = a * gy, a * fy
            plane = mesh[_upper(u(ix), n)]
            plane[iy, iz] += a0 * gz
            plane[iy, jz] += a0 * fz
            plane[jy, iz] += a1 * gz
            plane[jy, jz] += a1 * fz


@numba.njit(parallel=True, cache=True)
def _paint(mesh, node, frac, start, w, init, ntask):
    """mesh = init + Σ_p w CIC(x_p), slab-parallel over x-planes.

    Task t owns planes [lo, hi) (cut to balance particle counts) and adds, in sorted order,
    the particles of planes lo−1 (periodic) to hi−1, keeping only the nodes it owns. Every node
    of plane x therefore receives the particles of plane x−1 and then those of plane x, in
    sorted order, whatever the cut: the mesh does not depend on the number of tasks.
    """
    n = mesh.shape[0]
    npart = start[n]
    bounds = np.empty(ntask + 1, dtype=np.int64)
    bounds[0], bounds[ntask] = 0, n
    x = 0
    for t in range(1, ntask):  # balance particles per task (plane granularity)
        target = (t * npart) // ntask
        while x < n and start[x] < target:
            x += 1
        bounds[t] = max(x, bounds[t - 1])
    for t in numba.prange(ntask):
        lo, hi = bounds[t], bounds[t + 1]
        if lo == hi:
            continue
        mesh[lo:hi] = init
        # the particles of plane lo − 1 feed plane lo (across the boundary when lo = 0) ...
        if lo == 0:
            _paint_range(mesh, node, frac, start[n - 1], start[n], n, n + 1, w)
        else:
            _paint_range(mesh, node, frac, start[lo - 1], start[lo], lo, lo + 1, w)
        # ... then those of planes lo..hi−1 feed every owned plane (not plane 0 again)
        _paint_range(mesh, node, frac, start[lo], start[hi], lo, hi, w)


def as_positions(positions):
    pos = np.ascontiguousarray(positions, dtype=np.float64)
    if pos.ndim != 2 or pos.shape[1] != 3:
        raise ValueError(f"positions must have shape (N, 3), got {pos.shape}")
    return pos


def _nthreads():
    return max(1, numba.get_num_threads())


def paint_sorted(out, sorted_cells, start, weight=None):
    """Paint plane-sorted cells (:func:`sort_by_plane`) into ``out`` (float32, N_m³): δ with
    the default weight N_m³/N, the density ρ with an explicit ``weight``."""
    n_mesh = out.shape[0]
    w = n_mesh**3 / len(sorted_cells) if weight is None else weight
    init = -1.0 if weight is None else 0.0
    _paint(out, *cell_views(sorted_cells), start, np.float32(w), np.float32(init), _nthreads())
    return out


def paint_cic(positions, n_mesh: int, box_size: float, out=None, weight: float | None = None):
    """Paint particles onto a mesh with CIC, returning the density contrast δ (float32).

    positions: (N, 3) comoving positions [Mpc/h], any real dtype, wrapped periodically (they
    may lie outside [0, L)). n_mesh: cells per side (even, >= 4); box_size: side [Mpc/h]. Each
    particle carries mass ``weight``; by default N_m³/N, so that the mean density is 1, and
    δ = ρ − 1 is returned; with an explicit ``weight`` the raw density ρ is returned. The result
    goes to ``out`` (C-contiguous float32 (N_m,)*3) if given. Deterministic and race-free:
    bit-identical for any thread count.
    """
    check_mesh_size(n_mesh)
    if out is None:
        out = empty_aligned((n_mesh,) * 3, np.float32)
    elif out.shape != (n_mesh,) * 3 or out.dtype != np.float32 or not out.flags.c_contiguous:
        raise ValueError("out must be a C-contiguous float32 array of shape (n_mesh,)*3")
    sorted_cells, _, start = sort_by_plane(locate(positions, n_mesh, box_size), n_mesh,
                                           order=np.empty(0, dtype=np.int64))
    return paint_sorted(out, sorted_cells, start, weight)


@numba.njit(cache=True, inline="always")
def _upper(i, n):
    """The node above ``i`` on a periodic axis of ``n`` nodes (both uint64: numba compares
    mixed signed and unsigned integers as floats)."""
    j = i + np.uint64(1)
    return np.uint64(0) if j == n else j


@numba.njit(cache=True, inline="always")
def interpolate(meshes, c, ix, jx, iy, jy, iz, jz, w00, w01, w10, w11, tz, fz):
    """CIC value of ``meshes[c]`` from the nodes and weights of :func:`cic_weights` (float32)."""
    return (
        (meshes[c, ix, iy, iz] * tz + meshes[c, ix, iy, jz] * fz) * w00
        + (meshes[c, ix, jy, iz] * tz + meshes[c, ix, jy, jz] * fz) * w01
        + (meshes[c, jx, iy, iz] * tz + meshes[c, jx, iy, jz] * fz) * w10
        + (meshes[c, jx, jy, iz] * tz + meshes[c, jx, jy, jz] * fz) * w11
    )


def empty_nodes(n_mesh: int):
    """A zeroed float32 buffer for an *interleaved* 3-component mesh (force components of node
    (i, j, k) at 3((i N_m + j) N_m + k) + c), with the :data:`NODES_PAD` floats after it that
    :func:`interpolate_nodes` may read. :func:`nodes_view` shows it as (N_m, N_m, N_m, 3)."""
    nodes = empty_aligned(3 * n_mesh**3 + NODES_PAD, np.float32)
    nodes[:] = 0.0
    return nodes


def nodes_view(nodes, n_mesh: int):
    """The (N_m, N_m, N_m, 3) view of an interleaved mesh buffer (:func:`empty_nodes`)."""
    return nodes[:3 * n_mesh**3].reshape((n_mesh,) * 3 + (3,))


def interleave(meshes, nodes=None):
    """An interleaved copy of (3, N_m, N_m, N_m) meshes, in ``nodes`` (:func:`empty_nodes`)
    if given."""
    n = meshes.shape[-1]
    if meshes.shape != (3, n, n, n):
        raise ValueError(f"meshes must have shape (3, N, N, N), got {meshes.shape}")
    if nodes is None:
        nodes = empty_nodes(n)
    check_nodes(nodes, n)
    nodes_view(nodes, n)[...] = np.moveaxis(meshes, 0, -1)
    return nodes


def check_nodes(nodes, n_mesh: int) -> None:
    """Raise ValueError unless ``nodes`` is a flat float32 buffer of an interleaved n_mesh³
    mesh with its padding (:func:`empty_nodes`): the vector readout reads it unchecked."""
    if (nodes.dtype != np.float32 or nodes.ndim != 1 or not nodes.flags.c_contiguous
            or nodes.size < 3 * n_mesh**3 + NODES_PAD):
        raise ValueError(f"nodes must be a flat C-contiguous float32 buffer of at least "
                         f"3 n_mesh³ + {NODES_PAD} values (empty_nodes({n_mesh}))")


@intrinsic
def _cic_columns(typingctx, nodes, lo00, hi00, lo01, hi01, lo10, hi10, lo11, hi11, w00, w01,
                 w10, w11, tz, fz):
    """Σ_col w_col (tz m[lo_col] + fz m[hi_col]) for the three components at once: each
    offset is the first of a node's three values, loaded as 4 lanes (the 4th is the next
    value, unused). Per lane the operations of :func:`interpolate`, in its order (no
    contraction into FMA): the same float32 result, bit for bit."""
    u64, f32 = types.uint64, types.float32
    sig = types.UniTuple(f32, 3)(nodes, *([u64] * 8), *([f32] * 6))

    def codegen(context, builder, signature, args):
        data = context.make_array(signature.args[0])(context, builder, args[0]).data
        i32, vec = ir.IntType(32), ir.VectorType(ir.FloatType(), 4)

        def load(offset):
            ptr = builder.bitcast(builder.gep(data, [offset]), vec.as_pointer())
            return builder.load(ptr, align=4)

        def splat(value):
            v = builder.insert_element(ir.Constant(vec, ir.Undefined), value, ir.Constant(i32, 0))
            return builder.shuffle_vector(v, v, ir.Constant(ir.VectorType(i32, 4), [0] * 4))

        wz0, wz1 = splat(args[13]), splat(args[14])
        acc = None
        for col in range(4):
            pair = builder.fadd(builder.fmul(load(args[1 + 2 * col]), wz0),
                                builder.fmul(load(args[2 + 2 * col]), wz1))
            term = builder.fmul(pair, splat(args[9 + col]))
            acc = term if acc is None else builder.fadd(acc, term)
        values = [builder.extract_element(acc, ir.Constant(i32, c)) for c in range(3)]
        return context.make_tuple(builder, signature.return_type, values)

    return sig, codegen


@numba.njit(cache=True, inline="always")
def interpolate_nodes(nodes, n, ix, jx, iy, jy, iz, jz, w00, w01, w10, w11, tz, fz):
    """The three CIC values (float32) of an interleaved mesh (:func:`empty_nodes`) from the
    nodes and weights of :func:`cic_weights` (``n`` the mesh size as uint64), equal bit for bit
    to :func:`interpolate` of each component. The values of a z-pair of nodes are loaded as
    two 4-lane vectors, so the 24 gathers of a force readout are 8 loads (a readout 1.3-1.5x
    faster). No bounds are checked: callers check the buffer with :func:`check_nodes`."""
    row = np.uint64(3) * n
    c00, c01 = (ix * n + iy) * row, (ix * n + jy) * row
    c10, c11 = (jx * n + iy) * row, (jx * n + jy) * row
    z0, z1 = np.uint64(3) * iz, np.uint64(3) * jz
    return _cic_columns(nodes, c00 + z0, c00 + z1, c01 + z0, c01 + z1, c10 + z0, c10 + z1,
                        c11 + z0, c11 + z1, w00, w01, w10, w11, tz, fz)


@numba.njit(cache=True, inline="always")
def cic_weights(node, frac, p, n):
    """Lower and upper nodes and float32 CIC weights of particle ``p``'s cell (as in paint),
    from the views of :func:`cell_views`; ``n`` is the mesh size as uint64.

    Returns (ix, jx, iy, jy, iz, jz, w00, w01, w10, w11, tz, fz), the weights of the four
    (x, y) columns and the two z offsets. The nodes are unsigned: numba then indexes without
    the negative-index wraparound test (24 gathers per particle: 5-8 % of a readout).
    """
    one = np.float32(1.0)
    u = np.uint64
    ix, iy, iz = u(node[p, 0]), u(node[p, 2]), u(node[p, 4])
    fx, fy, fz = frac[p, 1], frac[p, 3], frac[p, 5]
    tx, ty, tz = one - fx, one - fy, one - fz
    return (ix, _upper(ix, n), iy, _upper(iy, n), iz, _upper(iz, n), tx * ty, tx * fy, fx * ty,
            fx * fy, tz, fz)


@numba.njit(parallel=True, cache=True)
def _readout(meshes, node, frac, order, out):
    """out[order[s], c] = Σ CIC weights × meshes[c] at the 8 nodes of cell s (out[s, c] if
    ``order`` is empty). Three components (a force) take a loop of constant length, which
    the compiler unrolls: 1.8x faster than the loop over ``ncomp``."""
    ncomp = meshes.shape[0]
    n = np.uint64(meshes.shape[1])
    with_order = order.shape[0] > 0
    for s in numba.prange(node.shape[0]):
        p = order[s] if with_order else np.int64(s)
        ix, jx, iy, jy, iz, jz, w00, w01, w10, w11, tz, fz = cic_weights(node, frac, s, n)
        if ncomp == 3:
            for c in range(3):
                out[p, c] = interpolate(meshes, c, ix, jx, iy, jy, iz, jz, w00, w01, w10,
                                        w11, tz, fz)
        else:
            for c in range(ncomp):
                out[p, c] = interpolate(meshes, c, ix, jx, iy, jy, iz, jz, w00, w01, w10,
                                        w11, tz, fz)


def readout_cells(meshes, cells, out=None, order=None):
    """CIC readout of (C, N_m, N_m, N_m) meshes at particle cells (:func:`locate`).

    Returns (N, C) float64 values. With ``order`` (a permutation), the cells are taken as
    sorted, row s belonging to particle order[s], and the values are returned in the original
    particle order.
    """
    if out is None:
        out = np.empty((len(cells), meshes.shape[0]), dtype=np.float64)
    if order is None:
        order = np.empty(0, dtype=np.int64)
    _readout(meshes, *cell_views(cells), order, out)
    return out


@numba.njit(parallel=True, cache=True)
def _readout_nodes(nodes, n, node, frac, order, out):
    """out[order[s]] = the three CIC values of the interleaved mesh ``nodes`` at cell s
    (out[s] if ``order`` is empty)."""
    nn = np.uint64(n)
    with_order = order.shape[0] > 0
    for s in numba.prange(node.shape[0]):
        p = order[s] if with_order else np.int64(s)
        ix, jx, iy, jy, iz, jz, w00, w01, w10, w11, tz, fz = cic_weights(node, frac, s, nn)
        f0, f1, f2 = interpolate_nodes(nodes, nn, ix, jx, iy, jy, iz, jz, w00, w01, w10, w11,
                                       tz, fz)
        out[p, 0], out[p, 1], out[p, 2] = f0, f1, f2


def readout_nodes(nodes, n_mesh: int, cells, out=None, order=None):
    """CIC readout of an interleaved 3-component mesh (:func:`empty_nodes`) at particle cells
    located on it (:func:`locate` with the same ``n_mesh``): (N, 3) float64, equal bit for bit
    to :func:`readout_cells` of the (3, N_m, N_m, N_m) view. ``order`` as in
    :func:`readout_cells`."""
    check_nodes(nodes, n_mesh)
    if out is None:
        out = np.empty((len(cells), 3), dtype=np.float64)
    if order is None:
        order = np.empty(0, dtype=np.int64)
    _readout_nodes(nodes, n_mesh, *cell_views(cells), order, out)
    return out


def readout_cic(meshes, positions, box_size: float, out=None):
    """Interpolate mesh fields to particle positions with CIC (the paint kernel).

    meshes: (C, N_m, N_m, N_m) or (N_m, N_m, N_m) array; positions [Mpc/h], wrapped
    periodically. Returns (N, C) float64 values (or (N,) for a single mesh).
    """
    single = meshes.ndim == 3
    m = meshes[None] if single else meshes
    out = readout_cells(m, locate(positions, m.shape[-1], box_size), out=out)
    return out[:, 0] if single else out
