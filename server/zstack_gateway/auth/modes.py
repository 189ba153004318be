"""The authentication mode a configuration asks for (``--auth-mode``)."""

from __future__ import annotations

import logging
import ssl

from zstack_gateway.auth.access_key import AccessKeySigner, date_zone
from zstack_gateway.auth.account import AccountLogin
from zstack_gateway.auth.base import Credentials
from zstack_gateway.auth.passthrough import PassThrough
from zstack_gateway.settings import Config
from zstack_gateway.settings.policy import ACCESS_KEY, ACCOUNT, date_zone_name

log = logging.getLogger("zstack_gateway.credentials")


def from_config(config: Config, ssl_context: ssl.SSLContext | bool = True) -> Credentials:
    """The mode ``config`` asks for (Config.check() has made sure its settings are complete)."""
    if config.auth_mode == ACCOUNT:
        log.info("auth mode account: calling ZStack as account %r", config.zstack_account)
        return AccountLogin(
            config.zstack_url,
            config.zstack_account,
            config.secrets.password,
            ssl_context=ssl_context,
            login_timeout=min(10.0, config.default_timeout),
        )
    if config.auth_mode == ACCESS_KEY:
        zone_name = date_zone_name(config)
        log.info(
            "auth mode access-key: signing requests with AccessKey %r, Date in %s",
            config.zstack_access_key_id,
            zone_name,
        )
        return AccessKeySigner(
            config.zstack_access_key_id, config.secrets.access_key_secret, zone=date_zone(zone_name)
        )
    return PassThrough()
