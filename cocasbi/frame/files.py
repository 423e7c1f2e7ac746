"""Frame files: reading and writing the arrays of a frame with validation.

A transfer frame is a ``.npz`` file (no torch needed) read with ``allow_pickle=False``:

=====================  ==========================  ============================================
key                    dtype, shape                meaning
=====================  ==========================  ============================================
``meta_json``          str, ()                     JSON object; ``"kind": "transfer"``
``basis_times``        float, (n_t,)               query times of the time basis (increasing)
``basis_functions``    float, (K, n_t)             time functions b_k
``basis_eigenvalues``  float, (n_t,)               Gram eigenvalues [(Mpc/h)²]
``basis_dual``         float, (K, n_t), optional   projection functions of a weighted basis
``k_nodes``            float, (J,)                 transfer-function nodes [h/Mpc]
``tau``                float, (2+F, K, P, J)       transfer coefficients (P cosmology features)
``feature_names``      str, (F,)                   cosmological parameters of the features
``feature_centre``     float, (F,)                 normalisation centre
``feature_scale``      float, (F,)                 normalisation scale (> 0)
``feature_degree``     int, ()                     polynomial degree (0, 1, 2)
``n_fit_sims``         int, ()                     simulations in the fit
``force_times``        float, (F,), optional       scale factors of the force inputs
``force_mesh``         int, (), optional           their mesh cells per particle and side
=====================  ==========================  ============================================

A V-net frame is a model file (:mod:`cocasbi.frame.checkpoint`) whose ``extra`` holds the
same basis and transfer entries as nested dicts (see :mod:`cocasbi.frame.neural`). Every
reader checks keys, dtypes, shapes and finiteness and raises a one-line ValueError naming the
file and the entry; nothing in a file is executed.
"""

from __future__ import annotations

import json
import zipfile
import zlib
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from cocasbi.frame.basis import TimeBasis
from cocasbi.frame.transfer import CosmologyFeatures, TransferModel
from cocasbi.io.atomic import atomic_path

FRAME_FORMAT = 1
BASIS_KEYS = ("basis_times", "basis_functions", "basis_eigenvalues", "basis_dual")
TRANSFER_KEYS = ("k_nodes", "tau", "feature_names", "feature_centre", "feature_scale",
                 "feature_degree", "n_fit_sims", "force_times", "force_mesh")
_KINDS = {"f": "float", "i": "int", "U": "str"}


def array(d: Mapping, key: str, kind: str, ndim: int) -> np.ndarray:
    """``d[key]`` as an array of ``kind`` (``f`` float64, ``i`` int64, ``U`` str) with
    ``ndim`` axes, finite if numeric; ValueError naming the key otherwise."""
    if key not in d:
        raise ValueError(f"missing entry {key!r}")
    value = d[key]
    if hasattr(value, "detach"):  # a torch tensor
        value = value.detach().cpu().numpy()
    a = np.asarray(value)
    ok = a.dtype.kind == kind or (kind == "f" and a.dtype.kind in "iu") or (
        kind == "i" and a.dtype.kind == "u")
    if not ok:
        raise ValueError(f"entry {key!r} has dtype {a.dtype}, expected {_KINDS[kind]}")
    if a.ndim != ndim:
        raise ValueError(f"entry {key!r} has shape {a.shape}, expected {ndim} axes")
    if kind == "f":
        a = a.astype(np.float64)
    elif kind == "i":
        a = a.astype(np.int64)
    if kind in "fi" and not np.all(np.isfinite(a)):
        raise ValueError(f"entry {key!r} has non-finite values")
    return a


def basis_from(d: Mapping) -> TimeBasis:
    """A validated :class:`TimeBasis` from its entries (``basis_*``)."""
    times = array(d, "basis_times", "f", 1)
    functions = array(d, "basis_functions", "f", 2)
    eigenvalues = array(d, "basis_eigenvalues", "f", 1)
    n_t = len(times)
    if n_t < 1 or np.any(np.diff(times) <= 0) or times[0] <= 0:
        raise ValueError("entry 'basis_times' must be positive and increasing")
    if functions.shape[1] != n_t or not 1 <= functions.shape[0] <= n_t:
        raise ValueError(f"entry 'basis_functions' has shape {functions.shape}, expected "
                         f"(K, {n_t}) with 1 <= K <= {n_t}")
    if eigenvalues.shape != (n_t,):
        raise ValueError(f"entry 'basis_eigenvalues' has shape {eigenvalues.shape}, "
                         f"expected ({n_t},)")
    dual = None
    if d.get("basis_dual") is not None:
        dual = array(d, "basis_dual", "f", 2)
        if dual.shape != functions.shape:
            raise ValueError(f"entry 'basis_dual' has shape {dual.shape}, expected "
                             f"{functions.shape}")
    return TimeBasis(times, functions, eigenvalues, dual)


def features_from(d: Mapping) -> CosmologyFeatures:
    """Validated :class:`CosmologyFeatures` from ``feature_*`` entries."""
    names = array(d, "feature_names", "U", 1)
    centre = array(d, "feature_centre", "f", 1)
    scale = array(d, "feature_scale", "f", 1)
    degree = array(d, "feature_degree", "i", 0)
    return CosmologyFeatures(tuple(str(x) for x in names), tuple(float(x) for x in centre),
                             tuple(float(x) for x in scale), int(degree))


def transfer_from(d: Mapping, K: int) -> TransferModel:
    """A validated :class:`TransferModel` for K coefficient fields from its entries."""
    features = features_from(d)
    k_nodes = array(d, "k_nodes", "f", 1)
    tau = array(d, "tau", "f", 4)
    n_fit = array(d, "n_fit_sims", "i", 0)
    if len(k_nodes) < 2 or np.any(np.diff(k_nodes) <= 0):
        raise ValueError("entry 'k_nodes' must hold at least 2 increasing wavenumbers")
    times, mesh = (), 2
    if d.get("force_times") is not None:
        times = tuple(float(a) for a in array(d, "force_times", "f", 1))
        mesh = int(array(d, "force_mesh", "i", 0))
        if not times or any(not 0 < a <= 1 for a in times) or not 1 <= mesh <= 8:
            raise ValueError("entries 'force_times' must lie in (0, 1] and 'force_mesh' in "
                             "1..8")
    expected = (2 + len(times), K, features.size, len(k_nodes))
    if tau.shape != expected:
        raise ValueError(f"entry 'tau' has shape {tau.shape}, expected {expected}")
    return TransferModel(k_nodes, tau, features, int(n_fit), times, mesh)


def meta_from(value) -> dict:
    """The metadata JSON object of a frame file."""
    try:
        meta = json.loads(str(np.asarray(value)[()]))
    except (json.JSONDecodeError, TypeError, ValueError):
        raise ValueError("entry 'meta_json' is not JSON") from None
    if not isinstance(meta, dict):
        raise ValueError("entry 'meta_json' is not a JSON object")
    return meta


def read_transfer_frame(path: str | Path) -> tuple[TimeBasis, TransferModel, dict]:
    """(basis, model, meta) of a transfer frame ``.npz``; one-line ValueError if it is not
    one (unreadable, pickled objects, missing or malformed entries)."""
    path = Path(path)
    try:
        d = np.load(path, allow_pickle=False)
        if not isinstance(d, np.lib.npyio.NpzFile):
            raise ValueError("holds one array, not a frame archive")
        with d:
            entries = {k: d[k] for k in (*BASIS_KEYS, *TRANSFER_KEYS, "meta_json")
                       if k in d.files}
    except ValueError as err:
        reason = ("pickled or unreadable data, which is never loaded" if "pickle" in str(err)
                  else str(err))
        raise ValueError(f"{path}: not a frame file ({reason})") from None
    except (OSError, EOFError, zipfile.BadZipFile, zlib.error, KeyError) as err:
        reason = " ".join(str(err).split())[:200] or type(err).__name__
        raise ValueError(f"{path}: not a readable frame file ({reason})") from None
    try:
        if "meta_json" not in entries:
            raise ValueError("missing entry 'meta_json'")
        meta = meta_from(entries["meta_json"])
        if meta.get("kind") != "transfer":
            raise ValueError(f"kind {meta.get('kind')!r} is not 'transfer'")
        basis = basis_from(entries)
        model = transfer_from(entries, basis.K)
    except ValueError as err:
        raise ValueError(f"{path}: bad frame file: {err}") from None
    return basis, model, meta


def write_transfer_frame(path: str | Path, basis: TimeBasis, model: TransferModel,
                         meta: dict) -> Path:
    """Write a transfer frame ``.npz`` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"format": FRAME_FORMAT, "kind": "transfer", **meta}
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez_compressed(f, meta_json=np.array(json.dumps(meta)), **basis.to_dict(),
                            **model.to_dict())
    return path
