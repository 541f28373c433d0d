#!/usr/bin/env python3
"""The import picture of src/: which file uses which (from `crate::` and `super::` paths),
the circles among files, the layers (longest chain of imports below each top-level module),
arrows that point up from a lower to a higher layer, and the largest files.

    python3 scripts/imports.py
"""
import re
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def module_of(path: Path):
    rel = path.relative_to(SRC).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "mod":
        parts = parts[:-1]
    if parts in (["lib"], ["main"]):
        return ("main",) if parts == ["main"] else ()
    return tuple(parts)


def main():
    files = {module_of(p): p for p in SRC.rglob("*.rs")}
    mods = set(files)

    def resolve(path):
        # the longest prefix of `path` that is a file's module
        for n in range(len(path), 0, -1):
            if tuple(path[:n]) in mods:
                return tuple(path[:n])
        return None

    edges = {m: set() for m in mods}
    for m, p in files.items():
        text = re.sub(r"//[^\n]*", "", p.read_text())
        text = re.sub(r"#\[cfg\(test\)\]\s*mod tests \{.*", "", text, flags=re.S)
        for root, rest in re.findall(r"\b(crate|super|tokbridge)::([A-Za-z_:{}, ]+)", text):
            base = [] if root in ("crate", "tokbridge") else list(m[:-1] if files[m].name != "mod.rs" else m[:-1])
            if root == "super" and files[m].name == "mod.rs":
                base = list(m[:-1])
            elif root == "super":
                base = list(m[:-1])
            # a group `a::{b, c::d}` names several paths
            head, _, group = rest.partition("{")
            heads = [h for h in head.split("::") if h]
            paths = [heads + [x for x in g.strip().split("::") if x] for g in group.split(",")] if group else [heads]
            for path in paths:
                t = resolve(base + [x.strip() for x in path if x.strip() and x.strip() != "self"])
                if t is not None and t != m and t != ():
                    edges[m].add(t)
    # circles: strongly connected components
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
                sccs.append(sorted(comp))

    import sys
    sys.setrecursionlimit(10000)
    for v in sorted(mods):
        if v not in index:
            strong(v)
    name = lambda m: "::".join(m) or "lib"
    n_edges = sum(len(e) for e in edges.values())
    print(f"{len(mods)} files, {n_edges} import arrows between files")
    print(f"circles: {len(sccs)}")
    for c in sccs:
        print("  " + ", ".join(name(m) for m in c))
    # layers of top-level modules (recipes' submodules count as recipes), on the graph with
    # circles collapsed
    top = lambda m: m[0] if m else "lib"
    tedges = {}
    for a, bs in edges.items():
        for b in bs:
            if top(a) != top(b):
                tedges.setdefault(top(a), set()).add(top(b))
    level = {}

    def depth(t, seen=()):
        if t in level:
            return level[t]
        if t in seen:
            return 0
        level_t = 1 + max((depth(u, seen + (t,)) for u in tedges.get(t, ()) ), default=-1)
        level[t] = level_t
        return level_t

    for t in sorted({top(m) for m in mods}):
        depth(t)
    up = [(a, b) for a, bs in tedges.items() for b in bs if level[b] >= level[a]]
    print(f"layers: {max(level.values()) + 1}")
    for l in range(max(level.values()) + 1):
        print(f"  {l}: " + ", ".join(sorted(t for t, v in level.items() if v == l)))
    print(f"arrows between top-level modules not pointing down: {len(up)}")
    for a, b in up:
        print(f"  {a} -> {b}")
    sizes = sorted(((len(p.read_text().splitlines()), name(m)) for m, p in files.items()), reverse=True)[:5]
    print("largest files: " + ", ".join(f"{m} {n}" for n, m in sizes))


if __name__ == "__main__":
    main()
