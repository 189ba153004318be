"""The zstack-iso command in every gateway mode: pass-through, account and AccessKey (without and with
caller tokens), TLS and mutual TLS, settings from flags and from environment variables, and failures
printed as one line with a non-zero exit.

Real gateways on loopback ports in front of the shared simulator; the command runs as a subprocess,
as a user runs it.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import zstack_sim
from conftest import SESSION
from harness import Gateways, GatewayThread, access_key, account
from pki import Pki, needs_openssl
from zstack_gateway.settings import Secret
from zstack_sim.control_client import SimControl

CLI = Path(sys.executable).with_name("zstack-iso")
VM = zstack_sim.DEMO_VM_UUID
TOKEN = "caller-token-0123456789abcdef"
ALL_IMAGES = len(zstack_sim.DEMO_IMAGE_UUIDS)
# Every secret a test hands the command: none may ever show in its output.
SECRETS = (SESSION, TOKEN, zstack_sim.DEMO_ACCOUNT_PASSWORD * 2, zstack_sim.DEMO_ACCESS_KEY_SECRET)


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``zstack-iso`` with ``args``, in an environment without any of its variables but ``env``."""
    base = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("ZSTACK_ISO_") and k not in ("ZSTACK_SESSION", "ZSTACK_GATEWAY_TARGET")
    }
    base.pop("GRPC_VERBOSITY", None)
    done = subprocess.run(
        [str(CLI), *args], env={**base, **(env or {})}, capture_output=True, text=True, timeout=60
    )
    for secret in SECRETS:
        assert secret not in done.stdout and secret not in done.stderr
    assert "Traceback" not in done.stderr
    return done


def listed(done: subprocess.CompletedProcess[str]) -> int:
    """The number of images of a successful table."""
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    last = done.stdout.splitlines()[-1]
    m = re.fullmatch(r"(\d+) images?", last)
    assert m, done.stdout
    return int(m.group(1))


def one_line_error(done: subprocess.CompletedProcess[str], code: int = 1) -> str:
    """The failure's one line on stderr (nothing on stdout, nothing else on stderr)."""
    assert done.returncode == code, (done.returncode, done.stdout, done.stderr)
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("zstack-iso: ")
    return lines[0]


# --- gateways ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def account_gw(module_gateways: Gateways) -> GatewayThread:
    """Account mode on loopback: callers are not authenticated."""
    return module_gateways(**account())


@pytest.fixture(scope="module")
def access_key_gw(module_gateways: Gateways) -> GatewayThread:
    return module_gateways(**access_key())


@pytest.fixture(scope="module")
def token_gw(module_gateways: Gateways) -> GatewayThread:
    """Account mode with caller tokens."""
    return module_gateways(**account(caller_tokens=Secret(TOKEN)))


@pytest.fixture(scope="module")
def mtls_gw(module_gateways: Gateways, pki: Pki) -> GatewayThread:
    """Pass-through with mutual TLS: how a pass-through gateway restricts who may call."""
    return module_gateways(
        tls_cert=str(pki.server_cert), tls_key=str(pki.server_key), tls_client_ca=str(pki.ca)
    )


@pytest.fixture(scope="module")
def token_tls_gw(module_gateways: Gateways, pki: Pki) -> GatewayThread:
    """Account mode with caller tokens over TLS (server certificate only)."""
    return module_gateways(
        **account(caller_tokens=Secret(TOKEN), tls_cert=str(pki.server_cert), tls_key=str(pki.server_key))
    )


# --- help ----------------------------------------------------------------------------------------------


def test_help_shows_an_example_for_each_mode() -> None:
    for args in (["--help"], ["candidates", "--help"]):
        done = run(*args)
        assert done.returncode == 0, done.stderr
        text = done.stdout
        assert "pass-through" in text and "ZSTACK_ISO_SESSION=" in text
        assert "account or access-key, listening on loopback" in text
        assert "--token-file" in text and "--cacert ca.pem" in text
        assert "--cert client.pem --key client.key" in text
        for var in ("ZSTACK_ISO_TARGET", "ZSTACK_ISO_TOKEN", "ZSTACK_ISO_CACERT", "ZSTACK_ISO_TIMEOUT"):
            assert var in text


# --- pass-through --------------------------------------------------------------------------------------


def test_pass_through_session_from_flag_and_from_environment(gateway: GatewayThread, sim: SimControl) -> None:
    assert listed(run("candidates", VM, "--target", gateway.target, "--session", SESSION)) == ALL_IMAGES
    env = {"ZSTACK_ISO_TARGET": gateway.target, "ZSTACK_ISO_SESSION": SESSION}
    assert listed(run("candidates", VM, env=env)) == ALL_IMAGES
    # The first names of these variables still work.
    env = {"ZSTACK_GATEWAY_TARGET": gateway.target, "ZSTACK_SESSION": SESSION}
    assert listed(run("candidates", VM, env=env)) == ALL_IMAGES
    sent = {r["headers"].get("Authorization") for r in sim.zstack_requests()}
    assert sent == {f"OAuth {SESSION}"}


def test_pass_through_without_a_session_says_how_to_give_one(gateway: GatewayThread, sim: SimControl) -> None:
    line = one_line_error(run("candidates", VM, "--target", gateway.target))
    assert line.startswith("zstack-iso: UNAUTHENTICATED: no credentials")
    assert "hint: this gateway passes callers' ZStack sessions through" in line
    assert "--session" in line and "$ZSTACK_ISO_SESSION" in line
    line = one_line_error(run("candidates", VM, "--target", gateway.target, "--token", TOKEN))
    assert "takes no caller token" in line
    assert not sim.zstack_requests()


# --- account and AccessKey -----------------------------------------------------------------------------


def test_account_gateway_on_loopback_needs_no_credentials(account_gw: GatewayThread, sim: SimControl) -> None:
    assert listed(run("candidates", VM, "--target", account_gw.target)) == ALL_IMAGES
    [call] = [r for r in sim.zstack_requests() if "iso-candidates" in r["path"]]
    # ZStack saw the gateway's own session, not one of the caller's.
    assert call["headers"]["Authorization"].startswith("OAuth ")
    assert SESSION not in call["headers"]["Authorization"]


def test_access_key_gateway_needs_no_credentials(access_key_gw: GatewayThread, sim: SimControl) -> None:
    done = run("candidates", VM, "--target", access_key_gw.target, "--json")
    assert done.returncode == 0, done.stderr
    assert len(json.loads(done.stdout)) == ALL_IMAGES
    [call] = [r for r in sim.zstack_requests() if "iso-candidates" in r["path"]][-1:]
    assert call["headers"]["Authorization"].startswith(f"ZStack {zstack_sim.DEMO_ACCESS_KEY_ID}:")


def test_a_session_sent_to_an_account_gateway_is_refused_and_the_hint_names_its_source(
    account_gw: GatewayThread, sim: SimControl
) -> None:
    env = {"ZSTACK_ISO_SESSION": SESSION}
    line = one_line_error(run("candidates", VM, "--target", account_gw.target, env=env))
    assert line.startswith("zstack-iso: INVALID_ARGUMENT: this gateway calls ZStack as its own account")
    assert "hint: this gateway holds its own ZStack credentials" in line
    assert "$ZSTACK_ISO_SESSION" in line and "unset ZSTACK_ISO_SESSION" in line
    line = one_line_error(run("candidates", VM, "--target", account_gw.target, "--session", SESSION))
    assert "the session from --session" in line
    assert not sim.zstack_requests()


def test_caller_token_from_flag_variable_and_files(
    token_gw: GatewayThread, sim: SimControl, tmp_path: Path
) -> None:
    target = ["--target", token_gw.target]
    assert listed(run("candidates", VM, *target, "--token", TOKEN)) == ALL_IMAGES
    assert listed(run("candidates", VM, *target, env={"ZSTACK_ISO_TOKEN": TOKEN})) == ALL_IMAGES
    # The gateway's own tokens file format: comments and blank lines are skipped.
    token_file = tmp_path / "token"
    token_file.write_text(f"# the caller token of the reports service\n\n{TOKEN}\n")
    assert listed(run("candidates", VM, *target, "--token-file", str(token_file))) == ALL_IMAGES
    env = {"ZSTACK_ISO_TOKEN_FILE": str(token_file)}
    assert listed(run("candidates", VM, *target, env=env)) == ALL_IMAGES
    # A credential on the command line replaces those of the environment.
    env = {"ZSTACK_ISO_SESSION": SESSION}
    assert listed(run("candidates", VM, *target, "--token-file", str(token_file), env=env)) == ALL_IMAGES


def test_caller_token_missing_or_wrong(token_gw: GatewayThread, sim: SimControl) -> None:
    target = ["--target", token_gw.target]
    line = one_line_error(run("candidates", VM, *target))
    assert line.startswith("zstack-iso: UNAUTHENTICATED: this gateway requires a caller token")
    assert "hint: pass --token-file FILE, or set $ZSTACK_ISO_TOKEN" in line
    line = one_line_error(run("candidates", VM, *target, env={"ZSTACK_ISO_SESSION": SESSION}))
    assert "wants a caller token, not a ZStack session (from $ZSTACK_ISO_SESSION)" in line
    line = one_line_error(run("candidates", VM, *target, env={"ZSTACK_ISO_TOKEN": TOKEN + "x"}))
    assert "the caller token is not valid for this gateway" in line
    assert "does not know the caller token from $ZSTACK_ISO_TOKEN" in line
    assert not sim.zstack_requests()


# --- TLS -----------------------------------------------------------------------------------------------


@needs_openssl
def test_pass_through_over_mutual_tls(mtls_gw: GatewayThread, pki: Pki, sim: SimControl) -> None:
    tls = ["--cacert", str(pki.ca), "--cert", str(pki.client_cert), "--key", str(pki.client_key)]
    args = ["candidates", VM, "--target", mtls_gw.target, "--session", SESSION]
    assert listed(run(*args, *tls)) == ALL_IMAGES
    # The same from the environment.
    env = {
        "ZSTACK_ISO_TARGET": mtls_gw.target,
        "ZSTACK_ISO_SESSION": SESSION,
        "ZSTACK_ISO_CACERT": str(pki.ca),
        "ZSTACK_ISO_CERT": str(pki.client_cert),
        "ZSTACK_ISO_KEY": str(pki.client_key),
    }
    assert listed(run("candidates", VM, env=env)) == ALL_IMAGES
    # Each way of getting it wrong: one line, exit 1, and a hint at the setting to change.
    line = one_line_error(run(*args))
    assert line.startswith("zstack-iso: UNAVAILABLE: ")
    assert "hint: if the gateway serves TLS, pass --cacert FILE" in line
    line = one_line_error(run(*args, "--cacert", str(pki.ca)))
    assert "hint: if the gateway asks for client certificates (mutual TLS), pass --cert and --key" in line
    rogue = ["--cacert", str(pki.ca), "--cert", str(pki.rogue_cert), "--key", str(pki.rogue_key)]
    line = one_line_error(run(*args, *rogue))
    assert "hint: the gateway may have refused the client certificate" in line
    line = one_line_error(run(*args, "--cacert", str(pki.rogue_ca)))
    assert "CERTIFICATE_VERIFY_FAILED" in line
    assert "hint: the gateway's certificate is not signed by a CA of --cacert" in line
    assert len(sim.zstack_requests()) == 2


@needs_openssl
def test_caller_token_over_tls(token_tls_gw: GatewayThread, pki: Pki, tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    base = ["candidates", VM, "--target", token_tls_gw.target, "--token-file", str(token_file)]
    assert listed(run(*base, "--cacert", str(pki.ca))) == ALL_IMAGES
    # The certificate names localhost and 127.0.0.1: either works as the host, or as the name checked.
    port = token_tls_gw.port
    assert listed(run(*base[:2], "--target", f"localhost:{port}", *base[4:], "--cacert", str(pki.ca))) > 0
    assert listed(run(*base, "--cacert", str(pki.ca), "--tls-server-name", "localhost")) > 0
    line = one_line_error(run(*base, "--cacert", str(pki.ca), "--tls-server-name", "gw.example"))
    assert "hint: the gateway's certificate does not name 'gw.example' (--tls-server-name)" in line
    # gRPC's default roots do not hold the test CA.
    line = one_line_error(run(*base, "--tls"))
    assert "the gateway's certificate is not signed by a CA of gRPC's default roots" in line
    # Nothing listening.
    line = one_line_error(run(*base[:2], "--target", "127.0.0.1:1", "--cacert", str(pki.ca)))
    assert "hint: is a gateway listening on 127.0.0.1:1?" in line


@needs_openssl
def test_tls_to_a_plain_text_gateway_says_so(gateway: GatewayThread, pki: Pki) -> None:
    env = {"ZSTACK_ISO_CACERT": str(pki.ca), "ZSTACK_ISO_SESSION": SESSION}
    line = one_line_error(run("candidates", VM, "--target", gateway.target, env=env))
    assert "hint: the gateway does not seem to serve TLS: leave out $ZSTACK_ISO_CACERT" in line


# --- usage errors: exit 2, one line, before any call ---------------------------------------------------


def _usage_cases(pki: Pki, tmp: Path) -> list[tuple[list[str], dict[str, str], str]]:
    two_tokens = tmp / "two-tokens"
    two_tokens.write_text(f"{TOKEN}\n{TOKEN}y\n")
    not_pem = tmp / "not.pem"
    not_pem.write_text("this is not a certificate\n")
    return [
        (["--session", SESSION, "--token", TOKEN], {}, "--session and --token exclude each other"),
        ([], {"ZSTACK_ISO_SESSION": SESSION, "ZSTACK_ISO_TOKEN": TOKEN}, "are both set"),
        ([], {"ZSTACK_ISO_TOKEN": TOKEN, "ZSTACK_ISO_TOKEN_FILE": str(two_tokens)}, "not both"),
        (["--token-file", str(two_tokens)], {}, "it must hold exactly one caller token"),
        (["--token-file", str(tmp / "missing")], {}, "cannot read the caller token"),
        (["--token", "has space"], {}, "the caller token from --token must be printable ASCII"),
        (["--cert", str(pki.client_cert)], {}, "--cert needs --key too"),
        ([], {"ZSTACK_ISO_KEY": str(pki.client_key)}, "$ZSTACK_ISO_KEY needs --cert too"),
        (["--cacert", str(tmp / "missing.pem")], {}, "cannot read the CA certificates"),
        (["--cacert", str(not_pem)], {}, "holds no readable PEM certificate"),
        (
            ["--cacert", str(pki.ca), "--cert", str(pki.client_cert), "--key", str(pki.server_key)],
            {},
            "not a PEM private key of the certificate",
        ),
        ([], {"ZSTACK_ISO_CACERT": str(not_pem)}, "(from $ZSTACK_ISO_CACERT)"),
        ([], {"ZSTACK_ISO_TIMEOUT": "soon"}, "$ZSTACK_ISO_TIMEOUT: not a number of seconds"),
        ([], {"ZSTACK_ISO_TLS": "maybe"}, "$ZSTACK_ISO_TLS must be one of"),
        (["--target", ""], {}, "target must be HOST:PORT"),
    ]


@needs_openssl
def test_usage_errors_are_one_line_and_exit_2(
    gateway: GatewayThread, pki: Pki, sim: SimControl, tmp_path: Path
) -> None:
    for args, env, expected in _usage_cases(pki, tmp_path):
        done = run("candidates", VM, "--target", gateway.target, *args, env=env)
        line = one_line_error(done, code=2)
        assert expected in line, (args, env, line)
    assert not sim.zstack_requests()


# --- timeouts and JSON ---------------------------------------------------------------------------------


def test_timeout_from_flag_and_environment(gateway: GatewayThread, sim: SimControl) -> None:
    sim.config(latency_ms=3000)
    env = {"ZSTACK_ISO_SESSION": SESSION, "ZSTACK_ISO_TIMEOUT": "0.5"}
    line = one_line_error(run("candidates", VM, "--target", gateway.target, env=env))
    assert line.startswith("zstack-iso: DEADLINE_EXCEEDED")
    line = one_line_error(run("candidates", VM, "--target", gateway.target, "--timeout", "0.5", env=env))
    assert line.startswith("zstack-iso: DEADLINE_EXCEEDED")


def test_json_writes_64_bit_integers_as_numbers_and_dates_in_rfc_3339(
    gateway: GatewayThread, sim: SimControl
) -> None:
    done = run("candidates", VM, "--target", gateway.target, "--session", SESSION, "--json")
    assert done.returncode == 0, done.stderr
    images = json.loads(done.stdout)
    sized = [i for i in images if "size" in i]
    assert sized, "the demo data has images with a size"
    for image in sized:
        assert type(image["size"]) is int and image["size"] > 0
        assert type(image["actualSize"]) is int
    refs = [ref for i in images for ref in i["backupStorageRefs"]]
    assert refs and all(type(ref["id"]) is int for ref in refs)
    dated = [i for i in images if "createDate" in i]
    assert dated
    for image in dated:
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", image["createDate"])
    # 11:54:07 in the MN's zone (Asia/Shanghai, UTC+8) is 03:54:07 UTC.
    centos = next(i for i in images if i["name"] == "CentOS-7-x86_64-DVD-2009.iso")
    assert centos["createDate"] == "2022-07-22T03:54:07Z"
    assert centos["size"] == 4712300544  # beyond 32 bits, exact
    seed = next(i for i in images if i["uuid"] == zstack_sim.DEMO_SEED_IMAGE_UUID)
    assert "size" not in seed  # absent in ZStack's answer: absent here, not 0
