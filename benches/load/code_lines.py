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


def line_runs(path):
    """How many times each (object, 64-byte line) of one dump ran, and the instructions
    executed in all."""
    executions = collections.Counter()  # per (object, instruction address)
    obj = "?"
    cost_column = 1  # after the positions: 1 for "positions: line", 2 for "instr line"
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
                    executions[(obj, int(fields[0], 16))] += int(fields[cost_column])
    runs = collections.Counter()
    for (obj, address), n in executions.items():
        key = (obj, address >> 6)
        runs[key] = max(runs[key], n)
    return runs, sum(executions.values())


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
