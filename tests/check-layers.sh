#!/bin/sh
# SPDX-License-Identifier: MIT
# The layers of lib/ (docs/DESIGN.md, "Parts"): every file has one, and no
# file calls a file of a layer above its own, nor do files call each
# other in a circle.  Read from the code: a function lm__x defined in one
# file and named in another is a call from the second to the first.
set -eu
top=${srcdir:-$(dirname "$0")/..}
command -v python3 >/dev/null || { echo "SKIP: python3 is not installed"; exit 77; }
exec python3 - "$top/lib" <<'EOF'
import collections, glob, os, re, sys

# Lowest first; a file may call files of its own layer or below.
LAYERS = [
    ("base", "alloc uffd pagetable fileio checksum cluster remote epoch log stats error sockpath"),
    ("stores", "swap image store"),
    ("page state", "snapview pte space"),
    ("engines", "install cow fault evict"),
    ("resolver", "resolve"),
    ("front ends", "handler signal"),
    ("API", "runtime region snapshot report fork"),
    ("hosts", "preload"),
]
layer = {}
for i, (_, names) in enumerate(LAYERS):
    for n in names.split():
        layer[n + ".c"] = i

libdir = sys.argv[1]
files = sorted(os.path.basename(f) for f in glob.glob(os.path.join(libdir, "*.c")))
text = {f: open(os.path.join(libdir, f)).read() for f in files}
bad = [f for f in files if f not in layer]
for f in bad:
    print(f"FAIL: lib/{f} has no layer: give it one here and in docs/DESIGN.md")

# Definitions: a name lm__x followed by a parameter list and a body.
defn = re.compile(r"^(?:static\s+)?(?:inline\s+)?[\w\s\*]+?\b(lm__\w+)\s*\([^;{]*?\)\s*\{",
                  re.M | re.S)
defs = {}
for f in files:
    for m in defn.finditer(text[f]):
        defs[m.group(1)] = f

calls = collections.defaultdict(lambda: collections.defaultdict(set))
for f in files:
    for name in set(re.findall(r"\blm__\w+\b", text[f])):
        d = defs.get(name)
        if d and d != f:
            calls[f][d].add(name)

up = 0
for f in files:
    for d, names in sorted(calls[f].items()):
        if f in layer and d in layer and layer[d] > layer[f]:
            up += 1
            print(f"FAIL: lib/{f} ({LAYERS[layer[f]][0]}) calls up into lib/{d} "
                  f"({LAYERS[layer[d]][0]}): {', '.join(sorted(names))}")

# Circles, even within a layer.
state, path, circles = {}, [], []
def visit(u):
    state[u] = 1
    path.append(u)
    for v in sorted(calls[u]):
        if state.get(v) == 1:
            circles.append(path[path.index(v):] + [v])
        elif not state.get(v):
            visit(v)
    path.pop()
    state[u] = 2
for f in files:
    if not state.get(f):
        visit(f)
for c in circles:
    print("FAIL: a circle: " + " -> ".join("lib/" + f for f in c))

n = sum(len(v) for v in calls.values())
print(f"{len(files)} files in {len(LAYERS)} layers, {n} file-to-file calls, "
      f"{up} upward, {len(circles)} circles")
sys.exit(1 if bad or up or circles else 0)
EOF
