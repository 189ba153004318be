"""Credentials modes end to end against the simulator: pass-through, account (login, shared login,
re-login on an expired session, logout, a wrong password), AccessKey (signing, the Date zone, clock
skew), caller tokens, the refusal to start as an open door, and no secret in any output."""

from __future__ import annotations

import base64
import copy
import dataclasses
import hashlib
import json
import logging
import os
import re
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import pytest
import zstack_sim
from conftest import AUTH, SESSION
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from harness import access_key, account
from statuses import decode
from zstack.v1 import vm_instance_service_pb2 as svc
from zstack.v1 import vm_instance_service_pb2_grpc as svc_grpc
from zstack_gateway import Config, ConfigError, cli
from zstack_gateway.auth.access_key import access_key_signature, http_date
from zstack_gateway.settings import Secret
from zstack_sim.auth import parse_http_date
from zstack_sim.control_client import SimControl
from zstack_sim.processes import start_gateway

ROOT = Path(__file__).resolve().parents[1]
VM = zstack_sim.DEMO_VM_UUID
C = grpc.StatusCode
PASSWORD = zstack_sim.DEMO_ACCOUNT_PASSWORD
KEY_ID = zstack_sim.DEMO_ACCESS_KEY_ID
KEY_SECRET = zstack_sim.DEMO_ACCESS_KEY_SECRET
TOKEN = "caller-token-0123456789abcdef"
OTHER_TOKEN = "caller-token-fedcba9876543210"
LOGIN_PATH = "/zstack/v1/accounts/login"
ISO_PATH = re.compile(r"^/zstack/v1/vm-instances/[0-9a-f]{32}/iso-candidates$")


def request(vm: str = VM) -> svc.GetCandidateIsoRequest:
    return svc.GetCandidateIsoRequest(vm_instance_uuid=vm)


def images(stub, metadata=(), timeout=10.0, vm: str = VM) -> list[str]:
    return [
        i.uuid
        for c in stub.GetCandidateIso(request(vm), metadata=metadata, timeout=timeout)
        for i in c.inventories
    ]


def failure(stub, metadata=(), vm: str = VM):
    with pytest.raises(grpc.RpcError) as info:
        images(stub, metadata=metadata, vm=vm)
    return decode(info.value)


def logins(sim: SimControl) -> list[dict[str, Any]]:
    return [r for r in sim.requests() if r["path"] == LOGIN_PATH]


def iso_requests(sim: SimControl) -> list[dict[str, Any]]:
    return [r for r in sim.requests() if ISO_PATH.match(r["path"])]


def sessions_used(sim: SimControl) -> list[str]:
    return [r["headers"]["Authorization"].removeprefix("OAuth ") for r in iso_requests(sim)]


def burst(stub, n: int, metadata=()) -> list[Any]:
    barrier = threading.Barrier(n)

    def one(_: int) -> Any:
        barrier.wait()
        try:
            return images(stub, metadata=metadata)
        except grpc.RpcError as exc:
            return exc.code()

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(one, range(n)))


# --- pass-through (the default) --------------------------------------------------------------------


def test_pass_through_sends_the_callers_session_unchanged(stub, sim: SimControl):
    assert images(stub, metadata=AUTH)
    assert sessions_used(sim) == [SESSION]
    assert not logins(sim)


# --- account mode ----------------------------------------------------------------------------------


def test_account_mode_logs_in_and_uses_its_session(make_gateway, sim: SimControl):
    stub = make_gateway(**account()).stub
    assert images(stub) == list(zstack_sim.DEMO_IMAGE_UUIDS)
    [login] = logins(sim)
    assert login["method"] == "PUT"
    assert "Authorization" not in login["headers"]
    body = json.loads(login["body"])
    assert body == {
        "logInByAccount": {
            "accountName": "admin",
            "password": hashlib.sha512(PASSWORD.encode()).hexdigest(),
        }
    }
    [used] = sessions_used(sim)
    assert re.fullmatch(r"[0-9a-f]{32}", used) and used != SESSION
    # The session slides on: later calls reuse it without logging in again.
    assert images(stub)
    assert sessions_used(sim) == [used, used]
    assert len(logins(sim)) == 1


def test_concurrent_first_calls_share_one_login(make_gateway, sim: SimControl):
    stub = make_gateway(**account(coalesce=False)).stub
    sim.fault(path="^/zstack/v1/accounts/login$", action="delay_only", delay=0.3, times=1)
    results = burst(stub, 12)
    assert all(isinstance(r, list) and r for r in results), results
    assert len(logins(sim)) == 1
    assert len(set(sessions_used(sim))) == 1
    assert len(iso_requests(sim)) == 12


def test_an_expired_session_means_one_login_again_and_one_retry(make_gateway, sim: SimControl):
    stub = make_gateway(**account()).stub
    assert images(stub)
    [first] = sessions_used(sim)
    sim.expire_session(first)
    assert images(stub) == list(zstack_sim.DEMO_IMAGE_UUIDS)
    used = sessions_used(sim)
    assert used[:2] == [first, first] and len(used) == 3 and used[2] != first
    assert len(logins(sim)) == 2


def test_an_idle_session_that_timed_out_is_renewed_by_a_login(make_gateway, sim: SimControl):
    sim.config(session_timeout=60)
    stub = make_gateway(**account()).stub
    assert images(stub)
    sim.advance_clock(30)
    assert images(stub)  # used within the timeout: the session slid on
    sim.advance_clock(61)
    assert images(stub)  # idle past the timeout: ID.1001, login, retry
    assert len(logins(sim)) == 2
    used = sessions_used(sim)
    assert used[0] == used[1] == used[2] != used[3]


def test_a_burst_failing_on_one_expired_session_logs_in_once(make_gateway, sim: SimControl):
    stub = make_gateway(**account(coalesce=False)).stub
    assert images(stub)
    [first] = sessions_used(sim)
    sim.expire_session(first)
    sim.config(latency_ms=100)
    results = burst(stub, 8)
    assert all(isinstance(r, list) and r for r in results), results
    assert len(logins(sim)) == 2


def test_a_session_invalid_twice_reaches_the_caller_as_unauthenticated(make_gateway, sim: SimControl):
    stub = make_gateway(**account()).stub
    sim.fault(action="zstack_error", code="ID.1001", details="Session expired", times=2)
    d = failure(stub)
    assert d.code == C.UNAUTHENTICATED
    assert d.error_code is not None and d.error_code.code == "ID.1001"
    assert len(logins(sim)) == 2  # the first login, then exactly one more
    assert len(iso_requests(sim)) == 2  # the call, then exactly one retry
    assert images(stub)  # the next call works


def test_the_newer_global_session_code_also_logs_in_again(make_gateway, sim: SimControl):
    stub = make_gateway(**account()).stub
    sim.fault(
        action="zstack_error",
        code="SYS.1006",
        details="session invalid",
        globalErrorCode="ORG_ZSTACK_IDENTITY_10020",
        times=1,
    )
    assert images(stub)
    assert len(logins(sim)) == 2


def test_shutdown_logs_the_session_out(make_gateway, sim: SimControl):
    gw = make_gateway(**account())
    stub = gw.stub
    assert images(stub)
    [session] = sessions_used(sim)
    gw.stop()
    gw.stop = lambda grace=0: None  # the fixture's stop has nothing left to do
    logout = [r for r in sim.requests() if r["method"] == "DELETE"]
    assert [r["path"] for r in logout] == [f"/zstack/v1/accounts/sessions/{session}"]
    assert session not in {s["uuid"] for s in sim.sessions()}


def test_a_wrong_password_is_a_clear_error_without_a_login_loop(make_gateway, sim: SimControl):
    gw = make_gateway(**account(zstack_password=Secret("not-the-password")))
    stub = gw.stub
    d = failure(stub)
    assert d.code == C.UNAUTHENTICATED
    assert d.message.startswith(
        "ZStack rejected the gateway's account 'admin': wrong account name or password"
    )
    assert d.info.reason == "ZSTACK_ACCOUNT_REJECTED"
    assert d.error_code is not None and d.error_code.code == "ID.1000"
    # Within the back-off the next calls fail the same way without asking ZStack again.
    for _ in range(3):
        assert failure(stub).message == d.message
    assert len(logins(sim)) == 1
    assert not iso_requests(sim)
    problem = gw.call(gw.gateway.client.credentials.problem())
    assert problem is not None and "wrong account name or password" in problem.message


def test_a_wrong_password_turns_health_not_serving(make_gateway, sim: SimControl):
    gw = make_gateway(**account(zstack_password=Secret("not-the-password"), readiness_interval=60))
    with gw.channel() as ch:
        health = health_pb2_grpc.HealthStub(ch)
        status = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5).status
    assert status == health_pb2.HealthCheckResponse.NOT_SERVING
    assert "wrong account name or password" in (gw.gateway.readiness.last_problem or "")


def test_a_good_password_logs_in_at_start_for_health(make_gateway, sim: SimControl):
    gw = make_gateway(**account(readiness_interval=60))
    stub = gw.stub
    with gw.channel() as ch:
        health = health_pb2_grpc.HealthStub(ch)
        status = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5).status
    assert status == health_pb2.HealthCheckResponse.SERVING
    assert len(logins(sim)) == 1
    assert images(stub)
    assert len(logins(sim)) == 1


def test_a_callers_own_session_is_refused_in_account_mode(make_gateway, sim: SimControl):
    stub = make_gateway(**account()).stub
    d = failure(stub, metadata=AUTH)
    assert d.code == C.INVALID_ARGUMENT
    assert d.info.reason == "CALLER_ZSTACK_CREDENTIALS_REFUSED"
    assert "its own account 'admin'" in d.message
    assert SESSION not in d.message
    assert not sim.zstack_requests()


def test_a_callers_bearer_token_is_never_forwarded(make_gateway, sim: SimControl, tmp_path):
    tokens = tmp_path / "tokens"
    tokens.write_text(f"# callers\n{TOKEN}\n\n{OTHER_TOKEN}\n")
    stub = make_gateway(**account(caller_tokens_file=str(tokens))).stub
    assert images(stub, metadata=(("authorization", f"Bearer {OTHER_TOKEN}"),))
    [sent] = [r["headers"]["Authorization"] for r in iso_requests(sim)]
    assert sent.startswith("OAuth ") and TOKEN not in sent and OTHER_TOKEN not in sent


# --- AccessKey mode --------------------------------------------------------------------------------


def _check_signature(req: dict[str, Any]) -> str:
    auth = req["headers"]["Authorization"]
    date = req["headers"]["Date"]
    m = re.fullmatch(r"ZStack ([^:]+):(.+)", auth)
    assert m and m.group(1) == KEY_ID
    expected = zstack_sim.auth.sign(KEY_SECRET, "GET", date, req["path"].removeprefix("/zstack"))
    assert m.group(2) == expected
    return date


@pytest.mark.parametrize("check_time_zone", [False, True])
def test_access_key_mode_signs_each_request_in_the_mns_zone(make_gateway, sim, check_time_zone):
    sim.config(check_time_zone=check_time_zone)
    stub = make_gateway(**access_key()).stub
    assert images(stub) == list(zstack_sim.DEMO_IMAGE_UUIDS)
    assert images(stub)
    for req in iso_requests(sim):
        date = _check_signature(req)
        # EEE, dd MMM yyyy HH:mm:ss z, in the MN's zone (Asia/Shanghai) written as an offset.
        assert re.fullmatch(r"[A-Z][a-z]{2}, \d{2} [A-Z][a-z]{2} \d{4} \d{2}:\d{2}:\d{2} GMT\+08:00", date)
    assert not logins(sim)


def test_a_gmt_date_works_when_zstack_checks_the_zone(make_gateway, sim: SimControl):
    sim.config(check_time_zone=True)
    stub = make_gateway(**access_key(access_key_date_zone="GMT")).stub
    assert images(stub)
    [req] = iso_requests(sim)
    assert _check_signature(req).endswith(" GMT")


def test_a_gmt_date_to_a_wall_clock_mn_is_skewed_and_says_so(make_gateway, sim: SimControl):
    # ZStack's default rest.checkTimeZone=false compares wall clocks: GMT is 8 h off Asia/Shanghai.
    stub = make_gateway(**access_key(access_key_date_zone="GMT")).stub
    d = failure(stub)
    assert d.code == C.UNAUTHENTICATED
    assert "skew" in d.message.lower()
    assert d.info.reason == "ZSTACK_REJECTED_CREDENTIALS"
    assert d.info.metadata["httpStatus"] == "403"


def test_sixteen_minutes_of_clock_skew_is_unauthenticated(make_gateway, sim: SimControl):
    stub = make_gateway(**access_key()).stub
    assert images(stub)
    sim.advance_clock(16 * 60)
    d = failure(stub)
    assert d.code == C.UNAUTHENTICATED
    assert "requestTimeTooSkewed" in d.message and "skew" in d.message.lower()
    sim.advance_clock(-16 * 60 + 14 * 60)  # 14 minutes: within ZStack's 15
    assert images(stub)


def test_a_wrong_access_key_secret_is_unauthenticated(make_gateway, sim: SimControl):
    stub = make_gateway(**access_key(zstack_access_key_secret=Secret("not-the-secret"))).stub
    d = failure(stub)
    assert d.code == C.UNAUTHENTICATED
    assert d.error_code is not None and d.error_code.code == "ID.1000"
    assert "not-the-secret" not in d.message
    assert len(iso_requests(sim)) == 1  # never retried: nothing to refresh


def test_a_callers_own_credentials_are_refused_in_access_key_mode(make_gateway, sim: SimControl):
    stub = make_gateway(**access_key()).stub
    for value in (f"OAuth {SESSION}", "ZStack someone:c2lnbmF0dXJl"):
        d = failure(stub, metadata=(("authorization", value),))
        assert d.code == C.INVALID_ARGUMENT
        assert "AccessKey" in d.message
    assert not sim.zstack_requests()
    # Something else in 'authorization' (a mesh's JWT, say) is ignored, never forwarded.
    assert images(stub, metadata=(("authorization", "Basic dXNlcjpwYXNz"),))
    [req] = iso_requests(sim)
    assert req["headers"]["Authorization"].startswith("ZStack ")


def test_http_date_and_signature_helpers():
    from datetime import UTC, datetime
    from zoneinfo import ZoneInfo

    moment = datetime(2024, 3, 5, 7, 8, 9, tzinfo=UTC)
    assert http_date(moment) == "Tue, 05 Mar 2024 07:08:09 GMT"
    shanghai = moment.astimezone(ZoneInfo("Asia/Shanghai"))
    assert http_date(shanghai) == "Tue, 05 Mar 2024 15:08:09 GMT+08:00"
    assert http_date(moment.astimezone(ZoneInfo("America/St_Johns"))) == "Tue, 05 Mar 2024 03:38:09 GMT-03:30"
    for text in (http_date(moment), http_date(shanghai)):
        parsed = parse_http_date(text)
        assert parsed is not None and parsed == moment
    date = http_date(moment)
    expected = base64.b64encode(
        __import__("hmac").new(b"s3cret", f"GET\n{date}\n/v1/a b".encode(), hashlib.sha1).digest()
    ).decode()
    assert access_key_signature(Secret("s3cret"), "GET", date, "/v1/a%20b") == expected


# --- caller tokens ---------------------------------------------------------------------------------


def test_caller_tokens_guard_the_api_but_not_health_or_reflection(make_gateway, sim, tmp_path):
    tokens = tmp_path / "tokens"
    tokens.write_text(f"{TOKEN}\n")
    gw = make_gateway(**account(caller_tokens_file=str(tokens)))
    stub = gw.stub
    d = failure(stub)
    assert d.code == C.UNAUTHENTICATED and d.info.reason == "CALLER_TOKEN_MISSING"
    assert "authorization: Bearer <token>" in d.message
    d = failure(stub, metadata=(("authorization", f"Bearer {TOKEN}x"),))
    assert d.code == C.UNAUTHENTICATED and d.info.reason == "CALLER_TOKEN_INVALID"
    assert TOKEN not in d.message
    d = failure(stub, metadata=(("authorization", f"OAuth {TOKEN}"),))
    assert d.code == C.UNAUTHENTICATED and d.info.reason == "CALLER_TOKEN_MISSING"
    assert not sim.zstack_requests()
    assert images(stub, metadata=(("authorization", f"Bearer {TOKEN}"),))
    assert images(stub, metadata=(("authorization", f"bearer  {TOKEN} "),))
    with gw.channel() as ch:
        health = health_pb2_grpc.HealthStub(ch)
        assert (
            health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5).status
            == health_pb2.HealthCheckResponse.SERVING
        )
        reflect = reflection_pb2_grpc.ServerReflectionStub(ch)
        [answer] = list(
            reflect.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
        )
        names = {s.name for s in answer.list_services_response.service}
        assert "zstack.v1.VmInstanceService" in names


def test_a_refused_caller_gets_its_request_id_one_log_line_and_one_count(make_gateway, sim, tmp_path, caplog):
    """The caller check runs inside the status and telemetry steps: its refusal is a status with
    its ErrorInfo, comes with the call's request id, and is logged and counted like any failure."""
    caplog.set_level(logging.INFO, logger="zstack_gateway")
    tokens = tmp_path / "tokens"
    tokens.write_text(f"{TOKEN}\n")
    gw = make_gateway(**account(caller_tokens_file=str(tokens)))
    metadata = (("authorization", f"Bearer {TOKEN}x"), ("x-request-id", "refused-1"))
    call = gw.stub.GetCandidateIso(request(VM), metadata=metadata, timeout=5)
    with pytest.raises(grpc.RpcError) as info:
        list(call)
    assert decode(info.value).info.reason == "CALLER_TOKEN_INVALID"
    assert ("x-request-id", "refused-1") in call.initial_metadata()
    deadline = time.monotonic() + 3  # the line is written as the call ends, on the gateway's thread
    while time.monotonic() < deadline:
        lines = [r for r in caplog.records if getattr(r, "request_id", None) == "refused-1"]
        text = gw.gateway.metrics.render().decode()
        if lines and "zstack_gateway_rpcs_in_flight 0.0" in text:
            break
        time.sleep(0.02)
    assert [(r.grpc_code, r.levelname) for r in lines] == [("UNAUTHENTICATED", "WARNING")]
    assert 'zstack_gateway_rpcs_total{code="UNAUTHENTICATED",method="GetCandidateIso"} 1.0' in text
    assert "zstack_gateway_rpcs_in_flight 0.0" in text
    assert TOKEN not in caplog.text
    assert not iso_requests(sim)


def test_caller_tokens_from_the_environment(simulator, monkeypatch):
    env = {
        "ZSTACK_URL": simulator.url,
        "GATEWAY_AUTH_MODE": "access-key",
        "ZSTACK_ACCESS_KEY_ID": KEY_ID,
        "ZSTACK_ACCESS_KEY_SECRET": KEY_SECRET,
        "GATEWAY_CALLER_TOKENS": f"{TOKEN}, {OTHER_TOKEN}",
        "GATEWAY_LISTEN": "0.0.0.0:0",
    }
    config = cli.config_from([], env)
    assert [t.reveal() for t in config.secrets.caller_tokens] == [TOKEN, OTHER_TOKEN]
    assert config.zstack_access_key_secret.reveal() == KEY_SECRET


# --- configuration: secrets and the refusal to be an open door ----------------------------------------


def test_there_is_no_flag_for_a_secret():
    parser = cli.build_parser()
    options = {o for a in parser._actions for o in a.option_strings}
    for flag in ("--password", "--zstack-password", "--zstack-access-key-secret", "--caller-tokens"):
        assert flag not in options
    assert {"--password-file", "--zstack-password-file", "--access-key-secret-file"} <= options
    with pytest.raises(SystemExit):
        parser.parse_args(["--password", PASSWORD])


def test_secrets_from_files_and_their_spellings(simulator, tmp_path):
    pw = tmp_path / "pw"
    pw.write_text(PASSWORD + "\n")
    secret = tmp_path / "secret"
    secret.write_text(KEY_SECRET)
    base = ["--zstack-url", simulator.url]
    for flag in ("--password-file", "--zstack-password-file"):
        config = cli.config_from(
            [*base, "--auth-mode", "account", "--zstack-account", "admin", flag, str(pw)], {}
        )
        assert config.secrets.password.reveal() == PASSWORD
    config = cli.config_from(
        [
            *base,
            "--auth-mode",
            "access-key",
            "--zstack-access-key-id",
            KEY_ID,
            "--access-key-secret-file",
            str(secret),
        ],
        {},
    )
    assert config.secrets.access_key_secret.reveal() == KEY_SECRET
    config = cli.config_from(
        [*base, "--auth-mode", "account"], {"ZSTACK_ACCOUNT": "admin", "ZSTACK_PASSWORD": LEAK_PASSWORD}
    )
    assert config.zstack_password.reveal() == LEAK_PASSWORD
    for shown in (repr(config), str(config), f"{config.zstack_password}", str(config.zstack_password)):
        assert LEAK_PASSWORD not in shown
    assert "Secret('***')" in repr(config)
    assert LEAK_PASSWORD not in json.dumps(dataclasses.asdict(config), default=str)
    assert LEAK_PASSWORD not in repr(copy.deepcopy(config))


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"auth_mode": "kerberos"}, "--auth-mode must be one of"),
        ({"auth_mode": "account"}, "needs --zstack-account"),
        ({"auth_mode": "account", "zstack_account": "admin"}, "set ZSTACK_PASSWORD or --password-file"),
        (
            account(zstack_password=Secret(), zstack_password_file="/nonexistent/pw"),
            "--password-file: cannot read",
        ),
        (account(zstack_password_file="PWFILE"), "either ZSTACK_PASSWORD or --password-file"),
        ({"zstack_account": "admin"}, "--zstack-account is for --auth-mode account"),
        (account(zstack_access_key_id=KEY_ID), "is for --auth-mode access-key, but --auth-mode is account"),
        ({"auth_mode": "access-key"}, "needs --zstack-access-key-id"),
        ({"auth_mode": "access-key", "zstack_access_key_id": KEY_ID}, "ZSTACK_ACCESS_KEY_SECRET"),
        (access_key(access_key_date_zone="Mars/Olympus"), "--access-key-date-zone"),
        (
            {"caller_tokens": Secret(TOKEN)},
            "caller tokens (--caller-tokens-file, GATEWAY_CALLER_TOKENS) need",
        ),
        (account(caller_tokens=Secret("short")), "caller token #1 is shorter than 16"),
        (account(caller_tokens_file="EMPTYFILE"), "is empty"),
    ],
)
def test_settings_that_cannot_work_are_refused(simulator, tmp_path, settings, message):
    pw = tmp_path / "pw"
    pw.write_text("x")
    empty = tmp_path / "empty"
    empty.write_text("\n")
    resolved = {
        k: str(pw) if v == "PWFILE" else str(empty) if v == "EMPTYFILE" else v for k, v in settings.items()
    }
    with pytest.raises(ConfigError) as info:
        Config(zstack_url=simulator.url, **resolved).check()
    assert message in str(info.value)


@pytest.mark.parametrize("mode", [account(), access_key()], ids=["account", "access-key"])
def test_a_credential_holding_gateway_on_an_open_address_refuses_to_start(simulator, mode):
    with pytest.raises(ConfigError) as info:
        Config(zstack_url=simulator.url, listen="0.0.0.0:50051", **mode).check()
    text = str(info.value)
    assert text.startswith("refusing to start")
    assert "anyone who can reach --listen 0.0.0.0:50051 would act as that account" in text
    for way in ("--tls-client-ca", "--caller-tokens-file", "loopback", "--allow-anonymous-callers"):
        assert way in text
    # Each way out works.
    for fix in (
        {"allow_anonymous_callers": True},
        {"caller_tokens": Secret(TOKEN)},
        {"listen": "127.0.0.1:50051"},
        {"listen": "[::1]:50051"},
        {"listen": "localhost:50051"},
    ):
        Config(zstack_url=simulator.url, **{**mode, "listen": "0.0.0.0:50051", **fix}).check()
    # Pass-through holds nothing, so it may listen anywhere.
    Config(zstack_url=simulator.url, listen="0.0.0.0:50051").check()


def test_the_cli_exits_2_saying_why(simulator, capsys, monkeypatch):
    for name in list(os.environ):
        if name.startswith(("ZSTACK_", "GATEWAY_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("ZSTACK_PASSWORD", PASSWORD)
    code = cli.main(
        [
            "--zstack-url",
            simulator.url,
            "--listen",
            "0.0.0.0:0",
            "--auth-mode",
            "account",
            "--zstack-account",
            "admin",
        ]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "refusing to start" in err and "--allow-anonymous-callers" in err
    assert PASSWORD not in err


# --- no secret in any output, at debug level ---------------------------------------------------------


class Run:
    """The gateway as a process (python -m zstack_gateway), at DEBUG, its output collected."""

    def __init__(self, log_dir: Path, name: str, zstack_url: str, args: list[str], env: dict[str, str]):
        self.proc = start_gateway(
            log_dir,
            zstack_url,
            "--log-level",
            "DEBUG",
            *args,
            name=name,
            command=[sys.executable, "-m", "zstack_gateway"],
            env={"GRPC_VERBOSITY": "DEBUG", "PYTHONASYNCIODEBUG": "1", **env},
            cwd=ROOT,
        )
        self.statuses: list[str] = []

    def call(self, metadata=(), vm: str = VM) -> None:
        """One call; what a caller can see of a failure (message and every trailer) is kept."""
        with grpc.insecure_channel(self.proc.address) as ch:
            stub = svc_grpc.VmInstanceServiceStub(ch)
            try:
                images(stub, metadata=metadata, vm=vm)
            except grpc.RpcError as exc:
                assert isinstance(exc, grpc.Call)
                self.statuses.append(exc.details() or "")
                for key, value in exc.trailing_metadata() or ():
                    text = value.decode("latin-1") if isinstance(value, bytes) else value
                    self.statuses.append(f"{key}: {text}")

    def stop(self) -> str:
        """SIGTERM, an exit with 0, and all the process wrote and the callers saw."""
        assert self.proc.stop(30) == 0, self.proc.log()
        return self.proc.output() + self.proc.log() + "\n".join(self.statuses)


LEAK_PASSWORD = "Pw-7f3a9c1e-leak-test"  # distinctive, unlike the demo's "password"
LEAK_SECRET = "Sk-2b8d4e6f0a1c3e5g7i9k-leak-test"


def _forbidden(sim: SimControl, secrets: list[str]) -> list[str]:
    """The secrets, the password hashes, and every credential the simulator saw on the wire."""
    found = list(secrets)
    found += [hashlib.sha512(s.encode()).hexdigest() for s in secrets]
    for req in sim.requests():
        auth = req["headers"].get("Authorization", "")
        if auth.startswith("OAuth "):
            found.append(auth.removeprefix("OAuth ").strip())
        elif auth.startswith("ZStack "):
            found.append(auth.partition(":")[2])  # a signature
        if req["path"].startswith("/zstack/v1/accounts/sessions/"):
            found.append(req["path"].split("/")[5])
    found += [s["uuid"] for s in sim.sessions()]
    return [f for f in dict.fromkeys(found) if f]


@pytest.fixture
def leak_sim() -> Iterator[tuple[str, SimControl]]:
    data = zstack_sim.demo_data()
    data.accounts[zstack_sim.DEMO_ACCOUNT_UUID].password = LEAK_PASSWORD
    data.access_keys[KEY_ID].secret = LEAK_SECRET
    with zstack_sim.run_in_thread(data) as simulator:
        yield simulator.url, SimControl(simulator.url)


def test_no_secret_appears_in_any_output_at_debug_level(leak_sim, tmp_path):
    url, sim = leak_sim
    pw_file = tmp_path / "pw"
    pw_file.write_text(LEAK_PASSWORD + "\n")
    secret_file = tmp_path / "secret"
    secret_file.write_text("wrong-" + LEAK_SECRET)
    tokens_file = tmp_path / "tokens"
    tokens_file.write_text(TOKEN + "\n")
    bearer = (("authorization", f"Bearer {TOKEN}"),)
    outputs: list[tuple[str, str, list[str]]] = []

    def scenario(name: str, args: list[str], env: dict[str, str], secrets: list[str], calls) -> None:
        sim.reset()
        run = Run(tmp_path, name.replace(" ", "-"), url, args, env)
        try:
            calls(run)
        finally:
            text = run.stop()
        outputs.append((name, text, _forbidden(sim, secrets)))

    def account_calls(run: Run) -> None:
        run.call(bearer)
        run.call(bearer, vm=zstack_sim.DEMO_MISSING_VM_UUID)
        for s in sim.sessions():
            if s["uuid"] != SESSION:
                sim.expire_session(s["uuid"])
        run.call(bearer)  # ID.1001, login again, retry
        sim.fault(action="zstack_error", code="ID.1001", details="Session expired", times=2)
        run.call(bearer)  # UNAUTHENTICATED
        run.call((("authorization", f"Bearer {TOKEN}-wrong"),))
        run.call()
        run.call((*bearer, ("authorization", f"OAuth {SESSION}")))

    scenario(
        "account",
        [
            "--auth-mode",
            "account",
            "--zstack-account",
            "admin",
            "--password-file",
            str(pw_file),
            "--caller-tokens-file",
            str(tokens_file),
        ],
        {},
        [LEAK_PASSWORD, TOKEN, SESSION],
        account_calls,
    )

    def wrong_password_calls(run: Run) -> None:
        run.call(bearer)
        run.call(bearer)

    scenario(
        "wrong password",
        ["--auth-mode", "account", "--zstack-account", "admin", "--log-format", "text"],
        {"ZSTACK_PASSWORD": "wrong-" + LEAK_PASSWORD, "GATEWAY_CALLER_TOKENS": TOKEN},
        ["wrong-" + LEAK_PASSWORD, TOKEN],
        wrong_password_calls,
    )

    def access_key_calls(run: Run) -> None:
        run.call()
        run.call(vm=zstack_sim.DEMO_MISSING_VM_UUID)
        sim.advance_clock(16 * 60)
        run.call()
        run.call((("authorization", f"OAuth {SESSION}"),))

    scenario(
        "access key",
        ["--auth-mode", "access-key", "--zstack-access-key-id", KEY_ID, "--log-format", "text"],
        {"ZSTACK_ACCESS_KEY_SECRET": LEAK_SECRET},
        [LEAK_SECRET, SESSION],
        access_key_calls,
    )
    scenario(
        "wrong access key secret",
        [
            "--auth-mode",
            "access-key",
            "--zstack-access-key-id",
            KEY_ID,
            "--access-key-secret-file",
            str(secret_file),
        ],
        {},
        ["wrong-" + LEAK_SECRET],
        lambda run: run.call(),
    )

    def pass_through_calls(run: Run) -> None:
        run.call(AUTH)
        run.call((("authorization", "OAuth " + "0" * 32),))

    scenario("pass-through", [], {}, [SESSION, "0" * 32], pass_through_calls)

    for name, text, forbidden in outputs:
        assert re.search(r"DEBUG|\"level\": \"DEBUG\"", text), f"{name}: no debug output at all"
        for secret in forbidden:
            assert secret not in text, f"{name}: a secret ({secret[:6]}...) appears in the output"
