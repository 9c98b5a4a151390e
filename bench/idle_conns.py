#!/usr/bin/env python3
"""Opens N keep-alive connections to 127.0.0.1:PORT and leaves them idle.

On each connection one complete GET is sent and its whole response read, so every
connection ends up established and idle: an HTTP/1.1 keep-alive connection, or with
--h2 an HTTP/2 connection whose one stream is closed (what a server holds between a
client's requests). --tls speaks TLS 1.3 first (ALPN h2 with --h2, http/1.1
without; the certificate is not checked: this is a loopback benchmark against our
own self-signed one). Then one line is printed,

    ready OPEN FAILED SECONDS

and the connections are held until the process is signalled (SIGTERM: the kernel
closes them) or --hold seconds pass. HTTP/2 connections keep answering the server's
PINGs and SETTINGS while held, so a server's keep-alive check does not close them.
Stdlib only (a minimal HTTP/2 framer, RFC 9113, with HPACK literals, RFC 7541);
setting up is bounded by --timeout.

    python3 bench/idle_conns.py --port 8080 --count 10000 --path /api/ \
        --header 'Authorization: Bearer ...' > out.txt &
    python3 bench/idle_conns.py --port 8443 --tls --h2 --count 10000 --path /api/ ...
"""

import argparse
import asyncio
import ssl
import struct
import sys
import time

H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, SETTINGS, PING, GOAWAY = 0x0, 0x1, 0x4, 0x6, 0x7
END_STREAM, ACK, END_HEADERS = 0x1, 0x1, 0x4


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


def frame(kind, flags, stream, payload=b""):
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload


def hpack_int(value, prefix_bits, first=0):
    """RFC 7541 section 5.1."""
    top = (1 << prefix_bits) - 1
    if value < top:
        return bytes([first | value])
    out = [first | top]
    value -= top
    while value >= 128:
        out.append((value & 127) | 128)
        value >>= 7
    out.append(value)
    return bytes(out)


def hpack_literal(name, value):
    """A field without indexing, its name by static-table index or literal (RFC 7541 6.2.2)."""
    static = {":authority": 1, ":path": 4, "authorization": 23}
    v = value.encode("latin-1")
    if name in static:
        out = hpack_int(static[name], 4)
    else:
        n = name.lower().encode("latin-1")
        out = b"\x00" + hpack_int(len(n), 7) + n
    return out + hpack_int(len(v), 7) + v


def h2_request(args, headers):
    block = b"\x82" + (b"\x87" if args.tls else b"\x86")  # :method GET, :scheme
    block += hpack_literal(":authority", f"127.0.0.1:{args.port}")
    block += hpack_literal(":path", args.path)
    for k, v in headers:
        block += hpack_literal(k, v)
    return H2_PREFACE + frame(SETTINGS, 0, 0) + frame(HEADERS, END_STREAM | END_HEADERS, 1, block)


async def read_frame(reader):
    head = await reader.readexactly(9)
    length = int.from_bytes(head[:3], "big")
    kind, flags = head[3], head[4]
    stream = int.from_bytes(head[5:9], "big") & 0x7FFFFFFF
    return kind, flags, stream, await reader.readexactly(length)


def answer(writer, kind, flags, payload):
    """Acknowledges the server's SETTINGS and PINGs (RFC 9113 sections 6.5.3, 6.7)."""
    if kind == SETTINGS and not flags & ACK:
        writer.write(frame(SETTINGS, ACK, 0))
    elif kind == PING and not flags & ACK:
        writer.write(frame(PING, ACK, 0, payload))
    elif kind == GOAWAY:
        raise RuntimeError("GOAWAY")


async def h2_exchange(reader, writer):
    """Reads frames until stream 1 ends; returns (status, True)."""
    status = None
    while True:
        kind, flags, stream, payload = await read_frame(reader)
        answer(writer, kind, flags, payload)
        if stream == 1 and kind == HEADERS and status is None:
            # Both servers send :status 200 as the static table's entry 8.
            status = 200 if payload[:1] == b"\x88" else -1
        if stream == 1 and kind in (HEADERS, DATA) and flags & END_STREAM:
            return status, True


async def h2_keep_answering(reader, writer):
    try:
        while True:
            kind, flags, _, payload = await read_frame(reader)
            answer(writer, kind, flags, payload)
    except (asyncio.IncompleteReadError, ConnectionError, RuntimeError):
        pass


def tls_context(h2):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.set_alpn_protocols(["h2"] if h2 else ["http/1.1"])
    return ctx


async def open_one(args, request, ctx, gate, held):
    async with gate:
        reader, writer = await asyncio.open_connection("127.0.0.1", args.port, ssl=ctx)
        try:
            writer.write(request)
            await writer.drain()
            if args.h2:
                status, keep_alive = await h2_exchange(reader, writer)
            else:
                status, keep_alive = await read_response(reader)
        except BaseException:
            writer.close()
            raise
    if status != 200 or not keep_alive:
        writer.close()
        raise RuntimeError(f"status {status}, keep-alive {keep_alive}")
    if args.h2:
        held.append((asyncio.ensure_future(h2_keep_answering(reader, writer)), writer))
    else:
        held.append((None, writer))


async def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--count", type=int, default=10000)
    p.add_argument("--path", default="/")
    p.add_argument("--header", action="append", default=[])
    p.add_argument("--h2", action="store_true", help="HTTP/2 (prior knowledge, or ALPN h2 with --tls)")
    p.add_argument("--tls", action="store_true", help="TLS 1.3 first")
    p.add_argument("--parallel", type=int, default=200, help="connections being set up at once")
    p.add_argument("--timeout", type=float, default=60, help="seconds to set them all up")
    p.add_argument("--hold", type=float, default=100, help="seconds to hold them at most")
    args = p.parse_args()

    headers = [tuple(s.strip() for s in h.split(":", 1)) for h in args.header]
    if args.h2:
        request = h2_request(args, headers)
    else:
        extra = "".join(f"{k}: {v}\r\n" for k, v in headers)
        request = (
            f"GET {args.path} HTTP/1.1\r\nHost: 127.0.0.1:{args.port}\r\n{extra}\r\n"
        ).encode("latin-1")
    ctx = tls_context(args.h2) if args.tls else None
    gate = asyncio.Semaphore(args.parallel)
    held = []
    started = time.monotonic()
    tasks = [asyncio.ensure_future(open_one(args, request, ctx, gate, held)) for _ in range(args.count)]
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
    for task, w in held:
        if task is not None:
            task.cancel()
        w.close()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
