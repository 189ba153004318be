"""zstack_gateway: a gRPC front door to ZStack's REST API.

The data path of one call, one module per step: :mod:`.servicer` -> :mod:`.validation` ->
:mod:`.upstream` (the ZStack client) -> :mod:`.translate` (JSON -> protobuf) -> :mod:`.stream`
(chunks); :mod:`.errors` is the one place where failures get their gRPC status, and
:mod:`.interceptors` the one place where they are sent.
"""

from zstack_gateway.app import Gateway, running, start
from zstack_gateway.config import Config, ConfigError
from zstack_gateway.errors import GatewayError

__all__ = ["Config", "ConfigError", "Gateway", "GatewayError", "running", "start"]
