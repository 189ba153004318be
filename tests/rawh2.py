"""A tiny HTTP/2 client for one gRPC call whose headers are sent exactly as given, bytes included.

grpc's own clients refuse metadata values that are not printable ASCII before anything is sent;
a hostile caller is not bound by that. This writer sends the frames by hand (HPACK literals, no
Huffman, no dynamic table) and reads the answer: response headers, trailers, RST_STREAM, GOAWAY.
It only speaks to 127.0.0.1 and is bounded by a timeout.
"""

from __future__ import annotations

import socket
import struct
import time
from dataclasses import dataclass, field

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY, CONTINUATION = 0, 1, 3, 4, 6, 7, 9
END_STREAM, END_HEADERS, ACK = 0x1, 0x4, 0x1

# RFC 7541 appendix A.
STATIC_TABLE: list[tuple[bytes, bytes]] = [
    (b":authority", b""),
    (b":method", b"GET"),
    (b":method", b"POST"),
    (b":path", b"/"),
    (b":path", b"/index.html"),
    (b":scheme", b"http"),
    (b":scheme", b"https"),
    (b":status", b"200"),
    (b":status", b"204"),
    (b":status", b"206"),
    (b":status", b"304"),
    (b":status", b"400"),
    (b":status", b"404"),
    (b":status", b"500"),
    (b"accept-charset", b""),
    (b"accept-encoding", b"gzip, deflate"),
    (b"accept-language", b""),
    (b"accept-ranges", b""),
    (b"accept", b""),
    (b"access-control-allow-origin", b""),
    (b"age", b""),
    (b"allow", b""),
    (b"authorization", b""),
    (b"cache-control", b""),
    (b"content-disposition", b""),
    (b"content-encoding", b""),
    (b"content-language", b""),
    (b"content-length", b""),
    (b"content-location", b""),
    (b"content-range", b""),
    (b"content-type", b""),
    (b"cookie", b""),
    (b"date", b""),
    (b"etag", b""),
    (b"expect", b""),
    (b"expires", b""),
    (b"from", b""),
    (b"host", b""),
    (b"if-match", b""),
    (b"if-modified-since", b""),
    (b"if-none-match", b""),
    (b"if-range", b""),
    (b"if-unmodified-since", b""),
    (b"last-modified", b""),
    (b"link", b""),
    (b"location", b""),
    (b"max-forwards", b""),
    (b"proxy-authenticate", b""),
    (b"proxy-authorization", b""),
    (b"range", b""),
    (b"referer", b""),
    (b"refresh", b""),
    (b"retry-after", b""),
    (b"server", b""),
    (b"set-cookie", b""),
    (b"strict-transport-security", b""),
    (b"transfer-encoding", b""),
    (b"user-agent", b""),
    (b"vary", b""),
    (b"via", b""),
    (b"www-authenticate", b""),
]


@dataclass
class Answer:
    """What came back for the call's stream (and the connection)."""

    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    data: bytes = b""
    rst_code: int | None = None
    goaway_code: int | None = None
    ended: bool = False  # END_STREAM, RST_STREAM or GOAWAY seen before the timeout

    def get(self, name: bytes) -> bytes | None:
        for key, value in reversed(self.headers):
            if key == name:
                return value
        return None

    @property
    def grpc_status(self) -> int | None:
        value = self.get(b"grpc-status")
        return int(value) if value is not None else None


def _frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload


def _int(value: int, prefix: int, first: int = 0) -> bytes:
    limit = (1 << prefix) - 1
    if value < limit:
        return bytes([first | value])
    out = bytearray([first | limit])
    value -= limit
    while value >= 128:
        out.append((value & 127) | 128)
        value >>= 7
    out.append(value)
    return bytes(out)


def _literal(name: bytes, value: bytes) -> bytes:
    """Literal header field without indexing, new name, neither string Huffman-coded."""
    return b"\x00" + _int(len(name), 7) + name + _int(len(value), 7) + value


class _Decoder:
    """HPACK decoding of what a gRPC server sends (it does not Huffman-code ASCII values)."""

    def __init__(self) -> None:
        self.dynamic: list[tuple[bytes, bytes]] = []

    @staticmethod
    def _read_int(block: bytes, pos: int, prefix: int) -> tuple[int, int]:
        limit = (1 << prefix) - 1
        value = block[pos] & limit
        pos += 1
        if value < limit:
            return value, pos
        shift = 0
        while True:
            byte = block[pos]
            pos += 1
            value += (byte & 127) << shift
            shift += 7
            if not byte & 128:
                return value, pos

    def _read_str(self, block: bytes, pos: int) -> tuple[bytes, int]:
        huffman = block[pos] & 0x80
        length, pos = self._read_int(block, pos, 7)
        raw = block[pos : pos + length]
        if huffman:
            raw = b"<huffman>"  # not needed for the headers these tests read
        return raw, pos + length

    def _entry(self, index: int) -> tuple[bytes, bytes]:
        if index <= len(STATIC_TABLE):
            return STATIC_TABLE[index - 1]
        return self.dynamic[index - len(STATIC_TABLE) - 1]

    def decode(self, block: bytes) -> list[tuple[bytes, bytes]]:
        out: list[tuple[bytes, bytes]] = []
        pos = 0
        while pos < len(block):
            byte = block[pos]
            if byte & 0x80:  # indexed field
                index, pos = self._read_int(block, pos, 7)
                out.append(self._entry(index))
                continue
            if byte & 0xE0 == 0x20:  # dynamic table size update
                size, pos = self._read_int(block, pos, 5)
                if size == 0:
                    self.dynamic.clear()
                continue
            incremental = byte & 0xC0 == 0x40
            index, pos = self._read_int(block, pos, 6 if incremental else 4)
            if index:
                name = self._entry(index)[0]
            else:
                name, pos = self._read_str(block, pos)
            value, pos = self._read_str(block, pos)
            if incremental:
                self.dynamic.insert(0, (name, value))
            out.append((name, value))
        return out


def grpc_call(
    port: int,
    path: str,
    message: bytes,
    metadata: list[tuple[bytes, bytes]],
    timeout: float = 5.0,
) -> Answer:
    """One unary-request gRPC call to 127.0.0.1:``port`` with ``metadata`` sent byte for byte."""
    block = b"".join(
        _literal(k, v)
        for k, v in [
            (b":method", b"POST"),
            (b":scheme", b"http"),
            (b":path", path.encode()),
            (b":authority", f"127.0.0.1:{port}".encode()),
            (b"content-type", b"application/grpc"),
            (b"te", b"trailers"),
            *metadata,
        ]
    )
    body = b"\x00" + struct.pack(">I", len(message)) + message
    answer = Answer()
    decoder = _Decoder()
    deadline = time.monotonic() + timeout
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(
            PREFACE
            + _frame(SETTINGS, 0, 0)
            + _frame(HEADERS, END_HEADERS, 1, block)
            + _frame(DATA, END_STREAM, 1, body)
        )
        buffer = b""
        pending = b""  # a header block continued in CONTINUATION frames
        while not answer.ended and time.monotonic() < deadline:
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                break
            if not chunk:
                break
            buffer += chunk
            while len(buffer) >= 9:
                length = int.from_bytes(buffer[:3], "big")
                if len(buffer) < 9 + length:
                    break
                kind, flags = buffer[3], buffer[4]
                stream = int.from_bytes(buffer[5:9], "big") & 0x7FFFFFFF
                payload, buffer = buffer[9 : 9 + length], buffer[9 + length :]
                if kind == SETTINGS and not flags & ACK:
                    sock.sendall(_frame(SETTINGS, ACK, 0))
                elif kind == PING and not flags & ACK:
                    sock.sendall(_frame(PING, ACK, 0, payload))
                elif kind == GOAWAY:
                    answer.goaway_code = int.from_bytes(payload[4:8], "big")
                    last_stream = int.from_bytes(payload[:4], "big") & 0x7FFFFFFF
                    answer.ended = answer.ended or last_stream < 1
                elif stream != 1:
                    continue
                elif kind in (HEADERS, CONTINUATION):
                    if kind == HEADERS and flags & 0x8:  # PADDED
                        payload = payload[1 : len(payload) - payload[0]]
                    if kind == HEADERS and flags & 0x20:  # PRIORITY
                        payload = payload[5:]
                    pending += payload
                    if flags & END_HEADERS:
                        answer.headers += decoder.decode(pending)
                        pending = b""
                    answer.ended = answer.ended or bool(flags & END_STREAM)
                elif kind == DATA:
                    answer.data += payload
                    answer.ended = answer.ended or bool(flags & END_STREAM)
                elif kind == RST_STREAM:
                    answer.rst_code = int.from_bytes(payload[:4], "big")
                    answer.ended = True
    return answer
