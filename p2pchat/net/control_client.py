"""The control socket's wire format and its client for a command line, without asyncio.

A CLI command that the running node answers (``contacts``, ``msg``, ``history``,
...) makes one or a few calls and exits; importing asyncio alone would cost it
more than everything else it does (docs/performance.md, "CLI start-up"), so it
talks over a plain blocking socket.  The server and the asyncio client (for the
app's attached view, tests and benchmarks) live in ``control.py`` and share the
framing below: one JSON object per line each way.
"""

from __future__ import annotations

import json

# The socket type itself, without the ``socket`` module around it: that module turns
# the constants into enums as it loads, which cost a command several milliseconds of
# its start-up, for nothing a blocking Unix socket uses (docs/performance.md, "CLI
# start-up").  ``socket.socket`` is a subclass of this one, with the same methods.
from _socket import AF_UNIX, SOCK_STREAM
from _socket import socket as _Socket
from pathlib import Path

TYPE_CHECKING = False  # typing for the type checker only (p2pchat/cli.py says why)
if TYPE_CHECKING:
    from typing import Any

MAX_REQUEST = 1 << 20
#: The longest reply line a client reads (a page of history, a list of transfers).
MAX_REPLY = 64 * MAX_REQUEST
# A client that connects must not be left hanging by an owner that stopped
# answering (SIGSTOP, a hung loop): connecting and each call are bounded.
CONNECT_TIMEOUT = 2.0
CALL_TIMEOUT = 10.0


class ControlError(Exception):
    """The running node answered with an error (carries its kind for exit codes)."""

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


class ControlUnavailable(ControlError):
    """Nobody answers on the control socket (gone, or not answering in time)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, "ControlUnavailable")


def encode_request(op: str, args: dict[str, Any]) -> bytes:
    return json.dumps({"op": op, "args": args}).encode() + b"\n"


def decode_reply(line: bytes) -> Any:
    """The result of one reply line, or the node's error raised as ``ControlError``."""
    if not line:
        raise ControlUnavailable("the running node closed the control socket")
    reply = json.loads(line)
    if not reply.get("ok"):
        raise ControlError(str(reply.get("error")), str(reply.get("kind")))
    return reply.get("result")


def unanswered(limit: float) -> ControlUnavailable:
    return ControlUnavailable(
        f"the running node did not answer within {limit:g} s (is it stopped?)"
    )


def not_accepting(path: Path) -> ControlUnavailable:
    return ControlUnavailable(f"the node's control socket {path} does not accept connections")


class BlockingControlClient:
    """Talks to the running node over a blocking socket; ``call`` as ``ControlClient``'s.

    Bounded like it: connecting within ``CONNECT_TIMEOUT``, and a call fails with
    ``ControlUnavailable`` when the node sends nothing for ``timeout`` seconds (an
    owner stopped with SIGSTOP); ``None`` waits as long as the operation takes.
    The node writes each reply at once, so a bound on every read is a bound on the
    call.
    """

    def __init__(self, path: Path, *, timeout: float = CALL_TIMEOUT) -> None:
        self.path = path
        self.timeout = timeout
        self._sock: _Socket | None = None
        self._buffer = b""

    def connect(self) -> None:
        sock = _Socket(AF_UNIX, SOCK_STREAM)
        sock.settimeout(CONNECT_TIMEOUT)
        try:
            sock.connect(str(self.path))
        except TimeoutError:
            sock.close()
            raise not_accepting(self.path) from None
        except OSError:
            sock.close()
            raise
        self._sock = sock

    def call(self, op: str, args: dict[str, Any], *, timeout: float | None = None) -> Any:
        sock = self._sock
        if sock is None:
            raise ControlUnavailable("not connected to the running node")
        limit = self.timeout if timeout is None else timeout
        try:
            sock.settimeout(limit)
            sock.sendall(encode_request(op, args))
            line = self._readline(sock)
        except TimeoutError:
            self.close()
            raise unanswered(limit) from None
        except OSError as exc:
            self.close()
            raise ControlUnavailable(f"the running node went away: {exc}") from exc
        if not line:
            self.close()
        return decode_reply(line)

    def _readline(self, sock: _Socket) -> bytes:
        """One reply line, or ``b""`` if the node hung up first."""
        parts: list[bytes] = []
        size = 0
        chunk, self._buffer = self._buffer, b""
        while True:
            end = chunk.find(b"\n")
            if end >= 0:
                parts.append(chunk[: end + 1])
                self._buffer = chunk[end + 1 :]
                return b"".join(parts)
            parts.append(chunk)
            size += len(chunk)
            if size > MAX_REPLY:
                self.close()
                raise ControlUnavailable(f"the running node's reply exceeds {MAX_REPLY} bytes")
            chunk = sock.recv(1 << 20)
            if not chunk:
                return b""

    def close(self) -> None:
        sock, self._sock, self._buffer = self._sock, None, b""
        if sock is not None:
            sock.close()
