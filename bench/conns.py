#!/usr/bin/env python3
"""Opens N keep-alive HTTP/1.1 connections and holds them open (for bench/run.sh).

usage: conns.py HOST PORT N PATH

Each connection sends one GET for PATH and reads the response, so the server has served a
request on it and keeps it open as an idle keep-alive connection. Connections are opened in
batches (so the proxy's upstream pool stays small). Prints "OPEN <count>" once all are open,
then holds them until stdin reaches end of file, closes them and exits.
"""

import asyncio
import sys

BATCH = 250


async def one(host, port, path):
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode())
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    if length:
        await reader.readexactly(length)
    return writer


async def main():
    host, port, count, path = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    writers, failed = [], 0
    for start in range(0, count, BATCH):
        batch = [one(host, port, path) for _ in range(min(BATCH, count - start))]
        for result in await asyncio.gather(*batch, return_exceptions=True):
            if isinstance(result, BaseException):
                failed += 1
            else:
                writers.append(result)
    print(f"OPEN {len(writers)} failed {failed}", flush=True)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.read)
    for writer in writers:
        writer.close()


if __name__ == "__main__":
    asyncio.run(main())
