"""The server's listening socket, taken before the model loads."""

from __future__ import annotations

import errno
import socket

from harness.errors import HyperbenchError


def bind(host: str, port: int) -> socket.socket:
    """Take the port now, so a busy port fails in a second rather than after the model loads."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto IPPROTO_TCP (not 0) so asyncio sets TCP_NODELAY on accepted connections; without it
    # Nagle + delayed ACK add ~40 ms to every small response and streamed token
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is not "in use"
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise HyperbenchError(f"port {port} is in use on {host} ({exc.strerror})") from None
        raise HyperbenchError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    return sock
