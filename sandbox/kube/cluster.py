"""One sandbox cluster: an object store, the HTTP app that serves it, and its controllers.

A :class:`SandboxCluster` is cheap to create (a store with four namespaces and a dozen
objects; discovery and OpenAPI documents are shared by every cluster in the process), so a
fleet of hundreds starts in seconds. TLS and the listening socket are the fleet's job: it wraps
:meth:`SandboxCluster.app` in a site with the cluster's ``ssl_context``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from aiohttp import web

from sandbox.kube import openapi
from sandbox.kube.faults import Faults
from sandbox.kube.server import ApiServer
from sandbox.kube.store import Store

log = logging.getLogger(__name__)


@dataclass
class ClusterSpec:
    """What makes one cluster different from another."""

    name: str
    token: str
    kubernetes_version: str = "v1.31.4"
    rollout_seconds: float = 2.0


@dataclass(frozen=True)
class AuthResult:
    """What the authenticator says about a bearer token."""

    ok: bool
    status: int  # 200, 401 or 403
    username: str = ""
    groups: tuple[str, ...] = field(default_factory=tuple)
    uid: str = ""  # service-account tokens carry the account's uid (TokenReview status.user.uid)


Authenticator = Callable[[str | None], AuthResult]

ADMIN = AuthResult(True, 200, "admin", ("system:masters", "system:authenticated"))
UNAUTHORIZED = AuthResult(False, 401)


def token_authenticator(token: str) -> Authenticator:
    """The default: this cluster's own token is the admin; anything else is 401."""

    def authenticate(presented: str | None) -> AuthResult:
        if presented is not None and presented == token:
            return ADMIN
        return UNAUTHORIZED

    return authenticate


class SandboxCluster:
    """One Kubernetes API server (store + HTTP app + controllers)."""

    def __init__(
        self,
        spec: ClusterSpec,
        *,
        faults: Faults | None = None,
        authenticator: Authenticator | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.spec = spec
        self.faults = faults if faults is not None else Faults()
        self.authenticator = authenticator or token_authenticator(spec.token)
        self.clock = clock
        self.store = Store(clock=clock)
        self.server = ApiServer(
            store=self.store,
            spec=spec,
            authenticator=self._authenticate,
            middlewares=[self.faults.middleware()],
            clock=clock,
            down=lambda: self.faults.outage,
        )
        self._controllers_task: asyncio.Task[None] | None = None
        openapi.warm_up()

    @property
    def name(self) -> str:
        return self.spec.name

    def _authenticate(self, token: str | None) -> AuthResult:
        # looked up per call, so a fleet may swap the authenticator after construction
        return self.authenticator(token)

    def app(self) -> web.Application:
        """The aiohttp application serving this cluster's API (plain; the fleet adds TLS)."""
        return self.server.app()

    async def start(self) -> None:
        """Start the controllers (inside the running event loop)."""
        if self._controllers_task is not None:
            return
        from sandbox.kube.controllers import Controllers

        controllers = Controllers(self.store, spec=self.spec, faults=self.faults, clock=self.clock)
        self._controllers_task = asyncio.create_task(
            controllers.run(), name=f"controllers:{self.spec.name}"
        )

    async def stop(self) -> None:
        task, self._controllers_task = self._controllers_task, None
        if task is None:
            return
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass
        except Exception:
            log.exception("controllers of %s failed", self.spec.name)
