"""The ZStack simulator over real HTTP: what a client of the management node sees."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import requests
import zstack_sim
from examples import SEED_BODY
from zstack_sim import (
    DEMO_ACCESS_KEY_ID,
    DEMO_ACCESS_KEY_SECRET,
    DEMO_EMPTY_VM_UUID,
    DEMO_IMAGE_UUIDS,
    DEMO_MISSING_VM_UUID,
    DEMO_MN_UUID,
    DEMO_SESSION_UUID,
    DEMO_STARTING_VM_UUID,
    DEMO_STOPPED_VM_UUID,
    DEMO_VM_UUID,
)
from zstack_sim.control_client import ControlError, SimControl
from zstack_sim.processes import start_simulator

SIM_DATA = Path(__file__).parent / "sim_data"
GSON_DATE = re.compile(
    r"^(Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) \d{1,2}, \d{4} \d{1,2}:\d{2}:\d{2} [AP]M$"
)
ISO_PATH = "/zstack/v1/vm-instances/{}/iso-candidates"
SHANGHAI = ZoneInfo("Asia/Shanghai")


class Client:
    """A plain HTTP client of one simulator (no proxies from the environment)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.http = requests.Session()
        self.http.trust_env = False
        self.sim = SimControl(url)

    def get(self, path: str, **kw: Any) -> requests.Response:
        kw.setdefault("timeout", 5)
        return self.http.get(self.url + path, **kw)

    def request(self, method: str, path: str, **kw: Any) -> requests.Response:
        kw.setdefault("timeout", 5)
        return self.http.request(method, self.url + path, **kw)

    def iso(
        self, vm: str = DEMO_VM_UUID, session: str | None = DEMO_SESSION_UUID, **kw: Any
    ) -> requests.Response:
        headers = dict(kw.pop("headers", {}))
        if session is not None:
            headers.setdefault("Authorization", f"OAuth {session}")
        return self.get(ISO_PATH.format(vm), headers=headers, **kw)

    def control(self, method: str, path: str, body: Any = None) -> Any:
        """A control-plane call (``/_sim`` + ``path``) that must succeed; its JSON answer."""
        return self.sim.call(method, "/_sim" + path, body)

    def fault(self, **rule: Any) -> dict[str, Any]:
        return self.sim.fault(**rule)

    def login(self, name: str = "admin", password: str = "password") -> requests.Response:
        digest = hashlib.sha512(password.encode()).hexdigest()
        body = {"logInByAccount": {"accountName": name, "password": digest}}
        return self.request("PUT", "/zstack/v1/accounts/login", json=body)

    def last_request(self) -> dict[str, Any]:
        return self.sim.requests()[-1]


@pytest.fixture(scope="module")
def server() -> Iterator[zstack_sim.ThreadedSimulator]:
    with zstack_sim.run_in_thread(zstack_sim.demo_data()) as sim:
        yield sim


@pytest.fixture
def zs(server: zstack_sim.ThreadedSimulator) -> Client:
    client = Client(server.url)
    client.sim.reset()
    return client


def raw_get(port: int, path: str, headers: dict[str, str] | None = None) -> socket.socket:
    """Send a GET on a fresh socket and return the socket, to watch the bytes arrive."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    lines = [f"GET {path} HTTP/1.1", "Host: sim", *(f"{k}: {v}" for k, v in (headers or {}).items())]
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
    return sock


def read_head(sock: socket.socket) -> tuple[bytes, bytes]:
    """The status line + headers, and whatever body bytes came with them."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(4096)
        assert chunk, f"connection closed before the headers ended: {buf!r}"
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    return head, rest


def content_length(head: bytes) -> int:
    match = re.search(rb"(?im)^content-length: *(\d+)", head)
    assert match, head
    return int(match.group(1))


AUTH = {"Authorization": f"OAuth {DEMO_SESSION_UUID}"}


# --- success bodies: Gson fidelity ------------------------------------------------------------------------


def test_success_is_gson_json_without_content_type(zs: Client) -> None:
    resp = zs.iso()
    assert resp.status_code == 200
    assert "Content-Type" not in resp.headers
    assert "Server" not in resp.headers
    raw = resp.content
    for escape in (rb"\u003d", rb"\u0026", rb"\u003c", rb"\u003e", rb"\u0027"):
        assert escape in raw
    assert "银河麒麟".encode() in raw  # non-ASCII stays raw UTF-8
    assert b"?a=b&c=d" not in raw and rb"?a\u003db\u0026c\u003dd" in raw
    assert b'{"inventories":[{"uuid":"cb2c34a46a753c5ab95807fabbae56af","name":"TinyLinux",' in raw
    assert b'": ' not in raw and b'", "' not in raw  # compact
    assert b".0," not in raw  # integers without decimals
    body = resp.json()
    images = body["inventories"]
    assert list(body) == ["inventories"]
    assert [i["uuid"] for i in images] == list(DEMO_IMAGE_UUIDS)
    kylin = images[3]
    assert kylin["url"] == "http://10.0.0.5/iso/kylin-v10-sp3.iso?a=b&c=d"
    assert "<SP3> & 'x86_64' 版=测试用" in kylin["description"]


def test_seed_image_is_the_api_page_example(zs: Client) -> None:
    seed = zs.iso().json()["inventories"][0]
    [example] = json.loads(SEED_BODY)["inventories"]
    example["backupStorageRefs"][0]["id"] = 1  # the page shows 0; real servers send the DB id
    assert seed == example


def test_full_images_have_every_field_in_declaration_order(zs: Client) -> None:
    images = zs.iso().json()["inventories"][1:]
    # ZStack's declaration order (contract §3.3), as the keys of each image.
    order = (
        "uuid,name,description,state,status,size,actualSize,md5Sum,url,mediaType,guestOsType,type,"
        "platform,architecture,format,system,virtio,createDate,lastOpDate,backupStorageRefs"
    )
    for image in images:
        assert ",".join(image) == order
        assert isinstance(image["size"], int) and isinstance(image["virtio"], bool)
        assert image["mediaType"] == "ISO" and image["architecture"] == "x86_64"
        assert GSON_DATE.match(image["createDate"]) and GSON_DATE.match(image["lastOpDate"])
        for ref in image["backupStorageRefs"]:
            assert isinstance(ref["id"], int) and ref["imageUuid"] == image["uuid"]
            assert list(ref)[:5] == ["id", "imageUuid", "backupStorageUuid", "installPath", "status"]
            assert GSON_DATE.match(ref["createDate"])
    centos = images[0]
    assert centos["createDate"] == "Jul 22, 2022 11:54:07 AM"  # stored as 2022-07-22T11:54:07+08:00
    refs = [ref for image in images for ref in image["backupStorageRefs"]]
    assert any("exportUrl" in ref and "exportMd5Sum" in ref for ref in refs)


def test_dates_follow_the_mn_time_zone() -> None:
    with zstack_sim.run_in_thread(zstack_sim.demo_data(), tz="UTC") as utc:
        images = Client(utc.url).iso().json()["inventories"]
    assert images[1]["createDate"] == "Jul 22, 2022 3:54:07 AM"
    assert images[4]["createDate"] == "Jan 8, 2023 4:15:02 PM"  # 2023-01-09T00:15:02+08:00


def test_content_type_switch(zs: Client) -> None:
    zs.control("POST", "/config", {"content_type": "application/json;charset=UTF-8"})
    assert zs.iso().headers["Content-Type"] == "application/json;charset=UTF-8"
    assert zs.iso(DEMO_MISSING_VM_UUID).headers["Content-Type"] == "application/json;charset=UTF-8"
    assert "Content-Type" not in zs.iso(session=None).headers  # plain-text errors: still none


def test_x_json_schema_adds_the_schema_map(zs: Client) -> None:
    body = zs.iso(DEMO_STOPPED_VM_UUID, headers={"X-JSON-Schema": "true"}).json()
    assert body["schema"] == {
        "inventories[0]": "org.zstack.header.image.ImageInventory",
        "inventories[0].backupStorageRefs[0]": "org.zstack.header.image.ImageBackupStorageRefInventory",
    }


# --- VM states ---------------------------------------------------------------------------------------------


def test_vm_states(zs: Client) -> None:
    stopped = zs.iso(DEMO_STOPPED_VM_UUID)
    assert stopped.status_code == 200 and len(stopped.json()["inventories"]) == 1
    for vm in (DEMO_STARTING_VM_UUID, DEMO_EMPTY_VM_UUID):
        resp = zs.iso(vm)
        assert resp.status_code == 200 and resp.content == b'{"inventories":[]}'
    zs.control("PATCH", f"/vms/{DEMO_STARTING_VM_UUID}", {"state": "Running"})
    assert len(zs.iso(DEMO_STARTING_VM_UUID).json()["inventories"]) == 2


def test_any_method_runs_a_single_api_path(zs: Client) -> None:
    resp = zs.request("POST", ISO_PATH.format(DEMO_STOPPED_VM_UUID), headers=AUTH)
    assert resp.status_code == 200 and len(resp.json()["inventories"]) == 1
    patch = zs.request("PATCH", ISO_PATH.format(DEMO_STOPPED_VM_UUID), headers=AUTH)
    assert patch.status_code == 405 and patch.headers["Content-Type"].startswith("text/html")


def test_vm_uuid_lookup_ignores_case_like_mysql(zs: Client) -> None:
    assert len(zs.iso(DEMO_STOPPED_VM_UUID.upper()).json()["inventories"]) == 1


# --- errors ---------------------------------------------------------------------------------------------


def test_missing_vm_is_checked_before_the_session(zs: Client) -> None:
    for session in (DEMO_SESSION_UUID, "0" * 32):
        resp = zs.iso(DEMO_MISSING_VM_UUID, session=session)
        assert resp.status_code == 503
        assert "Content-Type" not in resp.headers
        error = resp.json()["error"]
        assert list(error) == ["code", "description", "details", "cost"]
        assert error["code"] == "SYS.1003"
        assert error["description"] == "A resource can not be found"
        resource = f"resource[uuid:{DEMO_MISSING_VM_UUID}, type:VmInstanceVO]"
        assert error["details"] == f"invalid field[vmInstanceUuid], {resource} not found"
        assert re.fullmatch(r"\d+ms", error["cost"])


def test_invalid_session(zs: Client) -> None:
    resp = zs.iso(session="0" * 32)
    assert resp.status_code == 503
    assert resp.json() == {
        "error": {
            "code": "ID.1001",
            "description": "The session is invalid, either wrong session id or the session has been expired",
            "details": "Session expired",
            "elaboration": "错误信息: session 已过期，或者提供了不正确的 session id。",
            "cost": resp.json()["error"]["cost"],
        }
    }


@pytest.mark.parametrize(
    ("path", "headers", "status", "text"),
    [
        (ISO_PATH.format(DEMO_VM_UUID), {}, 400, "missing header 'Authorization'"),
        (
            ISO_PATH.format(DEMO_VM_UUID),
            {"Authorization": "Bearer x"},
            400,
            "Authorization type must be 'OAuth'",
        ),
        (
            ISO_PATH.format(DEMO_VM_UUID),
            {**AUTH, "X-Job-UUID": "123"},
            400,
            "Invalid header[X-Job-UUID], it must be a UUID with '-' stripped",
        ),
        (ISO_PATH.format(DEMO_VM_UUID), {**AUTH, "X-API-Timeout": "abc"}, 500, 'For input string: "abc"'),
        (
            ISO_PATH.format(DEMO_VM_UUID) + "/",
            AUTH,
            404,
            f"no api mapping to /v1/vm-instances/{DEMO_VM_UUID}/iso-candidates/",
        ),
        (
            "/zstack/v1/vm-instances/" + DEMO_VM_UUID,
            AUTH,
            404,
            f"no api mapping to /v1/vm-instances/{DEMO_VM_UUID}",
        ),
        ("/zstack/v2/vm-instances/x/iso-candidates", AUTH, 404, None),
        ("/zstack/v1/api-jobs/" + "a" * 32, {}, 404, "the job has been expired"),
        (ISO_PATH.format(DEMO_VM_UUID) + "?systemTags.x=1", AUTH, 500, None),
        (ISO_PATH.format(DEMO_VM_UUID) + "?systemTags.=1", AUTH, 500, "1"),
    ],
)
def test_rest_layer_errors_are_plain_text(
    zs: Client, path: str, headers: dict[str, str], status: int, text: str | None
) -> None:
    resp = zs.get(path, headers=headers)
    assert resp.status_code == status
    if text is not None:
        assert resp.text == text
        assert "Content-Type" not in resp.headers
    if path.startswith("/zstack/v2"):
        assert resp.headers["Content-Type"].startswith("text/html")  # the container's own page


def test_rest_layer_order_and_headers_that_pass(zs: Client) -> None:
    # Missing Authorization wins over a missing VM; a valid job uuid and timeout pass.
    assert zs.iso(DEMO_MISSING_VM_UUID, session=None).status_code == 400
    ok = zs.iso(headers={"X-Job-UUID": "f" * 32, "X-API-Timeout": "300"})
    assert ok.status_code == 200
    assert zs.request("POST", "/zstack/v1/api-jobs/" + "a" * 32).status_code == 405
    bad_body = zs.request("GET", ISO_PATH.format(DEMO_VM_UUID), headers=AUTH, data=b"{not json")
    assert bad_body.status_code == 500 and "MalformedJsonException" in bad_body.text


# --- sessions, login, logout -------------------------------------------------------------------------------


def test_login_logout_valid(zs: Client) -> None:
    resp = zs.login()
    assert resp.status_code == 200 and "Content-Type" not in resp.headers
    inv = resp.json()["inventory"]
    assert list(inv) == [
        "uuid",
        "accountUuid",
        "userUuid",
        "expiredDate",
        "createDate",
        "noSessionEvaluation",
    ]
    assert re.fullmatch(r"[0-9a-f]{32}", inv["uuid"]) and inv["noSessionEvaluation"] is False
    assert inv["userUuid"] == inv["accountUuid"] == zstack_sim.DEMO_ACCOUNT_UUID
    created = datetime.strptime(inv["createDate"], "%b %d, %Y %I:%M:%S %p")
    expires = datetime.strptime(inv["expiredDate"], "%b %d, %Y %I:%M:%S %p")
    assert expires - created == timedelta(seconds=7200)
    now_shanghai = datetime.now(SHANGHAI).replace(tzinfo=None)
    assert abs(created - now_shanghai) < timedelta(seconds=5)
    session = inv["uuid"]
    assert zs.iso(session=session).status_code == 200
    valid = f"/zstack/v1/accounts/sessions/{session}/valid"
    assert zs.get(valid).json() == {"valid": True}
    out = zs.request("DELETE", f"/zstack/v1/accounts/sessions/{session}")
    assert out.status_code == 200 and out.content == b"{}"
    assert zs.get(valid).json() == {"valid": False}
    assert zs.iso(session=session).json()["error"]["code"] == "ID.1001"
    again = zs.request("DELETE", f"/zstack/v1/accounts/sessions/{session}")
    assert again.status_code == 200 and again.content == b"{}"


def test_login_failures(zs: Client) -> None:
    wrong = zs.login(password="nope")
    assert wrong.status_code == 503
    assert wrong.json()["error"]["code"] == "ID.1000"
    assert wrong.json()["error"]["details"] == "wrong account name or password"
    upper = zs.request(
        "PUT",
        "/zstack/v1/accounts/login",
        json={
            "logInByAccount": {
                "accountName": "admin",
                "password": hashlib.sha512(b"password").hexdigest().upper(),
            }
        },
    )
    assert upper.json()["error"]["code"] == "ID.1000"
    assert zs.login(name="nobody").json()["error"]["code"] == "ID.1000"
    for body in ({"logIn": {"accountName": "admin", "password": "x"}}, {}, {"logInByAccount": "admin"}):
        resp = zs.request("PUT", "/zstack/v1/accounts/login", json=body)
        assert resp.status_code == 503
        assert resp.json()["error"]["code"] == "SYS.1007"
        assert "field[accountName]" in resp.json()["error"]["details"]


def test_max_sessions_per_account(zs: Client) -> None:
    zs.control("POST", "/config", {"max_sessions": 2})  # the demo session is one of them
    assert zs.login().status_code == 200
    refused = zs.login()
    assert refused.status_code == 503 and refused.json()["error"]["code"] == "ID.1006"


def test_sliding_session_expiry(zs: Client) -> None:
    zs.control("POST", "/config", {"session_timeout": 100})
    session = zs.login().json()["inventory"]["uuid"]
    valid = f"/zstack/v1/accounts/sessions/{session}/valid"
    zs.control("POST", "/clock", {"advance": 60})
    assert zs.iso(session=session).status_code == 200  # renews to now + 100
    zs.control("POST", "/clock", {"advance": 60})  # 120 s after login, 60 s after last use
    assert zs.iso(session=session).status_code == 200
    zs.control("POST", "/clock", {"advance": 90})
    assert zs.get(valid).json() == {"valid": True}  # /valid does not renew ...
    zs.control("POST", "/clock", {"advance": 20})
    assert zs.get(valid).json() == {"valid": False}  # ... so 110 s idle is expired
    assert zs.iso(session=session).json()["error"]["code"] == "ID.1001"


def test_expire_control_and_reset_restore_the_demo_session(zs: Client) -> None:
    zs.control("POST", f"/sessions/{DEMO_SESSION_UUID}/expire")
    assert zs.iso().json()["error"]["code"] == "ID.1001"
    assert zs.request("POST", "/_sim/sessions/" + "0" * 32 + "/expire").status_code == 404
    zs.control("POST", "/reset")
    assert zs.iso().status_code == 200
    zs.control("POST", "/clock", {"advance": 10 * 365 * 86400})
    assert zs.iso().status_code == 200  # the demo session never expires by time


def test_ready(zs: Client) -> None:
    resp = zs.get("/zstack/v1/management-nodes/ready")
    assert resp.status_code == 200 and resp.content == b"{}"
    zs.control("POST", "/ready", {"ready": False})
    resp = zs.get("/zstack/v1/management-nodes/ready")
    assert resp.status_code == 503
    error = resp.json()["error"]
    assert error["code"] == "SYS.1010"
    assert error["details"] == f"management node[uuid:{DEMO_MN_UUID}] is not ready yet"


# --- AccessKey --------------------------------------------------------------------------------------------


def access_key_headers(
    path: str,
    *,
    when: datetime | None = None,
    date: str | None = None,
    key: str = DEMO_ACCESS_KEY_ID,
    secret: str = DEMO_ACCESS_KEY_SECRET,
) -> dict[str, str]:
    """What the SDKs send; by default the Date is the MN's local time (Asia/Shanghai, "CST")."""
    if date is None:
        moment = when or datetime.now(SHANGHAI)
        date = moment.strftime("%a, %d %b %Y %H:%M:%S ") + (moment.tzname() or "GMT")
    to_sign = f"GET\n{date}\n{path}".encode()
    signature = base64.b64encode(hmac.new(secret.encode(), to_sign, hashlib.sha1).digest()).decode()
    return {"Authorization": f"ZStack {key}:{signature}", "Date": date}


def test_access_key_good_and_bad(zs: Client) -> None:
    path = f"/v1/vm-instances/{DEMO_VM_UUID}/iso-candidates"
    ok = zs.iso(session=None, headers=access_key_headers(path))
    assert ok.status_code == 200 and len(ok.json()["inventories"]) == 5
    bad_sig = zs.iso(session=None, headers=access_key_headers(path, secret="wrong"))
    assert bad_sig.status_code == 503 and bad_sig.json()["error"]["code"] == "ID.1000"
    unknown = zs.iso(session=None, headers=access_key_headers(path, key="NoSuchKey"))
    assert unknown.status_code == 503 and unknown.json()["error"]["code"] == "ID.1000"
    missing_path = f"/v1/vm-instances/{DEMO_MISSING_VM_UUID}/iso-candidates"
    missing = zs.iso(DEMO_MISSING_VM_UUID, session=None, headers=access_key_headers(missing_path, secret="x"))
    assert missing.json()["error"]["code"] == "SYS.1003"  # the VM check still comes first


def test_access_key_rest_layer_checks(zs: Client) -> None:
    path = f"/v1/vm-instances/{DEMO_VM_UUID}/iso-candidates"
    good = access_key_headers(path)
    cases = [
        ({"Authorization": good["Authorization"]}, 400, "'Date' must be incuded in request header"),
        (
            {**good, "Date": "2024-05-01T10:00:00Z"},
            400,
            "'Date' format error, correct format is 'EEE, dd MMM yyyy HH:mm:ss z'",
        ),
        (
            access_key_headers(path, when=datetime.now(SHANGHAI) - timedelta(minutes=20)),
            403,
            "requestTimeTooSkewed",
        ),
        (
            {**good, "Authorization": "ZStack onlyanid"},
            400,
            "accessKey format is 'ZStack AccessKeyId:Signature'",
        ),
        (
            {**good, "Authorization": "ZStack a:b:c"},
            400,
            "accessKey format is 'ZStack AccessKeyId:Signature'",
        ),
    ]
    for headers, status, text in cases:
        resp = zs.iso(session=None, headers=headers)
        assert (resp.status_code, resp.text) == (status, text)


def test_access_key_date_compares_wall_clocks_by_default(zs: Client) -> None:
    path = f"/v1/vm-instances/{DEMO_VM_UUID}/iso-candidates"
    gmt = datetime.now(UTC)
    headers = access_key_headers(path, when=gmt)
    assert headers["Date"].endswith(" UTC")
    # rest.checkTimeZone=false: the GMT wall clock is 8 h off the MN's Asia/Shanghai wall clock.
    assert zs.iso(session=None, headers=headers).status_code == 403
    zs.control("POST", "/config", {"check_time_zone": True})
    assert zs.iso(session=None, headers=headers).status_code == 200
    rfc1123 = access_key_headers(path, date=format_datetime(gmt, usegmt=True))
    assert rfc1123["Date"].endswith(" GMT")
    assert zs.iso(session=None, headers=rfc1123).status_code == 200


# --- query parameters and the request log ------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "tags"),
    [
        ("systemTags=a&systemTags=b", ["a", "b"]),
        ("systemTags.1=b&systemTags.0=a", ["a", "b"]),
        ("systemTags=a,b", ["a,b"]),
        ("systemTags=x&systemTags.0=a", ["a"]),
        ("systemTags=%E4%B8%AD+%26", ["中 &"]),
    ],
)
def test_list_parameters(zs: Client, query: str, tags: list[str]) -> None:
    resp = zs.get(ISO_PATH.format(DEMO_VM_UUID) + "?" + query + "&limit=5&userTags=u", headers=AUTH)
    assert resp.status_code == 200
    params = zs.last_request()["params"]
    assert params == {"systemTags": tags, "userTags": ["u"]}  # limit: unknown, ignored


def test_request_log(zs: Client) -> None:
    zs.control("DELETE", "/requests")
    path = ISO_PATH.format("%20" + DEMO_VM_UUID)  # decoded, then trimmed like an @APIParam
    resp = zs.get(path + "?systemTags=a%20b&systemTags=c", headers={**AUTH, "X-Trace": "1"})
    assert resp.status_code == 200
    (entry,) = zs.control("GET", "/requests")
    assert entry["method"] == "GET"
    assert entry["path"] == path
    assert entry["query"] == [["systemTags", "a b"], ["systemTags", "c"]]
    assert entry["headers"]["Authorization"] == f"OAuth {DEMO_SESSION_UUID}"
    assert entry["headers"]["X-Trace"] == "1"
    assert isinstance(entry["time"], float)
    zs.get("/_sim/stats")  # control-plane calls are not logged
    assert len(zs.control("GET", "/requests")) == 1
    assert zs.control("DELETE", "/requests") == {"cleared": 1}


def test_stats(zs: Client) -> None:
    zs.iso()
    zs.iso(DEMO_MISSING_VM_UUID)
    zs.get("/zstack/v1/management-nodes/ready")
    stats = zs.control("GET", "/stats")
    assert stats["total_requests"] == 3
    assert stats["by_route"] == {"iso_candidates": 2, "ready": 1}
    assert stats["by_status"] == {"200": 2, "503": 1}
    assert stats["in_flight"] == 0 and stats["in_flight_peak"] >= 1
    assert stats["handling_cost_mean_us"] > 0


# --- faults -------------------------------------------------------------------------------------------------


def test_fault_respond_is_raw(zs: Client) -> None:
    html = "<html><body><h1>502 Bad Gateway</h1></body></html>"
    zs.fault(action="respond", status=502, body=html, headers={"Content-Type": "text/html"}, times=1)
    resp = zs.iso()
    assert (resp.status_code, resp.reason, resp.text) == (502, "Bad Gateway", html)
    assert resp.headers["Content-Type"] == "text/html"
    assert zs.iso().status_code == 200  # times=1: used up
    zs.fault(action="respond", status=200, body={"inventory": []}, headers={"Content-Length": "999"})
    wrong_shape = zs.iso()
    assert wrong_shape.content == b'{"inventory":[]}' and "Content-Type" not in wrong_shape.headers
    assert zs.get("/zstack/v1/management-nodes/ready").status_code == 200  # default path: iso only


def test_fault_zstack_error_with_cause(zs: Client) -> None:
    zs.fault(
        action="zstack_error",
        code="SYS.1001",
        details="timeout after 300 seconds",
        cause={"code": "SYS.1006", "details": "inner"},
        globalErrorCode="ORG_ZSTACK_CORE_10001",
    )
    resp = zs.iso()
    assert resp.status_code == 503
    assert resp.json() == {
        "error": {
            "code": "SYS.1001",
            "description": "A message or a operation timeout",
            "details": "timeout after 300 seconds",
            "cause": {"code": "SYS.1006", "description": "An operation failed", "details": "inner"},
            "globalErrorCode": "ORG_ZSTACK_CORE_10001",
        }
    }


def test_fault_after_auth(zs: Client) -> None:
    zs.fault(action="zstack_error", code="SYS.1000", details="boom", after_auth=True, times=1)
    assert zs.iso(session="0" * 32).json()["error"]["code"] == "ID.1001"  # failed auth: rule untouched
    assert len(zs.control("GET", "/faults")) == 1
    assert zs.iso().json()["error"]["code"] == "SYS.1000"
    assert zs.control("GET", "/faults") == []


def test_fault_path_regex_and_bad_rules(zs: Client) -> None:
    zs.fault(action="zstack_error", code="SYS.1010", details="x", path=r"/management-nodes/ready$")
    assert zs.get("/zstack/v1/management-nodes/ready").status_code == 503
    assert zs.iso().status_code == 200
    for rule in ({"action": "explode"}, {"action": "respond"}, {"action": "reset", "path": "("}):
        assert zs.request("POST", "/_sim/faults", json=rule).status_code == 400
    assert zs.control("DELETE", "/faults") == {"cleared": 1}


def test_fault_reset(zs: Client) -> None:
    zs.fault(action="reset")
    with pytest.raises(requests.ConnectionError):
        zs.iso()


def test_fault_reset_mid_body(server: zstack_sim.ThreadedSimulator, zs: Client) -> None:
    zs.fault(action="reset_mid_body")
    sock = raw_get(server.port, ISO_PATH.format(DEMO_VM_UUID), AUTH)
    head, body = read_head(sock)
    assert head.startswith(b"HTTP/1.1 200")
    total = content_length(head)
    try:
        while chunk := sock.recv(65536):
            body += chunk
    except ConnectionResetError:
        pass
    sock.close()
    assert 0 < len(body) < total


def test_fault_truncate(zs: Client) -> None:
    full = zs.iso().content
    zs.fault(action="truncate")
    resp = zs.iso()
    assert resp.status_code == 200
    assert int(resp.headers["Content-Length"]) == len(resp.content) == len(full) // 2
    with pytest.raises(json.JSONDecodeError):
        json.loads(resp.content)


def test_fault_drip(server: zstack_sim.ThreadedSimulator, zs: Client) -> None:
    zs.fault(action="drip", interval=0.15)
    sock = raw_get(server.port, ISO_PATH.format(DEMO_VM_UUID), AUTH)
    head, body = read_head(sock)
    start = time.monotonic()
    while len(body) < 4:
        body += sock.recv(1)
    elapsed = time.monotonic() - start
    sock.close()
    assert head.startswith(b"HTTP/1.1 200") and content_length(head) > 1000
    assert body == b'{"in'
    assert elapsed >= 0.3  # 4 bytes, one per 0.15 s


def test_fault_drip_in_pieces_that_finishes(zs: Client) -> None:
    full = zs.iso().content
    zs.fault(action="drip", interval=0.01, bytes=400, finish=True)
    resp = zs.iso()
    assert resp.status_code == 200
    assert resp.content == full


def test_fault_drip_bytes_must_be_a_positive_integer(zs: Client) -> None:
    for bad in (0, -1, 1.5, True, "2"):
        with pytest.raises(ControlError, match="'bytes' must be an integer >= 1"):
            zs.fault(action="drip", bytes=bad)


def test_fault_headers_then_silence(server: zstack_sim.ThreadedSimulator, zs: Client) -> None:
    zs.fault(action="headers_then_silence")
    sock = raw_get(server.port, ISO_PATH.format(DEMO_VM_UUID), AUTH)
    head, body = read_head(sock)
    assert head.startswith(b"HTTP/1.1 200") and content_length(head) > 0 and body == b""
    sock.settimeout(0.4)
    with pytest.raises(TimeoutError):
        sock.recv(1)
    sock.close()


def test_fault_hang_ends_when_the_client_leaves(zs: Client) -> None:
    zs.fault(action="hang")
    with pytest.raises(requests.ReadTimeout):
        zs.iso(timeout=0.4)
    deadline = time.monotonic() + 3
    while zs.control("GET", "/stats")["in_flight"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert zs.control("GET", "/stats")["in_flight"] == 0


def test_fault_delay_only_and_latency(zs: Client) -> None:
    zs.fault(action="delay_only", delay=0.3, times=1)
    start = time.monotonic()
    assert zs.iso().status_code == 200
    assert time.monotonic() - start >= 0.3
    zs.control("POST", "/config", {"latency_ms": 250})
    start = time.monotonic()
    assert zs.iso().status_code == 200
    assert time.monotonic() - start >= 0.25
    start = time.monotonic()
    assert zs.get("/zstack/v1/management-nodes/ready").status_code == 200
    assert time.monotonic() - start < 0.2  # latency applies to iso-candidates only


def test_stop_is_quick_with_hanging_requests() -> None:
    sim = zstack_sim.run_in_thread(zstack_sim.demo_data())
    Client(sim.url).fault(action="hang")
    socks = [raw_get(sim.port, ISO_PATH.format(DEMO_VM_UUID), AUTH) for _ in range(3)]
    time.sleep(0.2)
    start = time.monotonic()
    sim.close()
    assert time.monotonic() - start < 3
    for sock in socks:
        sock.settimeout(2)
        with contextlib.suppress(ConnectionResetError):
            assert sock.recv(1) == b""
        sock.close()


# --- data: generated, loaded, dumped; the async API; the CLI -----------------------------------------


def test_generate_sizes() -> None:
    data = zstack_sim.generate(1000)
    assert zstack_sim.generate(1000).images.keys() == data.images.keys()  # deterministic
    with zstack_sim.run_in_thread(data) as big:
        resp = Client(big.url).iso()
    images = resp.json()["inventories"]
    assert len(images) == 1000
    assert 700_000 <= len(resp.content) <= 1_400_000  # about 1 KB per image
    ref_ids = [ref["id"] for image in images for ref in image["backupStorageRefs"]]
    assert all(1 <= len(image["backupStorageRefs"]) <= 2 for image in images)
    assert len(set(ref_ids)) == len(ref_ids)
    assert all(image["mediaType"] == "ISO" and GSON_DATE.match(image["createDate"]) for image in images)


def test_load_data_file() -> None:
    data = zstack_sim.load_data(SIM_DATA / "small.json")
    with zstack_sim.run_in_thread(data, session_timeout=60) as small:
        client = Client(small.url)
        body = client.iso(
            "0123456789abcdef0123456789abcdef", session="fedcba9876543210fedcba9876543210"
        ).json()
        assert [i["name"] for i in body["inventories"]] == ["alpine-3.20.iso", "sparse.iso"]
        alpine = body["inventories"][0]
        assert alpine["createDate"] == "May 1, 2024 9:00:00 AM"  # ISO with +08:00
        assert alpine["lastOpDate"] == "May 2, 2024 1:02:03 PM"  # a Gson string, sent unchanged
        assert alpine["backupStorageRefs"][0]["createDate"] == "May 1, 2024 9:00:00 AM"  # naive: MN-local
        assert list(alpine)[-1] == "newerField"  # unknown fields follow the known ones
        assert body["inventories"][1] == {"uuid": "22222222222222222222222222222222", "name": "sparse.iso"}
        assert client.login("ops", "secret").status_code == 200
    with pytest.raises(zstack_sim.DataError):
        zstack_sim.load_data(SIM_DATA / "bad.json")


def test_async_simulator() -> None:
    import asyncio

    import aiohttp

    async def main() -> tuple[int, bytes]:
        async with zstack_sim.Simulator(zstack_sim.demo_data()) as sim:
            assert sim.url == f"http://127.0.0.1:{sim.port}"
            async with (
                aiohttp.ClientSession() as http,
                http.get(sim.url + ISO_PATH.format(DEMO_EMPTY_VM_UUID), headers=AUTH) as resp,
            ):
                assert resp.content_type == "application/octet-stream"  # aiohttp's guess: none was sent
                assert "Content-Type" not in resp.headers
                return resp.status, await resp.read()

    assert asyncio.run(main()) == (200, b'{"inventories":[]}')


def test_cli_serves_until_sigterm(tmp_path: Path) -> None:
    dumped = subprocess.run(
        [sys.executable, "-m", "zstack_sim.cli", "--dump-data"], capture_output=True, text=True, check=True
    )
    (tmp_path / "demo.json").write_text(dumped.stdout, encoding="utf-8")
    with start_simulator(tmp_path, "--data", str(tmp_path / "demo.json")) as proc:
        assert proc.output().splitlines()[0] == f"zstack-sim listening on {proc.address}"
        images = Client(proc.address).iso().json()["inventories"]
        assert [i["uuid"] for i in images] == list(DEMO_IMAGE_UUIDS)
        assert images[1]["createDate"] == "Jul 22, 2022 11:54:07 AM"
        assert proc.stop(10) == 0


def test_run_in_thread_reports_a_port_in_use() -> None:
    with zstack_sim.run_in_thread() as first, pytest.raises(OSError):
        zstack_sim.run_in_thread(port=first.port)


def test_threaded_requests_in_parallel(zs: Client, server: zstack_sim.ThreadedSimulator) -> None:
    results: list[int] = []

    def worker() -> None:
        client = Client(server.url)
        results.extend(client.iso().status_code for _ in range(10))

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [200] * 40
