#!/usr/bin/env python3
"""The soak's own upstreams, in one asyncio process (Python 3 standard library only):

- two WebSocket echo upstreams, `stable` and `gray`: every text frame is answered with
  `{pool}:{text}`, pings with pongs, a Close with a Close (then the TCP close);
- the fault injector: a plain HTTP/1.1 keep-alive upstream that is one of the two
  endpoints of the `chat` service's gray pool (the other is nginx). It answers `gray\\n`,
  except in its fault phases, which repeat every `--cycle` seconds:

      normal 30 s | error 15 s | normal 15 s | reset 15 s | normal 10 s | stall 15 s |
      down 10 s | normal 10 s                                  (scaled to --cycle)

  error: `--error-share` of requests (default all) get `500 soak: injected 500`; reset: `--share` of requests
  are read and then reset (RST, no answer); stall: `--share` of requests wait `--stall`
  seconds (beyond graylane's upstream_response) before a 200; down: the listener and
  every open connection are closed (connection refused) and reopened at the phase's end.
  `GET /healthz` is always 200 while listening.

Counters are written to `--stats` (JSON) every 5 s and on SIGTERM.
"""

import argparse
import asyncio
import os
import random
import signal
import socket
import struct
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import soaklib  # noqa: E402

PHASES = [("normal", 30), ("error", 15), ("normal", 15), ("reset", 15), ("normal", 10),
          ("stall", 15), ("down", 10), ("normal", 10)]

STATS = {
    "ws_accepted": {"stable": 0, "gray": 0}, "ws_open": {"stable": 0, "gray": 0},
    "ws_closes_by_peer_frame": 0, "ws_eof_without_close": 0, "ws_echoes": 0,
    "inj_requests": 0, "inj_ok": 0, "inj_500": 0, "inj_resets": 0, "inj_stalls": 0,
    "inj_down_phases": 0, "inj_healthz": 0, "inj_conns_aborted_by_down": 0,
    "inj_bad_requests": 0, "phase_log": [],
}


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# --------------------------------------------------------------------- WebSocket echo
async def ws_conn(reader, writer, pool):
    STATS["ws_accepted"][pool] += 1
    try:
        head = await reader.readuntil(b"\r\n\r\n")
        _, h = soaklib.parse_head(head)
        key = h.get("sec-websocket-key")
        if h.get("upgrade", "").lower() != "websocket" or not key:
            writer.write(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
            await writer.drain()
            return
        writer.write(
            b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\n"
            + f"sec-websocket-accept: {soaklib.ws_accept(key)}\r\n\r\n".encode()
        )
        STATS["ws_open"][pool] += 1
        try:
            while True:
                _fin, op, payload = await soaklib.ws_read_frame(reader)
                if op == soaklib.OP_TEXT:
                    writer.write(soaklib.ws_frame(soaklib.OP_TEXT, f"{pool}:".encode() + payload))
                    STATS["ws_echoes"] += 1
                elif op == soaklib.OP_PING:
                    writer.write(soaklib.ws_frame(soaklib.OP_PONG, payload))
                elif op == soaklib.OP_CLOSE:
                    STATS["ws_closes_by_peer_frame"] += 1
                    writer.write(soaklib.ws_frame(soaklib.OP_CLOSE, payload[:2]))
                    await writer.drain()
                    return
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            STATS["ws_eof_without_close"] += 1
        finally:
            STATS["ws_open"][pool] -= 1
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError, ValueError):
        pass
    finally:
        writer.close()


# --------------------------------------------------------------------- fault injector
class Injector:
    def __init__(self, port, cycle, share, error_share, stall):
        self.port, self.share, self.error_share, self.stall = port, share, error_share, stall
        scale = cycle / sum(d for _, d in PHASES)
        self.phases = [(m, d * scale) for m, d in PHASES]
        self.cycle = cycle
        self.t0 = time.monotonic()
        self.server = None
        self.conns = set()
        self.mode = "normal"

    def mode_now(self):
        t = (time.monotonic() - self.t0) % self.cycle
        for m, d in self.phases:
            if t < d:
                return m
            t -= d
        return "normal"

    async def listen(self):
        self.server = await asyncio.start_server(
            self.conn, "127.0.0.1", self.port, reuse_address=True, backlog=4096)

    async def run(self):
        await self.listen()
        while True:
            m = self.mode_now()
            if m != self.mode:
                STATS["phase_log"].append([round(time.time(), 1), m])
                del STATS["phase_log"][:-50]
                log(f"injector: {self.mode} -> {m}")
                if m == "down":
                    STATS["inj_down_phases"] += 1
                    self.server.close()
                    for w in list(self.conns):
                        STATS["inj_conns_aborted_by_down"] += 1
                        w.transport.abort()
                    await self.server.wait_closed()
                elif self.mode == "down":
                    await self.listen()
                self.mode = m
            await asyncio.sleep(0.1)

    async def conn(self, reader, writer):
        self.conns.add(writer)
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                line, h = soaklib.parse_head(head)
                parts = line.split(" ")
                if len(parts) != 3:
                    STATS["inj_bad_requests"] += 1
                    return
                path = parts[1]
                if "content-length" in h:
                    await reader.readexactly(int(h["content-length"]))
                elif h.get("transfer-encoding", "").lower() == "chunked":
                    while True:
                        size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                        await reader.readexactly(size + 2) if size else None
                        if size == 0:
                            # trailers until an empty line
                            while (await reader.readuntil(b"\r\n")) != b"\r\n":
                                pass
                            break
                close = h.get("connection", "").lower() == "close"
                if path.startswith("/healthz"):
                    STATS["inj_healthz"] += 1
                    await self.answer(writer, 200, b"ok\n", close)
                    if close:
                        return
                    continue
                STATS["inj_requests"] += 1
                mode = self.mode
                hit = random.random() < (self.error_share if mode == "error" else self.share)
                if mode == "error" and hit:
                    STATS["inj_500"] += 1
                    await self.answer(writer, 500, b"soak: injected 500\n", close)
                elif mode == "reset" and hit:
                    STATS["inj_resets"] += 1
                    sock = writer.get_extra_info("socket")
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    writer.transport.abort()
                    return
                elif mode == "stall" and hit:
                    STATS["inj_stalls"] += 1
                    await asyncio.sleep(self.stall)
                    await self.answer(writer, 200, b"gray\n", close)
                else:
                    STATS["inj_ok"] += 1
                    await self.answer(writer, 200, b"gray\n", close)
                if close:
                    return
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError, ValueError, OSError):
            return
        finally:
            self.conns.discard(writer)
            writer.close()

    @staticmethod
    async def answer(writer, status, body, close):
        reason = {200: "OK", 500: "Internal Server Error"}[status]
        writer.write(
            f"HTTP/1.1 {status} {reason}\r\ncontent-type: text/plain\r\ncontent-length: {len(body)}\r\n"
            f"{'connection: close' + chr(13) + chr(10) if close else ''}\r\n".encode() + body)
        await writer.drain()


async def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ws-stable", type=int, required=True, help="port of the stable echo upstream")
    p.add_argument("--ws-gray", type=int, required=True, help="port of the gray echo upstream")
    p.add_argument("--injector", type=int, required=True, help="port of the faulty gray HTTP endpoint")
    p.add_argument("--cycle", type=float, default=120.0, help="length of one fault cycle, s")
    p.add_argument("--share", type=float, default=0.3, help="share of requests reset or stalled in those phases")
    p.add_argument("--error-share", type=float, default=1.0, help="share of requests answered 500 in the error phase")
    p.add_argument("--stall", type=float, default=4.0, help="stall length, s")
    p.add_argument("--stats", required=True)
    a = p.parse_args()

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)

    servers = []
    for pool, port in (("stable", a.ws_stable), ("gray", a.ws_gray)):
        servers.append(await asyncio.start_server(
            lambda r, w, pool=pool: ws_conn(r, w, pool), "127.0.0.1", port,
            reuse_address=True, backlog=4096))
    inj = Injector(a.injector, a.cycle, a.share, a.error_share, a.stall)
    inj_task = asyncio.create_task(inj.run())
    log(f"upstreams up: ws stable :{a.ws_stable}, ws gray :{a.ws_gray}, injector :{a.injector} "
        f"(cycle {a.cycle:g} s, 500s {a.error_share:g}, resets/stalls {a.share:g}, stall {a.stall:g} s)")

    async def dump():
        while True:
            soaklib.write_json(a.stats, STATS)
            await asyncio.sleep(5)

    dump_task = asyncio.create_task(dump())
    await stop.wait()
    dump_task.cancel()
    inj_task.cancel()
    soaklib.write_json(a.stats, STATS)
    log("upstreams stopping")
    os._exit(0)


if __name__ == "__main__":
    asyncio.run(main())
