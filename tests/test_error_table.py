"""Every row of the error table (docs/errors.md), produced for real by the simulator's fault injection."""

from __future__ import annotations

import time

import grpc
import pytest
import zstack_sim
from conftest import AUTH
from statuses import decode
from zstack.v1 import vm_instance_service_pb2 as svc
from zstack_sim.processes import free_port

VM = zstack_sim.DEMO_VM_UUID
C = grpc.StatusCode


def fail(stub, timeout: float | None = 5.0):
    request = svc.GetCandidateIsoRequest(vm_instance_uuid=VM)
    with pytest.raises(grpc.RpcError) as info:
        list(stub.GetCandidateIso(request, metadata=AUTH, timeout=timeout))
    return decode(info.value)


ZSTACK_ROWS = [
    ("SYS.1003", C.NOT_FOUND),
    ("SYS.1007", C.INVALID_ARGUMENT),
    ("SYS.1001", C.UNAVAILABLE),  # no caller deadline drove it: see the deadline test below
    ("SYS.1009", C.UNAVAILABLE),
    ("SYS.1010", C.UNAVAILABLE),
    ("SYS.1011", C.UNAVAILABLE),
    ("SYS.1012", C.UNAVAILABLE),
    ("SYS.1000", C.INTERNAL),
    ("ID.1000", C.UNAUTHENTICATED),
    ("ID.1001", C.UNAUTHENTICATED),
    ("ID.1002", C.PERMISSION_DENIED),
    ("ID.1006", C.RESOURCE_EXHAUSTED),
    ("HOST.1001", C.UNKNOWN),
]


@pytest.mark.parametrize(("zcode", "grpc_code"), ZSTACK_ROWS)
def test_zstack_error_code_maps_to_grpc_code(stub, sim, zcode, grpc_code):
    sim.fault(action="zstack_error", code=zcode, details=f"details of {zcode}")
    d = fail(stub, timeout=None)
    assert d.code == grpc_code
    assert d.message == f"ZStack {zcode}: details of {zcode}"
    assert d.error_code.code == zcode
    assert d.info.metadata["zstackCode"] == zcode
    assert d.info.metadata["httpStatus"] == "503"


def test_zstack_timeout_driven_by_the_callers_deadline_is_deadline_exceeded(stub, sim):
    sim.fault(action="zstack_error", code="SYS.1001", details="timeout after 3 seconds")
    d = fail(stub, timeout=3.0)
    assert d.code == C.DEADLINE_EXCEEDED
    assert d.error_code.code == "SYS.1001"
    # The caller's deadline went to ZStack as X-API-Timeout (whole seconds, rounded up).
    assert sim.zstack_requests()[-1]["headers"]["X-API-Timeout"] in ("2", "3", "4")


def test_newer_global_session_code_is_unauthenticated(stub, sim):
    sim.fault(
        action="respond",
        status=503,
        body='{"error":{"code":"ID.9999","globalErrorCode":"ORG_ZSTACK_IDENTITY_10020","details":"x"}}',
    )
    assert fail(stub).code == C.UNAUTHENTICATED


PLAIN_ROWS = [
    (400, "missing header 'Authorization'", C.UNAUTHENTICATED, "ZSTACK_REJECTED_CREDENTIALS"),
    (
        400,
        "Invalid header[X-Job-UUID], it must be a UUID with '-' stripped",
        C.INTERNAL,
        "ZSTACK_BAD_REQUEST",
    ),
    (403, "requestTimeTooSkewed", C.UNAUTHENTICATED, "ZSTACK_REJECTED_CREDENTIALS"),
    (404, "no api mapping to /v1/vm-instances/x/iso-candidates", C.UNIMPLEMENTED, "ZSTACK_API_NOT_FOUND"),
    (500, 'For input string: "abc"', C.INTERNAL, "ZSTACK_INTERNAL_ERROR"),
    (
        502,
        "<html><head><title>502 Bad Gateway</title></head><body>nginx</body></html>",
        C.UNAVAILABLE,
        "UPSTREAM_UNAVAILABLE",
    ),
    (503, "<html><title>503 Service Unavailable</title></html>", C.UNAVAILABLE, "UPSTREAM_UNAVAILABLE"),
    (504, "<html><title>504 Gateway Time-out</title></html>", C.UNAVAILABLE, "UPSTREAM_UNAVAILABLE"),
    (202, '{"location":"http://mn/zstack/v1/api-jobs/x"}', C.INTERNAL, "ZSTACK_UNEXPECTED_ASYNC_REPLY"),
    (302, "", C.UNKNOWN, "ZSTACK_UNEXPECTED_STATUS"),
]


@pytest.mark.parametrize(("status", "body", "grpc_code", "reason"), PLAIN_ROWS)
def test_non_json_answers_map_to_grpc_code(stub, sim, status, body, grpc_code, reason):
    headers = {"Location": "http://elsewhere.invalid/"} if status == 302 else {}
    sim.fault(action="respond", status=status, body=body, headers=headers)
    d = fail(stub)
    assert d.code == grpc_code
    assert d.info.reason == reason
    assert d.info.metadata["httpStatus"] == str(status)
    assert d.error_code.code == f"GATEWAY.{reason}"
    assert "<html" not in d.message
    # A redirect is never followed; only a proxy's 502/503/504 is retried (3 tries by default).
    assert len(sim.zstack_requests()) == (3 if status in (502, 503, 504) else 1)


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ("{not json", "not valid JSON"),
        ('{"inventories": {}}', "inventories"),
        ('{"something": []}', "inventories"),
        ('{"inventories": [{"uuid": "x", "size": "big"}]}', "inventories[0].size"),
        ('{"inventories": [42]}', "inventories[0]"),
    ],
)
def test_unreadable_success_body_is_internal_naming_the_problem(stub, sim, body, needle):
    sim.fault(action="respond", status=200, body=body)
    d = fail(stub)
    assert d.code == C.INTERNAL
    assert d.info.reason == "ZSTACK_BAD_RESPONSE"
    assert needle in d.message


def test_connection_refused_is_unavailable(make_gateway):
    port = free_port()  # nothing listens there
    d = fail(make_gateway(zstack_url=f"http://127.0.0.1:{port}").stub)
    assert d.code == C.UNAVAILABLE
    assert d.info.reason == "UPSTREAM_UNAVAILABLE"
    assert f"127.0.0.1:{port}" in d.message


def test_callers_deadline_bounds_a_hanging_zstack(stub, sim):
    sim.fault(action="hang")
    started = time.monotonic()
    d = fail(stub, timeout=0.5)
    elapsed = time.monotonic() - started
    assert d.code == C.DEADLINE_EXCEEDED
    assert elapsed < 0.5 + 0.25


def test_default_timeout_bounds_a_call_without_deadline(stub, sim, gateway):
    sim.fault(action="drip", interval=0.1)
    started = time.monotonic()
    d = fail(stub, timeout=None)
    elapsed = time.monotonic() - started
    assert d.code == C.DEADLINE_EXCEEDED
    assert "default timeout" in d.message
    assert gateway.config.default_timeout <= elapsed < gateway.config.default_timeout + 0.5


def test_details_trailer_stays_small_however_long_the_cause_chain(stub, sim):
    cause: dict = {"code": "SYS.1000", "details": "root " + "y" * 20000}
    for i in range(60):
        cause = {"code": f"SYS.{1100 + i}", "details": f"level {i} " + "z" * 3000, "cause": cause}
    sim.fault(action="zstack_error", code="SYS.1006", details="x" * 50000, cause=cause)
    d = fail(stub)
    assert d.code == C.UNKNOWN
    assert 0 < d.details_bin_size < 8 * 1024
    assert d.error_code.code == "SYS.1006"
    assert "[cut by the gateway]" in d.error_code.details
    depth, ec = 0, d.error_code
    while ec.HasField("cause"):
        ec, depth = ec.cause, depth + 1
    assert 1 <= depth <= 8
    assert "cut by the gateway" in ec.details


def test_cancelled_call_abandons_its_upstream_request(stub, sim):
    sim.fault(action="hang")
    request = svc.GetCandidateIsoRequest(vm_instance_uuid=VM)
    call = stub.GetCandidateIso(request, metadata=AUTH, timeout=30)
    deadline = time.monotonic() + 5
    while not sim.zstack_requests() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert sim.stats()["in_flight"] == 1
    call.cancel()
    while sim.stats()["in_flight"] and time.monotonic() < deadline:
        time.sleep(0.02)
    assert sim.stats()["in_flight"] == 0


# --- the ISO workflow: every error of ZStack's attach and detach, produced by the simulator ------

ISO = zstack_sim.DEMO_ISO_UUID
STOPPED = zstack_sim.DEMO_STOPPED_VM_UUID
MISSING = zstack_sim.DEMO_MISSING_VM_UUID
BAD_SESSION = (("authorization", "OAuth " + "0" * 32),)


def _attach(vm: str = STOPPED, iso: str = ISO, **kw) -> svc.AttachIsoRequest:
    return svc.AttachIsoRequest(vm_instance_uuid=vm, iso_uuid=iso, **kw)


def _cd_rom(sim) -> str:
    return sim.vm(STOPPED)["vmCdRoms"][0]["uuid"]


# (id, set-up, rpc, request, metadata, ZStack code, gRPC code, text in the details)
ISO_ROWS = [
    ("iso-missing", None, "AttachIso", _attach(iso="f" * 32), AUTH, "SYS.1003", C.NOT_FOUND, "type:ImageVO"),
    ("vm-missing", None, "AttachIso", _attach(vm=MISSING), AUTH, "SYS.1003", C.NOT_FOUND, "VmInstanceVO"),
    # Both missing: ZStack reports the ISO; a missing resource beats an invalid session.
    (
        "both-missing",
        None,
        "AttachIso",
        _attach(MISSING, "f" * 32),
        BAD_SESSION,
        "SYS.1003",
        C.NOT_FOUND,
        "isoUuid",
    ),
    ("session", None, "AttachIso", _attach(), BAD_SESSION, "ID.1001", C.UNAUTHENTICATED, "Session expired"),
    (
        "not-an-iso",
        None,
        "AttachIso",
        _attach(iso=zstack_sim.DEMO_SEED_IMAGE_UUID),
        AUTH,
        "SYS.1007",
        C.INVALID_ARGUMENT,
        "Unsupported Image Media Type",
    ),
    (
        "already-attached",
        "attach",
        "AttachIso",
        _attach(),
        AUTH,
        "SYS.1006",
        C.FAILED_PRECONDITION,
        "already has an ISO",
    ),
    (
        "cd-rom-missing",
        None,
        "AttachIso",
        _attach(cd_rom_uuid="c" * 32),
        AUTH,
        "SYS.1006",
        C.FAILED_PRECONDITION,
        "does not exist",
    ),
    (
        "cd-rom-holds-an-iso",
        "attach-second",
        "AttachIso",
        "tagged",
        AUTH,
        "SYS.1006",
        C.FAILED_PRECONDITION,
        "has mounted the ISO",
    ),
    (
        "vm-state",
        "starting",
        "AttachIso",
        _attach(),
        AUTH,
        "SYS.1006",
        C.FAILED_PRECONDITION,
        "current vm instance state[Starting]",
    ),
    (
        "no-free-cd-rom",
        "attach-second",
        "AttachIso",
        _attach(),
        AUTH,
        "SYS.1006",
        C.FAILED_PRECONDITION,
        "CD-ROMs have mounted ISO",
    ),
    (
        "detach-vm-missing",
        None,
        "DetachIso",
        svc.DetachIsoRequest(vm_instance_uuid=MISSING),
        AUTH,
        "SYS.1003",
        C.NOT_FOUND,
        "VmInstanceVO",
    ),
    (
        "detach-several-isos",
        "two-isos",
        "DetachIso",
        svc.DetachIsoRequest(vm_instance_uuid=STOPPED),
        AUTH,
        "SYS.1006",
        C.FAILED_PRECONDITION,
        "multiple ISOs attached",
    ),
    (
        "detach-vm-state",
        "starting",
        "DetachIso",
        svc.DetachIsoRequest(vm_instance_uuid=STOPPED),
        AUTH,
        "SYS.1006",
        C.FAILED_PRECONDITION,
        "current vm instance state[Starting]",
    ),
]


def _set_up(step, stub, sim) -> None:
    second = zstack_sim.DEMO_SECOND_ISO_UUID
    if step == "attach":
        stub.AttachIso(_attach(), metadata=AUTH, timeout=10)
    elif step == "attach-second":
        stub.AttachIso(_attach(iso=second), metadata=AUTH, timeout=10)
    elif step == "two-isos":
        sim.set_vm(STOPPED, cd_roms=2)
        stub.AttachIso(_attach(), metadata=AUTH, timeout=10)
        stub.AttachIso(_attach(iso=second), metadata=AUTH, timeout=10)
    elif step == "starting":
        sim.set_vm(STOPPED, state="Starting")


@pytest.mark.parametrize(
    ("step", "rpc", "request_", "metadata", "zcode", "grpc_code", "text"),
    [row[1:] for row in ISO_ROWS],
    ids=[row[0] for row in ISO_ROWS],
)
def test_iso_workflow_errors_reach_the_caller_with_zstacks_error_code(
    stub, sim, step, rpc, request_, metadata, zcode, grpc_code, text
):
    _set_up(step, stub, sim)
    if request_ == "tagged":
        request_ = _attach(cd_rom_uuid=_cd_rom(sim))
    with pytest.raises(grpc.RpcError) as info:
        getattr(stub, rpc)(request_, metadata=metadata, timeout=10)
    d = decode(info.value)
    assert d.code == grpc_code
    assert d.error_code.code == zcode
    assert text in d.error_code.details
    assert d.message.startswith(f"ZStack {zcode}: ")
    assert d.info.metadata["zstackCode"] == zcode
    assert d.info.metadata["httpStatus"] == "503"  # the job's poll
    assert d.info.metadata["jobUuid"] == sim.accepted_jobs()[-1]
    if step == "starting":
        assert d.error_code.cause.code == "VM.1010"  # SYS.1006 is classified by its cause


# Job outcomes given as the job's result by a fault rule on the poll (the simulator produces ID.1002
# itself too, see the test below; nothing in it deletes a VM meanwhile, SYS.1000).
JOB_RESULT_ROWS = [
    ("ID.1002", C.PERMISSION_DENIED),
    ("SYS.1000", C.INTERNAL),
    ("SYS.1001", C.UNAVAILABLE),  # a job timeout is ZStack's own: the caller's deadline was not sent
    ("SYS.1006", C.FAILED_PRECONDITION),
    ("HOST.1001", C.UNKNOWN),
]


@pytest.mark.parametrize(("zcode", "grpc_code"), JOB_RESULT_ROWS)
def test_job_results_classify_like_any_zstack_error(stub, sim, zcode, grpc_code):
    sim.fault(action="zstack_error", path="/api-jobs/", code=zcode, details=f"details of {zcode}")
    with pytest.raises(grpc.RpcError) as info:
        stub.AttachIso(_attach(), metadata=AUTH, timeout=10)
    d = decode(info.value)
    assert (d.code, d.error_code.code, d.info.metadata["zstackCode"]) == (grpc_code, zcode, zcode)


def test_sys_1006_caused_by_an_unknown_code_is_unknown(stub, sim):
    sim.fault(
        action="zstack_error",
        path="/api-jobs/",
        code="SYS.1006",
        details="failed",
        cause={"code": "HOST.1001", "details": "agent failure"},
    )
    with pytest.raises(grpc.RpcError) as info:
        stub.AttachIso(_attach(), metadata=AUTH, timeout=10)
    assert decode(info.value).code == C.UNKNOWN


def test_another_accounts_vm_is_permission_denied(make_gateway):
    """ZStack's account check (Normal accounts only): ID.1002 through the job's poll."""
    from zstack_sim.data import Account, Session

    data = zstack_sim.demo_data()
    user, session = "0badc0de" * 4, "5e551011" * 4
    data.accounts[user] = Account(user, "tenant", "secret")
    data.sessions[session] = Session(session, user, 1714525200.0, None)
    data.vms[zstack_sim.DEMO_VM_UUID].account_uuid = user
    with zstack_sim.run_in_thread(data) as sim:
        stub = make_gateway(zstack_url=sim.url).stub
        tenant = (("authorization", f"OAuth {session}"),)
        with pytest.raises(grpc.RpcError) as info:
            stub.AttachIso(_attach(), metadata=tenant, timeout=10)
        d = decode(info.value)
        assert (d.code, d.error_code.code) == (C.PERMISSION_DENIED, "ID.1002")
        assert "doesn't belong to the account" in d.error_code.details
        # Its own VM, and the admin on any VM, are allowed.
        stub.AttachIso(_attach(zstack_sim.DEMO_VM_UUID), metadata=tenant, timeout=10)
        stub.DetachIso(
            svc.DetachIsoRequest(vm_instance_uuid=zstack_sim.DEMO_VM_UUID), metadata=AUTH, timeout=10
        )


def test_an_iso_on_no_backup_storage_cannot_go_to_a_running_vm(make_gateway):
    """Row 13 of ZStack's attach: a Running VM needs the ISO on a backup storage of its zone; a Stopped
    VM takes it anyway (ZStack checks nothing more for it)."""
    data = zstack_sim.demo_data()
    data.images[ISO]["backupStorageRefs"] = []
    with zstack_sim.run_in_thread(data) as sim:
        stub = make_gateway(zstack_url=sim.url).stub
        with pytest.raises(grpc.RpcError) as info:
            stub.AttachIso(_attach(zstack_sim.DEMO_VM_UUID), metadata=AUTH, timeout=10)
        d = decode(info.value)
        assert (d.code, d.error_code.code) == (C.FAILED_PRECONDITION, "SYS.1006")
        assert d.error_code.details.startswith(
            f"cannot find the iso[uuid:{ISO}] in any connected backup storage"
        )
        stub.AttachIso(_attach(), metadata=AUTH, timeout=10)
