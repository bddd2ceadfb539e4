#!/usr/bin/env python3
"""Holds `--links` WebSocket links through graylane for `--duration` seconds (Python 3
standard library only), the way IM clients do:

- open: `GET /ws/im` upgrade with the uid in the `xdw-kefu-uid` header (50%), a cookie
  (25%) or the query string (25%); then a `hello` text frame, whose echo names the pool
  the link reached (`{pool}:hello`, upstreams.py). Categories (soaklib.py): 60% S, 20% G,
  10% A, 10% B; A and B links move pool at every reload of the soak.
- hold: every link sends a text frame every `--ping-every` seconds (random phase) and
  expects its echo from its own pool within 10 s.
- a Close with code 1012 (graylane re-homing a link whose user moved pool) is answered
  with a Close, then the link reconnects after 0-1 s: counted as re-homed, and as
  reconnected once the new link is open. Any other close, a reset or an EOF without a
  Close is an UNEXPECTED close (the link reconnects too).
- checks, against the live ruleset read from the admin `GET /rules` every second:
  *misrouted*: a link opened into a pool its category and the live ruleset do not give
  (not counted within 3 s of a ruleset change); *stale*: a link still in its old pool
  `--stale-after` seconds after a reload moved its user (graylane should have closed
  it); *wrong re-home*: a 1012 to a link whose user did not move.
- stop: every link sends Close 1000 and waits for the answer.

Live counters go to `--stats` (JSON) every 5 s.
"""

import argparse
import asyncio
import json
import os
import random
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import soaklib  # noqa: E402

CATS = [("S", 60), ("G", 20), ("A", 10), ("B", 10)]
TRANSITION = 3.0  # seconds around a ruleset change in which either pool is accepted


class Live:
    """The live ruleset as graylane's admin API reports it (polled: up to ~1 s late)."""

    def __init__(self):
        self.version = None
        self.ruleset = None
        self.since = 0.0  # monotonic time the current version was first seen
        self.history = []  # (monotonic time first seen, ruleset)

    def near_change(self, t):
        return any(abs(t - c) < TRANSITION for c, _ in self.history[1:][-3:])

    def at(self, t):
        rs = None
        for c, r in self.history:
            if c <= t:
                rs = r
        return rs


class Link:
    __slots__ = ("idx", "cat", "uid", "how", "pool", "opened_at", "writer", "ping_due",
                 "ping_sent", "ping_text", "stale_seen", "route_check_at")

    def __init__(self, idx, cat, uid, how):
        self.idx, self.cat, self.uid, self.how = idx, cat, uid, how
        self.pool = None
        self.opened_at = 0.0
        self.writer = None
        self.ping_due = 0.0
        self.ping_sent = None
        self.ping_text = None
        self.stale_seen = None
        self.route_check_at = None  # handshake time whose pool is still to be checked


class Holder:
    def __init__(self, a):
        self.a = a
        self.live = Live()
        self.stopping = False
        self.links = []
        self.c = {
            "target": a.links, "open": 0, "opens": 0, "initial_open_s": None,
            "reconnects": 0, "rehome_closes": 0, "wrong_rehomes": 0,
            "unexpected_closes": 0, "unexpected_codes": {}, "drops": 0, "drop_kinds": {},
            "handshake_failures": 0, "handshake_statuses": {}, "misrouted": 0, "stale": 0,
            "echo_ok": 0, "echo_timeouts": 0, "echo_wrong": 0, "closed_clean_at_end": 0,
            "close_timeouts_at_end": 0, "max_open": 0, "min_open_after_ramp": None,
            "rules_versions_seen": 0, "admin_errors": 0,
        }
        self.ramp_done = False
        self.log = open(a.event_log, "a")

    def event(self, **kw):
        kw["t"] = round(time.time(), 3)
        self.log.write(json.dumps(kw) + "\n")

    def bump(self, k, sub=None):
        if sub is None:
            self.c[k] += 1
        else:
            self.c[k][sub] = self.c[k].get(sub, 0) + 1

    # -------------------------------------------------------------- admin: live ruleset
    async def poll_rules(self):
        host, port = self.a.admin.rsplit(":", 1)
        while not self.stopping:
            try:
                r, w = await asyncio.wait_for(asyncio.open_connection(host, int(port)), 5)
                w.write(f"GET /rules HTTP/1.1\r\nhost: {self.a.admin}\r\nconnection: close\r\n\r\n".encode())
                data = await asyncio.wait_for(r.read(), 5)
                w.close()
                body = data.split(b"\r\n\r\n", 1)[1]
                if b"\r\n" in body[:8] and not body.lstrip().startswith(b"{"):
                    # chunked: keep it simple, strip the size lines
                    body = b"".join(body.split(b"\r\n")[1::2])
                v = json.loads(body).get("version")
                if v != self.live.version:
                    now = time.monotonic()
                    self.live.history.append((now, soaklib.ruleset_of_version(v)))
                    del self.live.history[:-10]
                    self.live.version = v
                    self.live.ruleset = soaklib.ruleset_of_version(v)
                    self.live.since = now
                    self.c["rules_versions_seen"] += 1
            except (OSError, asyncio.TimeoutError, ValueError, IndexError) as e:
                self.c["admin_errors"] += 1
                self.event(kind="admin_error", detail=str(e)[:100])
            await asyncio.sleep(1.0)

    # -------------------------------------------------------------- one link's life
    async def open_once(self, link):
        a = self.a
        path = "/ws/im"
        headers = [f"host: {a.host}:{a.port}", "upgrade: websocket", "connection: Upgrade",
                   "sec-websocket-version: 13"]
        if link.how == "header":
            headers.append(f"xdw-kefu-uid: {link.uid}")
        elif link.how == "cookie":
            headers.append(f"cookie: lang=zh; xdw-kefu-uid={link.uid}")
        else:
            path += f"?xdw-kefu-uid={link.uid}"
        key = soaklib.base64.b64encode(os.urandom(16)).decode()
        headers.append(f"sec-websocket-key: {key}")
        r, w = await asyncio.wait_for(asyncio.open_connection(a.host, a.port), 10)
        try:
            w.write((f"GET {path} HTTP/1.1\r\n" + "\r\n".join(headers) + "\r\n\r\n").encode())
            head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 10)
            line, h = soaklib.parse_head(head)
            status = line.split(" ")[1] if " " in line else "?"
            if status != "101" or h.get("sec-websocket-accept") != soaklib.ws_accept(key):
                self.bump("handshake_failures")
                self.bump("handshake_statuses", status)
                self.event(kind="handshake_failure", idx=link.idx, status=status)
                w.close()
                return None
            link.route_check_at = time.monotonic()
            w.write(soaklib.ws_frame(soaklib.OP_TEXT, "hello", mask=True))
            _fin, op, payload = await asyncio.wait_for(soaklib.ws_read_frame(r), 10)
            if op != soaklib.OP_TEXT or not payload.endswith(b":hello"):
                self.bump("handshake_failures")
                self.bump("handshake_statuses", f"hello answered op {op}")
                w.close()
                return None
            link.pool = payload[:-6].decode()
            return r, w
        except BaseException:
            w.close()
            raise

    async def life(self, link, ramp_sem):
        first = True
        while not self.stopping:
            try:
                if first:
                    async with ramp_sem:
                        rw = await self.open_once(link)
                else:
                    rw = await self.open_once(link)
            except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError) as e:
                self.bump("handshake_failures")
                self.bump("handshake_statuses", type(e).__name__)
                self.event(kind="handshake_error", idx=link.idx, detail=str(e)[:100])
                rw = None
            if rw is None:
                if self.stopping:
                    return
                await asyncio.sleep(2 + random.random())
                continue
            if not first:
                self.c["reconnects"] += 1
            first = False
            reader, writer = rw
            link.writer = writer
            link.opened_at = time.monotonic()
            link.ping_due = link.opened_at + random.uniform(0, self.a.ping_every)
            link.ping_sent = None
            link.stale_seen = None
            self.c["opens"] += 1
            self.c["open"] += 1
            self.c["max_open"] = max(self.c["max_open"], self.c["open"])
            try:
                again = await self.hold(link, reader, writer)
            finally:
                self.c["open"] -= 1
                link.writer = None
                writer.close()
            if self.ramp_done and not self.stopping:
                m = self.c["min_open_after_ramp"]
                self.c["min_open_after_ramp"] = self.c["open"] if m is None else min(m, self.c["open"])
            if not again:
                return
            await asyncio.sleep(random.uniform(0, 1.0) if again == "rehome" else 1.0)

    async def hold(self, link, reader, writer):
        """Reads frames until the link ends. Returns False at the end of the soak, or the
        reason to reconnect."""
        while True:
            try:
                _fin, op, payload = await soaklib.ws_read_frame(reader)
            except (asyncio.IncompleteReadError, OSError, ValueError) as e:
                if self.stopping and link.ping_text == "closing":
                    return False
                self.c["drops"] += 1
                self.bump("drop_kinds", type(e).__name__)
                self.event(kind="drop", idx=link.idx, cat=link.cat, detail=type(e).__name__)
                return "drop"
            if op == soaklib.OP_TEXT:
                if link.ping_text is not None and link.ping_text != "closing":
                    if payload == f"{link.pool}:{link.ping_text}".encode():
                        self.c["echo_ok"] += 1
                    else:
                        self.c["echo_wrong"] += 1
                        self.event(kind="echo_wrong", idx=link.idx, got=payload[:40].decode("latin-1"))
                    link.ping_text = None
                    link.ping_sent = None
            elif op == soaklib.OP_PING:
                writer.write(soaklib.ws_frame(soaklib.OP_PONG, payload, mask=True))
            elif op == soaklib.OP_CLOSE:
                code = soaklib.close_code(payload)
                if self.stopping and link.ping_text == "closing":
                    self.c["closed_clean_at_end"] += 1
                    return False
                # Answer the close, then let the server end the TCP connection.
                try:
                    writer.write(soaklib.ws_frame(soaklib.OP_CLOSE, payload[:2], mask=True))
                    await asyncio.wait_for(reader.read(), 2)
                except (OSError, asyncio.TimeoutError):
                    pass
                if code == 1012:
                    self.c["rehome_closes"] += 1
                    rs = self.live.ruleset
                    if link.cat not in ("A", "B"):
                        self.c["wrong_rehomes"] += 1
                        self.event(kind="wrong_rehome", idx=link.idx, cat=link.cat, pool=link.pool, ruleset=rs)
                    return "rehome"
                self.c["unexpected_closes"] += 1
                self.bump("unexpected_codes", str(code))
                self.event(kind="unexpected_close", idx=link.idx, cat=link.cat, code=code)
                return "close"

    # -------------------------------------------------------------- periodic work
    async def pinger(self):
        n = 0
        while not self.stopping:
            now = time.monotonic()
            rs, since = self.live.ruleset, self.live.since
            for link in self.links:
                w = link.writer
                if w is None or link.ping_text == "closing":
                    continue
                if link.ping_sent is not None and now - link.ping_sent > 10:
                    self.c["echo_timeouts"] += 1
                    self.event(kind="echo_timeout", idx=link.idx)
                    link.ping_sent = None
                    link.ping_text = None
                if link.ping_sent is None and now >= link.ping_due:
                    n += 1
                    link.ping_text = f"p{n}"
                    link.ping_sent = now
                    link.ping_due = now + self.a.ping_every
                    try:
                        w.write(soaklib.ws_frame(soaklib.OP_TEXT, link.ping_text, mask=True))
                    except (OSError, RuntimeError):
                        pass
                # The pool the handshake reached, checked once the ruleset poll has caught
                # up: handshakes within TRANSITION s of a change may see either ruleset.
                t_hs = link.route_check_at
                if t_hs is not None and now - t_hs > TRANSITION + 1:
                    link.route_check_at = None
                    rs_hs = self.live.at(t_hs)
                    if (rs_hs and not self.live.near_change(t_hs)
                            and link.pool != soaklib.expected_pool(link.cat, rs_hs)):
                        self.c["misrouted"] += 1
                        self.event(kind="misrouted", idx=link.idx, cat=link.cat, pool=link.pool, ruleset=rs_hs)
                # A link still in the pool its user left, long after the reload.
                if (rs and link.cat in ("A", "B") and link.opened_at < since
                        and now - since > self.a.stale_after and link.stale_seen != since
                        and link.pool != soaklib.expected_pool(link.cat, rs)):
                    link.stale_seen = since
                    self.c["stale"] += 1
                    self.event(kind="stale", idx=link.idx, cat=link.cat, pool=link.pool, ruleset=rs)
            await asyncio.sleep(1.0)

    async def dump(self):
        while True:
            soaklib.write_json(self.a.stats, self.c)
            self.log.flush()
            await asyncio.sleep(5)

    async def run(self):
        a = self.a
        loop = asyncio.get_running_loop()
        stop_early = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop_early.set)
        rng = random.Random(a.seed)
        for i in range(a.links):
            cat = soaklib.pick_weighted(CATS, rng)
            how = rng.choices(["header", "cookie", "query"], [50, 25, 25])[0]
            self.links.append(Link(i, cat, soaklib.uid_of(cat, rng), how))
        tasks = [asyncio.create_task(self.poll_rules()), asyncio.create_task(self.dump())]
        t0 = time.monotonic()
        while self.live.version is None and time.monotonic() - t0 < 10:
            await asyncio.sleep(0.1)
        ramp = asyncio.Semaphore(a.concurrency)
        lives = [asyncio.create_task(self.life(l, ramp)) for l in self.links]
        tasks.append(asyncio.create_task(self.pinger()))
        deadline = t0 + a.duration
        while time.monotonic() < deadline and not stop_early.is_set():
            if not self.ramp_done and self.c["open"] >= a.links:
                self.ramp_done = True
                self.c["initial_open_s"] = round(time.monotonic() - t0, 1)
                self.c["min_open_after_ramp"] = self.c["open"]
                print(f"ws_links: {a.links} links open after {self.c['initial_open_s']} s", flush=True)
            try:
                await asyncio.wait_for(stop_early.wait(), 0.5)
            except asyncio.TimeoutError:
                pass
        # Stop: a Close 1000 on every open link; the reader sees the answer and ends.
        self.stopping = True
        for link in self.links:
            if link.writer is not None:
                link.ping_text = "closing"
                try:
                    link.writer.write(soaklib.ws_frame(soaklib.OP_CLOSE, soaklib.ws_close_payload(1000), mask=True))
                except (OSError, RuntimeError):
                    pass
        done, pending = await asyncio.wait(lives, timeout=15)
        self.c["close_timeouts_at_end"] = len(pending)
        for t in pending:
            t.cancel()
        for t in tasks:
            t.cancel()
        soaklib.write_json(a.stats, self.c)
        self.log.close()
        print(f"ws_links: done: {json.dumps({k: v for k, v in self.c.items() if not isinstance(v, dict)})}", flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--admin", required=True, help="graylane's admin HOST:PORT")
    p.add_argument("--links", type=int, default=5000)
    p.add_argument("--duration", type=float, required=True)
    p.add_argument("--concurrency", type=int, default=100, help="handshakes in flight while opening")
    p.add_argument("--ping-every", type=float, default=60.0)
    p.add_argument("--stale-after", type=float, default=25.0)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--stats", required=True)
    p.add_argument("--event-log", required=True)
    a = p.parse_args()
    asyncio.run(Holder(a).run())


if __name__ == "__main__":
    main()
