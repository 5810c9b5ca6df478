"""A Slack Web API stand-in: the methods fleetops calls, with Slack's own answers.

fleetops keeps one Slack thread per flow run (a parent message kept current with
``chat.update`` and one reply per step), and a flow must survive Slack being slow, rate
limited or down. This server answers ``auth.test``, ``chat.postMessage``, ``chat.update``,
``conversations.replies`` and ``conversations.history`` as Slack does: HTTP 200 with
``{"ok": true, ...}`` or ``{"ok": false, "error": "<code>"}``, ``ts`` strings such as
``"1700000000.000100"`` that only ever grow, channel ids like ``C0123ABCDE``, HTTP 429 with an
integer ``Retry-After`` when rate limited. Requests may be JSON or form encoded and carry the
token in the ``Authorization`` header or as a ``token`` parameter, as slack_sdk sends them.

Every message is kept (channel, ts, thread_ts, text, blocks, and its edit history) so a test
reads back exactly what a run posted: :meth:`SlackServer.messages` and
:meth:`SlackServer.thread`.

Faults (:class:`SlackFaults`, changed in place at run time): latency, a rate limit (always,
for the next N calls, or as a share of calls), a chosen ``ok: false`` error, and ``outage``.
Outage is the host's job: whoever serves :meth:`SlackServer.app` must close its listener
while ``faults.outage`` is true so new connections are refused; the app's middleware also drops
any request that still arrives (no answer, the connection is closed) so that a kept-alive
connection cannot slip through.

Mount the app at the root: slack_sdk is pointed at ``http://127.0.0.1:PORT/api/``.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import string
import threading
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import parse_qsl

from aiohttp import web

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

#: the fault switches a caller may change (``rng`` is injected at construction only)
SWITCHES = (
    "latency_seconds",
    "rate_limited",
    "rate_limited_calls",
    "retry_after_seconds",
    "error",
    "error_rate",
    "error_rate_error",
    "outage",
)

#: Slack's limit on ``text`` (longer is refused with ``msg_too_long``)
MAX_TEXT = 40_000


class SlackFaultsError(ValueError):
    """A Slack fault switch was given a bad value; ``field`` names the switch."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(f"{field_name}: {message}")
        self.field = field_name
        self.message = message


@dataclass(eq=False)
class SlackFaults:
    """Fault switches for the Slack stand-in (all off by default). Keep the one object."""

    latency_seconds: float = 0.0
    """Added before every API answer."""
    rate_limited: bool = False
    """Every call is answered 429 ``ratelimited`` while on."""
    rate_limited_calls: int = 0
    """The next N calls are answered 429, then service resumes (counts down)."""
    retry_after_seconds: int = 1
    """The integer ``Retry-After`` header sent with every 429."""
    error: str | None = None
    """Every call is answered ``{"ok": false, "error": <this>}`` (e.g. ``channel_not_found``)."""
    error_rate: float = 0.0
    """Share (0..1) of calls answered with ``error_rate_error``."""
    error_rate_error: str = "ratelimited"
    """``ratelimited`` (a 429 with Retry-After) or any Slack error code (an HTTP 200 ok:false)."""
    outage: bool = False
    """The host closes the listener; the app drops requests that still arrive."""
    rng: random.Random = field(default_factory=random.Random, repr=False)
    """Random source for ``error_rate``; pass ``random.Random(seed)`` for determinism."""

    def __post_init__(self) -> None:
        self.update(**{name: getattr(self, name) for name in SWITCHES})

    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in SWITCHES}

    def update(self, **changes: Any) -> dict[str, Any]:
        """Validate every change first, then apply them together; returns :meth:`to_dict`."""
        clean = {name: _validate(name, value) for name, value in changes.items()}
        for name, value in clean.items():
            setattr(self, name, value)
        return self.to_dict()

    def reset(self) -> None:
        """Every switch back to its default (the random source is kept)."""
        fresh = SlackFaults(rng=self.rng)
        self.update(**{name: getattr(fresh, name) for name in SWITCHES})

    def draw(self) -> str | None:
        """The error the next call gets (``"ratelimited"`` or a Slack code), ``None`` to serve it.

        Consumes one of ``rate_limited_calls`` and one draw of the random source when used.
        """
        if self.rate_limited:
            return "ratelimited"
        if self.rate_limited_calls > 0:
            self.rate_limited_calls -= 1
            return "ratelimited"
        if self.error is not None:
            return self.error
        if self.error_rate > 0 and self.rng.random() < self.error_rate:
            return self.error_rate_error
        return None


def _validate(name: str, value: Any) -> Any:
    if name in ("latency_seconds", "error_rate"):
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
        ):
            raise SlackFaultsError(name, f"must be a finite number, got {value!r}")
        if value < 0 or (name == "error_rate" and value > 1):
            raise SlackFaultsError(name, f"out of range: {value!r}")
        return float(value)
    if name in ("rate_limited", "outage"):
        if not isinstance(value, bool):
            raise SlackFaultsError(name, f"must be true or false, got {value!r}")
        return value
    if name in ("rate_limited_calls", "retry_after_seconds"):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise SlackFaultsError(name, f"must be an integer >= 0, got {value!r}")
        return value
    if name in ("error", "error_rate_error"):
        if value is None and name == "error":
            return None
        if not isinstance(value, str) or not value or not set(value) <= _ERROR_CHARS:
            raise SlackFaultsError(
                name, f"must be a Slack error code like 'channel_not_found', got {value!r}"
            )
        return value
    raise SlackFaultsError(name, f"unknown fault switch (known: {', '.join(SWITCHES)})")


_ERROR_CHARS = set(string.ascii_lowercase + string.digits + "_")


@dataclass(frozen=True)
class MessageEdit:
    """A previous version of a message, kept when ``chat.update`` replaced it."""

    text: str
    blocks: tuple[dict[str, Any], ...]
    attachments: tuple[dict[str, Any], ...]
    replaced_at: str
    """The ``ts`` of the edit that replaced this version."""


@dataclass(frozen=True)
class SlackMessage:
    """One message as the server holds it (a snapshot: later edits do not change it)."""

    channel: str
    """Channel id (``C...``)."""
    ts: str
    thread_ts: str | None
    """The parent's ts for a reply; for a parent with replies, its own ts (as Slack shows it)."""
    text: str
    blocks: tuple[dict[str, Any], ...] = ()
    attachments: tuple[dict[str, Any], ...] = ()
    edits: tuple[MessageEdit, ...] = ()
    """Earlier versions, oldest first."""
    reply_broadcast: bool = False

    @property
    def is_reply(self) -> bool:
        return self.thread_ts is not None and self.thread_ts != self.ts

    @property
    def edited(self) -> bool:
        return bool(self.edits)


@dataclass
class _Stored:
    channel: str
    ts: str
    parent_ts: str | None
    text: str
    blocks: list[dict[str, Any]]
    attachments: list[dict[str, Any]]
    reply_broadcast: bool
    edits: list[MessageEdit] = field(default_factory=list)
    edited_ts: str | None = None
    replies: list[str] = field(default_factory=list)


class SlackServer:
    """The Slack Web API stand-in; one workspace, one bot token.

    ``channels`` are names (without ``#``) that exist from the start; more can be added with
    :meth:`add_channel`. ``clock`` gives the seconds used in ``ts`` values.
    """

    def __init__(
        self,
        token: str,
        *,
        rng: random.Random | None = None,
        faults: SlackFaults | None = None,
        channels: Iterable[str] = ("fleetops",),
        team: str = "fleetops-sandbox",
        bot_name: str = "fleetops",
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.token = token
        self._rng = rng or random.Random()
        self.faults = faults or SlackFaults(rng=self._rng)
        self.team = team
        self.bot_name = bot_name
        self.team_id = self._new_id("T")
        self.user_id = self._new_id("U")
        self.bot_id = self._new_id("B")
        self.app_id = self._new_id("A")
        self._clock = clock
        self._lock = threading.Lock()
        self._channels: dict[str, str] = {}  # id -> name
        self._messages: dict[str, dict[str, _Stored]] = {}  # channel id -> ts -> message
        self._last_ts = 0  # microseconds
        for name in channels:
            self.add_channel(name)

    # -- channels and messages (the Python API for tests) ----------------------------------

    def add_channel(self, name: str) -> str:
        """Create a channel (name with or without ``#``); returns its id. Idempotent."""
        name = name.lstrip("#")
        with self._lock:
            for channel_id, known in self._channels.items():
                if known == name:
                    return channel_id
            channel_id = self._new_id("C")
            self._channels[channel_id] = name
            self._messages[channel_id] = {}
            return channel_id

    def channel_id(self, channel: str) -> str:
        """The id of a channel given by name (``#fleetops``, ``fleetops``) or id; KeyError if unknown."""
        with self._lock:
            found = self._resolve(channel, names=True)
        if found is None:
            raise KeyError(channel)
        return found

    def messages(self, channel: str | None = None) -> list[SlackMessage]:
        """Every message (parents and replies), oldest first; of one channel when given."""
        with self._lock:
            if channel is None:
                ids = list(self._channels)
            else:
                found = self._resolve(channel, names=True)
                if found is None:
                    raise KeyError(channel)
                ids = [found]
            stored = [m for cid in ids for m in self._messages[cid].values()]
            return [self._snapshot(m) for m in sorted(stored, key=lambda m: _ts_key(m.ts))]

    def thread(self, channel: str, ts: str) -> list[SlackMessage]:
        """The parent ``ts`` followed by its replies in order; KeyError if there is no such message."""
        with self._lock:
            found = self._resolve(channel, names=True)
            if found is None or ts not in self._messages[found]:
                raise KeyError((channel, ts))
            parent = self._messages[found][ts]
            if parent.parent_ts is not None:
                if parent.parent_ts not in self._messages[found]:
                    return [self._snapshot(parent)]  # a reply to a ts that was never posted
                parent = self._messages[found][parent.parent_ts]
            chain = [parent] + [self._messages[found][r] for r in parent.replies]
            return [self._snapshot(m) for m in chain]

    def clear(self) -> None:
        """Forget every message (channels stay)."""
        with self._lock:
            for bucket in self._messages.values():
                bucket.clear()

    # -- the HTTP app ----------------------------------------------------------------------

    def app(self) -> web.Application:
        """The aiohttp application: ``/api/<method>`` for GET and POST."""
        app = web.Application(middlewares=[self._faults_middleware])
        app.router.add_route("*", "/api/{method}", self._dispatch)
        return app

    @web.middleware
    async def _faults_middleware(
        self, request: web.Request, handler: Handler
    ) -> web.StreamResponse:
        faults = self.faults
        if faults.outage:
            # The host should have closed the listener; a request that still arrives on a
            # kept-alive connection gets no answer at all, like a vanished server.
            if request.transport is not None:
                request.transport.abort()
            raise asyncio.CancelledError
        if faults.latency_seconds > 0:
            await asyncio.sleep(faults.latency_seconds)
        with self._lock:
            error = faults.draw()
        if error == "ratelimited":
            return web.json_response(
                {"ok": False, "error": "ratelimited"},
                status=429,
                headers={"Retry-After": str(faults.retry_after_seconds)},
            )
        if error is not None:
            return _error(error)
        return await handler(request)

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        method = request.match_info["method"]
        try:
            args = await _arguments(request)
        except ValueError:
            return _error("invalid_form_data")
        token = _token(request, args)
        if token is None:
            return _error("not_authed")
        if token != self.token:
            return _error("invalid_auth")
        handler = self._methods().get(method)
        if handler is None:
            return _error("unknown_method", req_method=method)
        with self._lock:
            body = handler(args)
        return web.json_response(body)

    def _methods(self) -> dict[str, Callable[[dict[str, Any]], dict[str, Any]]]:
        return {
            "auth.test": self._auth_test,
            "chat.postMessage": self._post_message,
            "chat.update": self._update,
            "conversations.replies": self._replies,
            "conversations.history": self._history,
        }

    # -- methods (called with the lock held) -----------------------------------------------

    def _auth_test(self, args: dict[str, Any]) -> dict[str, Any]:
        return {
            "ok": True,
            "url": f"https://{self.team}.slack.com/",
            "team": self.team,
            "user": self.bot_name,
            "team_id": self.team_id,
            "user_id": self.user_id,
            "bot_id": self.bot_id,
            "is_enterprise_install": False,
        }

    def _post_message(self, args: dict[str, Any]) -> dict[str, Any]:
        channel = self._resolve(_str(args.get("channel")), names=True)
        if channel is None:
            return {"ok": False, "error": "channel_not_found"}
        content = _content(args)
        if isinstance(content, str):
            return {"ok": False, "error": content}
        text, blocks, attachments = content
        if not text and not blocks and not attachments:
            return {"ok": False, "error": "no_text"}
        bucket = self._messages[channel]
        parent_ts = _str(args.get("thread_ts")) or None
        if parent_ts is not None and parent_ts in bucket and bucket[parent_ts].parent_ts:
            parent_ts = bucket[parent_ts].parent_ts  # a reply to a reply joins the parent's thread
        ts = self._next_ts()
        stored = _Stored(
            channel=channel,
            ts=ts,
            parent_ts=parent_ts,
            text=text,
            blocks=blocks or [],
            attachments=attachments or [],
            reply_broadcast=parent_ts is not None and _truthy(args.get("reply_broadcast")),
        )
        bucket[ts] = stored
        if parent_ts is not None and parent_ts in bucket:
            bucket[parent_ts].replies.append(ts)
        return {"ok": True, "channel": channel, "ts": ts, "message": self._wire(stored)}

    def _update(self, args: dict[str, Any]) -> dict[str, Any]:
        channel = self._resolve(_str(args.get("channel")), names=False)  # ids only, like Slack
        if channel is None:
            return {"ok": False, "error": "channel_not_found"}
        ts = _str(args.get("ts"))
        stored = self._messages[channel].get(ts)
        if stored is None:
            return {"ok": False, "error": "message_not_found"}
        content = _content(args)
        if isinstance(content, str):
            return {"ok": False, "error": content}
        text, blocks, attachments = content
        new_blocks = stored.blocks if blocks is None else blocks  # omitted blocks are kept
        new_attachments = stored.attachments if attachments is None else attachments
        if not text and not new_blocks and not new_attachments:
            return {"ok": False, "error": "no_text"}
        edit_ts = self._next_ts()
        stored.edits.append(
            MessageEdit(
                text=stored.text,
                blocks=tuple(stored.blocks),
                attachments=tuple(stored.attachments),
                replaced_at=edit_ts,
            )
        )
        stored.text, stored.blocks, stored.attachments = text, new_blocks, new_attachments
        stored.edited_ts = edit_ts
        message = self._wire(stored)
        return {"ok": True, "channel": channel, "ts": ts, "text": text, "message": message}

    def _replies(self, args: dict[str, Any]) -> dict[str, Any]:
        channel = self._resolve(_str(args.get("channel")), names=False)
        if channel is None:
            return {"ok": False, "error": "channel_not_found"}
        bucket = self._messages[channel]
        stored = bucket.get(_str(args.get("ts")))
        if stored is None:
            return {"ok": False, "error": "thread_not_found"}
        if stored.parent_ts is not None and stored.parent_ts in bucket:
            stored = bucket[stored.parent_ts]
        chain = [stored] + [bucket[r] for r in stored.replies]
        return {
            "ok": True,
            "messages": [self._wire(m) for m in chain],
            "has_more": False,
            "response_metadata": {"next_cursor": ""},
        }

    def _history(self, args: dict[str, Any]) -> dict[str, Any]:
        channel = self._resolve(_str(args.get("channel")), names=False)
        if channel is None:
            return {"ok": False, "error": "channel_not_found"}
        try:
            limit = int(args.get("limit") or 100)
        except (TypeError, ValueError):
            return {"ok": False, "error": "invalid_limit"}
        visible = [
            m for m in self._messages[channel].values() if m.parent_ts is None or m.reply_broadcast
        ]
        visible.sort(key=lambda m: _ts_key(m.ts), reverse=True)  # newest first, like Slack
        return {
            "ok": True,
            "messages": [self._wire(m) for m in visible[: max(1, min(limit, 999))]],
            "has_more": len(visible) > limit,
            "pin_count": 0,
            "response_metadata": {"next_cursor": ""},
        }

    # -- helpers ---------------------------------------------------------------------------

    def _new_id(self, prefix: str) -> str:
        alphabet = string.ascii_uppercase + string.digits
        return prefix + "0" + "".join(self._rng.choice(alphabet) for _ in range(9))

    def _next_ts(self) -> str:
        """A ``ts`` later than every earlier one (microsecond steps when the clock stalls)."""
        now = int(self._clock() * 1_000_000)
        self._last_ts = max(now, self._last_ts + 1)
        seconds, micros = divmod(self._last_ts, 1_000_000)
        return f"{seconds}.{micros:06d}"

    def _resolve(self, channel: str, *, names: bool) -> str | None:
        if channel in self._channels:
            return channel
        if names:
            name = channel.lstrip("#")
            for channel_id, known in self._channels.items():
                if known == name:
                    return channel_id
        return None

    def _wire(self, m: _Stored) -> dict[str, Any]:
        """A message object as the Web API returns it for a bot's message."""
        wire: dict[str, Any] = {
            "type": "message",
            "user": self.user_id,
            "bot_id": self.bot_id,
            "app_id": self.app_id,
            "team": self.team_id,
            "text": m.text,
            "ts": m.ts,
            "bot_profile": {
                "id": self.bot_id,
                "app_id": self.app_id,
                "name": self.bot_name,
                "team_id": self.team_id,
                "deleted": False,
            },
        }
        if m.blocks:
            wire["blocks"] = m.blocks
        if m.attachments:
            wire["attachments"] = m.attachments
        if m.parent_ts is not None:
            wire["thread_ts"] = m.parent_ts
            wire["parent_user_id"] = self.user_id
            if m.reply_broadcast:
                wire["subtype"] = "thread_broadcast"
        elif m.replies:
            wire["thread_ts"] = m.ts
            wire["reply_count"] = len(m.replies)
            wire["reply_users"] = [self.user_id]
            wire["reply_users_count"] = 1
            wire["latest_reply"] = m.replies[-1]
        if m.edited_ts is not None:
            wire["edited"] = {"user": self.user_id, "ts": m.edited_ts}
        return wire

    def _snapshot(self, m: _Stored) -> SlackMessage:
        thread_ts = m.parent_ts or (m.ts if m.replies else None)
        return SlackMessage(
            channel=m.channel,
            ts=m.ts,
            thread_ts=thread_ts,
            text=m.text,
            blocks=tuple(json.loads(json.dumps(m.blocks))),
            attachments=tuple(json.loads(json.dumps(m.attachments))),
            edits=tuple(replace(e) for e in m.edits),
            reply_broadcast=m.reply_broadcast,
        )


def _ts_key(ts: str) -> tuple[int, int]:
    seconds, _, micros = ts.partition(".")
    return int(seconds), int(micros or 0)


def _error(code: str, **extra: Any) -> web.Response:
    return web.json_response({"ok": False, "error": code, **extra})


async def _arguments(request: web.Request) -> dict[str, Any]:
    """Query parameters merged with a JSON or form body, as Slack reads them."""
    args: dict[str, Any] = dict(request.query)
    if not request.can_read_body:
        return args
    content_type = request.content_type
    if content_type == "multipart/form-data":
        form = await request.post()
        args.update({k: v for k, v in form.items() if isinstance(v, str)})
        return args
    raw = await request.read()
    if content_type == "application/json":
        body = json.loads(raw or b"{}")
        if not isinstance(body, dict):
            raise ValueError("JSON body must be an object")
        args.update(body)
    else:  # application/x-www-form-urlencoded, as slack_sdk sends params
        args.update(parse_qsl(raw.decode("utf-8"), keep_blank_values=True))
    return args


def _token(request: web.Request, args: dict[str, Any]) -> str | None:
    header = request.headers.get("Authorization", "")
    if header[:7].lower() == "bearer ":
        return header[7:].strip() or None
    token = args.get("token")
    return token if isinstance(token, str) and token else None


def _str(value: Any) -> str:
    return value if isinstance(value, str) else "" if value is None else str(value)


def _truthy(value: Any) -> bool:
    return value is True or (isinstance(value, str) and value.lower() in ("1", "true"))


def _content(
    args: dict[str, Any],
) -> tuple[str, list[dict[str, Any]] | None, list[dict[str, Any]] | None] | str:
    """``(text, blocks, attachments)`` from the arguments, or a Slack error code.

    Form-encoded requests carry blocks and attachments as JSON strings; ``None`` means the
    argument was not given (``chat.update`` then keeps the message's current ones).
    """
    text = _str(args.get("text"))
    if len(text) > MAX_TEXT:
        return "msg_too_long"
    parsed: list[list[dict[str, Any]] | None] = []
    for name, error in (("blocks", "invalid_blocks"), ("attachments", "invalid_attachments")):
        value = args.get(name)
        if isinstance(value, str):
            try:
                value = json.loads(value) if value else []
            except ValueError:
                return error
        if value is not None and (
            not isinstance(value, list) or not all(isinstance(b, dict) for b in value)
        ):
            return error
        if name == "blocks" and value and not all(isinstance(b.get("type"), str) for b in value):
            return error
        parsed.append(value)
    return text, parsed[0], parsed[1]
