#!/usr/bin/env python3
"""The house's shape rules for the Rust crates: a function fits in 80 lines, a file in
500, and no two modules of a crate use each other (directly or around a loop; a module
and its own submodules do not count). Prints the longest functions and files and any
cycle; with --check, exits 1 when a rule is broken. Test code (`#[cfg(test)]` modules)
is not counted."""
import re, sys, pathlib

ROOTS = ["rules/src", "collectors/src", "agent/src"]
FN_LIMIT, FILE_LIMIT = 80, 500

def strip_tests(lines):
    out, i = [], 0
    while i < len(lines):
        if lines[i].strip() == "#[cfg(test)]":
            # skip the item that follows (a module or fn), by brace depth
            depth, started = 0, False
            i += 1
            while i < len(lines):
                depth += lines[i].count("{") - lines[i].count("}")
                started = started or "{" in lines[i]
                i += 1
                if started and depth <= 0:
                    break
            continue
        out.append(lines[i]); i += 1
    return out

def functions(lines):
    fn_re = re.compile(r"^\s*(pub(\([^)]*\))?\s+)?(async\s+)?(const\s+)?(unsafe\s+)?fn\s+(\w+)")
    for i, l in enumerate(lines):
        m = fn_re.match(l)
        if not m:
            continue
        depth, started, j = 0, False, i
        while j < len(lines):
            depth += lines[j].count("{") - lines[j].count("}")
            started = started or "{" in lines[j]
            if started and depth <= 0:
                break
            if not started and lines[j].rstrip().endswith(";"):
                break
            j += 1
        if started:
            yield m.group(6), i + 1, j - i + 1

def module_of(src, path):
    """Top-level module of a file under `src/` (`lib`/`main` for the crate root)."""
    rel = path.relative_to(src).with_suffix("")
    return rel.parts[0]

def cycles(top):
    found = []
    for root in ROOTS:
        src = top / root
        edges = {}
        for p in src.rglob("*.rs"):
            me = module_of(src, p)
            text = "\n".join(strip_tests(p.read_text().splitlines()))
            for m in re.finditer(r"crate::(\w+)", text):
                other = m.group(1)
                is_module = (src / f"{other}.rs").exists() or (src / other).is_dir()
                if other != me and is_module:
                    edges.setdefault(me, set()).add(other)
        # depth-first search for a loop
        state = {}
        def visit(n, stack):
            state[n] = 1
            for o in sorted(edges.get(n, ())):
                if state.get(o) == 1:
                    found.append(f"{root}: " + " -> ".join(stack[stack.index(o):] + [o]))
                elif state.get(o) is None:
                    visit(o, stack + [o])
            state[n] = 2
        for n in sorted(edges):
            if state.get(n) is None:
                visit(n, [n])
    return found

def main():
    top = pathlib.Path(__file__).resolve().parent.parent
    fns, files = [], []
    for root in ROOTS:
        for p in sorted((top / root).rglob("*.rs")):
            lines = strip_tests(p.read_text().splitlines())
            rel = p.relative_to(top)
            files.append((len(lines), str(rel)))
            for name, line, n in functions(lines):
                fns.append((n, f"{rel}:{line} {name}"))
    fns.sort(reverse=True); files.sort(reverse=True)
    print("longest functions:"); [print(f"  {n:4} {w}") for n, w in fns[:8]]
    print("longest files:"); [print(f"  {n:4} {w}") for n, w in files[:8]]
    loops = cycles(top)
    print("import cycles:", "none" if not loops else "")
    [print("  " + l) for l in loops]
    bad = [f for f in fns if f[0] > FN_LIMIT] + [f for f in files if f[0] > FILE_LIMIT]
    bad += [(0, l) for l in loops]
    if "--check" in sys.argv and bad:
        print(f"over the limits ({FN_LIMIT} lines a function, {FILE_LIMIT} a file):", *[f"{n} {w}" for n, w in bad], sep="\n  ")
        sys.exit(1)

main()
