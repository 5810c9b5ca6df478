"""Fault switches for one sandbox cluster.

A :class:`Faults` object is shared by the cluster's HTTP app (through :meth:`Faults.middleware`),
its controllers (``ready_seconds``, ``broken_images``) and the fleet (``outage``, which closes
the cluster's listening socket). It is changed in place at run time by the fleet's control
endpoint and Python API, so every reader sees a switch the moment it is flipped: keep the one
object, never replace it.

Injected errors are the answers a degraded kube-apiserver really gives: a ``Status`` body with
the real reason and code (429 ``TooManyRequests`` with an integer ``Retry-After`` header,
500 ``InternalError``, 503 ``ServiceUnavailable``, 504 ``Timeout``). Health endpoints
(``/livez``, ``/readyz``, ``/healthz``) go through the same middleware on purpose: a
degraded apiserver fails its health checks too.
"""

from __future__ import annotations

import asyncio
import math
import random
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from sandbox.kube.errors import (
    StatusError,
    internal_error,
    service_unavailable,
    too_many_requests,
)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Middleware = Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]

#: error codes the switch accepts, each answered with the apiserver's own Status
SUPPORTED_ERROR_CODES = (429, 500, 503, 504)

#: the fields a caller may change (``rng`` is injected at construction only)
SWITCHES = (
    "latency_seconds",
    "error_rate",
    "error_code",
    "retry_after_seconds",
    "outage",
    "ready_seconds",
    "broken_images",
)


class FaultsError(ValueError):
    """A fault switch was given a bad value; ``field`` names the switch."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(f"{field_name}: {message}")
        self.field = field_name
        self.message = message


@dataclass(eq=False)
class Faults:
    """Per-cluster fault switches (all off by default)."""

    latency_seconds: float = 0.0
    """Added before every API response (health endpoints included)."""
    error_rate: float = 0.0
    """Share (0..1) of API requests answered with ``error_code`` instead of being served."""
    error_code: int = 500
    """429, 500, 503 or 504."""
    outage: bool = False
    """The fleet closes the cluster's listener: new connections are refused."""
    ready_seconds: float | None = None
    """Slow readiness: overrides the cluster's rollout time when set."""
    broken_images: set[str] = field(default_factory=set)
    """Image refs (``repo:tag``) or ``:tag`` suffixes whose pods never become ready."""
    retry_after_seconds: int = 1
    """``Retry-After`` (integer seconds) sent with an injected 429."""
    rng: random.Random = field(default_factory=random.Random, repr=False)
    """Random source for ``error_rate``; pass ``random.Random(seed)`` for determinism."""

    def __post_init__(self) -> None:
        self.update(**{name: getattr(self, name) for name in SWITCHES})

    # -- switches -------------------------------------------------------------------------

    def is_broken(self, image: str) -> bool:
        """Whether pods running ``image`` must never become ready."""
        for entry in self.broken_images:
            if entry == image or (entry.startswith(":") and image.endswith(entry)):
                return True
        return False

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready view of every switch."""
        return {
            "latency_seconds": self.latency_seconds,
            "error_rate": self.error_rate,
            "error_code": self.error_code,
            "retry_after_seconds": self.retry_after_seconds,
            "outage": self.outage,
            "ready_seconds": self.ready_seconds,
            "broken_images": sorted(self.broken_images),
        }

    def update(self, **changes: Any) -> dict[str, Any]:
        """Validate all ``changes`` first, then apply them together; returns :meth:`to_dict`.

        Raises :class:`FaultsError` naming the first bad field (nothing is applied then).
        """
        clean: dict[str, Any] = {}
        for name, value in changes.items():
            clean[name] = _validate(name, value)
        for name, value in clean.items():
            setattr(self, name, value)
        return self.to_dict()

    def reset(self) -> None:
        """Every switch back to its default (the random source is kept)."""
        fresh = Faults(rng=self.rng)
        self.update(**{name: getattr(fresh, name) for name in SWITCHES})

    # -- HTTP -----------------------------------------------------------------------------

    def should_fail(self) -> bool:
        """Draw once from the injected random source: answer this request with an error?"""
        return self.error_rate > 0 and self.rng.random() < self.error_rate

    def error_status(self) -> StatusError:
        """The Status a degraded apiserver answers for ``error_code``."""
        return _status_for(self.error_code, self.retry_after_seconds)

    def middleware(self) -> Middleware:
        """aiohttp middleware: latency, then the error rate; reads the switches per request."""
        faults = self

        @web.middleware
        async def faults_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
            if faults.outage:
                # The fleet closed the listener; a kept-alive connection must not sneak through:
                # drop it without an answer, as a vanished server would.
                request.protocol.force_close()
                return web.Response(status=503)
            if faults.latency_seconds > 0:
                await asyncio.sleep(faults.latency_seconds)
            if faults.should_fail():
                return status_response(faults.error_status())
            return await handler(request)

        return faults_middleware


def status_response(error: StatusError) -> web.Response:
    """A ``Status`` body with the headers the apiserver sends alongside it."""
    headers = {"Cache-Control": "no-cache, private"}
    retry_after = (error.details or {}).get("retryAfterSeconds")
    if retry_after is not None:
        headers["Retry-After"] = str(int(retry_after))
    return web.json_response(error.to_status(), status=error.code, headers=headers)


def _status_for(code: int, retry_after: int) -> StatusError:
    if code == 429:
        return too_many_requests(retry_after)
    if code == 500:
        return internal_error("fault injected by the sandbox")
    if code == 503:
        return service_unavailable()
    if code == 504:
        return StatusError(
            504,
            "Timeout",
            "Timeout: request did not complete within the allotted timeout",
            details={"retryAfterSeconds": retry_after},
        )
    raise FaultsError("error_code", f"must be one of {list(SUPPORTED_ERROR_CODES)}, got {code!r}")


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise FaultsError(name, f"must be a number, got {value!r}")
    if not math.isfinite(value):
        raise FaultsError(name, f"must be finite, got {value!r}")
    return float(value)


def _validate(name: str, value: Any) -> Any:
    if name == "latency_seconds":
        number = _number(name, value)
        if number < 0:
            raise FaultsError(name, f"must be >= 0, got {value!r}")
        return number
    if name == "error_rate":
        number = _number(name, value)
        if not 0.0 <= number <= 1.0:
            raise FaultsError(name, f"must be between 0 and 1, got {value!r}")
        return number
    if name == "error_code":
        if isinstance(value, bool) or not isinstance(value, int):
            raise FaultsError(name, f"must be an integer, got {value!r}")
        if value not in SUPPORTED_ERROR_CODES:
            raise FaultsError(name, f"must be one of {list(SUPPORTED_ERROR_CODES)}, got {value!r}")
        return value
    if name == "retry_after_seconds":
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise FaultsError(name, f"must be an integer >= 0, got {value!r}")
        return value
    if name == "outage":
        if not isinstance(value, bool):
            raise FaultsError(name, f"must be true or false, got {value!r}")
        return value
    if name == "ready_seconds":
        if value is None:
            return None
        number = _number(name, value)
        if number < 0:
            raise FaultsError(name, f"must be >= 0 or null, got {value!r}")
        return number
    if name == "broken_images":
        if isinstance(value, str | bytes) or not isinstance(value, Iterable):
            raise FaultsError(name, f"must be a list of image references, got {value!r}")
        images = set()
        for item in value:
            if not isinstance(item, str) or not item or item == ":":
                raise FaultsError(name, f"entries must be non-empty image references, got {item!r}")
            images.add(item)
        return images
    raise FaultsError(name, f"unknown fault switch (known: {', '.join(SWITCHES)})")
