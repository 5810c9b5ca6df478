"""Credentials never reach log output or text we show."""

from __future__ import annotations

import io
import logging

import pytest

from fleetops.redaction import REDACTED, RedactingFilter, install_redaction, redact

SECRETS = {
    "bearer header": ("Authorization: Bearer abcdefghijklmnop1234", "abcdefghijklmnop1234"),
    "vault token": (
        "login gave hvs.CAESIJ3rAnd0mT0k3nValu3xyzABCDEF",
        "hvs.CAESIJ3rAnd0mT0k3nValu3xyzABCDEF",
    ),
    "legacy vault token": ("token s.AbCdEfGhIjKlMnOpQrStUvWx1 ok", "s.AbCdEfGhIjKlMnOpQrStUvWx1"),
    "vault header": ("X-Vault-Token: root-token-for-dev", "root-token-for-dev"),
    "slack bot token": ("posting with xoxb-1234-5678-AbCdEfGhIj", "xoxb-1234-5678-AbCdEfGhIj"),
    "eks token": (
        "k8s-aws-v1.aHR0cHM6Ly9zdHMuYW1hem9uYXdzLmNvbS8_QWN0aW9u",
        "aHR0cHM6Ly9zdHMuYW1hem9uYXdzLmNvbS8",
    ),
    "jwt": (
        "sa token eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzeXN0ZW06c2EifQ.c2lnbmF0dXJl end",
        "eyJzdWIiOiJzeXN0ZW06c2EifQ",
    ),
    "google token": ("ya29.a0AfH6SMBxYz-123_abc", "ya29.a0AfH6SMBxYz-123_abc"),
    "json token field": ('{"token": "s3cr3t-value-here"}', "s3cr3t-value-here"),
    "client secret pair": ("client_secret=Zm9vYmFyYmF6cXV4", "Zm9vYmFyYmF6cXV4"),
}


@pytest.mark.parametrize(("text", "secret"), SECRETS.values(), ids=SECRETS.keys())
def test_redact_removes_known_token_shapes(text: str, secret: str) -> None:
    out = redact(text)
    assert secret not in out
    assert REDACTED in out


def test_redact_removes_explicit_secret_values_and_keeps_ordinary_text() -> None:
    out = redact("connected to 127.0.0.1:6443 with p4ssw0rd-literal", secrets=["p4ssw0rd-literal"])
    assert out == f"connected to 127.0.0.1:6443 with {REDACTED}"
    assert redact("cluster eks/123/eu-west-1/prod ready in 3.2s") == (
        "cluster eks/123/eu-west-1/prod ready in 3.2s"
    )


def _logger_with_handler(name: str) -> tuple[logging.Logger, io.StringIO, logging.Handler]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    logger = logging.getLogger(name)
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    return logger, stream, handler


def test_filter_redacts_arguments_and_tracebacks() -> None:
    logger, stream, handler = _logger_with_handler("fleetops.test.redaction")
    handler.addFilter(RedactingFilter())
    try:
        logger.info("calling %s with %s", "https://127.0.0.1:6443", "Bearer zzzzzzzzzzzzzzzzzzzz")
        try:
            raise RuntimeError("request failed: X-Vault-Token: hvs.leakedleakedleakedleaked")
        except RuntimeError:
            logger.exception("vault call failed")
    finally:
        logger.removeHandler(handler)
    out = stream.getvalue()
    assert "zzzzzzzzzzzzzzzzzzzz" not in out
    assert "leakedleakedleakedleaked" not in out
    assert "https://127.0.0.1:6443" in out
    assert "RuntimeError" in out  # the traceback is kept, only the token goes


def test_install_redaction_covers_records_propagated_from_children() -> None:
    parent, stream, handler = _logger_with_handler("fleetops.test.parent")
    try:
        install_redaction(["fleetops.test.parent"])
        install_redaction(["fleetops.test.parent"])  # idempotent
        assert sum(isinstance(f, RedactingFilter) for f in handler.filters) == 1
        logging.getLogger("fleetops.test.parent.child").warning("slack token xoxb-99-88-abcdefghij")
    finally:
        parent.removeHandler(handler)
    assert "abcdefghij" not in stream.getvalue()
    assert REDACTED in stream.getvalue()
