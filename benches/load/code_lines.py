#!/usr/bin/env python3
"""The code a request runs, in 64-byte lines (the unit the instruction cache fills).

Reads a callgrind dump made with `--dump-instr=yes --compress-pos=no
--compress-strings=no` (what `instructions.sh --atomics --profile DIR` keeps as
DIR/callgrind-K.out) and counts the distinct code lines that executed, per object file and
in all, split by how often. A line ran as many times as its most executed instruction
(callgrind's Ir at one instruction's address is how many times it executed). A line that
ran at least as many times as requests were sent is counted on every request's path, one
that ran fewer times on a path only some requests take (the sampled access log, timers,
the gray pool). A loop that runs several times in a few requests can pass for the former;
a line that every request runs never passes for the latter.

Usage: code_lines.py DUMP [--requests N]   (N: the measured requests, instructions.sh's
--requests, default 8000)
"""

import argparse
import collections
import sys

from callgrind_dump import executions


def line_runs(path):
    """How many times each (object, 64-byte line) of one dump ran, and the instructions
    executed in all."""
    runs = collections.Counter()
    total = 0
    for (obj, address), n in executions(path).items():
        key = (obj.rsplit("/", 1)[-1], address >> 6)
        runs[key] = max(runs[key], n)
        total += n
    return runs, total


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dump")
    ap.add_argument("--requests", type=int, default=8000)
    args = ap.parse_args()
    runs, instructions = line_runs(args.dump)
    if not runs:
        sys.exit(f"{args.dump}: no per-instruction costs (made without --dump-instr=yes?)")
    every = collections.Counter()
    some = collections.Counter()
    for (obj, _), n in runs.items():
        if n == 0:
            continue
        (every if n >= args.requests else some)[obj] += 1
    print("| object | lines on every request's path | KiB | lines on some requests' paths | KiB |")
    print("|---|---:|---:|---:|---:|")
    for obj in sorted(set(every) | set(some), key=lambda o: -(every[o] + some[o])):
        print(f"| {obj} | {every[obj]} | {every[obj] * 64 / 1024:.1f} | {some[obj]} | {some[obj] * 64 / 1024:.1f} |")
    e, s = sum(every.values()), sum(some.values())
    print(f"| all | {e} | {e * 64 / 1024:.1f} | {s} | {s * 64 / 1024:.1f} |")
    print(f"\ninstructions per request: {instructions / args.requests:.0f}")


if __name__ == "__main__":
    main()
