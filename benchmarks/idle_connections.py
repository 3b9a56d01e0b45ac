"""Hold N idle TCP connections to a server, reopening each one the server closes: what an
attacker (or a broken client pool) does to a public endpoint. Used by `benchmarks/serving.py`'s
hostile section, one process per 10,000 connections (a process cannot hold 20,000 sockets
under a 20,000 descriptor limit); imports nothing heavy so it starts in a moment.

    python benchmarks/idle_connections.py --port 8080 --connections 10000 --seconds 60

Stops when its stdin closes (or after ``--seconds``) and prints a JSON summary: opened (in all,
reopenings included), max_open (at once), closed_by_server, connect errors.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import resource
import sys
from collections import Counter


async def hold(port: int, n: int, seconds: float) -> dict:
    stats: Counter[str] = Counter()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.call_later(seconds, stop.set)
    stdin_closed = loop.run_in_executor(None, sys.stdin.read)
    stdin_closed.add_done_callback(lambda _: loop.call_soon_threadsafe(stop.set))

    async def one(k: int) -> None:
        await asyncio.sleep(k * 0.001)  # ramp up: about 1,000 new connections a second
        while not stop.is_set():
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError as err:
                stats[f"connect_{type(err).__name__}"] += 1
                await asyncio.sleep(0.5)
                continue
            stats["opened"] += 1
            stats["open"] += 1
            stats["max_open"] = max(stats["max_open"], stats["open"])
            read = asyncio.ensure_future(reader.read(1))
            stopping = asyncio.ensure_future(stop.wait())
            await asyncio.wait([read, stopping], return_when=asyncio.FIRST_COMPLETED)
            stopping.cancel()
            if read.done() and (read.exception() is not None or not read.result()):
                stats["closed_by_server"] += 1
            read.cancel()
            stats["open"] -= 1
            writer.close()
            await asyncio.sleep(random.uniform(0, 2))  # reconnect spread out: a steady flood

    await asyncio.gather(*(one(k) for k in range(n)))
    return {"connections": n, **{k: v for k, v in stats.items() if k != "open"}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--port", type=int, required=True, help="server port on 127.0.0.1")
    parser.add_argument("--connections", type=int, default=10_000, help="held at once")
    parser.add_argument("--seconds", type=float, default=60, help="how long to keep at it")
    args = parser.parse_args()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    print(json.dumps(asyncio.run(hold(args.port, args.connections, args.seconds))), flush=True)


if __name__ == "__main__":
    main()
