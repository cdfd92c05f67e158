"""Draw hf_ddpm's import graph between its subpackages as docs/architecture.svg.

    python docs/import_graph.py            # rewrite docs/architecture.svg from the source tree
    python docs/import_graph.py --check    # exit 1 if the picture no longer matches the source

The graph is read from the code (every ``import``/``from ... import`` of an hf_ddpm module, found with
``ast``), so the picture cannot show an architecture the code does not have. Each box lists the
subpackage's modules; an arrow A -> B means some module of A imports B.
"""

from __future__ import annotations

import argparse
import ast
import sys
from html import escape
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "hf_ddpm"
OUTPUT = ROOT / "docs" / "architecture.svg"
# Rows from the bottom (what everything rests on) to the top (the entry point).
ROWS = [["core"], ["data", "hub"], ["sampling"], ["evaluation"], ["training"], ["cli"]]
BOX_W, ROW_H, LINE_H, GAP = 230, 150, 15, 40


def subpackage_graph() -> tuple[dict[str, list[str]], set[tuple[str, str]]]:
    """(modules of each subpackage, edges (importer, imported)) of the source tree."""
    modules: dict[str, list[str]] = {}
    edges: set[tuple[str, str]] = set()
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE)
        if "pretrained" in rel.parts or rel == Path("__init__.py"):
            continue
        own = rel.parts[0] if len(rel.parts) > 1 else rel.stem
        if path.name != "__init__.py":
            modules.setdefault(own, []).append(path.stem)
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            if own == "cli" and isinstance(node, ast.Constant) and isinstance(node.value, str):
                names = [node.value]  # the subcommand table names modules as strings
            for name in names:
                parts = name.split(".")
                if parts[0] == "hf_ddpm" and len(parts) > 1 and parts[1] != own:
                    edges.add((own, parts[1]))
    return modules, edges


def render(modules: dict[str, list[str]], edges: set[tuple[str, str]]) -> str:
    width = 2 * BOX_W + 3 * GAP
    box_h = {
        name: 28 + LINE_H * ((len(modules.get(name, [])) + 1) // 2) for row in ROWS for name in row
    }
    bottom = len(ROWS) * ROW_H + GAP  # where the lowest row's row ends; its boxes may reach below
    height = bottom + max(0, max(box_h[name] for name in ROWS[0]) - ROW_H + GAP // 2)
    where: dict[str, tuple[float, float, float]] = {}  # name -> (x centre, y top, box height)
    for level, row in enumerate(ROWS):
        y = bottom - (level + 1) * ROW_H
        for i, name in enumerate(row):
            x = width / 2 if len(row) == 1 else GAP + BOX_W / 2 + i * (BOX_W + GAP)
            where[name] = (x, y, box_h[name])
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        'font-family="sans-serif" font-size="11">',
        '<defs><marker id="a" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" '
        'markerHeight="7" orient="auto"><path d="M0,0 L10,5 L0,10 z" fill="#555"/></marker></defs>',
        '<rect width="100%" height="100%" fill="white"/>',
    ]
    outgoing = {name: sorted(d for s, d in edges if s == name) for name in where}
    incoming = {name: sorted(s for s, d in edges if d == name) for name in where}

    def spread(names: list[str], name: str, x: float) -> float:
        # Each edge leaves and enters a box at its own point, so that arrows do not overlap.
        return x + (names.index(name) - (len(names) - 1) / 2) * BOX_W / (len(names) + 1)

    for src, dst in sorted(edges):
        (x1, y1, h1), (x2, y2, _) = where[src], where[dst]
        xa, xb = spread(outgoing[src], dst, x1), spread(incoming[dst], src, x2)
        out.append(
            f'<line x1="{xa:.0f}" y1="{y1 + h1:.0f}" x2="{xb:.0f}" y2="{y2:.0f}" stroke="#555" '
            f'marker-end="url(#a)"><title>{src} imports {dst}</title></line>'
        )
    for name, (x, y, h) in where.items():
        fill = "#fde9c8" if name == "core" else "#e3eefc"
        out.append(
            f'<rect x="{x - BOX_W / 2:.0f}" y="{y:.0f}" width="{BOX_W}" height="{h:.0f}" rx="6" '
            f'fill="{fill}" fill-opacity="0.8" stroke="#333"/>'
        )
        label = f"hf_ddpm/{name}/" if name != "cli" else "hf_ddpm/cli.py"
        out.append(
            f'<text x="{x:.0f}" y="{y + 16:.0f}" text-anchor="middle" font-weight="bold" '
            f'font-size="13">{escape(label)}</text>'
        )
        mods = modules.get(name, []) if name != "cli" else []
        for i in range(0, len(mods), 2):
            line = ", ".join(mods[i : i + 2])
            out.append(
                f'<text x="{x:.0f}" y="{y + 32 + LINE_H * (i // 2):.0f}" text-anchor="middle">'
                f"{escape(line)}</text>"
            )
    out.append("</svg>")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the SVG is out of date")
    args = parser.parse_args(argv)
    modules, edges = subpackage_graph()
    unplaced = sorted({*modules, *(n for e in edges for n in e)} - {n for r in ROWS for n in r})
    if unplaced:
        print(f"place {unplaced} in ROWS of {Path(__file__).name}", file=sys.stderr)
        return 1
    svg = render(modules, edges)
    if args.check:
        if not OUTPUT.is_file() or OUTPUT.read_text(encoding="utf-8") != svg:
            print(f"{OUTPUT} is out of date: run python docs/import_graph.py", file=sys.stderr)
            return 1
        return 0
    tmp = OUTPUT.with_suffix(".svg.tmp")
    tmp.write_text(svg, encoding="utf-8")
    tmp.replace(OUTPUT)
    print(f"wrote {OUTPUT.relative_to(ROOT)}: {len(edges)} edges")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
