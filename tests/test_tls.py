"""TLS on both sides: the gRPC listener (TLS, mutual TLS) and https:// to ZStack (CA bundle,
verification on by default). Certificates are made per test session with the openssl CLI."""

from __future__ import annotations

import logging
import ssl
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import zstack_sim
from conftest import AUTH
from grpc_health.v1 import health_pb2, health_pb2_grpc
from harness import GatewayThread, account
from pki import Pki, needs_openssl
from statuses import decode
from zstack.v1 import vm_instance_service_pb2 as svc
from zstack.v1 import vm_instance_service_pb2_grpc as svc_grpc
from zstack_gateway import Config, ConfigError
from zstack_gateway.settings import Secret
from zstack_sim.control_client import SimControl

VM = zstack_sim.DEMO_VM_UUID
C = grpc.StatusCode

pytestmark = needs_openssl


def secure_channel(gw: GatewayThread, root: Path, cert: Path | None = None, key: Path | None = None):
    creds = grpc.ssl_channel_credentials(
        root_certificates=root.read_bytes(),
        private_key=key.read_bytes() if key else None,
        certificate_chain=cert.read_bytes() if cert else None,
    )
    return grpc.secure_channel(gw.target, creds)


def images(channel, metadata=AUTH) -> list[str]:
    stub = svc_grpc.VmInstanceServiceStub(channel)
    request = svc.GetCandidateIsoRequest(vm_instance_uuid=VM)
    return [
        i.uuid for c in stub.GetCandidateIso(request, metadata=metadata, timeout=5) for i in c.inventories
    ]


def refused(channel, metadata=AUTH) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        images(channel, metadata)
    return info.value.code()


# --- callers -> gateway ----------------------------------------------------------------------------


def test_tls_listener_serves_tls_only(make_gateway, pki: Pki, sim: SimControl):
    gw = make_gateway(tls_cert=str(pki.server_cert), tls_key=str(pki.server_key))
    with secure_channel(gw, pki.ca) as ch:
        assert images(ch) == list(zstack_sim.DEMO_IMAGE_UUIDS)
        health = health_pb2_grpc.HealthStub(ch)
        assert health.Check(health_pb2.HealthCheckRequest(), timeout=5).status == 1
    with gw.channel() as plain:  # plaintext to a TLS port
        assert refused(plain) == C.UNAVAILABLE
    with secure_channel(gw, pki.rogue_ca) as wrong_trust:  # a client that does not trust the server
        assert refused(wrong_trust) == C.UNAVAILABLE


def test_mutual_tls_accepts_a_trusted_client_and_rejects_the_rest(make_gateway, pki: Pki, sim: SimControl):
    gw = make_gateway(
        **account(tls_cert=str(pki.server_cert), tls_key=str(pki.server_key), tls_client_ca=str(pki.ca))
    )
    with secure_channel(gw, pki.ca, pki.client_cert, pki.client_key) as ch:
        assert images(ch, metadata=()) == list(zstack_sim.DEMO_IMAGE_UUIDS)
    with secure_channel(gw, pki.ca) as no_cert:
        assert refused(no_cert, metadata=()) == C.UNAVAILABLE
    with secure_channel(gw, pki.ca, pki.rogue_cert, pki.rogue_key) as untrusted:
        assert refused(untrusted, metadata=()) == C.UNAVAILABLE
    with gw.channel() as plain:
        assert refused(plain, metadata=()) == C.UNAVAILABLE
    # Only the trusted caller's call reached ZStack.
    assert len([r for r in sim.zstack_requests() if r["path"].endswith("/iso-candidates")]) == 1


def test_mutual_tls_counts_as_caller_authentication(pki: Pki, simulator):
    account = {
        "auth_mode": "account",
        "zstack_account": "admin",
        "zstack_password": Secret("x"),
        "listen": "0.0.0.0:50051",
        "zstack_url": simulator.url,
    }
    tls = {"tls_cert": str(pki.server_cert), "tls_key": str(pki.server_key)}
    Config(**account, **tls, tls_client_ca=str(pki.ca)).check()
    with pytest.raises(ConfigError, match="refusing to start"):
        Config(**account, **tls).check()  # TLS alone does not say who the caller is


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"tls_cert": "CERT"}, "--tls-cert and --tls-key go together"),
        ({"tls_key": "KEY"}, "--tls-cert and --tls-key go together"),
        ({"tls_client_ca": "CA"}, "--tls-client-ca (mutual TLS) needs --tls-cert"),
        ({"tls_cert": "CERT", "tls_key": "ROGUEKEY"}, "cannot use"),
        ({"tls_cert": "/nonexistent.pem", "tls_key": "KEY"}, "no such file"),
        ({"tls_cert": "CERT", "tls_key": "KEY", "tls_client_ca": "KEY"}, "--tls-client-ca"),
    ],
)
def test_tls_settings_that_cannot_work_are_refused(pki: Pki, simulator, settings, message):
    names = {"CERT": pki.server_cert, "KEY": pki.server_key, "ROGUEKEY": pki.rogue_key, "CA": pki.ca}
    resolved = {k: str(names.get(v, v)) for k, v in settings.items()}
    with pytest.raises(ConfigError) as info:
        Config(zstack_url=simulator.url, **resolved).check()
    assert message in str(info.value)


# --- gateway -> ZStack over https -------------------------------------------------------------------


@pytest.fixture(scope="module")
def https_sim(pki: Pki) -> Iterator[zstack_sim.ThreadedSimulator]:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pki.server_cert, pki.server_key)
    with zstack_sim.run_in_thread(zstack_sim.demo_data(), ssl_context=context) as sim:
        yield sim


def test_https_zstack_verified_with_a_ca_bundle(make_gateway, pki: Pki, https_sim):
    assert https_sim.url.startswith("https://127.0.0.1:")
    gw = make_gateway(zstack_url=https_sim.url, zstack_ca_file=str(pki.ca))
    with gw.channel() as ch:
        assert images(ch) == list(zstack_sim.DEMO_IMAGE_UUIDS)


def test_https_account_mode_logs_in_over_tls(make_gateway, pki: Pki, https_sim):
    gw = make_gateway(**account(zstack_url=https_sim.url, zstack_ca_file=str(pki.ca)))
    with gw.channel() as ch:
        assert images(ch, metadata=())  # no caller session: the gateway logged in over https


def test_https_zstack_is_verified_by_default(make_gateway, https_sim):
    gw = make_gateway(zstack_url=https_sim.url)
    with gw.channel() as ch, pytest.raises(grpc.RpcError) as info:
        images(ch)
    d = decode(info.value)
    assert d.code == C.UNAVAILABLE
    assert "CERTIFICATE_VERIFY_FAILED" in d.message or "certificate" in d.message.lower()


def test_https_zstack_account_login_is_verified_too(make_gateway, https_sim):
    gw = make_gateway(**account(zstack_url=https_sim.url))
    with gw.channel() as ch, pytest.raises(grpc.RpcError) as info:
        images(ch, metadata=())
    d = decode(info.value)
    assert d.code == C.UNAVAILABLE
    assert "logging in to ZStack as account 'admin'" in d.message


def test_insecure_skip_verify_works_and_warns(make_gateway, https_sim, caplog):
    with caplog.at_level(logging.WARNING, logger="zstack_gateway.tls"):
        gw = make_gateway(zstack_url=https_sim.url, zstack_insecure_skip_verify=True)
    assert any("NOT verified" in r.getMessage() for r in caplog.records)
    with gw.channel() as ch:
        assert images(ch)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"zstack_ca_file": "CA"}, "--zstack-ca-file is for an https:// --zstack-url"),
        ({"zstack_insecure_skip_verify": True}, "--zstack-insecure-skip-verify is for an https://"),
        (
            {"zstack_url": "https://mn:8443", "zstack_ca_file": "CA", "zstack_insecure_skip_verify": True},
            "exclude each other",
        ),
        ({"zstack_url": "https://mn:8443", "zstack_ca_file": "KEY"}, "is not a PEM CA bundle"),
    ],
)
def test_zstack_tls_settings_that_cannot_work_are_refused(pki: Pki, settings, message):
    names = {"CA": pki.ca, "KEY": pki.server_key}
    resolved = {k: str(names[v]) if isinstance(v, str) and v in names else v for k, v in settings.items()}
    with pytest.raises(ConfigError) as info:
        Config(**{"zstack_url": "http://mn:8080", **resolved}).check()
    assert message in str(info.value)
