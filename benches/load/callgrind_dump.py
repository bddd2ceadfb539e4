"""How many times each instruction executed, read from a callgrind dump made with
`--dump-instr=yes --compress-pos=no --compress-strings=no` (what `instructions.sh
--atomics --profile DIR` keeps): shared by locked.py and code_lines.py."""
import collections


def executions(path):
    """A Counter of (object file path, instruction address) -> times executed. Callgrind's
    Ir at one instruction's address is how many times it ran; an address listed under
    several functions is summed."""
    counts = collections.Counter()
    obj = "?"
    cost = 1  # the Ir column: 1 after "positions: line", 2 after "positions: instr line"
    after_call = False
    with open(path, errors="replace") as dump:
        for line in dump:
            if line.startswith("positions:"):
                cost = len(line.split()) - 1
            elif line.startswith("ob="):
                obj = line[3:].strip()
            elif line.startswith("calls="):
                after_call = True  # the next cost line is the call's inclusive cost
            elif line.startswith("0x"):
                if after_call:
                    after_call = False
                    continue
                fields = line.split()
                if len(fields) > cost and fields[cost].isdigit():
                    counts[(obj, int(fields[0], 16))] += int(fields[cost])
    return counts
