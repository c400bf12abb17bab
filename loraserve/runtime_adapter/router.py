"""A LoRA-aware HTTP router in front of a vLLM fleet.

Each OpenAI request names its adapter in ``model``; the router sends it to a worker that has
the adapter, chosen from the routing table's weights and the workers' outstanding requests
(two candidates drawn by weight, the one with fewer requests in flight wins: under light
load traffic splits as the plan says, under uneven load it leans to the idle replica). The
response is streamed through as it comes. Workers that fail their health check or refuse a
connection get no request while a replica marked up is left (when none is, the marked-down
ones are tried: a mark is only as fresh as the last check); a request whose worker no longer has the
adapter (unloaded a moment ago) or cannot be reached is tried on another replica before any
byte goes back to the client.

The routing table is a plan file (see :mod:`loraserve.runtime_adapter.routes`), re-read when
it changes (polled), on ``SIGHUP`` or on ``POST /loraserve/reload``; the new table replaces
the old one in a single assignment, so a request in flight keeps the worker it got and none
is dropped. ``GET /loraserve/state`` reports the table's version and the requests in flight
per adapter and worker, which ``loraserve apply`` reads to know when an old replica is idle.
``GET /metrics`` exposes per-adapter request counts and latencies for drift detection, and
the token counts the answers report (the ``usage`` of every non-streamed completion, and of a
streamed one whose client asked for it with ``stream_options.include_usage``), read from the
bytes as they pass; the router never changes a request to get them.

The server side is the standard library's asyncio streams with ``h11`` (the HTTP/1.1
protocol engine httpx itself is built on) doing the parsing; the client side is httpx.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import h11
import httpx
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from loraserve.models import ConfigError
from loraserve.runtime_adapter.inventory import Inventory
from loraserve.runtime_adapter.routes import RoutingTable, read_table

logger = logging.getLogger(__name__)

#: Largest request body accepted (bytes).
MAX_BODY = 32 * 2**20

#: Headers that belong to one connection and are not forwarded.
_HOP_BY_HOP = frozenset({
    b"connection", b"keep-alive", b"proxy-authenticate", b"proxy-authorization", b"te",
    b"trailer", b"transfer-encoding", b"upgrade", b"host", b"content-length", b"authorization",
})
_RESPONSE_DROP = frozenset({b"connection", b"keep-alive", b"transfer-encoding", b"date",
                            b"server", b"trailer", b"upgrade"})

#: Latency buckets (seconds) for the router's histograms.
_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


class _Metrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter("loraserve_router_requests", "Requests proxied, by adapter "
                                "(the request's model), worker and HTTP status",
                                ["adapter", "worker", "status"], registry=registry)
        self.latency = Histogram("loraserve_router_request_seconds", "Time from a request's "
                                 "arrival to the end of its response, by adapter",
                                 ["adapter"], buckets=_BUCKETS, registry=registry)
        self.first_byte = Histogram("loraserve_router_first_byte_seconds", "Time from a "
                                    "request's arrival to the first byte of its response "
                                    "(TTFT for streamed completions), by adapter",
                                    ["adapter"], buckets=_BUCKETS, registry=registry)
        self.inflight = Gauge("loraserve_router_inflight", "Requests in flight, by worker",
                              ["worker"], registry=registry)
        self.retries = Counter("loraserve_router_retries", "Requests tried again on another "
                               "replica, by reason", ["reason"], registry=registry)
        self.rejected = Counter("loraserve_router_rejected", "Requests answered by the router "
                                "itself with an error, by reason", ["reason"],
                                registry=registry)
        self.healthy = Gauge("loraserve_router_worker_healthy", "1 while a worker passes its "
                             "health check", ["worker"], registry=registry)
        self.reloads = Counter("loraserve_router_table_reloads", "Routing tables loaded",
                               registry=registry)
        self.usage_requests = Counter("loraserve_router_usage_requests", "Answered requests "
                                      "whose response reported its token usage, by adapter",
                                      ["adapter"], registry=registry)
        self.prompt_tokens = Counter("loraserve_router_prompt_tokens", "Prompt tokens of the "
                                     "requests counted in loraserve_router_usage_requests",
                                     ["adapter"], registry=registry)
        self.completion_tokens = Counter("loraserve_router_completion_tokens", "Generated "
                                         "tokens of the requests counted in "
                                         "loraserve_router_usage_requests", ["adapter"],
                                         registry=registry)


class UsageReader:
    """The token usage an OpenAI response reports, read from its bytes as they pass.

    A JSON answer carries ``usage`` at its end; a server-sent event stream carries it in an
    event of its own when the client asked for ``stream_options.include_usage`` (and in every
    event with ``continuous_usage_stats``: the last one counts). Anything else (no usage, a
    body too large to keep, bytes that do not parse) yields None and counts nothing.

    Parameters
    ----------
    streamed : bool
        Whether the body is an event stream (``text/event-stream``).
    """

    #: Largest JSON body kept to read its usage, and longest event line.
    LIMIT = 1 << 20

    def __init__(self, streamed: bool) -> None:
        self.streamed = streamed
        self._buffer = bytearray()
        self._usage: dict[str, Any] | None = None
        self._overflow = False

    def feed(self, chunk: bytes) -> None:
        """Read the next bytes of the body."""
        if self._overflow:
            return
        self._buffer += chunk
        if self.streamed:
            *lines, rest = bytes(self._buffer).split(b"\n")
            self._buffer = bytearray(rest)
            for line in lines:
                self._event_line(line)
        if len(self._buffer) > self.LIMIT:
            self._overflow = True
            self._buffer = bytearray()

    def _event_line(self, line: bytes) -> None:
        # Parse only the events that can carry usage: the others need no JSON decoding.
        if not line.startswith(b"data:") or b'"usage"' not in line:
            return
        try:
            event = json.loads(line[5:])
        except ValueError:
            return
        if isinstance(event, dict) and isinstance(event.get("usage"), dict):
            self._usage = event["usage"]

    def usage(self) -> tuple[int, int] | None:
        """``(prompt_tokens, completion_tokens)`` of the whole body, or None."""
        if self._overflow:
            return None
        if self.streamed:
            self._event_line(bytes(self._buffer))
            usage = self._usage
        else:
            try:
                body = json.loads(bytes(self._buffer))
            except ValueError:
                return None
            usage = body.get("usage") if isinstance(body, dict) else None
        if not isinstance(usage, dict):
            return None
        prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
        if not isinstance(prompt, int) or not isinstance(completion, int):
            return None
        return prompt, completion


class _ReplyError(Exception):
    """An error answer the router writes itself (OpenAI error format)."""

    def __init__(self, status: int, message: str, kind: str) -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind


class Router:
    """The router: one routing table, the inventory's workers, an HTTP server.

    Parameters
    ----------
    table_path : Path
        The plan file to route by (re-read when it changes).
    inventory : Inventory
        Worker URLs and API keys.
    seed : int, optional
        Seed of the replica choice (for reproducible tests).
    health_interval_s : float
        Seconds between health checks of each worker.
    reload_interval_s : float
        Seconds between checks of the table file for changes.
    attempts : int
        Replicas tried for one request.
    registry : CollectorRegistry, optional
        Where the metrics live (a fresh one by default).
    """

    def __init__(self, table_path: str | Path, inventory: Inventory, *, seed: int | None = None,
                 health_interval_s: float = 1.0, reload_interval_s: float = 0.2,
                 attempts: int = 3, registry: CollectorRegistry | None = None) -> None:
        self.table_path = Path(table_path)
        self.inventory = inventory
        self.workers = {w.gpu_id: w for w in inventory.workers}
        self.keys = {w.gpu_id: w.api_key() for w in inventory.workers}
        self.health_interval_s = health_interval_s
        self.reload_interval_s = reload_interval_s
        self.attempts = attempts
        self.random = random.Random(seed)
        self.registry = registry or CollectorRegistry()
        self.metrics = _Metrics(self.registry)
        if self.table_path.exists():
            self.table = read_table(self.table_path)
            self.metrics.reloads.inc()
        else:
            # Before the first apply: route nothing until the file appears.
            logger.warning("%s does not exist yet; routing nothing until it does",
                           self.table_path)
            self.table = RoutingTable(version="none")
        self._stamp = self._file_stamp()
        self.healthy: dict[str, bool] = {}
        self.base_models: set[str] = {self.table.base_model} - {""}
        self.outstanding: dict[str, int] = defaultdict(int)
        self.inflight: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        timeouts = inventory.timeouts
        self.http = httpx.AsyncClient(
            timeout=httpx.Timeout(connect=timeouts.connect_s, read=max(timeouts.read_s, 600.0),
                                  write=timeouts.read_s, pool=timeouts.read_s),
            limits=httpx.Limits(max_connections=1024, max_keepalive_connections=256))
        self._server: asyncio.Server | None = None
        self._tasks: list[asyncio.Task[None]] = []

    # ---- the routing table ---------------------------------------------------------------

    def _file_stamp(self) -> tuple[int, int, int] | None:
        try:
            info = self.table_path.stat()
        except OSError:
            return None
        return (info.st_mtime_ns, info.st_size, info.st_ino)

    def reload(self) -> bool:
        """Re-read the table file; keep the current table when the file is not valid."""
        self._stamp = self._file_stamp()
        try:
            table = read_table(self.table_path)
        except ConfigError as exc:
            logger.warning("keeping the routing table %s: %s", self.table.version, exc)
            return False
        if table.version != self.table.version:
            unknown = sorted({g for split in table.routes.values() for g in split}
                             - set(self.workers))
            if unknown:
                logger.warning("routing table names workers the inventory lacks: %s",
                               ", ".join(unknown))
            self.table = table  # one assignment: requests in flight keep their worker
            self.base_models.add(table.base_model)
            self.base_models.discard("")
            self.metrics.reloads.inc()
            logger.info("routing table %s loaded (%d adapters)", table.version,
                        len(table.routes))
        return True

    async def _watch_table(self) -> None:
        while True:
            await asyncio.sleep(self.reload_interval_s)
            if self._file_stamp() != self._stamp:
                self.reload()

    async def _watch_health(self) -> None:
        while True:
            await asyncio.gather(*(self._check(g) for g in self.workers))
            await asyncio.sleep(self.health_interval_s)

    async def _check(self, gpu_id: str) -> None:
        worker = self.workers[gpu_id]
        try:
            response = await self.http.get(f"{worker.url}/health", timeout=2.0)
            ok = response.status_code == 200
            if ok and not self.healthy.get(gpu_id):
                await self._learn_base_model(gpu_id)
        except httpx.HTTPError:
            ok = False
        if ok != self.healthy.get(gpu_id):
            logger.info("worker %s is %s", gpu_id, "healthy" if ok else "unhealthy")
        self.healthy[gpu_id] = ok
        self.metrics.healthy.labels(gpu_id).set(1 if ok else 0)

    async def _learn_base_model(self, gpu_id: str) -> None:
        # Requests may name the base model as the workers serve it (often a path).
        headers = self._auth(gpu_id)
        response = await self.http.get(f"{self.workers[gpu_id].url}/v1/models", headers=headers,
                                       timeout=5.0)
        if response.status_code == 200:
            for card in response.json().get("data", []):
                if not card.get("parent"):
                    self.base_models.add(str(card["id"]))

    def _auth(self, gpu_id: str) -> dict[str, str]:
        key = self.keys.get(gpu_id)
        return {"Authorization": f"Bearer {key}"} if key else {}

    # ---- choosing a worker ---------------------------------------------------------------

    def choose(self, model: str, exclude: set[str] | frozenset[str] = frozenset()) -> str:
        """The worker for a request for ``model``.

        Raises
        ------
        _ReplyError
            404 when the table does not route ``model``; 503 when every replica has been
            tried. Replicas marked down are tried only when no replica marked up is left.
        """
        table: RoutingTable = self.table
        if model in table.routes:
            weights = table.routes[model]
        elif model in self.base_models:
            weights = dict.fromkeys(table.workers, 1.0)
        else:
            raise _ReplyError(404, f"The model `{model}` does not exist.", "NotFoundError")
        routed = [(g, w) for g, w in weights.items() if g in self.workers and g not in exclude]
        candidates = [(g, w) for g, w in routed if self.healthy.get(g, True)]
        if not candidates:
            # Every replica left is marked down, but a mark is as old as the last check: a
            # worker that has just restarted answers before the next one. Try them rather
            # than fail; one that really is down is marked again and the next is tried.
            candidates = routed
        if not candidates:
            raise _ReplyError(503, f"no healthy replica serves `{model}` right now",
                         "ServiceUnavailableError")
        if len(candidates) == 1:
            return candidates[0][0]
        first = self.random.choices(candidates, weights=[w for _, w in candidates])[0]
        rest = [c for c in candidates if c[0] != first[0]]
        second = self.random.choices(rest, weights=[w for _, w in rest])[0]
        return min(first[0], second[0], key=lambda g: self.outstanding[g])

    # ---- serving -----------------------------------------------------------------------------

    async def start(self, host: str, port: int) -> tuple[str, int]:
        """Start serving; return the bound address (port 0 picks a free one)."""
        self._server = await asyncio.start_server(self._connection, host, port,
                                                  limit=2**20, backlog=1024)
        await asyncio.gather(*(self._check(g) for g in self.workers))
        self._tasks = [asyncio.create_task(self._watch_table()),
                       asyncio.create_task(self._watch_health())]
        bound = self._server.sockets[0].getsockname()
        logger.info("router listening on %s:%d", bound[0], bound[1])
        return str(bound[0]), int(bound[1])

    async def serve_forever(self) -> None:
        """Serve until cancelled."""
        if self._server is None:
            raise RuntimeError("call start() first")
        await self._server.serve_forever()

    async def stop(self) -> None:
        """Stop accepting, cancel the background tasks and close the client."""
        for task in self._tasks:
            task.cancel()
        if self._server is not None:
            self._server.close()
        await self.http.aclose()

    async def _connection(self, reader: asyncio.StreamReader,
                          writer: asyncio.StreamWriter) -> None:
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                event = await self._next(conn, reader)
                if not isinstance(event, h11.Request):
                    break
                body = bytearray()
                while True:
                    part = await self._next(conn, reader)
                    if isinstance(part, h11.Data):
                        body += part.data
                        if len(body) > MAX_BODY:
                            raise _ReplyError(413, "request body too large", "InvalidRequestError")
                    elif isinstance(part, h11.EndOfMessage):
                        break
                    else:
                        return
                await self._dispatch(conn, writer, event, bytes(body))
                if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
                    break
                try:
                    conn.start_next_cycle()
                except h11.LocalProtocolError:
                    break
        except _ReplyError as reply:
            if conn.our_state is h11.SEND_RESPONSE:
                await self._send_json(conn, writer, reply.status, _error(reply))
        except (h11.ProtocolError, ConnectionError, asyncio.IncompleteReadError,
                httpx.HTTPError) as exc:
            # The client went away, or the worker failed mid-response: nothing to answer.
            logger.info("connection closed: %s", type(exc).__name__)
        finally:
            writer.close()

    @staticmethod
    async def _next(conn: h11.Connection, reader: asyncio.StreamReader) -> Any:
        while True:
            event = conn.next_event()
            if event is not h11.NEED_DATA:
                return event
            conn.receive_data(await reader.read(65536))

    async def _send_json(self, conn: h11.Connection, writer: asyncio.StreamWriter, status: int,
                         payload: Any, content_type: bytes = b"application/json") -> None:
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        writer.write(conn.send(h11.Response(status_code=status, headers=[
            (b"content-type", content_type), (b"content-length", str(len(data)).encode())])))
        writer.write(conn.send(h11.Data(data=data)))
        writer.write(conn.send(h11.EndOfMessage()))
        await writer.drain()

    async def _dispatch(self, conn: h11.Connection, writer: asyncio.StreamWriter,
                        request: h11.Request, body: bytes) -> None:
        method = request.method.decode()
        path = request.target.decode()
        route = path.split("?", 1)[0]
        if method == "GET" and route == "/health":
            await self._send_json(conn, writer, 200, {"status": "ok", "version":
                                                      self.table.version})
        elif method == "GET" and route == "/metrics":
            await self._send_json(conn, writer, 200, generate_latest(self.registry),
                                  CONTENT_TYPE_LATEST.encode())
        elif route == "/loraserve/state" and method == "GET":
            await self._send_json(conn, writer, 200, self.state())
        elif route == "/loraserve/reload" and method == "POST":
            self.reload()
            await self._send_json(conn, writer, 200, self.state())
        elif method == "GET" and route == "/v1/models":
            await self._send_json(conn, writer, 200, self.model_list())
        elif method == "POST" and route.startswith("/v1/"):
            await self._proxy(conn, writer, request, path, body)
        else:
            self.metrics.rejected.labels("unknown_path").inc()
            await self._send_json(conn, writer, 404, _error(_ReplyError(
                404, f"{method} {route} is not served by the router", "NotFoundError")))

    def state(self) -> dict[str, Any]:
        """The table's version, requests in flight per adapter and worker, worker health."""
        return {
            "version": self.table.version,
            "inflight": {a: {g: n for g, n in per.items() if n}
                         for a, per in self.inflight.items() if any(per.values())},
            "healthy": dict(self.healthy),
        }

    def model_list(self) -> dict[str, Any]:
        """``/v1/models`` in OpenAI's format: the base model and every routed adapter."""
        created = int(time.time())
        data = [{"id": self.table.base_model, "object": "model", "created": created,
                 "owned_by": "loraserve"}]
        data += [{"id": a, "object": "model", "created": created, "owned_by": "loraserve",
                  "parent": self.table.base_model} for a in sorted(self.table.routes)]
        return {"object": "list", "data": data}

    async def _proxy(self, conn: h11.Connection, writer: asyncio.StreamWriter,
                     request: h11.Request, path: str, body: bytes) -> None:
        arrived = time.perf_counter()
        try:
            model = json.loads(body).get("model")
        except (ValueError, AttributeError):
            model = None
        if not isinstance(model, str):
            self.metrics.rejected.labels("no_model").inc()
            await self._send_json(conn, writer, 400, _error(_ReplyError(
                400, "the request body must be JSON with a model field", "BadRequestError")))
            return
        label = model if model in self.table.routes else (
            "base" if model in self.base_models else "unknown")
        headers = [(k, v) for k, v in request.headers if k.lower() not in _HOP_BY_HOP]
        tried: set[str] = set()
        while True:
            try:
                gpu_id = self.choose(model, tried)
            except _ReplyError as reply:
                self.metrics.rejected.labels("unrouted" if reply.status == 404
                                             else "no_replica").inc()
                await self._send_json(conn, writer, reply.status, _error(reply))
                return
            tried.add(gpu_id)
            last_try = len(tried) >= self.attempts
            outcome = await self._forward(conn, writer, gpu_id, model, label, path, headers,
                                          body, arrived, last_try)
            if outcome == "done":
                return
            self.metrics.retries.labels(outcome).inc()

    async def _forward(self, conn: h11.Connection, writer: asyncio.StreamWriter, gpu_id: str,
                       model: str, label: str, path: str, headers: list[tuple[bytes, bytes]],
                       body: bytes, arrived: float, last_try: bool) -> str:
        """Send the request to ``gpu_id`` and stream the answer back.

        Returns ``"done"``, or the reason to try another replica (nothing was sent back yet).
        """
        worker = self.workers[gpu_id]
        upstream = self.http.build_request(
            "POST", f"{worker.url}{path}", content=body,
            headers=[(k.decode(), v.decode()) for k, v in headers]
            + list(self._auth(gpu_id).items()))
        self.outstanding[gpu_id] += 1
        self.inflight[model][gpu_id] += 1
        self.metrics.inflight.labels(gpu_id).inc()
        try:
            try:
                response = await self.http.send(upstream, stream=True)
            except httpx.TransportError as exc:
                logger.warning("worker %s: %s; trying another replica", gpu_id,
                               type(exc).__name__)
                self.healthy[gpu_id] = False
                self.metrics.healthy.labels(gpu_id).set(0)
                if last_try:
                    raise _ReplyError(502, f"worker {gpu_id} is unreachable",
                                 "BadGatewayError") from None
                return "unreachable"
            if not self.healthy.get(gpu_id, True) and response.status_code < 500:
                self.healthy[gpu_id] = True
                self.metrics.healthy.labels(gpu_id).set(1)
            try:
                if response.status_code == 404 and not last_try:
                    content = b"".join([c async for c in response.aiter_raw()])
                    if b"does not exist" in content:
                        # Unloaded between the routing decision and the worker's lookup.
                        return "adapter_gone"
                    return await self._relay(conn, writer, response, gpu_id, label, arrived,
                                             content)
                return await self._relay(conn, writer, response, gpu_id, label, arrived, None)
            finally:
                await response.aclose()
        finally:
            self.outstanding[gpu_id] -= 1
            self.inflight[model][gpu_id] -= 1
            if not self.inflight[model][gpu_id]:
                del self.inflight[model][gpu_id]
                if not self.inflight[model]:
                    del self.inflight[model]
            self.metrics.inflight.labels(gpu_id).dec()

    async def _relay(self, conn: h11.Connection, writer: asyncio.StreamWriter,
                     response: httpx.Response, gpu_id: str, label: str, arrived: float,
                     content: bytes | None) -> str:
        headers = [(k, v) for k, v in response.headers.raw if k.lower() not in _RESPONSE_DROP]
        writer.write(conn.send(h11.Response(status_code=response.status_code, headers=headers)))
        first = True
        chunks = [content] if content is not None else None
        source = _replay(chunks) if chunks is not None else response.aiter_raw()
        # Token usage of answered requests (raw bytes: a compressed body is not read).
        reader = (UsageReader(response.headers.get("content-type", "").startswith(
            "text/event-stream")) if response.status_code == 200
            and "content-encoding" not in response.headers else None)
        async for chunk in source:
            if not chunk:
                continue
            if first:
                self.metrics.first_byte.labels(label).observe(time.perf_counter() - arrived)
                first = False
            if reader is not None:
                reader.feed(chunk)
            writer.write(conn.send(h11.Data(data=chunk)))
            await writer.drain()
        writer.write(conn.send(h11.EndOfMessage()))
        await writer.drain()
        if first:
            self.metrics.first_byte.labels(label).observe(time.perf_counter() - arrived)
        self.metrics.latency.labels(label).observe(time.perf_counter() - arrived)
        self.metrics.requests.labels(label, gpu_id, str(response.status_code)).inc()
        usage = reader.usage() if reader is not None else None
        if usage is not None:
            self.metrics.usage_requests.labels(label).inc()
            self.metrics.prompt_tokens.labels(label).inc(usage[0])
            self.metrics.completion_tokens.labels(label).inc(usage[1])
        return "done"


async def _replay(chunks: list[bytes]) -> Any:
    for chunk in chunks:
        yield chunk


def _error(reply: _ReplyError) -> dict[str, Any]:
    return {"error": {"message": str(reply), "type": reply.kind, "code": reply.status}}
