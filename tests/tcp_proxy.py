"""A small TCP proxy the tests control, to cut a service's connection to a server.

    proxy = TcpProxy("127.0.0.1", 3306).start()   # listen on proxy.port, forward to 3306
    proxy.cut()       # reset every open connection and refuse new ones (the server looks down)
    proxy.restore()   # listen again on the same port and forward as before
    proxy.freeze()    # keep every connection open and accept new ones, but forward nothing (a hung server)
    proxy.thaw()      # forward again, what was held back included
    proxy.stop()

Point the client at ``127.0.0.1:proxy.port`` instead of the server. A cut
closes both sides of every forwarded connection with an RST (``SO_LINGER``
0), so the client sees its connection drop mid-query, and closes the
listening socket, so reconnects are refused until :meth:`restore`. A
freeze is a server that hangs (``SIGSTOP``, a stalled disk) rather than one
that is gone: connections are made, bytes are sent, nothing comes back.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading

from tests.helpers import free_port

_RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends RST, no FIN handshake


class TcpProxy:
    """Forward ``127.0.0.1:port`` to ``upstream``, one thread per direction per connection."""

    def __init__(self, upstream_host: str, upstream_port: int, port: int | None = None) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.port = port or free_port()
        self.accepted = 0  # connections forwarded so far, cuts included
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._listener: socket.socket | None = None
        self._cut = False
        self._flowing = threading.Event()  # cleared while frozen: the pumps hold what they read
        self._flowing.set()

    def start(self) -> TcpProxy:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(128)
        self._listener = listener
        self._cut = False
        threading.Thread(target=self._accept_loop, args=(listener,), daemon=True, name="proxy-accept").start()
        return self

    @property
    def open_connections(self) -> int:
        with self._lock:
            return len(self._sockets) // 2

    def cut(self) -> None:
        """Drop every forwarded connection and stop accepting: the server seems gone."""
        self._cut = True
        if self._listener is not None:
            with contextlib.suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)
            self._listener.close()
            self._listener = None
        with self._lock:
            doomed, self._sockets = self._sockets, set()
        for sock in doomed:
            _reset(sock)
        self._flowing.set()  # a pump held by a freeze finds its sockets reset and ends

    def freeze(self) -> None:
        """Forward nothing, in either direction, until :meth:`thaw`: the server seems hung."""
        self._flowing.clear()

    def thaw(self) -> None:
        """Forward again, starting with what was held back."""
        self._flowing.set()

    def restore(self) -> None:
        """Accept and forward again, on the same port."""
        self.start()

    def stop(self) -> None:
        self.cut()

    def _accept_loop(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # the listener was closed by cut()
            if self._cut:  # accepted just before a cut closed the listener
                _reset(client)
                continue
            try:
                server = socket.create_connection(self.upstream, timeout=5)
                server.settimeout(None)
            except OSError:
                _reset(client)
                continue
            for sock in (client, server):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self._sockets |= {client, server}
                self.accepted += 1
            for source, target in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(source, target), daemon=True, name="proxy-pump").start()

    def _pump(self, source: socket.socket, target: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                self._flowing.wait()
                target.sendall(data)
        except OSError:
            pass
        with self._lock:
            owned = source in self._sockets
            self._sockets.discard(source)
            self._sockets.discard(target)
        if owned:  # a normal close from one side: pass it on (a cut has already reset both)
            for sock in (source, target):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()


def _reset(sock: socket.socket) -> None:
    """Abort ``sock``: wake any thread blocked reading it, then close with an RST."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET)
        sock.shutdown(socket.SHUT_RD)
    sock.close()
