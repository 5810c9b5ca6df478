"""Many sandbox Kubernetes clusters in one process, and the files that point clients at them.

A :class:`Fleet` runs N :class:`~sandbox.kube.cluster.SandboxCluster` objects on ONE asyncio
loop, each behind its own HTTPS listener on ``127.0.0.1`` (a random free port), with its own CA
and its own bearer token. Clients find them through ``DIR/kubeconfig`` (one context per cluster,
named after it, CA embedded), the demo through ``DIR/sandbox.env`` (``FLEETOPS_*`` settings) and
tools through ``DIR/fleet.json``.

Tokens are checked fleet-wide, so a client that mixes up clusters gets what a real, separately
authenticated cluster would make obvious: no token or an unknown one is 401, another cluster's
token is 403 naming that token's user (``<cluster>-admin``).

Faults are switched at run time through the Python API (:meth:`Fleet.set_faults`,
:meth:`Fleet.outage`) or the plain-HTTP control endpoint (see :mod:`sandbox.control`). An
outage closes the cluster's listening socket and drops its open connections, so clients see
"connection refused"; when it ends the cluster listens on the same port again.

Two ways to run: ``async with``-style from a running loop (:meth:`Fleet.start` /
:meth:`Fleet.stop`, :meth:`Fleet.run_forever` for the CLI), or in a background thread for
tests (``with Fleet(...) as fleet:`` / :meth:`Fleet.start_in_thread` and :meth:`Fleet.close`).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import os
import random
import resource
import secrets
import shlex
import shutil
import socket
import tempfile
import threading
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import TimeoutError as FutureTimeoutError
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import yaml
from aiohttp import web

from sandbox.control import control_app
from sandbox.kube.certs import ClusterCerts, issue_cluster_certs
from sandbox.kube.cluster import AuthResult, ClusterSpec, SandboxCluster
from sandbox.kube.faults import Faults

log = logging.getLogger(__name__)

T = TypeVar("T")

HOST = "127.0.0.1"
KUBECONFIG = "kubeconfig"
SANDBOX_ENV = "sandbox.env"
FLEET_JSON = "fleet.json"

#: how long a cluster waits for in-flight requests (watches) when it stops
SHUTDOWN_TIMEOUT = 1.0

ClusterFactory = Callable[..., SandboxCluster]


class UnknownClusterError(LookupError):
    """No cluster of that name in the fleet."""

    def __init__(self, name: str) -> None:
        super().__init__(f"no cluster named {name!r} in the fleet")
        self.name = name


def cluster_names(count: int, prefix: str = "sbx") -> list[str]:
    """``sbx-01 .. sbx-12``: zero-padded to the width of ``count`` (at least two digits)."""
    if count < 1:
        raise ValueError(f"a fleet needs at least one cluster, got {count}")
    width = max(2, len(str(count)))
    return [f"{prefix}-{index:0{width}d}" for index in range(1, count + 1)]


def username(cluster: str) -> str:
    """The user a cluster's token authenticates as (named in 403 answers elsewhere)."""
    return f"{cluster}-admin"


@dataclass(eq=False)
class _Member:
    name: str
    token: str
    faults: Faults
    certs: ClusterCerts | None = None
    cluster: SandboxCluster | None = None
    ssl_context: Any = None
    runner: web.AppRunner | None = None
    site: web.SockSite | None = None
    port: int = 0

    @property
    def server(self) -> str:
        return f"https://{HOST}:{self.port}"


class Fleet:
    """N sandbox clusters on one loop; see the module docstring."""

    def __init__(
        self,
        clusters: int = 3,
        *,
        directory: str | os.PathLike[str] | None = None,
        rollout_seconds: float = 2.0,
        kubernetes_version: str | None = None,
        control_port: int = 0,
        seed: int | None = None,
        prefix: str = "sbx",
        cluster_factory: ClusterFactory | None = None,
    ) -> None:
        if rollout_seconds < 0:
            raise ValueError(f"rollout_seconds must be >= 0, got {rollout_seconds}")
        if not 0 <= control_port <= 65535:
            raise ValueError(f"control_port must be 0..65535, got {control_port}")
        self._names = cluster_names(clusters, prefix)
        self._own_directory = directory is None
        self._directory = Path(directory) if directory is not None else None
        self._rollout_seconds = rollout_seconds
        self._kubernetes_version = kubernetes_version
        self._control_port = control_port
        self._factory: ClusterFactory = cluster_factory or SandboxCluster
        self._members: dict[str, _Member] = {}
        self._token_owner: dict[str, str] = {}
        for name in self._names:
            token = secrets.token_urlsafe(32)
            rng = random.Random(f"{seed}:{name}") if seed is not None else random.Random()
            self._members[name] = _Member(name=name, token=token, faults=Faults(rng=rng))
            self._token_owner[token] = name
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._started = False
        self._control_runner: web.AppRunner | None = None
        self._control_url = ""

    # -- names, paths, credentials ------------------------------------------------------------

    @property
    def names(self) -> list[str]:
        return list(self._names)

    @property
    def directory(self) -> Path:
        if self._directory is None:
            raise RuntimeError("the fleet has not been started yet")
        return self._directory

    @property
    def kubeconfig_path(self) -> Path:
        return self.directory / KUBECONFIG

    @property
    def env_path(self) -> Path:
        return self.directory / SANDBOX_ENV

    @property
    def json_path(self) -> Path:
        return self.directory / FLEET_JSON

    @property
    def control_url(self) -> str:
        if not self._control_url:
            raise RuntimeError("the fleet has not been started yet")
        return self._control_url

    @property
    def running(self) -> bool:
        return self._started

    def cluster(self, name: str) -> SandboxCluster:
        member = self._member(name)
        if member.cluster is None:
            raise RuntimeError("the fleet has not been started yet")
        return member.cluster

    def faults(self, name: str) -> Faults:
        return self._member(name).faults

    def server(self, name: str) -> str:
        """``https://127.0.0.1:PORT`` of a started cluster (the same while it is in an outage)."""
        return self._member(name).server

    def port(self, name: str) -> int:
        return self._member(name).port

    def token(self, name: str) -> str:
        return self._member(name).token

    def ca_pem(self, name: str) -> bytes:
        certs = self._member(name).certs
        if certs is None:
            raise RuntimeError("the fleet has not been started yet")
        return certs.ca_pem

    def describe(self, name: str) -> dict[str, Any]:
        """JSON-ready view of one cluster (no token)."""
        member = self._member(name)
        return {
            "name": member.name,
            "server": member.server,
            "port": member.port,
            "context": member.name,
            "user": username(member.name),
            "listening": member.site is not None,
            "faults": member.faults.to_dict(),
        }

    # -- faults -----------------------------------------------------------------------------

    async def apply_faults(self, name: str, changes: dict[str, Any]) -> dict[str, Any]:
        """Change fault switches from inside the fleet's loop; returns the new switches.

        Raises :class:`UnknownClusterError` or :class:`~sandbox.kube.faults.FaultsError`
        (nothing changes then). ``outage`` opens or closes the listener accordingly.
        """
        member = self._member(name)
        result = member.faults.update(**changes)
        if self._started:
            if member.faults.outage and member.site is not None:
                await self._close_listener(member)
            elif not member.faults.outage and member.site is None:
                try:
                    await self._open_listener(member)
                except OSError:
                    member.faults.outage = True
                    raise
        return result

    async def reset_faults_async(self, name: str | None = None) -> None:
        for member_name in [name] if name is not None else self._names:
            member = self._member(member_name)
            defaults = Faults(rng=member.faults.rng).to_dict()
            await self.apply_faults(member_name, defaults)

    def set_faults(self, name: str, **changes: Any) -> dict[str, Any]:
        """Change fault switches of cluster ``name`` (from any thread but the fleet's own)."""
        if not self._started:
            return self._member(name).faults.update(**changes)
        return self._call(self.apply_faults(name, changes))

    def outage(self, name: str, on: bool) -> dict[str, Any]:
        """Start (``on=True``) or end an outage: connections to the cluster are refused."""
        return self.set_faults(name, outage=on)

    def reset_faults(self, name: str | None = None) -> None:
        """Every switch back to off, for one cluster or (``name=None``) all of them."""
        if not self._started:
            for member_name in [name] if name is not None else self._names:
                self._member(member_name).faults.reset()
            return
        self._call(self.reset_faults_async(name))

    # -- life cycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Start every cluster and the control endpoint, then write the files."""
        if self._started or self._loop is not None:
            raise RuntimeError("the fleet is already started")
        self._loop = asyncio.get_running_loop()
        try:
            self._prepare_directory()
            _raise_open_files_limit(len(self._names) * 4 + 256)
            with _gc_paused():
                for name in self._names:
                    await self._start_member(self._members[name])
            await self._start_control()
            self._started = True
            self._write_files()
        except BaseException:
            await self._teardown()
            raise
        log.info("sandbox fleet started: %d clusters in %s", len(self._names), self.directory)

    async def stop(self) -> None:
        """Stop listening, stop every cluster's controllers; safe to call twice."""
        if self._loop is None:
            return
        await self._teardown()

    async def run_forever(
        self,
        stop: asyncio.Event | None = None,
        *,
        on_ready: Callable[[Fleet], None] | None = None,
    ) -> None:
        """Start, call ``on_ready``, serve until ``stop`` is set (or cancelled), then stop."""
        await self.start()
        try:
            if on_ready is not None:
                on_ready(self)
            if stop is None:
                await asyncio.get_running_loop().create_future()
            else:
                await stop.wait()
        finally:
            await self.stop()

    def start_in_thread(self, *, timeout: float = 120.0) -> Fleet:
        """Run the fleet's loop in a daemon thread; returns once every cluster listens."""
        if self._thread is not None:
            raise RuntimeError("the fleet is already running in a thread")
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=_run_loop, args=(loop,), name="sandbox-fleet", daemon=True)
        thread.start()
        self._thread = thread
        future = asyncio.run_coroutine_threadsafe(self.start(), loop)
        try:
            future.result(timeout)
        except BaseException:
            future.cancel()
            self._stop_thread(loop, timeout)
            raise
        return self

    def close(self, *, timeout: float = 60.0) -> None:
        """Stop a fleet started with :meth:`start_in_thread` and join its thread."""
        loop, thread = self._loop, self._thread
        if thread is None or loop is None:
            return
        try:
            asyncio.run_coroutine_threadsafe(self.stop(), loop).result(timeout)
        finally:
            self._stop_thread(loop, timeout)

    def __enter__(self) -> Fleet:
        return self.start_in_thread()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- internals ----------------------------------------------------------------------------

    def _member(self, name: str) -> _Member:
        try:
            return self._members[name]
        except KeyError:
            raise UnknownClusterError(name) from None

    def _call(self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        loop = self._loop
        if loop is None:
            coro.close()
            raise RuntimeError("the fleet is not running")
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            coro.close()
            raise RuntimeError(
                "called from the fleet's own loop; use `await fleet.apply_faults(...)` there"
            )
        try:
            return asyncio.run_coroutine_threadsafe(coro, loop).result(timeout)
        except FutureTimeoutError as exc:
            raise TimeoutError("the fleet's loop did not answer in time") from exc

    def _authenticator(self, name: str) -> Callable[[str | None], AuthResult]:
        owners = self._token_owner

        def authenticate(token: str | None) -> AuthResult:
            owner = owners.get(token) if token else None
            if owner is None:
                return AuthResult(ok=False, status=401)
            if owner != name:
                return AuthResult(
                    ok=False, status=403, username=username(owner), groups=("system:authenticated",)
                )
            return AuthResult(
                ok=True,
                status=200,
                username=username(owner),
                groups=("system:masters", "system:authenticated"),
            )

        return authenticate

    async def _start_member(self, member: _Member) -> None:
        member.certs = issue_cluster_certs(member.name)
        member.ssl_context = member.certs.server_context()
        spec_kwargs: dict[str, Any] = {
            "name": member.name,
            "token": member.token,
            "rollout_seconds": self._rollout_seconds,
        }
        if self._kubernetes_version is not None:
            spec_kwargs["kubernetes_version"] = self._kubernetes_version
        member.cluster = self._factory(
            ClusterSpec(**spec_kwargs),
            faults=member.faults,
            authenticator=self._authenticator(member.name),
        )
        await member.cluster.start()
        member.runner = web.AppRunner(
            member.cluster.app(), access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT
        )
        await member.runner.setup()
        await self._open_listener(member)
        if member.faults.outage:
            await self._close_listener(member)

    async def _open_listener(self, member: _Member) -> None:
        assert member.runner is not None
        sock = _listening_socket(member.port)
        site = web.SockSite(member.runner, sock, ssl_context=member.ssl_context)
        try:
            await site.start()
        except BaseException:
            sock.close()
            raise
        member.site = site
        member.port = sock.getsockname()[1]

    async def _close_listener(self, member: _Member) -> None:
        site, member.site = member.site, None
        if site is not None:
            await site.stop()
        server = member.runner.server if member.runner is not None else None
        if server is not None:
            for connection in server.connections:
                connection.force_close()

    async def _start_control(self) -> None:
        runner = web.AppRunner(control_app(self), access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        self._control_runner = runner
        sock = _listening_socket(self._control_port)
        site = web.SockSite(runner, sock)
        try:
            await site.start()
        except BaseException:
            sock.close()
            raise
        self._control_url = f"http://{HOST}:{sock.getsockname()[1]}"

    async def _teardown(self) -> None:
        self._started = False
        if self._control_runner is not None:
            await self._control_runner.cleanup()
            self._control_runner = None
        members = list(self._members.values())
        await asyncio.gather(
            *(member.runner.cleanup() for member in members if member.runner is not None),
            return_exceptions=True,
        )
        for member in members:
            member.runner = None
            member.site = None
        results = await asyncio.gather(
            *(member.cluster.stop() for member in members if member.cluster is not None),
            return_exceptions=True,
        )
        for result in results:
            if isinstance(result, BaseException):
                log.warning("a sandbox cluster failed to stop cleanly: %r", result)
        if self._own_directory and self._directory is not None:
            shutil.rmtree(self._directory, ignore_errors=True)

    def _prepare_directory(self) -> None:
        if self._directory is None:
            self._directory = Path(tempfile.mkdtemp(prefix="fleetops-sandbox-"))
        self._directory.mkdir(parents=True, exist_ok=True)
        if not os.access(self._directory, os.W_OK | os.X_OK):
            raise PermissionError(f"directory {self._directory} is not writable")

    def _write_files(self) -> None:
        directory = self.directory.resolve()
        members = [self._members[name] for name in self._names]
        _write_file(self.kubeconfig_path, self._kubeconfig_text(), private=True)
        env = {
            "FLEETOPS_KUBECONFIG": str(directory / KUBECONFIG),
            "FLEETOPS_SANDBOX_CONTROL_URL": self.control_url,
            "FLEETOPS_SANDBOX_DIR": str(directory),
        }
        env_text = "".join(f"{key}={shlex.quote(value)}\n" for key, value in env.items())
        _write_file(self.env_path, env_text, private=True)
        fleet = {
            "control_url": self.control_url,
            "kubeconfig": str(directory / KUBECONFIG),
            "clusters": [
                {"name": m.name, "server": m.server, "port": m.port, "context": m.name}
                for m in members
            ],
        }
        _write_file(self.json_path, json.dumps(fleet, indent=2) + "\n", private=False)

    def _kubeconfig_text(self) -> str:
        members = [self._members[name] for name in self._names]
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "preferences": {},
            "current-context": members[0].name,
            "clusters": [
                {
                    "name": m.name,
                    "cluster": {
                        "server": m.server,
                        "certificate-authority-data": m.certs.ca_data if m.certs else "",
                    },
                }
                for m in members
            ],
            "users": [{"name": m.name, "user": {"token": m.token}} for m in members],
            "contexts": [
                {"name": m.name, "context": {"cluster": m.name, "user": m.name}} for m in members
            ],
        }
        dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)  # libyaml: ~10x faster at 1,000
        return yaml.dump(config, Dumper=dumper, sort_keys=False)

    def _stop_thread(self, loop: asyncio.AbstractEventLoop, timeout: float) -> None:
        thread, self._thread = self._thread, None
        if not loop.is_closed():
            loop.call_soon_threadsafe(loop.stop)
        if thread is not None:
            thread.join(timeout)
        self._loop = None


def _run_loop(loop: asyncio.AbstractEventLoop) -> None:
    asyncio.set_event_loop(loop)
    try:
        loop.run_forever()
        pending = [task for task in asyncio.all_tasks(loop) if not task.done()]
        for task in pending:
            task.cancel()
        if pending:
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        loop.run_until_complete(loop.shutdown_asyncgens())
    finally:
        loop.close()


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic GC while hundreds of stores are built: its full passes over the
    growing heap cost 10-15% of start-up at 1,000 clusters and free nothing."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _listening_socket(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((HOST, port))
        sock.listen(128)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def _write_file(path: Path, text: str, *, private: bool) -> None:
    """Write atomically; ``private`` files (holding tokens) are created mode 0600."""
    mode = 0o600 if private else 0o644
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)


def _raise_open_files_limit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return
    target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
