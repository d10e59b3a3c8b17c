"""A TCP proxy between the tests and PostgreSQL that can cut the connection right after it
forwarded a COMMIT, before the server's answer reaches the client (RELIABILITY.md #4)."""

from __future__ import annotations

import contextlib
import socket
import threading

# A simple-query message: 'Q', length 11 (4 + "COMMIT\0"), "COMMIT\0".
COMMIT = b"Q\x00\x00\x00\x0bCOMMIT\x00"


class Proxy:
    def __init__(self, target_port: int) -> None:
        self.target = ("127.0.0.1", target_port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.cut_after_commit = threading.Event()
        self.cuts = 0
        self._conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.target)
            self._conns += [client, server]
            pair = {"closed": False}
            threading.Thread(target=self._pump, args=(client, server, pair, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, pair, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, pair: dict[str, bool], upstream: bool) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data or pair["closed"]:
                    break
                dst.sendall(data)
                if upstream and COMMIT in data and self.cut_after_commit.is_set():
                    # The server got the COMMIT; the client never hears back.
                    self.cut_after_commit.clear()
                    self.cuts += 1
                    pair["closed"] = True
                    break
        except OSError:
            pass
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def close(self) -> None:
        self.listener.close()
        for s in self._conns:
            with contextlib.suppress(OSError):
                s.close()
