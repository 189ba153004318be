"""Container health check: exit 0 when the gateway on this host answers SERVING to gRPC health.

Used by the Dockerfile's HEALTHCHECK. The port is taken from GATEWAY_LISTEN (default 50051); the
check connects to 127.0.0.1 in plaintext, as Kubernetes' native gRPC probes do.
"""

from __future__ import annotations

import os
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def main() -> int:
    port = os.environ.get("GATEWAY_LISTEN", "0.0.0.0:50051").rpartition(":")[2] or "50051"
    service = sys.argv[1] if len(sys.argv) > 1 else ""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=3
            )
        except grpc.RpcError as exc:
            print(f"health check failed: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    print(status)
    return 0 if reply.status == health_pb2.HealthCheckResponse.SERVING else 1


if __name__ == "__main__":
    sys.exit(main())
