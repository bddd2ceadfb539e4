"""An object file's instructions as objdump disassembles them, for the scripts that
look up what ran at an address (locked.py, syscall_returns.py)."""
import subprocess


def instructions(path):
    """(address, instruction text) for every instruction of `path`, in address order;
    the text is the mnemonic and its operands. Nothing when objdump cannot read it."""
    out = subprocess.run(["objdump", "-d", "--no-show-raw-insn", path],
                         capture_output=True, text=True, check=False).stdout
    for line in out.splitlines():
        addr, sep, ins = line.partition(":\t")
        if not sep:
            continue
        try:
            yield int(addr.strip(), 16), ins
        except ValueError:
            continue
