"""IsoClient and AsyncIsoClient: GetCandidateIso as a plain iterator of ImageInventory.

The gateway streams the candidate list in chunks; both clients hide the chunks and yield one image
at a time, as soon as its chunk arrives. Every failure, before or during the stream, is raised as
:class:`~zstack_iso.errors.ZStackError`.
"""

from __future__ import annotations

import enum
import re
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from types import TracebackType
from typing import Any, Final, Literal, Self

import grpc
import grpc.aio
from zstack.v1 import image_pb2, vm_instance_service_pb2, vm_instance_service_pb2_grpc

from zstack_iso.errors import ZStackError

__all__ = ["DEFAULT_TIMEOUT", "AsyncIsoClient", "IsoClient"]

#: Seconds a call may take, whole stream included, unless the client or the call says otherwise.
DEFAULT_TIMEOUT: Final = 30.0


class _Default(enum.Enum):
    """Marks a ``timeout`` argument left out: use the client's timeout (None means no deadline)."""

    TIMEOUT = enum.auto()


_CLIENT_TIMEOUT: Final = _Default.TIMEOUT

_Timeout = float | None | Literal[_Default.TIMEOUT]

# gRPC only sends printable ASCII in text metadata; a session is a token without spaces.
_SESSION = re.compile(r"[!-~]+")


class _Base:
    """What both clients share: settings, request and metadata building."""

    def __init__(
        self,
        target: str,
        *,
        session: str | None,
        timeout: float | None,
        metadata: Sequence[tuple[str, str]],
    ) -> None:
        if not target:
            raise ValueError("target must be HOST:PORT (or another gRPC target), not empty")
        if timeout is not None and timeout <= 0:
            raise ValueError(f"timeout must be positive seconds or None, got {timeout}")
        extra = tuple((key.lower(), value) for key, value in metadata)
        if session is not None:
            if not _SESSION.fullmatch(session):
                # The session itself is a secret: never put it in a message.
                raise ValueError("session must be a non-empty token of printable ASCII without spaces")
            if any(key == "authorization" for key, _ in extra):
                raise ValueError("give the session either as session= or as 'authorization' metadata")
            extra = (("authorization", f"OAuth {session}"), *extra)
        self._target = target
        self._timeout = timeout
        self._metadata = extra
        self._closed = False

    @property
    def target(self) -> str:
        return self._target

    @property
    def timeout(self) -> float | None:
        return self._timeout

    def __repr__(self) -> str:
        # No session, no metadata: both may hold credentials.
        return f"{type(self).__name__}({self._target!r}, timeout={self._timeout!r})"

    def _call_timeout(self, timeout: _Timeout) -> float | None:
        if timeout is _CLIENT_TIMEOUT:
            return self._timeout
        if timeout is not None and timeout <= 0:
            raise ValueError(f"timeout must be positive seconds or None, got {timeout}")
        return timeout

    def _check_open(self) -> None:
        if self._closed:
            # What grpc-go reports for a call on a closed connection.
            raise ZStackError(grpc.StatusCode.CANCELLED, "the client is closed")


def _request(
    vm_instance_uuid: str, system_tags: Iterable[str], user_tags: Iterable[str]
) -> vm_instance_service_pb2.GetCandidateIsoRequest:
    # A lone string is iterable too; taken as tags it would send one tag per character.
    for name, tags in (("system_tags", system_tags), ("user_tags", user_tags)):
        if isinstance(tags, str | bytes):
            raise TypeError(f"{name} must be a sequence of strings, not a single string")
    return vm_instance_service_pb2.GetCandidateIsoRequest(
        vm_instance_uuid=vm_instance_uuid, system_tags=list(system_tags), user_tags=list(user_tags)
    )


class IsoClient(_Base):
    """A blocking client of the gateway's ``zstack.v1.VmInstanceService``.

    ``session`` is a ZStack session UUID, sent as ``authorization: OAuth <session>`` metadata with
    every call. Without ``channel_credentials`` the channel is plain text. ``timeout`` is each call's
    deadline in seconds, the whole stream included (None: no deadline). ``metadata`` is sent with
    every call; ``options`` are gRPC channel options.

    Use it as a context manager, or call :meth:`close`, to close the channel.
    """

    def __init__(
        self,
        target: str,
        *,
        session: str | None = None,
        channel_credentials: grpc.ChannelCredentials | None = None,
        timeout: float | None = DEFAULT_TIMEOUT,
        metadata: Sequence[tuple[str, str]] = (),
        options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        super().__init__(target, session=session, timeout=timeout, metadata=metadata)
        if channel_credentials is None:
            self._channel = grpc.insecure_channel(target, options=list(options))
        else:
            self._channel = grpc.secure_channel(target, channel_credentials, options=list(options))
        self._stub = vm_instance_service_pb2_grpc.VmInstanceServiceStub(self._channel)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the channel; calls in progress are cancelled. Closing twice is harmless."""
        if not self._closed:
            self._closed = True
            self._channel.close()

    def iter_candidates(
        self,
        vm_instance_uuid: str,
        *,
        system_tags: Iterable[str] = (),
        user_tags: Iterable[str] = (),
        timeout: _Timeout = _CLIENT_TIMEOUT,
    ) -> Iterator[image_pb2.ImageInventory]:
        """The ISO images that can be attached to the VM, in ZStack's order, each as soon as it
        arrives. The call starts at the first ``next()``; leaving the loop early cancels it.

        Raises ZStackError for any failure, also one in the middle of the stream.
        """
        request = _request(vm_instance_uuid, system_tags, user_tags)
        deadline = self._call_timeout(timeout)
        return self._stream(request, deadline)

    def list_candidates(
        self,
        vm_instance_uuid: str,
        *,
        system_tags: Iterable[str] = (),
        user_tags: Iterable[str] = (),
        timeout: _Timeout = _CLIENT_TIMEOUT,
    ) -> list[image_pb2.ImageInventory]:
        """All of :meth:`iter_candidates` as a list."""
        images = self.iter_candidates(
            vm_instance_uuid, system_tags=system_tags, user_tags=user_tags, timeout=timeout
        )
        return list(images)

    def _stream(
        self, request: vm_instance_service_pb2.GetCandidateIsoRequest, deadline: float | None
    ) -> Iterator[image_pb2.ImageInventory]:
        self._check_open()
        call = self._stub.GetCandidateIso(request, timeout=deadline, metadata=self._metadata)
        try:
            for chunk in call:
                yield from chunk.inventories
        except grpc.RpcError as err:
            raise ZStackError.from_rpc_error(err) from err
        finally:
            # Ends the call when the caller stops early; a no-op once the stream has finished.
            call.cancel()


class AsyncIsoClient(_Base):
    """:class:`IsoClient` for asyncio, on ``grpc.aio``. Create it inside the running event loop.

    Use ``async with``, or ``await close()``, to close the channel.
    """

    def __init__(
        self,
        target: str,
        *,
        session: str | None = None,
        channel_credentials: grpc.ChannelCredentials | None = None,
        timeout: float | None = DEFAULT_TIMEOUT,
        metadata: Sequence[tuple[str, str]] = (),
        options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        super().__init__(target, session=session, timeout=timeout, metadata=metadata)
        if channel_credentials is None:
            self._channel = grpc.aio.insecure_channel(target, options=list(options))
        else:
            self._channel = grpc.aio.secure_channel(target, channel_credentials, options=list(options))
        self._stub = vm_instance_service_pb2_grpc.VmInstanceServiceStub(self._channel)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the channel; calls in progress are cancelled. Closing twice is harmless."""
        if not self._closed:
            self._closed = True
            await self._channel.close()

    def iter_candidates(
        self,
        vm_instance_uuid: str,
        *,
        system_tags: Iterable[str] = (),
        user_tags: Iterable[str] = (),
        timeout: _Timeout = _CLIENT_TIMEOUT,
    ) -> AsyncIterator[image_pb2.ImageInventory]:
        """``async for image in client.iter_candidates(vm)``: see :meth:`IsoClient.iter_candidates`."""
        request = _request(vm_instance_uuid, system_tags, user_tags)
        deadline = self._call_timeout(timeout)
        return self._stream(request, deadline)

    async def list_candidates(
        self,
        vm_instance_uuid: str,
        *,
        system_tags: Iterable[str] = (),
        user_tags: Iterable[str] = (),
        # The gRPC deadline is the timeout, as in IsoClient; asyncio.timeout() around the call works too.
        timeout: _Timeout = _CLIENT_TIMEOUT,  # noqa: ASYNC109
    ) -> list[image_pb2.ImageInventory]:
        """All of :meth:`iter_candidates` as a list."""
        images = self.iter_candidates(
            vm_instance_uuid, system_tags=system_tags, user_tags=user_tags, timeout=timeout
        )
        return [image async for image in images]

    async def _stream(
        self, request: vm_instance_service_pb2.GetCandidateIsoRequest, deadline: float | None
    ) -> AsyncIterator[image_pb2.ImageInventory]:
        self._check_open()
        call = self._stub.GetCandidateIso(request, timeout=deadline, metadata=self._metadata)
        try:
            async for chunk in call:
                for image in chunk.inventories:
                    yield image
        except grpc.RpcError as err:
            raise ZStackError.from_rpc_error(err) from err
        finally:
            call.cancel()
