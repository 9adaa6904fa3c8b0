"""Strict msgpack decoding and field checks shared by group operations, messages and frames.

Everything a group member signs is a msgpack *array* with fixed positions, kept as the
exact bytes that were signed (a receiver never re-encodes, so no canonical form is
needed).  Each checker raises the error class it is given, as ``core/chat.py`` does:
``RemoteProtocolError`` for what a peer sent, ``LocalProtocolError`` when we check what
we are about to send.
"""

from __future__ import annotations

import math
import unicodedata
from typing import Any

import msgpack

from p2pchat import names
from p2pchat.core.errors import ProtocolError

KEY_SIZE = 32
SIG_SIZE = 64
HASH_SIZE = 32
MAX_SEQ = 2**53 - 1
MAX_TIMESTAMP = 1e11
MAX_NAME_CHARS = 64

ErrorType = type[ProtocolError]


def unpack(data: bytes, err: ErrorType, *, max_bin: int, max_array: int) -> Any:
    """Decode one msgpack value with limits that keep a small input small in memory."""
    if type(data) is not bytes:
        raise err("expected bytes")
    try:
        return msgpack.unpackb(
            data,
            raw=False,
            strict_map_key=True,
            max_str_len=max_bin,
            max_bin_len=max_bin,
            max_array_len=max_array,
            max_map_len=16,
            max_ext_len=0,
        )
    except Exception as exc:  # msgpack documents that "other exceptions can be raised"
        raise err(f"not valid msgpack: {exc}") from exc


def pack(value: Any) -> bytes:
    packed: bytes = msgpack.packb(value, use_bin_type=True)
    return packed


def as_list(value: Any, err: ErrorType, what: str, *, min_len: int = 0, max_len: int) -> list[Any]:
    if type(value) is not list or not min_len <= len(value) <= max_len:
        raise err(f"{what} must be a list of {min_len} to {max_len} items")
    return value


def as_int(value: Any, err: ErrorType, what: str, lo: int = 0, hi: int = MAX_SEQ) -> int:
    if type(value) is not int:  # bool is an int subclass and must not pass for 1
        raise err(f"{what} must be an integer")
    if not lo <= value <= hi:
        raise err(f"{what} out of range: {value}")
    return value


def as_bytes(value: Any, err: ErrorType, what: str, size: int) -> bytes:
    if type(value) is not bytes or len(value) != size:
        raise err(f"{what} must be {size} bytes")
    return value


def as_bin(value: Any, err: ErrorType, what: str, max_size: int) -> bytes:
    if type(value) is not bytes or len(value) > max_size:
        raise err(f"{what} must be at most {max_size} bytes")
    return value


def as_time(value: Any, err: ErrorType, what: str) -> float:
    if type(value) is int and 0 <= value <= MAX_TIMESTAMP:
        return float(value)
    if type(value) is not float or not math.isfinite(value) or not 0 <= value <= MAX_TIMESTAMP:
        raise err(f"{what} is not a plausible timestamp")
    return value


def as_label(value: Any, err: ErrorType, what: str, max_chars: int = MAX_NAME_CHARS) -> str:
    """A name a person sees (group names): the project's name rule (``p2pchat.names``:
    no control, invisible or formatting characters), as contact names."""
    if type(value) is not str or not value.strip():
        raise err(f"{what} must be a non-empty string")
    if len(value) > max_chars:
        raise err(f"{what} exceeds {max_chars} characters")
    if any(unicodedata.category(ch) in ("Cc", "Cs") for ch in value):
        raise err(f"{what} contains control characters")
    problem = names.name_problem(value)
    if problem is not None:
        raise err(f"{what}: {problem}")
    return value


def as_keys(
    value: Any, err: ErrorType, what: str, *, max_len: int, size: int = KEY_SIZE
) -> tuple[bytes, ...]:
    """A list of fixed-size byte strings in strictly ascending order (so each list has one
    spelling and no duplicates)."""
    items = as_list(value, err, what, max_len=max_len)
    out: list[bytes] = []
    for item in items:
        key = as_bytes(item, err, what, size)
        if out and key <= out[-1]:
            raise err(f"{what} must be sorted and without duplicates")
        out.append(key)
    return tuple(out)
