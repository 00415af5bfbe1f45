#!/usr/bin/env python3
"""Import circles between the files of a Rust crate.

Usage: module_cycles.py CRATE_SRC_DIR [--max N] [--edges]

Builds the crate's module graph from its files (src/lib.rs or main.rs is
`crate`, a/b.rs or a/b/mod.rs is `crate::a::b`): file X depends on file Y
when X's code names a path `crate::…`, `super::…` or `self::…` that
resolves to Y's module or something inside it (the longest module prefix
of the path wins; `use` groups such as `crate::a::{b, c::D}` are expanded).
Comments and string literals are ignored, so an intra-doc link is not an
import; `#[cfg(test)]` modules count, since a test build compiles them.

Prints every strongly connected component of more than N files (default 2)
with the edges inside it, and exits 1 if there is any. `--edges` prints the
whole graph first.
"""

import argparse
import os
import re
import sys

IDENT = r"[A-Za-z_][A-Za-z0-9_]*"


def strip_comments_and_strings(src):
    """Blank out comments, string and char literals, keeping newlines."""
    out = []
    i, n = 0, len(src)
    while i < n:
        c = src[i]
        if src.startswith("//", i):
            j = src.find("\n", i)
            j = n if j < 0 else j
            i = j
        elif src.startswith("/*", i):
            depth, j = 1, i + 2
            while j < n and depth:
                if src.startswith("/*", j):
                    depth, j = depth + 1, j + 2
                elif src.startswith("*/", j):
                    depth, j = depth - 1, j + 2
                else:
                    j += 1
            out.append("\n" * src.count("\n", i, j))
            i = j
        elif c == "r" and re.match(r'r#*"', src[i:i + 10]) and (i == 0 or not (src[i - 1].isalnum() or src[i - 1] == "_")):
            m = re.match(r'r(#*)"', src[i:])
            end = '"' + m.group(1)
            j = src.find(end, i + len(m.group(0)))
            j = n if j < 0 else j + len(end)
            out.append('""' + "\n" * src.count("\n", i, j))
            i = j
        elif c == '"':
            j = i + 1
            while j < n and src[j] != '"':
                j += 2 if src[j] == "\\" else 1
            out.append('""' + "\n" * src.count("\n", i, j))
            i = j + 1
        elif c == "'":
            # A char literal ('a', '\n', '\u{..}') or a lifetime ('a).
            m = re.match(r"'(\\.[^']*|[^\\'])'", src[i:])
            if m:
                out.append("' '")
                i += len(m.group(0))
            else:
                out.append(c)
                i += 1
        else:
            out.append(c)
            i += 1
    return "".join(out)


def file_modules(src_dir):
    """Map module path (tuple) -> file, for every .rs file of the crate."""
    mods = {}
    for root, _, files in os.walk(src_dir):
        for f in files:
            if not f.endswith(".rs"):
                continue
            path = os.path.join(root, f)
            rel = os.path.relpath(path, src_dir)
            parts = rel[:-3].split(os.sep)
            if parts[-1] in ("lib", "main") and len(parts) == 1:
                parts = []
            elif parts[-1] == "mod":
                parts = parts[:-1]
            if parts and parts[0] in ("bin",):
                continue
            mods.setdefault(tuple(parts), rel)
    return mods


def split_group(text, i):
    """The items of the `{…}` group opening at text[i], and the index past
    its closing brace."""
    depth, j, start, items = 1, i + 1, i + 1, []
    while j < len(text) and depth:
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                items.append(text[start:j])
        elif text[j] == "," and depth == 1:
            items.append(text[start:j])
            start = j + 1
        j += 1
    return [t.strip() for t in items if t.strip()], j


def expand_path(text, prefix=()):
    """The paths (lists of segments) that text, starting just after a
    `crate::` (or an item of a group), names: `a::b::{c, d::E}` gives
    a::b::c and a::b::d::E."""
    segs, i = list(prefix), 0
    while True:
        while i < len(text) and text[i].isspace():
            i += 1
        if text.startswith("{", i):
            items, _ = split_group(text, i)
            out = []
            for item in items:
                out.extend(expand_path(item, segs))
            return out or [segs]
        m = re.match(IDENT, text[i:])
        if not m:
            return [segs]
        segs.append(m.group(0))
        i += m.end()
        sep = re.match(r"\s*::\s*", text[i:])
        if not sep:
            return [segs]
        i += sep.end()


def inline_modules(text):
    """(start, end, name) spans of inline `mod name { … }` blocks."""
    spans = []
    for m in re.finditer(r"\bmod\s+(" + IDENT + r")\s*\{", text):
        depth, j = 1, m.end()
        while j < len(text) and depth:
            if text[j] == "{":
                depth += 1
            elif text[j] == "}":
                depth -= 1
            j += 1
        spans.append((m.end(), j, m.group(1)))
    return spans


def module_at(base, spans, pos):
    path = list(base)
    for start, end, name in spans:
        if start <= pos < end:
            path.append(name)
    return path


def resolve(mods, segs):
    """The file module named by the longest module prefix of segs."""
    for k in range(len(segs), -1, -1):
        if tuple(segs[:k]) in mods:
            return tuple(segs[:k])
    return None


def graph(src_dir):
    mods = file_modules(src_dir)
    edges = {m: set() for m in mods}
    for mod, rel in mods.items():
        with open(os.path.join(src_dir, rel), encoding="utf-8") as f:
            text = strip_comments_and_strings(f.read())
        spans = inline_modules(text)
        for m in re.finditer(r"(?<![A-Za-z0-9_:])(crate|super|self)\s*::\s*", text):
            here = module_at(mod, spans, m.start())
            kind = m.group(1)
            if kind == "crate":
                base = []
            elif kind == "self":
                base = here
            else:
                base = here[:-1]
            # Chained `super::super::`.
            rest = text[m.end():]
            while True:
                s = re.match(r"super\s*::\s*", rest)
                if not s:
                    break
                base = base[:-1]
                rest = rest[s.end():]
            for segs in expand_path(rest):
                segs = [s for s in segs if s != "self"]
                target = resolve(mods, base + segs)
                if target is not None and target != mod:
                    edges[mod].add(target)
    return mods, edges


def sccs(edges):
    """Tarjan's algorithm, iterative."""
    index, low, on, stack, out = {}, {}, set(), [], []
    counter = [0]
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = counter[0]
        counter[0] += 1
        stack.append(root)
        on.add(root)
        while work:
            v, it = work[-1]
            advanced = False
            for w in it:
                if w not in index:
                    index[w] = low[w] = counter[0]
                    counter[0] += 1
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(edges[w]))))
                    advanced = True
                    break
                if w in on:
                    low[v] = min(low[v], index[w])
            if advanced:
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                out.append(comp)
    return out


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("src", help="the crate's src directory")
    ap.add_argument("--max", type=int, default=2, help="largest circle allowed (files)")
    ap.add_argument("--edges", action="store_true", help="print the whole graph first")
    a = ap.parse_args(argv[1:])
    mods, edges = graph(a.src)

    def name(m):
        return mods[m]

    if a.edges:
        for m in sorted(edges, key=name):
            for t in sorted(edges[m], key=name):
                print(f"{name(m)} -> {name(t)}")
    bad = [c for c in sccs(edges) if len(c) > a.max]
    for comp in sorted(bad, key=len, reverse=True):
        print(f"{a.src}: import circle over {len(comp)} files:")
        for m in sorted(comp, key=name):
            inside = sorted((t for t in edges[m] if t in comp), key=name)
            print(f"  {name(m)} -> {', '.join(name(t) for t in inside)}")
    if not bad:
        print(f"{a.src}: no import circle over more than {a.max} files")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
