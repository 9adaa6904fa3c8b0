"""Socket buffers large enough for bursts on the node's one UDP socket.

QUIC, KRPC and punch packets share one socket, so a burst on any of them (a DHT reply
storm, a flood of junk, a fast file transfer) lands in one kernel receive queue. Linux
gives a UDP socket ~208 KiB by default, about 90 full-size datagrams: a burst beyond
that is dropped by the kernel before the node can tell valid packets from junk, and
valid DHT pings and QUIC packets go with it.

``SO_RCVBUF`` is capped at ``net.core.rmem_max`` (208 KiB on most distributions);
``SO_RCVBUFFORCE`` ignores the cap but needs ``CAP_NET_ADMIN`` (root). We try the forced
option first and fall back, then read back what the kernel granted (Linux reports twice
the request: it counts its bookkeeping) and log it, so a capped system is visible.
"""

from __future__ import annotations

import logging
import socket
import sys
from typing import Final

__all__ = ["RECEIVE_BUFFER", "SEND_BUFFER", "raise_buffers"]

log = logging.getLogger(__name__)

RECEIVE_BUFFER: Final = 4 * 1024 * 1024
SEND_BUFFER: Final = 1024 * 1024
#: Linux's option numbers (asm-generic/socket.h); Python's socket module lacks them.
_SO_SNDBUFFORCE: Final = 32
_SO_RCVBUFFORCE: Final = 33


def _set(sock: socket.socket, forced: int | None, plain: int, size: int) -> None:
    if forced is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, forced, size)
            return
        except OSError:  # EPERM without CAP_NET_ADMIN: the capped option below
            pass
    try:
        sock.setsockopt(socket.SOL_SOCKET, plain, size)
    except OSError as exc:
        log.debug("cannot set socket option %d: %s", plain, exc)


def raise_buffers(
    sock: socket.socket | None, *, receive: int = RECEIVE_BUFFER, send: int = SEND_BUFFER
) -> tuple[int, int] | None:
    """Ask for ``receive``/``send`` bytes of buffer; return what the kernel granted."""
    if sock is None:
        return None
    linux = sys.platform.startswith("linux")
    _set(sock, _SO_RCVBUFFORCE if linux else None, socket.SO_RCVBUF, receive)
    _set(sock, _SO_SNDBUFFORCE if linux else None, socket.SO_SNDBUF, send)
    granted = (
        sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF),
        sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF),
    )
    log.info(
        "UDP socket buffers: receive %d KiB, send %d KiB (asked for %d and %d KiB)",
        granted[0] // 1024,
        granted[1] // 1024,
        receive // 1024,
        send // 1024,
    )
    if granted[0] < receive:
        log.warning(
            "the kernel capped the UDP receive buffer at %d KiB: bursts may be dropped "
            "(raise net.core.rmem_max, or run with CAP_NET_ADMIN)",
            granted[0] // 1024,
        )
    return granted
