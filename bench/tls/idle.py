"""Opens N idle TLS connections to HOST:PORT (handshake done, ALPN http/1.1, no request),
prints "ready N" once all are open, holds them until stdin closes or HOLD seconds pass,
then closes them. Used by bench/tls/run.sh to measure memory per idle TLS connection.
With ALPN=h2 in the environment each connection negotiates h2 and opens the HTTP/2
connection (the preface and SETTINGS both ways, acknowledged), then sends nothing more: an
idle HTTP/2 connection, as a browser keeps one.

Usage: python3 idle.py HOST PORT CAFILE N [HOLD]
Bounded: at most 200 handshakes at once; gives up after 120 s of opening.
"""

import asyncio
import os
import resource
import ssl
import sys

ALPN = os.environ.get("ALPN", "http/1.1")
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
SETTINGS = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"  # empty SETTINGS
SETTINGS_ACK = b"\x00\x00\x00\x04\x01\x00\x00\x00\x00"


async def h2_open(r, w):
    """The HTTP/2 connection's start: our preface and SETTINGS, the server's SETTINGS read
    and acknowledged."""
    w.write(PREFACE + SETTINGS)
    while True:
        head = await r.readexactly(9)
        length = int.from_bytes(head[:3], "big")
        if length:
            await r.readexactly(length)
        if head[3] == 4 and not head[4] & 1:  # the server's SETTINGS (not an ACK)
            w.write(SETTINGS_ACK)
            await w.drain()
            return


async def main():
    host, port, cafile, n = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    hold = float(sys.argv[5]) if len(sys.argv) > 5 else 120.0
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, n + 100)), hard))
    ctx = ssl.create_default_context(cafile=cafile)
    ctx.set_alpn_protocols([ALPN])
    sem = asyncio.Semaphore(200)
    conns, failed = [], 0

    async def one():
        nonlocal failed
        async with sem:
            try:
                r, w = await asyncio.wait_for(
                    asyncio.open_connection(host, port, ssl=ctx, server_hostname="localhost"), 30)
                if ALPN == "h2":
                    if w.get_extra_info("ssl_object").selected_alpn_protocol() != "h2":
                        raise ssl.SSLError("the server did not choose h2")
                    await asyncio.wait_for(h2_open(r, w), 30)
                conns.append(w)
            except (OSError, asyncio.TimeoutError, ssl.SSLError, asyncio.IncompleteReadError):
                failed += 1

    try:
        await asyncio.wait_for(asyncio.gather(*(one() for _ in range(n))), 120)
    except asyncio.TimeoutError:
        pass
    print("ready %d failed %d" % (len(conns), failed), flush=True)
    loop = asyncio.get_running_loop()
    try:
        await asyncio.wait_for(loop.run_in_executor(None, sys.stdin.read), hold)
    except asyncio.TimeoutError:
        pass
    for w in conns:
        w.close()


asyncio.run(main())
