"""The descriptors server reflection serves: the compiled-in ones, with the protos' comments.

``descriptors.binpb`` beside this module is a FileDescriptorSet that protoc builds from protos/ with
``--include_source_info --include_imports`` (``make gen``; ``make check-gen`` fails when it is stale).
It carries each file's source info, the comments that ``grpcurl describe`` and ``buf curl`` show.

Passing a descriptor pool loaded from that set to grpc_reflection is not enough: grpc_reflection
serves each file as ``FileDescriptor.CopyToProto`` writes it, and protobuf's default (upb) backend
leaves the source info out there. :class:`SourceInfoPool` therefore answers grpc_reflection's
lookups from the pool the gateway really serves (the default pool of the compiled-in stubs) and
hands out each file with the source info of the same file in the set. A file whose descriptor in
the set differs from the compiled-in one (a stale set) is served as compiled in, without comments,
and named in one warning at start: reflection never shows a schema other than the one being served.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from importlib import resources
from typing import Any, cast

from google.protobuf import descriptor, descriptor_pb2, descriptor_pool
from google.protobuf.message import DecodeError

log = logging.getLogger("zstack_gateway.reflection")

DESCRIPTOR_SET = "descriptors.binpb"


def load_descriptor_set(data: bytes | None = None) -> descriptor_pb2.FileDescriptorSet:
    """The FileDescriptorSet in ``data``, by default the one shipped beside this module."""
    if data is None:
        data = resources.files("zstack_gateway").joinpath(DESCRIPTOR_SET).read_bytes()
    return descriptor_pb2.FileDescriptorSet.FromString(data)


def _json_name(name: str) -> str:
    """protoc's default JSON name of a field: lowerCamelCase of its snake_case name."""
    head, *rest = name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def _fill_json_names(messages: Iterable[descriptor_pb2.DescriptorProto]) -> None:
    for message in messages:
        for field in (*message.field, *message.extension):
            if not field.HasField("json_name"):
                field.json_name = _json_name(field.name)
        _fill_json_names(message.nested_type)


def _schema(proto: descriptor_pb2.FileDescriptorProto) -> descriptor_pb2.FileDescriptorProto:
    """The file without its source info and with every JSON name spelt out (protoc writes them in a
    descriptor set; the Python stubs keep only the explicit ones), for comparing two copies."""
    copy = descriptor_pb2.FileDescriptorProto()
    copy.CopyFrom(proto)
    copy.ClearField("source_code_info")
    _fill_json_names(copy.message_type)
    for field in copy.extension:
        if not field.HasField("json_name"):
            field.json_name = _json_name(field.name)
    return copy


class _File:
    """A FileDescriptor as grpc_reflection uses it: ``name``, ``dependencies``, ``CopyToProto``."""

    def __init__(self, pool: SourceInfoPool, file: descriptor.FileDescriptor) -> None:
        self._pool = pool
        self._file = file
        self.name: str = file.name

    @property
    def dependencies(self) -> list[_File]:
        return [self._pool.wrap(dependency) for dependency in self._file.dependencies]

    def CopyToProto(self, proto: descriptor_pb2.FileDescriptorProto) -> None:
        with_source = self._pool.with_source.get(self.name)
        if with_source is None:
            self._file.CopyToProto(proto)
        else:
            proto.CopyFrom(with_source)


class SourceInfoPool:
    """The descriptor pool grpc_reflection is given: lookups from ``pool``, each file with the source
    info of its copy in ``descriptor_set`` when that copy matches the file being served."""

    def __init__(
        self,
        descriptor_set: descriptor_pb2.FileDescriptorSet,
        pool: descriptor_pool.DescriptorPool | None = None,
    ) -> None:
        self._pool = pool if pool is not None else descriptor_pool.Default()
        #: File name -> the file from the descriptor set, for the files it describes as served.
        self.with_source: dict[str, descriptor_pb2.FileDescriptorProto] = {}
        #: Files of the set that differ from the served ones (their comments are not served).
        self.stale: list[str] = []
        for proto in descriptor_set.file:
            try:
                served = self._pool.FindFileByName(proto.name)
            except KeyError:
                continue  # not served at all: nothing to describe
            compiled = descriptor_pb2.FileDescriptorProto()
            served.CopyToProto(compiled)
            if _schema(compiled) == _schema(proto):
                self.with_source[proto.name] = proto
            else:
                self.stale.append(proto.name)

    def wrap(self, file: descriptor.FileDescriptor) -> _File:
        return _File(self, file)

    def FindFileByName(self, name: str) -> _File:
        return self.wrap(self._pool.FindFileByName(name))

    def FindFileContainingSymbol(self, symbol: str) -> _File:
        return self.wrap(self._pool.FindFileContainingSymbol(symbol))

    def FindMessageTypeByName(self, name: str) -> descriptor.Descriptor:
        return self._pool.FindMessageTypeByName(name)

    def FindExtensionByNumber(
        self, message: descriptor.Descriptor, number: int
    ) -> descriptor.FieldDescriptor:
        return self._pool.FindExtensionByNumber(message, number)

    def FindAllExtensions(self, message: descriptor.Descriptor) -> list[descriptor.FieldDescriptor]:
        return list(self._pool.FindAllExtensions(message))


def reflection_pool(data: bytes | None = None) -> descriptor_pool.DescriptorPool | None:
    """The pool to pass to ``grpc_reflection``'s ``enable_server_reflection``: a
    :class:`SourceInfoPool` over the shipped descriptor set (or ``data``), or None (reflection
    without comments) when the set cannot be read. Stale files are named in a warning."""
    try:
        descriptor_set = load_descriptor_set(data)
    except (OSError, DecodeError) as exc:
        log.warning("reflection serves no proto comments: cannot read the descriptor set: %s", exc)
        return None
    pool = SourceInfoPool(descriptor_set)
    if pool.stale:
        log.warning(
            "reflection serves no proto comments for %s: the descriptor set differs from the "
            "compiled-in stubs (run 'make gen')",
            ", ".join(pool.stale),
        )
    # grpc_reflection only looks descriptors up and copies files to protos, which this pool does.
    return cast(descriptor_pool.DescriptorPool, cast(Any, pool))
