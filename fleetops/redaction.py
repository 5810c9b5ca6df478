"""Keep credentials out of logs, exceptions, artifacts and Slack.

Two layers: models hold secrets as ``pydantic.SecretStr`` (printed as ``**********``), and
:class:`RedactingFilter` rewrites every log record that passes through a handler so that a token
which slipped into a message or its arguments is replaced by ``[redacted]``. :func:`redact` is the
same rewrite for any text we show (error messages sent to Slack or written to artifacts).

Recognised: HTTP ``Authorization`` values (Bearer/Basic), Kubernetes service-account and other
JWTs, EKS IAM tokens (``k8s-aws-v1.``), Vault/OpenBao tokens (``hvs.``, ``hvb.``, ``hvr.``,
``s.``, ``b.``, ``r.`` followed by a long token), ``X-Vault-Token`` headers, Slack tokens
(``xoxb-``, ``xoxp-``, ``xapp-``...), Google OAuth access tokens (``ya29.``), AWS secret keys
given as ``aws_secret_access_key=...`` and client secrets/passwords in ``key=value`` pairs.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable

REDACTED = "[redacted]"

_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    # Authorization: Bearer xyz / Basic xyz (header or bare phrase)
    (re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]{8,}"), r"\1 " + REDACTED),
    # X-Vault-Token: xyz, "token": "xyz", token=xyz, client_secret=..., password=...
    (
        re.compile(
            r"(?i)((?:x-vault-token|authorization|token|client[_-]?secret|secret[_-]?id|password"
            r"|aws_secret_access_key|secret_access_key|api[_-]?key)[\"']?\s*[:=]\s*[\"']?)"
            r"(?!\[redacted\])[^\s\"',;}]{4,}"
        ),
        r"\1" + REDACTED,
    ),
    # EKS IAM token: k8s-aws-v1.<base64url>
    (re.compile(r"k8s-aws-v1\.[A-Za-z0-9_-]+"), REDACTED),
    # JWTs (service-account tokens, Entra access tokens)
    (re.compile(r"eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*"), REDACTED),
    # Vault / OpenBao tokens
    (re.compile(r"\b(?:hv[sbr]|[sbr])\.[A-Za-z0-9_-]{20,}"), REDACTED),
    # Slack tokens
    (re.compile(r"\bx(?:ox[abpors]|app)-[A-Za-z0-9-]{8,}"), REDACTED),
    # Google OAuth access tokens
    (re.compile(r"\bya29\.[A-Za-z0-9._-]{8,}"), REDACTED),
)


def redact(text: str, *, secrets: Iterable[str] = ()) -> str:
    """``text`` with every recognised credential, and every exact value in ``secrets``, replaced."""
    for value in secrets:
        if value:
            text = text.replace(value, REDACTED)
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


class RedactingFilter(logging.Filter):
    """A handler filter that redacts credentials from the fully formatted message.

    It formats the record once (``msg % args``), redacts the result and stores it back with no
    arguments, so every handler after it sees only the redacted text. Exception text is redacted
    too, because a traceback can quote a request header.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: keep the raw template, drop the arguments
            message = str(record.msg)
        record.msg = redact(message)
        record.args = None
        if record.exc_info and record.exc_info[1] is not None:
            # Render the traceback now so the redacted text is what handlers print.
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True


def install_redaction(logger_names: Iterable[str] = ("", "prefect")) -> None:
    """Attach one :class:`RedactingFilter` to every handler of the named loggers (idempotent).

    Filters on a logger do not see records propagated from child loggers; filters on handlers do,
    which is why the filter goes on the handlers.
    """
    for name in logger_names:
        for handler in logging.getLogger(name).handlers:
            if not any(isinstance(f, RedactingFilter) for f in handler.filters):
                handler.addFilter(RedactingFilter())
