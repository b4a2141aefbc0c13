"""One address that moves, as a managed Redis's endpoint does: a TCP relay on 127.0.0.1 that
sends each new connection to whichever Redis node is primary now.

A managed Redis (ElastiCache, Azure Cache, Memorystore...) gives its users one host name; when
the primary fails, the provider promotes a replica and points the name at it. Connections
opened before the move stay where they were: to a dead node they break, to a demoted one they
stay open and meet ``READONLY``. :class:`MovingEndpoint` behaves alike: :meth:`move` changes
where new connections go, and :meth:`drop_all` breaks the open ones (what a dead node's do).
"""

from __future__ import annotations

import socket
import threading
from types import TracebackType

from mutitask_celery.tools.localredis import free_port

CHUNK = 65536


class MovingEndpoint:
    """``with MovingEndpoint(port_of_primary) as endpoint: endpoint.url``."""

    def __init__(self, target: int) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._target = target
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._listener = socket.create_server(("127.0.0.1", self.port))
        self._closed = False
        threading.Thread(target=self._accept, name="endpoint-accept", daemon=True).start()

    @property
    def target(self) -> int:
        return self._target

    def move(self, target: int) -> None:
        """New connections go to the node on port ``target`` from now on."""
        with self._lock:
            self._target = target

    def drop_all(self) -> None:
        """Break every connection open now, as the death of the node they reach does."""
        with self._lock:
            sockets, self._open = list(self._open), set()
        for sock in sockets:
            _close(sock)

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            with self._lock:
                target = self._target
            try:
                upstream = socket.create_connection(("127.0.0.1", target), timeout=2)
                upstream.settimeout(None)
            except OSError:
                _close(client)  # the node is down: the client sees a refused connection, and tries again
                continue
            with self._lock:
                self._open.update((client, upstream))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), name="endpoint-pump", daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(CHUNK):
                sink.sendall(data)
        except OSError:
            pass  # one side went away
        finally:
            with self._lock:
                self._open.discard(source)
                self._open.discard(sink)
            _close(source)
            _close(sink)

    def close(self) -> None:
        self._closed = True
        _close(self._listener)
        self.drop_all()

    def __enter__(self) -> MovingEndpoint:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()


def _close(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # not connected any more
    sock.close()
