"""Run asyncio servers on loopback in a background thread, for tests that drive sync SDKs.

``CloudHost`` owns one event loop in a daemon thread. ``call`` runs a coroutine on it and waits;
``serve`` hosts an aiohttp app on ``127.0.0.1`` (plain HTTP, or HTTPS given an SSL context) and
returns its URL. Everything it started is stopped by ``close``.
"""

from __future__ import annotations

import asyncio
import ssl
import threading
from collections.abc import Coroutine
from types import TracebackType
from typing import Any, TypeVar

from aiohttp import web

T = TypeVar("T")


class CloudHost:
    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="cloudhost", daemon=True)
        self._runners: list[web.AppRunner] = []
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_forever()

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        """Run ``coro`` on the host's loop and return its result."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

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
        async def stop() -> None:
            for runner in reversed(self._runners):
                await runner.cleanup()

        try:
            self.call(stop())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)
            self._loop.close()

    def __enter__(self) -> CloudHost:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
