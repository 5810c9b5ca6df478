"""The Slack stand-in driven by the real slack_sdk WebClient over loopback HTTP.

Assertions are on what the server ended up holding (messages, threads, edits) and on what
slack_sdk itself raised or retried, never on calls.
"""

from __future__ import annotations

import random
import re
import time
import urllib.error
from collections.abc import Iterator
from http.client import RemoteDisconnected

import pytest
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry import FixedValueRetryIntervalCalculator
from slack_sdk.http_retry.builtin_handlers import (
    ConnectionErrorRetryHandler,
    RateLimitErrorRetryHandler,
)

from sandbox.slack import SlackFaults, SlackFaultsError, SlackServer
from tests.support.hosting import host_app

TOKEN = "xoxb-sandbox-0000-fleetops"
TS = re.compile(r"^\d{10}\.\d{6}$")


@pytest.fixture(scope="module")
def hosted() -> Iterator[tuple[SlackServer, str]]:
    server = SlackServer(TOKEN, rng=random.Random(7), channels=("fleetops", "alerts"))
    base_url, stop = host_app(server.app())
    yield server, f"{base_url}/api/"
    stop()


@pytest.fixture
def server(hosted: tuple[SlackServer, str]) -> Iterator[SlackServer]:
    slack, _ = hosted
    slack.faults.reset()
    slack.clear()
    yield slack
    slack.faults.reset()


@pytest.fixture
def api_url(hosted: tuple[SlackServer, str]) -> str:
    return hosted[1]


@pytest.fixture
def client(server: SlackServer, api_url: str) -> WebClient:
    return WebClient(token=TOKEN, base_url=api_url, retry_handlers=[])


# -- methods and shapes -------------------------------------------------------------------


def test_auth_test_names_the_bot_and_team(server: SlackServer, client: WebClient) -> None:
    response = client.auth_test()
    assert response["ok"] is True
    assert response["team"] == "fleetops-sandbox"
    assert response["user_id"] == server.user_id
    assert response["user_id"].startswith("U")
    assert response["bot_id"].startswith("B")
    assert response["url"] == "https://fleetops-sandbox.slack.com/"


def test_a_wrong_token_is_invalid_auth_and_no_token_is_not_authed(
    server: SlackServer, api_url: str
) -> None:
    with pytest.raises(SlackApiError) as wrong:
        WebClient(token="xoxb-wrong", base_url=api_url).chat_postMessage(
            channel="#fleetops", text="hi"
        )
    assert wrong.value.response["error"] == "invalid_auth"
    assert wrong.value.response.status_code == 200
    with pytest.raises(SlackApiError) as missing:
        WebClient(base_url=api_url).auth_test()
    assert missing.value.response["error"] == "not_authed"
    assert server.messages() == []


def test_post_by_channel_name_answers_with_the_channel_id_and_a_ts(
    server: SlackServer, client: WebClient
) -> None:
    response = client.chat_postMessage(channel="#fleetops", text="rollout hello 1.2.0 started")
    channel_id = server.channel_id("fleetops")
    assert re.fullmatch(r"C0[A-Z0-9]{9}", channel_id)
    assert response["channel"] == channel_id
    assert TS.match(response["ts"])
    assert response["message"]["text"] == "rollout hello 1.2.0 started"
    assert response["message"]["bot_id"] == server.bot_id
    assert "thread_ts" not in response["message"]
    [held] = server.messages("#fleetops")
    assert (held.channel, held.ts, held.thread_ts, held.text) == (
        channel_id,
        response["ts"],
        None,
        "rollout hello 1.2.0 started",
    )
    assert server.messages("alerts") == []


def test_a_thread_keeps_its_replies_in_order_and_reads_back(
    server: SlackServer, client: WebClient
) -> None:
    parent = client.chat_postMessage(channel="#fleetops", text="run 42")
    channel, parent_ts = parent["channel"], parent["ts"]
    first = client.chat_postMessage(channel=channel, thread_ts=parent_ts, text="wave 1 done")
    # a reply addressed to a reply joins the parent's thread, as in Slack
    second = client.chat_postMessage(channel=channel, thread_ts=first["ts"], text="wave 2 done")
    assert first["message"]["thread_ts"] == parent_ts
    assert second["message"]["thread_ts"] == parent_ts
    tss = [parent_ts, first["ts"], second["ts"]]
    assert tss == sorted(tss, key=float)
    assert len(set(tss)) == 3

    thread = server.thread("#fleetops", parent_ts)
    assert [(m.ts, m.text, m.thread_ts) for m in thread] == [
        (parent_ts, "run 42", parent_ts),
        (first["ts"], "wave 1 done", parent_ts),
        (second["ts"], "wave 2 done", parent_ts),
    ]
    assert [m.is_reply for m in thread] == [False, True, True]

    replies = client.conversations_replies(channel=channel, ts=parent_ts)
    assert [m["text"] for m in replies["messages"]] == ["run 42", "wave 1 done", "wave 2 done"]
    assert replies["messages"][0]["reply_count"] == 2
    assert replies["messages"][0]["latest_reply"] == second["ts"]

    history = client.conversations_history(channel=channel)
    assert [m["ts"] for m in history["messages"]] == [parent_ts]  # replies stay in the thread


def test_update_replaces_the_text_keeps_history_and_omitted_blocks(
    server: SlackServer, client: WebClient
) -> None:
    blocks = [{"type": "section", "text": {"type": "mrkdwn", "text": "*run 42*: running"}}]
    parent = client.chat_postMessage(channel="#fleetops", text="run 42: running", blocks=blocks)
    updated = client.chat_update(channel=parent["channel"], ts=parent["ts"], text="run 42: done")
    assert updated["ts"] == parent["ts"]
    assert updated["text"] == "run 42: done"
    assert updated["message"]["edited"]["user"] == server.user_id

    [held] = server.messages()
    assert held.text == "run 42: done"
    assert list(held.blocks) == blocks  # omitted blocks are kept, like chat.update does
    assert [e.text for e in held.edits] == ["run 42: running"]
    assert float(held.edits[0].replaced_at) > float(held.ts)

    client.chat_update(
        channel=parent["channel"], ts=parent["ts"], text="run 42: rolled back", blocks=[]
    )
    [held] = server.messages()
    assert held.blocks == ()
    assert [e.text for e in held.edits] == ["run 42: running", "run 42: done"]


@pytest.mark.parametrize(
    ("call", "error"),
    [
        (lambda c, ch, ts: c.chat_postMessage(channel="#nowhere", text="x"), "channel_not_found"),
        (lambda c, ch, ts: c.chat_postMessage(channel=ch, text=""), "no_text"),
        (
            lambda c, ch, ts: c.chat_update(channel="#fleetops", ts=ts, text="x"),
            "channel_not_found",
        ),
        (lambda c, ch, ts: c.chat_update(channel=ch, ts="1.000001", text="x"), "message_not_found"),
        (lambda c, ch, ts: c.conversations_replies(channel=ch, ts="1.000001"), "thread_not_found"),
        (lambda c, ch, ts: c.api_call("chat.delete.everything"), "unknown_method"),
    ],
    ids=[
        "post-unknown-channel",
        "no-text",
        "update-by-name",
        "update-unknown-ts",
        "replies",
        "method",
    ],
)
@pytest.mark.filterwarnings("ignore:The top-level `text` argument is missing:UserWarning")
def test_slack_errors_raise_slack_api_error(
    server: SlackServer, client: WebClient, call, error
) -> None:
    parent = client.chat_postMessage(channel="#fleetops", text="parent")
    with pytest.raises(SlackApiError) as raised:
        call(client, parent["channel"], parent["ts"])
    assert raised.value.response["ok"] is False
    assert raised.value.response["error"] == error
    assert [m.text for m in server.messages()] == ["parent"]


def test_form_encoded_requests_with_the_token_as_a_parameter(
    server: SlackServer, api_url: str
) -> None:
    # slack_sdk sends `params=` form-encoded; blocks then travel as a JSON string
    anonymous = WebClient(base_url=api_url, retry_handlers=[])
    response = anonymous.api_call(
        "chat.postMessage",
        params={
            "token": TOKEN,
            "channel": "alerts",
            "text": "form encoded",
            "blocks": '[{"type": "divider"}]',
        },
    )
    assert response["ok"] is True
    [held] = server.messages("#alerts")
    assert held.text == "form encoded"
    assert held.blocks == ({"type": "divider"},)


def test_ts_values_only_grow_even_when_the_clock_stalls(api_url: str) -> None:
    frozen = SlackServer(TOKEN, rng=random.Random(1), clock=lambda: 1_700_000_000.0)
    base_url, stop = host_app(frozen.app())
    try:
        client = WebClient(token=TOKEN, base_url=f"{base_url}/api/", retry_handlers=[])
        tss = [client.chat_postMessage(channel="#fleetops", text=str(i))["ts"] for i in range(3)]
    finally:
        stop()
    assert tss == ["1700000000.000000", "1700000000.000001", "1700000000.000002"]


# -- faults -------------------------------------------------------------------------------


def test_rate_limit_without_a_retry_handler_raises_with_status_429(
    server: SlackServer, client: WebClient
) -> None:
    server.faults.update(rate_limited=True, retry_after_seconds=7)
    with pytest.raises(SlackApiError) as raised:
        client.chat_postMessage(channel="#fleetops", text="dropped")
    response = raised.value.response
    assert response.status_code == 429
    assert response["error"] == "ratelimited"
    assert response.headers["Retry-After"] == "7"
    assert server.messages() == []


def test_rate_limit_retry_handler_waits_retry_after_then_succeeds(
    server: SlackServer, api_url: str
) -> None:
    client = WebClient(
        token=TOKEN,
        base_url=api_url,
        retry_handlers=[RateLimitErrorRetryHandler(max_retry_count=2)],
    )
    server.faults.update(rate_limited_calls=1, retry_after_seconds=1)
    began = time.monotonic()
    response = client.chat_postMessage(channel="#fleetops", text="after the limit")
    elapsed = time.monotonic() - began
    assert response["ok"] is True
    assert elapsed >= 1.0  # slack_sdk really slept Retry-After before retrying
    assert server.faults.rate_limited_calls == 0
    assert [m.text for m in server.messages()] == ["after the limit"]  # posted exactly once


def test_error_switch_answers_ok_false_with_the_chosen_error(
    server: SlackServer, client: WebClient
) -> None:
    server.faults.update(error="channel_not_found")
    with pytest.raises(SlackApiError) as raised:
        client.chat_postMessage(channel="#fleetops", text="x")
    assert raised.value.response.status_code == 200
    assert raised.value.response["error"] == "channel_not_found"
    server.faults.update(error=None)
    assert client.chat_postMessage(channel="#fleetops", text="y")["ok"] is True
    assert [m.text for m in server.messages()] == ["y"]


def test_error_rate_follows_the_injected_random_source(
    server: SlackServer, client: WebClient
) -> None:
    server.faults.rng.seed(1234)
    server.faults.update(error_rate=0.5, error_rate_error="internal_error")
    outcomes = []
    for i in range(12):
        try:
            client.chat_postMessage(channel="#fleetops", text=str(i))
            outcomes.append("ok")
        except SlackApiError as exc:
            outcomes.append(exc.response["error"])
    replay = random.Random(1234)
    expected = ["internal_error" if replay.random() < 0.5 else "ok" for _ in range(12)]
    assert outcomes == expected
    assert "ok" in outcomes
    assert "internal_error" in outcomes
    assert len(server.messages()) == outcomes.count("ok")


def test_latency_delays_every_answer(server: SlackServer, client: WebClient) -> None:
    server.faults.update(latency_seconds=0.3)
    began = time.monotonic()
    client.auth_test()
    assert time.monotonic() - began >= 0.3


def test_outage_drops_requests_and_slack_sdk_sees_a_connection_error(
    server: SlackServer, api_url: str
) -> None:
    client = WebClient(
        token=TOKEN,
        base_url=api_url,
        retry_handlers=[
            ConnectionErrorRetryHandler(
                max_retry_count=1, interval_calculator=FixedValueRetryIntervalCalculator(0.05)
            )
        ],
    )
    server.faults.update(outage=True)
    with pytest.raises((urllib.error.URLError, ConnectionError, RemoteDisconnected)):
        client.chat_postMessage(channel="#fleetops", text="lost")
    server.faults.update(outage=False)
    assert client.chat_postMessage(channel="#fleetops", text="back")["ok"] is True
    assert [m.text for m in server.messages()] == ["back"]


def test_fault_switches_are_validated_before_anything_changes() -> None:
    faults = SlackFaults(rng=random.Random(0))
    with pytest.raises(SlackFaultsError) as raised:
        faults.update(rate_limited=True, error_rate=1.5)
    assert raised.value.field == "error_rate"
    assert faults.rate_limited is False
    with pytest.raises(SlackFaultsError):
        faults.update(error="Not A Code")
    with pytest.raises(SlackFaultsError):
        faults.update(retry_after_seconds=1.5)
    with pytest.raises(SlackFaultsError):
        faults.update(bogus=True)
    assert faults.update(rate_limited_calls=2)["rate_limited_calls"] == 2
