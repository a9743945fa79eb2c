#!/usr/bin/env python3
"""Writes the README's code blocks to files, so that tests can run them.

    readme-blocks.py README.md OUTDIR        write every block, list their names
    readme-blocks.py README.md OUTDIR NAME   write one block

Every fenced block with a language (```c, ```sh, ...) must be preceded by a
line `<!-- readme-test: NAME -->`, NAME being the file it is written to; a
block without one is an error, so that no example escapes the tests.  Blocks
without a language (file trees) are not code and are skipped.
"""
import os
import re
import sys

MARKER = re.compile(r"^<!-- readme-test: (\S+) -->$")
FENCE = re.compile(r"^```(\S*)\s*$")


def blocks(path):
    lines = open(path, encoding="utf-8").read().split("\n")
    found, name, i = {}, None, 0
    while i < len(lines):
        m = MARKER.match(lines[i])
        if m:
            name = m.group(1)
            i += 1
            continue
        f = FENCE.match(lines[i])
        if f:
            lang, start = f.group(1), i + 1
            i += 1
            while i < len(lines) and lines[i] != "```":
                i += 1
            if lang:
                if name is None:
                    sys.exit(f"{path}:{start}: a ```{lang} block without a <!-- readme-test: NAME --> line before it")
                if name in found:
                    sys.exit(f"{path}:{start}: a second block named {name}")
                found[name] = "\n".join(lines[start:i]) + "\n"
        elif lines[i].strip():
            name = None
        i += 1
    return found


def main():
    readme, out = sys.argv[1], sys.argv[2]
    only = sys.argv[3] if len(sys.argv) > 3 else None
    found = blocks(readme)
    if only is not None and only not in found:
        sys.exit(f"{readme}: no block named {only}")
    os.makedirs(out, exist_ok=True)
    for name, text in found.items():
        if only in (None, name):
            with open(os.path.join(out, name), "w", encoding="utf-8") as f:
                f.write(text)
            print(name)


if __name__ == "__main__":
    main()
