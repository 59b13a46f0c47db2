"""What the two loopback lab peers share: a server that goes down and comes up again on the same
port, dropping the connections it holds as a crashed lab does, and that counts what went wrong
instead of printing it (what a lab receives carries patient data)."""
from __future__ import annotations

import collections
import contextlib
import socket
import threading


class TrackedConnections:
    """Mixed into a socketserver server: remembers open connections so going down can cut them."""

    daemon_threads = True
    block_on_close = False      # closing must not wait for clients that hold their connection open

    def __init__(self, peer: LoopbackPeer, *args, **kwargs):
        self.peer = peer
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(*args, **kwargs)

    def process_request(self, request, client_address) -> None:
        with self._connections_lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request) -> None:
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request, client_address) -> None:
        """A failed handshake or a client gone mid-reply: counted, never printed."""
        self.peer.count("connection_errors")

    def cut_connections(self) -> None:
        """Waiting clients see their connection end. The plain socket's shutdown wakes the
        connection's thread without touching its TLS state."""
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                socket.socket.shutdown(connection, socket.SHUT_RDWR)


class LoopbackPeer:
    """A lab on 127.0.0.1 (port 0: any free port) served from daemon threads; a context manager.
    Subclasses say how their server is made (`_make_server`)."""

    poll_interval_s = 0.01      # how soon go_down() takes effect

    def __init__(self, port: int = 0):
        self.host, self.port = "127.0.0.1", port
        self.stats: collections.Counter[str] = collections.Counter()
        self._delay_s = 0.0
        self._lock = threading.Lock()
        self._server = None

    def _make_server(self):
        raise NotImplementedError

    def start(self):
        self.come_up()
        return self

    def stop(self) -> None:
        self.go_down()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def come_up(self) -> None:
        """Listen (again), on the same port once one has been chosen; what was received is kept."""
        if self._server is not None:
            return
        self._server = self._make_server()
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": self.poll_interval_s},
                         name=f"{type(self).__name__}-{self.port}", daemon=True).start()

    def go_down(self) -> None:
        """Refuse new connections and cut the open ones, as a crashed lab server would."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        server.cut_connections()

    def set_delay(self, seconds: float) -> None:
        """Hold every answer back this long after the work is done, so a client that gives up while
        waiting leaves a result stored at the lab but never acknowledged."""
        self._delay_s = seconds

    def count(self, stat: str) -> None:
        with self._lock:
            self.stats[stat] += 1
