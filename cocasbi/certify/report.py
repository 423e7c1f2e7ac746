"""Certification report: checks, per-k summaries, JSON round trip, Markdown and plots."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from cocasbi.io.atomic import atomic_path, save_figure

#: Exit codes of ``cocasbi certify``.
EXIT_PASS, EXIT_FAIL, EXIT_ERROR = 0, 1, 2


@dataclass
class Check:
    """One pass/fail test: the measured worst value against its threshold."""

    name: str
    value: float
    threshold: float
    passed: bool
    detail: str = ""


@dataclass
class CertificationReport:
    """Everything a certification measured (JSON types only, so it round-trips exactly).

    ``pairs`` holds one entry per (θ, seed) with its metric arrays as lists; ``summary`` the
    mean and worst (largest |value|) over pairs per k bin / triangle; ``convergence`` the
    ladder; ``fisher`` the parameter bias and ``npe`` the NPE posterior shift and coverage (or
    None); units as in
    :mod:`cocasbi.stats.metrics` (rms_dx [Mpc/h], rms_dv [km/s], k [h/Mpc]).
    """

    name: str
    under_test: str
    reference: str
    passed: bool
    checks: list[Check]
    parameters: list[str]
    kmax: float
    k: list[float]
    n_modes: list[int]
    sigma_cv: list[float]
    triangles: list[list[float]]
    design: list[list[float]]
    pairs: list[dict]
    summary: dict
    convergence: dict | None = None
    fisher: dict | None = None
    npe: dict | None = None
    timing: dict = field(default_factory=dict)
    config: dict = field(default_factory=dict)
    provenance: dict = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        return EXIT_PASS if self.passed else EXIT_FAIL

    @property
    def failed(self) -> list[str]:
        """Names of the failed checks."""
        return [c.name for c in self.checks if not c.passed]

    def check(self, name: str) -> Check:
        for c in self.checks:
            if c.name == name:
                return c
        raise KeyError(f"no check named {name!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> CertificationReport:
        data = dict(data)
        data["checks"] = [Check(**c) for c in data["checks"]]
        return cls(**data)

    def save(self, path) -> Path:
        """Write the report as JSON (atomically); NaN is written as null."""
        path = Path(path)
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(_clean(self.to_dict()), indent=1))
        return path

    @classmethod
    def load(cls, path) -> CertificationReport:
        return cls.from_dict(json.loads(Path(path).read_text()))

    def markdown(self) -> str:
        """A short Markdown summary: verdict, checks, worst metrics, Fisher bias, ladder."""
        verdict = "PASS" if self.passed else "FAIL (" + ", ".join(self.failed) + ")"
        lines = [f"# Certification `{self.name}`: {self.under_test} against {self.reference}",
                 "", f"**{verdict}** over {len(self.design)} θ × "
                 f"{len(self.pairs) // max(len(self.design), 1)} seeds, k <= "
                 f"{self.kmax:.3g} h/Mpc.", "",
                 "| check | worst value | threshold | result | where |",
                 "| --- | --- | --- | --- | --- |"]
        for c in self.checks:
            lines.append(f"| {c.name} | {c.value:.3g} | {c.threshold:.3g} | "
                         f"{'pass' if c.passed else 'FAIL'} | {c.detail} |")
        s = self.summary
        lines += ["", f"rms displacement error {s['rms_dx_mean']:.4g} Mpc/h (worst "
                      f"{s['rms_dx_worst']:.4g}), rms velocity error {s['rms_dv_mean']:.4g} "
                      f"km/s (worst {s['rms_dv_worst']:.4g}).", ""]
        if self.fisher is not None:
            lines.append("Fisher bias δθ/σ: " + ", ".join(
                f"{p} {b:+.3f} (σ = {sg:.3g})" for p, b, sg in
                zip(self.parameters, self.fisher["bias_sigma"], self.fisher["sigma"],
                    strict=True)) + ".")
            lines.append("")
        if self.npe is not None:
            lines.append("NPE posterior mean shift (reference − run) / σ, mean |·| over pairs: "
                         + ", ".join(f"{p} {v:.3f}" for p, v in
                                     zip(self.parameters, self.npe["mean_abs_shift"],
                                         strict=True))
                         + f"; coverage on reference data {self.npe['coverage']}.")
            mis = self.npe.get("misspecification")
            if mis:
                lines.append(f"Misspecification (MMD of the reference summaries against the "
                             f"training set): p = {mis['p_value']:.3g} (α = {mis['alpha']:g}); "
                             f"{mis['fraction_flagged']:.0%} of the pairs flagged alone.")
            lines.append("")
        if self.convergence is not None:
            c = self.convergence
            lines += [f"Convergence ladder ({c['unit']}):", "",
                      "| " + c["unit"] + " | forces | rms_dx [Mpc/h] | max abs P ratio-1 "
                      "| max 1-r^2 |", "| --- | --- | --- | --- | --- |"]
            for i, level in enumerate(c["levels"]):
                lines.append(f"| {level} | {c['n_forces'][i]} | {c['rms_dx'][i]:.4g} | "
                             f"{c['pk_ratio'][i]:.3g} | {c['one_minus_r2'][i]:.3g} |")
            need = c.get("forces_to_pass")
            if need:
                lines += ["", "Field-level thresholds pass from: " + (
                    "none within the ladder" if need["n_forces"] is None else
                    f"{need['n_forces']} forces ({c['unit']} {need['level']})"
                    + ("" if need["stable"] else ", not at every costlier level")) + "."]
            lines.append("")
        return "\n".join(lines)


def _clean(obj):
    """JSON-safe copy: numpy to Python, non-finite floats to None."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_clean(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _clean(obj.tolist())
    if isinstance(obj, np.generic):
        return _clean(obj.item())
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    return obj


def _array(values) -> np.ndarray:
    return np.array([np.nan if v is None else v for v in values], dtype=np.float64)


def plot_report(report: CertificationReport, out_dir, prefix: str | None = None) -> list[Path]:
    """PNG plots of a report in ``out_dir``: P(k) ratio and 1 − r² per k (mean and worst over
    the design, thresholds dashed), bispectrum ratio per triangle, convergence ladder."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    prefix = prefix or f"certify_{report.name}"
    th = {c.name: c.threshold for c in report.checks}
    k = _array(report.k)
    files = []

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, name, label in ((axes[0], "pk_ratio", r"$|P/P_\mathrm{ref}-1|$"),
                            (axes[1], "one_minus_r2", r"$1-r^2$")):
        for pair in report.pairs:
            ax.plot(k, np.abs(_array(pair[name])), color="C0", alpha=0.15, lw=0.8)
        ax.plot(k, np.abs(_array(report.summary[name + "_mean"])), "C0-", lw=2,
                label="mean over design")
        ax.plot(k, _array(report.summary[name + "_worst"]), "C3-", lw=1.5, label="worst")
        if name in th:
            ax.axhline(th[name], color="k", ls="--", lw=1, label="threshold")
        ax.plot(k, _array(report.sigma_cv), color="grey", ls=":",
                label=r"$\sqrt{2/N_\mathrm{modes}}$")
        ax.axvline(report.kmax, color="k", lw=0.5)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(r"$k$ [$h\,\mathrm{Mpc}^{-1}$]")
        ax.set_ylabel(label)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{report.under_test} vs {report.reference}")
    fig.tight_layout()
    files.append(save_figure(fig, out_dir / f"{prefix}_pk.png"))

    if report.triangles:
        fig, ax = plt.subplots(figsize=(6, 4))
        idx = np.arange(len(report.triangles))
        for pair in report.pairs:
            ax.plot(idx, _array(pair["bk_ratio"]), "o", color="C0", alpha=0.3, ms=3)
        ax.plot(idx, _array(report.summary["bk_ratio_mean"]), "C0-", lw=2, label="mean")
        if "bk_ratio" in th:
            for sign in (-1, 1):
                ax.axhline(sign * th["bk_ratio"], color="k", ls="--", lw=1)
        ax.set_xticks(idx, [",".join(f"{x:.2f}" for x in t) for t in report.triangles],
                      rotation=90, fontsize=6)
        ax.set_ylabel(r"$B/B_\mathrm{ref}-1$")
        ax.set_title(f"{report.under_test}: bispectrum (k1,k2,k3 [h/Mpc])")
        ax.legend(fontsize=8)
        fig.tight_layout()
        files.append(save_figure(fig, out_dir / f"{prefix}_bk.png"))

    if report.convergence is not None:
        c = report.convergence
        fig, ax = plt.subplots(figsize=(5, 4))
        forces = np.maximum(np.array(c["n_forces"], dtype=float), 0.5)
        for name, style in (("rms_dx", "o-"), ("pk_ratio", "s-"), ("one_minus_r2", "^-")):
            ax.loglog(forces, np.maximum(_array(c[name]), 1e-12), style,
                      label=name + ("" if c["converging"][name] else " (NOT converging)"))
        ax.set_xlabel("force evaluations")
        ax.set_ylabel("error vs reference")
        ax.set_title(f"convergence: {report.under_test}")
        ax.legend(fontsize=8)
        fig.tight_layout()
        files.append(save_figure(fig, out_dir / f"{prefix}_convergence.png"))
    return files
