#!/usr/bin/env python3
"""Opens N keep-alive connections to 127.0.0.1:PORT and leaves them idle.

On each connection one complete GET is sent and its whole response read, so every
connection ends up an established, idle HTTP/1.1 keep-alive connection (what a
server holds between a client's requests). Then one line is printed,

    ready OPEN FAILED SECONDS

and the connections are held until the process is signalled (SIGTERM: the kernel
closes them) or --hold seconds pass. Stdlib only; setting up is bounded by --timeout.

    python3 bench/idle_conns.py --port 8080 --count 10000 --path /api/ \
        --header 'Authorization: Bearer ...' > out.txt &
"""

import argparse
import asyncio
import sys
import time


async def read_response(reader):
    """Reads one HTTP/1.1 response; returns (status, keep_alive)."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            headers[k.strip().lower()] = v.strip().lower()
    if "content-length" in headers:
        await reader.readexactly(int(headers["content-length"]))
    elif headers.get("transfer-encoding", "").endswith("chunked"):
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    keep_alive = "close" not in headers.get("connection", "")
    return status, keep_alive


async def open_one(args, request, gate, held):
    async with gate:
        reader, writer = await asyncio.open_connection("127.0.0.1", args.port)
        try:
            writer.write(request)
            await writer.drain()
            status, keep_alive = await read_response(reader)
        except BaseException:
            writer.close()
            raise
    if status != 200 or not keep_alive:
        writer.close()
        raise RuntimeError(f"status {status}, keep-alive {keep_alive}")
    held.append((reader, writer))


async def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--count", type=int, default=10000)
    p.add_argument("--path", default="/")
    p.add_argument("--header", action="append", default=[])
    p.add_argument("--parallel", type=int, default=200, help="connections being set up at once")
    p.add_argument("--timeout", type=float, default=60, help="seconds to set them all up")
    p.add_argument("--hold", type=float, default=100, help="seconds to hold them at most")
    args = p.parse_args()

    extra = "".join(f"{h}\r\n" for h in args.header)
    request = (
        f"GET {args.path} HTTP/1.1\r\nHost: 127.0.0.1:{args.port}\r\n{extra}\r\n"
    ).encode("latin-1")
    gate = asyncio.Semaphore(args.parallel)
    held = []
    started = time.monotonic()
    tasks = [asyncio.ensure_future(open_one(args, request, gate, held)) for _ in range(args.count)]
    done, pending = await asyncio.wait(tasks, timeout=args.timeout)
    for t in pending:
        t.cancel()
    errors = {}
    for t in done:
        e = t.exception()
        if e is not None:
            msg = f"{type(e).__name__}: {str(e)[:80]}"
            errors[msg] = errors.get(msg, 0) + 1
    failed = args.count - len(held)
    for msg, n in sorted(errors.items(), key=lambda kv: -kv[1])[:5]:
        print(f"  {n} x {msg}", file=sys.stderr)
    if pending:
        print(f"  {len(pending)} not set up within {args.timeout}s", file=sys.stderr)
    print(f"ready {len(held)} {failed} {time.monotonic() - started:.1f}", flush=True)

    # Hold them until the caller, done measuring, sends SIGTERM, or --hold passes.
    await asyncio.sleep(args.hold)
    for _, w in held:
        w.close()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
