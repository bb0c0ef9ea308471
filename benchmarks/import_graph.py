"""The package's import graph: how many layers deep it is and which loops run through it.

    python benchmarks/import_graph.py [--dot FILE] [--out FILE]

Every `import` in src/audiocurate counts, wherever it is written: at module level, inside a
function (lazy), or under `if TYPE_CHECKING:`. A node is a module (a package is its
`__init__`); `from .x import y` is an edge to `x`, or to `x.y` when that is a module. A loop is a
strongly connected component of more than one module. Layers are the longest path in the graph
of components: a module's layer is one more than the deepest module it imports. The same figures
for module-level imports alone show which loops exist only through lazy imports.
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
from pathlib import Path

PACKAGE = "audiocurate"
SRC = Path(__file__).resolve().parent.parent / "src"


def modules(src: Path = SRC) -> dict[str, Path]:
    out = {}
    for path in sorted((src / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(src).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _resolve(name: str, known: dict[str, Path]) -> str | None:
    """The longest known module that `name` is or lies in."""
    while name and name not in known:
        name = name.rpartition(".")[0]
    return name or None


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def edges(known: dict[str, Path]) -> list[tuple[str, str, str]]:
    """(importer, imported, kind) with kind `module`, `lazy` (in a function) or `typing`."""
    out = set()
    for name, path in known.items():
        is_package = path.name == "__init__.py"
        tree = ast.parse(path.read_text(), str(path))

        def visit(node: ast.AST, kind: str) -> None:
            for child in ast.iter_child_nodes(node):
                child_kind = kind
                if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)) and kind == "module":
                    child_kind = "lazy"
                if isinstance(child, ast.If) and _is_type_checking(child.test):
                    for stmt in child.body:
                        visit_stmt(stmt, "typing")
                    for stmt in child.orelse:
                        visit_stmt(stmt, kind)
                    continue
                visit_stmt(child, child_kind, recurse=False)
                visit(child, child_kind)

        def visit_stmt(stmt: ast.AST, kind: str, recurse: bool = True) -> None:
            targets: list[str] = []
            if isinstance(stmt, ast.Import):
                targets = [a.name for a in stmt.names]
            elif isinstance(stmt, ast.ImportFrom):
                if stmt.level:
                    base = name.split(".") if is_package else name.split(".")[:-1]
                    base = base[: len(base) - (stmt.level - 1)]
                    prefix = ".".join(base + ([stmt.module] if stmt.module else []))
                else:
                    prefix = stmt.module or ""
                targets = [f"{prefix}.{a.name}" for a in stmt.names] or [prefix]
            for target in targets:
                if target.split(".")[0] != PACKAGE:
                    continue
                dest = _resolve(target, known)
                if dest and dest != name:
                    out.add((name, dest, kind))
            if recurse:
                visit(stmt, kind)

        visit(tree, "module")
    return sorted(out)


def components(nodes: list[str], graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components (iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    out: list[list[str]] = []
    counter = 0
    for root in nodes:
        if root in index:
            continue
        work = [(root, iter(sorted(graph.get(root, ()))))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            advanced = False
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                    advanced = True
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            if advanced:
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                comp = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    comp.append(member)
                    if member == node:
                        break
                out.append(sorted(comp))
    return out


def measure(known: dict[str, Path], kinds: set[str]) -> dict:
    graph: dict[str, set[str]] = {n: set() for n in known}
    for src, dest, kind in edges(known):
        if kind in kinds:
            graph[src].add(dest)
    comps = components(sorted(known), graph)
    comp_of = {m: i for i, c in enumerate(comps) for m in c}
    # Tarjan emits components in reverse topological order: dependencies first.
    depth: dict[int, int] = {}
    for i, comp in enumerate(comps):
        below = {comp_of[d] for m in comp for d in graph[m]} - {i}
        depth[i] = 1 + max((depth[j] for j in below), default=0)
    deepest = max(depth, key=depth.get)
    chain, current = [], deepest
    while True:
        comp = comps[current]
        chain.append(comp[0] if len(comp) == 1 else f"[loop of {len(comp)}: {comp[0]}, ...]")
        below = {comp_of[d] for m in comps[current] for d in graph[m]} - {current}
        if not below:
            break
        current = max(below, key=lambda j: depth[j])
    return {"layers": depth[deepest], "loops": [c for c in comps if len(c) > 1],
            "edges": sum(len(v) for v in graph.values()), "longest_chain": chain}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dot", help="also write the graph (all imports) as Graphviz DOT")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "import_graph.json"))
    args = ap.parse_args()
    known = modules()
    lines = sum(len(p.read_text().splitlines()) for p in known.values())
    result = {"modules": len(known), "lines": lines,
              "all_imports": measure(known, {"module", "lazy", "typing"}),
              "module_level_only": measure(known, {"module"})}
    for label in ("all_imports", "module_level_only"):
        r = result[label]
        print(f"{label}: {result['modules']} modules, {lines} lines, {r['edges']} edges, "
              f"{r['layers']} layers, {len(r['loops'])} loops")
        for loop in r["loops"]:
            print("  loop:", " <-> ".join(m.removeprefix(PACKAGE + ".") for m in loop))
        print("  longest chain:", " -> ".join(m.removeprefix(PACKAGE + ".") or PACKAGE for m in r["longest_chain"]))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    if args.dot:
        with open(args.dot, "w") as f:
            f.write("digraph imports {\n  rankdir=LR;\n")
            for src, dest, kind in edges(known):
                style = {"module": "solid", "lazy": "dashed", "typing": "dotted"}[kind]
                f.write(f'  "{src}" -> "{dest}" [style={style}];\n')
            f.write("}\n")


if __name__ == "__main__":
    sys.exit(main())
