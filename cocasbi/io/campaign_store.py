"""On-disk store of a simulation campaign: plan, per-simulation results, failures, merged file.

Layout of a campaign directory::

    campaign.yaml            the resolved campaign configuration (written by ``plan``)
    plan.h5                  θ (n, d) and seed (n,) of every planned simulation, plan id
    results/sim_000042.h5    one finished simulation: x, θ, seed, timing (atomic write)
    failures/sim_000042.json one failed simulation: kind, error, traceback (atomic write)
    running/sim_000042.json  marker of a simulation in progress (worker, pid, start time)
    corrupt/                 result files found unreadable, moved aside to be recomputed
    campaign.h5              every simulation merged by one writer (``merge``)

Every file is written to a temporary name in its final directory and renamed with
``os.replace``, so a file under its final name is complete: "result exists" means "done". Result
datasets carry Fletcher-32 checksums, and each result names its plan id, index and θ, so
truncated, damaged or foreign files are detected when read. A valid result overrides a failure
record of the same simulation.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from cocasbi import __version__
from cocasbi.io.atomic import atomic_path

RESULT_FORMAT = "cocasbi-campaign-result"
CAMPAIGN_FORMAT = "cocasbi-campaign"
FORMAT_VERSION = 1
_NAME = re.compile(r"^sim_(\d{6,})\.(h5|json)$")

#: Status of a simulation in the merged file. Only ``ok`` rows are training data.
STATUSES = ("ok", "error", "nonfinite", "timeout", "crashed", "corrupt", "pending")


class CampaignStoreError(RuntimeError):
    """A campaign directory or file that cannot be used as asked."""


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
    phases come from ``SeedSequence(master_seed, spawn_key=(seeds[i],))``; lower / upper: (d,)
    prior box; config_yaml: the resolved campaign configuration; plan_id: a digest of all of it.
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
        """Initial-phase seed: SeedSequence(master_seed, spawn_key=(seed,))."""
        return np.random.SeedSequence(self.master_seed, spawn_key=(self.seed,))


@dataclass
class ResultRecord:
    """One finished simulation read back from ``results/``; ``attrs`` holds the identity
    attributes and the run information (wall_time [s], started / finished [s since the
    epoch], worker, host, pid)."""

    index: int
    theta: np.ndarray
    x: np.ndarray
    names: list[str]
    k: np.ndarray | None
    attrs: dict


@dataclass
class Scan:
    """State of every planned simulation: done, failed, corrupt (path → reason) or pending."""

    done: dict[int, ResultRecord] = field(default_factory=dict)
    failed: dict[int, dict] = field(default_factory=dict)
    corrupt: dict[int, tuple[Path, str]] = field(default_factory=dict)
    pending: list[int] = field(default_factory=list)


def _json_text(path: Path, data: dict) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=1, default=_json_default))


def _json_default(obj):
    if isinstance(obj, np.generic | np.ndarray):
        return obj.tolist()
    return str(obj)


class CampaignStore:
    """Paths and atomic reads/writes of one campaign directory."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        self.config_path = self.directory / "campaign.yaml"
        self.plan_path = self.directory / "plan.h5"
        self.merged_path = self.directory / "campaign.h5"
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

    # -- plan
    def write_plan(self, plan: Plan) -> Path:
        """Create the directory tree and write ``plan.h5`` and ``campaign.yaml`` atomically."""
        for d in (self.directory, self.results_dir, self.failures_dir, self.running_dir):
            d.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.plan_path) as tmp, h5py.File(tmp, "w") as f:
            f.attrs.update(format="cocasbi-campaign-plan", format_version=FORMAT_VERSION,
                           plan_id=plan.plan_id, master_seed=plan.master_seed,
                           design=plan.design, config_yaml=plan.config_yaml,
                           parameters=list(plan.parameters), cocasbi_version=__version__)
            f.create_dataset("theta", data=plan.theta, fletcher32=True)
            f.create_dataset("seed", data=plan.seeds, fletcher32=True)
            f.create_dataset("lower", data=plan.lower)
            f.create_dataset("upper", data=plan.upper)
        with atomic_path(self.config_path) as tmp:
            tmp.write_text(plan.config_yaml)
        return self.plan_path

    def read_plan(self) -> Plan:
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
        except (OSError, KeyError) as err:
            raise CampaignStoreError(f"{self.plan_path} is not a readable plan: {err}") from None

    # -- per-simulation files
    def write_result(self, task: Task, x: np.ndarray, names, k, info: dict) -> Path:
        """Store the summary vector ``x`` (float32) of one simulation atomically; ``info``
        (wall time [s], worker, ...) goes into one JSON attribute (cheaper than many)."""
        path = self.result_path(task.index)
        with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
            f.attrs.update(format=RESULT_FORMAT, format_version=FORMAT_VERSION,
                           plan_id=task.plan_id, index=task.index, seed=task.seed,
                           master_seed=task.master_seed,
                           info=json.dumps({"cocasbi_version": __version__, **info}))
            f.create_dataset("theta", data=task.theta, fletcher32=True)
            f.create_dataset("x", data=np.asarray(x, dtype=np.float32), fletcher32=True)
            f.create_dataset("names", data=list(names), dtype=h5py.string_dtype())
            if k is not None:
                f.create_dataset("k", data=np.asarray(k, dtype=np.float64))
        return path

    def read_result(self, path: Path, plan: Plan) -> ResultRecord:
        """Read and check one result file; raises :class:`CorruptResultError` naming it."""
        index = int(_NAME.match(path.name).group(1))
        try:
            with h5py.File(path, "r") as f:
                attrs = {key: _plain(value) for key, value in f.attrs.items()}
                attrs.update(json.loads(attrs.pop("info", "{}")))
                theta, x = f["theta"][...], f["x"][...]
                names = [s.decode() for s in f["names"][...]]
                k = f["k"][...] if "k" in f else None
        except Exception as err:  # h5py raises OSError, KeyError, ValueError, RuntimeError
            raise CorruptResultError({path: f"unreadable ({type(err).__name__}: {err})"}) from None
        problem = None
        if attrs.get("format") != RESULT_FORMAT:
            problem = f"not a campaign result (format {attrs.get('format')!r})"
        elif attrs.get("plan_id") != plan.plan_id:
            problem = f"belongs to plan {attrs.get('plan_id')}, not {plan.plan_id}"
        elif attrs.get("index") != index or not 0 <= index < len(plan):
            problem = f"holds simulation {attrs.get('index')}, file name says {index}"
        elif not np.array_equal(theta, plan.theta[index]):
            problem = f"θ {theta.tolist()} differs from the plan's {plan.theta[index].tolist()}"
        elif x.ndim != 1 or x.dtype != np.float32 or len(names) != x.size:
            problem = f"x has shape {x.shape} and dtype {x.dtype} for {len(names)} names"
        elif not np.isfinite(x).all():
            problem = "x holds non-finite values"
        if problem:
            raise CorruptResultError({path: problem})
        return ResultRecord(index, theta, x, names, k, attrs)

    def write_failure(self, record: dict) -> Path:
        """Record a failed simulation (``index``, ``kind``, ``error``, ...) atomically."""
        self.failures_dir.mkdir(parents=True, exist_ok=True)
        path = self.failure_path(int(record["index"]))
        _json_text(path, {"cocasbi_version": __version__, "finished": time.time(), **record})
        return path

    def mark_running(self, index: int, info: dict) -> None:
        """Say that a worker started simulation ``index`` (plain write: a half-written marker
        reads as absent and is read again on the next poll)."""
        self.marker_path(index).write_text(
            json.dumps({"index": index, "started": time.time(), **info}))

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

    def clean(self) -> None:
        """Remove stale markers and temporary files left by a killed run (driver only)."""
        for d in (self.results_dir, self.failures_dir, self.running_dir):
            for name in _names(d):
                if name.endswith(".tmp") or d == self.running_dir:
                    (d / name).unlink(missing_ok=True)

    def quarantine(self, path: Path) -> Path:
        """Move a corrupt file into ``corrupt/`` so its simulation is planned again."""
        self.corrupt_dir.mkdir(exist_ok=True)
        target = self.corrupt_dir / f"{path.name}.{int(time.time())}"
        shutil.move(path, target)
        return target

    # -- whole-campaign views
    def scan(self, plan: Plan) -> Scan:
        """Read every result and failure file and classify each planned simulation."""
        scan = Scan()
        for name in _names(self.results_dir):
            m = _NAME.match(name)
            if not m or m.group(2) != "h5":
                continue
            path = self.results_dir / name
            try:
                record = self.read_result(path, plan)
                scan.done[record.index] = record
            except CorruptResultError as err:
                scan.corrupt[int(m.group(1))] = (path, err.files[path])
        for name in _names(self.failures_dir):
            m = _NAME.match(name)
            index = int(m.group(1)) if m and m.group(2) == "json" else None
            if index is None or index in scan.done or index >= len(plan):
                continue
            path = self.failures_dir / name
            try:
                scan.failed[index] = json.loads(path.read_text())
            except (OSError, ValueError) as err:
                scan.corrupt.setdefault(index, (path, f"unreadable failure record: {err}"))
        settled = scan.done.keys() | scan.failed.keys() | scan.corrupt.keys()
        scan.pending = [i for i in range(len(plan)) if i not in settled]
        return scan

    def merge(self, plan: Plan, provenance: dict, allow_corrupt: bool = False,
              scan: Scan | None = None) -> Path:
        """Write ``campaign.h5`` from every result and failure file (the single writer).

        Rows follow the plan; x is NaN where status is not ``ok``. Corrupt result files raise
        :class:`CorruptResultError` naming each one, unless ``allow_corrupt``, which records
        them with status ``corrupt`` and the file in ``error``. ``scan``: a fresh
        :meth:`scan` to reuse.
        """
        scan = scan or self.scan(plan)
        if scan.corrupt and not allow_corrupt:
            raise CorruptResultError({path: why for path, why in scan.corrupt.values()})
        layouts = {tuple(r.names) for r in scan.done.values()}
        if len(layouts) > 1:
            raise CampaignStoreError(f"results in {self.results_dir} disagree on the layout of x")
        names = list(layouts.pop()) if layouts else []
        first = next(iter(scan.done.values()), None)
        n = len(plan)
        x = np.full((n, len(names)), np.nan, dtype=np.float32)
        status = np.full(n, "pending", dtype=object)
        error = np.full(n, "", dtype=object)
        worker = np.full(n, "", dtype=object)
        wall = np.full(n, np.nan)
        finished = np.full(n, np.nan)
        for i, r in scan.done.items():
            x[i], status[i] = r.x, "ok"
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
            f.attrs.update(format=CAMPAIGN_FORMAT, format_version=FORMAT_VERSION,
                           plan_id=plan.plan_id, master_seed=plan.master_seed,
                           design=plan.design, parameters=list(plan.parameters),
                           merged=time.time(), cocasbi_version=__version__)
            f.create_dataset("theta", data=plan.theta).attrs["names"] = list(plan.parameters)
            f["seed"] = plan.seeds
            f["seed"].attrs["doc"] = "spawn key: phases from SeedSequence(master_seed, (seed,))"
            f.create_dataset("x", data=x).attrs["names"] = names
            f.create_dataset("names", data=names, dtype=text)
            if first is not None and first.k is not None:
                f.create_dataset("k", data=first.k).attrs["units"] = "h/Mpc"
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


@dataclass
class CampaignData:
    """A merged campaign file in memory (see :func:`load_campaign`)."""

    parameters: list[str]
    theta: np.ndarray
    seed: np.ndarray
    x: np.ndarray
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
                seed=f["seed"][...], x=f["x"][...],
                names=[s.decode() for s in f["names"][...]],
                k=f["k"][...] if "k" in f else None,
                status=np.array([s.decode() for s in f["status"][...]]),
                error=np.array([s.decode() for s in f["error"][...]]),
                wall_time=f["wall_time"][...],
                attrs={key: _plain(v) for key, v in f.attrs.items()})
    except OSError as err:
        raise CampaignStoreError(f"cannot read campaign file {path}: {err}") from None


def _names(directory: Path) -> list[str]:
    try:
        return os.listdir(directory)
    except FileNotFoundError:
        return []


def _plain(value):
    """HDF5 attribute → plain Python (numpy scalars to numbers, byte strings to str)."""
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.generic):
        return value.item()
    return value
