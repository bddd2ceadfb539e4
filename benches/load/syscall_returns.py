#!/usr/bin/env python3
"""Share of a proxy's CPU samples that are returns from system calls, counted as user time.

Reads `perf script -G -F ip,sym,symoff,dso` (samples of `perf record`, user and kernel) on
stdin and prints the percentage of all samples that landed on the first user-space
instruction after a `syscall` instruction in libc.

Why such samples are the kernel's work: the kernel leaves a system call with interrupts
off for its last steps (on this machine's AMD EPYC that includes clearing the CPU's
buffers at the user/kernel boundary, the TSA mitigation), and a timer interrupt that
falls due meanwhile is taken on the first user instruction. perf's sampling timer and
the kernel's tick-based accounting of user and system time (CONFIG_TICK_CPU_ACCOUNTING,
what /proc/PID/stat reports) both see it there, so that time is counted as user time.
A loop of null system calls shows it (`perf bench syscall basic`: most of its "user"
time, under `perf record`, on the instruction after `syscall`).

Only libc is looked at: graylane (through Rust's std and mio), nginx and haproxy make
their socket calls through its wrappers. A sample in a function libc does not export
(its allocator, `memcpy`'s variants) counts as user time: none of them makes a system
call on these paths.
"""

import collections
import re
import subprocess
import sys

from objdump import instructions

SAMPLE = re.compile(r"\s*([0-9a-f]+)\s+(.*)\+0x([0-9a-f]+) \((.*)\)$")


def after_syscall(lib):
    """Addresses of the instructions that follow a `syscall`, and the symbols' addresses."""
    after, prev = set(), False
    for addr, ins in instructions(lib):
        if prev:
            after.add(addr)
        prev = ins.split()[:1] == ["syscall"]
    addrs = {}
    for flags in (["-D"], []):
        out = subprocess.run(
            ["nm", *flags, "--defined-only", lib], capture_output=True, text=True
        ).stdout
        for line in out.splitlines():
            parts = line.split()
            if len(parts) == 3:
                addrs.setdefault(parts[2].split("@")[0], int(parts[0], 16))
    return after, addrs


def candidates(sym):
    """perf names a wrapper by its debug symbol (`__libc_recv`, `__GI___writev`); the
    dynamic symbol table by its exported alias (`recv`, `writev`)."""
    plain = sym.replace("__GI_", "")
    return (sym, plain, sym.replace("__libc_", ""), plain.replace("__libc_", ""), plain.lstrip("_"))


def main():
    libs = {}
    counts = collections.Counter()
    for line in sys.stdin:
        m = SAMPLE.match(line.rstrip())
        if not m:
            if line.strip():
                counts["other"] += 1
            continue
        ip, sym, off, dso = int(m.group(1), 16), m.group(2).split("@")[0], int(m.group(3), 16), m.group(4)
        if dso.startswith("[kernel") or ip >= 0xFFFF800000000000:
            counts["kernel"] += 1
            continue
        if not re.search(r"/libc\.so", dso):
            counts["user"] += 1
            continue
        if dso not in libs:
            libs[dso] = after_syscall(dso)
        after, addrs = libs[dso]
        key = next((c for c in candidates(sym) if c in addrs), None)
        if key is None:
            counts["user"] += 1
        elif addrs[key] + off in after:
            counts["return"] += 1
        else:
            counts["user"] += 1
    total = sum(counts.values())
    print(f"{100 * counts['return'] / total:.1f}" if total else "0.0")


if __name__ == "__main__":
    main()
