"""The fleet: many clusters in one process, the files it writes, auth, control, the CLI."""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import socket
import ssl
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import kubernetes
import pytest
import urllib3
import yaml

from sandbox.control import ControlError, FleetControl
from sandbox.fleet import (
    SERVICES,
    Fleet,
    UnknownClusterError,
    UnknownServiceError,
    cluster_names,
    read_env_file,
    username,
)
from sandbox.kube.faults import FaultsError
from sandbox.placement import place
from tests.support.processes import read_line, refused, sandbox_up

ClientFactory = Callable[[str], kubernetes.client.ApiClient]
REPO = Path(__file__).resolve().parents[2]


def _get(fleet: Fleet, name: str, path: str, token: str | None) -> tuple[int, dict[str, object]]:
    """GET over TLS trusting only ``name``'s CA, with ``token`` (or none)."""
    context = ssl.create_default_context(cadata=fleet.ca_pem(name).decode())
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    request = urllib.request.Request(fleet.server(name) + path, headers=headers)
    try:
        with urllib.request.urlopen(request, context=context, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _client_with_token(fleet: Fleet, name: str, token: str) -> kubernetes.client.ApiClient:
    """The official client for cluster ``name`` (its CA) but presenting ``token``."""
    configuration = kubernetes.client.Configuration(
        host=fleet.server(name),
        api_key={"BearerToken": token},
        api_key_prefix={"BearerToken": "Bearer"},
    )
    configuration.ca_cert_data = fleet.ca_pem(name).decode()
    configuration.retries = False
    return kubernetes.client.ApiClient(configuration)


# -- names --------------------------------------------------------------------------------------


def test_cluster_names_are_zero_padded_to_the_fleet_size() -> None:
    assert cluster_names(3) == ["sbx-01", "sbx-02", "sbx-03"]
    twelve = cluster_names(12)
    assert twelve[0] == "sbx-01"
    assert twelve[-1] == "sbx-12"
    assert cluster_names(200)[0] == "sbx-001"
    assert cluster_names(200)[-1] == "sbx-200"
    assert cluster_names(2, prefix="edge") == ["edge-01", "edge-02"]
    with pytest.raises(ValueError, match="at least one"):
        cluster_names(0)


# -- placement -----------------------------------------------------------------------------------


def test_placement_spreads_a_dozen_clusters_over_every_source() -> None:
    placements = place(12)
    assert [p.name for p in placements] == [
        "eks-prod-use1-01", "gke-prod-usc1-01", "aks-prod-eus-01", "static-lab-01",
        "static-dc1-01", "eks-staging-usw2-01", "gke-staging-euw1b-01", "aks-staging-weu-01",
        "static-lab-02", "static-dc2-01", "eks-prod-euw1-01", "gke-prod-ase1-01",
    ]  # fmt: skip
    assert place(12) == placements  # deterministic
    eks = [p for p in placements if p.source == "eks"]
    assert {p.location for p in eks} == {"us-east-1", "us-west-2", "eu-west-1"}
    assert {p.account for p in eks} == {"111111111111", "222222222222"}
    assert all(set(p.labels) == {"env", "team"} for p in eks)
    assert {p.account for p in placements if p.source == "gke"} == {
        "fleetops-prod",
        "fleetops-staging",
    }
    assert len({p.account for p in placements if p.source == "aks"}) == 2
    assert placements[0].id == "eks/111111111111/us-east-1/eks-prod-use1-01"
    assert placements[2].resource_group == "rg-prod-eastus"
    assert placements[3].id == "static/kubeconfig/static/static-lab-01"
    assert placements[4].id == "static/on-prem/dc1/static-dc1-01"


def test_placement_of_a_thousand_clusters_covers_every_account_and_location() -> None:
    placements = place(1000)
    assert len({p.name for p in placements}) == 1000
    by_source: dict[str, set[tuple[str, str]]] = {}
    counts: dict[str, int] = {}
    for p in placements:
        by_source.setdefault(p.source, set()).add((p.account, p.location))
        counts[p.source] = counts.get(p.source, 0) + 1
    assert counts == dict.fromkeys(("eks", "gke", "aks", "kubeconfig", "fleet-file"), 200)
    assert len(by_source["eks"]) == len(by_source["gke"]) == len(by_source["aks"]) == 6
    assert len(by_source["fleet-file"]) == 2
    assert all(p.name.startswith(p.provider + "-") for p in placements)


def test_placement_without_cloud_providers_is_the_plain_static_fleet() -> None:
    assert [p.name for p in place(3, providers=())] == ["sbx-01", "sbx-02", "sbx-03"]
    assert {p.source for p in place(3, providers=())} == {"kubeconfig"}
    only_gke = place(6, providers=("gke",))
    assert [p.source for p in only_gke] == ["gke", "kubeconfig", "fleet-file"] * 2
    with pytest.raises(ValueError, match="unknown cloud provider"):
        place(3, providers=("openstack",))
    with pytest.raises(ValueError, match="unknown service"):
        Fleet(3, services=["route53"])


# -- the running fleet ---------------------------------------------------------------------------


def test_every_cluster_listens_on_its_own_port_with_its_own_ca_and_token(fleet: Fleet) -> None:
    assert fleet.names == ["sbx-01", "sbx-02", "sbx-03"]
    ports = {fleet.port(name) for name in fleet.names}
    assert len(ports) == 3
    assert 0 not in ports
    assert len({fleet.ca_pem(name) for name in fleet.names}) == 3
    assert len({fleet.token(name) for name in fleet.names}) == 3
    for name in fleet.names:
        assert fleet.server(name) == f"https://127.0.0.1:{fleet.port(name)}"
        code, version = _get(fleet, name, "/version", fleet.token(name))
        assert code == 200
        assert str(version["gitVersion"]).startswith("v1.")


def test_a_cluster_certificate_is_not_trusted_under_another_clusters_ca(fleet: Fleet) -> None:
    context = ssl.create_default_context(cadata=fleet.ca_pem("sbx-01").decode())
    with pytest.raises(urllib.error.URLError) as caught:
        urllib.request.urlopen(fleet.server("sbx-02") + "/version", context=context, timeout=10)
    assert isinstance(caught.value.reason, ssl.SSLCertVerificationError)


def test_kubeconfig_has_one_context_per_cluster_with_embedded_ca_and_token(
    fleet: Fleet, kubeconfig: Path
) -> None:
    config = yaml.safe_load(kubeconfig.read_text())
    assert [c["name"] for c in config["contexts"]] == fleet.names
    assert config["current-context"] == "sbx-01"
    for entry in config["contexts"]:
        assert entry["context"] == {"cluster": entry["name"], "user": entry["name"]}
    clusters = {c["name"]: c["cluster"] for c in config["clusters"]}
    users = {u["name"]: u["user"] for u in config["users"]}
    for name in fleet.names:
        assert clusters[name]["server"] == fleet.server(name)
        assert base64.b64decode(clusters[name]["certificate-authority-data"]) == fleet.ca_pem(name)
        assert users[name] == {"token": fleet.token(name)}


def test_files_holding_tokens_are_private_and_the_env_file_can_be_sourced(
    fleet: Fleet, kubeconfig: Path
) -> None:
    assert stat.S_IMODE(kubeconfig.stat().st_mode) == 0o600
    assert stat.S_IMODE(fleet.env_path.stat().st_mode) == 0o600
    for line in fleet.env_path.read_text().splitlines():
        assert not line.startswith("export ")
    shown = subprocess.run(
        ["sh", "-c", 'set -a; . "$1"; set +a; env', "sh", str(fleet.env_path)],
        capture_output=True,
        text=True,
        check=True,
        env={"PATH": os.environ["PATH"]},
    ).stdout.splitlines()
    settings = dict(line.split("=", 1) for line in shown if line.startswith("FLEETOPS_"))
    assert settings == {
        "FLEETOPS_KUBECONFIG": str(kubeconfig.resolve()),
        "FLEETOPS_SANDBOX_CONTROL_URL": fleet.control_url,
        "FLEETOPS_SANDBOX_DIR": str(fleet.directory.resolve()),
        "FLEETOPS_STATIC_FLEET_FILE": str(fleet.fleet_file_path.resolve()),
    }
    assert read_env_file(fleet.env_path) == settings
    assert FleetControl.from_env(settings).url == fleet.control_url


def test_fleet_json_lists_names_ports_and_servers_without_tokens(fleet: Fleet) -> None:
    text = fleet.json_path.read_text()
    data = json.loads(text)
    assert [c["name"] for c in data["clusters"]] == fleet.names
    for entry in data["clusters"]:
        assert entry["server"] == fleet.server(entry["name"])
        assert entry["port"] == fleet.port(entry["name"])
    assert data["control_url"] == fleet.control_url
    for name in fleet.names:
        assert fleet.token(name) not in text


def test_the_official_client_reaches_every_context(kube_client: ClientFactory) -> None:
    for name in ("sbx-01", "sbx-02", "sbx-03"):
        namespaces = kubernetes.client.CoreV1Api(kube_client(name)).list_namespace()
        assert "default" in {ns.metadata.name for ns in namespaces.items}


@pytest.mark.kubectl
def test_kubectl_reaches_a_chosen_context(fleet: Fleet, kubeconfig: Path) -> None:
    result = subprocess.run(
        ["kubectl", "--kubeconfig", str(kubeconfig), "--context", "sbx-02", "get", "ns"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[:3] == ["NAME", "STATUS", "AGE"]
    assert "default" in result.stdout.split()


@pytest.mark.kubectl
def test_kubectl_prints_connection_refused_during_an_outage(
    fleet_faults: Fleet, kubeconfig: Path
) -> None:
    fleet_faults.outage("sbx-03", True)
    result = subprocess.run(
        ["kubectl", "--kubeconfig", str(kubeconfig), "--context", "sbx-03", "get", "ns",
         "--request-timeout", "5s"],
        capture_output=True,
        text=True,
        timeout=60,
    )  # fmt: skip
    assert result.returncode != 0
    # kubectl says "dial tcp ...: connect: connection refused" or, depending on its version and
    # discovery cache, "The connection to the server 127.0.0.1:P was refused"
    assert re.search(r"connection refused|connection to the server \S+ was refused", result.stderr)
    assert f"127.0.0.1:{fleet_faults.port('sbx-03')}" in result.stderr


# -- authentication ------------------------------------------------------------------------------


def test_no_token_is_401_unauthorized(fleet: Fleet) -> None:
    code, status = _get(fleet, "sbx-01", "/api/v1/namespaces", None)
    assert code == 401
    assert status["kind"] == "Status"
    assert status["reason"] == "Unauthorized"


def test_an_unknown_token_is_401_through_the_official_client(fleet: Fleet) -> None:
    client = _client_with_token(fleet, "sbx-01", "not-a-token-of-this-fleet")
    try:
        with pytest.raises(kubernetes.client.ApiException) as caught:
            kubernetes.client.CoreV1Api(client).list_namespace()
    finally:
        client.close()
    assert caught.value.status == 401
    assert json.loads(caught.value.body)["reason"] == "Unauthorized"


def test_another_clusters_token_is_403_naming_that_user(fleet: Fleet) -> None:
    client = _client_with_token(fleet, "sbx-02", fleet.token("sbx-01"))
    try:
        with pytest.raises(kubernetes.client.ApiException) as caught:
            kubernetes.client.CoreV1Api(client).list_namespace()
    finally:
        client.close()
    assert caught.value.status == 403
    status = json.loads(caught.value.body)
    assert status["kind"] == "Status"
    assert status["reason"] == "Forbidden"
    assert f'User "{username("sbx-01")}"' in status["message"]
    assert "namespaces" in status["message"]


# -- the Python API and the control endpoint -------------------------------------------------------


def test_python_api_refuses_bad_switches_and_unknown_clusters(fleet_faults: Fleet) -> None:
    with pytest.raises(FaultsError) as caught:
        fleet_faults.set_faults("sbx-01", error_code=418)
    assert caught.value.field == "error_code"
    assert fleet_faults.faults("sbx-01").error_code == 500
    with pytest.raises(UnknownClusterError):
        fleet_faults.set_faults("sbx-99", error_rate=1)
    with pytest.raises(UnknownClusterError):
        fleet_faults.cluster("sbx-99")


def test_control_endpoint_lists_clusters_and_their_switches(fleet_faults: Fleet) -> None:
    fleet_faults.set_faults("sbx-02", latency_seconds=0.1)
    control = FleetControl(fleet_faults.control_url)
    listed = control.clusters()
    assert [c["name"] for c in listed] == fleet_faults.names
    second = listed[1]
    assert second["server"] == fleet_faults.server("sbx-02")
    assert second["listening"] is True
    assert second["faults"]["latency_seconds"] == 0.1
    assert control.faults("sbx-02") == fleet_faults.faults("sbx-02").to_dict()
    assert "token" not in json.dumps(listed)


def _raw(url: str, method: str, body: bytes | None) -> tuple[int, dict[str, object]]:
    request = urllib.request.Request(url, data=body, method=method)
    request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.mark.parametrize(
    ("method", "path", "body", "code", "field"),
    [
        ("PATCH", "/clusters/sbx-01/faults", b'{"error_rate": "high"}', 400, "error_rate"),
        ("PATCH", "/clusters/sbx-01/faults", b'{"latency": 1}', 400, "latency"),
        ("PATCH", "/clusters/sbx-01/faults", b"[1, 2]", 400, None),
        ("PATCH", "/clusters/sbx-01/faults", b"not json", 400, None),
        ("PATCH", "/clusters/nope/faults", b"{}", 404, None),
        ("GET", "/clusters/nope", None, 404, None),
        ("POST", "/clusters/sbx-01/outage", b'{"on": "yes"}', 400, "on"),
        ("POST", "/clusters/sbx-01/outage", b'{"on": true, "x": 1}', 400, "x"),
    ],
)
def test_control_endpoint_refuses_bad_requests(
    fleet_faults: Fleet, method: str, path: str, body: bytes | None, code: int, field: str | None
) -> None:
    status, answer = _raw(fleet_faults.control_url + path, method, body)
    assert status == code
    assert answer["error"]
    assert answer.get("field") == field
    assert fleet_faults.faults("sbx-01").to_dict() == fleet_faults.faults("sbx-02").to_dict()
    assert fleet_faults.faults("sbx-01").outage is False


def test_control_client_raises_control_error(fleet_faults: Fleet) -> None:
    control = FleetControl(fleet_faults.control_url)
    with pytest.raises(ControlError) as caught:
        control.faults("sbx-77")
    assert caught.value.status == 404
    with pytest.raises(ValueError, match=r"127\.0\.0\.1"):
        FleetControl("http://example.com:1234")


def test_a_fleet_without_services_has_none_to_switch(fleet_faults: Fleet) -> None:
    control = FleetControl(fleet_faults.control_url)
    assert control.services() == []
    with pytest.raises(ControlError) as caught:
        control.set_service_faults("aws", outage=True)
    assert caught.value.status == 404
    with pytest.raises(UnknownServiceError):
        fleet_faults.aws  # noqa: B018
    assert fleet_faults.services == ()
    fleet_file = yaml.safe_load(fleet_faults.fleet_file_path.read_text())
    assert fleet_file == {"version": 1, "static": [], "overrides": []}


def test_service_account_tokens_open_their_own_cluster_only(fleet: Fleet) -> None:
    control = FleetControl(fleet.control_url)
    token = control.service_account_token("sbx-01", "apps", "hello")
    assert _get(fleet, "sbx-01", "/api/v1/namespaces", token)[0] == 200
    code, review = _get_post(
        fleet, "sbx-01", "/apis/authentication.k8s.io/v1/selfsubjectreviews", token
    )
    assert code == 201
    assert review["status"]["userInfo"]["username"] == "system:serviceaccount:apps:hello"
    assert _get(fleet, "sbx-02", "/api/v1/namespaces", token)[0] == 401
    vault_audience = fleet.service_account_token("sbx-01", audiences=["vault"])
    assert _get(fleet, "sbx-01", "/api/v1/namespaces", vault_audience)[0] == 401
    status, answer = _raw(
        fleet.control_url + "/clusters/sbx-01/serviceaccount-token", "POST", b'{"namespace": ""}'
    )
    assert (status, answer["field"]) == (400, "namespace")


def _get_post(fleet: Fleet, name: str, path: str, token: str) -> tuple[int, dict[str, object]]:
    context = ssl.create_default_context(cadata=fleet.ca_pem(name).decode())
    body = json.dumps({"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"})
    request = urllib.request.Request(
        fleet.server(name) + path,
        data=body.encode(),
        method="POST",
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, context=context, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


# -- life cycle ----------------------------------------------------------------------------------


def test_services_are_named_in_a_fixed_order() -> None:
    assert SERVICES == ("aws", "gke", "aks", "vault", "slack")


def test_a_second_fleet_starts_beside_the_first_and_closes_its_ports(tmp_path: Path) -> None:
    with Fleet(2, directory=tmp_path, prefix="extra") as other:
        assert other.names == ["extra-01", "extra-02"]
        ports = [other.port(name) for name in other.names]
        control_port = int(other.control_url.rsplit(":", 1)[1])
        code, _ = _get(other, "extra-02", "/version", other.token("extra-02"))
        assert code == 200
        other.outage("extra-01", True)  # closing while in an outage is fine too
    for port in [*ports, control_port]:
        assert refused(port)
    assert not other.running


def test_switches_set_before_start_take_effect(tmp_path: Path) -> None:
    fleet = Fleet(1, directory=tmp_path, rollout_seconds=0.1)
    fleet.set_faults("sbx-01", outage=True)
    with fleet:
        port = fleet.port("sbx-01")
        assert port != 0
        assert refused(port)
        fleet.outage("sbx-01", False)
        assert _get(fleet, "sbx-01", "/version", fleet.token("sbx-01"))[0] == 200


# -- python -m sandbox up --------------------------------------------------------------------------


def test_cli_up_serves_until_sigint_then_exits_cleanly(tmp_path: Path) -> None:
    directory = tmp_path / "fleet"
    process = sandbox_up(
        "--clusters", "12", "--dir", str(directory), "--rollout-seconds", "0.2", "--no-services"
    )
    try:
        line = read_line(process, timeout=60)
        assert line.startswith("sandbox ready: 12 clusters (static 12), services none, kubeconfig ")
        assert str(directory / "kubeconfig") in line
        assert str(directory / "sandbox.env") in line
        fleet_json = json.loads((directory / "fleet.json").read_text())
        names = [c["name"] for c in fleet_json["clusters"]]
        assert names == [f"sbx-{i:02d}" for i in range(1, 13)]
        assert fleet_json["control_url"] in line

        result = subprocess.run(
            ["kubectl", "--kubeconfig", str(directory / "kubeconfig"), "--context", "sbx-12",
             "get", "ns", "-o", "name"],
            capture_output=True,
            text=True,
            timeout=60,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert "namespace/default" in result.stdout.split()
        control = FleetControl(fleet_json["control_url"])
        assert control.set_faults("sbx-12", latency_seconds=0.05)["latency_seconds"] == 0.05

        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=30)
        assert "sandbox stopped" in out
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, err
    assert "Traceback" not in err
    ports = [c["port"] for c in fleet_json["clusters"]]
    control_port = int(fleet_json["control_url"].rsplit(":", 1)[1])
    for port in [*ports, control_port]:
        assert refused(port)


def test_the_sandbox_process_takes_its_fleet_out_of_the_collectors_walks() -> None:
    # what ``python -m sandbox up`` calls once its fleet is up, in a process of its own (it is
    # process-wide): what is alive is frozen and young collections are spaced out
    code = (
        "import gc, json; from sandbox.__main__ import settle_heap, YOUNG_THRESHOLD; "
        "before = gc.get_freeze_count(); settle_heap(); "
        "print(json.dumps([before, gc.get_freeze_count(), gc.get_threshold()[0], YOUNG_THRESHOLD]))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    before, after, young, threshold = json.loads(result.stdout)
    assert before == 0
    assert after > 10_000  # the sandbox's modules and everything they built
    assert young == threshold == 10_000


def test_cli_up_stops_on_sigterm_and_takes_bao_with_it(tmp_path: Path) -> None:
    process = sandbox_up(
        "--clusters", "1", "--dir", str(tmp_path), "--no-aws", "--no-gke", "--no-aks", "--no-slack"
    )
    try:
        line = read_line(process, timeout=60)
        assert line.startswith("sandbox ready: 1 clusters (static 1), services vault, ")
        vault = json.loads((tmp_path / "fleet.json").read_text())["services"]["vault"]
        os.kill(vault["pid"], 0)  # bao runs
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, err
    with pytest.raises(ProcessLookupError):
        os.kill(vault["pid"], 0)
    assert refused(int(vault["addr"].rsplit(":", 1)[1]))


def test_a_killed_sandbox_takes_bao_with_it(tmp_path: Path) -> None:
    """Even SIGKILL (a crashed or killed `sandbox up`) leaves no bao process behind."""
    process = sandbox_up(
        "--clusters", "1", "--dir", str(tmp_path), "--no-aws", "--no-gke", "--no-aks", "--no-slack"
    )
    try:
        assert read_line(process, timeout=60).startswith("sandbox ready: 1 clusters")
        pid = json.loads((tmp_path / "fleet.json").read_text())["services"]["vault"]["pid"]
    finally:
        process.kill()
        process.communicate()

    def running(pid: int) -> bool:  # a zombie waiting for init to reap it counts as gone
        try:
            return "State:\tZ" not in Path(f"/proc/{pid}/status").read_text()
        except OSError:
            return False

    deadline = time.monotonic() + 15
    while running(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not running(pid), "bao outlived its killed sandbox"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--clusters", "0"], "--clusters: must be at least 1"),
        (["--clusters", "many"], "--clusters: not a whole number"),
        (["--rollout-seconds", "-1"], "--rollout-seconds: must be >= 0"),
        (["--control-port", "70000"], "--control-port: must be 0..65535"),
        (["--no-route53"], "unrecognized arguments: --no-route53"),
        (["--prefix", "East_1"], "--prefix: 'East_1': use lower-case letters"),
        (["--prefix", "east"], "--prefix: only with --no-services"),
    ],
)
def test_cli_refuses_bad_arguments(tmp_path: Path, args: list[str], message: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "sandbox", "up", "--dir", str(tmp_path), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert message in result.stderr
    assert not (tmp_path / "kubeconfig").exists()


def test_cli_refuses_a_directory_it_cannot_use(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    result = subprocess.run(
        [sys.executable, "-m", "sandbox", "up", "--dir", str(not_a_dir / "sub")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert f"--dir: cannot create {not_a_dir / 'sub'}" in result.stderr


def test_closing_the_fleet_ends_open_watches_promptly(tmp_path: Path) -> None:
    fleet = Fleet(1, directory=tmp_path).start_in_thread()
    client = kubernetes.config.new_client_from_config(
        config_file=str(fleet.kubeconfig_path), context="sbx-01"
    )
    try:
        api = kubernetes.client.CoreV1Api(client)
        stream = kubernetes.watch.Watch().stream(
            api.list_namespace, timeout_seconds=60, _request_timeout=30
        )
        assert next(stream)["type"] == "ADDED"
    finally:
        started = time.monotonic()
        fleet.close()
    assert time.monotonic() - started < 5
    started = time.monotonic()
    try:
        for _ in stream:  # the remaining ADDED events, then the end of the stream
            pass
    except urllib3.exceptions.HTTPError:
        pass  # cut rather than ended: just as good
    finally:
        client.close()
    assert time.monotonic() - started < 5


def test_cli_reports_a_control_port_in_use(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "sandbox", "up", "--clusters", "2", "--dir", str(tmp_path),
             "--control-port", str(port)],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
        )  # fmt: skip
    assert result.returncode == 1
    assert "sandbox: cannot start: [Errno 98] Address already in use" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "kubeconfig").exists()
