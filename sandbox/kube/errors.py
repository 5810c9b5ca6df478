"""Kubernetes API errors as the real apiserver writes them.

Every error a sandbox cluster answers is a ``metav1.Status`` object with the same ``reason``,
``code``, ``message`` and ``details`` the real kube-apiserver would send, so kubectl prints the
same line and the official client raises ``ApiException`` with the same body.
"""

from __future__ import annotations

from typing import Any


class StatusError(Exception):
    """An error answered to the client as a ``Status`` object."""

    def __init__(
        self, code: int, reason: str, message: str, *, details: dict[str, Any] | None = None
    ) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details = details

    def to_status(self) -> dict[str, Any]:
        status: dict[str, Any] = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }
        if self.details is not None:
            status["details"] = self.details
        return status


def qualified(resource: str, group: str = "") -> str:
    """``deployments.apps`` / ``configmaps``: how the apiserver names a resource in messages."""
    return f"{resource}.{group}" if group else resource


def _details(resource: str, name: str, group: str) -> dict[str, Any]:
    details: dict[str, Any] = {"name": name, "kind": resource}
    if group:
        details["group"] = group
    return details


def not_found(resource: str, name: str, group: str = "") -> StatusError:
    return StatusError(
        404,
        "NotFound",
        f'{qualified(resource, group)} "{name}" not found',
        details=_details(resource, name, group),
    )


def already_exists(resource: str, name: str, group: str = "") -> StatusError:
    return StatusError(
        409,
        "AlreadyExists",
        f'{qualified(resource, group)} "{name}" already exists',
        details=_details(resource, name, group),
    )


def conflict(resource: str, name: str, group: str = "") -> StatusError:
    return StatusError(
        409,
        "Conflict",
        f'Operation cannot be fulfilled on {qualified(resource, group)} "{name}": the object has '
        "been modified; please apply your changes to the latest version and try again",
        details=_details(resource, name, group),
    )


def invalid(kind: str, name: str, causes: list[dict[str, str]], group: str = "") -> StatusError:
    """422 Invalid. ``causes`` items: ``{"reason": "FieldValueRequired", "message": ..., "field": ...}``."""
    summary = ", ".join(f"{c['field']}: {c['message']}" for c in causes)
    if len(causes) > 1:
        summary = "[" + summary + "]"
    return StatusError(
        422,
        "Invalid",
        f'{qualified(kind, group)} "{name}" is invalid: {summary}',
        details={**_details(kind, name, group), "causes": causes},
    )


def bad_request(message: str) -> StatusError:
    return StatusError(400, "BadRequest", message)


def method_not_allowed(
    message: str = "the server does not allow this method on the requested resource",
) -> StatusError:
    return StatusError(405, "MethodNotAllowed", message)


def unsupported_media_type(content_type: str) -> StatusError:
    return StatusError(
        415,
        "UnsupportedMediaType",
        "the body of the request was in an unknown format - accepted media types include: "
        "application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml",
        details={"kind": content_type} if content_type else None,
    )


def gone(message: str) -> StatusError:
    """410 Expired: a watch or list from a resourceVersion the server no longer keeps."""
    return StatusError(410, "Expired", message)


def unauthorized() -> StatusError:
    return StatusError(401, "Unauthorized", "Unauthorized")


def forbidden(
    *, user: str, verb: str, resource: str, group: str = "", name: str = "", namespace: str = ""
) -> StatusError:
    target = f'{qualified(resource, group)} "{name}"' if name else qualified(resource, group)
    scope = f' in the namespace "{namespace}"' if namespace else " at the cluster scope"
    return StatusError(
        403,
        "Forbidden",
        f'{target} is forbidden: User "{user}" cannot {verb} resource "{resource}" in API group '
        f'"{group}"{scope}',
        details=_details(resource, name, group),
    )


def too_many_requests(retry_after: int = 1) -> StatusError:
    return StatusError(
        429,
        "TooManyRequests",
        "the server has received too many requests and has asked us to try again later",
        details={"retryAfterSeconds": retry_after},
    )


def internal_error(message: str) -> StatusError:
    return StatusError(500, "InternalError", f"Internal error occurred: {message}")


def service_unavailable(
    message: str = "the server is currently unable to handle the request",
) -> StatusError:
    return StatusError(503, "ServiceUnavailable", message)
