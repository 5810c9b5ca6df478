"""The fleet's control endpoint (plain HTTP on 127.0.0.1) and a small client for it.

The demo, the tests and a person with ``curl`` flip the same fault switches here:

    GET    /clusters                     every cluster: name, server, port, listening, faults
    GET    /clusters/{name}              one cluster
    GET    /clusters/{name}/faults       its switches (see sandbox.kube.faults.Faults)
    PATCH  /clusters/{name}/faults       JSON object of switches to change -> the new switches
    DELETE /clusters/{name}/faults       every switch back to off -> the new switches
    POST   /clusters/{name}/outage       {"on": true | false} -> the new switches
    POST   /clusters/{name}/serviceaccount-token
                                         {"namespace", "service_account", "audiences"?,
                                          "expiration_seconds"?} -> {"token": a service-account
                                         token the cluster issued, as TokenRequest would}

    GET    /services                     every running service: name, url, listening, faults
    GET    /services/{name}              one service (aws, gke, aks, vault, slack)
    GET    /services/{name}/faults       its switches
    PATCH  /services/{name}/faults       JSON object of switches to change -> the new switches
    DELETE /services/{name}/faults       every switch back to off -> the new switches
    POST   /services/{name}/outage       {"on": true | false} -> the new switches
    GET    /services/slack/messages      every message the Slack stand-in holds, oldest first

Service switches: aws, gke, aks: ``latency_seconds``, ``error_rate`` (answered with the
provider's own throttling error: AWS ``ThrottlingException``, Google 429 ``RESOURCE_EXHAUSTED``,
Azure 429 with ``Retry-After``), ``retry_after_seconds``, ``outage``; slack: ``latency_seconds``,
``rate_limited``, ``rate_limited_calls``, ``retry_after_seconds``, ``error``, ``error_rate``,
``error_rate_error``, ``outage``; vault: ``outage`` (connections refused), ``sealed``,
``latency_seconds``, ``error_rate`` with ``error_code`` (429 with ``Retry-After``, 500 or 503, in
Vault's own ``{"errors": [...]}`` shape) and ``retry_after_seconds``.

Errors are JSON ``{"error": message}``: 404 for an unknown cluster or service, 400 for a bad
body or a bad switch value, then with ``"field"`` naming the switch.
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
    from sandbox.fleet import ServiceFaultsError, UnknownClusterError, UnknownServiceError

    try:
        return await handler(request)
    except UnknownClusterError as exc:
        return _error(404, str(exc), cluster=exc.name)
    except UnknownServiceError as exc:
        return _error(404, str(exc), service=exc.name)
    except (FaultsError, ServiceFaultsError) as exc:
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


def _on(body: dict[str, Any]) -> bool | web.Response:
    unknown = sorted(set(body) - {"on"})
    if unknown:
        return _error(400, f"{unknown[0]}: unknown field (expected only 'on')", field=unknown[0])
    on = body.get("on")
    if not isinstance(on, bool):
        return _error(400, f"on: must be true or false, got {on!r}", field="on")
    return on


async def _outage(request: web.Request) -> web.Response:
    fleet = request.app[_FLEET]
    name = request.match_info["name"]
    fleet.faults(name)
    on = _on(await _json_object(request))
    if isinstance(on, web.Response):
        return on
    return web.json_response(await fleet.apply_faults(name, {"outage": on}))


async def _service_account_token(request: web.Request) -> web.Response:
    fleet = request.app[_FLEET]
    name = request.match_info["name"]
    fleet.faults(name)
    body = await _json_object(request)
    allowed = {"namespace", "service_account", "audiences", "expiration_seconds"}
    unknown = sorted(set(body) - allowed)
    if unknown:
        return _error(400, f"{unknown[0]}: unknown field", field=unknown[0])
    for key in ("namespace", "service_account"):
        if not isinstance(body.get(key), str) or not body[key]:
            return _error(400, f"{key}: must be a non-empty string", field=key)
    audiences = body.get("audiences")
    if audiences is not None and (
        not isinstance(audiences, list) or not all(isinstance(a, str) and a for a in audiences)
    ):
        return _error(400, "audiences: must be a list of strings", field="audiences")
    seconds = body.get("expiration_seconds", 3600)
    if isinstance(seconds, bool) or not isinstance(seconds, int) or seconds < 600:
        return _error(
            400, "expiration_seconds: must be an integer >= 600", field="expiration_seconds"
        )
    token = fleet.service_account_token(
        name,
        body["namespace"],
        body["service_account"],
        audiences=audiences,
        expiration_seconds=seconds,
    )
    return web.json_response({"token": token})


async def _list_services(request: web.Request) -> web.Response:
    fleet = request.app[_FLEET]
    found = [await fleet.describe_service(name) for name in fleet.running_services()]
    return web.json_response({"services": found})


async def _get_service(request: web.Request) -> web.Response:
    fleet = request.app[_FLEET]
    return web.json_response(await fleet.describe_service(request.match_info["name"]))


async def _get_service_faults(request: web.Request) -> web.Response:
    fleet = request.app[_FLEET]
    return web.json_response(await fleet.service_faults_async(request.match_info["name"]))


async def _patch_service_faults(request: web.Request) -> web.Response:
    fleet = request.app[_FLEET]
    name = request.match_info["name"]
    await fleet.service_faults_async(name)  # 404 before looking at the body
    changes = await _json_object(request)
    return web.json_response(await fleet.apply_service_faults(name, changes))


async def _reset_service_faults(request: web.Request) -> web.Response:
    fleet = request.app[_FLEET]
    name = request.match_info["name"]
    await fleet.reset_service_faults_async(name)
    return web.json_response(await fleet.service_faults_async(name))


async def _service_outage(request: web.Request) -> web.Response:
    fleet = request.app[_FLEET]
    name = request.match_info["name"]
    await fleet.service_faults_async(name)
    on = _on(await _json_object(request))
    if isinstance(on, web.Response):
        return on
    return web.json_response(await fleet.apply_service_faults(name, {"outage": on}))


async def _slack_messages(request: web.Request) -> web.Response:
    fleet = request.app[_FLEET]
    await fleet.service_faults_async("slack")  # 404 when slack does not run
    messages = [
        {
            "channel": m.channel,
            "ts": m.ts,
            "thread_ts": m.thread_ts,
            "text": m.text,
            "blocks": list(m.blocks),
            "edited": m.edited,
        }
        for m in fleet.slack.messages()
    ]
    return web.json_response({"messages": messages})


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
    app.router.add_post("/clusters/{name}/serviceaccount-token", _service_account_token)
    app.router.add_get("/services", _list_services)
    app.router.add_get("/services/slack/messages", _slack_messages)
    app.router.add_get("/services/{name}", _get_service)
    app.router.add_get("/services/{name}/faults", _get_service_faults)
    app.router.add_patch("/services/{name}/faults", _patch_service_faults)
    app.router.add_delete("/services/{name}/faults", _reset_service_faults)
    app.router.add_post("/services/{name}/outage", _service_outage)
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

    def service_account_token(
        self,
        name: str,
        namespace: str = "fleetops",
        service_account: str = "fleetops",
        *,
        audiences: list[str] | None = None,
        expiration_seconds: int = 3600,
    ) -> str:
        """A service-account token cluster ``name`` issued (e.g. for Vault's Kubernetes auth)."""
        body: dict[str, Any] = {
            "namespace": namespace,
            "service_account": service_account,
            "expiration_seconds": expiration_seconds,
        }
        if audiences is not None:
            body["audiences"] = audiences
        path = f"/clusters/{name}/serviceaccount-token"
        return str(self._request("POST", path, body)["token"])

    # -- services ----------------------------------------------------------------------------

    def services(self) -> list[dict[str, Any]]:
        return list(self._request("GET", "/services")["services"])

    def service(self, name: str) -> dict[str, Any]:
        return self._request("GET", f"/services/{name}")

    def service_faults(self, name: str) -> dict[str, Any]:
        return self._request("GET", f"/services/{name}/faults")

    def set_service_faults(self, name: str, **changes: Any) -> dict[str, Any]:
        return self._request("PATCH", f"/services/{name}/faults", changes)

    def reset_service_faults(self, name: str) -> dict[str, Any]:
        return self._request("DELETE", f"/services/{name}/faults")

    def service_outage(self, name: str, on: bool) -> dict[str, Any]:
        return self._request("POST", f"/services/{name}/outage", {"on": on})

    def slack_messages(self) -> list[dict[str, Any]]:
        """Every message the Slack stand-in holds, oldest first."""
        return list(self._request("GET", "/services/slack/messages")["messages"])

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
