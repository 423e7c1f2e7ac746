"""On-disk store of a simulation campaign: plan, per-simulation results, failures, merged file.

Layout of a campaign directory::

    campaign.yaml            the resolved campaign configuration (written by ``plan``)
    plan.h5                  θ (n, d) and seed (n,) of every planned simulation, plan id
    results/sim_000042.h5    one finished simulation: its arrays, θ, seed, timing
    failures/sim_000042.json one failed simulation: kind, error, traceback
    running/sim_000042.json  marker of a simulation in progress (worker, host, pid, start)
    corrupt/                 damaged or foreign files moved aside (recomputed when planned)
    campaign.h5              every simulation merged by one writer (``merge``)
    .lock                    held (fcntl) by the one driver working on the directory

Every file is written to a temporary name in its final directory and renamed with
``os.replace``, so a file under its final name is complete: "result exists" means "done".

A result file is an HDF5 file with a 512-byte user block holding the SHA-256 digest of
everything after it (:data:`DIGEST_BYTES`). The digest is checked on the raw bytes *before*
HDF5 parses anything, so a damaged file is named and set aside, never half-read; HDF5 then
parses the verified bytes from memory. Each result also names its plan id, index and θ, so a
file of another plan or simulation is caught too. A valid result overrides a failure record of
the same simulation.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import io
import json
import os
import re
import shutil
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from cocasbi import __version__
from cocasbi.io.atomic import atomic_path
from cocasbi.seeds import simulation_seed

RESULT_FORMAT = "cocasbi-campaign-result"
CAMPAIGN_FORMAT = "cocasbi-campaign"
FORMAT_VERSION = 2
DIGEST_BYTES = 512  #: user block of a result file: b"cocasbi-sha256:" + hex digest, zero padded
_DIGEST_MAGIC = b"cocasbi-sha256:"
_NAME = re.compile(r"^sim_(\d{6,})\.(h5|json)$")
#: attribute names a result file reserves for its identity
RESERVED_ATTRS = ("format", "format_version", "kind", "plan_id", "index", "seed", "master_seed",
                  "info")

#: Status of a simulation in the merged file. Only ``ok`` rows are training data.
STATUSES = ("ok", "error", "nonfinite", "timeout", "crashed", "corrupt", "pending")


class CampaignStoreError(ValueError):
    """A campaign directory or file that cannot be used as asked (a ValueError, so the CLI
    reports it as one line)."""


class CampaignLockedError(CampaignStoreError):
    """Another driver holds the campaign directory."""


class CorruptResultError(CampaignStoreError):
    """Result files that cannot be read back; ``files`` maps each path to its reason."""

    def __init__(self, files: dict[Path, str]):
        self.files = files
        lines = [f"{len(files)} corrupt or truncated result file(s):"]
        lines += [f"  {path}: {reason}" for path, reason in sorted(files.items())]
        lines.append("rerun `cocasbi campaign run` to move them aside and recompute them, or "
                     "merge with --allow-corrupt to record them as corrupt")
        super().__init__("\n".join(lines))


@dataclass(frozen=True)
class Plan:
    """Every simulation of a campaign, fixed before any runs.

    theta: (n, d) float64 parameter values; seeds: (n,) int64 spawn keys, simulation i's initial
    phases come from :func:`cocasbi.seeds.simulation_seed` ``(master_seed, seeds[i])``;
    lower / upper: (d,) prior box; config_yaml: the resolved campaign configuration; plan_id: a
    digest of all of it.
    """

    parameters: tuple[str, ...]
    theta: np.ndarray
    seeds: np.ndarray
    master_seed: int
    lower: np.ndarray
    upper: np.ndarray
    design: str
    config_yaml: str
    plan_id: str

    def __len__(self) -> int:
        return len(self.seeds)

    def task(self, index: int) -> Task:
        """What a worker needs to run simulation ``index``."""
        if not 0 <= index < len(self):
            raise IndexError(f"simulation {index} is not in this plan of {len(self)}")
        return Task(index, self.theta[index].copy(), int(self.seeds[index]), self.master_seed,
                    self.plan_id)


@dataclass(frozen=True)
class Task:
    """One planned simulation: index, θ (d,), seed spawn key, master seed and plan id."""

    index: int
    theta: np.ndarray
    seed: int
    master_seed: int
    plan_id: str

    def seed_sequence(self) -> np.random.SeedSequence:
        """Initial-phase stream: ``simulation_seed(master_seed, seed)``."""
        return simulation_seed(self.master_seed, self.seed)


@dataclass
class ResultRecord:
    """One finished simulation read back from ``results/``.

    arrays: the stored arrays (empty unless read with ``load=True``; ``shapes`` always);
    names / k: the static layout of ``x`` (summaries) or None; attrs: identity attributes and
    run information (wall_time [s], started / finished [s since the epoch], worker, host, pid).
    """

    index: int
    theta: np.ndarray
    arrays: dict[str, np.ndarray]
    shapes: dict[str, tuple[tuple[int, ...], str]]
    names: list[str] | None
    k: np.ndarray | None
    attrs: dict

    @property
    def x(self) -> np.ndarray | None:
        return self.arrays.get("x")


@dataclass
class Scan:
    """State of every planned simulation: done, failed, corrupt (index → (path, reason)),
    pending, and stray files (path → reason) that belong to no planned simulation."""

    done: dict[int, ResultRecord] = field(default_factory=dict)
    failed: dict[int, dict] = field(default_factory=dict)
    corrupt: dict[int, tuple[Path, str]] = field(default_factory=dict)
    pending: list[int] = field(default_factory=list)
    stray: dict[Path, str] = field(default_factory=dict)


def _json_text(path: Path, data: dict) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=1, default=_json_default))


def _json_default(obj):
    if isinstance(obj, np.generic | np.ndarray):
        return obj.tolist()
    return str(obj)


# ---------------------------------------------------------------------------- digests
def _digest_block(digest: str) -> bytes:
    block = _DIGEST_MAGIC + digest.encode() + b"\n"
    return block + bytes(DIGEST_BYTES - len(block))


def seal(path: Path) -> str:
    """Write the SHA-256 of ``path``'s bytes after the user block into its user block."""
    sha = hashlib.sha256()
    with open(path, "r+b") as fh:
        fh.seek(DIGEST_BYTES)
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            sha.update(chunk)
        fh.seek(0)
        fh.write(_digest_block(sha.hexdigest()))
    return sha.hexdigest()


def verified_bytes(path: Path) -> bytes:
    """The bytes of a sealed result file; CorruptResultError if its digest does not hold."""
    try:
        data = Path(path).read_bytes()
    except OSError as err:
        raise CorruptResultError({Path(path): f"unreadable ({err.strerror or err})"}) from None
    if len(data) <= DIGEST_BYTES or not data.startswith(_DIGEST_MAGIC):
        raise CorruptResultError({Path(path): "no digest header (truncated or not a result)"})
    digest = hashlib.sha256(memoryview(data)[DIGEST_BYTES:]).hexdigest()
    if data[:DIGEST_BYTES] != _digest_block(digest):
        raise CorruptResultError({Path(path): "SHA-256 digest mismatch (the file is damaged)"})
    return data


class CampaignStore:
    """Paths and atomic reads/writes of one campaign directory."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        self.config_path = self.directory / "campaign.yaml"
        self.plan_path = self.directory / "plan.h5"
        self.merged_path = self.directory / "campaign.h5"
        self.lock_path = self.directory / ".lock"
        self.results_dir = self.directory / "results"
        self.failures_dir = self.directory / "failures"
        self.running_dir = self.directory / "running"
        self.corrupt_dir = self.directory / "corrupt"

    def result_path(self, index: int) -> Path:
        return self.results_dir / f"sim_{index:06d}.h5"

    def failure_path(self, index: int) -> Path:
        return self.failures_dir / f"sim_{index:06d}.json"

    def marker_path(self, index: int) -> Path:
        return self.running_dir / f"sim_{index:06d}.json"

    # -- the driver's lock
    def lock(self) -> DirectoryLock:
        """An exclusive lock on the directory for one driver (see :class:`DirectoryLock`)."""
        return DirectoryLock(self.lock_path)

    # -- plan
    def write_plan(self, plan: Plan) -> Path:
        """Create the directory tree and write ``plan.h5`` and ``campaign.yaml`` atomically."""
        if self.directory.exists() and not self.directory.is_dir():
            raise CampaignStoreError(f"campaign directory {self.directory} is a file")
        for d in (self.directory, self.results_dir, self.failures_dir, self.running_dir):
            d.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.plan_path) as tmp, h5py.File(tmp, "w") as f:
            f.attrs.update(format="cocasbi-campaign-plan", format_version=FORMAT_VERSION,
                           plan_id=plan.plan_id, master_seed=plan.master_seed,
                           design=plan.design, config_yaml=plan.config_yaml,
                           parameters=list(plan.parameters), cocasbi_version=__version__)
            f.create_dataset("theta", data=plan.theta, fletcher32=bool(plan.theta.size))
            f.create_dataset("seed", data=plan.seeds, fletcher32=True)
            f.create_dataset("lower", data=plan.lower)
            f.create_dataset("upper", data=plan.upper)
        with atomic_path(self.config_path) as tmp:
            tmp.write_text(plan.config_yaml)
        return self.plan_path

    def read_plan(self) -> Plan:
        if self.directory.exists() and not self.directory.is_dir():
            raise CampaignStoreError(f"campaign directory {self.directory} is a file")
        if not self.plan_path.is_file():
            raise CampaignStoreError(f"no campaign plan in {self.directory} (run `plan` first)")
        try:
            with h5py.File(self.plan_path, "r") as f:
                a = f.attrs
                return Plan(parameters=tuple(str(p) for p in a["parameters"]),
                            theta=f["theta"][...], seeds=f["seed"][...],
                            master_seed=int(a["master_seed"]), lower=f["lower"][...],
                            upper=f["upper"][...], design=str(a["design"]),
                            config_yaml=str(a["config_yaml"]), plan_id=str(a["plan_id"]))
        except Exception as err:  # h5py raises OSError, KeyError, ValueError, RuntimeError
            raise CampaignStoreError(f"{self.plan_path} is not a readable plan: "
                                     f"{type(err).__name__}: {err}") from None

    # -- per-simulation files
    def write_result(self, task: Task, arrays: Mapping[str, np.ndarray], *, kind: str,
                     names=None, k=None, info: dict | None = None,
                     attributes: Mapping | None = None) -> Path:
        """Store the arrays of one simulation atomically and seal the file with its digest.

        ``x`` (summaries) is stored as float32 with Fletcher-32 checksums, other arrays as
        given; ``names`` / ``k`` [h/Mpc] describe x; ``info`` (wall time [s], worker, ...) goes
        into one JSON attribute; ``attributes`` are extra scalar file attributes (a producer's
        own metadata; the identity names in :data:`RESERVED_ATTRS` are refused).
        """
        clash = sorted(set(attributes or {}) & set(RESERVED_ATTRS))
        if clash:
            raise ValueError(f"result attributes {clash} are reserved by the campaign store")
        path = self.result_path(task.index)
        with atomic_path(path) as tmp:
            with h5py.File(tmp, "w", userblock_size=DIGEST_BYTES) as f:
                f.attrs.update(dict(attributes or {}))
                f.attrs.update(format=RESULT_FORMAT, format_version=FORMAT_VERSION, kind=kind,
                               plan_id=task.plan_id, index=task.index, seed=task.seed,
                               master_seed=task.master_seed,
                               info=json.dumps({"cocasbi_version": __version__, **(info or {})},
                                               default=_json_default))
                f.create_dataset("theta", data=task.theta, fletcher32=bool(task.theta.size))
                for key, value in arrays.items():
                    value = np.asarray(value)
                    if key == "x":
                        f.create_dataset("x", data=value.astype(np.float32), fletcher32=True)
                    else:
                        f.create_dataset(key, data=value)
                if names is not None:
                    f.create_dataset("names", data=list(names), dtype=h5py.string_dtype())
                if k is not None:
                    f.create_dataset("k", data=np.asarray(k, dtype=np.float64))
            seal(tmp)
        return path

    def read_result(self, path: Path, plan: Plan, load: bool = True) -> ResultRecord:
        """Verify the digest of one result file, then read and check it; ``load=False`` reads
        only its identity and layout. Raises :class:`CorruptResultError` naming the file."""
        path = Path(path)
        index = int(_NAME.match(path.name).group(1))
        data = verified_bytes(path)
        try:
            with h5py.File(io.BytesIO(data), "r") as f:
                attrs = {key: _plain(value) for key, value in f.attrs.items()}
                attrs.update(json.loads(attrs.pop("info", "{}")))
                theta = f["theta"][...]
                keys = [key for key in f if key not in ("theta", "names", "k")]
                shapes = {key: (f[key].shape, f[key].dtype.str) for key in keys}
                arrays = {key: f[key][...] for key in keys if load or key == "x"}
                names = [s.decode() for s in f["names"][...]] if "names" in f else None
                k = f["k"][...] if "k" in f else None
        except Exception as err:  # a sealed file HDF5 cannot parse: written damaged
            raise CorruptResultError({path: f"unreadable ({type(err).__name__}: {err})"}) from None
        problem = None
        x = arrays.get("x")
        if attrs.get("format") != RESULT_FORMAT:
            problem = f"not a campaign result (format {attrs.get('format')!r})"
        elif attrs.get("plan_id") != plan.plan_id:
            problem = f"belongs to plan {attrs.get('plan_id')}, not {plan.plan_id}"
        elif attrs.get("index") != index or not 0 <= index < len(plan):
            problem = f"holds simulation {attrs.get('index')}, file name says {index}"
        elif theta.shape != plan.theta[index].shape or not np.array_equal(theta,
                                                                         plan.theta[index]):
            problem = f"θ {theta.tolist()} differs from the plan's {plan.theta[index].tolist()}"
        elif x is not None and (x.ndim != 1 or x.dtype != np.float32
                                or names is None or len(names) != x.size):
            problem = f"x has shape {x.shape} and dtype {x.dtype} for {len(names or ())} names"
        elif x is not None and not np.isfinite(x).all():
            problem = "x holds non-finite values"
        elif k is not None and (names is None or k.shape != (len(names),)):
            problem = f"k has shape {k.shape} for {len(names or ())} names"
        if problem:
            raise CorruptResultError({path: problem})
        return ResultRecord(index, theta, arrays, shapes, names, k, attrs)

    def write_failure(self, record: dict) -> Path:
        """Record a failed simulation (``index``, ``kind``, ``error``, ...) atomically."""
        self.failures_dir.mkdir(parents=True, exist_ok=True)
        path = self.failure_path(int(record["index"]))
        _json_text(path, {"cocasbi_version": __version__, "finished": time.time(), **record})
        return path

    def mark_running(self, index: int, info: dict) -> None:
        """Say that a worker started simulation ``index`` (atomic write)."""
        _json_text(self.marker_path(index), {"index": index, "started": time.time(), **info})

    def read_marker(self, index: int) -> dict | None:
        try:
            return json.loads(self.marker_path(index).read_text())
        except (OSError, ValueError):
            return None

    def clear_marker(self, index: int) -> None:
        self.marker_path(index).unlink(missing_ok=True)

    def running(self) -> list[int]:
        """Indices with a marker (possibly stale if a run was killed)."""
        return sorted(int(m.group(1)) for m in map(_NAME.match, _names(self.running_dir)) if m)

    def settled(self) -> set[int]:
        """Indices with a result or a failure file (existence only: cheap, for polling)."""
        out = set()
        for d in (self.results_dir, self.failures_dir):
            out.update(int(m.group(1)) for m in map(_NAME.match, _names(d)) if m)
        return out

    def clean(self) -> None:
        """Remove stale markers and temporary files left by a killed run (driver only)."""
        for d in (self.results_dir, self.failures_dir, self.running_dir):
            for name in _names(d):
                if name.endswith(".tmp") or d == self.running_dir:
                    (d / name).unlink(missing_ok=True)

    def quarantine(self, path: Path) -> Path:
        """Move a damaged or stray file into ``corrupt/`` (its simulation, if planned, is then
        pending again)."""
        self.corrupt_dir.mkdir(exist_ok=True)
        target = self.corrupt_dir / f"{path.name}.{time.time_ns()}"
        shutil.move(path, target)
        return target

    # -- whole-campaign views
    def scan(self, plan: Plan, load: bool = False) -> Scan:
        """Read every result and failure file and classify each planned simulation (``load``:
        read the results' arrays too, else only ``x``)."""
        scan = Scan()
        for name in _names(self.results_dir):
            m = _NAME.match(name)
            if not m or m.group(2) != "h5":
                continue
            path, index = self.results_dir / name, int(m.group(1))
            if index >= len(plan):
                scan.stray[path] = f"simulation {index} is outside the plan of {len(plan)}"
                continue
            try:
                scan.done[index] = self.read_result(path, plan, load=load)
            except CorruptResultError as err:
                scan.corrupt[index] = (path, err.files[path])
        for name in _names(self.failures_dir):
            m = _NAME.match(name)
            if not m or m.group(2) != "json":
                continue
            path, index = self.failures_dir / name, int(m.group(1))
            if index >= len(plan):
                scan.stray[path] = f"simulation {index} is outside the plan of {len(plan)}"
                continue
            if index in scan.done:
                continue
            try:
                record = json.loads(path.read_text())
                if not isinstance(record, dict):
                    raise ValueError("not a JSON object")
                scan.failed[index] = record
            except (OSError, ValueError) as err:
                scan.corrupt.setdefault(index, (path, f"unreadable failure record: {err}"))
        settled = scan.done.keys() | scan.failed.keys() | scan.corrupt.keys()
        scan.pending = [i for i in range(len(plan)) if i not in settled]
        return scan

    def merge(self, plan: Plan, provenance: dict, allow_corrupt: bool = False,
              scan: Scan | None = None, kind: str = "summaries",
              merged_arrays: tuple[str, ...] | None = ("x",),
              layout: tuple[list[str], np.ndarray | None] | None = None) -> Path:
        """Write ``campaign.h5`` from every result and failure file (the single writer).

        Rows follow the plan. ``merged_arrays``: the result arrays stacked into (n, ...)
        datasets (None: all, ``()``: none), NaN (or 0 for integers) where status is not
        ``ok``; x is float32. ``names`` and ``k`` must agree between all results. Corrupt
        result files raise :class:`CorruptResultError` naming each one, unless
        ``allow_corrupt``, which records them with status ``corrupt`` and the file in
        ``error``. ``scan``: a fresh :meth:`scan` to reuse (its arrays are read here);
        ``layout``: the producer's (names, k), which every result must match.
        """
        scan = scan or self.scan(plan)
        if scan.corrupt and not allow_corrupt:
            raise CorruptResultError({path: why for path, why in scan.corrupt.values()})
        names, k = _common_layout(scan, layout)
        shapes = _common_shapes(scan, merged_arrays)
        n = len(plan)
        stacked = {key: np.full((n, *shape), np.nan if np.dtype(dt).kind in "fc" else 0,
                                dtype=np.float32 if key == "x" else np.dtype(dt))
                   for key, (shape, dt) in shapes.items()}
        if names is not None and "x" not in stacked and merged_arrays and "x" in merged_arrays:
            stacked["x"] = np.full((n, len(names)), np.nan, dtype=np.float32)
        status = np.full(n, "pending", dtype=object)
        error = np.full(n, "", dtype=object)
        worker = np.full(n, "", dtype=object)
        wall = np.full(n, np.nan)
        finished = np.full(n, np.nan)
        for i, r in scan.done.items():
            status[i] = "ok"
            if stacked:
                record = r if set(stacked) <= set(r.arrays) else self.read_result(
                    self.result_path(i), plan, load=True)
                for key in stacked:
                    stacked[key][i] = record.arrays[key]
            wall[i], finished[i] = r.attrs.get("wall_time", np.nan), r.attrs.get("finished", np.nan)
            worker[i] = str(r.attrs.get("worker", ""))
        for i, rec in scan.failed.items():
            status[i], error[i] = rec.get("kind", "error"), str(rec.get("error", ""))
            wall[i], worker[i] = rec.get("wall_time", np.nan), str(rec.get("worker", ""))
            finished[i] = rec.get("finished", np.nan)
        for i, (path, why) in scan.corrupt.items():
            status[i], error[i] = "corrupt", f"{path}: {why}"
        text = h5py.string_dtype()
        with atomic_path(self.merged_path) as tmp, h5py.File(tmp, "w") as f:
            f.attrs.update(format=CAMPAIGN_FORMAT, format_version=FORMAT_VERSION, kind=kind,
                           plan_id=plan.plan_id, master_seed=plan.master_seed,
                           design=plan.design, parameters=list(plan.parameters),
                           merged=time.time(), cocasbi_version=__version__)
            f.create_dataset("theta", data=plan.theta).attrs["names"] = list(plan.parameters)
            f["seed"] = plan.seeds
            f["seed"].attrs["doc"] = "spawn key: phases from SeedSequence(master_seed, (seed,))"
            for key, value in stacked.items():
                f.create_dataset(key, data=value)
            if names is not None:
                if "x" in f:
                    f["x"].attrs["names"] = names
                f.create_dataset("names", data=names, dtype=text)
            if k is not None:
                f.create_dataset("k", data=k).attrs["units"] = "h/Mpc"
            f.create_dataset("status", data=status.astype(str).tolist(), dtype=text)
            f["status"].attrs["values"] = list(STATUSES)
            f.create_dataset("error", data=error.astype(str).tolist(), dtype=text)
            f.create_dataset("worker", data=worker.astype(str).tolist(), dtype=text)
            f.create_dataset("wall_time", data=wall).attrs["units"] = "s"
            f.create_dataset("finished", data=finished).attrs["units"] = "s since the epoch"
            f.create_dataset("lower", data=plan.lower)
            f.create_dataset("upper", data=plan.upper)
            prov = f.create_group("provenance")
            prov.attrs["campaign_yaml"] = plan.config_yaml
            for key, value in provenance.items():
                prov.attrs[key] = json.dumps(value, default=_json_default)
        return self.merged_path


def _common_layout(scan: Scan, layout=None) -> tuple[list[str] | None, np.ndarray | None]:
    """The ``names`` and ``k`` every result shares (``layout``, or the first result's);
    CampaignStoreError naming a result that disagrees."""
    if layout is not None:
        names, k = list(layout[0]), None if layout[1] is None else np.asarray(layout[1],
                                                                             dtype=np.float64)
        source = "the forward model"
    elif scan.done:
        first = scan.done[min(scan.done)]
        names, k, source = first.names, first.k, f"result {first.index}"
    else:
        return None, None
    for index in sorted(scan.done):
        r = scan.done[index]
        same_k = (r.k is None) == (k is None) and (k is None or np.array_equal(r.k, k))
        if r.names != names or not same_k:
            raise CampaignStoreError(
                f"result {index} disagrees with {source} on the layout of x (names or k); "
                "the results do not come from one forward model")
    return names, k


def _common_shapes(scan: Scan, keys: tuple[str, ...] | None) -> dict:
    out: dict[str, tuple] = {}
    for index in sorted(scan.done):
        for key, shape in scan.done[index].shapes.items():
            if keys is not None and key not in keys:
                continue
            if out.setdefault(key, shape) != shape:
                raise CampaignStoreError(f"result {index} stores {key} with shape/dtype {shape}, "
                                         f"others {out[key]}")
    return out


class DirectoryLock:
    """``fcntl`` lock on a campaign's ``.lock`` file: one driver per directory at a time.

    The lock dies with its process (also on SIGKILL), so a killed driver never leaves a stale
    lock behind. Works across hosts only where the shared file system supports ``fcntl``
    locks (NFSv4 and Lustre do; some do not: see docs/campaigns.md).
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self._fh = None

    def acquire(self) -> DirectoryLock:
        fh = open(self.path, "a+")  # noqa: SIM115 - held until release()
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            fh.seek(0)
            holder = fh.read().strip() or "unknown"
            fh.close()
            if err.errno in (errno.EAGAIN, errno.EACCES):
                raise CampaignLockedError(
                    f"campaign directory {self.path.parent} is in use by another driver "
                    f"({holder}); wait for it to finish or stop it first") from None
            raise
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()} on {socket.gethostname()} since "
                 f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        fh.flush()
        self._fh = fh
        return self

    def release(self) -> None:
        if self._fh is not None:
            fcntl.flock(self._fh, fcntl.LOCK_UN)
            self._fh.close()
            self._fh = None

    def __enter__(self) -> DirectoryLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


@dataclass
class CampaignData:
    """A merged campaign file in memory (see :func:`load_campaign`)."""

    parameters: list[str]
    theta: np.ndarray
    seed: np.ndarray
    x: np.ndarray | None
    names: list[str]
    k: np.ndarray | None
    status: np.ndarray
    error: np.ndarray
    wall_time: np.ndarray
    attrs: dict

    @property
    def ok(self) -> np.ndarray:
        """Boolean mask of the simulations usable for training."""
        return self.status == "ok"

    def training_set(self) -> tuple[np.ndarray, np.ndarray]:
        """(θ, x) of the ``ok`` simulations: float32 arrays (n_ok, d) and (n_ok, m)."""
        if self.x is None:
            raise CampaignStoreError("this campaign stores no summaries x")
        return self.theta[self.ok].astype(np.float32), self.x[self.ok]


def load_campaign(path: str | Path) -> CampaignData:
    """Read a merged ``campaign.h5`` (raises CampaignStoreError for another file)."""
    path = Path(path)
    try:
        with h5py.File(path, "r") as f:
            if f.attrs.get("format") != CAMPAIGN_FORMAT:
                raise CampaignStoreError(f"{path} is not a merged campaign file")
            return CampaignData(
                parameters=[str(p) for p in f.attrs["parameters"]], theta=f["theta"][...],
                seed=f["seed"][...], x=f["x"][...] if "x" in f else None,
                names=[s.decode() for s in f["names"][...]] if "names" in f else [],
                k=f["k"][...] if "k" in f else None,
                status=np.array([s.decode() for s in f["status"][...]]),
                error=np.array([s.decode() for s in f["error"][...]]),
                wall_time=f["wall_time"][...],
                attrs={key: _plain(v) for key, v in f.attrs.items()})
    except (OSError, KeyError) as err:
        raise CampaignStoreError(f"cannot read campaign file {path}: {err}") from None


def _names(directory: Path) -> list[str]:
    try:
        return os.listdir(directory)
    except (FileNotFoundError, NotADirectoryError):
        return []


def _plain(value):
    """HDF5 attribute → plain Python (numpy scalars to numbers, byte strings to str)."""
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.generic):
        return value.item()
    return value
