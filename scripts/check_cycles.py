#!/usr/bin/env python3
"""Fails when modules import each other in a circle (part of `make lint`).

Two kinds of code are checked:

- Rust crates (each `src/` folder given): a module is a file (`entity/write.rs` is
  `entity::write`, `entity/mod.rs` is `entity`). A module depends on another when it names it
  in a path (`use crate::store::memory::MemoryStore`, `crate::poll::ready(..)`,
  `super::cell::Cell`); the longest prefix of the path that is a file counts. `mod x;`
  declarations are containment, not use, and do not count; a `pub use` in a parent does
  (import siblings directly, not through the parent's re-exports).
- Python packages (each package folder given): a module depends on another when it imports it
  (`from ego.stores import X`, `import ego.errors`, `from ego import errors`); imports made
  only for type checking count too: a cycle in the design is a cycle.

Usage: check_cycles.py [--rust SRC_DIR]... [--python PACKAGE_DIR]...
Exit status 1 and every cycle printed (as `a -> b -> a`) when there is one.
"""

from __future__ import annotations

import argparse
import ast
import re
import sys
from collections.abc import Iterable
from pathlib import Path

Graph = dict[str, set[str]]


# -- Rust ------------------------------------------------------------------------------------


def rust_modules(src: Path) -> dict[str, Path]:
    """Module path (`a::b`, `` for the crate root) -> file."""
    out: dict[str, Path] = {}
    for f in sorted(src.rglob("*.rs")):
        rel = f.relative_to(src).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] in ("mod", "lib", "main"):
            parts = parts[:-1]
        out["::".join(parts)] = f
    return out


_COMMENT = re.compile(r"//[^\n]*|/\*.*?\*/", re.S)
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_USE = re.compile(r"\buse\s+([^;]+);")
_PATH = re.compile(r"\b(crate|super|self)((?:::[A-Za-z_][A-Za-z0-9_]*)+)")
_TESTS = re.compile(r"#\[cfg\(test\)\]\s*mod\s+tests\s*\{.*", re.S)


def _expand_use(tree: str) -> Iterable[str]:
    """`crate::a::{b, c::{d, e}}` -> `crate::a::b`, `crate::a::c::d`, `crate::a::c::e`."""
    tree = re.sub(r"\s+", "", tree)
    depth, start = 0, None
    for i, ch in enumerate(tree):
        if ch == "{":
            if depth == 0:
                start = i
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0 and start is not None:
                prefix = tree[:start]
                inner = tree[start + 1 : i]
                parts, d, last = [], 0, 0
                for j, c in enumerate(inner):
                    if c in "{":
                        d += 1
                    elif c == "}":
                        d -= 1
                    elif c == "," and d == 0:
                        parts.append(inner[last:j])
                        last = j + 1
                parts.append(inner[last:])
                for p in parts:
                    if p:
                        yield from _expand_use(prefix + p)
                return
    yield tree.split(" as ")[0]


def _resolve(module: str, path: str, modules: dict[str, Path]) -> str | None:
    """The file module a `crate::`/`super::`/`self::` path in `module` refers to."""
    segs = path.split("::")
    base = module.split("::") if module else []
    head, rest = segs[0], segs[1:]
    if head == "crate":
        cur: list[str] = []
    elif head == "self":
        cur = list(base)
    else:  # super (possibly repeated)
        cur = list(base)
        cur = cur[:-1]
        while rest and rest[0] == "super":
            cur = cur[:-1]
            rest = rest[1:]
    best = None
    for i in range(len(rest) + 1):
        candidate = "::".join(cur + rest[:i])
        if candidate in modules:
            best = candidate
    return best


def rust_graph(src: Path) -> Graph:
    modules = rust_modules(src)
    graph: Graph = {m: set() for m in modules}
    for module, f in modules.items():
        text = _TESTS.sub("", _STRING.sub('""', _COMMENT.sub("", f.read_text())))
        prefix = module + "::" if module else ""
        # Child modules can be named without `self::` (`use cell::Cell;`, `cell::new()`).
        children = {m[len(prefix) :] for m in modules if m.startswith(prefix) and m and "::" not in m[len(prefix) :]}
        children.discard("")
        paths: set[str] = set()
        for m in _USE.finditer(text):
            for p in _expand_use(m.group(1)):
                if p.startswith(("crate::", "super::", "self::")):
                    paths.add(p)
                elif p.split("::")[0] in children:
                    paths.add("self::" + p)
        for m in _PATH.finditer(text):
            paths.add(m.group(1) + m.group(2))
        for child in children:
            for m in re.finditer(rf"(?<![:\w]){re.escape(child)}((?:::[A-Za-z_][A-Za-z0-9_]*)+)", text):
                paths.add("self::" + child + m.group(1))
        for p in paths:
            target = _resolve(module, p, modules)
            if target is not None and target != module:
                graph[module].add(target)
    # The crate root only declares modules and re-exports: leave it out.
    graph.pop("", None)
    for deps in graph.values():
        deps.discard("")
    return graph


# -- Python ----------------------------------------------------------------------------------


def python_modules(package: Path) -> dict[str, Path]:
    root = package.name
    out: dict[str, Path] = {}
    # Stubs stand for extension modules (`_ego.pyi` is `ego._ego`).
    for f in sorted([*package.rglob("*.py"), *package.rglob("*.pyi")]):
        if f.suffix == ".pyi" and f.with_suffix(".py").exists():
            continue
        rel = f.relative_to(package.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        name = ".".join(parts)
        if name == root or name.startswith(root):
            out[name] = f
    return out


def python_graph(package: Path) -> Graph:
    modules = python_modules(package)
    graph: Graph = {m: set() for m in modules}
    for module, f in modules.items():
        is_pkg = f.stem == "__init__"
        tree = ast.parse(f.read_text(), str(f))
        for node in ast.walk(tree):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = module.split(".")
                    if not is_pkg:
                        base = base[:-1]
                    base = base[: len(base) - (node.level - 1)]
                    mod = ".".join(base + ([node.module] if node.module else []))
                else:
                    mod = node.module or ""
                targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in modules else mod for a in node.names]
            for t in targets:
                while t and t not in modules:
                    t = t.rpartition(".")[0]
                if t and t != module:
                    graph[module].add(t)
    # A package's __init__ gathers its modules (parent -> child); a child importing its
    # package's __init__ is the cycle worth reporting, so both edges stay in the graph.
    return graph


# -- cycles ----------------------------------------------------------------------------------


def cycles(graph: Graph) -> list[list[str]]:
    """One cycle per strongly connected component with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in graph:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append([*_one_cycle(graph, set(comp)), f"(all of: {', '.join(sorted(comp))})"])

    sys.setrecursionlimit(10_000)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def _one_cycle(graph: Graph, comp: set[str]) -> list[str]:
    """A shortest cycle through the component's first module, for the message."""
    start = min(comp)
    prev: dict[str, str] = {}
    frontier = [start]
    seen = {start}
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v] & comp):
                if w == start:
                    path = [v]
                    while path[-1] != start:
                        path.append(prev[path[-1]])
                    return [*reversed(path), start]
                if w not in seen:
                    seen.add(w)
                    prev[w] = v
                    nxt.append(w)
        frontier = nxt
    return sorted(comp)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rust", action="append", default=[], type=Path, help="a crate's src/ folder")
    ap.add_argument("--python", action="append", default=[], type=Path, help="a package folder")
    args = ap.parse_args(argv)
    found = 0
    for src in args.rust:
        for c in cycles(rust_graph(src)):
            found += 1
            print(f"module cycle in {src}: {' -> '.join(c[:-1])} {c[-1]}")
    for pkg in args.python:
        for c in cycles(python_graph(pkg)):
            found += 1
            print(f"module cycle in {pkg}: {' -> '.join(c[:-1])} {c[-1]}")
    if found:
        print(f"{found} module cycle(s): make one side depend on the other only (move the shared piece down a layer)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
