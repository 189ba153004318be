"""How a call authenticates, to the gateway and to ZStack.

Exactly one mode is active per gateway (``--auth-mode``).

* :class:`PassThrough` (the default): the caller's ``authorization: OAuth <session-uuid>`` metadata
  goes to ZStack unchanged; a call without it is refused before anything goes upstream.
* :class:`AccountLogin`: the gateway logs in with its own account name and password
  (``PUT /zstack/v1/accounts/login``, ``logInByAccount``, the password as lowercase hex SHA-512) and
  sends that session for every call. Concurrent first calls share one login; when ZStack says the
  session is invalid (``ID.1001`` or a newer session ``globalErrorCode``) it logs in again once and
  the call is tried once more; shutdown logs the session out.
* :class:`AccessKeySigner`: the gateway signs every request as ZStack's SDKs do
  (``Authorization: ZStack <keyId>:<base64 HMAC-SHA1(secret, METHOD\\nDate\\n/v1/<path>)>`` and ``Date``).

Every mode turns the caller's metadata into a :class:`CallerAuth` (checked before any upstream call),
gives the headers of each upstream request, may refresh its credentials once when ZStack says the
session is invalid, and says through :meth:`Credentials.problem` whether it can authenticate at all
(readiness turns health NOT_SERVING while it cannot).

In the modes that hold credentials the caller's own ``authorization`` metadata never goes to ZStack:
``Bearer <token>`` is the caller token (see :mod:`zstack_gateway.auth.callers`), a ZStack credential
(``OAuth ...``, ``ZStack ...``) is refused with INVALID_ARGUMENT (the caller would otherwise believe it
acts as its own session while it acts as the gateway's account), anything else is ignored.

No secret (password, its hash, the session uuid, the AccessKey secret, a signature) is ever logged or
put into an error.

Modules: :mod:`.base` (what every mode shares), :mod:`.passthrough`, :mod:`.account`,
:mod:`.access_key`, :mod:`.modes` (the mode a configuration asks for) and :mod:`.callers` (caller
tokens: who may call the gateway at all).
"""

from zstack_gateway.auth.access_key import AccessKeySigner
from zstack_gateway.auth.account import AccountLogin
from zstack_gateway.auth.base import CallerAuth, Credentials, is_invalid_session
from zstack_gateway.auth.modes import from_config
from zstack_gateway.auth.passthrough import PassThrough

__all__ = [
    "AccessKeySigner",
    "AccountLogin",
    "CallerAuth",
    "Credentials",
    "PassThrough",
    "from_config",
    "is_invalid_session",
]
