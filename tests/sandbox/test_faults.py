"""Fault switches: the Faults object itself, then every switch seen by the real client."""

from __future__ import annotations

import json
import random
import socket
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Callable

import kubernetes
import pytest
import urllib3

from sandbox.control import ControlError, FleetControl
from sandbox.fleet import Fleet
from sandbox.kube.faults import SUPPORTED_ERROR_CODES, Faults, FaultsError

ClientFactory = Callable[[str], kubernetes.client.ApiClient]

# -- the Faults object ------------------------------------------------------------------------


def test_defaults_are_all_off() -> None:
    faults = Faults()
    assert faults.to_dict() == {
        "latency_seconds": 0.0,
        "error_rate": 0.0,
        "error_code": 500,
        "retry_after_seconds": 1,
        "outage": False,
        "ready_seconds": None,
        "broken_images": [],
    }
    assert not any(faults.should_fail() for _ in range(100))


def test_update_applies_all_changes_and_returns_the_switches() -> None:
    faults = Faults()
    result = faults.update(
        latency_seconds=0.25, error_rate=1, error_code=429, broken_images=["web:bad"]
    )
    assert result["latency_seconds"] == 0.25
    assert result["error_rate"] == 1.0
    assert result["error_code"] == 429
    assert result["broken_images"] == ["web:bad"]
    assert faults.broken_images == {"web:bad"}
    assert all(faults.should_fail() for _ in range(100))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("latency_seconds", -1),
        ("latency_seconds", "1"),
        ("latency_seconds", float("inf")),
        ("error_rate", 1.5),
        ("error_rate", -0.1),
        ("error_rate", True),
        ("error_code", 404),
        ("error_code", 500.0),
        ("retry_after_seconds", 1.5),
        ("outage", 1),
        ("outage", "yes"),
        ("ready_seconds", -2),
        ("broken_images", "nginx:bad"),
        ("broken_images", [""]),
        ("broken_images", [3]),
        ("no_such_switch", 1),
    ],
)
def test_a_bad_value_is_refused_naming_the_field_and_nothing_changes(
    field: str, value: object
) -> None:
    faults = Faults()
    good = {"error_rate": 0.5} if field == "latency_seconds" else {"latency_seconds": 0.5}
    with pytest.raises(FaultsError) as caught:
        faults.update(**good, **{field: value})
    assert caught.value.field == field
    assert field in str(caught.value)
    assert faults.to_dict() == Faults().to_dict()  # the good change was not applied either


def test_constructor_validates_too() -> None:
    with pytest.raises(FaultsError, match="error_rate"):
        Faults(error_rate=2.0)


def test_is_broken_matches_whole_references_and_tag_suffixes() -> None:
    faults = Faults(broken_images={"registry.local/web:1.2.3", ":broken"})
    assert faults.is_broken("registry.local/web:1.2.3")
    assert not faults.is_broken("registry.local/web:1.2.4")
    assert faults.is_broken("nginx:broken")
    assert not faults.is_broken("nginx:broken2")
    assert not faults.is_broken("nginx:1.27")


def test_the_injected_random_source_makes_the_error_rate_deterministic() -> None:
    first = Faults(error_rate=0.3, rng=random.Random(42))
    second = Faults(error_rate=0.3, rng=random.Random(42))
    draws = [first.should_fail() for _ in range(1000)]
    assert draws == [second.should_fail() for _ in range(1000)]
    assert 250 < sum(draws) < 350


def test_reset_turns_everything_off_and_keeps_the_random_source() -> None:
    rng = random.Random(1)
    faults = Faults(latency_seconds=2, error_rate=1, outage=True, broken_images={":x"}, rng=rng)
    faults.reset()
    assert faults.to_dict() == Faults().to_dict()
    assert faults.rng is rng


@pytest.mark.parametrize(
    ("code", "reason"),
    [(429, "TooManyRequests"), (500, "InternalError"), (503, "ServiceUnavailable"),
     (504, "Timeout")],
)  # fmt: skip
def test_error_status_is_the_apiservers_status(code: int, reason: str) -> None:
    faults = Faults(error_code=code, retry_after_seconds=3)
    status = faults.error_status().to_status()
    assert status["kind"] == "Status"
    assert status["status"] == "Failure"
    assert status["code"] == code
    assert status["reason"] == reason
    assert code in SUPPORTED_ERROR_CODES
    if code == 429:
        assert status["details"] == {"retryAfterSeconds": 3}


# -- switches seen through the official client --------------------------------------------------


def _client_without_retries(kubeconfig: str, context: str) -> kubernetes.client.ApiClient:
    """The official client as kubeconfig builds it, told not to retry (urllib3 retries=False)."""
    configuration = kubernetes.client.Configuration()
    kubernetes.config.load_kube_config(
        config_file=kubeconfig, context=context, client_configuration=configuration
    )
    configuration.retries = False
    return kubernetes.client.ApiClient(configuration)


def _status(exc: kubernetes.client.ApiException) -> dict[str, object]:
    body = json.loads(exc.body)
    assert isinstance(body, dict)
    return body


def test_error_rate_429_answers_too_many_requests_with_retry_after(
    fleet_faults: Fleet, kubeconfig: object
) -> None:
    fleet_faults.set_faults("sbx-02", error_rate=1.0, error_code=429)
    client = _client_without_retries(str(kubeconfig), "sbx-02")
    try:
        with pytest.raises(kubernetes.client.ApiException) as caught:
            kubernetes.client.CoreV1Api(client).list_namespace()
    finally:
        client.close()
    assert caught.value.status == 429
    assert caught.value.headers["Retry-After"] == "1"
    status = _status(caught.value)
    assert status["reason"] == "TooManyRequests"
    assert status["details"] == {"retryAfterSeconds": 1}


def test_the_default_client_honours_retry_after_before_giving_up(
    fleet_faults: Fleet, kube_client: ClientFactory
) -> None:
    # urllib3's default Retry(3) sleeps Retry-After between attempts on a 429
    fleet_faults.set_faults("sbx-02", error_rate=1.0, error_code=429, retry_after_seconds=1)
    api = kubernetes.client.CoreV1Api(kube_client("sbx-02"))
    started = time.monotonic()
    with pytest.raises(kubernetes.client.ApiException) as caught:
        api.list_namespace()
    assert caught.value.status == 429
    assert time.monotonic() - started >= 2.9


@pytest.mark.parametrize(
    ("code", "reason", "exception"),
    [
        (500, "InternalError", kubernetes.client.exceptions.ServiceException),
        (503, "ServiceUnavailable", kubernetes.client.exceptions.ServiceException),
    ],
)
def test_error_rate_5xx_answers_a_status(
    fleet_faults: Fleet,
    kube_client: ClientFactory,
    code: int,
    reason: str,
    exception: type[Exception],
) -> None:
    fleet_faults.set_faults("sbx-03", error_rate=1.0, error_code=code)
    api = kubernetes.client.CoreV1Api(kube_client("sbx-03"))
    with pytest.raises(exception) as caught:
        api.list_namespace()
    assert isinstance(caught.value, kubernetes.client.ApiException)
    assert caught.value.status == code
    assert _status(caught.value)["reason"] == reason
    # the other clusters are untouched
    assert kubernetes.client.CoreV1Api(kube_client("sbx-01")).list_namespace().items


def test_a_partial_error_rate_fails_some_requests_and_serves_the_rest(
    fleet_faults: Fleet, kube_client: ClientFactory
) -> None:
    fleet_faults.set_faults("sbx-01", error_rate=0.5, error_code=500)
    api = kubernetes.client.CoreV1Api(kube_client("sbx-01"))
    statuses = []
    for _ in range(40):
        try:
            api.list_namespace()
            statuses.append(200)
        except kubernetes.client.ApiException as exc:
            statuses.append(exc.status)
    assert set(statuses) == {200, 500}
    assert 5 <= statuses.count(500) <= 35


def test_latency_is_added_to_every_response(
    fleet_faults: Fleet, kube_client: ClientFactory
) -> None:
    api = kubernetes.client.CoreV1Api(kube_client("sbx-01"))
    api.list_namespace()  # connection set up outside the measurement
    started = time.monotonic()
    api.list_namespace()
    baseline = time.monotonic() - started
    fleet_faults.set_faults("sbx-01", latency_seconds=0.4)
    started = time.monotonic()
    api.list_namespace()
    slowed = time.monotonic() - started
    assert slowed >= 0.4
    assert slowed - baseline >= 0.3


def _health(fleet: Fleet, name: str, path: str) -> tuple[int, bytes]:
    context = ssl.create_default_context(cadata=fleet.ca_pem(name).decode())
    request = urllib.request.Request(
        fleet.server(name) + path, headers={"Authorization": f"Bearer {fleet.token(name)}"}
    )
    try:
        with urllib.request.urlopen(request, context=context, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


@pytest.mark.parametrize("path", ["/livez", "/readyz", "/healthz"])
def test_health_endpoints_fail_while_the_cluster_is_degraded(
    fleet_faults: Fleet, path: str
) -> None:
    assert _health(fleet_faults, "sbx-02", path)[0] == 200
    fleet_faults.set_faults("sbx-02", error_rate=1.0, error_code=503)
    code, body = _health(fleet_faults, "sbx-02", path)
    assert code == 503
    assert json.loads(body)["reason"] == "ServiceUnavailable"


def _refused(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(2)
        return sock.connect_ex(("127.0.0.1", port)) != 0


def test_outage_refuses_connections_and_recovery_serves_again_on_the_same_port(
    fleet_faults: Fleet, kube_client: ClientFactory
) -> None:
    api = kubernetes.client.CoreV1Api(kube_client("sbx-03"))
    api.list_namespace()  # leaves a kept-alive connection in the pool: it must not survive
    port = fleet_faults.port("sbx-03")
    fleet_faults.outage("sbx-03", True)
    assert _refused(port)
    with pytest.raises(urllib3.exceptions.MaxRetryError) as caught:
        api.list_namespace()
    assert isinstance(caught.value.reason, urllib3.exceptions.NewConnectionError)
    assert "Connection refused" in str(caught.value.reason)
    # the other clusters keep serving
    assert kubernetes.client.CoreV1Api(kube_client("sbx-01")).list_namespace().items

    fleet_faults.outage("sbx-03", False)
    assert fleet_faults.port("sbx-03") == port
    assert not _refused(port)
    assert api.list_namespace().items


def test_switches_through_the_control_endpoint(
    fleet_faults: Fleet, kube_client: ClientFactory
) -> None:
    control = FleetControl(fleet_faults.control_url)
    api = kubernetes.client.CoreV1Api(kube_client("sbx-02"))
    switched = control.set_faults("sbx-02", error_rate=1, error_code=503)
    assert switched["error_rate"] == 1.0
    assert fleet_faults.faults("sbx-02").error_code == 503
    with pytest.raises(kubernetes.client.ApiException) as caught:
        api.list_namespace()
    assert caught.value.status == 503

    control.reset_faults("sbx-02")
    assert api.list_namespace().items

    control.outage("sbx-02", True)
    assert control.cluster("sbx-02")["listening"] is False
    with pytest.raises(urllib3.exceptions.MaxRetryError):
        api.list_namespace()
    control.outage("sbx-02", False)
    assert api.list_namespace().items

    with pytest.raises(ControlError) as refused:
        control.set_faults("sbx-02", error_rate=7)
    assert refused.value.status == 400
    assert refused.value.field == "error_rate"


def test_the_cluster_reads_the_same_faults_object_the_fleet_switches(
    fleet_faults: Fleet,
) -> None:
    fleet_faults.set_faults("sbx-01", broken_images=[":never"], ready_seconds=5)
    faults = fleet_faults.cluster("sbx-01").faults
    assert faults is fleet_faults.faults("sbx-01")
    assert faults.is_broken("web:never")
    assert faults.ready_seconds == 5.0


def test_an_outage_cuts_an_open_watch(fleet_faults: Fleet, kube_client: ClientFactory) -> None:
    api = kubernetes.client.CoreV1Api(kube_client("sbx-02"))
    stream = kubernetes.watch.Watch().stream(api.list_namespace, timeout_seconds=60)
    first = next(stream)  # the ADDED events of the existing namespaces arrive at once
    assert first["type"] == "ADDED"
    fleet_faults.outage("sbx-02", True)
    started = time.monotonic()
    with pytest.raises(urllib3.exceptions.HTTPError):
        for _ in stream:
            pass
    assert time.monotonic() - started < 10
