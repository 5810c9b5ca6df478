"""Run aiohttp apps on loopback from a background event loop, for tests that drive sync clients.

The clients under test (boto3, google-cloud-container, azure-mgmt-containerservice, hvac,
slack_sdk, the kubernetes client) are synchronous, so the servers they talk to run on an event
loop of their own in a daemon thread. ``LoopHost.call`` runs a coroutine on that loop and waits;
``serve`` hosts an aiohttp app on ``127.0.0.1`` (plain HTTP, or HTTPS given an SSL context) and
returns its URL. ``close`` cleans up every app it served, stops the loop and joins the thread;
calling it twice is harmless.
"""

from __future__ import annotations

import asyncio
import ssl
import threading
from collections.abc import Callable, Coroutine
from concurrent.futures import Future
from types import TracebackType
from typing import Any, TypeVar

from aiohttp import web

T = TypeVar("T")


class LoopHost:
    def __init__(self, name: str = "test-loop-host") -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._runners: list[web.AppRunner] = []
        self._closed = False
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        """Run ``coro`` on the host's loop and return its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def run(self, fn: Callable[[], T], timeout: float = 30.0) -> T:
        """Run the plain callable ``fn`` on the host's loop and return its value."""
        fut: Future[T] = Future()

        def go() -> None:
            try:
                fut.set_result(fn())
            except BaseException as e:
                fut.set_exception(e)

        self.loop.call_soon_threadsafe(go)
        return fut.result(timeout)

    def serve(self, app: web.Application, *, ssl_context: ssl.SSLContext | None = None) -> str:
        """Host ``app`` on a free 127.0.0.1 port; returns ``http(s)://127.0.0.1:PORT``."""

        async def start() -> str:
            runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context)
            await site.start()
            self._runners.append(runner)
            port = runner.addresses[0][1]
            scheme = "https" if ssl_context is not None else "http"
            return f"{scheme}://127.0.0.1:{port}"

        return self.call(start())

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True

        async def stop() -> None:
            for runner in reversed(self._runners):
                await runner.cleanup()

        try:
            self.call(stop())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(5)
            self.loop.close()

    def __enter__(self) -> LoopHost:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def host_app(
    app: web.Application, *, ssl_context: ssl.SSLContext | None = None
) -> tuple[str, Callable[[], None]]:
    """Serve one ``app`` on its own :class:`LoopHost`; returns ``(base_url, stop)``."""
    host = LoopHost()
    try:
        url = host.serve(app, ssl_context=ssl_context)
    except BaseException:
        host.close()
        raise
    return url, host.close
