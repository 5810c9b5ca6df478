"""One sandbox cluster on a loopback HTTPS port, in a background thread, for the API tests.

The fleet (``sandbox.fleet``) runs many clusters; these tests need exactly one, with its own
trustme CA, a kubeconfig in ``tmp_path`` and direct (thread-safe) access to its store, so they
can assert on what the server holds.
"""

from __future__ import annotations

import base64
import os
import ssl
import subprocess
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import trustme
import yaml
from kubernetes import client

from sandbox.kube.cluster import Authenticator, ClusterSpec, SandboxCluster
from tests.support.hosting import LoopHost

T = TypeVar("T")
KUBECTL = "/usr/bin/kubectl"


class SingleCluster:
    """Start with ``with SingleCluster(tmp_path) as c:``; stops (and joins its thread) on exit."""

    def __init__(
        self,
        tmp_path: Path,
        *,
        name: str = "sandbox-1",
        token: str = "token-sandbox-1",
        kubernetes_version: str = "v1.31.4",
        authenticator: Authenticator | None = None,
        clock: Callable[[], float] = time.time,
        controllers: bool = True,
        history: int | None = None,
    ) -> None:
        self.tmp_path = tmp_path
        self.spec = ClusterSpec(
            name=name, token=token, kubernetes_version=kubernetes_version, rollout_seconds=0.5
        )
        self._authenticator = authenticator
        self._clock = clock
        self._controllers = controllers
        self._history = history
        self.host: LoopHost
        self.cluster: SandboxCluster
        self.url = ""
        self.ca_path = tmp_path / "ca.pem"
        self.kubeconfig = tmp_path / "kubeconfig"

    # --- lifecycle ---------------------------------------------------------------------------

    def __enter__(self) -> SingleCluster:
        ca = trustme.CA()
        leaf = ca.issue_cert("127.0.0.1", "localhost")
        ca.cert_pem.write_to_path(str(self.ca_path))
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        leaf.configure_cert(ctx)
        self.host = LoopHost(name="single-cluster")
        try:
            self.call(self._start())
            self.url = self.host.serve(self.cluster.app(), ssl_context=ctx)
        except BaseException:
            self.host.close()
            raise
        self._write_kubeconfig(ca.cert_pem.bytes())
        return self

    async def _start(self) -> None:
        self.cluster = SandboxCluster(
            self.spec, authenticator=self._authenticator, clock=self._clock
        )
        if self._history is not None:
            self.cluster.store._history = deque(maxlen=self._history)  # a short watch history
        if self._controllers:
            await self.cluster.start()

    def __exit__(self, *exc: object) -> None:
        try:
            self.call(self.cluster.stop(), timeout=10)
        finally:
            self.host.close()  # cleans up the app runner, stops the loop, joins the thread

    # --- helpers ---------------------------------------------------------------------------

    def call(self, coro: Any, timeout: float = 30) -> Any:
        return self.host.call(coro, timeout)

    def run(self, fn: Callable[[], T], timeout: float = 30) -> T:
        """Run ``fn`` on the cluster's loop (the store is not thread-safe) and return its value."""
        return self.host.run(fn, timeout)

    def get(self, kind_plural: str, namespace: str | None, name: str, group: str = "",
            version: str = "v1") -> dict[str, Any]:  # fmt: skip
        """The object as the store holds it (raises StatusError 404)."""
        store = self.cluster.store

        def read() -> dict[str, Any]:
            rt = store.registry.get(group, version, kind_plural)
            assert rt is not None, kind_plural
            return store.get(rt, namespace, name)

        return self.run(read)

    def exists(self, kind_plural: str, namespace: str | None, name: str, group: str = "",
               version: str = "v1") -> bool:  # fmt: skip
        store = self.cluster.store

        def check() -> bool:
            rt = store.registry.get(group, version, kind_plural)
            return rt is not None and store.exists(rt, namespace, name)

        return self.run(check)

    def configuration(self, token: str | None = None) -> client.Configuration:
        cfg = client.Configuration(host=self.url)
        cfg.api_key = {"BearerToken": token if token is not None else self.spec.token}
        cfg.api_key_prefix = {"BearerToken": "Bearer"}
        cfg.ssl_ca_cert = str(self.ca_path)
        return cfg

    def api_client(self, token: str | None = None) -> client.ApiClient:
        return client.ApiClient(self.configuration(token))

    def _write_kubeconfig(self, ca_pem: bytes) -> None:
        name = self.spec.name
        doc = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": name,
                    "cluster": {
                        "server": self.url,
                        "certificate-authority-data": base64.b64encode(ca_pem).decode(),
                    },
                }
            ],
            "users": [{"name": name, "user": {"token": self.spec.token}}],
            "contexts": [{"name": name, "context": {"cluster": name, "user": name}}],
            "current-context": name,
        }
        self.kubeconfig.write_text(yaml.safe_dump(doc))

    def kubectl(
        self, *args: str, stdin: str | None = None, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("KUBE")}
        env["HOME"] = str(self.tmp_path)
        cmd = [
            KUBECTL,
            "--kubeconfig",
            str(self.kubeconfig),
            "--cache-dir",
            str(self.tmp_path / "kube-cache"),
            *args,
        ]
        proc = subprocess.run(
            cmd, input=stdin, capture_output=True, text=True, timeout=timeout, env=env
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"kubectl {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
            )
        return proc
