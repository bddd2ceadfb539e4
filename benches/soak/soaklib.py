"""Shared pieces of the soak helpers (Python 3 standard library only).

- The user categories and the two rulesets the soak alternates between, so the load
  client, the WebSocket holder and the rules writer agree on who is gray when.
- Minimal WebSocket framing (RFC 6455) for the link holder and the echo upstreams.
- Atomic JSON stats files, read by the sampler.

Run as a script it has two jobs used by soak.sh:

    python3 soaklib.py write-rules --dir DIR --set A|B --seq K [--broken]
    python3 soaklib.py sample --pid PID --admin HOST:PORT --run DIR --t0 EPOCH --phase P
"""

import base64
import hashlib
import json
import os
import random
import struct
import sys
import time
import urllib.request

# ---------------------------------------------------------------------------------------
# Users. Every uid belongs to one category; the category says which pool it must reach.
#   S: never matched by a rule (stable), G: always gray (rule base-gray),
#   A: gray under ruleset A only, B: gray under ruleset B only (the slice that moves),
#   V: listed by vip-never-gray inside G's range (stable), N: no uid at all (stable).
CATEGORIES = {
    "S": (50000000, 50999999),
    "G": (10000000, 10099999),
    "A": (20000000, 20099999),
    "B": (30000000, 30099999),
}
VIP_UIDS = (10000001, 10000002)


def uid_of(cat, rng=random):
    """A uid of category `cat` (None for N)."""
    if cat == "N":
        return None
    if cat == "V":
        return rng.choice(VIP_UIDS)
    lo, hi = CATEGORIES[cat]
    while True:
        u = rng.randint(lo, hi)
        if u not in VIP_UIDS:
            return u


def pick_weighted(weighted, rng=random):
    """The first element of one of [(item, weight)], by weight."""
    return rng.choices([w[0] for w in weighted], [w[1] for w in weighted])[0]


def expected_pool(cat, ruleset):
    """The pool a request of category `cat` reaches under ruleset 'A' or 'B'."""
    if cat in ("S", "V", "N"):
        return "stable"
    if cat == "G":
        return "gray"
    return "gray" if cat == ruleset else "stable"


def ruleset_of_version(version):
    """'soak-A-12' -> 'A'; anything else -> None."""
    if isinstance(version, str) and version.startswith("soak-") and len(version) > 6:
        return version[5]
    return None


def rules_text(which, seq, broken=False):
    """rules.yaml for ruleset `which` (A or B). A sends slice A to gray by a range; B
    sends slice B to gray through an in_file, so the watched file set changes too."""
    lo_g, hi_g = CATEGORIES["G"]
    lines = [
        f'version: "soak-{which}-{seq}"',
        "rules:",
        "  - name: vip-never-gray",
        f"    when: {{ uid: {{ in: [{VIP_UIDS[0]}, {VIP_UIDS[1]}] }} }}",
        "    route: stable",
        "  - name: base-gray",
        f'    when: {{ uid: {{ ranges: ["{lo_g}-{hi_g}"] }} }}',
        "    route: gray",
    ]
    if which == "A":
        lo, hi = CATEGORIES["A"]
        lines += [
            "  - name: slice-a",
            "    owner: soak",
            f'    when: {{ uid: {{ ranges: ["{lo}-{hi}"] }} }}',
            "    route: gray",
        ]
    else:
        lines += [
            "  - name: slice-b",
            "    owner: soak",
            "    when: { uid: { in_file: slice-b.txt } }",
            "    route: gray",
        ]
    lines += [
        "  - name: staff-groups",
        "    when: { agent_gid: { any: [141338365001, 141338365002] } }",
        "    route: gray",
    ]
    if broken:
        # A pool no service defines: rejected whole with FILE:LINE:COLUMN.
        lines += ["  - name: broken-on-purpose", "    route: no-such-pool"]
    return "\n".join(lines) + "\n"


def write_rules(d, which, seq, broken=False):
    """Writes rules.yaml in `d` the way editors and deploy tools do: a new file, then a
    rename over the old one."""
    lo, hi = CATEGORIES["B"]
    slice_b = os.path.join(d, "slice-b.txt")
    if not os.path.exists(slice_b):
        atomic_write(slice_b, f"# slice B of the soak\n{lo}-{hi}\n")
    atomic_write(os.path.join(d, "rules.yaml"), rules_text(which, seq, broken))
    return time.time()


def atomic_write(path, text):
    tmp = os.path.join(os.path.dirname(path), "." + os.path.basename(path) + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_json(path, obj):
    atomic_write(path, json.dumps(obj, indent=1, sort_keys=True))


def read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


# ---------------------------------------------------------------------------------------
# WebSocket framing.
WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
OP_CONT, OP_TEXT, OP_BIN, OP_CLOSE, OP_PING, OP_PONG = 0, 1, 2, 8, 9, 10


def ws_accept(key):
    return base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest()).decode()


def ws_frame(opcode, payload=b"", mask=False):
    """One final frame; clients mask (RFC 6455 §5.3), servers do not."""
    if isinstance(payload, str):
        payload = payload.encode()
    n = len(payload)
    head = bytearray([0x80 | opcode])
    mbit = 0x80 if mask else 0
    if n < 126:
        head.append(mbit | n)
    elif n < 65536:
        head.append(mbit | 126)
        head += struct.pack("!H", n)
    else:
        head.append(mbit | 127)
        head += struct.pack("!Q", n)
    if mask:
        key = os.urandom(4)
        head += key
        payload = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    return bytes(head) + payload


def ws_close_payload(code, reason=""):
    return struct.pack("!H", code) + reason.encode()


async def ws_read_frame(reader, limit=1 << 20):
    """(fin, opcode, payload) of the next frame; raises asyncio.IncompleteReadError at
    EOF."""
    b0, b1 = await reader.readexactly(2)
    n = b1 & 0x7F
    if n == 126:
        (n,) = struct.unpack("!H", await reader.readexactly(2))
    elif n == 127:
        (n,) = struct.unpack("!Q", await reader.readexactly(8))
    if n > limit:
        raise ValueError(f"frame of {n} bytes")
    key = await reader.readexactly(4) if b1 & 0x80 else None
    payload = await reader.readexactly(n) if n else b""
    if key:
        payload = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    return bool(b0 & 0x80), b0 & 0x0F, payload


def close_code(payload):
    return struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005


def parse_head(raw):
    """(first line, {lowercased name: value}) of an HTTP/1 head; first field wins."""
    text = raw.decode("latin-1")
    lines = text.split("\r\n")
    headers = {}
    for line in lines[1:]:
        if not line:
            continue
        name, _, value = line.partition(":")
        headers.setdefault(name.strip().lower(), value.strip())
    return lines[0], headers


# ---------------------------------------------------------------------------------------
# Sampling graylane (one CSV row per call; soak.sh calls it every 10 s).
SAMPLE_FIELDS = [
    "epoch", "t", "phase", "rss_kib", "hwm_kib", "fds", "threads", "cpu_s",
    "ws_gauge", "ws_gauge_gray", "ws_gauge_stable", "client_conns_gauge",
    "reloads_ok", "reloads_unchanged", "reloads_error", "rehomed_total",
    "requests_total", "http_sent", "http_lost", "http_fault", "ws_open",
    "ws_rehomed", "ws_unexpected", "loadavg1",
]


def proc_status(pid):
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            out[k] = v.strip()
    return out


def kib(v):
    return int(v.split()[0]) if v else 0


def fd_count(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        rest = f.read().rsplit(")", 1)[1].split()
    return (int(rest[11]) + int(rest[12])) / os.sysconf("SC_CLK_TCK")


def scrape(admin):
    with urllib.request.urlopen(f"http://{admin}/metrics", timeout=5) as r:
        return r.read().decode()


def metric_sums(text):
    """Sums of the families the soak watches, by the label that matters."""
    s = {
        "ws_gauge": 0, "ws_gauge_gray": 0, "ws_gauge_stable": 0, "client_conns_gauge": 0,
        "reloads_ok": 0, "reloads_unchanged": 0, "reloads_error": 0,
        "rehomed_total": 0, "requests_total": 0,
    }
    for line in text.splitlines():
        if not line.startswith("graylane_"):
            continue
        name, _, value = line.rpartition(" ")
        try:
            v = int(float(value))
        except ValueError:
            continue
        if name.startswith("graylane_websocket_connections{"):
            s["ws_gauge"] += v
            if 'pool="gray"' in name:
                s["ws_gauge_gray"] += v
            elif 'pool="stable"' in name:
                s["ws_gauge_stable"] += v
        elif name.startswith("graylane_connections{"):
            s["client_conns_gauge"] += v
        elif name.startswith("graylane_rules_reloads_total{"):
            for r in ("ok", "unchanged", "error"):
                if f'result="{r}"' in name:
                    s["reloads_" + r] += v
        elif name.startswith("graylane_long_links_rehomed_total{"):
            s["rehomed_total"] += v
        elif name.startswith("graylane_requests_total{"):
            s["requests_total"] += v
    return s


def sample(pid, admin, run, t0, phase):
    st = proc_status(pid)
    row = {
        "epoch": f"{time.time():.1f}",
        "t": f"{time.time() - t0:.1f}" if t0 else "",
        "phase": phase,
        "rss_kib": kib(st.get("VmRSS")),
        "hwm_kib": kib(st.get("VmHWM")),
        "fds": fd_count(pid),
        "threads": st.get("Threads", ""),
        "cpu_s": f"{cpu_seconds(pid):.2f}",
    }
    try:
        row.update(metric_sums(scrape(admin)))
    except OSError as e:
        print(f"sample: /metrics: {e}", file=sys.stderr)
    http = read_json(os.path.join(run, "http_stats.json"))
    ws = read_json(os.path.join(run, "ws_stats.json"))
    row.update({
        "http_sent": http.get("sent", ""),
        "http_lost": http.get("lost", ""),
        "http_fault": http.get("fault_answers", ""),
        "ws_open": ws.get("open", ""),
        "ws_rehomed": ws.get("rehome_closes", ""),
        "ws_unexpected": (ws.get("unexpected_closes", 0) + ws.get("drops", 0)) if ws else "",
        "loadavg1": open("/proc/loadavg").read().split()[0],
    })
    path = os.path.join(run, "samples.csv")
    new = not os.path.exists(path)
    with open(path, "a") as f:
        if new:
            f.write(",".join(SAMPLE_FIELDS) + "\n")
        f.write(",".join(str(row.get(k, "")) for k in SAMPLE_FIELDS) + "\n")
    return row


def main(argv):
    import argparse

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("write-rules")
    w.add_argument("--dir", required=True)
    w.add_argument("--set", choices=["A", "B"], required=True)
    w.add_argument("--seq", type=int, required=True)
    w.add_argument("--broken", action="store_true")
    s = sub.add_parser("sample")
    s.add_argument("--pid", type=int, required=True)
    s.add_argument("--admin", required=True)
    s.add_argument("--run", required=True)
    s.add_argument("--t0", type=float, default=0.0)
    s.add_argument("--phase", required=True)
    a = p.parse_args(argv)
    if a.cmd == "write-rules":
        # The moment of the rename, in ms: soak.sh times the reload from it.
        print(int(write_rules(a.dir, a.set, a.seq, a.broken) * 1000))
    else:
        r = sample(a.pid, a.admin, a.run, a.t0, a.phase)
        def v(k):
            return "-" if r.get(k, "") == "" else r[k]

        print(
            f"t={v('t')}s {a.phase}: rss {r['rss_kib'] / 1024:.1f} MiB, fds {r['fds']}, "
            f"links {v('ws_gauge')} (client {v('ws_open')}), reloads ok/unch/err "
            f"{v('reloads_ok')}/{v('reloads_unchanged')}/{v('reloads_error')}, rehomed {v('rehomed_total')}, "
            f"http sent {v('http_sent')} lost {v('http_lost')} fault {v('http_fault')}, load {r['loadavg1']}"
        )


if __name__ == "__main__":
    main(sys.argv[1:])
