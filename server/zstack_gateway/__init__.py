"""zstack_gateway: a gRPC front door to ZStack's REST API.

The data path of one call, one module per step: :mod:`.servicer` -> :mod:`.validation` ->
:mod:`.upstream` (the ZStack client; :mod:`.transport` maps its HTTP failures) -> :mod:`.translate`
(JSON -> protobuf) -> :mod:`.stream` (chunks). :mod:`.errors` is the one place where failures get
their gRPC code, :mod:`.status` encodes them for the wire, and :mod:`.interceptors` is the one place
where they are sent. Around it: :mod:`.auth` (who a call acts as, to the gateway and to ZStack),
:mod:`.settings` (the configuration, its secrets and its policy), :mod:`.telemetry` (the call's
record, metrics, logs). See docs/architecture.md.
"""

from zstack_gateway.app import Gateway, running, start
from zstack_gateway.errors import GatewayError
from zstack_gateway.settings import Config, ConfigError

__all__ = ["Config", "ConfigError", "Gateway", "GatewayError", "running", "start"]
