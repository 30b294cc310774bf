#!/usr/bin/env python3
"""Lists import cycles between the files of src/ (issue 19: "no two files import each other,
directly or in a circle"). A file imports another when it names an item of it by path: `use
crate::a::b`, `use super::x`, `super::x::Y` or `crate::a::b::Y` in code — a parent naming its
child's items too (`mod x;` alone is not an import). Exits 1 and prints each cycle when there is one.

    scripts/import-cycles.py [SRC]      # SRC defaults to src/
"""
import os
import re
import sys

src = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "src")
src = os.path.normpath(src)


def module_of(path):
    rel = os.path.relpath(path, src)[:-3].split(os.sep)
    if rel[-1] in ("mod", "lib", "main"):
        rel = rel[:-1]
    return tuple(rel)


files = {}
for root, _, names in os.walk(src):
    for n in names:
        if n.endswith(".rs"):
            p = os.path.join(root, n)
            if os.path.relpath(p, src).startswith("bin"):
                continue
            files[module_of(p)] = p


def resolve(mod, segs):
    """The longest prefix of mod-relative path segs that is a file's module."""
    best = None
    for i in range(1, len(segs) + 1):
        if tuple(segs[:i]) in files:
            best = tuple(segs[:i])
    return best


def strip_comments(text):
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    return "\n".join(l.split("//")[0] for l in text.splitlines())


def is_dir_module(mod):
    return files[mod].endswith(("mod.rs", "lib.rs"))


edges = {m: set() for m in files}
path_re = re.compile(r"\b(crate|super|self)((?:::[A-Za-z_][A-Za-z0-9_]*)+)")
group_re = re.compile(r"\b(crate|super|self)((?:::[A-Za-z_][A-Za-z0-9_]*)*)::\{([^}]*)\}")
for mod, path in files.items():
    text = strip_comments(open(path).read())
    # Inline test modules (at the end of a file) are not the code's structure, and `super`
    # inside them is the file itself.
    inline = re.search(r"#\[cfg\(test\)\]\s*mod\s+\w+\s*\{", text)
    if inline:
        text = text[: inline.start()]
    # the parent of a file module: for a/b.rs it is a; for a/mod.rs (module a) it is the parent of a
    here = list(mod) if is_dir_module(mod) else list(mod)
    parent = here[:-1]
    refs = []
    for m in group_re.finditer(text):
        for item in m.group(3).split(","):
            item = item.strip().split(" as ")[0].strip()
            if item:
                refs.append((m.group(1), (m.group(2) + "::" + item).strip(":").split("::")))
    for m in path_re.finditer(text):
        refs.append((m.group(1), m.group(2).strip(":").split("::")))
    # Paths from a module to its own children need no prefix (`use event::Worker;`).
    for child in re.findall(r"^\s*(?:pub(?:\([a-z]+\))?\s+)?mod\s+([a-z_0-9]+)\s*;", text, flags=re.M):
        for m in re.finditer(r"(?<![:\w])" + child + r"((?:::[A-Za-z_][A-Za-z0-9_]*)+)", text):
            refs.append(("self", [child] + m.group(1).strip(":").split("::")))
    for base, segs in refs:
        segs = [s for s in segs if s and s != "self"]
        if base == "crate":
            full = segs
        elif base == "super":
            full = parent + segs
        else:
            full = here + segs
        target = resolve(mod, full)
        if target is None or target == mod:
            continue
        edges[mod].add(target)

# Tarjan's strongly connected components.
index, low, stack, on, sccs, counter = {}, {}, [], set(), [], [0]


def strong(v):
    index[v] = low[v] = counter[0]
    counter[0] += 1
    stack.append(v)
    on.add(v)
    for w in edges[v]:
        if w not in index:
            strong(w)
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
            sccs.append(comp)


sys.setrecursionlimit(10000)
for v in sorted(files):
    if v not in index:
        strong(v)
name = lambda m: os.path.relpath(files[m], os.path.dirname(src))
for comp in sccs:
    print("cycle: " + " <-> ".join(sorted(name(m) for m in comp)))
print(f"{len(files)} files, {sum(len(e) for e in edges.values())} imports, {len(sccs)} cycle(s)")
sys.exit(1 if sccs else 0)
