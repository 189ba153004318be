"""The zstack_iso library in every gateway mode: caller tokens and TLS as named arguments
(``token=``, ``tls=TlsConfig(...)``), a channel the caller already has (``from_channel``), and
``message_to_dict`` (ZStack's JSON: 64-bit integers as numbers). Real gateways on loopback."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest
import zstack_sim
from conftest import SESSION
from harness import Gateways, GatewayThread, account
from pki import Pki, needs_openssl
from zstack.v1 import image_pb2
from zstack_gateway.settings import Secret
from zstack_iso import AsyncIsoClient, IsoClient, TlsConfig, ZStackError, message_to_dict
from zstack_sim.control_client import SimControl

VM = zstack_sim.DEMO_VM_UUID
TOKEN = "caller-token-0123456789abcdef"
ALL = list(zstack_sim.DEMO_IMAGE_UUIDS)
C = grpc.StatusCode


@pytest.fixture(scope="module")
def token_gw(module_gateways: Gateways) -> GatewayThread:
    return module_gateways(**account(caller_tokens=Secret(TOKEN)))


@pytest.fixture(scope="module")
def mtls_token_gw(module_gateways: Gateways, pki: Pki) -> GatewayThread:
    """Account mode with caller tokens and mutual TLS."""
    return module_gateways(
        **account(
            caller_tokens=Secret(TOKEN),
            tls_cert=str(pki.server_cert),
            tls_key=str(pki.server_key),
            tls_client_ca=str(pki.ca),
        )
    )


def uuids(images: list[image_pb2.ImageInventory]) -> list[str]:
    return [i.uuid for i in images]


def failure(target: str, **settings: Any) -> ZStackError:
    """The error of one call by a client made with ``settings``."""
    with IsoClient(target, timeout=5, **settings) as client, pytest.raises(ZStackError) as info:
        client.list_candidates(VM)
    return info.value


# --- credentials as named arguments --------------------------------------------------------------------


def test_token_argument_is_sent_as_a_bearer_caller_token(token_gw: GatewayThread, sim: SimControl) -> None:
    with IsoClient(token_gw.target, token=TOKEN, timeout=10) as client:
        assert uuids(client.list_candidates(VM)) == ALL
    err = failure(token_gw.target, token=TOKEN + "x")
    assert err.code is C.UNAUTHENTICATED and err.reason == "CALLER_TOKEN_INVALID"
    err = failure(token_gw.target, session=SESSION)
    assert err.code is C.UNAUTHENTICATED and err.reason == "CALLER_TOKEN_MISSING"
    assert len([r for r in sim.zstack_requests() if "iso-candidates" in r["path"]]) == 1


def test_session_and_token_exclude_each_other_and_are_never_shown() -> None:
    with pytest.raises(ValueError, match="not both") as info:
        IsoClient("127.0.0.1:1", session=SESSION, token=TOKEN)
    assert SESSION not in str(info.value) and TOKEN not in str(info.value)
    with pytest.raises(ValueError, match="token must be") as info:
        IsoClient("127.0.0.1:1", token=TOKEN + " x")
    assert TOKEN not in str(info.value)
    with pytest.raises(ValueError, match="either as token= or as 'authorization' metadata"):
        IsoClient("127.0.0.1:1", token=TOKEN, metadata=[("Authorization", "Bearer other")])
    client = IsoClient("127.0.0.1:1", token=TOKEN)
    assert TOKEN not in repr(client)
    client.close()


def test_async_client_token_argument(token_gw: GatewayThread, sim: SimControl) -> None:
    async def main() -> list[str]:
        async with AsyncIsoClient(token_gw.target, token=TOKEN, timeout=10) as client:
            return [i.uuid async for i in client.iter_candidates(VM)]

    assert asyncio.run(main()) == ALL


# --- TLS as named arguments ----------------------------------------------------------------------------


@needs_openssl
def test_mutual_tls_with_a_token(mtls_token_gw: GatewayThread, pki: Pki, sim: SimControl) -> None:
    tls = TlsConfig.from_files(pki.ca, pki.client_cert, pki.client_key)
    with IsoClient(mtls_token_gw.target, token=TOKEN, tls=tls, timeout=10) as client:
        assert uuids(client.list_candidates(VM)) == ALL
    # The same from bytes, with the name the certificate must hold given explicitly.
    raw = TlsConfig(
        root_certificates=pki.ca.read_bytes(),
        certificate_chain=pki.client_cert.read_bytes(),
        private_key=pki.client_key.read_bytes(),
        server_name="localhost",
    )
    with IsoClient(mtls_token_gw.target, token=TOKEN, tls=raw, timeout=10) as client:
        assert uuids(client.list_candidates(VM)) == ALL
    # Without a client certificate the handshake fails: UNAVAILABLE, as a ZStackError.
    assert failure(mtls_token_gw.target, token=TOKEN, tls=TlsConfig.from_files(pki.ca)).code is C.UNAVAILABLE
    # A name the certificate does not hold.
    wrong = TlsConfig.from_files(pki.ca, pki.client_cert, pki.client_key, server_name="gw.example")
    assert failure(mtls_token_gw.target, token=TOKEN, tls=wrong).code is C.UNAVAILABLE


@needs_openssl
def test_async_client_mutual_tls(mtls_token_gw: GatewayThread, pki: Pki, sim: SimControl) -> None:
    tls = TlsConfig.from_files(pki.ca, pki.client_cert, pki.client_key)

    async def main() -> list[str]:
        async with AsyncIsoClient(mtls_token_gw.target, token=TOKEN, tls=tls, timeout=10) as client:
            return uuids(await client.list_candidates(VM))

    assert asyncio.run(main()) == ALL


@needs_openssl
def test_tls_config_checks_its_files_and_hides_the_key(pki: Pki, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"missing\.pem: cannot read the CA certificates"):
        TlsConfig.from_files(tmp_path / "missing.pem")
    with pytest.raises(ValueError, match="holds no readable PEM certificate"):
        TlsConfig.from_files(pki.client_key)
    with pytest.raises(ValueError, match="both a certificate and its key"):
        TlsConfig.from_files(pki.ca, pki.client_cert)
    with pytest.raises(ValueError, match="not a PEM private key of the certificate"):
        TlsConfig.from_files(pki.ca, pki.client_cert, pki.server_key)
    encrypted = tmp_path / "encrypted.key"
    subprocess.run(
        [
            "openssl",
            "ec",
            "-in",
            str(pki.client_key),
            "-aes256",
            "-passout",
            "pass:x",
            "-out",
            str(encrypted),
        ],
        check=True,
        capture_output=True,
        timeout=30,
    )
    with pytest.raises(ValueError, match="encrypted"):
        TlsConfig.from_files(pki.ca, pki.client_cert, encrypted)
    with pytest.raises(ValueError, match="both certificate_chain and private_key"):
        TlsConfig(certificate_chain=pki.client_cert.read_bytes())
    with pytest.raises(ValueError, match="root_certificates is not PEM"):
        TlsConfig(root_certificates=b"not a certificate")
    with pytest.raises(TypeError):
        TlsConfig(root_certificates=str(pki.ca))  # type: ignore[arg-type]
    key = pki.client_key.read_bytes()
    tls = TlsConfig.from_files(pki.ca, pki.client_cert, pki.client_key)
    assert tls.private_key == key
    assert key.decode() not in repr(tls) and "<hidden>" in repr(tls)
    with pytest.raises(ValueError, match="not both"):
        IsoClient("127.0.0.1:1", tls=tls, channel_credentials=grpc.ssl_channel_credentials())


# --- a channel the caller already has ------------------------------------------------------------------


def test_from_channel_shares_the_callers_channel_and_leaves_it_open(
    gateway: GatewayThread, token_gw: GatewayThread, sim: SimControl
) -> None:
    with grpc.insecure_channel(gateway.target) as channel:
        first = IsoClient.from_channel(channel, session=SESSION, timeout=10)
        second = IsoClient.from_channel(channel, session=SESSION, timeout=10)
        assert first.target is None and "<channel>" in repr(first)
        assert uuids(first.list_candidates(VM)) == ALL
        first.close()
        with pytest.raises(ZStackError) as info:
            first.list_candidates(VM)
        assert info.value.code is C.CANCELLED
        # The channel is still open: the other client, on the same channel, still works.
        assert uuids(second.list_candidates(VM)) == ALL
        with pytest.raises(ZStackError) as info:
            IsoClient.from_channel(channel, timeout=10).list_candidates(VM)
        assert info.value.code is C.UNAUTHENTICATED
    with grpc.insecure_channel(token_gw.target) as channel:
        assert uuids(IsoClient.from_channel(channel, token=TOKEN).list_candidates(VM)) == ALL
    with pytest.raises(TypeError, match=r"grpc\.Channel"):
        IsoClient.from_channel("127.0.0.1:50051")  # type: ignore[arg-type]


def test_async_from_channel(gateway: GatewayThread, sim: SimControl) -> None:
    async def main() -> tuple[list[str], list[str]]:
        async with grpc.aio.insecure_channel(gateway.target) as channel:
            first = AsyncIsoClient.from_channel(channel, session=SESSION, timeout=10)
            got = uuids(await first.list_candidates(VM))
            await first.close()
            second = AsyncIsoClient.from_channel(channel, session=SESSION, timeout=10)
            return got, uuids(await second.list_candidates(VM))
        raise AssertionError("unreachable")

    assert asyncio.run(main()) == (ALL, ALL)
    with grpc.insecure_channel(gateway.target) as sync_channel, pytest.raises(TypeError, match="aio"):
        AsyncIsoClient.from_channel(sync_channel)  # type: ignore[arg-type]


# --- ZStack's JSON -------------------------------------------------------------------------------------


def test_message_to_dict_writes_64_bit_integers_as_numbers(gateway: GatewayThread, sim: SimControl) -> None:
    with IsoClient(gateway.target, session=SESSION, timeout=10) as client:
        images = client.list_candidates(VM)
    centos = next(i for i in images if i.name == "CentOS-7-x86_64-DVD-2009.iso")
    data = message_to_dict(centos)
    assert data["size"] == data["actualSize"] == 4712300544
    assert data["backupStorageRefs"][0]["id"] == 2
    assert data["createDate"] == "2022-07-22T03:54:07Z"
    seed = next(i for i in images if i.uuid == zstack_sim.DEMO_SEED_IMAGE_UUID)
    # Absent stays absent (proto3 optional), in the message and in the dict.
    assert not seed.HasField("size") and "size" not in message_to_dict(seed)
    big = image_pb2.ImageInventory(size=2**63 - 1, backup_storage_refs=[image_pb2.BackupStorageRef(id=-1)])
    assert message_to_dict(big) == {"size": 2**63 - 1, "backupStorageRefs": [{"id": -1}]}
