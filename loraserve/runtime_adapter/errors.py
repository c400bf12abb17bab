"""Errors of the runtime adapter: one line each, saying what failed and what to do."""

from __future__ import annotations


class RuntimeAdapterError(Exception):
    """A worker, the inventory or a migration cannot do what was asked; the message is one line."""


class WorkerError(RuntimeAdapterError):
    """A vLLM worker answered with an error, or could not be reached.

    Parameters
    ----------
    message : str
        One line naming the worker and the fix.
    status : int or None
        The HTTP status, or None when no answer came (transport error).
    """

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class UnreachableError(WorkerError):
    """No HTTP answer: connection refused, DNS failure, timeout."""


class AuthError(WorkerError):
    """The worker refused the API key (401/403)."""


class RankTooHighError(WorkerError):
    """The worker's ``--max-lora-rank`` is below an adapter's rank.

    Parameters
    ----------
    message : str
        One line.
    max_lora_rank : int or None
        The worker's ``--max-lora-rank`` as its error message states it.
    rank : int or None
        The adapter's rank as the worker read it.
    """

    def __init__(self, message: str, max_lora_rank: int | None, rank: int | None) -> None:
        super().__init__(message, status=500)
        self.max_lora_rank = max_lora_rank
        self.rank = rank


class AdapterNotFoundError(WorkerError):
    """The worker cannot read the adapter's path (404 on load)."""


class RuntimeUpdatesDisabledError(WorkerError):
    """The worker was started without ``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True``."""


class MigrationError(RuntimeAdapterError):
    """A step of a migration failed; the fleet is left consistent (see the message)."""
