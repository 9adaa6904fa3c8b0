"""KRPC, the Mainline DHT's message layer (BEP 5), with the BEP 32/42/43/44 additions.

A datagram from the Internet is hostile until proven otherwise, so this module turns it
into one of a few frozen dataclasses or raises :class:`KrpcError`; nothing half-parsed
ever reaches the routing or storage code. The checks are on the fields this node acts on
(types, lengths, ranges); unknown keys are ignored so that newer extensions from other
clients do not make us drop their traffic.

Two details that matter for the callers:

* BEP 44 limits (``v`` size, salt size) are *not* enforced here: a ``put`` that breaks
  them must be answered with the specific error code (205/207), which is the storage
  layer's decision. Only the datagram size (1,500 bytes) bounds them at parse time.
* Responses are not self-describing: which fields must be present depends on the query
  we sent. :class:`Response` therefore carries every optional field already
  type-checked, and the caller that knows what it asked for checks presence.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Final

from ..core.errors import RemoteProtocolError
from .bencode import BencodeError, bdecode, bencode

__all__ = [
    "ERROR_CAS_MISMATCH",
    "ERROR_GENERIC",
    "ERROR_INVALID_SIGNATURE",
    "ERROR_METHOD_UNKNOWN",
    "ERROR_PROTOCOL",
    "ERROR_SALT_TOO_BIG",
    "ERROR_SEQ_TOO_OLD",
    "ERROR_SERVER",
    "ERROR_VALUE_TOO_BIG",
    "ID_LENGTH",
    "MAX_DATAGRAM",
    "Addr",
    "AnnouncePeer",
    "ErrorMessage",
    "FindNode",
    "Get",
    "GetPeers",
    "KrpcError",
    "Message",
    "NodeInfo",
    "Ping",
    "Put",
    "Query",
    "Response",
    "compact_addr",
    "compact_nodes",
    "decode_message",
    "encode_message",
    "parse_compact_addr",
    "parse_compact_nodes",
]

Addr = tuple[str, int]

ID_LENGTH: Final = 20
#: Larger datagrams are dropped unread: a BEP 44 put is ~1,100 bytes at most, and the
#: bound caps the decoder's work and memory per packet.
MAX_DATAGRAM: Final = 1500
MAX_TID: Final = 32
MAX_TOKEN: Final = 64
MAX_SEQ: Final = 2**63 - 1
#: More than this many compact entries in one reply is never useful and costs CPU.
MAX_COMPACT_ENTRIES: Final = 64
MAX_VALUES: Final = 200
MAX_ERROR_TEXT: Final = 200

ERROR_GENERIC: Final = 201
ERROR_SERVER: Final = 202
ERROR_PROTOCOL: Final = 203
ERROR_METHOD_UNKNOWN: Final = 204
ERROR_VALUE_TOO_BIG: Final = 205
ERROR_INVALID_SIGNATURE: Final = 206
ERROR_SALT_TOO_BIG: Final = 207
ERROR_CAS_MISMATCH: Final = 301
ERROR_SEQ_TOO_OLD: Final = 302


class KrpcError(RemoteProtocolError):
    """A datagram is not a KRPC message we accept.

    ``tid`` is set when the message was a query whose transaction ID could be read: the
    core answers those with ``code`` (203 or 204) so a well-meaning peer learns why.
    """

    def __init__(self, reason: str, *, tid: bytes | None = None, code: int = ERROR_PROTOCOL):
        super().__init__(reason)
        self.tid = tid
        self.code = code


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """A contact as the wire carries it: node ID plus UDP address."""

    id: bytes
    addr: Addr


# --------------------------------------------------------------------------- messages


@dataclass(frozen=True, slots=True, kw_only=True)
class _QueryBase:
    tid: bytes
    sender_id: bytes
    #: BEP 43: the sender will not answer queries, so it must not enter routing tables.
    read_only: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class Ping(_QueryBase):
    """``ping``: liveness check, also how a node learns our ID."""


@dataclass(frozen=True, slots=True, kw_only=True)
class FindNode(_QueryBase):
    """``find_node``: the k contacts we know closest to ``target``."""

    target: bytes
    want: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True, kw_only=True)
class GetPeers(_QueryBase):
    """``get_peers``: peers announced under ``info_hash``, or closer contacts."""

    info_hash: bytes
    want: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True, kw_only=True)
class AnnouncePeer(_QueryBase):
    """``announce_peer``: store the sender as a peer for ``info_hash``."""

    info_hash: bytes
    port: int
    token: bytes
    implied_port: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class Get(_QueryBase):
    """BEP 44 ``get``; ``seq`` asks for the value only if ours is newer."""

    target: bytes
    seq: int | None = None
    want: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True, kw_only=True)
class Put(_QueryBase):
    """BEP 44 ``put``; ``value`` is the *bencoded* ``v`` exactly as signed and hashed."""

    token: bytes
    value: bytes
    key: bytes | None = None
    signature: bytes | None = None
    seq: int | None = None
    cas: int | None = None
    salt: bytes = b""


Query = Ping | FindNode | GetPeers | AnnouncePeer | Get | Put

_METHOD_NAMES: Final[dict[type[Any], bytes]] = {
    Ping: b"ping",
    FindNode: b"find_node",
    GetPeers: b"get_peers",
    AnnouncePeer: b"announce_peer",
    Get: b"get",
    Put: b"put",
}


@dataclass(frozen=True, slots=True, kw_only=True)
class Response:
    """A reply; every optional field is type-checked but may be absent."""

    tid: bytes
    sender_id: bytes
    #: BEP 42: the address the responder saw us at.
    ip: Addr | None = None
    nodes: tuple[NodeInfo, ...] = ()
    nodes6: tuple[NodeInfo, ...] = ()
    token: bytes | None = None
    values: tuple[Addr, ...] = ()
    value: bytes | None = None
    key: bytes | None = None
    signature: bytes | None = None
    seq: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ErrorMessage:
    """A KRPC error reply (``y = e``)."""

    tid: bytes
    code: int
    text: str
    ip: Addr | None = None


Message = Query | Response | ErrorMessage


# --------------------------------------------------------------------------- compact forms


@lru_cache(maxsize=65536)
def _packed_ip(host: str) -> bytes:
    return ipaddress.ip_address(host).packed


def compact_addr(addr: Addr) -> bytes:
    """BEP 5/32 compact address: packed IP then big-endian port."""
    host, port = addr
    if not 0 <= port <= 0xFFFF:
        raise ValueError("port out of range")
    return _packed_ip(host) + port.to_bytes(2, "big")


def _ip_text(packed: bytes) -> str:
    if len(packed) == 4:
        return f"{packed[0]}.{packed[1]}.{packed[2]}.{packed[3]}"
    return ipaddress.IPv6Address(packed).compressed


def parse_compact_addr(data: bytes) -> Addr | None:
    """Read a 6- or 18-byte compact address; ``None`` for any other length or port 0."""
    if len(data) not in (6, 18):
        return None
    port = int.from_bytes(data[-2:], "big")
    if port == 0:
        return None
    return (_ip_text(data[:-2]), port)


def compact_nodes(nodes: list[NodeInfo] | tuple[NodeInfo, ...]) -> tuple[bytes, bytes]:
    """Split contacts into the ``nodes`` (IPv4) and ``nodes6`` (IPv6) byte strings."""
    v4: list[bytes] = []
    v6: list[bytes] = []
    for node in nodes:
        packed = compact_addr(node.addr)
        (v4 if len(packed) == 6 else v6).append(node.id + packed)
    return b"".join(v4), b"".join(v6)


def parse_compact_nodes(data: bytes, ip_len: int) -> tuple[NodeInfo, ...]:
    """Read a ``nodes`` (``ip_len`` 4) or ``nodes6`` (16) string; partial entries are an error."""
    entry = ID_LENGTH + ip_len + 2
    if len(data) % entry:
        raise KrpcError("compact node list has a partial entry")
    found: list[NodeInfo] = []
    for start in range(0, min(len(data), entry * MAX_COMPACT_ENTRIES), entry):
        addr = parse_compact_addr(data[start + ID_LENGTH : start + entry])
        if addr is not None:
            found.append(NodeInfo(data[start : start + ID_LENGTH], addr))
    return tuple(found)


# --------------------------------------------------------------------------- field readers


def _bytes(
    d: dict[bytes, Any],
    key: bytes,
    *,
    length: int | None = None,
    max_len: int | None = None,
    min_len: int = 0,
) -> bytes:
    value = d.get(key)
    if not isinstance(value, bytes):
        raise KrpcError(f"{key.decode()} missing or not a string")
    if length is not None and len(value) != length:
        raise KrpcError(f"{key.decode()} must be {length} bytes")
    if max_len is not None and len(value) > max_len:
        raise KrpcError(f"{key.decode()} too long")
    if len(value) < min_len:
        raise KrpcError(f"{key.decode()} too short")
    return value


def _opt_bytes(d: dict[bytes, Any], key: bytes, **limits: int) -> bytes | None:
    if key not in d:
        return None
    return _bytes(d, key, **limits)


def _opt_int(d: dict[bytes, Any], key: bytes, lo: int, hi: int) -> int | None:
    if key not in d:
        return None
    value = d[key]
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise KrpcError(f"{key.decode()} must be an integer in [{lo}, {hi}]")
    return value


def _want(d: dict[bytes, Any]) -> frozenset[str]:
    value = d.get(b"want")
    if value is None:
        return frozenset()
    if not isinstance(value, list) or len(value) > 8:
        raise KrpcError("want must be a short list")
    return frozenset(item.decode() for item in value if item in (b"n4", b"n6"))


def _opt_ip(d: dict[bytes, Any]) -> Addr | None:
    value = d.get(b"ip")
    # A malformed advisory field is ignored rather than costing us the whole reply.
    return parse_compact_addr(value) if isinstance(value, bytes) else None


def _encoded_value(d: dict[bytes, Any]) -> bytes | None:
    if b"v" not in d:
        return None
    return bencode(d[b"v"])


# --------------------------------------------------------------------------- decoding


def decode_message(data: bytes) -> Message:
    """Parse one datagram; raise :class:`KrpcError` for anything we will not act on."""
    if len(data) > MAX_DATAGRAM:
        raise KrpcError("datagram too large")
    if not data.startswith(b"d"):
        raise KrpcError("not a bencoded dictionary")
    try:
        msg = bdecode(data)
    except BencodeError as exc:
        raise KrpcError(f"bad bencode: {exc}") from None
    if not isinstance(msg, dict):
        raise KrpcError("not a dictionary")
    tid = msg.get(b"t")
    if not isinstance(tid, bytes) or not 1 <= len(tid) <= MAX_TID:
        raise KrpcError("missing or bad transaction id")
    kind = msg.get(b"y")
    if kind == b"q":
        try:
            return _decode_query(msg, tid)
        except KrpcError as exc:
            raise KrpcError(str(exc), tid=tid, code=exc.code) from None
    if kind == b"r":
        return _decode_response(msg, tid)
    if kind == b"e":
        return _decode_error(msg, tid)
    raise KrpcError("unknown message type")


def _decode_query(msg: dict[bytes, Any], tid: bytes) -> Query:
    method = msg.get(b"q")
    args = msg.get(b"a")
    if not isinstance(method, bytes) or not isinstance(args, dict):
        raise KrpcError("query without method or arguments")
    ro = _opt_int(msg, b"ro", 0, 1)
    base: dict[str, Any] = {
        "tid": tid,
        "sender_id": _bytes(args, b"id", length=ID_LENGTH),
        "read_only": ro == 1,
    }
    if method == b"ping":
        return Ping(**base)
    if method == b"find_node":
        return FindNode(**base, target=_bytes(args, b"target", length=ID_LENGTH), want=_want(args))
    if method == b"get_peers":
        return GetPeers(
            **base, info_hash=_bytes(args, b"info_hash", length=ID_LENGTH), want=_want(args)
        )
    if method == b"announce_peer":
        implied = _opt_int(args, b"implied_port", 0, 1) == 1
        port = _opt_int(args, b"port", 0 if implied else 1, 0xFFFF)
        if port is None:
            if not implied:
                raise KrpcError("announce_peer without port")
            port = 0
        return AnnouncePeer(
            **base,
            info_hash=_bytes(args, b"info_hash", length=ID_LENGTH),
            port=port,
            token=_bytes(args, b"token", min_len=1, max_len=MAX_TOKEN),
            implied_port=implied,
        )
    if method == b"get":
        return Get(
            **base,
            target=_bytes(args, b"target", length=ID_LENGTH),
            seq=_opt_int(args, b"seq", 0, MAX_SEQ),
            want=_want(args),
        )
    if method == b"put":
        value = _encoded_value(args)
        if value is None:
            raise KrpcError("put without v")
        key = _opt_bytes(args, b"k", length=32)
        signature = _opt_bytes(args, b"sig", length=64)
        seq = _opt_int(args, b"seq", 0, MAX_SEQ)
        salt = _opt_bytes(args, b"salt") or b""
        mutable = (key, signature, seq)
        if any(part is not None for part in mutable) and any(part is None for part in mutable):
            raise KrpcError("mutable put needs k, sig and seq together")
        if key is None and salt:
            raise KrpcError("salt on an immutable put")
        return Put(
            **base,
            token=_bytes(args, b"token", min_len=1, max_len=MAX_TOKEN),
            value=value,
            key=key,
            signature=signature,
            seq=seq,
            cas=_opt_int(args, b"cas", 0, MAX_SEQ),
            salt=salt,
        )
    raise KrpcError("unknown method", code=ERROR_METHOD_UNKNOWN)


def _decode_response(msg: dict[bytes, Any], tid: bytes) -> Response:
    body = msg.get(b"r")
    if not isinstance(body, dict):
        raise KrpcError("response without r")
    nodes = _opt_bytes(body, b"nodes")
    nodes6 = _opt_bytes(body, b"nodes6")
    values_raw = body.get(b"values")
    values: list[Addr] = []
    if values_raw is not None:
        if not isinstance(values_raw, list):
            raise KrpcError("values must be a list")
        for item in values_raw[:MAX_VALUES]:
            if not isinstance(item, bytes):
                raise KrpcError("values entries must be strings")
            addr = parse_compact_addr(item)
            if addr is not None:
                values.append(addr)
    return Response(
        tid=tid,
        sender_id=_bytes(body, b"id", length=ID_LENGTH),
        ip=_opt_ip(msg),
        nodes=parse_compact_nodes(nodes, 4) if nodes else (),
        nodes6=parse_compact_nodes(nodes6, 16) if nodes6 else (),
        token=_opt_bytes(body, b"token", min_len=1, max_len=MAX_TOKEN),
        values=tuple(values),
        value=_encoded_value(body),
        key=_opt_bytes(body, b"k", length=32),
        signature=_opt_bytes(body, b"sig", length=64),
        seq=_opt_int(body, b"seq", 0, MAX_SEQ),
    )


def _decode_error(msg: dict[bytes, Any], tid: bytes) -> ErrorMessage:
    body = msg.get(b"e")
    if (
        not isinstance(body, list)
        or len(body) < 2
        or not isinstance(body[0], int)
        or not isinstance(body[1], bytes)
    ):
        raise KrpcError("malformed error")
    text = body[1][:MAX_ERROR_TEXT].decode("utf-8", "replace")
    return ErrorMessage(tid=tid, code=body[0], text=text, ip=_opt_ip(msg))


# --------------------------------------------------------------------------- encoding


def encode_message(message: Message) -> bytes:
    """Serialise a message; raises ``ValueError``/``TypeError`` only on our own misuse."""
    if isinstance(message, Response):
        return _encode_response(message)
    if isinstance(message, ErrorMessage):
        out: dict[bytes, Any] = {
            b"t": message.tid,
            b"y": b"e",
            b"e": [message.code, message.text.encode("utf-8")],
        }
        if message.ip is not None:
            out[b"ip"] = compact_addr(message.ip)
        return bencode(out)
    return _encode_query(message)


def _want_list(want: frozenset[str]) -> list[bytes]:
    return [item.encode() for item in sorted(want)]


def _encode_query(query: Query) -> bytes:
    args: dict[bytes, Any] = {b"id": query.sender_id}
    if isinstance(query, FindNode):
        args[b"target"] = query.target
        if query.want:
            args[b"want"] = _want_list(query.want)
    elif isinstance(query, GetPeers):
        args[b"info_hash"] = query.info_hash
        if query.want:
            args[b"want"] = _want_list(query.want)
    elif isinstance(query, AnnouncePeer):
        args[b"info_hash"] = query.info_hash
        args[b"port"] = query.port
        args[b"token"] = query.token
        if query.implied_port:
            args[b"implied_port"] = 1
    elif isinstance(query, Get):
        args[b"target"] = query.target
        if query.seq is not None:
            args[b"seq"] = query.seq
        if query.want:
            args[b"want"] = _want_list(query.want)
    elif isinstance(query, Put):
        args[b"token"] = query.token
        args[b"v"] = bdecode(query.value)
        if query.key is not None:
            args[b"k"] = query.key
            args[b"sig"] = query.signature
            args[b"seq"] = query.seq
            if query.salt:
                args[b"salt"] = query.salt
            if query.cas is not None:
                args[b"cas"] = query.cas
    out: dict[bytes, Any] = {
        b"t": query.tid,
        b"y": b"q",
        b"q": _METHOD_NAMES[type(query)],
        b"a": args,
    }
    if query.read_only:
        out[b"ro"] = 1
    return bencode(out)


def _encode_response(response: Response) -> bytes:
    body: dict[bytes, Any] = {b"id": response.sender_id}
    v4, _ = compact_nodes(response.nodes)
    _, v6 = compact_nodes(response.nodes6)
    if v4:
        body[b"nodes"] = v4
    if v6:
        body[b"nodes6"] = v6
    if response.token is not None:
        body[b"token"] = response.token
    if response.values:
        body[b"values"] = [compact_addr(addr) for addr in response.values]
    if response.value is not None:
        body[b"v"] = bdecode(response.value)
    if response.key is not None:
        body[b"k"] = response.key
    if response.signature is not None:
        body[b"sig"] = response.signature
    if response.seq is not None:
        body[b"seq"] = response.seq
    out: dict[bytes, Any] = {b"t": response.tid, b"y": b"r", b"r": body}
    if response.ip is not None:
        out[b"ip"] = compact_addr(response.ip)
    return bencode(out)
