"""The simulated ZStack APIs: what each mapped path answers, in the server's order of checks.

Each API is handled in two synchronous steps so fault rules can act between them:

* :meth:`ZStackApi.check` runs everything that can refuse the call: the REST layer (body JSON,
  ``Authorization``, query parameters, ``X-Job-UUID``, ``X-API-Timeout``; plain-text 4xx/500), then the
  interceptors (parameter validation incl. resource existence, *then* the session check with its
  sliding renewal; 503 JSON). ``None`` means the call passed.
* :meth:`ZStackApi.answer` builds the reply of a call that passed.

Quirk kept from the real server [SRC/INF, contract §2.1]: each of these paths has a single API, and
the server never checks the HTTP method of a single-API path, so GET/POST/PUT/DELETE/HEAD all run it.
Query parameters are read for GET and DELETE only; other methods take the API's parameters from the
JSON body.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid as uuid_module
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from zstack_sim import iso_ops
from zstack_sim.auth import AccessKeyCredentials, Credentials, parse_authorization, signature_matches
from zstack_sim.data import Vm
from zstack_sim.jobs import Job
from zstack_sim.params import FieldKind, RestError, java_trim, parse_java_long, parse_query_params, rest_error
from zstack_sim.replies import Reply, json_reply, text_reply, zstack_error
from zstack_sim.routing import Route, RouteMatch
from zstack_sim.state import SimState

__all__ = ["Call", "Incoming", "ZStackApi"]

_TAGS: dict[str, FieldKind] = {"systemTags": "list", "userTags": "list"}
# RestServerController maps these methods on /v1/**; others never reach ZStack's code [INF].
_CONTROLLER_METHODS = frozenset({"GET", "POST", "PUT", "DELETE", "HEAD"})


@dataclass(frozen=True, slots=True)
class _ApiSpec:
    java_class: str
    # Query-string fields (GET/DELETE) of the message class.
    fields: dict[str, FieldKind]
    # Body key holding the parameters for other methods ("" when the API has none).
    parameter_name: str
    suppress_credential_check: bool


_SPECS: dict[Route, _ApiSpec] = {
    Route.ISO_CANDIDATES: _ApiSpec(
        "org.zstack.header.vm.APIGetCandidateIsoForAttachingVmMsg",
        {"vmInstanceUuid": "str", **_TAGS},
        "",
        False,
    ),
    Route.ATTACH_ISO: _ApiSpec(
        "org.zstack.header.vm.APIAttachIsoToVmInstanceMsg",
        {"vmInstanceUuid": "str", "isoUuid": "str", **_TAGS},
        "null",  # the message's @RestRequest has no parameterName: the body key is literally "null"
        False,
    ),
    Route.DETACH_ISO: _ApiSpec(
        "org.zstack.header.vm.APIDetachIsoFromVmInstanceMsg",
        {"vmInstanceUuid": "str", "isoUuid": "str", **_TAGS},
        "null",
        False,
    ),
    Route.CANDIDATE_VMS: _ApiSpec(
        "org.zstack.header.vm.APIGetCandidateVmForAttachingIsoMsg", {"isoUuid": "str", **_TAGS}, "", False
    ),
    Route.LOGIN: _ApiSpec(
        "org.zstack.header.identity.APILogInByAccountMsg",
        {
            "accountName": "str",
            "password": "str",
            "accountType": "str",
            "captchaUuid": "str",
            "verifyCode": "str",
            **_TAGS,
        },
        "logInByAccount",
        True,
    ),
    Route.LOGOUT: _ApiSpec(
        "org.zstack.header.identity.APILogOutMsg", {"sessionUuid": "str", **_TAGS}, "", True
    ),
    Route.VALIDATE_SESSION: _ApiSpec(
        "org.zstack.header.identity.APIValidateSessionMsg", {"sessionUuid": "str", **_TAGS}, "", True
    ),
    Route.READY: _ApiSpec(
        "org.zstack.header.apimediator.APIIsReadyToGoMsg", {"managementNodeId": "str", **_TAGS}, "", True
    ),
}
#: The async APIs: answered 202 with a job (see zstack_sim.jobs).
_ASYNC: dict[Route, str] = {
    Route.ATTACH_ISO: "AttachIsoToVmInstance",
    Route.DETACH_ISO: "DetachIsoFromVmInstance",
}
#: The timeout a 202 announces (``apiTimeout``, ms) without X-API-Timeout: ZStack's 30 min default
#: for these APIs (global config category apiTimeout).
DEFAULT_API_TIMEOUT_MS = 1_800_000


@dataclass(frozen=True, slots=True)
class Incoming:
    """One received request, as the handlers need it."""

    method: str
    raw_path: str  # as received, percent-encoded, without the query
    query: list[tuple[str, str]]  # decoded, in order
    headers: Mapping[str, str]  # case-insensitive
    body: bytes
    started_ns: int = field(default_factory=time.perf_counter_ns)


@dataclass(slots=True)
class Call:
    incoming: Incoming
    match: RouteMatch
    credentials: Credentials | None = None
    params: dict[str, Any] = field(default_factory=dict)
    vm: Vm | None = None
    # The request-log entry, to record the parsed parameters in.
    log_entry: dict[str, Any] | None = None
    # The job an async API's call started.
    job: Job | None = None

    @property
    def cost_ms(self) -> int:
        return (time.perf_counter_ns() - self.incoming.started_ns) // 1_000_000


def _parse_body(body: bytes) -> dict[str, Any] | None:
    """``JSONObjectUtil.toObject(body, LinkedHashMap.class)``: empty -> null, else a JSON object.

    [INF] The 500 text imitates Gson's exception message; the exact wording is not verified.
    """
    text = body.decode("utf-8", "replace")
    if not text.strip():
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise rest_error(
            500,
            "com.google.gson.stream.MalformedJsonException: Use JsonReader.setLenient(true) to accept"
            f" malformed JSON at line {exc.lineno} column {exc.colno} path $",
        ) from exc
    if value is None or isinstance(value, dict):
        return value
    kind = "BEGIN_ARRAY" if isinstance(value, list) else "STRING" if isinstance(value, str) else "NUMBER"
    raise rest_error(
        500,
        f"com.google.gson.JsonSyntaxException: java.lang.IllegalStateException: Expected BEGIN_OBJECT but was"
        f" {kind} at line 1 column 1 path $",
    )


class ZStackApi:
    def __init__(self, state: SimState) -> None:
        self.state = state

    # --- step 1: checks -------------------------------------------------------------------------------

    def check(self, call: Call) -> Reply | None:
        route = call.match.route
        if route is not Route.OUTSIDE_V1 and call.incoming.method not in _CONTROLLER_METHODS:
            return _container_page(
                405, "Method Not Allowed", f"Request method '{call.incoming.method}' not supported"
            )
        if route is Route.UNMAPPED:
            return text_reply(404, f"no api mapping to {call.match.path}")
        if route is Route.API_JOBS:
            # No authentication is checked on a job query [SRC handleJobQuery].
            if call.incoming.method != "GET":
                return text_reply(405, "only GET method is allowed for querying job status")
            job = self.state.jobs.get(call.match.variable or "")
            if job is None:
                return text_reply(404, "the job has been expired")
            return job.reply if job.reply is not None else json_reply(202, {})
        if route is Route.OUTSIDE_V1:
            return _container_page(404, "Not Found", call.incoming.raw_path)
        try:
            self._rest_layer(call, _SPECS[route])
        except RestError as err:
            return err.reply
        if route is Route.ISO_CANDIDATES:
            return self._check_iso(call)
        if route in _ASYNC:
            self._submit(call, _ASYNC[route])
            return None
        if route is Route.CANDIDATE_VMS:
            iso_uuid = java_trim(call.match.variable or "")
            if iso_uuid not in self.state.data.images:
                return zstack_error(
                    "SYS.1003",
                    f"invalid field[isoUuid], resource[uuid:{iso_uuid}, type:ImageVO] not found",
                    cost_ms=call.cost_ms,
                )
            return self._check_credentials(call)
        if route is Route.LOGIN:
            return self._check_login(call)
        if route is Route.READY and not self.state.config.ready:
            return zstack_error(
                "SYS.1010",
                f"management node[uuid:{self.state.data.management_node_uuid}] is not ready yet",
                cost_ms=call.cost_ms,
            )
        return None

    def _rest_layer(self, call: Call, spec: _ApiSpec) -> None:
        """``RestServer.handleUniqueApi`` + ``handleApi`` up to sending the message; raises RestError."""
        incoming = call.incoming
        body = _parse_body(incoming.body) or {}
        if not spec.suppress_credential_check:
            call.credentials = parse_authorization(
                incoming.headers.get("Authorization"),
                incoming.headers.get("Date"),
                now=self.state.now_local(),
                check_time_zone=self.state.config.check_time_zone,
            )
        if incoming.method in ("GET", "DELETE"):
            call.params = dict(parse_query_params(incoming.query, spec.fields, spec.java_class))
        else:
            parameter = body.get(spec.parameter_name) if spec.parameter_name else None
            # [INF] A non-object parameter fails the server's type checks; we treat it as absent,
            # which then fails validation (503 SYS.1007) like a missing one.
            call.params = dict(parameter) if isinstance(parameter, dict) else {}
            if spec.parameter_name == "null":
                # Top-level tags apply after the "null" map is rehashed (`{"params": ...}` is ignored).
                call.params.update({k: body[k] for k in _TAGS if k in body})
        if call.log_entry is not None:
            call.log_entry["params"] = dict(call.params)
        job_uuid = incoming.headers.get("X-Job-UUID")
        if job_uuid is not None and len(job_uuid) != 32:
            raise rest_error(400, "Invalid header[X-Job-UUID], it must be a UUID with '-' stripped")
        if (
            job_uuid is not None
            and incoming.method in ("POST", "PUT", "DELETE")
            and self.state.jobs.exists(job_uuid)
        ):
            # Refused, not replayed, while the job's row exists (running, or done and not purged).
            raise rest_error(400, f"Duplicate job uuid[{job_uuid}]")
        api_timeout = incoming.headers.get("X-API-Timeout")
        if api_timeout is not None and parse_java_long(api_timeout) is None:
            # NumberFormatException from Long.parseLong, caught by the servlet's catch-all [SRC/INF].
            raise rest_error(500, f'For input string: "{api_timeout}"')

    def _check_iso(self, call: Call) -> Reply | None:
        # Interceptor order: SYSTEM (parameter validation, incl. existence) before FRONT (session).
        vm_uuid = java_trim(call.match.variable or "")
        vm = self.state.data.find_vm(vm_uuid)
        if vm is None:
            return zstack_error(
                "SYS.1003",
                f"invalid field[vmInstanceUuid], resource[uuid:{vm_uuid}, type:VmInstanceVO] not found",
                cost_ms=call.cost_ms,
            )
        call.vm = vm
        return self._check_credentials(call)

    # --- async APIs -----------------------------------------------------------------------------------

    def _submit(self, call: Call, api: str) -> None:
        """Accept an async API's call: its job exists from now on (a connection reset before the 202
        leaves it running) and runs its checks and its change when its time is up."""
        job_uuid = call.incoming.headers.get("X-Job-UUID") or uuid_module.uuid4().hex
        job = self.state.jobs.create(job_uuid, api, call.incoming.method, call.incoming.raw_path)
        call.job = job
        seconds = self.state.job_timing(call.incoming.raw_path)
        if seconds is not None:
            asyncio.get_running_loop().call_later(seconds, self._run_job, call, job)

    def _run_job(self, call: Call, job: Job) -> None:
        if self.state.jobs.jobs.get(job.uuid) is not job:
            return  # the simulator was reset meanwhile: the job and its data are gone
        route = call.match.route
        variables = call.match.variables
        vm_uuid = java_trim(variables[0]) if variables else ""

        def credentials(vm: Vm) -> Reply | None:
            return self._check_credentials(call) or self._check_owner(call, vm)

        if route is Route.ATTACH_ISO:
            iso_uuid = java_trim(variables[1]) if len(variables) > 1 else ""
            reply = iso_ops.attach_iso(
                self.state, vm_uuid, iso_uuid, call.params.get("systemTags"), credentials, call.cost_ms
            )
        else:
            iso = call.params.get("isoUuid")
            reply = iso_ops.detach_iso(
                self.state, vm_uuid, iso if isinstance(iso, str) else None, credentials, call.cost_ms
            )
        self.state.jobs.finish(job, reply)

    def _check_owner(self, call: Call, vm: Vm) -> Reply | None:
        """``AccountAPIRequestChecker``: a Normal account may only touch its own VMs (ID.1002)."""
        data = self.state.data
        creds = call.credentials
        if isinstance(creds, AccessKeyCredentials):
            key = data.access_keys.get(creds.key_id)
            account_uuid = key.account_uuid if key is not None else None
        else:
            session = data.sessions.get(creds.session_uuid if creds is not None else "")
            account_uuid = session.account_uuid if session is not None else None
        account = data.accounts.get(account_uuid or "")
        if account is None or account.type == "SystemAdmin":
            return None
        owner_uuid = vm.account_uuid or next(
            (a.uuid for a in data.accounts.values() if a.type == "SystemAdmin"), ""
        )
        if owner_uuid == account.uuid:
            return None
        owner = data.accounts.get(owner_uuid)
        return zstack_error(
            "ID.1002",
            f"operation denied. The resource[uuid: {vm.uuid}, type: VmInstanceVO,ownerAccountName:"
            f"{owner.name if owner is not None else ''}, ownerAccountUuid:{owner_uuid}] doesn't belong to "
            f"the account[uuid: {account.uuid}]",
            cost_ms=call.cost_ms,
        )

    def _accepted(self, call: Call) -> Reply:
        """202 ``{"apiTimeout": ms, "location": ...}`` (key order computed, iso-workflow §3)."""
        assert call.job is not None
        timeout = call.incoming.headers.get("X-API-Timeout")
        seconds = parse_java_long(timeout) if timeout is not None else None
        body = {
            "apiTimeout": seconds * 1000 if seconds is not None else DEFAULT_API_TIMEOUT_MS,
            "location": f"http://{self.state.config.job_host}/zstack/v1/api-jobs/{call.job.uuid}",
        }
        return json_reply(202, body)

    def _check_credentials(self, call: Call) -> Reply | None:
        creds = call.credentials
        if isinstance(creds, AccessKeyCredentials):
            # [INF] The AccessKey backend is closed source. We answer an unknown key or a bad
            # signature with ID.1000 ("Unable to authenticate a user"), the generic authentication
            # failure code, at the same point as the session check (after parameter validation),
            # as a business error (503) rather than a REST-layer text error.
            key = self.state.data.access_keys.get(creds.key_id)
            if key is None:
                return zstack_error(
                    "ID.1000", f"AccessKey[id:{creds.key_id}] is not found or disabled", cost_ms=call.cost_ms
                )
            if not signature_matches(key.secret, creds, call.incoming.method, call.match.path):
                return zstack_error(
                    "ID.1000", f"signature of AccessKey[id:{creds.key_id}] mismatched", cost_ms=call.cost_ms
                )
            return None
        session_uuid = creds.session_uuid if creds is not None else ""
        if self.state.sessions.check_and_renew(session_uuid) is None:
            return zstack_error("ID.1001", "Session expired", cost_ms=call.cost_ms)
        return None

    def _check_login(self, call: Call) -> Reply | None:
        params = call.params
        for name in ("accountName", "password"):
            if not isinstance(params.get(name), str):
                java_class = _SPECS[Route.LOGIN].java_class
                return zstack_error(
                    "SYS.1007",
                    f"field[{name}] of message[{java_class}] is mandatory, can not be null",
                    cost_ms=call.cost_ms,
                )
        account = self.state.data.account_by_name(params["accountName"])
        if account is None or account.password_hash != params["password"]:
            return zstack_error("ID.1000", "wrong account name or password", cost_ms=call.cost_ms)
        if self.state.sessions.count_for(account.uuid) >= self.state.config.max_sessions:
            return self._too_many_sessions(call)
        return None

    def _too_many_sessions(self, call: Call) -> Reply:
        # [INF] wording of the details.
        return zstack_error(
            "ID.1006",
            "Login sessions hit limit of max allowed concurrent login sessions"
            f" ({self.state.config.max_sessions})",
            cost_ms=call.cost_ms,
        )

    # --- step 2: answers ------------------------------------------------------------------------------

    def answer(self, call: Call) -> Reply:
        route = call.match.route
        if route is Route.ISO_CANDIDATES:
            return self._answer_iso(call)
        if route in _ASYNC:
            return self._accepted(call)
        if route is Route.CANDIDATE_VMS:
            vms = iso_ops.candidate_vms(self.state, java_trim(call.match.variable or ""))
            return json_reply(200, {"inventories": [self.state.vm_json(vm) for vm in vms]})
        if route is Route.LOGIN:
            return self._answer_login(call)
        if route is Route.LOGOUT:
            self.state.sessions.logout(java_trim(call.match.variable or ""))
            return json_reply(200, {})
        if route is Route.VALIDATE_SESSION:
            return json_reply(200, {"valid": self.state.sessions.is_valid(call.match.variable or "")})
        # READY: APIIsReadyToGoReply maps no field, so the body is an empty object, as for logout,
        # whose `{}` the docs show. [INF] Builds before CloudBusGson.toJsonForHttpResponse sent an
        # empty body instead.
        return json_reply(200, {})

    def _answer_iso(self, call: Call) -> Reply:
        vm = call.vm
        assert vm is not None
        uuids = vm.listed_candidates()
        body = self.state.inventories_body(uuids)
        if "X-JSON-Schema" in call.incoming.headers:
            schema = json.dumps(_iso_schema(self.state, uuids), separators=(",", ":")).encode()
            body = body[:-1] + b',"schema":' + schema + b"}"
        return Reply(200, body, "json")

    def _answer_login(self, call: Call) -> Reply:
        account = self.state.data.account_by_name(call.params["accountName"])
        assert account is not None
        session = self.state.sessions.create(account)
        if session is None:  # filled up while an after-auth fault delayed this call
            return self._too_many_sessions(call)
        assert session.expires_at is not None
        inventory = {
            "uuid": session.uuid,
            "accountUuid": session.account_uuid,
            "userUuid": session.user_uuid,
            "expiredDate": self.state.gson_date(session.expires_at),
            "createDate": self.state.gson_date(session.created_at),
            "noSessionEvaluation": False,
        }
        body: dict[str, Any] = {"inventory": inventory}
        if "X-JSON-Schema" in call.incoming.headers:
            body["schema"] = {"inventory": "org.zstack.header.identity.SessionInventory"}
        return json_reply(200, body)


def _iso_schema(state: SimState, uuids: tuple[str, ...]) -> dict[str, str]:
    """The ``schema`` map sent when the request has ``X-JSON-Schema`` (contract §3.5). [INF] order."""
    schema: dict[str, str] = {}
    for i, image_uuid in enumerate(u for u in uuids if u in state.data.images):
        schema[f"inventories[{i}]"] = "org.zstack.header.image.ImageInventory"
        refs = state.data.images[image_uuid].get("backupStorageRefs") or []
        for j in range(len(refs)):
            schema[f"inventories[{i}].backupStorageRefs[{j}]"] = (
                "org.zstack.header.image.ImageBackupStorageRefInventory"
            )
    return schema


def _container_page(status: int, title: str, message: str) -> Reply:
    """[INF] A request ZStack's controller never sees gets the servlet container's HTML error page."""
    html = (
        f'<!doctype html><html lang="en"><head><title>HTTP Status {status} – {title}</title></head>'
        f"<body><h1>HTTP Status {status} – {title}</h1><p><b>Message</b> {_html_escape(message)}</p>"
        "</body></html>"
    )
    return Reply(status, html.encode("utf-8"), "raw", (("Content-Type", "text/html;charset=utf-8"),))


def _html_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")
