"""What every client module shares: the short-lived token type and a bounded parallel map."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import TypeVar

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from fleetops.redaction import redact

T = TypeVar("T")
R = TypeVar("R")


class ClusterToken(BaseModel):
    """A short-lived bearer token for one cluster's API, and when it stops being usable.

    Never stored, logged or returned from a task: it lives as long as the connection that
    needs it. ``expires_at`` is None when the source gives no expiry (a static kubeconfig token).
    ``ca_data`` is set by a provider that hands out the API server's CA only with the credential
    (AKS's user kubeconfig): it is the CA to trust for this connection, fresher than the one the
    inventory recorded (not a secret).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    token: SecretStr = Field(description="The bearer token.")
    expires_at: datetime | None = Field(
        default=None, description="When to get a new one (UTC), if known."
    )
    ca_data: str | None = Field(
        default=None, description="PEM CA of the API server, when the credential comes with one."
    )

    def expired(self, now: datetime | None = None) -> bool:
        """Whether the token is past ``expires_at`` at ``now`` (default: the current time)."""
        if self.expires_at is None:
            return False
        return (now or datetime.now(UTC)) >= self.expires_at


def bounded_map(
    function: Callable[[T], R], items: Iterable[T], *, max_workers: int, name: str
) -> list[R]:
    """``[function(item) for item in items]``, at most ``max_workers`` at a time, in order.

    The first exception (in item order) is raised once every call has finished, so no thread
    outlives the call.
    """
    work = list(items)
    if max_workers <= 1 or len(work) <= 1:
        return [function(item) for item in work]
    with ThreadPoolExecutor(
        max_workers=min(max_workers, len(work)), thread_name_prefix=name
    ) as pool:
        futures = [pool.submit(function, item) for item in work]
    return [future.result() for future in futures]


def clean(message: object, *, secrets: Iterable[str] = (), limit: int = 500) -> str:
    """A server or SDK message fit for an error: redacted (recognised credentials and every value
    in ``secrets``), on one line, at most ``limit`` characters."""
    text = redact(str(message), secrets=secrets)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
