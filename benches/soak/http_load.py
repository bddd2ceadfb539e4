#!/usr/bin/env python3
"""The soak's mixed HTTP/1.1 load (Python 3 standard library only).

`--conns` keep-alive connections share a paced total of `--rate` requests/s for
`--duration` seconds. Each connection is closed by the client (between two requests)
after a random 100-2000 requests and a new one opened, so accepts keep happening.

The mix (per request):

    40%  GET  /api/items/N?page=P     uid of any category (S, G, A, B, V, N)
    15%  POST /api/orders             same, body 200 B - 8 KiB (1 in 10 chunked)
    30%  GET  /chat/history           uid S, V or N (stable) or G (always gray)
    15%  POST /chat/send              same, body 100 B - 4 KiB (1 in 10 chunked)

The uid goes in the `xdw-kefu-uid` header (60%), a cookie among others (25%) or the
query string (15%). Categories (soaklib.py): S never gray, G always gray, A/B gray under
ruleset A/B only (they move at every reload), V a VIP inside G's range excluded by
vip-never-gray, N no uid.

Only the gray pool of `chat` has a faulty endpoint (upstreams.py), so the expected
answers are:

- every `/api/...` request and every `/chat/...` request of a stable user: **200**.
  Anything else (another status, a connection error, a timeout) is a LOST request;
- `/chat/...` requests of G users: 200, or a fault passed on: the injector's
  `500 soak: injected 500`, graylane's `502` (upstream reset) or `504` (upstream
  stalled). Those are counted as fault answers, by status and body; any other answer,
  or a connection error, is LOST.

Routing is checked too: a 200 must come from the pool the category fixes (`stable\\n` or
`gray\\n` from nginx; A/B users move, so only their pool shares are counted).
Live counters go to `--stats` (JSON) every 5 s; lost requests, with a timestamp, to
`--lost-log` (JSON lines).
"""

import argparse
import asyncio
import json
import os
import random
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import soaklib  # noqa: E402

BLOB = os.urandom(8192).hex().encode()  # 16 KiB of printable bytes to cut bodies from

KINDS = [  # (weight, service, method, path)
    (40, "api", "GET", "/api/items/{n}?page={p}"),
    (15, "api", "POST", "/api/orders"),
    (30, "chat", "GET", "/chat/history?since={n}"),
    (15, "chat", "POST", "/chat/send"),
]
API_CATS = [("S", 35), ("G", 15), ("A", 15), ("B", 15), ("V", 5), ("N", 15)]
CHAT_CATS = [("S", 55), ("G", 30), ("V", 5), ("N", 10)]


def pick(weighted):
    """One item of [(..., weight)], by weight."""
    r = random.uniform(0, sum(item[-1] for item in weighted))
    for item in weighted:
        r -= item[-1]
        if r <= 0:
            return item
    return weighted[-1]


class Stats:
    def __init__(self):
        self.sent = 0
        self.answered = 0
        self.lost = 0
        self.fault_answers = 0
        self.by_status = {}  # "class status" -> count, e.g. "must200 200"
        self.faults = {}  # "502 graylane: upstream closed the connection" -> count
        self.lost_kinds = {}
        self.misrouted = 0
        self.pools = {}  # "service cat pool" -> count
        self.conns_opened = 0
        self.conns_closed_by_client = 0
        self.conns_closed_by_server = 0
        self.max_latency_ms = 0.0
        self.lat_sum_ms = 0.0
        self.started = time.time()

    def bump(self, d, k, n=1):
        d[k] = d.get(k, 0) + n

    def as_dict(self):
        return {
            "sent": self.sent, "answered": self.answered, "lost": self.lost,
            "fault_answers": self.fault_answers, "by_status": self.by_status,
            "faults": self.faults, "lost_kinds": self.lost_kinds, "misrouted": self.misrouted,
            "pools": self.pools, "conns_opened": self.conns_opened,
            "conns_closed_by_client": self.conns_closed_by_client,
            "conns_closed_by_server": self.conns_closed_by_server,
            "max_latency_ms": round(self.max_latency_ms, 1),
            "mean_latency_ms": round(self.lat_sum_ms / max(self.answered, 1), 2),
            "elapsed_s": round(time.time() - self.started, 1),
            "rate_actual": round(self.sent / max(time.time() - self.started, 1e-9), 1),
        }


def pick_kind():
    r = random.uniform(0, 100)
    for w, service, method, path in KINDS:
        r -= w
        if r <= 0:
            return service, method, path
    return KINDS[-1][1:]


def make(host):
    """One request: (service, category, bytes to send)."""
    service, method, path = pick_kind()
    cat = pick(API_CATS if service == "api" else CHAT_CATS)[0]
    uid = soaklib.uid_of(cat)
    path = path.format(n=random.randint(1, 10**6), p=random.randint(1, 50))
    headers = [f"host: {host}", "user-agent: graylane-soak", "accept: */*"]
    if uid is not None:
        how = random.random()
        if how < 0.60:
            headers.append(f"xdw-kefu-uid: {uid}")
        elif how < 0.85:
            headers.append(f"cookie: theme=dark; xdw-kefu-uid={uid}; sid=s{random.randint(1, 10**9)}")
        else:
            path += ("&" if "?" in path else "?") + f"xdw-kefu-uid={uid}"
    body_parts = []
    if method == "POST":
        n = random.randint(200, 8192) if service == "api" else random.randint(100, 4096)
        off = random.randint(0, len(BLOB) - n)
        body = BLOB[off:off + n]
        headers.append("content-type: application/octet-stream")
        if random.random() < 0.1:
            headers.append("transfer-encoding: chunked")
            cut = random.randint(1, n - 1)
            for piece in (body[:cut], body[cut:]):
                body_parts.append(b"%x\r\n" % len(piece) + piece + b"\r\n")
            body_parts.append(b"0\r\n\r\n")
        else:
            headers.append(f"content-length: {n}")
            body_parts.append(body)
    head = f"{method} {path} HTTP/1.1\r\n" + "\r\n".join(headers) + "\r\n\r\n"
    return service, cat, head.encode() + b"".join(body_parts)


class Lost(Exception):
    pass


async def read_response(reader):
    """(status, headers, body) of one response; raises on EOF / bad framing."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as e:
        raise Lost("eof before response" if not e.partial else "eof inside response head")
    line, h = soaklib.parse_head(head)
    parts = line.split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1."):
        raise Lost(f"bad status line {line[:40]!r}")
    status = int(parts[1])
    try:
        if h.get("transfer-encoding", "").lower() == "chunked":
            body = b""
            while True:
                size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                if size == 0:
                    while (await reader.readuntil(b"\r\n")) != b"\r\n":
                        pass
                    break
                body += (await reader.readexactly(size + 2))[:-2]
        elif "content-length" in h:
            body = await reader.readexactly(int(h["content-length"]))
        else:
            body = await reader.read()
    except asyncio.IncompleteReadError:
        raise Lost("eof inside response body")
    return status, h, body


class Client:
    def __init__(self, a):
        self.a = a
        self.host = f"{a.host}:{a.port}"
        self.stats = Stats()
        self.deadline = time.monotonic() + a.duration
        self.lost_log = open(a.lost_log, "a")

    def lost(self, service, cat, kind, detail):
        s = self.stats
        s.lost += 1
        s.bump(s.lost_kinds, kind)
        self.lost_log.write(json.dumps({"t": round(time.time(), 3), "service": service, "cat": cat,
                                        "kind": kind, "detail": detail[:200]}) + "\n")
        self.lost_log.flush()

    async def worker(self, i):
        a, s = self.a, self.stats
        interval = a.conns / a.rate
        nxt = time.monotonic() + random.uniform(0, interval)
        conn = None
        left = 0
        while True:
            now = time.monotonic()
            if nxt >= self.deadline:
                break
            if nxt > now:
                await asyncio.sleep(nxt - now)
            nxt = max(nxt + interval, time.monotonic() - interval)
            if conn is not None and left <= 0:
                conn[1].close()
                s.conns_closed_by_client += 1
                conn = None
            service, cat, req = make(self.host)
            must200 = not (service == "chat" and cat == "G")
            klass = "must200" if must200 else "faultok"
            s.sent += 1
            t = time.monotonic()
            try:
                if conn is None:
                    conn = await asyncio.wait_for(asyncio.open_connection(a.host, a.port), a.timeout)
                    s.conns_opened += 1
                    left = random.randint(100, 2000)
                reader, writer = conn
                writer.write(req)
                await writer.drain()
                status, h, body = await asyncio.wait_for(read_response(reader), a.timeout)
            except (Lost, OSError, asyncio.TimeoutError, ValueError) as e:
                kind = "timeout" if isinstance(e, asyncio.TimeoutError) else type(e).__name__
                self.lost(service, cat, f"connection: {kind}", str(e) or kind)
                if conn is not None:
                    conn[1].close()
                conn = None
                continue
            left -= 1
            ms = (time.monotonic() - t) * 1000
            s.answered += 1
            s.lat_sum_ms += ms
            s.max_latency_ms = max(s.max_latency_ms, ms)
            s.bump(s.by_status, f"{klass} {status}")
            text = body[:80].decode("latin-1").strip()
            if status == 200:
                got = text if text in ("stable", "gray") else "other"
                s.bump(s.pools, f"{service} {cat} {got}")
                want = None if cat in ("A", "B") else soaklib.expected_pool(cat, "A")
                # chat's G users reach stable while the guard has tripped gray: not misrouted.
                if want is not None and got != want and not (service == "chat" and cat == "G"):
                    s.misrouted += 1
                    self.lost_log.write(json.dumps({"t": round(time.time(), 3), "service": service,
                                                    "cat": cat, "kind": "misrouted", "detail": text}) + "\n")
            elif not must200 and (
                (status == 500 and text.startswith("soak: injected"))
                or (status in (502, 504) and text.startswith("graylane: "))
            ):
                s.fault_answers += 1
                s.bump(s.faults, f"{status} {text}")
            else:
                self.lost(service, cat, f"status {status}", f"{status} {text}")
            if h.get("connection", "").lower() == "close":
                s.conns_closed_by_server += 1
                conn[1].close()
                conn = None
        if conn is not None:
            conn[1].close()
            s.conns_closed_by_client += 1

    async def dump(self):
        while True:
            soaklib.write_json(self.a.stats, self.stats.as_dict())
            await asyncio.sleep(5)

    async def run(self):
        d = asyncio.create_task(self.dump())
        await asyncio.gather(*(self.worker(i) for i in range(self.a.conns)))
        d.cancel()
        soaklib.write_json(self.a.stats, self.stats.as_dict())
        self.lost_log.close()


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--rate", type=float, default=200.0, help="requests/s in total")
    p.add_argument("--conns", type=int, default=16, help="keep-alive connections")
    p.add_argument("--duration", type=float, required=True, help="seconds")
    p.add_argument("--timeout", type=float, default=10.0, help="per request, s")
    p.add_argument("--stats", required=True)
    p.add_argument("--lost-log", required=True)
    a = p.parse_args()
    c = Client(a)
    asyncio.run(c.run())
    s = c.stats.as_dict()
    print(f"http_load: sent {s['sent']}, answered {s['answered']}, lost {s['lost']}, "
          f"fault answers {s['fault_answers']}, misrouted {s['misrouted']}, {s['rate_actual']} req/s")


if __name__ == "__main__":
    main()
