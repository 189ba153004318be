"""The ISO workflow end to end against the simulator: GetCandidateVm, AttachIso and DetachIso with
ZStack's async jobs (submit once, poll, resume with request_id, deadlines), in every credentials mode."""

from __future__ import annotations

import hashlib
import json
import logging
import time
import urllib.request
from typing import Any

import grpc
import harness
import pytest
import zstack_sim
from conftest import AUTH
from grpc_health.v1 import health_pb2, health_pb2_grpc
from statuses import decode
from zstack.v1 import image_service_pb2 as image_svc
from zstack.v1 import image_service_pb2_grpc as image_grpc
from zstack.v1 import vm_instance_service_pb2 as svc
from zstack.v1 import vm_instance_service_pb2_grpc as svc_grpc
from zstack_sim.control_client import SimControl
from zstack_sim.processes import free_port, scrape

C = grpc.StatusCode
RUNNING = zstack_sim.DEMO_VM_UUID
STOPPED = zstack_sim.DEMO_STOPPED_VM_UUID
ISO = zstack_sim.DEMO_ISO_UUID
SECOND_ISO = zstack_sim.DEMO_SECOND_ISO_UUID
ATTACH_PATH = f"/zstack/v1/vm-instances/{STOPPED}/iso/{ISO}"


def attach(vm: str = STOPPED, iso: str = ISO, **kw: Any) -> svc.AttachIsoRequest:
    return svc.AttachIsoRequest(vm_instance_uuid=vm, iso_uuid=iso, **kw)


def detach(vm: str = STOPPED, **kw: Any) -> svc.DetachIsoRequest:
    return svc.DetachIsoRequest(vm_instance_uuid=vm, **kw)


def metadata_of(call: Any) -> dict[str, str]:
    return {m.key: m.value for m in call.initial_metadata() or ()}


def job_posts(sim: SimControl) -> list[dict[str, Any]]:
    """The requests that submit jobs (POST, PUT and DELETE, logins and logouts left out)."""
    return [
        r
        for r in sim.zstack_requests()
        if r["method"] in ("POST", "PUT", "DELETE") and "/accounts/" not in r["path"]
    ]


def wait_jobs_done(sim: SimControl) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        jobs = sim.jobs()
        if all(j["done"] for j in jobs):
            return jobs
        time.sleep(0.05)
    raise AssertionError(f"jobs still running: {sim.jobs()}")


def iso_on(sim: SimControl, vm: str) -> list[str | None]:
    return [rom.get("isoUuid") for rom in sim.vm(vm)["vmCdRoms"]]


def login(simulator_url: str) -> str:
    """A new session of the demo account, through ZStack's login API."""
    body = {
        "logInByAccount": {
            "accountName": zstack_sim.DEMO_ACCOUNT_NAME,
            "password": hashlib.sha512(zstack_sim.DEMO_ACCOUNT_PASSWORD.encode()).hexdigest(),
        }
    }
    request = urllib.request.Request(
        simulator_url + "/zstack/v1/accounts/login", data=json.dumps(body).encode(), method="PUT"
    )
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(request, timeout=5) as resp:
        uuid: str = json.loads(resp.read())["inventory"]["uuid"]
    return uuid


# --- the happy path ---------------------------------------------------------------------------------


def test_candidates_attach_see_it_detach(stub, sim: SimControl, channel) -> None:
    images = image_grpc.ImageServiceStub(channel)
    chunks = list(
        images.GetCandidateVm(image_svc.GetCandidateVmRequest(iso_uuid=ISO), metadata=AUTH, timeout=5)
    )
    vms = [vm for chunk in chunks for vm in chunk.inventories]
    assert [vm.uuid for vm in vms] == [RUNNING, STOPPED]
    running = vms[0]
    assert running.state == "Running" and running.HasField("host_uuid") and running.HasField("internal_id")
    assert running.vm_nics[0].used_ip_uuid and running.vm_nics[0].used_ips[0].ip_in_binary[:1] == b"\x0a"
    assert running.all_volumes[0].HasField("is_shareable") and not running.all_volumes[0].is_shareable
    assert not vms[1].HasField("host_uuid")  # a Stopped VM has no host
    assert running.create_date.seconds == 1714525200

    response, call = stub.AttachIso.with_call(attach(request_id="walk-1"), metadata=AUTH, timeout=10)
    [rom] = response.inventory.vm_cd_roms
    assert rom.iso_uuid == ISO and not rom.HasField("iso_install_path")  # Stopped: the database only
    job = metadata_of(call)["x-zstack-job-uuid"]
    assert [j["uuid"] for j in sim.jobs()] == [job]
    [post] = job_posts(sim)
    assert post["method"] == "POST" and post["path"] == ATTACH_PATH
    assert post["headers"]["X-Job-UUID"] == job and json.loads(post["body"] or "{}") == {}
    assert "X-API-Timeout" not in post["headers"]
    assert iso_on(sim, STOPPED) == [ISO]

    response = stub.DetachIso(detach(), metadata=AUTH, timeout=10)
    assert not response.inventory.vm_cd_roms[0].HasField("iso_uuid")
    assert iso_on(sim, STOPPED) == [None]
    delete = job_posts(sim)[-1]
    assert delete["method"] == "DELETE" and delete["path"] == f"/zstack/v1/vm-instances/{STOPPED}/iso"
    # Detach is idempotent: nothing attached is still a success.
    stub.DetachIso(detach(iso_uuid=ISO), metadata=AUTH, timeout=10)
    assert job_posts(sim)[-1]["query"] == [["isoUuid", ISO]]


def test_cd_rom_goes_as_system_tag_and_polls_go_to_the_configured_url(stub, sim: SimControl) -> None:
    sim.set_vm(RUNNING, cd_roms=2)
    second = sim.vm(RUNNING)["vmCdRoms"][1]["uuid"]
    response = stub.AttachIso(
        attach(RUNNING, cd_rom_uuid=second.upper(), system_tags=["x::y"], user_tags=["mine"]),
        metadata=AUTH,
        timeout=10,
    )
    roms = {r.uuid: r for r in response.inventory.vm_cd_roms}
    assert roms[second].iso_uuid == ISO and roms[second].iso_install_path and roms[second].protocol
    post = job_posts(sim)[0]
    assert json.loads(post["body"]) == {"systemTags": [f"cdromUuid::{second}", "x::y"], "userTags": ["mine"]}
    # The 202's location names 10.0.0.10:8080, an address of the management node's own: every poll
    # went to the simulator the gateway is configured with, for the job it sent.
    polls = [r for r in sim.zstack_requests() if "/api-jobs/" in r["path"]]
    assert polls and all(r["path"] == f"/zstack/v1/api-jobs/{post['headers']['X-Job-UUID']}" for r in polls)


# --- safe retries and resume ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "accepted_first", [False, True], ids=["reset-before-acceptance", "reset-after-acceptance"]
)
def test_a_reset_before_the_202_leads_to_exactly_one_job(stub, sim: SimControl, accepted_first: bool) -> None:
    sim.fault(action="reset", path="/iso/", after_auth=accepted_first, times=1)
    response = stub.AttachIso(attach(), metadata=AUTH, timeout=10)
    assert response.inventory.vm_cd_roms[0].iso_uuid == ISO
    posts = job_posts(sim)
    assert len(posts) == 2
    assert posts[0]["headers"]["X-Job-UUID"] == posts[1]["headers"]["X-Job-UUID"]
    assert len(sim.accepted_jobs()) == 1  # the mutation ran once
    assert iso_on(sim, STOPPED) == [ISO]


def test_same_request_id_after_a_lost_connection_gets_the_first_jobs_result(stub, sim: SimControl) -> None:
    sim.fault(action="job", seconds=1.0, times=1)
    future = stub.AttachIso.future(attach(request_id="lost-1"), metadata=AUTH, timeout=30)
    deadline = time.monotonic() + 10
    while not sim.jobs() and time.monotonic() < deadline:
        time.sleep(0.01)
    future.cancel()  # the caller goes away while the job runs
    [job] = wait_jobs_done(sim)
    assert job["status"] == 200
    response, call = stub.AttachIso.with_call(attach(request_id="lost-1"), metadata=AUTH, timeout=10)
    assert response.inventory.vm_cd_roms[0].iso_uuid == ISO
    assert metadata_of(call)["x-zstack-job-uuid"] == job["uuid"]
    assert sim.accepted_jobs() == [job["uuid"]]  # no second job
    # Without the request_id a retry is a new attach, which ZStack refuses: the same ISO is there.
    with pytest.raises(grpc.RpcError) as info:
        stub.AttachIso(attach(), metadata=AUTH, timeout=10)
    assert decode(info.value).code == C.FAILED_PRECONDITION
    assert len(sim.accepted_jobs()) == 2


def test_a_deadline_shorter_than_the_job_says_which_job_and_the_job_completes(stub, sim: SimControl) -> None:
    sim.fault(action="job", seconds=3.0, times=1)
    with pytest.raises(grpc.RpcError) as info:
        stub.AttachIso(attach(request_id="slow-1"), metadata=AUTH, timeout=1.5)
    d = decode(info.value)
    assert d.code == C.DEADLINE_EXCEEDED
    assert d.info.reason == "ZSTACK_JOB_STILL_RUNNING"
    job = d.info.metadata["jobUuid"]
    assert job in d.message
    assert {m.key: m.value for m in info.value.initial_metadata()}["x-zstack-job-uuid"] == job  # type: ignore[attr-defined]
    [done] = wait_jobs_done(sim)
    assert done["uuid"] == job and done["status"] == 200
    assert iso_on(sim, STOPPED) == [ISO]
    response = stub.AttachIso(attach(request_id="slow-1"), metadata=AUTH, timeout=10)
    assert response.inventory.vm_cd_roms[0].iso_uuid == ISO
    assert sim.accepted_jobs() == [job]


def test_a_job_that_never_finishes_ends_with_the_gateways_own_deadline(make_gateway, sim: SimControl) -> None:
    sim.fault(action="job", never=True, times=1)
    gw = make_gateway(default_timeout=1.0)
    with pytest.raises(grpc.RpcError) as info:
        gw.stub.DetachIso(detach(), metadata=AUTH)  # no deadline of the caller's
    d = decode(info.value)
    assert d.code == C.DEADLINE_EXCEEDED and d.info.reason == "ZSTACK_JOB_STILL_RUNNING"
    assert "default timeout" in d.message
    assert d.info.metadata["jobUuid"] == sim.jobs()[0]["uuid"]


def test_another_identitys_request_id_never_reaches_the_first_job(stub, sim: SimControl, simulator) -> None:
    stub.AttachIso(attach(request_id="shared-id"), metadata=AUTH, timeout=10)
    other = (("authorization", f"OAuth {login(simulator.url)}"),)
    with pytest.raises(grpc.RpcError) as info:
        stub.AttachIso(attach(request_id="shared-id"), metadata=other, timeout=10)
    # A job of its own, which ZStack runs and refuses: the first identity's result is not handed out.
    assert decode(info.value).code == C.FAILED_PRECONDITION
    first, second = sim.accepted_jobs()
    assert first != second
    posts = job_posts(sim)
    assert [p["headers"]["X-Job-UUID"] for p in posts] == [first, second]


def test_same_request_id_for_a_different_request_is_a_different_job(stub, sim: SimControl) -> None:
    stub.AttachIso(attach(request_id="r"), metadata=AUTH, timeout=10)
    stub.AttachIso(attach(RUNNING, request_id="r"), metadata=AUTH, timeout=10)
    assert len(set(sim.accepted_jobs())) == 2


def test_an_expired_job_has_its_own_reason(stub, sim: SimControl) -> None:
    sim.fault(action="respond", path="/api-jobs/", status=404, body="the job has been expired")
    with pytest.raises(grpc.RpcError) as info:
        stub.AttachIso(attach(), metadata=AUTH, timeout=10)
    d = decode(info.value)
    assert d.code == C.NOT_FOUND and d.info.reason == "ZSTACK_JOB_EXPIRED"
    assert d.info.metadata["jobUuid"] == sim.accepted_jobs()[0]


def test_transient_poll_failures_are_polled_again(stub, sim: SimControl) -> None:
    sim.fault(action="reset", path="/api-jobs/", times=2)
    response = stub.AttachIso(attach(), metadata=AUTH, timeout=10)
    assert response.inventory.vm_cd_roms[0].iso_uuid == ISO
    assert len(sim.accepted_jobs()) == 1


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ("{not json", "not valid JSON"),
        ('{"inventory": {"uuid": 5}}', "inventory.uuid"),
        ('{"inventory": {"vmNics": [{"usedIps": [{"ipInBinary": [1, 999]}]}]}}', "ipInBinary[1]"),
        ('{"inventory": {"cpuNum": 4294967296}}', "inventory.cpuNum"),
        ("{}", "inventory"),
    ],
)
def test_an_unreadable_job_result_is_internal_naming_the_field(
    stub, sim: SimControl, body: str, needle: str
) -> None:
    sim.config(job_seconds=0.0)
    sim.fault(action="respond", path="/api-jobs/", status=200, body=body)
    with pytest.raises(grpc.RpcError) as info:
        stub.AttachIso(attach(), metadata=AUTH, timeout=10)
    d = decode(info.value)
    assert d.code == C.INTERNAL and d.info.reason == "ZSTACK_BAD_RESPONSE"
    assert needle in d.message


# --- validation ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (attach(vm=""), "vm_instance_uuid"),
        (attach(iso="../../v1/accounts/login"), "iso_uuid"),
        (attach(cd_rom_uuid="abc"), "cd_rom_uuid"),
        (attach(system_tags=["cdromUuid::" + "a" * 32]), "system_tags[0]"),
        (attach(request_id="a b"), "request_id"),
        (attach(request_id="x" * 129), "request_id"),
        (attach(user_tags=["a\nb"]), "user_tags[0]"),
        (detach(iso_uuid=""), "iso_uuid"),
        (detach(vm="f" * 31), "vm_instance_uuid"),
    ],
)
def test_bad_requests_never_reach_zstack(stub, sim: SimControl, request_: Any, field: str) -> None:
    method = stub.AttachIso if isinstance(request_, svc.AttachIsoRequest) else stub.DetachIso
    with pytest.raises(grpc.RpcError) as info:
        method(request_, metadata=AUTH, timeout=5)
    d = decode(info.value)
    assert d.code == C.INVALID_ARGUMENT
    assert d.bad_request is not None and field in [v.field for v in d.bad_request.field_violations]
    assert sim.zstack_requests() == []


def test_get_candidate_vm_checks_its_request_and_reports_zstack_errors(channel, sim: SimControl) -> None:
    images = image_grpc.ImageServiceStub(channel)
    with pytest.raises(grpc.RpcError) as info:
        list(
            images.GetCandidateVm(image_svc.GetCandidateVmRequest(iso_uuid="nope"), metadata=AUTH, timeout=5)
        )
    assert decode(info.value).code == C.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as info:
        list(
            images.GetCandidateVm(
                image_svc.GetCandidateVmRequest(iso_uuid="f" * 32), metadata=AUTH, timeout=5
            )
        )
    d = decode(info.value)
    assert d.code == C.NOT_FOUND and d.error_code.code == "SYS.1003"
    # No candidate VM: one message with no VMs.
    sim.set_vm(RUNNING, candidates=[])
    chunks = list(
        images.GetCandidateVm(image_svc.GetCandidateVmRequest(iso_uuid=SECOND_ISO), metadata=AUTH, timeout=5)
    )
    assert len(chunks) == 1 and not chunks[0].inventories


# --- credentials modes ----------------------------------------------------------------------------------


def test_account_mode_logs_in_again_when_the_job_says_the_session_expired(
    make_gateway, sim: SimControl
) -> None:
    gw = make_gateway(**harness.account())
    stub: svc_grpc.VmInstanceServiceStub = gw.stub
    stub.AttachIso(attach(), metadata=(), timeout=10)
    [session] = [s["uuid"] for s in sim.sessions() if s["uuid"] != zstack_sim.DEMO_SESSION_UUID]
    sim.expire_session(session)
    response = stub.DetachIso(detach(request_id="relogin"), timeout=10)
    assert not response.inventory.vm_cd_roms[0].HasField("iso_uuid")
    jobs = sim.jobs()
    # The detach's first job failed at the session check (it ran nothing); a second job, after a
    # new login, did the work.
    assert [j["status"] for j in jobs] == [200, 503, 200]
    deletes = [r for r in job_posts(sim) if r["method"] == "DELETE"]
    assert deletes[0]["headers"]["Authorization"] != deletes[1]["headers"]["Authorization"]


def test_access_key_mode_signs_post_delete_and_polls(make_gateway, sim: SimControl) -> None:
    gw = make_gateway(**harness.access_key())
    stub: svc_grpc.VmInstanceServiceStub = gw.stub
    stub.AttachIso(attach(), timeout=10)
    stub.DetachIso(detach(), timeout=10)
    assert iso_on(sim, STOPPED) == [None]
    requests = sim.zstack_requests()
    assert {r["method"] for r in requests} == {"POST", "DELETE", "GET"}
    assert all(
        r["headers"]["Authorization"].startswith("ZStack ") and "Date" in r["headers"] for r in requests
    )
    assert [j["status"] for j in sim.jobs()] == [200, 200]


# --- around the data path: caller tokens, health, metrics, logs -----------------------------------------


def test_caller_tokens_health_metrics_and_logs_cover_the_new_rpcs(
    make_gateway, sim: SimControl, tmp_path, caplog
):
    token = "caller-token-iso-0123456789"
    tokens = tmp_path / "tokens"
    tokens.write_text(f"{token}\n")
    port = free_port()
    gw = make_gateway(**harness.account(caller_tokens_file=str(tokens)), metrics_listen=f"127.0.0.1:{port}")
    stub: svc_grpc.VmInstanceServiceStub = gw.stub
    with pytest.raises(grpc.RpcError) as info:
        stub.AttachIso(attach(), timeout=5)
    assert decode(info.value).info.reason == "CALLER_TOKEN_MISSING"
    with gw.channel() as ch:
        with pytest.raises(grpc.RpcError) as info:
            list(
                image_grpc.ImageServiceStub(ch).GetCandidateVm(
                    image_svc.GetCandidateVmRequest(iso_uuid=ISO), timeout=5
                )
            )
        assert decode(info.value).info.reason == "CALLER_TOKEN_MISSING"
        health = health_pb2_grpc.HealthStub(ch)
        for service in ("zstack.v1.ImageService", "zstack.v1.VmInstanceService"):
            status = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status
            assert status == health_pb2.HealthCheckResponse.SERVING
    assert not sim.zstack_requests()
    bearer = (("authorization", f"Bearer {token}"),)
    with caplog.at_level(logging.INFO, logger="zstack_gateway.rpc"):
        stub.AttachIso(attach(), metadata=bearer, timeout=10)
    [line] = [
        r
        for r in caplog.records
        if getattr(r, "rpc", "") == "/zstack.v1.VmInstanceService/AttachIso"
        and getattr(r, "grpc_code", "") == "OK"
    ]
    assert line.zstack_job == sim.accepted_jobs()[0]  # type: ignore[attr-defined]
    m = scrape(f"http://127.0.0.1:{port}/metrics")
    assert m['zstack_gateway_rpcs_total{code="OK",method="AttachIso"}'] == 1
    api = "/v1/vm-instances/{uuid}/iso/{uuid}"
    assert (
        m[f'zstack_gateway_upstream_responses_total{{api="{api}",http_status="202",zstack_code="none"}}'] == 1
    )
    assert (
        m[f'zstack_gateway_upstream_responses_total{{api="{api} job",http_status="200",zstack_code="none"}}']
        == 1
    )


@pytest.mark.parametrize(
    "location",
    [
        "http://evil.example:8080/zstack/v1/api-jobs/../../accounts/login",
        "http://evil.example/elsewhere",
        "",
    ],
)
def test_a_hostile_location_never_leads_elsewhere(stub, sim: SimControl, location: str) -> None:
    body = json.dumps({"apiTimeout": 1, "location": location}) if location else "not json"
    sim.fault(action="respond", path="/iso/", status=202, body=body, times=1)
    with pytest.raises(grpc.RpcError) as info:
        stub.AttachIso(attach(), metadata=AUTH, timeout=10)
    d = decode(info.value)
    # The fault answered in ZStack's place, so ZStack has no such job: the poll of the uuid the
    # gateway sent, on its configured URL, says so.
    assert d.code == C.NOT_FOUND and d.info.reason == "ZSTACK_JOB_EXPIRED"
    [post] = job_posts(sim)
    sent = post["headers"]["X-Job-UUID"]
    assert d.info.metadata["jobUuid"] == sent
    assert {r["path"] for r in sim.zstack_requests()} == {post["path"], f"/zstack/v1/api-jobs/{sent}"}
