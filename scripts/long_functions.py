#!/usr/bin/env python3
"""Functions longer than a limit: `python3 scripts/long_functions.py [--limit N] [DIR ...]`.

Reads the rustfmt-formatted `.rs` files under each DIR (default `src`) and measures every `fn`
with a body from its signature line to the line holding the closing brace at the signature's
indentation (rustfmt puts it there). Prints `lines  file:line  name` for each function over the
limit (default 150), longest first, and the count. Exits 0 either way: it reports, it does not
judge.
"""
import os, re, sys

FN = re.compile(r"^(\s*)(?:pub(?:\([^)]*\))?\s+)?(?:(?:const|async|unsafe|extern\s+\"[^\"]*\")\s+)*fn\s+(\w+)")


def functions(path):
    lines = open(path, encoding="utf-8").read().split("\n")
    for i, line in enumerate(lines):
        m = FN.match(line)
        if not m:
            continue
        indent, name = m.group(1), m.group(2)
        # the end of the signature: a line ending in `{` (a body) or `;` (no body)
        j = i
        while j < len(lines) and not lines[j].rstrip().endswith(("{", ";", "}")):
            j += 1
        if j == len(lines) or not lines[j].rstrip().endswith("{"):
            continue
        close = indent + "}"
        k = j + 1
        while k < len(lines) and lines[k].rstrip() != close:
            k += 1
        if k < len(lines):
            yield name, i + 1, k - i + 1


def main():
    args = sys.argv[1:]
    limit = 150
    if "--limit" in args:
        at = args.index("--limit")
        limit = int(args[at + 1])
        del args[at : at + 2]
    found = []
    for root in args or ["src"]:
        for d, _, fs in os.walk(root):
            for f in sorted(fs):
                if f.endswith(".rs"):
                    p = os.path.join(d, f)
                    for name, line, n in functions(p):
                        if n > limit:
                            found.append((n, f"{p}:{line}", name))
    for n, at, name in sorted(found, reverse=True):
        print(f"{n:5}  {at}  {name}")
    print(f"{len(found)} functions over {limit} lines")


if __name__ == "__main__":
    main()
