"""What the router adds to each request, at a given request rate, against stand-in workers.

``python benchmarks/router_load.py [--rates 100 500 2000] [--seconds 10]`` starts, in one
process, two stand-in upstreams (a few lines of asyncio that answer every POST at once with a
small completion: they measure the router, not vLLM) and ``loraserve``'s router in front of
them. A second process sends an open-loop stream of completions at each rate, first straight
to an upstream, then through the router, over keep-alive connections, and reports p50 and p99
of both and the difference (the router's added latency). It also reports the router process's
resident memory before and after, as a leak check. Both processes share this machine's cores,
so at high rates the figures include the load generator's own queueing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ADAPTERS = [f"bench-{i}" for i in range(10)]
ANSWER = json.dumps({"id": "cmpl-1", "object": "text_completion", "model": "bench",
                     "choices": [{"index": 0, "text": "ok", "finish_reason": "stop"}],
                     "usage": {"prompt_tokens": 8, "completion_tokens": 1,
                               "total_tokens": 9}}).encode()
MODELS = json.dumps({"object": "list", "data": [{"id": "bench-base", "object": "model"}]}).encode()


async def _stand_in(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A keep-alive HTTP/1.1 server that answers every request at once."""
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            if length:
                await reader.readexactly(length)
            body = MODELS if b" /v1/models " in head.split(b"\r\n", 1)[0] else ANSWER
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                         b"content-length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
        pass  # the client left, or the benchmark is over
    finally:
        writer.close()


def _rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _serve(ready: mp.Queue, stop: mp.Event, folder: str) -> None:  # type: ignore[type-arg]
    import logging

    from loraserve.models import GPUPlacement, PlacementPlan
    from loraserve.runtime_adapter.inventory import inventory_from_mapping
    from loraserve.runtime_adapter.router import Router

    logging.disable(logging.WARNING)

    async def main() -> None:
        upstreams = [await asyncio.start_server(_stand_in, "127.0.0.1", 0, backlog=1024)
                     for _ in range(2)]
        ports = [s.sockets[0].getsockname()[1] for s in upstreams]
        root = Path(folder)
        (root / "adapters").mkdir(exist_ok=True)
        workers = [{"gpu_id": f"gpu-{i}", "url": f"http://127.0.0.1:{port}", "tier": 8}
                   for i, port in enumerate(ports)]
        inventory = inventory_from_mapping({"adapter_roots": ["adapters"], "workers": workers},
                                           root)
        plan = PlacementPlan(base_model="bench-base", gpus=[
            GPUPlacement(gpu_id=f"gpu-{i}", gpu_type="cpu", tier=8, adapters=ADAPTERS)
            for i in range(2)], routes={a: {"gpu-0": 0.5, "gpu-1": 0.5} for a in ADAPTERS})
        routes = root / "routes.yaml"
        routes.write_text(plan.to_yaml())
        router = Router(routes, inventory, seed=0)
        _, port = await router.start("127.0.0.1", 0)
        serving = asyncio.create_task(router.serve_forever())
        ready.put((port, ports[0], _rss_mib()))
        while not stop.is_set():
            await asyncio.sleep(0.2)
        ready.put(_rss_mib())
        serving.cancel()
        await router.stop()
        for upstream in upstreams:
            upstream.close()

    asyncio.run(main())


async def _load(port: int, rate: float, seconds: float, connections: int) -> list[float]:
    """Latencies (ms) of an open-loop stream at ``rate`` spread over ``connections``."""
    latencies: list[float] = []
    start = time.perf_counter() + 0.2
    total = int(rate * seconds)

    async def connection(index: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            for n in range(index, total, connections):
                due = start + n / rate
                delay = due - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                body = json.dumps({"model": ADAPTERS[n % len(ADAPTERS)], "prompt": "hi",
                                   "max_tokens": 1}).encode()
                writer.write(b"POST /v1/completions HTTP/1.1\r\nhost: bench\r\n"
                             b"content-type: application/json\r\ncontent-length: "
                             + str(len(body)).encode() + b"\r\n\r\n" + body)
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length:"))
                await reader.readexactly(length)
                # From when it was due, so that a late send (a queue) counts too.
                latencies.append(1000 * (time.perf_counter() - due))
        finally:
            writer.close()

    await asyncio.gather(*(connection(i) for i in range(connections)))
    return latencies


def _quantile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=1000)[int(q * 1000) - 1] if len(values) > 1 else 0.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", type=float, nargs="+", default=[100.0, 500.0, 2000.0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--connections", type=int, default=64)
    args = parser.parse_args()
    ctx = mp.get_context("spawn")
    ready: mp.Queue = ctx.Queue()  # type: ignore[type-arg]
    stop = ctx.Event()
    with tempfile.TemporaryDirectory() as folder:
        server = ctx.Process(target=_serve, args=(ready, stop, folder))
        server.start()
        router_port, upstream_port, rss_before = ready.get(timeout=60)
        print(f"{'req/s':>7} {'requests':>9} {'direct p50':>11} {'p99':>7} {'router p50':>11} "
              f"{'p99':>7} {'added p50':>10} {'p99':>7}  (ms; cpus {os.cpu_count()})")
        sent = 0
        for rate in args.rates:
            connections = max(1, min(args.connections, int(rate // 10) or 1))
            direct = asyncio.run(_load(upstream_port, rate, args.seconds, connections))
            routed = asyncio.run(_load(router_port, rate, args.seconds, connections))
            sent += len(routed)
            d50, d99 = _quantile(direct, 0.5), _quantile(direct, 0.99)
            r50, r99 = _quantile(routed, 0.5), _quantile(routed, 0.99)
            print(f"{rate:7.0f} {len(routed):9d} {d50:11.2f} {d99:7.2f} {r50:11.2f} "
                  f"{r99:7.2f} {r50 - d50:10.2f} {r99 - d99:7.2f}")
        stop.set()
        rss_after = ready.get(timeout=60)
        server.join(timeout=30)
        print(f"router process memory: {rss_before:.0f} MiB before, {rss_after:.0f} MiB after "
              f"{sent} routed requests")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
