"""The fleetops error tree.

Every failure fleetops reports is one of these. SDK exceptions (kubernetes, botocore, google-api-core,
azure-core, hvac, slack_sdk) never leave ``fleetops.clients``: each client module maps them onto the
most specific class here with ``raise ... from exc``, so flows and tasks decide on retries and
failure policy without knowing which SDK was involved::

    FleetopsError
    ├── ConfigError                 bad settings, parameters or files; fix the input, never retried
    │   ├── SelectorError           a label selector that does not parse
    │   ├── PlanningError           a rollout cannot be planned (clusters in no wave, ...)
    │   └── VersionBlocked          the version is on the app's blocklist
    ├── InventoryError              the inventory store failed or holds no such record
    │   └── ClusterNotFound
    └── ClientError                 an external system (cluster, cloud API, Vault, Slack) failed
        ├── TransientError          worth retrying: connection refused/reset, timeouts, 429, 5xx
        │   ├── Unreachable         no answer at all (connection refused, DNS, TLS handshake, timeout)
        │   └── RateLimited         429 / throttling; carries retry_after seconds when known
        └── PermanentError          retrying will not help
            ├── AuthError           401/403, expired or missing credentials
            ├── NotFound            404
            ├── Conflict            409 (stale resourceVersion, field manager conflict)
            └── Rejected            other 4xx: the server refused the request as invalid

Messages never carry secret values: clients pass server messages through
``fleetops.redaction.redact`` before raising.
"""

from __future__ import annotations


class FleetopsError(Exception):
    """Base class of every error fleetops raises on purpose."""


class ConfigError(FleetopsError):
    """Settings, parameters or a file are invalid. The message names what is wrong and where."""


class SelectorError(ConfigError):
    """A label selector that does not parse."""


class PlanningError(ConfigError):
    """The rollout cannot be planned: clusters in no wave, unreachable targets, bad inputs."""


class VersionBlocked(ConfigError):
    """The version is on the app's blocklist (it was rolled back) and may not be rolled out."""


class InventoryError(FleetopsError):
    """The inventory could not be read or written."""


class ClusterNotFound(InventoryError):
    """No cluster with this id in the inventory."""


class ClientError(FleetopsError):
    """An external system failed. ``system`` names it (``kube:<cluster id>``, ``eks``, ``vault``...)."""

    def __init__(self, message: str, *, system: str, status: int | None = None) -> None:
        super().__init__(f"{system}: {message}")
        self.system = system
        self.status = status


class TransientError(ClientError):
    """A failure that may go away by itself; safe to retry with backoff."""


class Unreachable(TransientError):
    """The system did not answer: connection refused or reset, timeout, TLS failure, DNS."""


class RateLimited(TransientError):
    """The system asked us to slow down (429, provider throttling)."""

    def __init__(
        self,
        message: str,
        *,
        system: str,
        status: int | None = 429,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, system=system, status=status)
        self.retry_after = retry_after


class PermanentError(ClientError):
    """Retrying the same request will fail the same way."""


class AuthError(PermanentError):
    """Authentication or authorisation failed (401/403)."""


class NotFound(PermanentError):
    """The object or endpoint does not exist (404)."""


class Conflict(PermanentError):
    """The write conflicts with the current state (409)."""


class Rejected(PermanentError):
    """The server refused the request as invalid (400, 415, 422 and other 4xx)."""


def error_for_status(
    status: int, message: str, *, system: str, retry_after: float | None = None
) -> ClientError:
    """The most specific error for an HTTP status code answered by ``system``."""
    if status == 429:
        return RateLimited(message, system=system, status=status, retry_after=retry_after)
    if status >= 500:
        return TransientError(message, system=system, status=status)
    if status in (401, 403):
        return AuthError(message, system=system, status=status)
    if status == 404:
        return NotFound(message, system=system, status=status)
    if status == 409:
        return Conflict(message, system=system, status=status)
    return Rejected(message, system=system, status=status)


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` is worth retrying. Used as the retry condition of every task."""
    return isinstance(exc, TransientError)
