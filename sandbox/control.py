"""The fleet's control endpoint (plain HTTP on 127.0.0.1) and a small client for it.

The demo, the tests and a person with ``curl`` flip the same fault switches here:

    GET    /clusters                     every cluster: name, server, port, listening, faults
    GET    /clusters/{name}              one cluster
    GET    /clusters/{name}/faults       its switches (see sandbox.kube.faults.Faults)
    PATCH  /clusters/{name}/faults       JSON object of switches to change -> the new switches
    DELETE /clusters/{name}/faults       every switch back to off -> the new switches
    POST   /clusters/{name}/outage       {"on": true | false} -> the new switches

Errors are JSON ``{"error": message}``: 404 for an unknown cluster, 400 for a bad body or a
bad switch value, then with ``"field"`` naming the switch.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

from aiohttp import web

from sandbox.kube.faults import FaultsError

if TYPE_CHECKING:
    from sandbox.fleet import Fleet

CONTROL_URL_VARIABLE = "FLEETOPS_SANDBOX_CONTROL_URL"

_FLEET: web.AppKey[Fleet] = web.AppKey("fleet")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _error(status: int, message: str, **extra: Any) -> web.Response:
    return web.json_response({"error": message, **extra}, status=status)


@web.middleware
async def _errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    from sandbox.fleet import UnknownClusterError

    try:
        return await handler(request)
    except UnknownClusterError as exc:
        return _error(404, str(exc), cluster=exc.name)
    except FaultsError as exc:
        return _error(400, str(exc), field=exc.field)


async def _json_object(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise web.HTTPBadRequest(
            text=json.dumps({"error": f"body is not JSON: {exc}"}), content_type="application/json"
        ) from exc
    if not isinstance(body, dict):
        raise web.HTTPBadRequest(
            text=json.dumps({"error": "body must be a JSON object"}),
            content_type="application/json",
        )
    return body


async def _list_clusters(request: web.Request) -> web.Response:
    fleet = request.app[_FLEET]
    return web.json_response({"clusters": [fleet.describe(name) for name in fleet.names]})


async def _get_cluster(request: web.Request) -> web.Response:
    return web.json_response(request.app[_FLEET].describe(request.match_info["name"]))


async def _get_faults(request: web.Request) -> web.Response:
    fleet = request.app[_FLEET]
    return web.json_response(fleet.faults(request.match_info["name"]).to_dict())


async def _patch_faults(request: web.Request) -> web.Response:
    fleet = request.app[_FLEET]
    name = request.match_info["name"]
    fleet.faults(name)  # 404 before looking at the body
    changes = await _json_object(request)
    return web.json_response(await fleet.apply_faults(name, changes))


async def _reset_faults(request: web.Request) -> web.Response:
    fleet = request.app[_FLEET]
    name = request.match_info["name"]
    await fleet.reset_faults_async(name)
    return web.json_response(fleet.faults(name).to_dict())


async def _outage(request: web.Request) -> web.Response:
    fleet = request.app[_FLEET]
    name = request.match_info["name"]
    fleet.faults(name)
    body = await _json_object(request)
    unknown = sorted(set(body) - {"on"})
    if unknown:
        return _error(400, f"{unknown[0]}: unknown field (expected only 'on')", field=unknown[0])
    on = body.get("on")
    if not isinstance(on, bool):
        return _error(400, f"on: must be true or false, got {on!r}", field="on")
    return web.json_response(await fleet.apply_faults(name, {"outage": on}))


def control_app(fleet: Fleet) -> web.Application:
    """The control endpoint's aiohttp app for ``fleet``."""
    app = web.Application(middlewares=[_errors_middleware])
    app[_FLEET] = fleet
    app.router.add_get("/clusters", _list_clusters)
    app.router.add_get("/clusters/{name}", _get_cluster)
    app.router.add_get("/clusters/{name}/faults", _get_faults)
    app.router.add_patch("/clusters/{name}/faults", _patch_faults)
    app.router.add_delete("/clusters/{name}/faults", _reset_faults)
    app.router.add_post("/clusters/{name}/outage", _outage)
    return app


class ControlError(Exception):
    """The control endpoint refused a request; ``field`` names a bad switch (400)."""

    def __init__(self, status: int, body: Mapping[str, Any]) -> None:
        self.status = status
        self.body = dict(body)
        self.field: str | None = self.body.get("field")
        super().__init__(f"{status}: {self.body.get('error', self.body)}")


class FleetControl:
    """Client for the control endpoint (stdlib only), for tests, the demo and scripts."""

    def __init__(self, url: str, *, timeout: float = 10.0) -> None:
        if not url.startswith("http://127.0.0.1:"):
            raise ValueError(f"the sandbox control endpoint is on http://127.0.0.1, got {url!r}")
        self.url = url.rstrip("/")
        self.timeout = timeout

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> FleetControl:
        """From ``FLEETOPS_SANDBOX_CONTROL_URL`` (as written to ``sandbox.env``)."""
        env = os.environ if environ is None else environ
        try:
            return cls(env[CONTROL_URL_VARIABLE])
        except KeyError:
            raise LookupError(f"{CONTROL_URL_VARIABLE} is not set") from None

    def clusters(self) -> list[dict[str, Any]]:
        return list(self._request("GET", "/clusters")["clusters"])

    def cluster(self, name: str) -> dict[str, Any]:
        return self._request("GET", f"/clusters/{name}")

    def faults(self, name: str) -> dict[str, Any]:
        return self._request("GET", f"/clusters/{name}/faults")

    def set_faults(self, name: str, **changes: Any) -> dict[str, Any]:
        return self._request("PATCH", f"/clusters/{name}/faults", changes)

    def reset_faults(self, name: str) -> dict[str, Any]:
        return self._request("DELETE", f"/clusters/{name}/faults")

    def outage(self, name: str, on: bool) -> dict[str, Any]:
        return self._request("POST", f"/clusters/{name}/outage", {"on": on})

    def _request(self, method: str, path: str, body: Any = None) -> dict[str, Any]:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method)
        if data is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return dict(json.loads(response.read()))
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            try:
                payload = json.loads(raw)
            except ValueError:
                payload = {"error": raw.decode("utf-8", "replace")}
            raise ControlError(exc.code, payload) from None
