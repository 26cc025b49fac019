"""A TCP relay that can be cut and restored on the same port: a device's network going away
while the services behind it stay up."""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time


class Link:
    """The device's network: a TCP relay to the broker that can be cut and restored on the same
    port, while the broker (and the shadow service behind it) stays up, as AWS does.

    It also keeps what the tests measure: when each connection was attempted (``attempts``,
    monotonic seconds, also while refusing), and how many bytes came back from the service
    (``downstream_bytes``, and per connection in ``downstream``). ``cut_after`` makes the next
    connections break off after so many bytes from the service, one budget per connection: a
    download cut part way.
    """

    def __init__(self, target_port: int) -> None:
        self._target = target_port
        self.port = 0
        self._listener: socket.socket | None = None
        self._connections: list[socket.socket] = []
        self._lock = threading.Lock()
        self._refusing = False
        self._budgets: list[int] = []
        self._reset_cuts = False
        self.attempts: list[float] = []
        self.downstream: list[int] = []
        self.downstream_bytes = 0
        self.upstream_bytes = 0
        self.cuts = 0
        self.up()

    def up(self) -> None:
        with self._lock:
            self._refusing = False
            if self._listener is not None:
                return
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen()
        self.port = listener.getsockname()[1]
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def down(self) -> None:
        with self._lock:
            listener, self._listener = self._listener, None
        if listener is not None:
            # close() alone leaves a listener that another thread is blocked in accept() on
            # still accepting (Linux); shutdown() wakes that accept() and stops listening.
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        self._drop_connections()

    def refuse(self) -> None:
        """Down, as a firewall that resets connections is: every attempt is still seen (and
        counted in ``attempts``), then reset at once."""
        if self._listener is None:
            self.up()
        with self._lock:
            self._refusing = True
        self._drop_connections()

    def cut_after(self, *budgets: int, reset: bool = False) -> None:
        """The next ``len(budgets)`` connections break off after that many bytes from the
        service; later ones are whole. The cut is a clean close (the body just ends early), or
        with ``reset`` an RST (the kernel then throws away what the device had not read yet)."""
        with self._lock:
            self._budgets = list(budgets)
            self._reset_cuts = reset

    @property
    def total_bytes(self) -> int:
        """Bytes relayed both ways since the link was made."""
        with self._lock:
            return self.upstream_bytes + self.downstream_bytes

    def attempts_since(self, since: float) -> list[float]:
        with self._lock:
            return [t for t in self.attempts if t >= since]

    def _drop_connections(self) -> None:
        with self._lock:
            connections, self._connections = self._connections, []
        for sock in connections:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            with self._lock:
                self.attempts.append(time.monotonic())
                refusing = self._refusing
                budget = self._budgets.pop(0) if self._budgets and not refusing else None
                index = len(self.downstream)
                self.downstream.append(0)
            if refusing:
                _reset(client)
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self._target))
            except OSError:
                _reset(client)
                continue
            with self._lock:
                self._connections += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()
            threading.Thread(target=self._pump_down, args=(upstream, client, budget, index),
                             daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        """Device to service, counted."""
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
                with self._lock:
                    self.upstream_bytes += len(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_RDWR)

    def _pump_down(self, src: socket.socket, dst: socket.socket, budget: int | None,
                   index: int) -> None:
        """Service to device, counted, and cut once ``budget`` bytes went by."""
        with contextlib.suppress(OSError):
            while data := src.recv(65536 if budget is None else min(65536, budget)):
                dst.sendall(data)
                with self._lock:
                    self.downstream_bytes += len(data)
                    self.downstream[index] += len(data)
                if budget is not None:
                    budget -= len(data)
                    if budget <= 0:
                        self._cut(src, dst)
                        return
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_RDWR)

    def _cut(self, upstream: socket.socket, client: socket.socket) -> None:
        with self._lock:
            self.cuts += 1
            reset = self._reset_cuts
        if reset:
            _reset(client)
        else:
            with contextlib.suppress(OSError):
                client.shutdown(socket.SHUT_RDWR)
            client.close()
        upstream.close()


def _reset(sock: socket.socket) -> None:
    """Close with an RST, as a dropped route or a firewall's reject does, not a clean FIN."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        # Wakes the other pump blocked in recv() on this socket: until that call returns, the
        # kernel keeps the socket open and close() alone sends nothing.
        sock.shutdown(socket.SHUT_RD)
    sock.close()
