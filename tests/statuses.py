"""Decode a gRPC error the way a caller would: code, message and the rich details."""

from __future__ import annotations

from dataclasses import dataclass, field

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from zstack.v1 import error_pb2


@dataclass
class Decoded:
    code: grpc.StatusCode
    message: str
    error_code: error_pb2.ErrorCode | None = None
    infos: list[error_details_pb2.ErrorInfo] = field(default_factory=list)
    bad_request: error_details_pb2.BadRequest | None = None
    details_bin_size: int = 0

    @property
    def info(self) -> error_details_pb2.ErrorInfo:
        assert len(self.infos) == 1, f"expected exactly one ErrorInfo, got {len(self.infos)}"
        return self.infos[0]


def decode(err: grpc.RpcError) -> Decoded:
    assert isinstance(err, grpc.Call)
    out = Decoded(err.code(), err.details() or "")
    for key, value in err.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            out.details_bin_size = len(value)
    status = rpc_status.from_call(err)
    if status is None:
        return out
    for detail in status.details:
        if detail.Is(error_pb2.ErrorCode.DESCRIPTOR):
            ec = error_pb2.ErrorCode()
            detail.Unpack(ec)
            out.error_code = ec
        elif detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            out.infos.append(info)
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            br = error_details_pb2.BadRequest()
            detail.Unpack(br)
            out.bad_request = br
    return out
