"""Two error types, as h11 has: who is to blame decides how the node reacts.

A ``LocalProtocolError`` is a bug or misuse on our side (raise loudly); a
``RemoteProtocolError`` means the peer sent something invalid (drop the frame or
close that one session, never crash the node).
"""


class ProtocolError(Exception):
    """Base class for protocol errors."""


class LocalProtocolError(ProtocolError):
    """We tried to do something the protocol does not allow."""


class RemoteProtocolError(ProtocolError):
    """The peer sent something the protocol does not allow."""
