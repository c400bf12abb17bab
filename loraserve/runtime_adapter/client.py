"""An async client for one vLLM OpenAI-compatible worker.

One place maps HTTP outcomes to meaning: transport errors and 5xx answers are retried with
exponential backoff (a rank above ``--max-lora-rank``, which vLLM answers with 500, is not:
retrying cannot help); 401/403 is a wrong API key; "already loaded" on load and "not found"
on unload are the idempotent successes they are. Every request has explicit timeouts.
"""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal

import httpx

from loraserve.runtime_adapter.errors import (
    AdapterNotFoundError,
    AuthError,
    RankTooHighError,
    RuntimeUpdatesDisabledError,
    UnreachableError,
    WorkerError,
)
from loraserve.runtime_adapter.metrics import WorkerMetrics, parse_metrics

logger = logging.getLogger(__name__)

#: The name the capability check asks the worker to unload: no adapter is ever called this.
PROBE_NAME = "loraserve-capability-probe"

_RANK_MESSAGE = re.compile(r"LoRA rank (\d+) is greater than max_lora_rank (\d+)")
_RANK_FALLBACK = re.compile(r"max_lora_rank[= ]+(\d+)")


@dataclass(frozen=True)
class Timeouts:
    """Seconds allowed per request.

    Parameters
    ----------
    connect_s : float
        To open a connection.
    read_s : float
        For an answer to an ordinary request (health, models, metrics, unload).
    load_s : float
        For a ``load_lora_adapter`` answer (the worker reads the weights first).
    """

    connect_s: float = 3.0
    read_s: float = 30.0
    load_s: float = 120.0


@dataclass(frozen=True)
class ModelsInfo:
    """``GET /v1/models``: the base model(s) and the adapters loaded, with their paths."""

    base_models: tuple[str, ...]
    adapters: dict[str, str]


@dataclass(frozen=True)
class LoRALimits:
    """The worker's LoRA settings, where the worker exposes them (``/server_info``)."""

    max_lora_rank: int
    max_loras: int
    max_cpu_loras: int


def _error_text(response: httpx.Response) -> str:
    """The message of a vLLM error answer, else the body's first 200 characters."""
    try:
        body = response.json()
    except ValueError:
        return response.text[:200].strip()
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and "message" in error:
            return str(error["message"])
        if isinstance(error, str):
            return error
        if "message" in body:
            return str(body["message"])
        if "detail" in body:
            return str(body["detail"])
    return str(body)[:200]


def _one_line(text: str) -> str:
    return " ".join(text.split())


class WorkerClient:
    """Talk to one vLLM worker.

    Use as an async context manager (or call :meth:`aclose`).

    Parameters
    ----------
    url : str
        Base URL, for example ``http://10.0.0.5:8000``.
    api_key : str, optional
        Sent as ``Authorization: Bearer``; the worker's ``--api-key``.
    name : str, optional
        How messages name the worker (default: its URL).
    timeouts : Timeouts
        Per-request limits.
    retries : int
        Extra attempts after a transport error or a 5xx answer.
    backoff_s : float
        First wait between attempts; doubled each time.
    transport : httpx.AsyncBaseTransport, optional
        For tests that need to shape the transport; the real network otherwise.
    """

    def __init__(self, url: str, api_key: str | None = None, *, name: str | None = None,
                 timeouts: Timeouts | None = None, retries: int = 3, backoff_s: float = 0.2,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.url = url.rstrip("/")
        self.name = name or self.url
        self.timeouts = timeouts or Timeouts()
        self.retries = retries
        self.backoff_s = backoff_s
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.AsyncClient(
            base_url=self.url, headers=headers, transport=transport,
            timeout=httpx.Timeout(self.timeouts.read_s, connect=self.timeouts.connect_s),
        )

    async def __aenter__(self) -> WorkerClient:
        return self

    async def __aexit__(self, kind: type[BaseException] | None, value: BaseException | None,
                        traceback: TracebackType | None) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()

    def _where(self) -> str:
        return self.name if self.name == self.url else f"worker {self.name} ({self.url})"

    # ---- the one place that sends requests and maps failures -----------------------------

    async def _request(self, method: str, path: str, *, json: Any = None,
                       read_s: float | None = None, retry: bool = True) -> httpx.Response:
        attempts = 1 + (self.retries if retry else 0)
        timeout = httpx.Timeout(read_s or self.timeouts.read_s, connect=self.timeouts.connect_s)
        delay = self.backoff_s
        for attempt in range(1, attempts + 1):
            last = attempt == attempts
            try:
                response = await self._http.request(method, path, json=json, timeout=timeout)
            except httpx.TransportError as exc:
                if last:
                    detail = _one_line(str(exc)) or type(exc).__name__
                    raise UnreachableError(
                        f"{self._where()}: unreachable ({type(exc).__name__}: {detail}); "
                        "check its url in the inventory and that the server runs") from None
                logger.info("%s %s on %s: %s; retrying in %.2f s", method, path, self.name,
                            type(exc).__name__, delay)
            else:
                if response.status_code in (401, 403):
                    raise AuthError(
                        f"{self._where()}: the API key was refused ({response.status_code} on "
                        f"{path}); set the worker's --api-key in the variable its api_key_env "
                        "names", response.status_code)
                if response.status_code < 500:
                    return response
                text = _error_text(response)
                rank = self._rank_error(text)
                if rank is not None:
                    raise rank
                if last:
                    raise WorkerError(f"{self._where()}: {method} {path} answered "
                                      f"{response.status_code}: {_one_line(text)}",
                                      response.status_code)
                logger.info("%s %s on %s answered %d; retrying in %.2f s", method, path,
                            self.name, response.status_code, delay)
            await asyncio.sleep(delay)
            delay *= 2
        raise AssertionError("unreachable")  # the loop returns or raises

    def _rank_error(self, text: str) -> RankTooHighError | None:
        rank: int | None = None
        match = _RANK_MESSAGE.search(text)
        if match:
            rank, limit = int(match.group(1)), int(match.group(2))
        else:
            fallback = _RANK_FALLBACK.search(text)
            if fallback is None:
                return None
            limit = int(fallback.group(1))
        return RankTooHighError(
            f"{self._where()}: runs --max-lora-rank {limit}, below the adapter's rank "
            f"{rank if rank is not None else '?'}; restart it at a tier >= the rank or place "
            "the adapter elsewhere", limit, rank)

    # ---- endpoints ---------------------------------------------------------------------------

    async def health(self) -> bool:
        """True when ``GET /health`` answers 200 (one attempt, no retry)."""
        try:
            response = await self._http.get("/health")
        except httpx.TransportError:
            return False
        return response.status_code == 200

    async def models(self) -> ModelsInfo:
        """``GET /v1/models``: base models and loaded adapters (name -> path)."""
        response = await self._request("GET", "/v1/models")
        if response.status_code != 200:
            raise WorkerError(f"{self._where()}: GET /v1/models answered "
                              f"{response.status_code}: {_one_line(_error_text(response))}",
                              response.status_code)
        cards = response.json().get("data", [])
        base = tuple(str(c["id"]) for c in cards if not c.get("parent"))
        adapters = {str(c["id"]): str(c.get("root", "")) for c in cards if c.get("parent")}
        return ModelsInfo(base, adapters)

    async def load(self, name: str, path: str) -> Literal["loaded", "already loaded"]:
        """Load adapter ``name`` from ``path`` (a directory the worker can read).

        Returns
        -------
        str
            ``"loaded"``, or ``"already loaded"`` when the worker had it (the idempotent
            outcome; vLLM answers 400).

        Raises
        ------
        AdapterNotFoundError
            The worker cannot read ``path`` (404).
        RankTooHighError
            The adapter's rank exceeds the worker's ``--max-lora-rank`` (vLLM answers 500).
        RuntimeUpdatesDisabledError
            The endpoint does not exist.
        WorkerError
            Any other refusal.
        """
        response = await self._request(
            "POST", "/v1/load_lora_adapter", json={"lora_name": name, "lora_path": path},
            read_s=self.timeouts.load_s)
        if response.status_code == 200:
            return "loaded"
        text = _error_text(response)
        if response.status_code == 400 and "already been loaded" in text:
            return "already loaded"
        if response.status_code == 404:
            if self._route_missing(response):
                raise self._updates_disabled()
            raise AdapterNotFoundError(
                f"{self._where()}: cannot load {name}: {_one_line(text)}; check the adapter's "
                "path in the inventory and that the worker can read it", 404)
        raise WorkerError(f"{self._where()}: loading {name} answered {response.status_code}: "
                          f"{_one_line(text)}", response.status_code)

    async def unload(self, name: str) -> Literal["unloaded", "not loaded"]:
        """Unload adapter ``name``; ``"not loaded"`` when the worker did not have it."""
        response = await self._request("POST", "/v1/unload_lora_adapter",
                                       json={"lora_name": name})
        if response.status_code == 200:
            return "unloaded"
        if response.status_code == 404:
            if self._route_missing(response):
                raise self._updates_disabled()
            return "not loaded"
        raise WorkerError(f"{self._where()}: unloading {name} answered {response.status_code}: "
                          f"{_one_line(_error_text(response))}", response.status_code)

    async def metrics(self) -> WorkerMetrics:
        """``GET /metrics``, parsed."""
        response = await self._request("GET", "/metrics")
        if response.status_code != 200:
            raise WorkerError(f"{self._where()}: GET /metrics answered {response.status_code}",
                              response.status_code)
        return parse_metrics(response.text)

    async def lora_limits(self) -> LoRALimits | None:
        """The worker's LoRA settings from ``/server_info``, or None where it is not served.

        vLLM serves ``/server_info`` only with ``VLLM_SERVER_DEV_MODE=1``; elsewhere the rank
        limit is checked by loading an adapter (see :meth:`check_capabilities`).
        """
        response = await self._request("GET", "/server_info?config_format=json")
        if response.status_code != 200:
            return None
        try:
            lora = response.json()["vllm_config"]["lora_config"]
            return LoRALimits(int(lora["max_lora_rank"]), int(lora["max_loras"]),
                              int(lora["max_cpu_loras"] or lora["max_loras"]))
        except (KeyError, TypeError, ValueError):
            return None

    async def runtime_updates_enabled(self) -> bool:
        """Whether ``/v1/unload_lora_adapter`` exists (unloading a name nobody uses)."""
        response = await self._request("POST", "/v1/unload_lora_adapter",
                                       json={"lora_name": PROBE_NAME})
        return not self._route_missing(response)

    async def check_capabilities(self) -> ModelsInfo:
        """Fail clearly unless the worker answers, accepts the key and can load adapters.

        Returns
        -------
        ModelsInfo
            What the worker serves now.

        Raises
        ------
        UnreachableError, AuthError, RuntimeUpdatesDisabledError, WorkerError
        """
        info = await self.models()
        if not await self.runtime_updates_enabled():
            raise self._updates_disabled()
        return info

    @staticmethod
    def _route_missing(response: httpx.Response) -> bool:
        # FastAPI's own 404 for an unknown route is {"detail": "Not Found"}; vLLM's errors
        # carry an "error" object instead.
        if response.status_code not in (404, 405):
            return False
        try:
            body = response.json()
        except ValueError:
            return True
        return not (isinstance(body, dict) and "error" in body)

    def _updates_disabled(self) -> RuntimeUpdatesDisabledError:
        return RuntimeUpdatesDisabledError(
            f"{self._where()}: runtime LoRA updating is off (no /v1/load_lora_adapter); "
            "start the worker with VLLM_ALLOW_RUNTIME_LORA_UPDATING=True and --enable-lora", 404)
