#!/usr/bin/env python3
"""Print the import structure of src/: which layer imports which, the
imports that break the layering rules, and cycles between files.

    python3 perf/scripts/imports.py [src_dir] [--legacy]

--legacy maps the flat files of the old layout (args.rs, vhost.rs, queue.rs,
...) to the layer they moved to (broker), so old and new compare.

A file's layer is its first path component under src/ (broker, channel,
connection, mgmt, protocol, store, ...; a top-level file is its own layer).
"""
import os, re, sys
from collections import defaultdict

args = [a for a in sys.argv[1:] if not a.startswith("--")]
src = args[0] if args else "src"
legacy = "--legacy" in sys.argv
files = {}
for root, _, names in os.walk(src):
    for n in names:
        if n.endswith(".rs") and "/bin" not in root.replace(src, ""):
            path = os.path.join(root, n)
            rel = os.path.relpath(path, src)
            if rel in ("main.rs", "lib.rs"):
                continue
            mod = rel[:-3].replace("/mod", "").replace("/", "::")
            files[mod] = open(path).read()

mods = set(files)
def target(path):
    """The longest module named by crate::a::b::c."""
    parts = path.split("::")
    for k in range(len(parts), 0, -1):
        m = "::".join(parts[:k])
        if m in mods:
            return m
    return None

edges = defaultdict(set)
for m, text in files.items():
    # drop #[cfg(test)] modules
    text = text.split("#[cfg(test)]")[0]
    # comments name modules without importing them
    text = "\n".join(l for l in text.split("\n") if not l.lstrip().startswith("//"))
    for hit in re.findall(r"crate::([a-z_][a-z_0-9]*(?:::[a-z_][a-z_0-9]*)*)", text):
        t = target(hit)
        if t and t != m:
            edges[m].add(t)
    # super:: from a child
    for hit in re.findall(r"\bsuper::([a-z_][a-z_0-9]*)", text):
        parent = "::".join(m.split("::")[:-1])
        t = target(parent + "::" + hit if parent else hit)
        if t and t != m:
            edges[m].add(t)

MOVED = {"args", "vhost", "exchange", "queue", "dead_letter", "dedup", "delayed", "delivery"}
def layer(m):
    top = m.split("::")[0]
    return "broker" if legacy and top in MOVED else top
forbidden = {
    "store": {"broker", "channel", "connection", "mgmt", "server"},
    "protocol": {x for x in {layer(m) for m in mods}} - {"protocol", "error"},
    "broker": {"channel", "connection", "mgmt", "server"},
    "mgmt": {"protocol", "channel", "connection"},
    "clock": {x for x in {layer(m) for m in mods}} - {"clock"},
    "error": {x for x in {layer(m) for m in mods}} - {"error", "protocol"},
}
# The cluster is imported by the launcher (src/main.rs) only.
for l in {layer(m) for m in mods} - {"cluster"}:
    forbidden.setdefault(l, set()).add("cluster")
print("layer imports:")
lay = defaultdict(set)
for a, ts in edges.items():
    for b in ts:
        if layer(a) != layer(b):
            lay[layer(a)].add(layer(b))
for a in sorted(lay):
    print(f"  {a:11} -> {', '.join(sorted(lay[a]))}")
bad = [(a, b) for a, ts in edges.items() for b in ts if layer(b) in forbidden.get(layer(a), set())]
print(f"imports against the rules: {len(bad)}")
for a, b in sorted(bad):
    print(f"  {a} -> {b}")

# strongly connected components (Tarjan) over files
index = {}; low = {}; stack = []; on = set(); sccs = []; i = [0]
def visit(v):
    index[v] = low[v] = i[0]; i[0] += 1; stack.append(v); on.add(v)
    for w in edges.get(v, ()):
        if w not in index:
            visit(w); low[v] = min(low[v], low[w])
        elif w in on:
            low[v] = min(low[v], index[w])
    if low[v] == index[v]:
        c = []
        while True:
            w = stack.pop(); on.discard(w); c.append(w)
            if w == v: break
        if len(c) > 1: sccs.append(sorted(c))
sys.setrecursionlimit(10000)
for v in sorted(mods):
    if v not in index: visit(v)
print(f"import circles (files importing each other, directly or not): {len(sccs)}")
for c in sccs:
    span = sorted({layer(m) for m in c})
    print(f"  {len(c)} files in {', '.join(span)}: {' '.join(c)}")
