#!/usr/bin/env python3
"""Opens N TLS connections to a gateway, completes each handshake, holds them all open while
the gateway's resident memory is read, and prints the figures.

Usage: idle-connections.py HOST:PORT PID [N] [SOURCES]
  PID      the gateway's process id, whose VmRSS is read from /proc
  N        connections to hold (default 10000)
  SOURCES  spread them over this many 127.0.0.0/8 source addresses (default 50)

The last line is for scripts (run.sh): "result held=N failed=N before_kib=N holding_kib=N
after_kib=N".
"""
import asyncio
import resource
import ssl
import sys
import time


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise SystemExit(f"no VmRSS for pid {pid}")


async def main():
    host, port = sys.argv[1].rsplit(":", 1)
    pid = int(sys.argv[2])
    n = int(sys.argv[3]) if len(sys.argv) > 3 else 10000
    sources = int(sys.argv[4]) if len(sys.argv) > 4 else 50
    # One descriptor per held connection: the soft limit (often 1024) is raised to the hard one.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or soft < hard):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    if soft != resource.RLIM_INFINITY and soft < n + 100:
        raise SystemExit(f"the open-file limit ({soft}) is too low for {n} connections")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    before = rss_kib(pid)
    held, failed = [], 0
    sem = asyncio.Semaphore(64)
    started = time.monotonic()

    async def one(i):
        nonlocal failed
        src = f"127.0.{1 + (i % sources) // 250}.{1 + (i % sources) % 250}"
        async with sem:
            try:
                r, w = await asyncio.open_connection(
                    host, int(port), ssl=ctx, local_addr=(src, 0), server_hostname=None
                )
                held.append(w)
            except OSError as e:
                failed += 1
                if failed <= 3:
                    print(f"connection {i}: {e}", file=sys.stderr)

    await asyncio.gather(*(one(i) for i in range(n)))
    opened = time.monotonic() - started
    await asyncio.sleep(2)
    during = rss_kib(pid)
    for w in held:
        w.close()
    await asyncio.sleep(3)
    after = rss_kib(pid)
    print(
        f"connections held {len(held)} (failed {failed}) opened in {opened:.1f}s\n"
        f"gateway RSS: before {before / 1024:.1f} MiB, holding {during / 1024:.1f} MiB, "
        f"after closing {after / 1024:.1f} MiB; "
        f"{(during - before) * 1024 / max(len(held), 1):.0f} bytes per connection"
    )
    print(
        f"result held={len(held)} failed={failed} before_kib={before} holding_kib={during} "
        f"after_kib={after}"
    )


asyncio.run(main())
