"""A proxy in front of a real MySQL 8.0 whose binlog stream comes out as MySQL 8.0.20+ writes it
with ``binlog_transaction_compression=ON``: each transaction's events after its GTID event
(BEGIN, table maps, rows events, Xid) packed into one TRANSACTION_PAYLOAD_EVENT (type 40).

The payload follows MySQL's format (libbinlogevents' Transaction_payload codec): a header of
(type, length, value) fields as length-encoded integers, compression type (0, zstd), then
uncompressed size, then payload size, then an end mark (0); then the zstd stream of the inner
events, each a whole event without its checksum. The payload event ends where the
transaction's Xid ended, so every position outside a transaction is the server's own and a
reader can start (and resume) at any transaction boundary the server knows. DDL (logged
without BEGIN) passes as it is, as MySQL does not compress it either.

Everything else is passed through byte for byte: logins and queries, and the events outside
transactions; the server's greeting loses its TLS flag, so that logins stay in the clear.
Packets of 16 MiB or more are not expected here.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import struct
import threading
import zlib
from types import TracebackType

import zstandard

COM_BINLOG_DUMP = 0x12
CLIENT_SSL = 0x0800
HEADER_LEN, CHECKSUM_LEN = 19, 4
GTID, QUERY, XID, FORMAT_DESCRIPTION, PAYLOAD = 33, 2, 16, 15, 40


def packed_int(value: int) -> bytes:
    """MySQL's length-encoded integer (net_store_length)."""
    if value < 251:
        return bytes([value])
    if value < 1 << 16:
        return b"\xfc" + value.to_bytes(2, "little")
    if value < 1 << 24:
        return b"\xfd" + value.to_bytes(3, "little")
    return b"\xfe" + value.to_bytes(8, "little")


def field(kind: int, value: int) -> bytes:
    encoded = packed_int(value)
    return packed_int(kind) + packed_int(len(encoded)) + encoded


def payload_event(events: list[bytes], checksum: bool) -> bytes:
    """One TRANSACTION_PAYLOAD_EVENT holding ``events`` (whole events, checksums included when
    ``checksum``), stamped like the last of them (the Xid): its time, server and end."""
    inner = b""
    for event in events:
        body = event[: len(event) - CHECKSUM_LEN] if checksum else event
        head = bytearray(body[:HEADER_LEN])
        head[9:13] = len(body).to_bytes(4, "little")
        head[13:17] = b"\0\0\0\0"  # positions inside the payload are not the file's
        inner += bytes(head) + body[HEADER_LEN:]
    compressed = zstandard.ZstdCompressor(level=3).compress(inner)
    data = field(2, 0) + field(3, len(inner)) + field(1, len(compressed)) + packed_int(0)
    data += compressed
    last = events[-1]
    size = HEADER_LEN + len(data) + (CHECKSUM_LEN if checksum else 0)
    head = last[:4] + bytes([PAYLOAD]) + last[5:9] + struct.pack("<I", size) + last[13:17]
    event = head + b"\0\0" + data
    if checksum:
        event += struct.pack("<I", zlib.crc32(event))
    return event


class _Connection:
    """One client connection and its upstream; rewrites the binlog stream once asked for."""

    def __init__(self, client: socket.socket, upstream: socket.socket, proxy: PayloadProxy):
        self.client, self.upstream, self.proxy = client, upstream, proxy
        self.from_client = b""
        self.from_server = b""
        self.dumping = False
        self.seq = 0
        self.checksum = False
        self.held: list[bytes] | None = None  # the open transaction's events, once BEGIN came
        self.after_gtid = False
        self.greeted = False

    def run(self) -> None:
        selector = selectors.DefaultSelector()
        selector.register(self.client, selectors.EVENT_READ, "client")
        selector.register(self.upstream, selectors.EVENT_READ, "server")
        try:
            while not self.proxy.stopping.is_set():
                for key, _ in selector.select(0.2):
                    data = key.fileobj.recv(1 << 16)  # type: ignore[union-attr]
                    if not data:
                        return
                    if key.data == "client":
                        self._client_bytes(data)
                    else:
                        self._server_bytes(data)
        except OSError:
            return
        finally:
            selector.close()
            for sock in (self.client, self.upstream):
                with contextlib.suppress(OSError):
                    sock.close()

    def _client_bytes(self, data: bytes) -> None:
        self.from_client += data
        while len(self.from_client) >= 4:
            size = int.from_bytes(self.from_client[:3], "little")
            if len(self.from_client) < 4 + size:
                break
            packet, self.from_client = self.from_client[: 4 + size], self.from_client[4 + size :]
            if packet[3] == 0 and size and packet[4] == COM_BINLOG_DUMP:
                self.dumping, self.seq = True, 0
            self.upstream.sendall(packet)

    def _server_bytes(self, data: bytes) -> None:
        if not self.greeted:
            data = _without_tls(data)
            self.greeted = True
        if not self.dumping:
            self.client.sendall(data)
            return
        self.from_server += data
        out = []
        while len(self.from_server) >= 4:
            size = int.from_bytes(self.from_server[:3], "little")
            assert size < 0xFFFFFF, "a packet of 16 MiB or more"
            if len(self.from_server) < 4 + size:
                break
            body, self.from_server = self.from_server[4 : 4 + size], self.from_server[4 + size :]
            if body[:1] == b"\0" and len(body) > HEADER_LEN:
                out.extend(self._event(body[1:]))
            else:
                out.append(body)
        for body in out:
            self.seq = (self.seq + 1) & 0xFF
            self.client.sendall(len(body).to_bytes(3, "little") + bytes([self.seq]) + body)

    def _event(self, event: bytes) -> list[bytes]:
        kind = event[4]
        if kind == FORMAT_DESCRIPTION:
            self.checksum = event[-5] == 1  # its checksum algorithm, before its own checksum
        if self.held is not None:
            self.held.append(event)
            if kind != XID:
                return []
            packed, self.held = payload_event(self.held, self.checksum), None
            self.proxy.payloads += 1
            return [b"\0" + packed]
        if self.after_gtid and kind == QUERY and _query_text(event, self.checksum) == b"BEGIN":
            self.held, self.after_gtid = [event], False
            return []
        self.after_gtid = kind == GTID
        return [b"\0" + event]


def _without_tls(greeting: bytes) -> bytes:
    """The server's greeting (the first packet) without CLIENT_SSL, so that the client logs in
    in the clear and the proxy can read the stream (an empty password needs no TLS)."""
    at = greeting.index(b"\0", 5) + 1 + 4 + 8 + 1  # version, connection id, salt, filler
    flags = int.from_bytes(greeting[at : at + 2], "little") & ~CLIENT_SSL
    return greeting[:at] + flags.to_bytes(2, "little") + greeting[at + 2 :]


def _query_text(event: bytes, checksum: bool) -> bytes:
    db_len = event[HEADER_LEN + 8]
    status_len = struct.unpack_from("<H", event, HEADER_LEN + 11)[0]
    start = HEADER_LEN + 13 + status_len + db_len + 1
    return event[start : len(event) - (CHECKSUM_LEN if checksum else 0)]


class PayloadProxy:
    """Listens on 127.0.0.1 (a free port) and forwards to MySQL at 127.0.0.1:``port``."""

    def __init__(self, port: int) -> None:
        self.upstream_port = port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.2)
        self.port = self.listener.getsockname()[1]
        self.stopping = threading.Event()
        self.payloads = 0  # transactions packed so far
        self.threads: list[threading.Thread] = []
        self._accepting = threading.Thread(target=self._accept, name="payload-proxy", daemon=True)

    def __enter__(self) -> PayloadProxy:
        self._accepting.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stopping.set()
        for thread in [self._accepting, *self.threads]:
            thread.join(5)
        self.listener.close()

    def _accept(self) -> None:
        while not self.stopping.is_set():
            try:
                client, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=5)
            upstream.settimeout(None)
            client.settimeout(None)
            connection = _Connection(client, upstream, self)
            thread = threading.Thread(target=connection.run, name="payload-proxy-conn", daemon=True)
            self.threads.append(thread)
            thread.start()
