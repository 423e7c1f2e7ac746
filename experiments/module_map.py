"""Draw the module map of cocasbi (who imports whom) into docs/figures/module_map.png.

    python experiments/module_map.py [--out docs/figures/module_map.png]

Imports are read with ``ast`` from the source (module level and inside functions), so the
picture is the code's real dependency graph. Modules are grouped into the layers of
docs/architecture.md, drawn bottom (foundations) to top (command line); an arrow that points
downward (or sideways within a layer) is the one-way data flow; any upward arrow is printed as
a violation and drawn in red.
"""

from __future__ import annotations

import argparse
import ast
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "cocasbi"

#: (layer name, module-name prefixes), bottom to top
LAYERS = [
    ("foundations", ["cocasbi.seeds", "cocasbi.threads", "cocasbi.io", "cocasbi.config",
                     "cocasbi.cosmology", "cocasbi.growth", "cocasbi.boltzmann",
                     "cocasbi.prior"]),
    ("mesh", ["cocasbi.fft", "cocasbi.cic", "cocasbi.gravity"]),
    ("particles", ["cocasbi.ic", "cocasbi.nbody", "cocasbi.frame"]),
    ("runs", ["cocasbi.simulation", "cocasbi.stats"]),
    ("models", ["cocasbi.forward", "cocasbi.frame.training"]),
    ("farm", ["cocasbi.campaign"]),
    ("inference", ["cocasbi.inference"]),
    ("certification", ["cocasbi.certify"]),
    ("command line", ["cocasbi.cli", "cocasbi.__main__"]),
]


def group_of(module: str) -> str:
    """The drawn node of a module: its subpackage (cocasbi.frame.training, cocasbi.stats, ...)
    or the module itself."""
    best = None
    for _, prefixes in LAYERS:
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and (best is None or len(p) > len(best)):
                best = p
    return best or module


def layer_of(group: str) -> int:
    for i, (_, prefixes) in enumerate(LAYERS):
        if group in prefixes:
            return i
    return len(LAYERS)


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("cocasbi"):
            out.add(node.module)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("cocasbi"))
    return out


def edges() -> set[tuple[str, str]]:
    found = set()
    for path in PACKAGE.rglob("*.py"):
        src = group_of(module_name(path))
        for target in imports(path):
            dst = group_of(target)
            if dst != src and dst != "cocasbi":
                found.add((src, dst))
    return found


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs/figures/module_map.png")
    args = parser.parse_args()
    graph = edges()
    present = {p for _, ps in LAYERS for p in ps if (ROOT / f"{p.replace('.', '/')}.py").exists()
               or (ROOT / p.replace(".", "/")).is_dir()}
    nodes = sorted({n for e in graph for n in e} | present)
    by_layer: dict[int, list[str]] = {}
    for n in nodes:
        by_layer.setdefault(layer_of(n), []).append(n)
    pos = {}
    for i, members in by_layer.items():
        for j, n in enumerate(sorted(members)):
            pos[n] = ((j + 0.5) / len(members), i)
    upward = sorted((a, b) for a, b in graph if layer_of(b) > layer_of(a))
    fig, ax = plt.subplots(figsize=(11, 9))
    for a, b in sorted(graph):
        (x0, y0), (x1, y1) = pos[a], pos[b]
        bad = (a, b) in upward
        ax.annotate("", xy=(x1, y1 + 0.12), xytext=(x0, y0 - 0.12),
                    arrowprops={"arrowstyle": "->", "color": "red" if bad else "0.6",
                                "lw": 1.6 if bad else 0.7, "shrinkA": 4, "shrinkB": 4})
    for n, (x, y) in pos.items():
        ax.text(x, y, n.removeprefix("cocasbi."), ha="center", va="center", fontsize=9,
                bbox={"boxstyle": "round", "fc": "#e8f0fe", "ec": "#4a6fa5"})
    for i, (name, _) in enumerate(LAYERS):
        ax.text(-0.02, i, name, ha="right", va="center", fontsize=9, style="italic")
    ax.set_xlim(-0.2, 1.02)
    ax.set_ylim(-0.6, len(LAYERS) - 0.4)
    ax.axis("off")
    ax.set_title("cocasbi module map: arrows point from importer to imported (data flows up)")
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f"{len(nodes)} nodes, {len(graph)} edges -> {args.out}")
    for a, b in upward:
        print(f"upward import (layering violation): {a} -> {b}")


if __name__ == "__main__":
    main()
