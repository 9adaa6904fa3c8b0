"""Signed group messages, numbered per author.

A message is ``[header, signature, content]``.  ``header`` is a msgpack array::

    ["gmsg", 1, group_id, author, seq, clock, at, heads, kind, content_hash]

* ``seq``: the author's own counter, 1, 2, 3, ...: with the author key it names the
  message, lets a member say "I hold 1..40 of this author" in a few bytes, and fixes the
  per-author display order.
* ``clock``: a Lamport clock: one more than the largest clock of any message the author
  had when writing.  Members show messages sorted by ``(clock, author, seq)``, which is
  the same order everywhere and puts every message after everything its author had seen.
  It must grow with ``seq`` for each author.
* ``heads``: the membership operations the author had as heads (1 to 8).  A member stores
  a message only once it has those operations, so whoever holds a message also knows of
  every removal its author knew of, and never hands it to a member removed before it.
* ``kind``: ``"text"`` (content is UTF-8) or ``"files"`` (a file offer, see
  ``encode_files``); other kinds are carried and stored but shown as unsupported.
* ``content_hash``: BLAKE2b-256 of ``content`` (person ``p2pchat-grp-body``), so the
  signature covers the content without the content having to sit inside the header.

``signature = Ed25519(author, "p2pchat/1 group-msg" || 0x00 || header)``.  The message id
shown to users is the first 16 bytes of BLAKE2b-256(header, person ``p2pchat-grp-msg``) in
hex.  Whether the author may post is ``replica.py``'s question; this module checks form
and signature only.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass

import nacl.exceptions
import nacl.signing

import p2pchat.core.group.codec as codec
from p2pchat.core.errors import LocalProtocolError, RemoteProtocolError
from p2pchat.core.group.codec import ErrorType

__all__ = [
    "MAX_CONTENT_BYTES",
    "MAX_HEADER_BYTES",
    "MAX_HEADS",
    "GroupMessage",
    "WireMessage",
    "parse_message",
    "sign_message",
]

SIGN_PREFIX = b"p2pchat/1 group-msg\x00"
_ID_PERSON = b"p2pchat-grp-msg"
_BODY_PERSON = b"p2pchat-grp-body"
_TAG = "gmsg"
VERSION = 1
MAX_HEADER_BYTES = 640
MAX_CONTENT_BYTES = 16 * 1024
MAX_HEADS = 8
_KIND_RE = re.compile(r"[a-z]{1,16}")

WireMessage = tuple[bytes, bytes, bytes]
"""A message as it travels and is stored: (header, signature, content)."""


def content_hash(content: bytes) -> bytes:
    return hashlib.blake2b(content, digest_size=32, person=_BODY_PERSON).digest()


@dataclass(frozen=True, slots=True)
class GroupMessage:
    id: str
    group_id: bytes
    author: bytes
    seq: int
    clock: int
    at: float
    heads: tuple[bytes, ...]
    kind: str
    content: bytes
    header: bytes
    signature: bytes

    @property
    def wire(self) -> WireMessage:
        return (self.header, self.signature, self.content)

    @property
    def size(self) -> int:
        return len(self.header) + len(self.signature) + len(self.content)

    @property
    def text(self) -> str | None:
        """The text of a ``"text"`` message (None for other kinds)."""
        if self.kind != "text":
            return None
        return self.content.decode("utf-8")


def sign_message(
    sign: Callable[[bytes], bytes],
    *,
    group_id: bytes,
    author: bytes,
    seq: int,
    clock: int,
    at: float,
    heads: tuple[bytes, ...],
    kind: str,
    content: bytes,
) -> GroupMessage:
    header = codec.pack(
        [_TAG, VERSION, group_id, author, seq, clock, at, sorted(heads), kind,
         content_hash(content)]
    )
    return parse_message((header, sign(SIGN_PREFIX + header), content), LocalProtocolError)


def parse_message(wire: object, err: ErrorType = RemoteProtocolError) -> GroupMessage:
    """Check the form and the author's signature of one message."""
    if not isinstance(wire, (list, tuple)) or len(wire) != 3:
        raise err("message must be [header, signature, content]")
    header = codec.as_bin(wire[0], err, "message header", MAX_HEADER_BYTES)
    signature = codec.as_bytes(wire[1], err, "message signature", codec.SIG_SIZE)
    content = codec.as_bin(wire[2], err, "message content", MAX_CONTENT_BYTES)
    fields = codec.as_list(
        codec.unpack(header, err, max_bin=64, max_array=max(10, MAX_HEADS)),
        err,
        "message header",
        min_len=10,
        max_len=10,
    )
    tag, version, group_id, author, seq, clock, at, heads, kind, digest = fields
    if tag != _TAG or type(version) is not int or version != VERSION:
        raise err("not a version 1 group message")
    group_id = codec.as_bytes(group_id, err, "group id", codec.HASH_SIZE)
    author = codec.as_bytes(author, err, "message author", codec.KEY_SIZE)
    seq = codec.as_int(seq, err, "message seq", 1)
    clock = codec.as_int(clock, err, "message clock", 1)
    at = codec.as_time(at, err, "message time")
    head_ids = codec.as_keys(heads, err, "message heads", max_len=MAX_HEADS)
    if not head_ids:
        raise err("a message names the membership operations it follows")
    if type(kind) is not str or _KIND_RE.fullmatch(kind) is None:
        raise err("message kind must be 1 to 16 lowercase letters")
    if codec.as_bytes(digest, err, "content hash", codec.HASH_SIZE) != content_hash(content):
        raise err("message content does not match its hash")
    if kind == "text":
        try:
            text = content.decode("utf-8")
        except UnicodeDecodeError:
            raise err("text message is not UTF-8") from None
        if "\x00" in text:
            raise err("text message contains NUL")
    try:
        nacl.signing.VerifyKey(author).verify(SIGN_PREFIX + header, signature)
    except (nacl.exceptions.CryptoError, ValueError, TypeError):
        raise err("message signature does not verify") from None
    ident = hashlib.blake2b(header, digest_size=32, person=_ID_PERSON).digest()[:16].hex()
    return GroupMessage(
        id=ident,
        group_id=group_id,
        author=author,
        seq=seq,
        clock=clock,
        at=at,
        heads=head_ids,
        kind=kind,
        content=content,
        header=header,
        signature=signature,
    )
