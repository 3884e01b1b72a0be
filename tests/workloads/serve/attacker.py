"""Unauthenticated clients that hold a server's resources, run as their own process.

    python -m tests.workloads.serve.attacker PORT STALLED_HEADERS STALLED_BODIES OVERSIZED

Opens STALLED_HEADERS connections that send half a request head and stop, STALLED_BODIES
that send complete headers announcing a 1 MiB body and then 1 KiB of it, and keeps
OVERSIZED connections open at all times, each sending a request head far over any header
limit and holding on until the server closes it, then starting again 0.2 s later. Prints `ready` once
the stalled ones are in place, and on stdin's end prints a JSON summary: the answers the
oversized ones got, by status.
"""

from __future__ import annotations

import asyncio
import collections
import json
import sys

HALF_HEAD = b"POST /v2/models/digits/infer HTTP/1.1\r\nHost: test\r\nX-Stalled: "
BODY_HEAD = b"POST /v2/models/digits/infer HTTP/1.1\r\nHost: test\r\nContent-Length: 1048576\r\n\r\n" + b"{" * 1024
OVERSIZED_HEAD = b"GET /v2/health/live HTTP/1.1\r\nHost: test\r\nX-Big: " + b"a" * (128 * 1024)


async def stall(port: int, data: bytes, held: list[asyncio.StreamWriter]) -> None:
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    held.append(writer)


async def oversize(port: int, answers: collections.Counter[str]) -> None:
    while True:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(OVERSIZED_HEAD)
            status_line = await reader.readline()
            answers[status_line.split(b" ")[1].decode() if status_line else "none"] += 1
            while await reader.read(1 << 16):  # connected until the server closes
                pass
        except OSError:
            answers["reset"] += 1
        finally:
            writer.close()
        await asyncio.sleep(0.2)  # clients that come back, not a flood of new connections


async def main(port: int, stalled_headers: int, stalled_bodies: int, oversized: int) -> None:
    held: list[asyncio.StreamWriter] = []
    await asyncio.gather(*(stall(port, HALF_HEAD, held) for _ in range(stalled_headers)))
    await asyncio.gather(*(stall(port, BODY_HEAD, held) for _ in range(stalled_bodies)))
    answers: collections.Counter[str] = collections.Counter()
    floods = [asyncio.ensure_future(oversize(port, answers)) for _ in range(oversized)]
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    for flood in floods:
        flood.cancel()
    await asyncio.gather(*floods, return_exceptions=True)
    print(json.dumps({"answers": dict(answers), "held": len(held)}), flush=True)


if __name__ == "__main__":
    asyncio.run(main(*(int(argument) for argument in sys.argv[1:5])))
