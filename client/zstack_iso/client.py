"""IsoClient and AsyncIsoClient: the ISO workflow of the gateway as plain Python calls.

* ``iter_candidates(vm)`` / ``list_candidates(vm)``: GetCandidateIso, one ImageInventory at a time;
* ``iter_candidate_vms(iso)`` / ``list_candidate_vms(iso)``: GetCandidateVm, one VmInstanceInventory
  at a time;
* ``attach_iso(vm, iso, cd_rom_uuid=, request_id=)`` and ``detach_iso(vm, iso=, request_id=)``: the
  VM as ZStack returns it once the job is done. Give a ``request_id`` (e.g. a UUID you keep) to make
  a retry safe: the same call again gets the first call's job and result, not a second mutation.

The gateway streams lists in chunks; both clients hide the chunks and yield one item at a time, as
soon as its chunk arrives. Every failure, before or during a stream, is raised as
:class:`~zstack_iso.errors.ZStackError` (``job_uuid`` names the ZStack job of a failed attach or
detach).

Credentials, by the gateway's ``--auth-mode``:

* pass-through (the default): ``session=`` a ZStack session UUID, sent as
  ``authorization: OAuth <session>``;
* account or AccessKey, with caller tokens: ``token=``, sent as ``authorization: Bearer <token>``;
* account or AccessKey on loopback, or with mutual TLS only: neither.

Both travel in the one ``authorization`` metadata key, so a client sends one or the other, never
both (a pass-through gateway takes no caller tokens: mutual TLS is how it restricts its callers).
An account or AccessKey gateway refuses a caller's session (INVALID_ARGUMENT,
``CALLER_ZSTACK_CREDENTIALS_REFUSED``) rather than call ZStack as someone else than the caller thinks.
"""

from __future__ import annotations

import enum
import re
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from types import TracebackType
from typing import Any, ClassVar, Final, Generic, Literal, Self, TypedDict, TypeVar, Unpack

import grpc
import grpc.aio
from zstack.v1 import (
    image_pb2,
    image_service_pb2,
    image_service_pb2_grpc,
    vm_instance_service_pb2,
    vm_instance_service_pb2_grpc,
    vm_pb2,
)

from zstack_iso.errors import ZStackError
from zstack_iso.tls import TlsConfig

__all__ = ["DEFAULT_TIMEOUT", "AsyncIsoClient", "IsoClient"]

#: Seconds a call may take, whole stream included, unless the client or the call says otherwise.
DEFAULT_TIMEOUT: Final = 30.0


class _Default(enum.Enum):
    """Marks a ``timeout`` argument left out: use the client's timeout (None means no deadline)."""

    TIMEOUT = enum.auto()


_CLIENT_TIMEOUT: Final = _Default.TIMEOUT

_Timeout = float | None | Literal[_Default.TIMEOUT]

# gRPC only sends printable ASCII in text metadata; sessions and caller tokens have no spaces.
_TOKEN = re.compile(r"[!-~]+")


def _auth_metadata(
    session: str | None, token: str | None, metadata: Sequence[tuple[str, str]]
) -> tuple[tuple[str, str], ...]:
    extra = tuple((key.lower(), value) for key, value in metadata)
    if session is not None and token is not None:
        raise ValueError(
            "give session= (a pass-through gateway) or token= (a gateway with caller tokens), not "
            "both: they travel in the same 'authorization' metadata"
        )
    for name, value, scheme in (("session", session, "OAuth"), ("token", token, "Bearer")):
        if value is None:
            continue
        if not isinstance(value, str) or not _TOKEN.fullmatch(value):
            # The value itself is a secret: never put it in a message.
            raise ValueError(f"{name} must be a non-empty string of printable ASCII without spaces")
        if any(key == "authorization" for key, _ in extra):
            raise ValueError(f"give the {name} either as {name}= or as 'authorization' metadata")
        extra = (("authorization", f"{scheme} {value}"), *extra)
    return extra


def _channel_settings(
    tls: TlsConfig | bool,
    channel_credentials: grpc.ChannelCredentials | None,
    options: Sequence[tuple[str, Any]],
) -> tuple[grpc.ChannelCredentials | None, list[tuple[str, Any]]]:
    """The credentials (None: plain text) and options of a new channel."""
    if tls is True:
        tls = TlsConfig()
    if tls is not False and not isinstance(tls, TlsConfig):
        raise TypeError(f"tls must be a TlsConfig, True or False, not {type(tls).__name__}")
    if isinstance(tls, TlsConfig):
        if channel_credentials is not None:
            raise ValueError("give tls= or channel_credentials=, not both")
        return tls.channel_credentials(), [*tls.channel_options(), *options]
    return channel_credentials, list(options)


def _tags(system_tags: Iterable[str], user_tags: Iterable[str]) -> tuple[list[str], list[str]]:
    # A lone string is iterable too; taken as tags it would send one tag per character.
    for name, tags in (("system_tags", system_tags), ("user_tags", user_tags)):
        if isinstance(tags, str | bytes):
            raise TypeError(f"{name} must be a sequence of strings, not a single string")
    return list(system_tags), list(user_tags)


def _request(
    vm_instance_uuid: str, system_tags: Iterable[str], user_tags: Iterable[str]
) -> vm_instance_service_pb2.GetCandidateIsoRequest:
    system, user = _tags(system_tags, user_tags)
    return vm_instance_service_pb2.GetCandidateIsoRequest(
        vm_instance_uuid=vm_instance_uuid, system_tags=system, user_tags=user
    )


def _attach_request(
    vm_instance_uuid: str,
    iso_uuid: str,
    cd_rom_uuid: str | None,
    system_tags: Iterable[str],
    user_tags: Iterable[str],
    request_id: str,
) -> vm_instance_service_pb2.AttachIsoRequest:
    system, user = _tags(system_tags, user_tags)
    request = vm_instance_service_pb2.AttachIsoRequest(
        vm_instance_uuid=vm_instance_uuid,
        iso_uuid=iso_uuid,
        system_tags=system,
        user_tags=user,
        request_id=request_id,
    )
    if cd_rom_uuid is not None:
        request.cd_rom_uuid = cd_rom_uuid
    return request


def _detach_request(
    vm_instance_uuid: str,
    iso_uuid: str | None,
    system_tags: Iterable[str],
    user_tags: Iterable[str],
    request_id: str,
) -> vm_instance_service_pb2.DetachIsoRequest:
    system, user = _tags(system_tags, user_tags)
    request = vm_instance_service_pb2.DetachIsoRequest(
        vm_instance_uuid=vm_instance_uuid, system_tags=system, user_tags=user, request_id=request_id
    )
    if iso_uuid is not None:
        request.iso_uuid = iso_uuid
    return request


class _CallOptions(TypedDict, total=False):
    """The keyword arguments of ``iter_candidates``, which ``list_candidates`` passes on."""

    system_tags: Iterable[str]
    user_tags: Iterable[str]
    timeout: _Timeout


_ChannelT = TypeVar("_ChannelT", grpc.Channel, grpc.aio.Channel)
_ImagesT = TypeVar("_ImagesT", Iterator[image_pb2.ImageInventory], AsyncIterator[image_pb2.ImageInventory])


class _Base(Generic[_ChannelT, _ImagesT]):
    """What both clients share: settings, the channel, request and metadata building. A subclass
    names its kind of channel and how to open one."""

    #: The channel class ``from_channel`` takes, and its name in messages.
    _channel_class: ClassVar[type]
    _channel_class_name: ClassVar[str]
    #: ``grpc.insecure_channel`` and ``grpc.secure_channel``, or their ``grpc.aio`` versions.
    _insecure_channel: ClassVar[Callable[..., Any]]
    _secure_channel: ClassVar[Callable[..., Any]]

    _channel: _ChannelT
    _stub: vm_instance_service_pb2_grpc.VmInstanceServiceStub
    _image_stub: image_service_pb2_grpc.ImageServiceStub

    def __init__(
        self,
        target: str,
        *,
        session: str | None = None,
        token: str | None = None,
        tls: TlsConfig | bool = False,
        channel_credentials: grpc.ChannelCredentials | None = None,
        timeout: float | None = DEFAULT_TIMEOUT,
        metadata: Sequence[tuple[str, str]] = (),
        options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        self._settings(target, session=session, token=token, timeout=timeout, metadata=metadata)
        credentials, channel_options = _channel_settings(tls, channel_credentials, options)
        if credentials is None:
            channel = type(self)._insecure_channel(target, options=channel_options)
        else:
            channel = type(self)._secure_channel(target, credentials, options=channel_options)
        self._attach(channel, owns=True)

    @classmethod
    def from_channel(
        cls,
        channel: _ChannelT,
        *,
        session: str | None = None,
        token: str | None = None,
        timeout: float | None = DEFAULT_TIMEOUT,
        metadata: Sequence[tuple[str, str]] = (),
    ) -> Self:
        """A client on a channel the caller made (TLS and options are the channel's) and keeps:
        ``close`` leaves the channel open. Several clients may share one channel."""
        if not isinstance(channel, cls._channel_class):
            raise TypeError(f"channel must be a {cls._channel_class_name}, not {type(channel).__name__}")
        client = cls.__new__(cls)
        client._settings(None, session=session, token=token, timeout=timeout, metadata=metadata)
        client._attach(channel, owns=False)
        return client

    def _settings(
        self,
        target: str | None,
        *,
        session: str | None,
        token: str | None,
        timeout: float | None,
        metadata: Sequence[tuple[str, str]],
    ) -> None:
        if target is not None and not target:
            raise ValueError("target must be HOST:PORT (or another gRPC target), not empty")
        if timeout is not None and not timeout > 0:
            raise ValueError(f"timeout must be positive seconds or None, got {timeout}")
        self._target = target
        self._timeout = timeout
        self._metadata = _auth_metadata(session, token, metadata)
        self._closed = False

    def _attach(self, channel: _ChannelT, *, owns: bool) -> None:
        self._channel = channel
        self._owns_channel = owns
        self._stub = vm_instance_service_pb2_grpc.VmInstanceServiceStub(channel)
        self._image_stub = image_service_pb2_grpc.ImageServiceStub(channel)

    @property
    def target(self) -> str | None:
        """The gateway's address; None for a client made with ``from_channel``."""
        return self._target

    @property
    def timeout(self) -> float | None:
        return self._timeout

    def __repr__(self) -> str:
        # No session, token or metadata: they may hold credentials.
        where = repr(self._target) if self._target is not None else "<channel>"
        return f"{type(self).__name__}({where}, timeout={self._timeout!r})"

    def iter_candidates(
        self,
        vm_instance_uuid: str,
        *,
        system_tags: Iterable[str] = (),
        user_tags: Iterable[str] = (),
        timeout: _Timeout = _CLIENT_TIMEOUT,
    ) -> _ImagesT:
        """The ISO images that can be attached to the VM, in ZStack's order, each as soon as it
        arrives (``async for`` with AsyncIsoClient). The call starts at the first image asked for;
        leaving the loop early cancels it.

        Raises ZStackError for any failure, also one in the middle of the stream.
        """
        request = _request(vm_instance_uuid, system_tags, user_tags)
        return self._stream(request, self._deadline(timeout))

    def _deadline(self, timeout: _Timeout) -> float | None:
        if timeout is _CLIENT_TIMEOUT:
            return self._timeout
        if timeout is not None and not timeout > 0:
            raise ValueError(f"timeout must be positive seconds or None, got {timeout}")
        return timeout

    def _stream(
        self, request: vm_instance_service_pb2.GetCandidateIsoRequest, deadline: float | None
    ) -> _ImagesT:
        raise NotImplementedError

    def _check_open(self) -> None:
        if self._closed:
            # What grpc-go reports for a call on a closed connection.
            raise ZStackError(grpc.StatusCode.CANCELLED, "the client is closed")


class IsoClient(_Base[grpc.Channel, Iterator[image_pb2.ImageInventory]]):
    """A blocking client of the gateway's ``zstack.v1.VmInstanceService``.

    Arguments:
        target: the gateway's address, ``HOST:PORT`` (or any gRPC target).
        session: a ZStack session UUID, for a pass-through gateway (``authorization: OAuth ...``).
        token: a caller token, for an account or AccessKey gateway that asks for one
            (``authorization: Bearer ...``). Not together with ``session``.
        tls: a :class:`~zstack_iso.tls.TlsConfig` (TLS, or mutual TLS with a client certificate),
            ``True`` (TLS verified against gRPC's default roots), or ``False``: plain text.
        channel_credentials: any ``grpc.ChannelCredentials`` instead of ``tls``.
        timeout: each call's deadline in seconds, the whole stream included (None: no deadline).
        metadata: more metadata sent with every call.
        options: gRPC channel options.

    Use it as a context manager, or call :meth:`close`, to close the channel. A service that has a
    channel already uses :meth:`from_channel`.

    Fields ZStack left out are absent, not empty (proto3 ``optional``): test with ``HasField``::

        with IsoClient("127.0.0.1:50051", session=session_uuid) as client:
            for image in client.iter_candidates(vm_uuid):
                size = image.size if image.HasField("size") else None
                print(image.uuid, image.name, size)

        tls = TlsConfig.from_files(cacert="ca.pem", cert="client.pem", key="client.key")
        with IsoClient("gw.example:50051", token=caller_token, tls=tls) as client:
            images = client.list_candidates(vm_uuid)
    """

    _channel_class = grpc.Channel
    _channel_class_name = "grpc.Channel"
    _insecure_channel = staticmethod(grpc.insecure_channel)
    _secure_channel = staticmethod(grpc.secure_channel)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the channel (unless it came from ``from_channel``); calls in progress are then
        cancelled. After close, calls raise ZStackError CANCELLED. Closing twice is harmless."""
        if not self._closed:
            self._closed = True
            if self._owns_channel:
                self._channel.close()

    def list_candidates(
        self, vm_instance_uuid: str, **options: Unpack[_CallOptions]
    ) -> list[image_pb2.ImageInventory]:
        """All of :meth:`iter_candidates` as a list (the same keyword arguments)."""
        return list(self.iter_candidates(vm_instance_uuid, **options))

    def iter_candidate_vms(
        self,
        iso_uuid: str,
        *,
        system_tags: Iterable[str] = (),
        user_tags: Iterable[str] = (),
        timeout: _Timeout = _CLIENT_TIMEOUT,
    ) -> Iterator[vm_pb2.VmInstanceInventory]:
        """The VMs the ISO can be attached to (GetCandidateVm), in ZStack's order, each as soon as
        it arrives. Raises ZStackError for any failure."""
        system, user = _tags(system_tags, user_tags)
        request = image_service_pb2.GetCandidateVmRequest(
            iso_uuid=iso_uuid, system_tags=system, user_tags=user
        )
        deadline = self._deadline(timeout)
        self._check_open()
        call = self._image_stub.GetCandidateVm(request, timeout=deadline, metadata=self._metadata)
        try:
            for chunk in call:
                yield from chunk.inventories
        except grpc.RpcError as err:
            raise ZStackError.from_rpc_error(err) from err
        finally:
            call.cancel()

    def list_candidate_vms(
        self, iso_uuid: str, **options: Unpack[_CallOptions]
    ) -> list[vm_pb2.VmInstanceInventory]:
        """All of :meth:`iter_candidate_vms` as a list (the same keyword arguments)."""
        return list(self.iter_candidate_vms(iso_uuid, **options))

    def attach_iso(
        self,
        vm_instance_uuid: str,
        iso_uuid: str,
        *,
        cd_rom_uuid: str | None = None,
        system_tags: Iterable[str] = (),
        user_tags: Iterable[str] = (),
        request_id: str = "",
        timeout: _Timeout = _CLIENT_TIMEOUT,
    ) -> vm_pb2.VmInstanceInventory:
        """Attach the ISO to the VM (to ``cd_rom_uuid``, or ZStack's first empty CD-ROM); the VM
        once ZStack's job is done. With a ``request_id``, calling again after any failure (a
        deadline, a lost connection) gets the same job's result instead of a second attach."""
        request = _attach_request(vm_instance_uuid, iso_uuid, cd_rom_uuid, system_tags, user_tags, request_id)
        response: vm_instance_service_pb2.AttachIsoResponse = self._unary(
            self._stub.AttachIso, request, self._deadline(timeout)
        )
        return response.inventory

    def detach_iso(
        self,
        vm_instance_uuid: str,
        iso_uuid: str | None = None,
        *,
        system_tags: Iterable[str] = (),
        user_tags: Iterable[str] = (),
        request_id: str = "",
        timeout: _Timeout = _CLIENT_TIMEOUT,
    ) -> vm_pb2.VmInstanceInventory:
        """Detach the ISO (or the VM's only ISO) from the VM; the VM once ZStack's job is done.
        Detaching what is not attached succeeds. ``request_id`` as for :meth:`attach_iso`."""
        request = _detach_request(vm_instance_uuid, iso_uuid, system_tags, user_tags, request_id)
        response: vm_instance_service_pb2.DetachIsoResponse = self._unary(
            self._stub.DetachIso, request, self._deadline(timeout)
        )
        return response.inventory

    def _unary(self, method: Any, request: Any, deadline: float | None) -> Any:
        self._check_open()
        try:
            return method(request, timeout=deadline, metadata=self._metadata)
        except grpc.RpcError as err:
            raise ZStackError.from_rpc_error(err) from err

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


class AsyncIsoClient(_Base[grpc.aio.Channel, AsyncIterator[image_pb2.ImageInventory]]):
    """:class:`IsoClient` for asyncio, on ``grpc.aio``, with the same arguments. Create it inside
    the running event loop. Use ``async with``, or ``await close()``, to close the channel::

        async with AsyncIsoClient("127.0.0.1:50051", session=session_uuid) as client:
            async for image in client.iter_candidates(vm_uuid):
                arch = image.architecture if image.HasField("architecture") else "unknown"
                print(image.uuid, arch)
    """

    _channel_class = grpc.aio.Channel
    _channel_class_name = "grpc.aio.Channel"
    _insecure_channel = staticmethod(grpc.aio.insecure_channel)
    _secure_channel = staticmethod(grpc.aio.secure_channel)
    _stub: vm_instance_service_pb2_grpc.VmInstanceServiceAsyncStub
    _image_stub: image_service_pb2_grpc.ImageServiceAsyncStub

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the channel (unless it came from ``from_channel``); calls in progress are then
        cancelled. Closing twice is harmless."""
        if not self._closed:
            self._closed = True
            if self._owns_channel:
                await self._channel.close()

    async def list_candidates(
        self, vm_instance_uuid: str, **options: Unpack[_CallOptions]
    ) -> list[image_pb2.ImageInventory]:
        """All of :meth:`iter_candidates` as a list (the same keyword arguments; ``timeout`` is the
        gRPC deadline, as in IsoClient, and ``asyncio.timeout()`` around the call works too)."""
        return [image async for image in self.iter_candidates(vm_instance_uuid, **options)]

    async def iter_candidate_vms(
        self,
        iso_uuid: str,
        *,
        system_tags: Iterable[str] = (),
        user_tags: Iterable[str] = (),
        timeout: _Timeout = _CLIENT_TIMEOUT,  # noqa: ASYNC109 (the gRPC deadline, as in IsoClient)
    ) -> AsyncIterator[vm_pb2.VmInstanceInventory]:
        """IsoClient.iter_candidate_vms, with ``async for``."""
        system, user = _tags(system_tags, user_tags)
        request = image_service_pb2.GetCandidateVmRequest(
            iso_uuid=iso_uuid, system_tags=system, user_tags=user
        )
        deadline = self._deadline(timeout)
        self._check_open()
        call = self._image_stub.GetCandidateVm(request, timeout=deadline, metadata=self._metadata)
        try:
            async for chunk in call:
                for vm in chunk.inventories:
                    yield vm
        except grpc.RpcError as err:
            raise ZStackError.from_rpc_error(err) from err
        finally:
            call.cancel()

    async def list_candidate_vms(
        self, iso_uuid: str, **options: Unpack[_CallOptions]
    ) -> list[vm_pb2.VmInstanceInventory]:
        """All of :meth:`iter_candidate_vms` as a list."""
        return [vm async for vm in self.iter_candidate_vms(iso_uuid, **options)]

    async def attach_iso(
        self,
        vm_instance_uuid: str,
        iso_uuid: str,
        *,
        cd_rom_uuid: str | None = None,
        system_tags: Iterable[str] = (),
        user_tags: Iterable[str] = (),
        request_id: str = "",
        timeout: _Timeout = _CLIENT_TIMEOUT,  # noqa: ASYNC109 (the gRPC deadline, as in IsoClient)
    ) -> vm_pb2.VmInstanceInventory:
        """IsoClient.attach_iso, awaited."""
        request = _attach_request(vm_instance_uuid, iso_uuid, cd_rom_uuid, system_tags, user_tags, request_id)
        response = await self._unary(self._stub.AttachIso, request, self._deadline(timeout))
        return response.inventory  # type: ignore[no-any-return]

    async def detach_iso(
        self,
        vm_instance_uuid: str,
        iso_uuid: str | None = None,
        *,
        system_tags: Iterable[str] = (),
        user_tags: Iterable[str] = (),
        request_id: str = "",
        timeout: _Timeout = _CLIENT_TIMEOUT,  # noqa: ASYNC109 (the gRPC deadline, as in IsoClient)
    ) -> vm_pb2.VmInstanceInventory:
        """IsoClient.detach_iso, awaited."""
        request = _detach_request(vm_instance_uuid, iso_uuid, system_tags, user_tags, request_id)
        response = await self._unary(self._stub.DetachIso, request, self._deadline(timeout))
        return response.inventory  # type: ignore[no-any-return]

    async def _unary(self, method: Any, request: Any, deadline: float | None) -> Any:
        self._check_open()
        try:
            return await method(request, timeout=deadline, metadata=self._metadata)
        except grpc.RpcError as err:
            raise ZStackError.from_rpc_error(err) from err

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
