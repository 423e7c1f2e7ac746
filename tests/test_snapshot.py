"""Snapshots: round trip, Pylians' readgadget as an independent reader, corrupt files, bad dirs."""

import os
from types import SimpleNamespace

import h5py
import numpy as np
import pytest

from cocasbi.config import load_config
from cocasbi.io import SnapshotError, read_snapshot, write_snapshot
from cocasbi.io import snapshot as snapshot_module
from cocasbi.simulation import Snapshot

A = 0.5


@pytest.fixture(scope="module")
def config():
    return load_config("tiny").replace(simulation={"n_particles": 8, "n_mesh": 16})


@pytest.fixture(scope="module")
def snap(config):
    """A displaced 8³ lattice with particles outside [0, L) on every side (unwrapped)."""
    rng = np.random.default_rng(0)
    n, box = config.simulation.n_particles, config.simulation.box_size
    axis = np.arange(n) * box / n
    q = np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), axis=-1).reshape(-1, 3)
    x = q + rng.normal(0, 3.0, q.shape)
    x[0] = [-1e-12, box, -box - 0.25]  # wraps to ~L (rounds to 0), 0 and L - 0.25
    return Snapshot(a=A, positions=x, momenta=rng.normal(0, 2.0, q.shape))


@pytest.fixture()
def written(tmp_path, snap, config):
    return write_snapshot(tmp_path / "snap_010.hdf5", snap, config, seed=1234,
                          extra_attrs={"schedule": "linear", "forces": [0, 3, 5]},
                          n_force_evaluations=7)


def _expected_positions(snap, box):
    wrapped = np.mod(snap.positions, box)
    wrapped[wrapped >= box] -= box
    return wrapped


def test_round_trip(written, snap, config):
    box = config.simulation.box_size
    data = read_snapshot(written)
    assert data.positions.dtype == np.float32
    assert np.all((data.positions >= 0) & (data.positions < box))
    # periodic distance to the wrapped float64 positions is at float32 resolution
    diff = data.positions - _expected_positions(snap, box)
    diff -= box * np.round(diff / box)
    assert np.max(np.abs(diff)) < 4 * np.finfo(np.float32).eps * box
    np.testing.assert_allclose(data.velocities, 100 * snap.momenta / A, rtol=1e-6, atol=1e-5)
    np.testing.assert_allclose(data.momenta(), snap.momenta, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(data.ids, np.arange(len(snap.positions)))
    assert data.a == A and data.redshift == pytest.approx(1 / A - 1)
    assert data.box_size == box
    # m = ρ_crit Ω_m L³ / N with ρ_crit = 3 H0² / (8πG) [1e10 Msun/h per (Mpc/h)³]
    rho_crit = 3 * 100.0**2 / (8 * np.pi * 4.30091727e-9) / 1e10
    mass = rho_crit * config.cosmology.Omega_m * box**3 / len(snap.positions)
    assert data.header["MassTable"][1] == pytest.approx(mass, rel=1e-6)
    assert data.header["NumPart_Total"][1] == len(snap.positions)
    assert data.parameters["UnitLength_in_cm"] == pytest.approx(3.085678e24)
    prov = data.provenance
    assert (prov["seed"], prov["method"], prov["n_force_evaluations"]) == (1234, "cola", 7)
    assert prov["schedule"] == "linear" and list(prov["forces"]) == [0, 3, 5]
    assert data.config() == config


def test_float64_round_trip_is_exact(tmp_path, snap, config):
    seed = np.random.SeedSequence(7, spawn_key=(3,))
    path = write_snapshot(tmp_path / "s.hdf5", snap, config, seed, dtype="float64")
    data = read_snapshot(path)
    box = config.simulation.box_size
    np.testing.assert_array_equal(data.positions[1:], _expected_positions(snap, box)[1:])
    np.testing.assert_allclose(data.momenta(), snap.momenta, rtol=1e-14)
    assert data.provenance["seed_entropy"] == "7"
    assert list(data.provenance["seed_spawn_key"]) == [3]


def test_readgadget_reads_it(written, snap, config, reference):
    """Pylians' readgadget (an independent reader) sees the same particles and header."""
    readgadget = reference("readgadget")
    box = config.simulation.box_size
    head = readgadget.header(str(written))
    assert head.time == pytest.approx(A) and head.redshift == pytest.approx(1 / A - 1)
    assert head.boxsize == box and head.filenum == 1
    assert head.nall[1] == head.npart[1] == len(snap.positions)
    assert head.omega_m == config.cosmology.Omega_m and head.hubble == config.cosmology.h
    assert head.omega_l == pytest.approx(1 - config.cosmology.Omega_m)
    pos = readgadget.read_block(str(written), "POS ", [1])
    vel = readgadget.read_block(str(written), "VEL ", [1])
    ids = readgadget.read_block(str(written), "ID  ", [1])
    diff = pos - _expected_positions(snap, box)
    diff -= box * np.round(diff / box)
    assert np.max(np.abs(diff)) < 4 * np.finfo(np.float32).eps * box
    np.testing.assert_allclose(vel, 100 * snap.momenta / A, rtol=1e-5, atol=1e-4)
    np.testing.assert_array_equal(ids, np.arange(len(snap.positions)))
    mass = readgadget.read_block(str(written), "MASS", [1])  # from MassTable, in [Msun/h]
    np.testing.assert_allclose(mass, 1e10 * head.massarr[1], rtol=1e-6)


def test_truncated_file_raises(written):
    size = written.stat().st_size
    with open(written, "r+b") as f:
        f.truncate(size // 2)
    with pytest.raises(SnapshotError, match=str(written)):
        read_snapshot(written)


def test_garbage_file_raises(tmp_path):
    path = tmp_path / "garbage.hdf5"
    path.write_bytes(np.random.default_rng(1).bytes(4096))
    with pytest.raises(SnapshotError, match="garbage.hdf5"):
        read_snapshot(path)


def test_corrupted_data_block_raises(written):
    """A flipped byte inside the coordinates fails the Fletcher-32 checksum."""
    with h5py.File(written, "r") as f:
        offset = f["PartType1/Coordinates"].id.get_chunk_info(0).byte_offset
    with open(written, "r+b") as f:
        f.seek(offset + 100)
        byte = f.read(1)
        f.seek(offset + 100)
        f.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(SnapshotError, match="snap_010.hdf5"):
        read_snapshot(written)


def test_unwritable_directory_fails_before_any_work(tmp_path):
    """Missing, non-directory and read-only parents are reported, naming the path, before the
    snapshot is even looked at (here it is None)."""
    with pytest.raises(FileNotFoundError, match="missing"):
        write_snapshot(tmp_path / "missing" / "s.hdf5", None, None, 0)
    (tmp_path / "afile").write_text("x")
    with pytest.raises(NotADirectoryError, match="afile"):
        write_snapshot(tmp_path / "afile" / "s.hdf5", None, None, 0)


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write into read-only directories")
def test_read_only_directory_fails_early(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(PermissionError, match="ro"):
            write_snapshot(ro / "s.hdf5", None, None, 0)
    finally:
        ro.chmod(0o700)


def test_failed_write_leaves_previous_file_and_no_temporaries(written, snap, config,
                                                              monkeypatch):
    before = written.read_bytes()

    def fail(*args):
        raise RuntimeError("disk full")

    monkeypatch.setattr(snapshot_module, "_write_parameters", fail)
    with pytest.raises(RuntimeError, match="disk full"):
        write_snapshot(written, snap, config, seed=1)
    assert written.read_bytes() == before
    assert sorted(p.name for p in written.parent.iterdir()) == [written.name]


def test_refuses_non_finite_particles(tmp_path, snap, config):
    bad = SimpleNamespace(a=A, positions=snap.positions.copy(), momenta=snap.momenta)
    bad.positions[3, 1] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        write_snapshot(tmp_path / "s.hdf5", bad, config, seed=1)
    assert not list(tmp_path.iterdir())


def test_yt_reads_it(written, snap, config, reference):
    """yt's Gadget HDF5 frontend, with the unit_base documented in docs/snapshots.md."""
    yt = reference("yt")
    ds = yt.load(str(written), unit_base={"length": (1.0, "Mpccm/h"), "mass": (1e10, "Msun/h"),
                                          "UnitVelocity_in_cm_per_s": 1e5})
    assert ds.current_redshift == pytest.approx(1 / A - 1)
    ad = ds.all_data()
    order = np.argsort(ad["PartType1", "ParticleIDs"].v)
    box = config.simulation.box_size
    pos = ad["PartType1", "particle_position"].to("Mpccm/h").v[order]
    diff = pos - _expected_positions(snap, box)
    diff -= box * np.round(diff / box)
    assert np.max(np.abs(diff)) < 1e-5
    vel = ad["PartType1", "particle_velocity"].to("km/s").v[order]
    np.testing.assert_allclose(vel, 100 * snap.momenta / A, rtol=1e-5, atol=1e-4)
