"""The force-input transfer frame plus a local network: fit, learning curves, frame file.

Base: the transfer frame with inputs Ψ1, Ψ2 and the PM force at the 2LPT positions at
a = 0.5, drift-weighted basis (ρ = 0.01, K = 4), cosmology degree 1, fitted exactly on all
training runs from the cached moments (``frame_force_features.py``). On top of it a
:class:`cocasbi.frame.local.LocalNet` learns the correction of the coefficient fields
(``cocasbi.frame.training.local``), trained on the CPU with one torch thread.

    python experiments/frame_local.py prep TRAIN TEST CACHE
    python experiments/frame_local.py train TRAIN TEST CACHE N_TRAIN STEPS RESULTS.json \
        [FRAME_OUT.pt] [hidden=24] [dilations=1,2,4,1] [crop=24] [batch=2] [lr=2e-3]

``prep`` writes the base frame (CACHE/base.npz) and the prepared samples; ``train`` trains on
the first N_TRAIN runs for STEPS Adam steps and records the held-out drift-weighted error
on the TEST runs every ``eval_every`` steps (the learning curves of docs/coca.md);
``train-error TRAIN CACHE FRAME.pt [N]`` gives a saved frame's error on N training runs;
``table RESULTS.json ...`` prints the learning-curve rows.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch

from cocasbi.frame.emulator import FrameEmulator, load_frame
from cocasbi.frame.training.data import list_samples
from cocasbi.frame.training.local import (
    LocalTrainingSettings,
    force_transfer_frame,
    held_out_terms,
    prepare_sample,
    train_local,
)
from cocasbi.frame.training.moments import SimMoments

CACHE = "moments_force_0.2_0.35_0.5_0.75_1.0"
SOURCES, FORCE_TIMES = (0, 1, 4), (0.5,)
RIDGE, K, DEGREE = 0.01, 4, 1


def base_frame(train_dir, cache: Path) -> FrameEmulator:
    path = cache / "base.npz"
    if not path.exists():
        moments = [SimMoments.load(p) for p in sorted((Path(train_dir) / CACHE).glob("sim_*.npz"))]
        basis, model = force_transfer_frame(moments, SOURCES, FORCE_TIMES, K, RIDGE, DEGREE)
        meta = {"config": "paper", "prior": "DEFAULT_PRIOR", "n_train_sims": len(moments),
                "K": K, "basis": "drift-weighted", "ridge": RIDGE, "degree": DEGREE,
                "force_times": list(FORCE_TIMES), "made_by": "experiments/frame_local.py"}
        FrameEmulator("transfer", basis, model, meta).save(path)
    return load_frame(path)


def held_out(test_dir, cache: Path, basis):
    out = []
    for p in list_samples(test_dir):
        f = cache / "heldout" / f"{p.stem}.npz"
        if not f.exists():
            h = held_out_terms(p, basis)
            f.parent.mkdir(parents=True, exist_ok=True)
            np.savez(f, z=h.z, y_last=h.y_last, beta=h.beta, yy=h.yy, yy_last=h.yy_last)
        with np.load(f) as d:
            from cocasbi.frame.training.local import HeldOut

            out.append(HeldOut(d["z"], d["y_last"], d["beta"], float(d["yy"]),
                               float(d["yy_last"])))
    return out


def prep(train_dir, test_dir, cache):
    cache = Path(cache)
    emu = base_frame(train_dir, cache)
    for p in [*list_samples(test_dir), *list_samples(train_dir)]:
        sub = "test" if Path(p).parent == Path(test_dir) else "train"
        prepare_sample(p, emu.model, emu.basis, cache / sub)
        print("prepared", p, flush=True)
    hs = held_out(test_dir, cache, emu.basis)
    errs = [h.errors(prepare_sample(p, emu.model, emu.basis, cache / "test")["base"])
            for p, h in zip(list_samples(test_dir), hs, strict=True)]
    print("base held-out", errs)


def train(train_dir, test_dir, cache, n_train, steps, out_json, frame_out=None, *opts):
    torch.set_num_threads(1)
    cache = Path(cache)
    kw = dict(o.split("=") for o in opts)
    settings = LocalTrainingSettings(
        steps=int(steps), hidden=int(kw.get("hidden", 24)),
        dilations=tuple(int(d) for d in kw.get("dilations", "1,2,4,1").split(",")),
        crop=int(kw.get("crop", 24)), batch=int(kw.get("batch", 2)),
        lr=float(kw.get("lr", 2e-3)), eval_every=int(kw.get("eval_every", 100)))
    emu = base_frame(train_dir, cache)
    samples = [prepare_sample(p, emu.model, emu.basis, cache / "train")
               for p in list_samples(train_dir)[: int(n_train)]]
    test = list(zip([prepare_sample(p, emu.model, emu.basis, cache / "test")
                     for p in list_samples(test_dir)], held_out(test_dir, cache, emu.basis),
                    strict=True))
    model, hist = train_local(samples, test, emu.model, settings)
    hist["settings"] = {k: getattr(settings, k) for k in settings.__dataclass_fields__}
    Path(out_json).write_text(json.dumps(hist, indent=1))
    print(json.dumps({k: hist[k] for k in ("step", "test_drift", "cpu_s")}))
    if frame_out and frame_out != "-":
        base_meta = {k: v for k, v in emu.meta.items() if k not in ("format", "kind")}
        meta = {**base_meta, "kind": "local", "local": hist["settings"],
                "n_train_sims_local": int(n_train), "held_out_drift": hist["test_drift"][-1],
                "made_by": "experiments/frame_local.py"}
        FrameEmulator("local", emu.basis, model, meta).save(frame_out)


def train_error(train_dir, cache, frame, n_runs=5):
    """Exact drift-weighted error of a saved local frame on its first ``n_runs`` training
    runs (against the held-out error: is it data-limited?)."""
    from cocasbi.frame.training.local import predict_sample

    emu = load_frame(frame)
    errs = []
    for p in list_samples(train_dir)[: int(n_runs)]:
        s = prepare_sample(p, emu.model.base, emu.basis, Path(cache) / "train")
        errs.append(held_out_terms(p, emu.basis).errors(predict_sample(emu.model, s)))
    print(json.dumps({k: float(np.sqrt(np.mean([e[k] ** 2 for e in errs]))) for k in errs[0]}))


def table(*histories):
    """Markdown rows of the learning curves: held-out error at every evaluation."""
    for path in histories:
        h = json.loads(Path(path).read_text())
        row = ", ".join(f"{s}: {e:.3f}" for s, e in zip(h["step"], h["test_drift"], strict=True))
        print(f"| {h['n_train']} | {h['settings']['steps']} | {h['epoch'][-1]:.1f} | "
              f"{h['test_drift'][-1]:.3f} | {h['cpu_s'][-1] / 60:.1f} | {row} |")


if __name__ == "__main__":
    {"prep": prep, "train": train, "train-error": train_error,
     "table": table}[sys.argv[1]](*sys.argv[2:])
