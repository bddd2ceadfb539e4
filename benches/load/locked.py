"""Locked read-modify-write instructions per request in a callgrind dump, for
instructions.sh --atomics: every `lock`-prefixed instruction and every `xchg` with a
memory operand (implicitly locked) that the dump's objects executed, found with objdump
in each object file and summed over the instruction counts of the dump (callgrind
--dump-instr=yes --compress-pos=no --compress-strings=no, positions as each object's
own addresses). A single-threaded proxy needs none of them; each costs a few cycles and
orders the memory accesses around it.

Usage: python3 locked.py DUMP REQUESTS
"""
import os
import re
import sys

from callgrind_dump import executions
from objdump import instructions

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
    return {addr for addr, ins in instructions(path) if is_locked(ins)}


def main():
    dump, requests = sys.argv[1], int(sys.argv[2])
    locked = {}
    total = 0
    for (obj, address), n in executions(dump).items():
        if obj not in locked:
            locked[obj] = locked_addresses(obj) if os.path.isfile(obj) else set()
        if address in locked[obj]:
            total += n
    print(f"{total / requests:.1f}")


main()
