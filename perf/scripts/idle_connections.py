#!/usr/bin/env python3
"""Open N AMQP connections (handshake through connection.open-ok, heartbeat
off) and hold them idle until stdin closes: for measuring a broker's memory
per connection. Standard library only.

    idle_connections.py HOST PORT N [--cacert CA.pem]    # --cacert: amqps

Prints "open N" on stdout once every connection is open.
"""

import argparse
import asyncio
import ssl
import struct
import sys


def frame(payload):
    return struct.pack(">BHI", 1, 0, len(payload)) + payload + b"\xce"


def method(cls, mid, args=b""):
    return frame(struct.pack(">HH", cls, mid) + args)


def shortstr(s):
    b = s.encode()
    return struct.pack(">B", len(b)) + b


async def read_method(reader):
    while True:
        head = await reader.readexactly(7)
        kind, _ch, size = struct.unpack(">BHI", head)
        payload = await reader.readexactly(size + 1)
        if kind == 1:
            cls, mid = struct.unpack(">HH", payload[:4])
            return cls, mid, payload[4:-1]


async def open_one(host, port, ctx, user, password):
    reader, writer = await asyncio.open_connection(host, port, ssl=ctx)
    writer.write(b"AMQP\x00\x00\x09\x01")
    cls, mid, _ = await read_method(reader)
    assert (cls, mid) == (10, 10), (cls, mid)
    resp = b"\x00" + user.encode() + b"\x00" + password.encode()
    writer.write(method(10, 11, struct.pack(">I", 0) + shortstr("PLAIN")
                        + struct.pack(">I", len(resp)) + resp + shortstr("en_US")))
    cls, mid, args = await read_method(reader)
    assert (cls, mid) == (10, 30), (cls, mid)
    channel_max, frame_max, _hb = struct.unpack(">HIH", args[:8])
    writer.write(method(10, 31, struct.pack(">HIH", channel_max, frame_max, 0)))
    writer.write(method(10, 40, shortstr("/") + shortstr("") + b"\x00"))
    cls, mid, _ = await read_method(reader)
    assert (cls, mid) == (10, 41), (cls, mid)
    return reader, writer


async def main():
    p = argparse.ArgumentParser()
    p.add_argument("host")
    p.add_argument("port", type=int)
    p.add_argument("n", type=int)
    p.add_argument("--cacert")
    p.add_argument("--user", default="guest")
    p.add_argument("--password", default="guest")
    a = p.parse_args()
    ctx = ssl.create_default_context(cafile=a.cacert) if a.cacert else None
    sem = asyncio.Semaphore(50)

    async def one():
        async with sem:
            return await asyncio.wait_for(open_one(a.host, a.port, ctx, a.user, a.password), 30)

    conns = await asyncio.gather(*(one() for _ in range(a.n)))
    print("open", len(conns), flush=True)
    # Hold them until stdin closes (bounded: at most 10 minutes).
    loop = asyncio.get_running_loop()
    try:
        await asyncio.wait_for(loop.run_in_executor(None, sys.stdin.read), 600)
    except asyncio.TimeoutError:
        pass
    for _, w in conns:
        w.close()


if __name__ == "__main__":
    asyncio.run(main())
