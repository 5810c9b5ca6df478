"""Kubernetes service-account tokens, signed and checked the way a real cluster does it.

Vault's (OpenBao's) Kubernetes auth method logs a workload in with the JWT its pod carries: it
reads the claims, then asks the cluster's TokenReview API whether the token is genuine. For
that round trip to mean anything in the sandbox, a sandbox cluster must issue tokens that look
like the real ones and must refuse tokens it did not sign, in particular a token minted by
another cluster. :class:`ServiceAccountIssuer` is one cluster's issuer: it mints tokens like
the TokenRequest API (``kubectl create token``) and verifies them like the apiserver's
service-account authenticator.

Tokens are RS256 JWTs (RSA-2048, what kubeadm, EKS, GKE and AKS use), built with
``cryptography`` directly. Generating an RSA key costs about 50 ms, so the key is made on first
use: a fleet of 1,000 clusters pays nothing for issuers that never mint. An ECDSA P-256 PEM key
may be passed instead and gives ES256 tokens, which Kubernetes also accepts.

Claims are those of a bound token: ``iss``, ``sub`` (``system:serviceaccount:NS:NAME``),
``aud``, ``exp``, ``iat``, ``nbf``, ``jti`` and the ``kubernetes.io`` claim (namespace and
service account name and uid). The legacy secret-based token claims
(``kubernetes.io/serviceaccount/namespace``, ``.../service-account.name``,
``.../service-account.uid``) are added on request only (``legacy_claims=True``): bound tokens do
not carry them, and OpenBao 2.7's Kubernetes auth reads the ``kubernetes.io`` claim.

The auth method logs in only if the TokenReview answer names the same uid as the token
(``status.user.uid``): whatever serves TokenReview must report :attr:`ServiceAccountUser.uid`.

A sandbox cluster has no ServiceAccount objects to look up, so a service account's uid is derived
from the cluster name, namespace and name: stable across runs, different between clusters.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

#: the issuer kubeadm configures by default (``--service-account-issuer``)
DEFAULT_ISSUER = "https://kubernetes.default.svc.cluster.local"

#: the apiserver's leeway for ``exp``, ``nbf`` and ``iat`` (go-jose's default, one minute)
LEEWAY_SECONDS = 60

_LEGACY_NAMESPACE = "kubernetes.io/serviceaccount/namespace"
_LEGACY_NAME = "kubernetes.io/serviceaccount/service-account.name"
_LEGACY_UID = "kubernetes.io/serviceaccount/service-account.uid"


@dataclass(frozen=True)
class ServiceAccountUser:
    """Who a valid token authenticates as: what a TokenReview's ``status.user`` reports."""

    namespace: str
    name: str
    uid: str
    audiences: tuple[str, ...]

    @property
    def username(self) -> str:
        return f"system:serviceaccount:{self.namespace}:{self.name}"

    @property
    def groups(self) -> tuple[str, ...]:
        return (
            "system:serviceaccounts",
            f"system:serviceaccounts:{self.namespace}",
            "system:authenticated",
        )


class ServiceAccountIssuer:
    """One cluster's service-account token issuer and authenticator.

    ``key`` is a PEM private key (RSA -> RS256, EC P-256 -> ES256); without it an RSA-2048 key is
    generated on first use. ``api_audiences`` are the audiences the apiserver accepts
    (``--api-audiences``; by default the issuer URL, as on a kubeadm cluster).
    Thread-safe: the fleet's event loop and test threads may share one issuer.
    """

    def __init__(
        self,
        cluster_name: str,
        *,
        key: bytes | None = None,
        issuer: str = DEFAULT_ISSUER,
        api_audiences: Sequence[str] | None = None,
    ) -> None:
        self.cluster_name = cluster_name
        self.issuer = issuer
        self.api_audiences: tuple[str, ...] = tuple(api_audiences or (issuer,))
        self._key_pem = key
        self._key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | None = None
        self._lock = threading.Lock()

    # -- keys -------------------------------------------------------------------------------

    def _private_key(self) -> rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey:
        with self._lock:
            if self._key is None:
                self._key = _load_or_generate(self._key_pem)
            return self._key

    @property
    def algorithm(self) -> str:
        """``RS256`` or ``ES256``, from the key type."""
        return "RS256" if isinstance(self._private_key(), rsa.RSAPrivateKey) else "ES256"

    def public_key_pem(self) -> bytes:
        """The verification key (``sa.pub``), e.g. for the auth method's ``pem_keys``."""
        return (
            self._private_key()
            .public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )

    @property
    def key_id(self) -> str:
        """The ``kid`` header: unpadded base64url of SHA-256 over the DER public key, like k8s."""
        der = (
            self._private_key()
            .public_key()
            .public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
        return _b64(hashlib.sha256(der).digest())

    def jwks(self) -> dict[str, Any]:
        """The key set the apiserver serves at ``/openid/v1/jwks``."""
        public = self._private_key().public_key()
        jwk: dict[str, Any] = {"use": "sig", "kid": self.key_id, "alg": self.algorithm}
        if isinstance(public, rsa.RSAPublicKey):
            numbers = public.public_numbers()
            jwk |= {
                "kty": "RSA",
                "n": _b64(_int_bytes(numbers.n)),
                "e": _b64(_int_bytes(numbers.e)),
            }
        else:
            point = public.public_numbers()
            jwk |= {
                "kty": "EC",
                "crv": "P-256",
                "x": _b64(point.x.to_bytes(32, "big")),
                "y": _b64(point.y.to_bytes(32, "big")),
            }
        return {"keys": [jwk]}

    # -- minting ----------------------------------------------------------------------------

    def service_account_uid(self, namespace: str, service_account: str) -> str:
        """The uid the sandbox gives ``namespace/service_account`` on this cluster (stable)."""
        cluster_ns = uuid.uuid5(uuid.NAMESPACE_URL, f"{self.issuer}#{self.cluster_name}")
        return str(uuid.uuid5(cluster_ns, f"{namespace}/{service_account}"))

    def mint(
        self,
        namespace: str,
        service_account: str,
        *,
        audiences: Iterable[str] | None = None,
        expiration_seconds: int = 3600,
        now: float | None = None,
        uid: str | None = None,
        legacy_claims: bool = False,
    ) -> str:
        """A signed token for ``namespace/service_account``, like the TokenRequest API returns.

        ``audiences`` default to the apiserver's own; a token for another audience (say
        ``vault``) is refused by this cluster's authenticator, as on a real cluster.
        ``expiration_seconds`` must be at least 600, the TokenRequest API's minimum.
        """
        if not namespace or not service_account:
            raise ValueError("namespace and service_account must be non-empty")
        if expiration_seconds < 600:
            raise ValueError("expiration_seconds must be at least 600 (the TokenRequest minimum)")
        issued = int(time.time() if now is None else now)
        sa_uid = uid or self.service_account_uid(namespace, service_account)
        claims: dict[str, Any] = {
            "aud": list(self.api_audiences if audiences is None else audiences),
            "exp": issued + int(expiration_seconds),
            "iat": issued,
            "iss": self.issuer,
            "jti": str(uuid.uuid4()),
            "kubernetes.io": {
                "namespace": namespace,
                "serviceaccount": {"name": service_account, "uid": sa_uid},
            },
            "nbf": issued,
            "sub": f"system:serviceaccount:{namespace}:{service_account}",
        }
        if legacy_claims:
            claims[_LEGACY_NAMESPACE] = namespace
            claims[_LEGACY_NAME] = service_account
            claims[_LEGACY_UID] = sa_uid
        header = {"alg": self.algorithm, "kid": self.key_id}
        signing_input = f"{_b64_json(header)}.{_b64_json(claims)}".encode("ascii")
        return f"{signing_input.decode('ascii')}.{_b64(self._sign(signing_input))}"

    # -- verifying --------------------------------------------------------------------------

    def authenticate(
        self, token: str | None, *, now: float | None = None
    ) -> ServiceAccountUser | None:
        """The user a token authenticates as, or ``None`` when this cluster must refuse it.

        Refused: anything that is not a JWT, a bad or foreign signature (another cluster's
        key), another issuer, an audience outside ``api_audiences``, a token outside its
        validity window (with the apiserver's one-minute leeway), a ``sub`` that is not a
        service account or disagrees with the ``kubernetes.io`` claim.
        """
        if not token or token.count(".") != 2:
            return None
        head_b64, body_b64, sig_b64 = token.split(".")
        try:
            header = json.loads(_unb64(head_b64))
            claims = json.loads(_unb64(body_b64))
            signature = _unb64(sig_b64)
        except ValueError:
            return None
        if not isinstance(header, dict) or not isinstance(claims, dict):
            return None
        if header.get("alg") != self.algorithm or header.get("kid", self.key_id) != self.key_id:
            return None
        if not self._verify_signature(f"{head_b64}.{body_b64}".encode("ascii"), signature):
            return None
        return self._check_claims(claims, time.time() if now is None else now)

    def verify(
        self, token: str | None, *, now: float | None = None
    ) -> tuple[str, tuple[str, ...]] | None:
        """``(username, groups)`` for a token this cluster accepts, else ``None``."""
        user = self.authenticate(token, now=now)
        return None if user is None else (user.username, user.groups)

    def _check_claims(self, claims: dict[str, Any], now: float) -> ServiceAccountUser | None:
        if claims.get("iss") != self.issuer:
            return None
        try:
            exp = float(claims["exp"])
            nbf = float(claims.get("nbf", claims.get("iat", 0)))
            iat = float(claims.get("iat", nbf))
        except (KeyError, TypeError, ValueError):
            return None
        if now > exp + LEEWAY_SECONDS or now < nbf - LEEWAY_SECONDS or now < iat - LEEWAY_SECONDS:
            return None
        aud = claims.get("aud")
        audiences = (aud,) if isinstance(aud, str) else tuple(aud or ())
        if not set(audiences) & set(self.api_audiences):
            return None
        sub = claims.get("sub")
        k8s = claims.get("kubernetes.io")
        if not isinstance(sub, str) or not isinstance(k8s, dict):
            return None
        parts = sub.split(":")
        if len(parts) != 4 or parts[:2] != ["system", "serviceaccount"]:
            return None
        namespace, name = parts[2], parts[3]
        account = k8s.get("serviceaccount") or {}
        if k8s.get("namespace") != namespace or account.get("name") != name:
            return None
        uid = account.get("uid")
        if not isinstance(uid, str) or not uid:
            return None
        return ServiceAccountUser(namespace=namespace, name=name, uid=uid, audiences=audiences)

    # -- signatures -------------------------------------------------------------------------

    def _sign(self, data: bytes) -> bytes:
        key = self._private_key()
        if isinstance(key, rsa.RSAPrivateKey):
            return key.sign(data, padding.PKCS1v15(), hashes.SHA256())
        r, s = decode_dss_signature(key.sign(data, ec.ECDSA(hashes.SHA256())))
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")

    def _verify_signature(self, data: bytes, signature: bytes) -> bool:
        public = self._private_key().public_key()
        try:
            if isinstance(public, rsa.RSAPublicKey):
                public.verify(signature, data, padding.PKCS1v15(), hashes.SHA256())
            else:
                if len(signature) != 64:
                    return False
                der = encode_dss_signature(
                    int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
                )
                public.verify(der, data, ec.ECDSA(hashes.SHA256()))
        except InvalidSignature:
            return False
        return True


def _load_or_generate(pem: bytes | None) -> rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey:
    if pem is None:
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    loaded = serialization.load_pem_private_key(pem, password=None)
    if isinstance(loaded, rsa.RSAPrivateKey):
        return loaded
    if isinstance(loaded, ec.EllipticCurvePrivateKey) and isinstance(loaded.curve, ec.SECP256R1):
        return loaded
    raise ValueError("key must be an RSA or an EC P-256 private key (PEM)")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64_json(value: dict[str, Any]) -> str:
    return _b64(json.dumps(value, separators=(",", ":")).encode("utf-8"))


def _unb64(text: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (ValueError, TypeError) as exc:
        raise ValueError("not base64url") from exc


def _int_bytes(value: int) -> bytes:
    return value.to_bytes((value.bit_length() + 7) // 8 or 1, "big")
