"""Slack through slack_sdk: one thread per flow run, and a notifier that never fails a flow.

:class:`SlackClient` is a thin face over ``slack_sdk.WebClient`` (``base_url`` from settings, so
the sandbox's stand-in or Slack itself): ``chat.postMessage`` and ``chat.update``. Rate limits
(HTTP 429) are retried by slack_sdk's own ``RateLimitErrorRetryHandler`` after the server's
``Retry-After``, a bounded number of times and only when the wait is short
(``max_retry_after_seconds``); connection errors get slack_sdk's one default retry. Whatever
still fails becomes a fleetops error (:class:`~fleetops.errors.RateLimited`,
:class:`~fleetops.errors.AuthError`, :class:`~fleetops.errors.Unreachable`, ...).

:class:`Notifier` is what flows use: the first message starts the run's thread (the parent),
``reply`` adds one message per step under it, ``update`` keeps the parent current with
``chat.update``. Every failure is logged (redacted) and swallowed: Slack being slow, rate limited
or down never fails a flow. With no token configured it does nothing at all.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from pydantic import SecretStr
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError, SlackClientError, SlackRequestError
from slack_sdk.http_retry import HttpRequest, HttpResponse, RetryState
from slack_sdk.http_retry.builtin_handlers import (
    ConnectionErrorRetryHandler,
    RateLimitErrorRetryHandler,
)

from fleetops.clients._common import clean
from fleetops.errors import (
    AuthError,
    ClientError,
    NotFound,
    RateLimited,
    Rejected,
    TransientError,
    Unreachable,
)
from fleetops.settings import SlackSettings

log = logging.getLogger(__name__)

SYSTEM = "slack"

_AUTH_ERRORS = frozenset(
    {"not_authed", "invalid_auth", "account_inactive", "token_revoked", "token_expired"}
)
_NOT_FOUND_ERRORS = frozenset({"channel_not_found", "message_not_found", "thread_not_found"})
_TRANSIENT_ERRORS = frozenset({"internal_error", "fatal_error", "service_unavailable"})


class _BoundedRateLimitHandler(RateLimitErrorRetryHandler):
    """slack_sdk's 429 handler, but only for waits of at most ``max_wait`` seconds."""

    def __init__(self, *, max_retry_count: int, max_wait: float) -> None:
        super().__init__(max_retry_count=max_retry_count)
        self.max_wait = max_wait

    def _can_retry(
        self,
        *,
        state: RetryState,
        request: HttpRequest,
        response: HttpResponse | None = None,
        error: Exception | None = None,
    ) -> bool:
        if response is None or response.status_code != 429:
            return False
        for key, values in response.headers.items():
            if key.lower() == "retry-after":
                try:
                    return float(values[0]) <= self.max_wait
                except (ValueError, IndexError, TypeError):
                    return True
        return True


def slack_error(
    exc: SlackClientError, *, context: str, secrets: tuple[str, ...] = ()
) -> ClientError:
    """The fleetops error for a slack_sdk exception."""
    if isinstance(exc, SlackApiError):
        response = exc.response
        status = int(getattr(response, "status_code", 0) or 0)
        code = str(response.get("error", "") if response is not None else "") or "error"
        message = f"{context}: {code}"
        if status == 429 or code == "ratelimited":
            retry_after = None
            headers = getattr(response, "headers", {}) or {}
            for key, value in headers.items():
                if key.lower() == "retry-after":
                    try:
                        retry_after = float(value[0] if isinstance(value, list) else value)
                    except (TypeError, ValueError):
                        retry_after = None
            return RateLimited(message, system=SYSTEM, retry_after=retry_after)
        if code in _AUTH_ERRORS:
            return AuthError(message, system=SYSTEM, status=status or None)
        if code in _NOT_FOUND_ERRORS:
            return NotFound(message, system=SYSTEM, status=status or None)
        if status >= 500 or code in _TRANSIENT_ERRORS:
            return TransientError(message, system=SYSTEM, status=status or None)
        return Rejected(message, system=SYSTEM, status=status or None)
    text = clean(exc, secrets=secrets)
    if isinstance(exc, SlackRequestError):
        return Rejected(f"{context}: {text}", system=SYSTEM)
    return Unreachable(f"{context}: {text}", system=SYSTEM)


class SlackClient:
    """``chat.postMessage`` and ``chat.update`` on one channel, errors as fleetops errors."""

    def __init__(
        self,
        *,
        token: SecretStr,
        channel: str,
        base_url: str = "https://slack.com/api/",
        timeout_seconds: float = 10.0,
        rate_limit_retries: int = 2,
        max_retry_after_seconds: float = 30.0,
    ) -> None:
        self.channel = channel
        self._secret = token.get_secret_value()
        self._client = WebClient(
            token=self._secret,
            base_url=base_url,
            timeout=max(1, round(timeout_seconds)),
            retry_handlers=[
                ConnectionErrorRetryHandler(max_retry_count=1),
                _BoundedRateLimitHandler(
                    max_retry_count=rate_limit_retries, max_wait=max_retry_after_seconds
                ),
            ],
            logger=logging.getLogger(f"{__name__}.sdk"),
        )

    @classmethod
    def from_settings(cls, slack: SlackSettings) -> SlackClient | None:
        """A client as configured by ``FLEETOPS_SLACK_*``; None when no token is set."""
        if slack.token is None or not slack.token.get_secret_value():
            return None
        return cls(
            token=slack.token,
            channel=slack.channel,
            base_url=str(slack.base_url),
            timeout_seconds=slack.timeout_seconds,
            rate_limit_retries=slack.rate_limit_retries,
            max_retry_after_seconds=slack.max_retry_after_seconds,
        )

    def _call(self, context: str, method: str, **kwargs: Any) -> dict[str, Any]:
        try:
            response = getattr(self._client, method)(**kwargs)
        except (SlackClientError, OSError) as exc:
            if isinstance(exc, SlackClientError):
                raise slack_error(exc, context=context, secrets=(self._secret,)) from exc
            raise Unreachable(
                f"{context}: {clean(exc, secrets=(self._secret,))}", system=SYSTEM
            ) from exc
        return dict(response.data) if isinstance(response.data, dict) else {}

    def post(self, text: str, *, thread_ts: str | None = None) -> tuple[str, str]:
        """Post ``text`` (mrkdwn); returns ``(channel id, ts)``. A reply when ``thread_ts``."""
        kwargs: dict[str, Any] = {"channel": self.channel, "text": text, "mrkdwn": True}
        if thread_ts is not None:
            kwargs["thread_ts"] = thread_ts
        data = self._call("chat.postMessage", "chat_postMessage", **kwargs)
        return str(data.get("channel", self.channel)), str(data["ts"])

    def update(self, *, channel: str, ts: str, text: str) -> None:
        """Replace the text of the message ``ts`` in ``channel`` (a channel id)."""
        self._call("chat.update", "chat_update", channel=channel, ts=ts, text=text)


class Notifier:
    """One Slack thread per flow run; never raises.

    ``start`` (or the first ``reply``) posts the parent message; ``reply`` posts under it;
    ``update`` rewrites the parent. ``run_url`` (the flow run in the Prefect UI) is appended to
    the parent. Without a client every method is a no-op. Thread-safe.
    """

    def __init__(self, client: SlackClient | None, *, run_url: str | None = None) -> None:
        self.client = client
        self.run_url = run_url
        self.channel: str | None = None
        self.ts: str | None = None
        self.failures: list[str] = []
        """Redacted messages of every Slack call that failed (for logs and tests)."""
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.client is not None

    def _parent_text(self, text: str) -> str:
        if self.run_url and self.run_url not in text:
            return f"{text}\n<{self.run_url}|Open the flow run>"
        return text

    def _safely(self, what: str, action: Any) -> bool:
        try:
            action()
        except ClientError as exc:
            message = clean(exc)
            self.failures.append(message)
            log.warning("Slack %s failed (the flow goes on): %s", what, message)
            return False
        except Exception as exc:  # a notification must never fail a flow, whatever happens
            message = clean(f"{type(exc).__name__}: {exc}")
            self.failures.append(message)
            log.warning("Slack %s failed unexpectedly (the flow goes on): %s", what, message)
            return False
        return True

    def start(self, text: str) -> bool:
        """Post the parent message of the thread (once); False if Slack is off or failed."""
        client = self.client
        if client is None:
            return False
        with self._lock:
            if self.ts is not None:
                return True

            def post() -> None:
                self.channel, self.ts = client.post(self._parent_text(text))

            return self._safely("chat.postMessage", post)

    def reply(self, text: str) -> bool:
        """Post ``text`` in the thread (starting it with ``text`` if there is none yet)."""
        client = self.client
        if client is None:
            return False
        if self.ts is None:
            return self.start(text)
        with self._lock:
            ts = self.ts
            return self._safely("reply", lambda: client.post(text, thread_ts=ts))

    def update(self, text: str) -> bool:
        """Rewrite the parent message (posting it if it was never posted)."""
        client = self.client
        if client is None:
            return False
        if self.ts is None or self.channel is None:
            return self.start(text)
        with self._lock:
            channel, ts = self.channel, self.ts
            return self._safely(
                "chat.update",
                lambda: client.update(channel=channel, ts=ts, text=self._parent_text(text)),
            )
