"""Locked read-modify-write instructions per request in a callgrind dump, for
instructions.sh --atomics: every `lock`-prefixed instruction and every `xchg` with a
memory operand (implicitly locked) that the dump's objects executed, found with objdump
in each object file and summed over the instruction counts of the dump (callgrind
--dump-instr=yes --compress-pos=no --compress-strings=no, positions as each object's
own addresses). A single-threaded proxy needs none of them; each costs a few cycles and
orders the memory accesses around it.

Usage: python3 locked.py DUMP REQUESTS
"""
import collections
import os
import re
import subprocess
import sys

REGISTER = re.compile(r"^%[a-z0-9]+$")


def is_locked(ins):
    """Whether an objdump instruction text (mnemonic, then operands) is a locked
    read-modify-write: a `lock` prefix, or `xchg` with an operand in memory."""
    words = ins.split()
    if not words:
        return False
    if words[0] in ("lock", "xacquire", "xrelease"):
        return True
    if words[0].startswith("xchg") and len(words) > 1:
        operands = words[1].split("#")[0].split(",")
        return any(not REGISTER.match(o) for o in operands)
    return False


def locked_addresses(path):
    """The addresses of the locked instructions in one object file."""
    out = subprocess.run(["objdump", "-d", "--no-show-raw-insn", path],
                         capture_output=True, text=True, check=False).stdout
    found = set()
    for line in out.splitlines():
        addr, sep, ins = line.partition(":\t")
        if sep and is_locked(ins):
            try:
                found.add(int(addr.strip(), 16))
            except ValueError:
                pass
    return found


def main():
    dump, requests = sys.argv[1], int(sys.argv[2])
    per_object = {}
    counts = collections.Counter()
    obj = None
    after_call = False
    cost = 2  # the Ir column after "positions: instr line"
    with open(dump) as f:
        for line in f:
            if line.startswith("positions:"):
                cost = len(line.split()) - 1
            elif line.startswith("ob="):
                obj = line[3:].strip()
                if obj not in per_object:
                    per_object[obj] = locked_addresses(obj) if os.path.isfile(obj) else set()
            elif line.startswith("calls="):
                after_call = True  # the next cost line is the call's, not an instruction's
            elif line.startswith("0x"):
                if after_call:
                    after_call = False
                    continue
                fields = line.split()
                if obj and len(fields) > cost and int(fields[0], 16) in per_object[obj]:
                    counts[obj] += int(fields[cost])
    print(f"{sum(counts.values()) / requests:.1f}")


main()
