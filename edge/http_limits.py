"""A threading HTTP server (stdlib) that a slow or greedy client cannot take down.

:class:`Limits`: a request, waiting for it included, must fully arrive within
``request_timeout_s`` (an absolute deadline, not a per-read timeout, so a client trickling one
header byte at a time is cut off; it gets 408 when it sent part of a request); handlers refuse
bodies above ``max_body`` (see edge/server.py: 413 before reading); at most ``max_connections``
connections are served at once, one thread each, and the next gets 503 with ``Retry-After``.
"""

from __future__ import annotations

import io
import json
import socket
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MAX_BODY = 64 * 1024


@dataclass(frozen=True)
class Limits:
    """What one client may take from the server."""

    max_body: int = MAX_BODY
    request_timeout_s: float = 10.0
    max_connections: int = 32

    def __post_init__(self) -> None:
        for name in ("max_body", "request_timeout_s", "max_connections"):
            if not getattr(self, name) > 0:
                raise ValueError(f"Limits.{name} must be > 0, got {getattr(self, name)!r}")


class DeadlineReader(io.RawIOBase):
    """Socket reads that fail with TimeoutError once ``deadline`` (monotonic seconds) has passed."""

    def __init__(self, sock: socket.socket, write_timeout_s: float):
        self.sock, self.write_timeout_s = sock, write_timeout_s
        self.deadline, self.received, self.timed_out = 0.0, 0, False

    def restart(self, timeout_s: float) -> None:
        """A new request: a new deadline, nothing received yet."""
        self.deadline, self.received, self.timed_out = time.monotonic() + timeout_s, 0, False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        remaining = self.deadline - time.monotonic()
        try:
            if remaining <= 0:
                raise TimeoutError("request did not arrive in time")
            self.sock.settimeout(remaining)
            n = self.sock.recv_into(buffer)
            self.received += n
            return n
        except TimeoutError:
            self.timed_out = True
            raise
        finally:
            self.sock.settimeout(self.write_timeout_s)  # the response gets a fresh timeout


class LimitedHandler(BaseHTTPRequestHandler):
    """A request handler whose reads honour the server's :class:`Limits` deadline."""

    server: "LimitedServer"

    def setup(self) -> None:
        super().setup()
        timeout_s = self.server.limits.request_timeout_s
        self.connection.settimeout(timeout_s)  # bounds writes to a client that stops reading
        self._reader = DeadlineReader(self.connection, timeout_s)
        self.rfile = io.BufferedReader(self._reader)

    def handle(self) -> None:
        """As the stdlib's, with a fresh deadline for each request on the connection."""
        self.close_connection = True
        while True:
            self._reader.restart(self.server.limits.request_timeout_s)
            self.handle_one_request()  # a read past the deadline ends it with close_connection set
            if self._reader.timed_out and self._reader.received:
                self._timeout_answer()  # a partial request line or headers: say why before closing
            if self.close_connection:
                break

    def _timeout_answer(self) -> None:
        body = json.dumps({"error": "the request did not arrive within "
                           f"{self.server.limits.request_timeout_s:g} s"}).encode()
        try:
            self.wfile.write(b"HTTP/1.1 408 Request Timeout\r\nContent-Type: application/json\r\n"
                             b"Connection: close\r\n" + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        except OSError:
            pass


def _close_gracefully(sock: socket.socket, linger_s: float) -> None:
    """Half-close, then discard what the client still sends for up to ``linger_s``.

    Closing a socket with unread input makes the kernel answer RST, which can destroy the response
    before the client reads it; draining briefly first lets the response arrive.
    """
    try:
        sock.shutdown(socket.SHUT_WR)
        end = time.monotonic() + linger_s
        while (left := end - time.monotonic()) > 0:
            sock.settimeout(left)
            if not sock.recv(65536):
                break
    except OSError:
        pass
    finally:
        sock.close()


class LimitedServer(ThreadingHTTPServer):
    """Serves at most ``limits.max_connections`` connections at once, each read under the deadline."""

    daemon_threads = True
    request_queue_size = 64

    def __init__(self, address: tuple[str, int], handler: type[LimitedHandler], limits: Limits):
        self.limits = limits
        self._slots = threading.BoundedSemaphore(limits.max_connections)
        # Refusals answer on threads of their own, fewer still: a flood gets closed sockets instead.
        self._refusals = threading.BoundedSemaphore(max(2, limits.max_connections // 4))
        super().__init__(address, handler)

    def process_request(self, request, client_address) -> None:
        if not self._slots.acquire(blocking=False):
            if self._refusals.acquire(blocking=False):
                threading.Thread(target=self._refuse, args=(request,), daemon=True).start()
            else:
                request.close()
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def shutdown_request(self, request) -> None:
        _close_gracefully(request, 0.5) if isinstance(request, socket.socket) else super().shutdown_request(request)

    def _refuse(self, request: socket.socket) -> None:
        try:
            body = json.dumps({"error": f"busy: {self.limits.max_connections} connections are being "
                               "served; retry shortly"}).encode()
            request.settimeout(1.0)
            request.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                            b"Retry-After: 1\r\nConnection: close\r\n"
                            + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        except OSError:
            pass
        finally:
            _close_gracefully(request, 0.5)
            self._refusals.release()


