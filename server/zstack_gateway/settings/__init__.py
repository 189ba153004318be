"""The gateway's settings: one frozen :class:`Config` made from flags and environment, checked
once.

:mod:`.config` holds the settings and their value checks; :mod:`.secrets` reads secrets from their
environment variables or files, once; :mod:`.policy` refuses combinations that cannot work or would
leave a ZStack account open to anyone; :mod:`.errors` holds :class:`ConfigError`.
"""

from zstack_gateway.settings.config import Config, split_host_port
from zstack_gateway.settings.errors import ConfigError
from zstack_gateway.settings.secret import NO_SECRET, Secret
from zstack_gateway.settings.secrets import Secrets

__all__ = ["NO_SECRET", "Config", "ConfigError", "Secret", "Secrets", "split_host_port"]
