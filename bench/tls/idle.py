"""Opens N idle TLS connections to HOST:PORT (handshake done, ALPN http/1.1, no request),
prints "ready N" once all are open, holds them until stdin closes or HOLD seconds pass,
then closes them. Used by bench/tls/run.sh to measure memory per idle TLS connection.

Usage: python3 idle.py HOST PORT CAFILE N [HOLD]
Bounded: at most 200 handshakes at once; gives up after 120 s of opening.
"""

import asyncio
import resource
import ssl
import sys


async def main():
    host, port, cafile, n = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    hold = float(sys.argv[5]) if len(sys.argv) > 5 else 120.0
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, n + 100)), hard))
    ctx = ssl.create_default_context(cafile=cafile)
    ctx.set_alpn_protocols(["http/1.1"])
    sem = asyncio.Semaphore(200)
    conns, failed = [], 0

    async def one():
        nonlocal failed
        async with sem:
            try:
                r, w = await asyncio.wait_for(
                    asyncio.open_connection(host, port, ssl=ctx, server_hostname="localhost"), 30)
                conns.append(w)
            except (OSError, asyncio.TimeoutError, ssl.SSLError):
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
