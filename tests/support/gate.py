"""A TCP forwarder in front of a real service that can refuse new connections on demand: a
client sees the service go away (its connection closed at once) while everything already
connected keeps working, as when a broker stops between two clients' bootstraps."""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from types import TracebackType

from tests.support.stack import free_port


class Gate:
    """Listens on 127.0.0.1:``port`` and forwards to 127.0.0.1:``upstream``. After
    :meth:`refuse_after` ``n`` connections, every new one is closed with a reset until
    :meth:`open`."""

    def __init__(self, upstream: int) -> None:
        self.upstream = upstream
        self.port = free_port()
        self.accepted = 0
        self.refused = 0
        self._limit: int | None = None
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", self.port))
        self._listener.settimeout(0.2)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="gate", daemon=True)

    def __enter__(self) -> Gate:
        self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._listener.close()

    def refuse_after(self, n: int) -> None:
        with self._lock:
            self._limit = self.accepted + n

    def open(self) -> None:
        with self._lock:
            self._limit = None

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            with self._lock:
                refuse = self._limit is not None and self.accepted >= self._limit
                if refuse:
                    self.refused += 1
                else:
                    self.accepted += 1
            if refuse:
                client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                client.close()
                continue
            upstream = socket.create_connection(("127.0.0.1", self.upstream), timeout=5)
            upstream.settimeout(None)
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=_pipe, args=(a, b), daemon=True).start()


def _pipe(source: socket.socket, sink: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while data := source.recv(65536):
            sink.sendall(data)
    for sock in (source, sink):
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
