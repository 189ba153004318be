"""The simulator's ISO workflow over real HTTP: async jobs, every error in ZStack's order, state changes."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from typing import Any

import pytest
import zstack_sim
from zstack_sim.control_client import SimControl

SESSION = zstack_sim.DEMO_SESSION_UUID
DEMO_ISO_UUID = zstack_sim.DEMO_ISO_UUID
DEMO_SECOND_ISO_UUID = zstack_sim.DEMO_SECOND_ISO_UUID
RUNNING = zstack_sim.DEMO_VM_UUID
STOPPED = zstack_sim.DEMO_STOPPED_VM_UUID
STARTING = zstack_sim.DEMO_STARTING_VM_UUID
MISSING = zstack_sim.DEMO_MISSING_VM_UUID
NOT_ISO = zstack_sim.DEMO_SEED_IMAGE_UUID
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class Http:
    def __init__(self, url: str) -> None:
        self.base = url + "/zstack/v1"

    def send(
        self, method: str, path: str, body: Any = None, session: str = SESSION, job: str | None = None
    ) -> tuple[int, str]:
        headers = {"Authorization": f"OAuth {session}"}
        if job is not None:
            headers["X-Job-UUID"] = job
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.base + path, data=data, method=method, headers=headers)
        try:
            with _NO_PROXY.open(request, timeout=10) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def job(self, method: str, path: str, body: Any = None, **kw: Any) -> tuple[int, Any]:
        """Submit an async API and poll its job to the end: (status, parsed body or text)."""
        status, text = self.send(method, path, body, **kw)
        assert status == 202, text
        location = json.loads(text)["location"]
        job = location.rsplit("/", 1)[1]
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            status, text = self.send("GET", f"/api-jobs/{job}")
            if status != 202:
                return status, json.loads(text) if text.startswith("{") else text
            time.sleep(0.02)
        raise AssertionError("job did not finish")


@pytest.fixture
def http(simulator: zstack_sim.ThreadedSimulator, sim: SimControl) -> Http:
    sim.config(job_seconds=0.0)
    return Http(simulator.url)


def attach_path(vm: str, iso: str) -> str:
    return f"/vm-instances/{vm}/iso/{iso}"


def cd_roms(sim: SimControl, vm: str) -> list[dict[str, Any]]:
    roms: list[dict[str, Any]] = sim.vm(vm)["vmCdRoms"]
    return roms


def test_accepted_job_points_elsewhere_runs_then_answers(http: Http, sim: SimControl, simulator: Any) -> None:
    sim.config(job_seconds=1.0)
    status, text = http.send("POST", attach_path(STOPPED, DEMO_ISO_UUID), {}, job="a" * 32)
    assert status == 202
    body = json.loads(text)
    assert list(body) == ["apiTimeout", "location"]
    assert body["apiTimeout"] == 1_800_000
    assert body["location"] == "http://10.0.0.10:8080/zstack/v1/api-jobs/" + "a" * 32
    assert str(simulator.port) not in body["location"]
    assert http.send("GET", "/api-jobs/" + "a" * 32) == (202, "{}")
    assert http.send("POST", "/api-jobs/" + "a" * 32)[0] == 405
    status, text = http.send("GET", "/api-jobs/" + "a" * 32)
    while status == 202:
        time.sleep(0.05)
        status, text = http.send("GET", "/api-jobs/" + "a" * 32)
    assert status == 200
    [rom] = json.loads(text)["inventory"]["vmCdRoms"]
    assert rom["isoUuid"] == DEMO_ISO_UUID
    assert "isoInstallPath" not in rom and "protocol" not in rom  # a Stopped VM: the database only


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE"])
def test_duplicate_job_uuid_is_refused_while_the_job_is_kept(
    http: Http, sim: SimControl, method: str
) -> None:
    http.job("POST", attach_path(STOPPED, DEMO_ISO_UUID), {}, job="b" * 32)
    path = attach_path(STOPPED, DEMO_ISO_UUID) if method != "DELETE" else f"/vm-instances/{STOPPED}/iso"
    assert http.send(method, path, {}, job="b" * 32) == (400, f"Duplicate job uuid[{'b' * 32}]")
    assert len(sim.accepted_jobs()) == 1
    sim.advance_clock(10801)  # done jobs are purged after rest.completedApi.expiredPeriod
    assert http.send("GET", "/api-jobs/" + "b" * 32) == (404, "the job has been expired")
    assert http.send("DELETE", f"/vm-instances/{STOPPED}/iso", job="b" * 32)[0] == 202


def test_running_vm_gets_path_and_protocol_and_detach_keeps_protocol(http: Http, sim: SimControl) -> None:
    status, body = http.job("POST", attach_path(RUNNING, DEMO_ISO_UUID), {"systemTags": []})
    assert status == 200
    [rom] = body["inventory"]["vmCdRoms"]
    assert rom["isoUuid"] == DEMO_ISO_UUID and rom["isoInstallPath"] and rom["protocol"]
    status, body = http.job("DELETE", f"/vm-instances/{RUNNING}/iso")
    assert status == 200
    [rom] = body["inventory"]["vmCdRoms"]
    assert "isoUuid" not in rom and "isoInstallPath" not in rom and rom["protocol"]
    # Idempotent: nothing attached, still a success.
    assert http.job("DELETE", f"/vm-instances/{RUNNING}/iso?isoUuid={DEMO_ISO_UUID}")[0] == 200


def error_of(result: tuple[int, Any]) -> tuple[str, str]:
    status, body = result
    assert status == 503, body
    return body["error"]["code"], body["error"]["details"]


def test_attach_errors_come_through_the_poll_in_zstacks_order(http: Http, sim: SimControl) -> None:
    # Both missing: the ISO is reported; a missing resource beats a bad session.
    assert error_of(http.job("POST", attach_path(MISSING, "f" * 32), session="0" * 32)) == (
        "SYS.1003",
        f"invalid field[isoUuid], resource[uuid:{'f' * 32}, type:ImageVO] not found",
    )
    assert error_of(http.job("POST", attach_path(MISSING, DEMO_ISO_UUID), session="0" * 32))[1] == (
        f"invalid field[vmInstanceUuid], resource[uuid:{MISSING}, type:VmInstanceVO] not found"
    )
    assert error_of(http.job("POST", attach_path(STOPPED, NOT_ISO), session="0" * 32))[0] == "ID.1001"
    assert error_of(http.job("POST", attach_path(STOPPED, NOT_ISO))) == (
        "SYS.1007",
        "Unsupported Image Media Type: [RootVolumeTemplate] ",
    )
    tag = {"systemTags": ["cdromUuid::" + "c" * 32]}
    assert error_of(http.job("POST", attach_path(STOPPED, DEMO_ISO_UUID), tag)) == (
        "SYS.1006",
        f"The cdRom[uuid:{'c' * 32}] does not exist",
    )
    # The body's "params" key is ignored; the "null" key is read.
    rom = cd_roms(sim, STOPPED)[0]["uuid"]
    assert http.job("POST", attach_path(STOPPED, DEMO_ISO_UUID), {"null": {}, "params": {"x": 1}})[0] == 200
    assert error_of(http.job("POST", attach_path(STOPPED, DEMO_ISO_UUID))) == (
        "SYS.1006",
        f"VM[uuid:{STOPPED}] already has an ISO[uuid:{DEMO_ISO_UUID}] attached",
    )
    assert error_of(
        http.job("POST", attach_path(STOPPED, DEMO_SECOND_ISO_UUID), {"systemTags": [f"cdromUuid::{rom}"]})
    ) == ("SYS.1006", f"VM[uuid:{STOPPED}] cdRom[uuid:{rom}] has mounted the ISO")
    assert error_of(http.job("POST", attach_path(STOPPED, DEMO_SECOND_ISO_UUID))) == (
        "SYS.1006",
        f"All vm[uuid:{STOPPED}] CD-ROMs have mounted ISO",
    )


def test_a_vm_in_a_transient_state_fails_with_vm_1010_as_cause(http: Http) -> None:
    status, body = http.job("POST", attach_path(STARTING, DEMO_ISO_UUID))
    assert status == 503
    error = body["error"]
    assert error["code"] == "SYS.1006"
    assert error["cause"]["code"] == "VM.1010"
    assert "current vm instance state[Starting]" in error["details"]
    assert "allowed states are [Stopped, Running, Paused]" in error["details"]


def test_detach_without_iso_uuid_needs_a_single_iso(http: Http, sim: SimControl) -> None:
    sim.set_vm(STOPPED, cd_roms=2)
    assert http.job("POST", attach_path(STOPPED, DEMO_ISO_UUID))[0] == 200
    assert http.job("POST", attach_path(STOPPED, DEMO_SECOND_ISO_UUID))[0] == 200
    assert [r.get("isoUuid") for r in cd_roms(sim, STOPPED)] == [DEMO_ISO_UUID, DEMO_SECOND_ISO_UUID]
    assert error_of(http.job("DELETE", f"/vm-instances/{STOPPED}/iso")) == (
        "SYS.1006",
        f"VM[uuid:{STOPPED}] has multiple ISOs attached, specify the isoUuid when detaching",
    )
    assert http.job("DELETE", f"/vm-instances/{STOPPED}/iso?isoUuid={DEMO_ISO_UUID}")[0] == 200
    assert http.job("DELETE", f"/vm-instances/{STOPPED}/iso")[0] == 200
    assert [r.get("isoUuid") for r in cd_roms(sim, STOPPED)] == [None, None]


def test_candidate_vms_are_running_or_stopped_vms_of_the_iso(http: Http) -> None:
    status, text = http.send("GET", f"/images/iso/{DEMO_ISO_UUID}/vm-candidates")
    assert status == 200
    uuids = [vm["uuid"] for vm in json.loads(text)["inventories"]]
    assert uuids == [RUNNING, STOPPED]
    status, text = http.send("GET", f"/images/iso/{'f' * 32}/vm-candidates", session="0" * 32)
    assert status == 503 and json.loads(text)["error"]["code"] == "SYS.1003"
    status, text = http.send("GET", f"/images/iso/{DEMO_ISO_UUID}/vm-candidates", session="0" * 32)
    assert status == 503 and json.loads(text)["error"]["code"] == "ID.1001"


def test_never_finishing_job_and_reset_after_acceptance(http: Http, sim: SimControl) -> None:
    sim.fault(action="job", never=True, times=1)
    assert http.send("POST", attach_path(STOPPED, DEMO_ISO_UUID), job="d" * 32)[0] == 202
    time.sleep(0.1)
    assert http.send("GET", "/api-jobs/" + "d" * 32) == (202, "{}")
    sim.advance_clock(100000)  # a job still running is never purged
    assert http.send("GET", "/api-jobs/" + "d" * 32) == (202, "{}")
    # A reset after acceptance: the client sees no 202, yet the job exists and runs.
    sim.fault(action="reset", path="/iso/", after_auth=True, times=1)
    with pytest.raises(OSError):
        http.send("POST", attach_path(RUNNING, DEMO_ISO_UUID), job="e" * 32)
    assert sim.accepted_jobs()[-1] == "e" * 32
    assert http.send("POST", attach_path(RUNNING, DEMO_ISO_UUID), job="e" * 32)[0] == 400
