"""Sequential load for benches/load/instructions.sh: N keep-alive requests over C
connections to 127.0.0.1:PORT, the same mix as uids.lua (1 request in 5 carries a gray
uid; 70% send it in the `xdw-kefu-uid` header, 30% in a cookie among other cookies).
Deterministic: the same requests in the same order on every run.

Usage: python3 seq_client.py PORT N [C]
"""
import asyncio
import sys


def request(k):
    if k % 5 == 0:
        uid = 10000000 + (k * 7919) % 500000          # gray range
    else:
        uid = 10500000 + (k * 104729) % 89500000      # stable
    if k % 10 < 7:
        marker = f"xdw-kefu-uid: {uid}\r\nxdw-app-version: 5.3.1\r\n"
    else:
        marker = ("Cookie: lang=zh-CN; accessToken=eyJhbGciOiJIUzI1NiJ9.e30.c2ln; "
                  f"xdw-kefu-uid={uid}; theme=dark\r\n")
    return ("GET /chat/send HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            "User-Agent: wrk-graylane-bench\r\nAccept: */*\r\n"
            f"{marker}\r\n").encode()


async def connection(port, start, count):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    for i in range(count):
        writer.write(request(start + i))
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        status = head.split(b" ", 2)[1]
        if status != b"200":
            raise SystemExit(f"request {start + i}: status {status.decode()}")
        length = next(int(line.split(b":", 1)[1])
                      for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length:"))
        await reader.readexactly(length)
    writer.close()


async def main():
    port, n = int(sys.argv[1]), int(sys.argv[2])
    c = int(sys.argv[3]) if len(sys.argv) > 3 else 1
    per = n // c
    await asyncio.gather(*(connection(port, i * per, per) for i in range(c)))


asyncio.run(main())
