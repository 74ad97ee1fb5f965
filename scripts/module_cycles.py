#!/usr/bin/env python3
"""Import cycles between the library's modules: `python3 scripts/module_cycles.py [src]`.

Builds the module dependency graph of src/ (library only; the binary is left out) from the
`crate::`/`super::`/`self::` paths of every file and the bare paths through names that stand for
modules (children declared with `mod x;`, modules imported by name).

Every path `crate::a::b::c` in a file (use lines, grouped use trees, and inline paths in code)
is resolved to the longest prefix that is a module (file) of the crate; `super::` and `self::`
are resolved relative to the file's module (or to the inline module they stand in). `#[cfg(test)]
mod tests` blocks are left out. Reports cycles (strongly connected components of size > 1, that
is A uses B and B uses A, transitively) at two granularities: files (a parent `mod.rs` counts as
one module, so a parent that calls its children while they import its items is a cycle), and
top-level modules (`solve`, `structured`, `io`, ...). Exits 1 if there is a cycle.
"""
import os, re, sys
from collections import defaultdict

root = sys.argv[1] if len(sys.argv) > 1 else "src"
mods = {}  # module path tuple -> file
for d, _, fs in os.walk(root):
    for f in fs:
        if not f.endswith(".rs"):
            continue
        p = os.path.join(d, f)
        rel = os.path.relpath(p, root)
        if rel.startswith("bin" + os.sep):
            continue
        parts = rel[:-3].split(os.sep)
        if parts == ["lib"]:
            parts = []
        elif parts[-1] == "mod":
            parts = parts[:-1]
        mods[tuple(parts)] = p

def strip_comments(s):
    s = re.sub(r"/\*.*?\*/", "", s, flags=re.S)
    return re.sub(r"//[^\n]*", "", s)

def expand_use(tree, prefix):
    """Expand a use tree string into full paths (lists)."""
    tree = tree.strip()
    out = []
    # split top-level on commas
    def split_top(s):
        depth, cur, res = 0, "", []
        for ch in s:
            if ch == "{": depth += 1
            if ch == "}": depth -= 1
            if ch == "," and depth == 0:
                res.append(cur); cur = ""
            else:
                cur += ch
        if cur.strip(): res.append(cur)
        return res
    m = re.match(r"^([\w:\s]*?)(::)?\s*\{(.*)\}$", tree, flags=re.S)
    if m and tree.endswith("}"):
        head = [x for x in m.group(1).replace(" ", "").split("::") if x]
        for sub in split_top(m.group(3)):
            out += expand_use(sub, prefix + head)
    else:
        t = re.sub(r"\s+as\s+\w+$", "", tree)
        out.append(prefix + [x for x in t.replace(" ", "").split("::") if x])
    return out

def resolve(path, here):
    # path: list of segments starting with crate/super/self
    if not path: return None
    if path[0] == "crate":
        base, rest = [], path[1:]
    elif path[0] in ("super", "self"):
        base = list(here)
        rest = path
        while rest and rest[0] in ("super", "self"):
            if rest[0] == "super": base = base[:-1]
            rest = rest[1:]
    else:
        return None
    full = base + rest
    for k in range(len(full), -1, -1):
        if tuple(full[:k]) in mods:
            return tuple(full[:k])
    return None

edges = defaultdict(set)
for m, f in mods.items():
    src = strip_comments(open(f).read())
    # test modules (#[cfg(test)] mod tests { ... }) are not part of the dependency graph of code
    src = re.split(r"#\[cfg\(test\)\]\s*mod\s+tests", src)[0]
    # inline modules (`mod x { ... }`, e.g. generated code): `super::` inside them is relative
    # to the inline module
    spans = []
    for im in re.finditer(r"\bmod\s+(\w+)\s*\{", src):
        depth, k = 0, im.end() - 1
        while k < len(src):
            if src[k] == "{": depth += 1
            elif src[k] == "}":
                depth -= 1
                if depth == 0: break
            k += 1
        spans.append((im.start(), k, im.group(1)))
    def relocate(p, pos):
        inl = [n for (a, b, n) in sorted(spans) if a <= pos <= b]
        if p[0] in ("super", "self") and inl:
            base, rest = list(m) + inl, list(p)
            while rest and rest[0] in ("super", "self"):
                if rest[0] == "super": base = base[:-1]
                rest = rest[1:]
            return ["crate"] + base + rest
        return p
    paths = []
    for u in re.finditer(r"\buse\s+((?:crate|super|self)\b[^;]*);", src, flags=re.S):
        paths += [relocate(x, u.start()) for x in expand_use(u.group(1), [])]
    for u in re.finditer(r"\b((?:crate|super|self)(?:::\w+)+)", src):
        paths.append(relocate(u.group(1).split("::"), u.start()))
    # names that stand for modules in this file: children declared with `mod x;` and modules
    # imported by name (`use crate::a::b;`); a bare path `b::c::d` resolves through them
    alias = {}
    for c in re.finditer(r"\bmod\s+(\w+)\s*;", src):
        alias[c.group(1)] = m + (c.group(1),)
    for p in paths:
        r = resolve(p, m)
        if r is not None and r != m:
            edges[m].add(r)
        full = None
        if p and p[0] == "crate": full = tuple(p[1:])
        elif p and p[0] in ("super", "self"):
            b, rest = list(m), list(p)
            while rest and rest[0] in ("super", "self"):
                if rest[0] == "super": b = b[:-1]
                rest = rest[1:]
            full = tuple(b + rest)
        if full and full in mods and p[-1] not in ("self",):
            alias[full[-1]] = full
    for u in re.finditer(r"(?<![\w:])(\w+)((?:::\w+)+)", src):
        a = u.group(1)
        if a in alias:
            full = list(alias[a]) + u.group(2).split("::")[1:]
            for k in range(len(full), -1, -1):
                if tuple(full[:k]) in mods:
                    if tuple(full[:k]) != m: edges[m].add(tuple(full[:k]))
                    break

def sccs(nodes, edges):
    index, low, st, on, res, i = {}, {}, [], set(), [], [0]
    sys.setrecursionlimit(10000)
    def visit(v):
        index[v] = low[v] = i[0]; i[0] += 1; st.append(v); on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w); low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            c = []
            while True:
                w = st.pop(); on.discard(w); c.append(w)
                if w == v: break
            res.append(c)
    for v in nodes:
        if v not in index: visit(v)
    return [c for c in res if len(c) > 1]

name = lambda m: "::".join(m) or "crate"
# file level: a parent module declaring its children (`mod x;`) is not a use; edges to the
# crate root (lib.rs re-exports) are kept
fc = sccs(list(mods), edges)
print("file-level cycles:", len(fc))
for c in fc:
    print("  ", sorted(name(x) for x in c))
    for a in c:
        for b in edges[a]:
            if b in c: print("      ", name(a), "->", name(b))
top = defaultdict(set)
for a, bs in edges.items():
    for b in bs:
        if a and b and a[0] != b[0]:
            top[(a[0],)].add((b[0],))
tc = sccs(sorted({(m[0],) for m in mods if m}), top)
print("top-level cycles:", len(tc))
for c in tc:
    print("  ", sorted(name(x) for x in c))
    for a in c:
        for b in top[a]:
            if b in c:
                why = [f"{name(x)}->{name(y)}" for x in mods for y in edges[x] if x and y and x[0]==a[0] and y[0]==b[0]]
                print("      ", name(a), "->", name(b), ":", ", ".join(sorted(why)[:6]), "..." if len(why)>6 else "")
sys.exit(1 if fc or tc else 0)
