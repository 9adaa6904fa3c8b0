"""Authenticated, forward-secret sessions over one reliable ordered stream (sans-IO).

QUIC already encrypts the connection, but its certificates are throwaway and
say nothing about who is on the other end.  This layer binds a stream to the
long-term Ed25519 identities of both users and encrypts it end to end with keys
that are destroyed when the session ends.

Handshake (SIGMA-style: signed Diffie-Hellman with both identities inside the
signed data)::

    I -> R  i1  {"t": "i1", "v": 1, "id": id_I, "eph": eph_I}
    R -> I  r1  {"t": "r1", "v": 1, "id": id_R, "eph": eph_R,
                 "sig": Sign_R(transcript(b"R"))}
    I -> R  i2  {"t": "i2", "sig": Sign_I(transcript(b"I"))}

    transcript(role) = b"p2pchat/1 session\\x00" || role || id_I || id_R || eph_I || eph_R

``id_*`` are 32-byte Ed25519 public keys, ``eph_*`` fresh 32-byte X25519 public
keys.  Every field has a fixed length, so the concatenation is unambiguous.

* Each signature covers the peer's fresh ephemeral key, so it cannot be replayed
  into another session, and it covers both identities, so a man in the middle
  cannot splice his own identity into an honest run (the identity-misbinding
  attack SIGMA exists to prevent).
* The role byte differs between the two signatures, so a signature can never be
  reflected back at its author.
* The initiator is convinced by r1 and may send data right after i2; the
  responder only reports ``HandshakeComplete`` once i2 verifies, because until
  then the identity in i1 is a mere claim anybody could have copied.
* Identities travel in the clear inside this stream; QUIC hides them from
  passive observers, and hiding them from an active one is not a goal.

Keys: X25519 via libsodium's ``crypto_kx`` gives one key per direction (the
initiator is the kx "client").  Each is then bound to the whole handshake::

    th  = BLAKE2b-256(transcript(b""))
    key = BLAKE2b-256(kx_key, key=th, person=b"p2pchat-dir-key")

so the keys depend on both identities as well as the Diffie-Hellman result.
The ephemeral secret keys are dropped as soon as the direction keys exist, and
the direction keys when the session object dies or fails: a later theft of an
identity key reveals nothing about earlier sessions.

Data frames: ``counter (8 bytes, big-endian) || XChaCha20-Poly1305(payload)``
with nonce ``16 zero bytes || counter`` and the counter as associated data.
Counters start at 1 in each direction and go up by exactly one per frame, so a
(key, nonce) pair is never reused and a missing frame is noticed.  A frame whose
counter is not above the last accepted one can only be a replay or an injection;
such a frame, or one that fails authentication, is reported and dropped.  A
genuine peer never produces one, so after ``MAX_REJECTED`` of them the session
is torn down rather than letting an attacker keep us busy.  An *authentic* frame
whose counter skips values proves that frames were lost on the way (over QUIC
that cannot happen; through a relay it could, and silently dropping an
``fcancel`` or a ``read`` would mislead): the session fails, and the peers
reconnect and resend what is unacknowledged.

Any malformed, oversized, unexpected or out-of-order handshake message fails the
session at once: there is nothing to recover before authentication.
"""

from __future__ import annotations

import enum
import hashlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import msgpack
import nacl.bindings
import nacl.exceptions
import nacl.signing

from p2pchat.core.errors import LocalProtocolError, RemoteProtocolError
from p2pchat.core.framing import MAX_FRAME, FrameDecoder, encode_frame

__all__ = [
    "COUNTER_SIZE",
    "MAX_HANDSHAKE_FRAME",
    "MAX_PLAINTEXT",
    "MAX_REJECTED",
    "PROTOCOL_VERSION",
    "TAG_SIZE",
    "TRANSCRIPT_PREFIX",
    "FrameRejected",
    "HandshakeComplete",
    "PayloadReceived",
    "PeerKeyMismatch",
    "SecureSession",
    "SessionEvent",
    "SessionFailed",
    "transcript",
]

PROTOCOL_VERSION = 1
TRANSCRIPT_PREFIX = b"p2pchat/1 session\x00"
KEY_SIZE = 32
SIGNATURE_SIZE = 64
COUNTER_SIZE = 8
TAG_SIZE = nacl.bindings.crypto_aead_xchacha20poly1305_ietf_ABYTES
MAX_PLAINTEXT = MAX_FRAME - COUNTER_SIZE - TAG_SIZE
MAX_HANDSHAKE_FRAME = 512
"""Handshake messages are about 150 bytes; anything near this is not a peer."""
MAX_REJECTED = 16
_MAX_COUNTER = 2**64 - 1
_DIR_KEY_PERSON = b"p2pchat-dir-key"
_NONCE_PAD = bytes(nacl.bindings.crypto_aead_xchacha20poly1305_ietf_NPUBBYTES - COUNTER_SIZE)
_ROLES = (b"", b"I", b"R")


class PeerKeyMismatch(RemoteProtocolError):
    """The peer proved an identity other than the one we meant to reach.

    ``seen`` is authenticated (its signature verified), so the caller may show
    it to the user as "this address now belongs to someone else".
    """

    def __init__(self, expected: bytes, seen: bytes) -> None:
        super().__init__(f"expected peer {expected.hex()}, got {seen.hex()}")
        self.expected = expected
        self.seen = seen


@dataclass(frozen=True, slots=True)
class HandshakeComplete:
    peer_key: bytes


@dataclass(frozen=True, slots=True)
class PayloadReceived:
    payload: bytes


@dataclass(frozen=True, slots=True)
class FrameRejected:
    reason: str


@dataclass(frozen=True, slots=True)
class SessionFailed:
    error: RemoteProtocolError


SessionEvent = HandshakeComplete | PayloadReceived | FrameRejected | SessionFailed


def transcript(role: bytes, id_i: bytes, id_r: bytes, eph_i: bytes, eph_r: bytes) -> bytes:
    """The bytes each side signs (``role`` ``b"I"``/``b"R"``) or hashes (``b""``).

    Lengths are checked because unambiguity rests on every field being fixed size.
    """
    if role not in _ROLES:
        raise ValueError(f"unknown transcript role {role!r}")
    for name, value in (("id_i", id_i), ("id_r", id_r), ("eph_i", eph_i), ("eph_r", eph_r)):
        if len(value) != KEY_SIZE:
            raise ValueError(f"{name} must be {KEY_SIZE} bytes, got {len(value)}")
    return TRANSCRIPT_PREFIX + role + id_i + id_r + eph_i + eph_r


def _bind_key(kx_key: bytes, transcript_hash: bytes) -> bytes:
    """Tie a raw ``crypto_kx`` key to the handshake it came from.

    ``hashlib.blake2b`` is the same BLAKE2b as ``nacl.hash.blake2b`` (keyed, with
    personalisation); it is used for its precise type signature.
    """
    return hashlib.blake2b(
        kx_key, digest_size=KEY_SIZE, key=transcript_hash, person=_DIR_KEY_PERSON
    ).digest()


def _verify(peer_key: bytes, message: bytes, signature: bytes) -> None:
    try:
        nacl.signing.VerifyKey(peer_key).verify(message, signature)
    except (nacl.exceptions.CryptoError, ValueError, TypeError) as exc:
        raise RemoteProtocolError("peer signature does not verify") from exc


def _unpack_handshake(
    frame: bytes, expected_type: str, fields: dict[str, int], *, versioned: bool
) -> dict[str, bytes]:
    """Parse one handshake message, demanding exactly the fields of ``expected_type``.

    ``fields`` maps each binary field to its required length.  Unknown keys are
    refused too: nothing unsigned should be able to ride along in a handshake.
    """
    if len(frame) > MAX_HANDSHAKE_FRAME:
        raise RemoteProtocolError(f"handshake message of {len(frame)} bytes is too large")
    try:
        msg = msgpack.unpackb(
            frame,
            raw=False,
            strict_map_key=True,
            max_str_len=16,
            max_bin_len=SIGNATURE_SIZE,
            max_array_len=0,
            max_map_len=8,
            max_ext_len=0,
        )
    except Exception as exc:  # msgpack documents that "other exceptions can be raised"
        raise RemoteProtocolError("handshake message is not valid msgpack") from exc
    if not isinstance(msg, dict):
        raise RemoteProtocolError("handshake message is not a map")
    kind = msg.get("t")
    if kind != expected_type:
        raise RemoteProtocolError(f"expected handshake message {expected_type!r}, got {kind!r}")
    expected_keys = {"t", *fields}
    if versioned:
        expected_keys.add("v")
        version = msg.get("v")
        if type(version) is not int:
            raise RemoteProtocolError("handshake version missing or not an integer")
        if version != PROTOCOL_VERSION:
            raise RemoteProtocolError(f"unsupported handshake version {version}")
    if set(msg) != expected_keys:
        raise RemoteProtocolError(f"handshake message {expected_type!r} has wrong fields")
    result: dict[str, bytes] = {}
    for name, size in fields.items():
        value = msg[name]
        if not isinstance(value, bytes) or len(value) != size:
            raise RemoteProtocolError(f"handshake field {name!r} must be {size} bytes")
        result[name] = value
    return result


class _State(enum.Enum):
    IDLE = enum.auto()  # initiator before initiate()
    AWAIT_I1 = enum.auto()
    AWAIT_R1 = enum.auto()
    AWAIT_I2 = enum.auto()
    ESTABLISHED = enum.auto()
    FAILED = enum.auto()


# Looked up once: reading a member off the enum class costs about 0.15 µs (CPython
# 3.11), and ``established`` is asked for every frame sent.
_ESTABLISHED = _State.ESTABLISHED
_FAILED = _State.FAILED


class SecureSession:
    """One side of a session, driven by bytes in and bytes/events out.

    Nothing here blocks or does I/O, so the same object works under asyncio,
    in tests, or in a fuzzer.  Whatever the peer sends, ``receive_data`` never
    raises; misbehaviour surfaces as ``FrameRejected`` or ``SessionFailed``.
    """

    def __init__(
        self,
        *,
        initiator: bool,
        our_key: bytes,
        sign: Callable[[bytes], bytes],
        expected_peer: bytes | None = None,
        max_frame: int = MAX_FRAME,
    ) -> None:
        if len(our_key) != KEY_SIZE:
            raise ValueError(f"our_key must be {KEY_SIZE} bytes")
        if expected_peer is not None and len(expected_peer) != KEY_SIZE:
            raise ValueError(f"expected_peer must be {KEY_SIZE} bytes")
        if max_frame < MAX_HANDSHAKE_FRAME:
            raise ValueError(f"max_frame must be at least {MAX_HANDSHAKE_FRAME}")
        self._initiator = initiator
        self._our_key = bytes(our_key)
        self._sign = sign
        self._expected_peer = expected_peer
        self._max_frame = max_frame
        self._decoder = FrameDecoder(max_frame)
        self._state = _State.IDLE if initiator else _State.AWAIT_I1
        self._events: deque[SessionEvent] = deque()
        self._outgoing = bytearray()
        self._eph_public: bytes | None = None
        self._eph_secret: bytes | None = None
        self._claimed_peer: bytes | None = None
        self._peer_key: bytes | None = None
        self._pending_transcript: bytes | None = None
        self._send_key: bytes | None = None
        self._recv_key: bytes | None = None
        self._exporter: bytes | None = None
        self._send_counter = 0
        self._recv_counter = 0
        self._rejected = 0

    # -- public API -----------------------------------------------------------

    @property
    def initiator(self) -> bool:
        return self._initiator

    @property
    def established(self) -> bool:
        return self._state is _ESTABLISHED

    @property
    def failed(self) -> bool:
        return self._state is _FAILED

    @property
    def peer_key(self) -> bytes | None:
        """The peer's identity, only once it is authenticated (never a mere claim)."""
        return self._peer_key

    @property
    def max_plaintext(self) -> int:
        return self._max_frame - COUNTER_SIZE - TAG_SIZE

    def export_key(self, label: bytes, context: bytes = b"") -> bytes:
        """A 32-byte key both ends derive alike, bound to this session's handshake.

        Lets side channels (a file transfer over TCP, say) be sealed with keys that
        only the two authenticated parties of this session can know, and that die
        with it (forward secrecy carries over).  Distinct labels give independent keys.
        """
        if self._exporter is None or self._state is _State.FAILED:
            raise LocalProtocolError("no established session to export a key from")
        return hashlib.blake2b(
            label + b"\x00" + context,
            digest_size=KEY_SIZE,
            key=self._exporter,
            person=b"p2pchat-exp-key",
        ).digest()

    def initiate(self) -> None:
        if not self._initiator:
            raise LocalProtocolError("only the initiator starts the handshake")
        if self._state is not _State.IDLE:
            raise LocalProtocolError("handshake already started")
        self._eph_public, self._eph_secret = nacl.bindings.crypto_kx_keypair()
        self._queue_message(
            {"t": "i1", "v": PROTOCOL_VERSION, "id": self._our_key, "eph": self._eph_public}
        )
        self._state = _State.AWAIT_R1

    def receive_data(self, data: bytes) -> None:
        if self._state is _FAILED:
            return
        try:
            frames = self._decoder.feed(data)
        except RemoteProtocolError as exc:
            self._fail(exc)
            return
        for frame in frames:
            try:
                self._handle_frame(frame)
            except RemoteProtocolError as exc:
                self._fail(exc)
            if self.failed:
                return

    def next_event(self) -> SessionEvent | None:
        return self._events.popleft() if self._events else None

    def data_to_send(self) -> bytes:
        data = bytes(self._outgoing)
        self._outgoing.clear()
        return data

    def send(self, payload: bytes) -> None:
        if self._state is _FAILED:
            raise LocalProtocolError("session has failed")
        if self._state is not _ESTABLISHED or self._send_key is None:
            raise LocalProtocolError("session is not established")
        if len(payload) > self.max_plaintext:
            raise LocalProtocolError(
                f"payload of {len(payload)} bytes exceeds {self.max_plaintext} bytes"
            )
        if self._send_counter >= _MAX_COUNTER:
            raise LocalProtocolError("send counter exhausted; open a new session")
        self._send_counter += 1
        counter = self._send_counter.to_bytes(COUNTER_SIZE, "big")
        sealed = nacl.bindings.crypto_aead_xchacha20poly1305_ietf_encrypt(
            payload, counter, _NONCE_PAD + counter, self._send_key
        )
        self._outgoing += encode_frame(counter + sealed, max_frame=self._max_frame)

    # -- internals ------------------------------------------------------------

    def _queue_message(self, message: dict[str, object]) -> None:
        packed: bytes = msgpack.packb(message, use_bin_type=True)
        self._outgoing += encode_frame(packed, max_frame=self._max_frame)

    def _sign_checked(self, message: bytes) -> bytes:
        """Call the injected signer, refusing output the peer would reject anyway.

        A signer that does not match ``our_key`` is a local wiring bug; catching
        it here gives a clear error instead of a remote failure on the peer.
        """
        signature = self._sign(message)
        if not isinstance(signature, bytes) or len(signature) != SIGNATURE_SIZE:
            raise LocalProtocolError("sign must return a 64-byte detached signature")
        try:
            nacl.signing.VerifyKey(self._our_key).verify(message, signature)
        except nacl.exceptions.BadSignatureError as exc:
            raise LocalProtocolError("sign does not produce signatures for our_key") from exc
        return signature

    def _fail(self, error: RemoteProtocolError) -> None:
        self._state = _State.FAILED
        self._eph_secret = None
        self._send_key = None
        self._recv_key = None
        self._pending_transcript = None
        self._events.append(SessionFailed(error))

    def _handle_frame(self, frame: bytes) -> None:
        state = self._state
        if state is _ESTABLISHED:
            self._open(frame)
        elif state is _State.AWAIT_I1:
            self._on_i1(frame)
        elif state is _State.AWAIT_R1:
            self._on_r1(frame)
        elif state is _State.AWAIT_I2:
            self._on_i2(frame)
        else:
            raise RemoteProtocolError("peer sent data before the handshake started")

    def _check_expected(self, peer: bytes) -> None:
        if self._expected_peer is not None and peer != self._expected_peer:
            raise PeerKeyMismatch(self._expected_peer, peer)

    def _derive(self, kx_keys: tuple[bytes, bytes], bound_transcript: bytes) -> None:
        rx, tx = kx_keys
        th = hashlib.blake2b(bound_transcript, digest_size=KEY_SIZE).digest()
        self._recv_key = _bind_key(rx, th)
        self._send_key = _bind_key(tx, th)
        i2r, r2i = (tx, rx) if self._initiator else (rx, tx)
        self._exporter = hashlib.blake2b(
            i2r + r2i, digest_size=KEY_SIZE, key=th, person=b"p2pchat-export"
        ).digest()
        self._eph_secret = None

    def _on_i1(self, frame: bytes) -> None:
        msg = _unpack_handshake(frame, "i1", {"id": KEY_SIZE, "eph": KEY_SIZE}, versioned=True)
        id_i, eph_i = msg["id"], msg["eph"]
        eph_r, eph_r_secret = nacl.bindings.crypto_kx_keypair()
        try:
            kx = nacl.bindings.crypto_kx_server_session_keys(eph_r, eph_r_secret, eph_i)
        except nacl.exceptions.CryptoError as exc:
            raise RemoteProtocolError("initiator ephemeral key is unusable") from exc
        self._derive(kx, transcript(b"", id_i, self._our_key, eph_i, eph_r))
        signature = self._sign_checked(transcript(b"R", id_i, self._our_key, eph_i, eph_r))
        self._claimed_peer = id_i
        self._pending_transcript = transcript(b"I", id_i, self._our_key, eph_i, eph_r)
        self._queue_message(
            {
                "t": "r1",
                "v": PROTOCOL_VERSION,
                "id": self._our_key,
                "eph": eph_r,
                "sig": signature,
            }
        )
        self._state = _State.AWAIT_I2

    def _on_r1(self, frame: bytes) -> None:
        msg = _unpack_handshake(
            frame, "r1", {"id": KEY_SIZE, "eph": KEY_SIZE, "sig": SIGNATURE_SIZE}, versioned=True
        )
        id_r, eph_r = msg["id"], msg["eph"]
        assert self._eph_public is not None and self._eph_secret is not None
        eph_i = self._eph_public
        _verify(id_r, transcript(b"R", self._our_key, id_r, eph_i, eph_r), msg["sig"])
        self._check_expected(id_r)
        try:
            kx = nacl.bindings.crypto_kx_client_session_keys(eph_i, self._eph_secret, eph_r)
        except nacl.exceptions.CryptoError as exc:
            raise RemoteProtocolError("responder ephemeral key is unusable") from exc
        self._derive(kx, transcript(b"", self._our_key, id_r, eph_i, eph_r))
        signature = self._sign_checked(transcript(b"I", self._our_key, id_r, eph_i, eph_r))
        self._queue_message({"t": "i2", "sig": signature})
        self._establish(id_r)

    def _on_i2(self, frame: bytes) -> None:
        msg = _unpack_handshake(frame, "i2", {"sig": SIGNATURE_SIZE}, versioned=False)
        assert self._claimed_peer is not None and self._pending_transcript is not None
        _verify(self._claimed_peer, self._pending_transcript, msg["sig"])
        self._check_expected(self._claimed_peer)
        self._pending_transcript = None
        self._establish(self._claimed_peer)

    def _establish(self, peer: bytes) -> None:
        self._peer_key = peer
        self._state = _State.ESTABLISHED
        self._events.append(HandshakeComplete(peer))

    def _open(self, frame: bytes) -> None:
        if len(frame) < COUNTER_SIZE + TAG_SIZE:
            self._reject("frame too short to be sealed")
            return
        counter_bytes = frame[:COUNTER_SIZE]
        counter = int.from_bytes(counter_bytes, "big")
        if counter <= self._recv_counter:
            self._reject(f"replayed or reordered frame (counter {counter})")
            return
        assert self._recv_key is not None
        try:
            payload = nacl.bindings.crypto_aead_xchacha20poly1305_ietf_decrypt(
                frame[COUNTER_SIZE:], counter_bytes, _NONCE_PAD + counter_bytes, self._recv_key
            )
        except nacl.exceptions.CryptoError:
            self._reject("frame failed authentication")
            return
        if counter != self._recv_counter + 1:
            # Authentic, so the peer really sent it: the frames before it were lost.
            raise RemoteProtocolError(
                f"frames {self._recv_counter + 1}..{counter - 1} never arrived (counter skipped)"
            )
        self._recv_counter = counter
        self._events.append(PayloadReceived(payload))

    def _reject(self, reason: str) -> None:
        self._rejected += 1
        self._events.append(FrameRejected(reason))
        if self._rejected >= MAX_REJECTED:
            raise RemoteProtocolError(f"{self._rejected} frames rejected; closing the session")
