"""Serve an aiohttp app on a loopback port from a background thread, for synchronous tests.

The real clients under test (hvac, slack_sdk, the kubernetes client) are synchronous, so the
server they talk to runs on its own event loop in a daemon thread. ``stop()`` shuts the
server down and joins the thread; calling it twice is harmless.
"""

from __future__ import annotations

import asyncio
import ssl
import threading
from collections.abc import Awaitable, Callable

from aiohttp import web


def host_app(
    app: web.Application,
    *,
    ssl_context: ssl.SSLContext | None = None,
    on_loop: Callable[[], Awaitable[None]] | None = None,
) -> tuple[str, Callable[[], None]]:
    """Start ``app`` on 127.0.0.1 (a free port); returns ``(base_url, stop)``.

    ``on_loop`` is awaited on the server's loop before it starts serving (e.g. to start
    background tasks that must live on that loop).
    """
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    box: dict[str, object] = {}
    failure: list[BaseException] = []

    async def serve() -> None:
        if on_loop is not None:
            await on_loop()
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context)
        await site.start()
        box["runner"] = runner
        server = site._server
        assert isinstance(server, asyncio.base_events.Server)
        box["port"] = server.sockets[0].getsockname()[1]

    def run() -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(serve())
        except BaseException as exc:  # report start-up failures to the caller
            failure.append(exc)
            ready.set()
            return
        ready.set()
        loop.run_forever()
        runner = box["runner"]
        assert isinstance(runner, web.AppRunner)
        loop.run_until_complete(runner.cleanup())
        loop.close()

    thread = threading.Thread(target=run, name="test-aiohttp-host", daemon=True)
    thread.start()
    ready.wait(10)
    if failure:
        raise RuntimeError("the test server did not start") from failure[0]
    scheme = "https" if ssl_context is not None else "http"
    base_url = f"{scheme}://127.0.0.1:{box['port']}"
    stopped = threading.Event()

    def stop() -> None:
        if stopped.is_set():
            return
        stopped.set()
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)

    return base_url, stop
