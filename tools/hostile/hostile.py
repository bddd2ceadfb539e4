#!/usr/bin/env python3
"""Hostile HTTP/1.1 cases (cases.json) through several proxies, side by side.

Two modes, both reading the same cases.json as tests/hardening.rs:

  hostile.py upstream --cases cases.json --ports 9001,9002 --log-dir DIR
      A tiny recording upstream on each port. It parses every request by its own
      framing (Content-Length or chunked) and appends what it parsed, one JSON line per
      request, to DIR/seen-PORT.jsonl. It answers /resp/NAME with the case's scripted raw
      `response`, any request carrying Upgrade with `101` then `TUNNEL-OPEN` (as a naive
      backend would: a proxy that forwards Upgrade opens a tunnel), anything else with
      200 and the request target as the body.

  hostile.py client --cases cases.json --log-dir DIR --proxy NAME=PORT:UPSTREAM_PORT ...
      Sends every case's raw bytes to each proxy (all proxies at once, case by case),
      reads the answers until the proxy closes or stays quiet, reads what reached the
      proxy's own upstream, and prints a markdown table.

No third-party modules; Python 3.8+.
"""

import argparse
import asyncio
import json
import os
import sys
import time


# === cases ===

def case_bytes(v):
    """A cases.json value as bytes: Latin-1 string, {repeat, times}, or a list."""
    if isinstance(v, str):
        return v.encode("latin-1")
    if isinstance(v, list):
        return b"".join(case_bytes(x) for x in v)
    if isinstance(v, dict):
        return case_bytes(v["repeat"]) * int(v["times"])
    raise ValueError("unexpected value in cases.json: %r" % (v,))


def load_cases(path):
    with open(path, encoding="utf-8") as f:
        doc = json.load(f)
    out = []
    for c in doc["cases"]:
        c = dict(c)
        c["request_bytes"] = case_bytes(c["request"])
        if "response" in c:
            c["response_bytes"] = case_bytes(c["response"])
        out.append(c)
    return out


# === the recording upstream ===

async def read_until(reader, buf, sep, limit=1 << 20):
    while sep not in buf:
        if len(buf) > limit:
            return None
        chunk = await reader.read(65536)
        if not chunk:
            return None
        buf.extend(chunk)
    return buf.index(sep)


async def read_exact(reader, buf, n):
    while len(buf) < n:
        chunk = await reader.read(65536)
        if not chunk:
            return False
        buf.extend(chunk)
    return True


def parse_head(head):
    lines = head.split(b"\n")
    lines = [l[:-1] if l.endswith(b"\r") else l for l in lines]
    parts = lines[0].decode("latin-1").split(" ")
    if len(parts) < 2:
        return None
    headers = []
    for l in lines[1:]:
        if not l:
            continue
        if b":" not in l:
            return None
        name, value = l.split(b":", 1)
        headers.append((name.decode("latin-1").strip().lower(), value.strip(b" \t").decode("latin-1")))
    return parts[0], parts[1], headers


def header(headers, name):
    for n, v in headers:
        if n == name:
            return v
    return None


async def read_body(reader, buf, headers):
    te = header(headers, "transfer-encoding")
    if te is not None and "chunked" in te.lower():
        body = bytearray()
        while True:
            eol = await read_until(reader, buf, b"\r\n")
            if eol is None:
                return None
            line = bytes(buf[:eol]).decode("latin-1")
            del buf[:eol + 2]
            try:
                size = int(line.split(";")[0].strip(), 16)
            except ValueError:
                return None
            if size == 0:
                while True:
                    eol = await read_until(reader, buf, b"\r\n")
                    if eol is None:
                        return None
                    del buf[:eol + 2]
                    if eol == 0:
                        return bytes(body)
            if not await read_exact(reader, buf, size + 2):
                return None
            body.extend(buf[:size])
            del buf[:size + 2]
    cl = header(headers, "content-length")
    n = 0
    if cl is not None:
        try:
            n = int(cl.strip())
        except ValueError:
            return None
    if not await read_exact(reader, buf, n):
        return None
    body = bytes(buf[:n])
    del buf[:n]
    return body


def path_of(target):
    t = target
    if t.startswith("http://") or t.startswith("https://"):
        rest = t.split("://", 1)[1]
        t = rest[rest.index("/"):] if "/" in rest else "/"
    return t.split("?", 1)[0]


async def serve_upstream(port, responses, log_dir):
    log_path = os.path.join(log_dir, "seen-%d.jsonl" % port)
    open(log_path, "w").close()

    async def handle(reader, writer):
        buf = bytearray()
        try:
            while True:
                end = await read_until(reader, buf, b"\r\n\r\n")
                if end is None:
                    return
                head = bytes(buf[:end + 4])
                del buf[:end + 4]
                parsed = parse_head(head[:-4])
                if parsed is None:
                    return
                method, target, headers = parsed
                body = await read_body(reader, buf, headers)
                if body is None:
                    return
                with open(log_path, "a", encoding="utf-8") as f:
                    f.write(json.dumps({"method": method, "target": target, "headers": headers,
                                        "body_len": len(body)}) + "\n")
                path = path_of(target)
                if path in responses:
                    writer.write(responses[path])
                    await writer.drain()
                    continue
                up = header(headers, "upgrade")
                if up is not None:
                    writer.write(("HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\n"
                                  "Upgrade: %s\r\n\r\nTUNNEL-OPEN" % up).encode("latin-1"))
                    await writer.drain()
                    await asyncio.sleep(2)
                    return
                body = target.encode("latin-1")
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nx-upstream: recorder\r\n\r\n%s"
                             % (len(body), body))
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", port, limit=1 << 22)


async def run_upstreams(args):
    cases = load_cases(args.cases)
    responses = {"/resp/" + c["name"]: c["response_bytes"] for c in cases if "response_bytes" in c}
    servers = [await serve_upstream(int(p), responses, args.log_dir) for p in args.ports.split(",")]
    print("upstreams listening on %s" % args.ports, flush=True)
    await asyncio.gather(*(s.serve_forever() for s in servers))


# === the client ===

def split_answers(raw):
    """HTTP/1.1 answers in what a connection returned: [(status, head, body)]."""
    out = []
    at = 0
    while at < len(raw):
        end = raw.find(b"\r\n\r\n", at)
        if end < 0:
            break
        head = raw[at:end].decode("latin-1").lower()
        try:
            status = int(head[9:12]) if head.startswith("http/1.") else 0
        except ValueError:
            status = 0
        body_at = end + 4
        fields = {}
        for l in head.split("\r\n")[1:]:
            if ":" in l:
                k, v = l.split(":", 1)
                fields.setdefault(k.strip(), v.strip())
        if 100 <= status < 200:
            out.append((status, head, raw[body_at:]))
            if status == 101:
                break
            at = body_at
            continue
        if "chunked" in fields.get("transfer-encoding", ""):
            p = body_at
            body = bytearray()
            while True:
                eol = raw.find(b"\r\n", p)
                if eol < 0:
                    p = len(raw)
                    break
                try:
                    size = int(raw[p:eol].split(b";")[0].strip() or b"0", 16)
                except ValueError:
                    size = 0
                p = eol + 2
                if size == 0:
                    if raw[p:p + 2] == b"\r\n":
                        p += 2
                    else:
                        e = raw.find(b"\r\n\r\n", p)
                        p = e + 4 if e >= 0 else len(raw)
                    break
                body.extend(raw[p:p + size])
                p = min(p + size + 2, len(raw))
            out.append((status, head, bytes(body)))
            at = p
        elif fields.get("content-length", "").isdigit():
            n = int(fields["content-length"])
            out.append((status, head, raw[body_at:body_at + n]))
            at = body_at + n
        else:
            out.append((status, head, raw[body_at:]))
            break
    return out


async def exchange(port, data, quiet=0.7, within=6.0):
    t0 = time.monotonic()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError as e:
        return b"", "connect failed: %s" % e

    async def send():
        try:
            writer.write(data)
            await writer.drain()
        except (ConnectionError, OSError):
            pass

    sender = asyncio.ensure_future(send())
    raw = bytearray()
    end = "open"
    while True:
        left = within - (time.monotonic() - t0)
        if left <= 0:
            break
        wait = min(quiet, left) if raw else left
        try:
            chunk = await asyncio.wait_for(reader.read(65536), wait)
        except asyncio.TimeoutError:
            break
        except (ConnectionError, OSError):
            end = "reset"
            break
        if not chunk:
            end = "close"
            break
        raw.extend(chunk)
    sender.cancel()
    writer.close()
    return bytes(raw), end


def log_lines(log_dir, port):
    try:
        with open(os.path.join(log_dir, "seen-%d.jsonl" % port), encoding="utf-8") as f:
            return [json.loads(l) for l in f if l.strip()]
    except FileNotFoundError:
        return []


def describe_answer(raw, end):
    answers = split_answers(raw)
    if not answers:
        if not raw:
            return "no answer (" + end + ")"
        return "no status line: %r (%s)" % (raw[:16].decode("latin-1"), end)
    parts = []
    for status, _head, _body in answers:
        parts.append(str(status))
    return ", ".join(parts) + " (" + end + ")"


NOTABLE = ("host", "upgrade", "http2-settings", "transfer-encoding", "content-length", "x-forwarded-for")


def describe_seen(case, seen):
    if not seen:
        return "nothing"
    out = []
    for s in seen:
        p = path_of(s["target"])
        item = "%s %s" % (s["method"], p)
        names = [n for n, _ in s["headers"]]
        extra = []
        if p == "/smuggled":
            item = "**%s (smuggled)**" % item
        if "upgrade" in names:
            extra.append("upgrade: " + header(s["headers"], "upgrade"))
        if case["name"] == "absolute-form" or case["name"].startswith("host-") or case["name"] == "connection-names-host":
            hosts = [v for n, v in s["headers"] if n == "host"]
            extra.append("host: " + (", ".join(hosts) if hosts else "(none)"))
        if case["name"] == "connection-names-host":
            xff = [v for n, v in s["headers"] if n == "x-forwarded-for"]
            extra.append("xff: " + (" + ".join(xff) if xff else "(none)"))
        cls = [v for n, v in s["headers"] if n == "content-length"]
        if len(cls) > 1:
            extra.append("content-length x%d" % len(cls))
        if "transfer-encoding" in names and "content-length" in names:
            extra.append("CL+TE")
        if s.get("body_len"):
            extra.append("body %d B" % s["body_len"])
        if extra:
            item += " [" + "; ".join(extra) + "]"
        out.append(item)
    return "<br>".join(out)


def check_expect(case, raw, end, seen):
    """graylane against the case's `expect` (the same keys tests/hardening.rs checks)."""
    e = case.get("expect", {})
    answers = split_answers(raw)
    first = answers[0][0] if answers else 0
    bad = []
    if "status" in e and first not in e["status"]:
        bad.append("status")
    if "statuses" in e and [a[0] for a in answers] != e["statuses"]:
        bad.append("statuses")
    if e.get("close") and end == "open":
        bad.append("left open")
    if e.get("upstream_none") and seen:
        bad.append("forwarded")
    for t in e.get("upstream_never", []):
        if any(path_of(s["target"]) == t for s in seen):
            bad.append("reached " + t)
    if "upstream_host" in e:
        hosts = [v for n, v in (seen[-1]["headers"] if seen else []) if n == "host"]
        if hosts != [e["upstream_host"]]:
            bad.append("host")
    for h in e.get("upstream_has", []):
        if not seen or header(seen[-1]["headers"], h) is None:
            bad.append("lost " + h)
    for h in e.get("upstream_lacks", []):
        if any(header(s["headers"], h) is not None for s in seen):
            bad.append("forwarded " + h)
    for h in e.get("upstream_single", []):
        if any(sum(1 for n, _ in s["headers"] if n == h) > 1 for s in seen):
            bad.append(h + " twice")
    if "never_body" in e and e["never_body"].encode() in raw:
        bad.append("got " + e["never_body"])
    if e.get("no_cl_and_te") and any("\ncontent-length:" in h and "\ntransfer-encoding:" in h for _, h, _ in answers):
        bad.append("CL+TE to client")
    return "yes" if not bad else "**no**: " + ", ".join(bad)


async def run_client(args):
    cases = load_cases(args.cases)
    proxies = []
    for spec in args.proxy:
        name, rest = spec.split("=", 1)
        port, up = rest.split(":")
        proxies.append((name, int(port), int(up)))
    if args.only:
        cases = [c for c in cases if c["name"] in args.only.split(",")]

    rows = []
    for case in cases:
        before = {name: len(log_lines(args.log_dir, up)) for name, _, up in proxies}
        results = await asyncio.gather(*(exchange(port, case["request_bytes"]) for _, port, _ in proxies))
        await asyncio.sleep(0.3)
        cells = {}
        for (name, _, up), (raw, end) in zip(proxies, results):
            seen = log_lines(args.log_dir, up)[before[name]:]
            cells[name] = (raw, end, seen)
        rows.append((case, cells))
        print("%-28s %s" % (case["name"], "  ".join("%s: %s" % (n, describe_answer(*cells[n][:2]))
                                                  for n, _, _ in proxies)), file=sys.stderr, flush=True)

    names = [n for n, _, _ in proxies]
    head = ["case", "RFC"] + ["%s answer" % n for n in names] + ["%s → upstream" % n for n in names]
    if "graylane" in names:
        head.append("graylane meets `expect`")
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for case, cells in rows:
        row = [case["name"], case.get("rfc", "")]
        row += [describe_answer(*cells[n][:2]) for n in names]
        row += [describe_seen(case, cells[n][2]) for n in names]
        if "graylane" in names:
            raw, end, seen = cells["graylane"]
            row.append(check_expect(case, raw, end, seen))
        print("| " + " | ".join(x.replace("|", "\\|") for x in row) + " |")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="mode", required=True)
    u = sub.add_parser("upstream")
    u.add_argument("--cases", required=True)
    u.add_argument("--ports", required=True)
    u.add_argument("--log-dir", required=True)
    c = sub.add_parser("client")
    c.add_argument("--cases", required=True)
    c.add_argument("--log-dir", required=True)
    c.add_argument("--proxy", action="append", required=True, help="NAME=PORT:UPSTREAM_PORT")
    c.add_argument("--only", help="comma-separated case names")
    args = ap.parse_args()
    if args.mode == "upstream":
        asyncio.run(run_upstreams(args))
    else:
        asyncio.run(run_client(args))


if __name__ == "__main__":
    main()
