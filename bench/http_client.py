"""The gateway's HTTP/1.1 client (``llm.providers.h1.Origin``) next to aiohttp, on one load.

Both clients post the same chat-completion body to the mock upstream of ``bench/gateway.py``
(a raw asyncio HTTP/1.1 server in a child process) from one uvloop event loop, ``--calls``
calls per cell at 1 and 32 calls in flight, each answer read whole and decoded as JSON, as
``ChatWire.complete`` does. Cells alternate between the clients (``--repeat`` rounds; the
fastest round of each counts, which filters out other load on a shared machine). Prints the
client process's CPU per call (user + system, the mock excluded) and calls per second.

    .venv/bin/python bench/http_client.py [--calls 20000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import uvloop

import gateway as bench_gateway  # the mock upstream lives there (bench/ is on the path)
from mainsail.llm.providers.h1 import Origin

BODY = json.dumps(bench_gateway.request_body("json"), separators=(",", ":")).encode()
HEADERS = {"Authorization": "Bearer bench", "Content-Type": "application/json"}


async def _aiohttp_calls(url: str, calls: int, concurrency: int) -> tuple[float, float]:
    connector = aiohttp.TCPConnector(limit=100, limit_per_host=0, keepalive_timeout=4.0)
    timeout = aiohttp.ClientTimeout(total=None, connect=30, sock_connect=5, sock_read=30)
    async with aiohttp.ClientSession(connector=connector, headers=HEADERS) as session:

        async def one() -> None:
            async with session.post(url, data=BODY, timeout=timeout) as response:
                json.loads(await response.read())

        return await _timed(one, calls, concurrency)


async def _h1_calls(url: str, calls: int, concurrency: int) -> tuple[float, float]:
    origin = Origin(url, headers=HEADERS, max_connections=100, keepalive_s=4.0)
    try:

        async def one() -> None:
            _, raw = await origin.post(BODY, connect_s=5, read_s=30)
            json.loads(raw)

        return await _timed(one, calls, concurrency)
    finally:
        await origin.aclose()


async def _timed(
    one: Callable[[], Awaitable[None]], calls: int, concurrency: int
) -> tuple[float, float]:
    """(CPU µs per call, calls per second) after a warm-up of one call per task."""

    async def worker(count: int) -> None:
        for _ in range(count):
            await one()

    await asyncio.gather(*(worker(1) for _ in range(concurrency)))
    per_task = max(1, calls // concurrency)
    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker(per_task) for _ in range(concurrency)))
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    done = per_task * concurrency
    return cpu / done * 1e6, done / wall


CLIENTS = {"aiohttp": _aiohttp_calls, "h1.Origin": _h1_calls}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="http-client-bench-"))
    mock, port = bench_gateway.start_mock(work)
    url = f"http://{bench_gateway.HOST}:{port}/v1/chat/completions"
    best: dict[tuple[str, int], tuple[float, float]] = {}
    try:
        for _ in range(args.repeat):
            for concurrency in (1, 32):
                for name, calls in CLIENTS.items():
                    cpu_us, rate = uvloop.run(calls(url, args.calls, concurrency))
                    key = (name, concurrency)
                    if key not in best or cpu_us < best[key][0]:
                        best[key] = (cpu_us, rate)
    finally:
        mock.stop()
    print(f"\nHTTP client, {args.calls:,} calls per cell, fastest of {args.repeat}\n")
    print("| client | in flight | CPU µs per call | calls/s |")
    print("|---|---:|---:|---:|")
    for (name, concurrency), (cpu_us, rate) in sorted(best.items(), key=lambda kv: kv[0][1]):
        print(f"| {name} | {concurrency} | {cpu_us:.1f} | {rate:,.0f} |")
    for concurrency in (1, 32):
        ratio = best[("aiohttp", concurrency)][0] / best[("h1.Origin", concurrency)][0]
        print(f"\nat {concurrency} in flight: aiohttp uses {ratio:.1f}x the CPU per call")


if __name__ == "__main__":
    main()
