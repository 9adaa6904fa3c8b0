"""Signed membership operations: the only way a group's member list changes.

An operation is ``[body, signature]``.  ``body`` is a msgpack array::

    ["gop", 1, group_id, kind, author, parents, at, args]

* ``group_id``: 32 bytes; empty in ``create``, whose own id *is* the group id, so a
  group id is self-certifying: whoever holds the create operation knows the founder.
* ``kind``: ``create``, ``add``, ``remove``, ``leave``, ``rename`` or ``promote``.
* ``author``: the signer's Ed25519 identity key.
* ``parents``: the ids of the operations the author had as heads when it wrote this one
  (sorted, 1 to 16; none for ``create``): a hash DAG, so every member can tell which
  operations happened before, after or concurrently with which.
* ``at``: the author's clock, for display only; nothing is decided by it.
* ``args``: ``create [name, nonce16]``, ``add [member, role]``, ``remove [member,
  cutoff]``, ``leave [cutoff]``, ``rename [name]``, ``promote [member]``.

``signature = Ed25519(author, "p2pchat/1 group-op" || 0x00 || body)``; the prefix keeps it
from being valid as any other p2pchat signature.  An operation's id is
``BLAKE2b-256(body, person="p2pchat-grp-op")``; the signature is not part of the id
(libsodium's Ed25519 refuses non-canonical signatures, and a body has one valid one).

Whether an operation is *allowed* depends on the group's state at its causal point,
which is ``membership.py``'s job; this module only builds and checks single operations.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import nacl.exceptions
import nacl.signing

import p2pchat.core.group.codec as codec
from p2pchat.core.errors import LocalProtocolError, RemoteProtocolError
from p2pchat.core.group.codec import ErrorType

__all__ = [
    "MAX_OP_BYTES",
    "MAX_PARENTS",
    "NONCE_SIZE",
    "OP_KINDS",
    "Op",
    "OpKind",
    "Role",
    "WireOp",
    "op_id",
    "parse_op",
    "sign_op",
]

OpKind = Literal["create", "add", "remove", "leave", "rename", "promote"]
Role = Literal["admin", "member"]
OP_KINDS: tuple[OpKind, ...] = ("create", "add", "remove", "leave", "rename", "promote")
ROLES: tuple[Role, ...] = ("admin", "member")
SIGN_PREFIX = b"p2pchat/1 group-op\x00"
_PERSON = b"p2pchat-grp-op"
_TAG = "gop"
VERSION = 1
MAX_OP_BYTES = 1024
MAX_PARENTS = 16
NONCE_SIZE = 16

WireOp = tuple[bytes, bytes]
"""An operation as it travels and is stored: (body, signature)."""


def op_id(body: bytes) -> bytes:
    return hashlib.blake2b(body, digest_size=32, person=_PERSON).digest()


@dataclass(frozen=True, slots=True)
class Op:
    """One verified membership operation.  ``target`` is the member an add, remove or
    promote is about; for ``leave`` it is the author (leaving removes oneself)."""

    id: bytes
    group_id: bytes
    kind: OpKind
    author: bytes
    parents: tuple[bytes, ...]
    at: float
    target: bytes | None = None
    role: Role | None = None
    name: str | None = None
    cutoff: int = 0
    body: bytes = b""
    signature: bytes = b""

    @property
    def wire(self) -> WireOp:
        return (self.body, self.signature)

    @property
    def is_removal(self) -> bool:
        return self.kind in ("remove", "leave")


def sign_op(
    sign: Callable[[bytes], bytes],
    *,
    group_id: bytes,
    kind: OpKind,
    author: bytes,
    parents: tuple[bytes, ...],
    at: float,
    target: bytes | None = None,
    role: Role | None = None,
    name: str | None = None,
    cutoff: int = 0,
    nonce: bytes | None = None,
) -> Op:
    """Build, sign and re-check an operation; ``LocalProtocolError`` if it is malformed."""
    args: list[object]
    if kind == "create":
        args = [name, nonce]
    elif kind == "add":
        args = [target, role]
    elif kind == "remove":
        args = [target, cutoff]
    elif kind == "leave":
        args = [cutoff]
    elif kind == "rename":
        args = [name]
    elif kind == "promote":
        args = [target]
    else:
        raise LocalProtocolError(f"unknown operation kind {kind!r}")
    body = codec.pack(
        [_TAG, VERSION, b"" if kind == "create" else group_id, kind, author,
         sorted(parents), at, args]
    )
    signature = sign(SIGN_PREFIX + body)
    return parse_op((body, signature), LocalProtocolError)


def parse_op(wire: object, err: ErrorType = RemoteProtocolError) -> Op:
    """Check format and signature of one operation (not whether it was allowed)."""
    if not isinstance(wire, (list, tuple)) or len(wire) != 2:
        raise err("operation must be [body, signature]")
    pair = list(wire)
    body = codec.as_bin(pair[0], err, "operation body", MAX_OP_BYTES)
    signature = codec.as_bytes(pair[1], err, "operation signature", codec.SIG_SIZE)
    fields = codec.as_list(
        codec.unpack(body, err, max_bin=MAX_OP_BYTES, max_array=MAX_PARENTS),
        err,
        "operation body",
        min_len=8,
        max_len=8,
    )
    tag, version, group_id, kind, author, parents, at, args = fields
    if tag != _TAG or type(version) is not int or version != VERSION:
        raise err("not a version 1 group operation")
    if kind not in OP_KINDS:
        raise err(f"unknown operation kind {kind!r}")
    author = codec.as_bytes(author, err, "operation author", codec.KEY_SIZE)
    parent_ids = codec.as_keys(parents, err, "operation parents", max_len=MAX_PARENTS)
    at = codec.as_time(at, err, "operation time")
    args = codec.as_list(args, err, "operation arguments", max_len=2)
    ident = op_id(body)
    fields_out: dict[str, object] = {}
    if kind == "create":
        if group_id != b"" or parent_ids:
            raise err("create names no group and no parents")
        if len(args) != 2:
            raise err("create takes [name, nonce]")
        fields_out["name"] = codec.as_label(args[0], err, "group name")
        codec.as_bytes(args[1], err, "create nonce", NONCE_SIZE)
        group_id = ident
    else:
        group_id = codec.as_bytes(group_id, err, "group id", codec.HASH_SIZE)
        if not parent_ids:
            raise err(f"{kind} must name the operations it follows")
        if kind == "add":
            if len(args) != 2 or args[1] not in ROLES:
                raise err("add takes [member, role]")
            fields_out["target"] = codec.as_bytes(args[0], err, "member", codec.KEY_SIZE)
            fields_out["role"] = args[1]
        elif kind == "remove":
            if len(args) != 2:
                raise err("remove takes [member, cutoff]")
            fields_out["target"] = codec.as_bytes(args[0], err, "member", codec.KEY_SIZE)
            fields_out["cutoff"] = codec.as_int(args[1], err, "cutoff")
        elif kind == "leave":
            if len(args) != 1:
                raise err("leave takes [cutoff]")
            fields_out["target"] = author
            fields_out["cutoff"] = codec.as_int(args[0], err, "cutoff")
        elif kind == "rename":
            if len(args) != 1:
                raise err("rename takes [name]")
            fields_out["name"] = codec.as_label(args[0], err, "group name")
        else:  # promote
            if len(args) != 1:
                raise err("promote takes [member]")
            fields_out["target"] = codec.as_bytes(args[0], err, "member", codec.KEY_SIZE)
        if fields_out.get("target") == author and kind != "leave":
            raise err(f"{kind} cannot name its own author")
    try:
        nacl.signing.VerifyKey(author).verify(SIGN_PREFIX + body, signature)
    except (nacl.exceptions.CryptoError, ValueError, TypeError):
        raise err("operation signature does not verify") from None
    return Op(
        id=ident,
        group_id=group_id,
        kind=kind,
        author=author,
        parents=parent_ids,
        at=at,
        body=body,
        signature=signature,
        **fields_out,  # type: ignore[arg-type]
    )
