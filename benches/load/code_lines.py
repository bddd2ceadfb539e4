#!/usr/bin/env python3
"""The code a request runs, in 64-byte lines (the unit the instruction cache fills).

Reads a callgrind dump made with `--dump-instr=yes --compress-pos=no
--compress-strings=no` (what `instructions.sh --atomics --profile DIR` keeps as
DIR/callgrind-K.out) and counts the distinct code lines that executed, per object file and
in all, split by how often: a line whose instructions ran fewer times than the requests
were sent is on a path only some requests take (the sampled access log, timers, the gray
share), one that ran at least once per request on average is on every request's path.

Usage: code_lines.py DUMP [--requests N]   (N: the measured requests, instructions.sh's
--requests, default 8000)
"""

import argparse
import collections
import sys


def line_costs(path):
    """Instructions executed per (object, 64-byte line) of one dump."""
    costs = collections.Counter()
    obj = "?"
    cost_column = 1  # after the positions; "positions: instr line" puts it second
    after_calls = False
    with open(path, errors="replace") as dump:
        for raw in dump:
            line = raw.rstrip("\n")
            if line.startswith("positions:"):
                cost_column = len(line.split()) - 1
            elif line.startswith("ob="):
                obj = line[3:].rsplit("/", 1)[-1]
            elif line.startswith("calls="):
                # The next cost line is the call's inclusive cost, not this line's own.
                after_calls = True
            elif line.startswith("0x"):
                if after_calls:
                    after_calls = False
                    continue
                fields = line.split()
                if len(fields) > cost_column and fields[cost_column].isdigit():
                    costs[(obj, int(fields[0], 16) >> 6)] += int(fields[cost_column])
    return costs


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dump")
    ap.add_argument("--requests", type=int, default=8000)
    args = ap.parse_args()
    costs = line_costs(args.dump)
    if not costs:
        sys.exit(f"{args.dump}: no per-instruction costs (made without --dump-instr=yes?)")
    every = collections.Counter()
    some = collections.Counter()
    for (obj, _), ir in costs.items():
        if ir == 0:
            continue
        (every if ir >= args.requests else some)[obj] += 1
    print("| object | lines on every request's path | KiB | lines on some requests' paths | KiB |")
    print("|---|---:|---:|---:|---:|")
    for obj in sorted(set(every) | set(some), key=lambda o: -(every[o] + some[o])):
        print(f"| {obj} | {every[obj]} | {every[obj] * 64 / 1024:.1f} | {some[obj]} | {some[obj] * 64 / 1024:.1f} |")
    e, s = sum(every.values()), sum(some.values())
    print(f"| all | {e} | {e * 64 / 1024:.1f} | {s} | {s * 64 / 1024:.1f} |")
    total_ir = sum(costs.values())
    print(f"\ninstructions per request: {total_ir / args.requests:.0f}")


if __name__ == "__main__":
    main()
