"""``--log-format json``: every line the gateway writes to stderr is one JSON object, grpc core's
own lines included (a TLS handshake failure at GRPC_VERBOSITY=info, every tracer's output), with
nothing lost at exit, no hang under grpc's heaviest tracing, and signals handled as before.

The gateway runs as a real process; its stderr is collected byte for byte.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
import zstack_sim
from grpc_health.v1 import health_pb2, health_pb2_grpc
from pki import Pki
from zstack.v1 import vm_instance_service_pb2 as svc
from zstack.v1 import vm_instance_service_pb2_grpc as svc_grpc
from zstack_gateway.telemetry.core_logs import to_json
from zstack_sim.processes import Proc, free_port, wait_until

ROOT = Path(__file__).resolve().parent.parent
AUTH = (("authorization", f"OAuth {zstack_sim.DEMO_SESSION_UUID}"),)


def json_lines(stderr: bytes) -> list[dict[str, object]]:
    """Every line of ``stderr``, each of which must be one JSON object."""
    assert stderr.endswith(b"\n"), stderr[-200:]
    out = []
    for line in stderr[:-1].split(b"\n"):
        try:
            record = json.loads(line)
        except ValueError:
            pytest.fail(f"a stderr line that is not JSON: {line[:300]!r}")
        assert isinstance(record, dict), line[:300]
        out.append(record)
    return out


@pytest.fixture
def start(gateway_process) -> Callable[..., Proc]:
    def _start(*args: str, env: dict[str, str]) -> Proc:
        return gateway_process(
            "--log-format", "json", *args, env=env, drop_env=("GATEWAY_", "ZSTACK_", "GRPC_")
        )

    return _start


def test_a_tls_handshake_failure_is_a_json_line(start, pki: Pki):
    gw = start(
        "--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key), env={"GRPC_VERBOSITY": "info"}
    )
    # A plaintext caller at a TLS port: the handshake fails, and grpc core says so on stderr.
    with grpc.insecure_channel(gw.address) as channel, pytest.raises(grpc.RpcError) as caught:
        health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=3)
    assert caught.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
    assert wait_until(lambda: b"Handshake failed" in gw.log_bytes(), timeout=20)
    assert gw.stop(20) == 0
    records = json_lines(gw.log_bytes())
    handshake = [r for r in records if "Handshake failed" in str(r["message"])]
    assert handshake, records
    for record in handshake:
        assert record["logger"] == "grpc.core"
        assert record["level"] == "INFO"
        assert re.fullmatch(r"ssl_transport_security\.cc:\d+", str(record["source"])), record
    # The gateway's own lines are there unchanged, the last one included.
    assert [r["message"] for r in records if r["logger"] == "zstack_gateway"][-1] == "stopped"


def test_grpc_tracing_everything_neither_hangs_nor_breaks_the_json(start):
    """Every tracer the gateway allows, at DEBUG: megabytes of grpc core lines a second while
    calls run. The calls end, the gateway stops with 0 within the stop's timeout, every line is JSON."""
    gw = start(env={"GRPC_VERBOSITY": "debug", "GRPC_TRACE": "all,-chttp2_hpack_parser"})
    with grpc.insecure_channel(gw.address) as channel:
        stub = svc_grpc.VmInstanceServiceStub(channel)
        for _ in range(5):
            request = svc.GetCandidateIsoRequest(vm_instance_uuid=zstack_sim.DEMO_VM_UUID)
            replies = list(stub.GetCandidateIso(request, metadata=AUTH, timeout=30))
            assert replies
    assert gw.stop(60) == 0, gw.log()[-2000:]
    records = json_lines(gw.log_bytes())
    loggers = {r["logger"] for r in records}
    assert "grpc.core" in loggers and "zstack_gateway.rpc" in loggers
    assert sum(r["logger"] == "grpc.core" for r in records) > 1000
    assert records[-1]["message"] == "stopped" or any(r["message"] == "stopped" for r in records)
    assert zstack_sim.DEMO_SESSION_UUID.encode() not in gw.log_bytes()


def test_ctrl_c_stops_make_run_on_the_port_it_was_given():
    """``make run LISTEN=...`` listens there and prints commands for that port; a Ctrl-C (SIGINT to
    the whole process group: make, the gateway and its log pump) stops it after one drain, without a
    traceback or make's "Interrupt" complaint, every stderr line JSON. make itself then ends by the
    SIGINT it got, as an interrupted program should (the shell shows status 130)."""
    port = free_port()
    proc = subprocess.Popen(
        ["make", "--no-print-directory", "run", f"LISTEN=127.0.0.1:{port}"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
        env={k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_", "ZSTACK_", "GRPC_"))},
    )
    assert proc.stdout is not None
    try:
        lines = []
        for line in proc.stdout:
            lines.append(line.decode())
            if b"NOT_FOUND" in line:
                break
        os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
    assert proc.returncode in (0, -signal.SIGINT), err.decode()
    stdout = "".join(lines) + out.decode()
    assert f"zstack-gateway ready on 127.0.0.1:{port}," in stdout
    commands = [line for line in stdout.splitlines() if "grpcurl" in line]
    assert len(commands) == 2 and all(f" 127.0.0.1:{port} " in c for c in commands), commands
    assert b"Traceback" not in err and b"Interrupt" not in err
    messages = [r["message"] for r in json_lines(err)]
    assert [m for m in messages if "received" in str(m)] == ["SIGINT received: shutting down (grace 10.0 s)"]
    assert "second signal: stopping now" not in messages
    assert messages[-1] == "stopped"


def test_lines_that_are_not_json_become_json():
    core = to_json(b"E1204 18:17:00.918910    7798 chttp2_transport.cc:123] key=authorization value=4f 41")
    record = json.loads(core)
    assert record["logger"] == "grpc.core" and record["level"] == "ERROR"
    assert record["source"] == "chttp2_transport.cc:123" and record["thread"] == 7798
    assert record["message"] == "key=authorization value=<redacted>"
    own = b'{"time": "t", "level": "INFO", "logger": "zstack_gateway", "message": "\\u2028"}'
    assert to_json(own) == own + b"\n"
    other = json.loads(to_json(b"Traceback (most recent call last): Bearer abcdefghijklmnop\x1b[31m"))
    assert other["logger"] == "stderr" and other["level"] == "ERROR"
    assert other["message"] == "Traceback (most recent call last): Bearer <redacted>\\x1b[31m"
    assert to_json(b"   ") == b""


def test_a_start_up_failure_is_one_json_record(gateway_process):
    """A busy port: exit 2, and stderr holds grpc core's complaint and the gateway's one line
    naming the setting, each a JSON object."""
    first = gateway_process("--log-format", "json")
    exe = Path(sys.executable).with_name("zstack-gateway")
    done = subprocess.run(
        [str(exe), "--demo", "--listen", first.address, "--log-format", "json"],
        capture_output=True,
        timeout=60,
        env={k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_", "ZSTACK_", "GRPC_"))},
    )
    assert done.returncode == 2
    records = json_lines(done.stderr)
    ours = [r for r in records if r["logger"] == "zstack_gateway"]
    assert len(ours) == 1 and ours[0]["level"] == "ERROR", records
    assert str(ours[0]["message"]).startswith(f"cannot start: --listen {first.address}: cannot listen there")
    assert b"Traceback" not in done.stderr
