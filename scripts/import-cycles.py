#!/usr/bin/env python3
"""Lists the import cycles between the files under src/ (non-test code only).

Every `crate::`, `super::`, `self::` and child-module path (in `use` trees and inline) is
resolved to the file that defines what it names (following `pub use` re-exports); an edge
A -> B means A names something in B. Prints each strongly connected component of more than
one file, and exits 1 if one spans more than one top-level module (a parent module's file and
its children naming each other is how Rust modules are built, and is only listed), so
`scripts/import-cycles.py` can guard the layering (ARCHITECTURE.md, "Where things live").
With --modules, files are merged into their top-level module (src/auth/*.rs is `auth`) and
the cycles between modules are listed instead (reported, not an error: `config` holds the
compiled types every layer reads and builds them from those layers).
With --strict, a name re-exported by a module counts as an import of that module's file
(`config::Route` is config/mod.rs, not config/route.rs).
Usage: scripts/import-cycles.py [--edges] [--modules] [--strict]
"""

import os
import re
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src")


def module_files():
    """Maps module paths (tuples) to files, e.g. ('config', 'file') -> src/config/file.rs."""
    out = {}
    for dirpath, _, files in os.walk(ROOT):
        for name in files:
            if not name.endswith(".rs"):
                continue
            rel = os.path.relpath(os.path.join(dirpath, name), ROOT)
            parts = rel[:-3].split(os.sep)
            if parts[-1] == "mod":
                parts = parts[:-1]
            if parts in (["lib"], ["main"]):
                parts = []
            out[tuple(parts)] = "src/" + rel.replace(os.sep, "/")
    return out


def own_path(file):
    rel = file[len("src/"):-3].split("/")
    if rel[-1] == "mod":
        rel = rel[:-1]
    if rel in (["lib"], ["main"]):
        rel = []
    return tuple(rel)


def strip(text):
    """Drops the test modules, comments, strings and char literals."""
    cut = re.search(r"^#\[cfg\(test\)\]\s*\n\s*(pub(\(crate\))?\s+)?mod \w+", text, re.M)
    if cut:
        text = text[: cut.start()]
    text = re.sub(r"//[^\n]*", "", text)
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    text = re.sub(r'r#*"(?:.|\n)*?"#*', '""', text)
    text = re.sub(r'"(?:\\.|[^"\\])*"', '""', text)
    return text


def expand_use(tree):
    """`a::{b, c::{d, e}}` -> [a::b, a::c::d, a::c::e]."""
    tree = re.sub(r"\s+", "", tree)
    depth = 0
    for i, ch in enumerate(tree):
        if ch == "{":
            if depth == 0:
                prefix = tree[:i]
                inner = tree[i + 1 : tree.rindex("}")]
                parts, level, start = [], 0, 0
                for j, c in enumerate(inner):
                    if c == "{":
                        level += 1
                    elif c == "}":
                        level -= 1
                    elif c == "," and level == 0:
                        parts.append(inner[start:j])
                        start = j + 1
                parts.append(inner[start:])
                out = []
                for p in parts:
                    if p:
                        out.extend(expand_use(prefix + p))
                return out
            depth += 1
    return [re.sub(r"\bas\w+$", "", tree.split(" as ")[0])]


def resolve(segments, here, modules, reexports):
    """The file that defines what `segments` names, seen from module `here`: the longest
    module prefix, or, for a name that module re-exports (`pub use`), the file it comes from."""
    path = list(here)
    segs = list(segments)
    if segs[0] == "crate":
        path, segs = [], segs[1:]
    elif segs[0] in ("self", "super"):
        while segs and segs[0] in ("self", "super"):
            if segs[0] == "super":
                path = path[:-1]
            segs = segs[1:]
    else:
        return None
    best, rest = None, []
    for n in range(len(segs) + 1):
        key = tuple(path + segs[:n])
        if key in modules:
            best, rest = modules[key], segs[n:]
    if best and rest and rest[0] in reexports.get(best, {}) and "--strict" not in sys.argv:
        return reexports[best][rest[0]]
    return best


def uses(text):
    paths = []
    for m in re.finditer(r"\buse\s+((?:crate|super|self)::[^;]+);", text):
        paths.extend(expand_use(m.group(1)))
    return paths


def edges():
    modules = module_files()
    texts = {}
    for file in modules.values():
        with open(os.path.join(ROOT, "..", file)) as fh:
            texts[file] = strip(fh.read())
    # `pub use child::Name` in a module: `module::Name` is defined in child's file.
    reexports = {}
    for file, text in texts.items():
        here = own_path(file)
        for m in re.finditer(r"^pub(?:\(crate\))?\s+use\s+([^;]+);", text, re.M):
            for p in expand_use(m.group(1)):
                segs = [s for s in p.split("::") if s]
                if segs[0] not in ("crate", "super", "self"):
                    segs = ["self"] + segs
                target = resolve(segs, here, modules, {})
                if target and target != file:
                    reexports.setdefault(file, {})[segs[-1]] = target
    graph = {f: set() for f in modules.values()}
    for file in modules.values():
        here = own_path(file)
        text = texts[file]
        # `pub use` lines only re-export: the files that name those items depend on the
        # defining file directly (above), not through this one.
        text_no_reexport = re.sub(r"^pub(?:\(crate\))?\s+use\s+[^;]+;", "", text, flags=re.M)
        paths = uses(text_no_reexport)
        for m in re.finditer(r"\b((?:crate|super|self)(?:::\w+)+)", text_no_reexport):
            paths.append(m.group(1))
        # A path that starts with a child module's name (`validate::build`, `use file::X`).
        children = {k[-1] for k in modules if len(k) == len(here) + 1 and k[: len(here)] == here}
        for m in re.finditer(r"(?<![\w:])(\w+)((?:::\w+)+)", text_no_reexport):
            if m.group(1) in children and m.group(1) not in ("crate", "super", "self"):
                paths.append("self::" + m.group(1) + m.group(2))
        for p in paths:
            segs = [s for s in p.split("::") if s and s != "*"]
            target = resolve(segs, here, modules, reexports)
            if target and target != file:
                graph[file].add(target)
    # A module's own file declares its children (`mod x;`): that is not an import.
    return graph


def sccs(graph):
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
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
            out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def top_module(file):
    parts = file[len("src/"):-3].split("/")
    return parts[0] if parts[0] not in ("lib", "main") else "crate"


def main():
    graph = edges()
    if "--modules" in sys.argv:
        merged = {}
        for f, targets in graph.items():
            m = top_module(f)
            merged.setdefault(m, set()).update(
                top_module(t) for t in targets if top_module(t) != m
            )
        for c in sccs(merged):
            if len(c) > 1:
                print(f"module cycle: {', '.join(c)}")
        return 0
    if "--edges" in sys.argv:
        for f in sorted(graph):
            for t in sorted(graph[f]):
                print(f"{f} -> {t}")
    cycles = [c for c in sccs(graph) if len(c) > 1]
    # A parent module's file and its children's files naming each other (`super::helper`,
    # `child::function`) is how Rust modules are built; a cycle across modules is not.
    across = [c for c in cycles if len({top_module(f) for f in c}) > 1]
    for c in cycles:
        where = "across modules" if c in across else "within one module"
        print(f"cycle of {len(c)} files ({where}):")
        for f in c:
            inside = sorted(t for t in graph[f] if t in c)
            print(f"  {f} -> {', '.join(inside)}")
    if not across:
        print("no import cycle across modules under src/")
    return 1 if across else 0


if __name__ == "__main__":
    sys.exit(main())
