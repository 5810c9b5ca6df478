"""TLS material for one sandbox cluster: its own CA and a server certificate for loopback.

Every cluster gets a CA of its own, like real clusters do, so a client that trusts one
cluster's CA cannot talk to another cluster by mistake (kubectl and the official client
verify the chain and the host name). Keys are ECDSA P-256 (trustme's default), which takes
about a millisecond per cluster where RSA-2048 would take tens: 200 clusters start in well
under a second of key generation.
"""

from __future__ import annotations

import base64
import ssl
from dataclasses import dataclass

import trustme

#: the names the server certificate is valid for; the sandbox binds only to 127.0.0.1
SERVER_IDENTITIES = ("127.0.0.1", "localhost")


@dataclass(frozen=True)
class ClusterCerts:
    """A cluster's CA certificate and its server certificate chain, PEM encoded."""

    name: str
    ca_pem: bytes
    cert_chain_pem: bytes
    key_pem: bytes
    _server_cert: trustme.LeafCert
    _ca: trustme.CA

    @property
    def ca_data(self) -> str:
        """Base64 of the CA PEM: a kubeconfig's ``certificate-authority-data``."""
        return base64.b64encode(self.ca_pem).decode("ascii")

    def server_context(self) -> ssl.SSLContext:
        """An SSL context serving this cluster's certificate (HTTP/1.1 via ALPN)."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.set_alpn_protocols(["http/1.1"])
        self._server_cert.configure_cert(ctx)
        return ctx

    def client_context(self) -> ssl.SSLContext:
        """An SSL context that trusts only this cluster's CA (for tests and probes)."""
        ctx = ssl.create_default_context(cadata=self.ca_pem.decode("ascii"))
        return ctx


def issue_cluster_certs(name: str) -> ClusterCerts:
    """A fresh CA for cluster ``name`` and a server certificate for 127.0.0.1 and localhost."""
    ca = trustme.CA(organization_name="fleetops sandbox", organization_unit_name=name)
    leaf = ca.issue_cert(*SERVER_IDENTITIES, common_name=f"{name} apiserver")
    return ClusterCerts(
        name=name,
        ca_pem=ca.cert_pem.bytes(),
        cert_chain_pem=b"".join(blob.bytes() for blob in leaf.cert_chain_pems),
        key_pem=leaf.private_key_pem.bytes(),
        _server_cert=leaf,
        _ca=ca,
    )
