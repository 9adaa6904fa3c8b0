"""Long-term identity: the Ed25519 key pair that *is* a user, and the text forms of it.

A peer is addressed by nothing but its public key, so everything a human copies, pastes,
reads aloud or compares (peer IDs, invites, fingerprints, safety numbers) is derived here
from that key. Peer IDs use z-base-32 exactly as pkarr/iroh do, so the same key prints the
same ID in those tools.

The secret seed lives in a small JSON key file, either in the clear (protected only by its
0600 mode) or sealed under a passphrase with Argon2id + XSalsa20-Poly1305.
"""

from __future__ import annotations

import errno
import functools
import hashlib
import ipaddress
import json
import logging
import os
import re
import secrets
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import msgpack
import nacl.bindings
import nacl.exceptions
import nacl.pwhash.argon2id
import nacl.secret
import nacl.signing
import nacl.utils

from p2pchat.names import InvalidName, normalise_name

__all__ = [
    "INVITE_PREFIX",
    "MAX_INVITE_CHARS",
    "Identity",
    "IdentityError",
    "IdentityMissing",
    "InvalidInvite",
    "InvalidPeerId",
    "Invite",
    "PassphraseRequired",
    "WrongPassphrase",
    "create_identity",
    "format_address",
    "is_peer_id",
    "is_sealed",
    "key_file_bytes",
    "key_from_peer_id",
    "load_identity",
    "load_or_create_identity",
    "parse_address",
    "parse_contact_ref",
    "peer_id_from_key",
    "safety_number",
    "verify_signature",
    "zbase32_decode",
    "zbase32_encode",
]

logger = logging.getLogger(__name__)

KEY_SIZE: Final = 32
SIGNATURE_SIZE: Final = 64
PEER_ID_LENGTH: Final = 52

# --------------------------------------------------------------------------- errors


class IdentityError(Exception):
    """The local identity could not be loaded or stored."""


class IdentityMissing(IdentityError):
    """There is no key file and the caller did not allow creating one."""


class PassphraseRequired(IdentityError):
    """The key file is sealed; the caller has to ask the user for the passphrase."""


class WrongPassphrase(IdentityError):
    """The passphrase did not open the sealed key file (or the sealed box is damaged)."""


class InvalidPeerId(ValueError):
    """Text that was supposed to name a peer does not decode to a usable public key."""


class InvalidInvite(ValueError):
    """An invite string is malformed; it came from outside, so it is never trusted."""


# --------------------------------------------------------------------------- z-base-32

_ZB32_ALPHABET: Final = "ybndrfg8ejkmcpqxot1uwisza345h769"
_ZB32_INDEX: Final = {ch: i for i, ch in enumerate(_ZB32_ALPHABET)}


def zbase32_encode(data: bytes) -> str:
    """Encode bytes as unpadded z-base-32, most significant bit first.

    The final partial 5-bit group is filled with zero bits, which is what pkarr's and iroh's
    ``z32`` implementation does; a 32-byte key therefore becomes 52 characters.
    """
    out: list[str] = []
    for start in range(0, len(data), 5):
        chunk = data[start : start + 5]
        nbits = len(chunk) * 8
        nchars = -(-nbits // 5)
        value = int.from_bytes(chunk, "big") << (nchars * 5 - nbits)
        for shift in range((nchars - 1) * 5, -1, -5):
            out.append(_ZB32_ALPHABET[(value >> shift) & 31])
    return "".join(out)


def zbase32_decode(text: str) -> bytes:
    """Decode unpadded z-base-32, accepting either case.

    Only the canonical spelling of each byte string is accepted: a length that no byte
    string encodes to, or non-zero filler bits in the last character, raise ``ValueError``.
    Otherwise two different strings would name the same key, and peer IDs compared as text
    would disagree with peer IDs compared as keys.
    """
    if not text.isascii():
        # str.lower() maps some non-ASCII letters onto ASCII ones (KELVIN SIGN -> "k").
        raise ValueError("z-base-32 text must be ASCII")
    text = text.lower()
    out = bytearray()
    for start in range(0, len(text), 8):
        chunk = text[start : start + 8]
        value = 0
        for ch in chunk:
            digit = _ZB32_INDEX.get(ch)
            if digit is None:
                raise ValueError(f"invalid z-base-32 character {ch!r}")
            value = (value << 5) | digit
        nbits = len(chunk) * 5
        nbytes = nbits // 8
        spare = nbits - nbytes * 8
        if spare >= 5:
            raise ValueError(f"invalid z-base-32 length {len(text)}")
        if value & ((1 << spare) - 1):
            raise ValueError("non-canonical z-base-32: trailing bits are not zero")
        out += (value >> spare).to_bytes(nbytes, "big")
    return bytes(out)


# --------------------------------------------------------------------------- peer IDs


def _is_valid_point(key: bytes) -> bool:
    # VerifyKey only checks the length, so ask libsodium directly. is_valid_point also
    # rejects small-order points and non-canonical encodings, which no honest key uses.
    if nacl.bindings.has_crypto_core_ed25519:
        return bool(nacl.bindings.crypto_core_ed25519_is_valid_point(key))
    try:
        nacl.bindings.crypto_sign_ed25519_pk_to_curve25519(key)
    except nacl.exceptions.CryptoError:
        return False
    return True


def peer_id_from_key(public_key: bytes) -> str:
    """Spell an Ed25519 public key as the 52-character peer ID users share."""
    if not isinstance(public_key, bytes) or len(public_key) != KEY_SIZE:
        raise ValueError(f"an Ed25519 public key is {KEY_SIZE} bytes")
    return zbase32_encode(public_key)


def key_from_peer_id(peer_id: str) -> bytes:
    """Turn a peer ID typed or pasted by a user back into a public key.

    All whitespace is dropped and case is ignored, so IDs that were wrapped or grouped when
    pasted still work. The result is guaranteed to be a usable Ed25519 point, so a typo is
    reported here rather than as a handshake that can never succeed.
    """
    if not isinstance(peer_id, str):
        raise InvalidPeerId("a peer ID must be text")
    cleaned = "".join(peer_id.split()).lower()
    if len(cleaned) != PEER_ID_LENGTH:
        raise InvalidPeerId(f"a peer ID is {PEER_ID_LENGTH} characters long, got {len(cleaned)}")
    try:
        key = zbase32_decode(cleaned)
    except ValueError as exc:
        raise InvalidPeerId(f"not a valid peer ID: {exc}") from None
    if len(key) != KEY_SIZE or not _is_valid_point(key):
        raise InvalidPeerId("not a valid peer ID: it does not encode an Ed25519 public key")
    return key


def is_peer_id(text: str) -> bool:
    """Tell a bare peer ID apart from other input without raising."""
    try:
        key_from_peer_id(text)
    except InvalidPeerId:
        return False
    return True


def verify_signature(public_key: bytes, message: bytes, signature: bytes) -> bool:
    """Check a detached Ed25519 signature.

    Inputs usually come straight off the wire, so any malformed value is simply a failed
    verification rather than an exception the caller must remember to catch.
    """
    try:
        if len(public_key) != KEY_SIZE or len(signature) != SIGNATURE_SIZE:
            return False
        nacl.signing.VerifyKey(bytes(public_key)).verify(bytes(message), bytes(signature))
    except (TypeError, ValueError, nacl.exceptions.CryptoError):
        return False
    return True


# --------------------------------------------------------------------------- identity


@dataclass(frozen=True, slots=True)
class Identity:
    """The local user's long-term signing key.

    Only the 32-byte seed is stored; everything else is derived on demand so there is a
    single source of truth. The seed is kept out of ``repr`` so it cannot leak into logs
    or tracebacks.
    """

    seed: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.seed, bytes) or len(self.seed) != KEY_SIZE:
            raise ValueError(f"an Ed25519 seed is {KEY_SIZE} bytes")

    def __repr__(self) -> str:
        return f"Identity(peer_id={self.peer_id!r})"

    @classmethod
    def generate(cls) -> Identity:
        return cls(nacl.utils.random(KEY_SIZE))

    @property
    def signing_key(self) -> nacl.signing.SigningKey:
        return nacl.signing.SigningKey(self.seed)

    @property
    def public_key(self) -> bytes:
        return bytes(self.signing_key.verify_key)

    @property
    def peer_id(self) -> str:
        return peer_id_from_key(self.public_key)

    @property
    def fingerprint(self) -> str:
        """Short form of the public key for a quick glance, e.g. ``"3F2A 9C01 ... 77BE"``.

        It is the first 16 bytes of BLAKE2b-256(public key), written as 8 groups of 4
        upper-case hex digits separated by single spaces (39 characters). It is meant for
        recognising a key, not for verifying one: use :func:`safety_number` for that.
        """
        return _fingerprint(self.public_key)

    def sign(self, message: bytes) -> bytes:
        """Return a 64-byte detached signature."""
        return bytes(self.signing_key.sign(message).signature)


def key_fingerprint(public_key: bytes) -> str:
    """The short, readable form of any Ed25519 public key (ours or a contact's)."""
    return _fingerprint(public_key)


def _fingerprint(public_key: bytes) -> str:
    digest = hashlib.blake2b(public_key, digest_size=32).digest()[:16]
    text = digest.hex().upper()
    return " ".join(text[i : i + 4] for i in range(0, len(text), 4))


# --------------------------------------------------------------------------- key file

_FILE_VERSION: Final = 1
_KIND_PLAIN: Final = "plain"
_KIND_SEALED: Final = "argon2id-secretbox"
_MAX_KEY_FILE_BYTES: Final = 64 * 1024
_SALT_SIZE: Final = nacl.pwhash.argon2id.SALTBYTES
_BOX_SIZE: Final = nacl.secret.SecretBox.NONCE_SIZE + nacl.secret.SecretBox.MACBYTES + KEY_SIZE

# Upper bounds protect against a damaged file asking for terabytes of memory.
_OPSLIMIT_RANGE: Final = (
    nacl.pwhash.argon2id.OPSLIMIT_MIN,
    nacl.pwhash.argon2id.OPSLIMIT_SENSITIVE,
)
_MEMLIMIT_RANGE: Final = (
    nacl.pwhash.argon2id.MEMLIMIT_MIN,
    nacl.pwhash.argon2id.MEMLIMIT_SENSITIVE,
)


KDF_COST: tuple[int, int] = (
    nacl.pwhash.argon2id.OPSLIMIT_MODERATE,
    nacl.pwhash.argon2id.MEMLIMIT_MODERATE,
)
"""Argon2id (opslimit, memlimit) for newly sealed key files.  Nothing in the package
lowers it, and no environment variable or setting reaches it: only the test suite
replaces it, in its own processes (``tests/conftest.py``, ``tests/fastkdf/``).  A key
file records its own cost, so loading never depends on this."""


def _kdf_limits() -> tuple[int, int]:
    # Read at call time, so a test that replaces KDF_COST affects keys made after it.
    return KDF_COST


def _passphrase_key(passphrase: str, salt: bytes, opslimit: int, memlimit: int) -> bytes:
    # NFC so the same passphrase typed on systems with different input methods matches.
    password = unicodedata.normalize("NFC", passphrase).encode("utf-8")
    return nacl.pwhash.argon2id.kdf(
        nacl.secret.SecretBox.KEY_SIZE, password, salt, opslimit=opslimit, memlimit=memlimit
    )


def _encode_key_file(identity: Identity, passphrase: str | None) -> bytes:
    doc: dict[str, Any] = {"version": _FILE_VERSION}
    if passphrase is None:
        doc |= {
            "kind": _KIND_PLAIN,
            "public_key": identity.public_key.hex(),
            "seed": identity.seed.hex(),
        }
    else:
        opslimit, memlimit = _kdf_limits()
        salt = nacl.utils.random(_SALT_SIZE)
        box = nacl.secret.SecretBox(_passphrase_key(passphrase, salt, opslimit, memlimit))
        doc |= {
            "kind": _KIND_SEALED,
            "public_key": identity.public_key.hex(),
            "salt": salt.hex(),
            "opslimit": opslimit,
            "memlimit": memlimit,
            "box": bytes(box.encrypt(identity.seed)).hex(),
        }
    return (json.dumps(doc, indent=2) + "\n").encode("utf-8")


def _corrupt(path: Path, why: str) -> IdentityError:
    return IdentityError(f"identity file {path} is corrupt: {why}")


def _hex_field(doc: dict[str, Any], name: str, size: int, path: Path) -> bytes:
    value = doc.get(name)
    if not isinstance(value, str):
        raise _corrupt(path, f"{name!r} is missing or not a string")
    try:
        raw = bytes.fromhex(value)
    except ValueError:
        raise _corrupt(path, f"{name!r} is not hex") from None
    if len(raw) != size:
        raise _corrupt(path, f"{name!r} should be {size} bytes, found {len(raw)}")
    return raw


def _int_field(doc: dict[str, Any], name: str, bounds: tuple[int, int], path: Path) -> int:
    value = doc.get(name)
    if type(value) is not int:
        raise _corrupt(path, f"{name!r} is missing or not an integer")
    low, high = bounds
    if not low <= value <= high:
        raise _corrupt(path, f"{name!r} = {value} is outside {low}..{high}")
    return value


def _decode_key_file(data: bytes, path: Path, passphrase: str | None) -> Identity:
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError):
        raise _corrupt(path, "not valid JSON") from None
    if not isinstance(doc, dict):
        raise _corrupt(path, "expected a JSON object")
    version = doc.get("version")
    if type(version) is not int:
        raise _corrupt(path, "'version' is missing")
    if version != _FILE_VERSION:
        raise IdentityError(
            f"identity file {path} has format version {version}; this build reads "
            f"version {_FILE_VERSION} (was it written by a newer p2pchat?)"
        )
    public_key = _hex_field(doc, "public_key", KEY_SIZE, path)
    kind = doc.get("kind")
    if kind == _KIND_PLAIN:
        seed = _hex_field(doc, "seed", KEY_SIZE, path)
    elif kind == _KIND_SEALED:
        salt = _hex_field(doc, "salt", _SALT_SIZE, path)
        opslimit = _int_field(doc, "opslimit", _OPSLIMIT_RANGE, path)
        memlimit = _int_field(doc, "memlimit", _MEMLIMIT_RANGE, path)
        sealed = _hex_field(doc, "box", _BOX_SIZE, path)
        if passphrase is None:
            raise PassphraseRequired(f"identity file {path} is protected by a passphrase")
        box = nacl.secret.SecretBox(_passphrase_key(passphrase, salt, opslimit, memlimit))
        try:
            seed = box.decrypt(sealed)
        except nacl.exceptions.CryptoError:
            raise WrongPassphrase(f"wrong passphrase for identity file {path}") from None
    else:
        raise _corrupt(path, f"unknown kind {kind!r}")
    identity = Identity(seed)
    if identity.public_key != public_key:
        raise _corrupt(path, "the stored public key does not match the secret key")
    return identity


def _fsync_dir(folder: Path) -> None:
    # Makes the new directory entry durable; not every platform lets a folder be opened.
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_private_file(path: Path, data: bytes) -> None:
    """Create ``path`` owner-only (it must not exist), write all of ``data``, fsync it."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    fd = os.open(path, flags, 0o600)
    try:
        if hasattr(os, "fchmod"):
            os.fchmod(fd, 0o600)  # os.open's mode is filtered through the umask
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_new_file(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that it appears complete or not at all, never clobbering.

    The content goes to a private temp file first, then a hard link publishes it under the
    final name: unlike rename, link fails if the name is taken, so two processes creating an
    identity at once cannot silently replace each other's key. If the filesystem has no hard
    links we fall back to an existence check plus rename, which has a tiny race window.
    """
    folder = path.parent
    if not folder.exists():
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(folder, 0o700)
    tmp = folder / f".{path.name}.{secrets.token_hex(8)}.tmp"
    try:
        write_private_file(tmp, data)
        try:
            os.link(tmp, path)
        except FileExistsError:
            raise
        except (OSError, NotImplementedError):
            if os.path.lexists(path):
                raise FileExistsError(errno.EEXIST, "file already exists", str(path)) from None
            os.rename(tmp, path)
        _fsync_dir(folder)
    finally:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass


def _read_key_file(path: Path) -> bytes:
    try:
        with open(path, "rb") as fh:
            if os.name == "posix":
                mode = os.fstat(fh.fileno()).st_mode & 0o777
                if mode & 0o077:
                    logger.warning(
                        "identity file %s was readable by others (mode %o); setting it to 0600",
                        path,
                        mode,
                    )
                    try:
                        os.fchmod(fh.fileno(), 0o600)
                    except OSError as exc:
                        logger.warning("could not tighten permissions of %s: %s", path, exc)
            data = fh.read(_MAX_KEY_FILE_BYTES + 1)
    except FileNotFoundError:
        raise IdentityMissing(f"no identity file at {path}") from None
    except OSError as exc:
        raise IdentityError(f"cannot read identity file {path}: {exc.strerror or exc}") from exc
    if len(data) > _MAX_KEY_FILE_BYTES:
        raise _corrupt(path, "file is far too large to be a key file")
    return data


def load_identity(path: Path, passphrase: str | None = None) -> Identity:
    """Load the identity stored at ``path``.

    A passphrase given for an unsealed file is ignored. Decryption failure is reported as
    :class:`WrongPassphrase`; anything structurally wrong with the file is an
    :class:`IdentityError` naming the file and the problem.
    """
    path = Path(path)
    return _decode_key_file(_read_key_file(path), path, passphrase)


def create_identity(path: Path, passphrase: str | None = None) -> Identity:
    """Generate a new identity and store it at ``path``, sealed if a passphrase is given.

    An existing file is never replaced (``FileExistsError``): losing the old seed would
    silently turn the user into a different peer for all their contacts. Any string,
    including the empty one, is used as a passphrase; pass ``None`` for an unsealed file.
    """
    path = Path(path)
    if os.path.lexists(path):
        raise FileExistsError(errno.EEXIST, "identity file already exists", str(path))
    identity = Identity.generate()
    _write_new_file(path, _encode_key_file(identity, passphrase))
    return identity


def is_sealed(path: Path) -> bool:
    """Whether the key file at ``path`` is protected by a passphrase (nothing is unsealed)."""
    path = Path(path)
    try:
        doc = json.loads(_read_key_file(path))
    except (ValueError, RecursionError):
        raise _corrupt(path, "not valid JSON") from None
    kind = doc.get("kind") if isinstance(doc, dict) else None
    if kind not in (_KIND_PLAIN, _KIND_SEALED):
        raise _corrupt(path, f"unknown kind {kind!r}")
    return bool(kind == _KIND_SEALED)


def key_file_bytes(identity: Identity, passphrase: str | None) -> bytes:
    """The key file for ``identity``, sealed under ``passphrase`` (None: in the clear).

    For a passphrase change, which writes the file itself (``p2pchat.atrest``).
    """
    return _encode_key_file(identity, passphrase)


def load_or_create_identity(
    path: Path, passphrase: str | None = None, *, create: bool = True
) -> tuple[Identity, bool]:
    """Load the identity at ``path``, creating it on first run when ``create`` is true.

    Returns ``(identity, created)`` so the caller can greet a new user. If another process
    creates the file between our check and our write, its identity is loaded instead.
    """
    path = Path(path)
    try:
        return load_identity(path, passphrase), False
    except IdentityMissing:
        if not create:
            raise
    try:
        return create_identity(path, passphrase), True
    except FileExistsError:
        return load_identity(path, passphrase), False


# --------------------------------------------------------------------------- safety numbers

_SAFETY_PERSON: Final = b"p2pchat-safety"
_SAFETY_ITERATIONS: Final = 1024


def _safety_half(key: bytes) -> str:
    digest = b""
    for _ in range(_SAFETY_ITERATIONS):
        digest = hashlib.blake2b(digest + key, person=_SAFETY_PERSON).digest()
    return "".join(
        f"{int.from_bytes(digest[i : i + 5], 'big') % 100000:05d}" for i in range(0, 30, 5)
    )


def safety_number(key_a: bytes, key_b: bytes) -> str:
    """Number two users compare out of band to rule out a man in the middle.

    Modelled on Signal's safety numbers. For each public key, ``d = b""`` and then, 1024
    times, ``d = BLAKE2b-512(d || key, person=b"p2pchat-safety")``. The first 30 bytes of
    ``d`` are read as six 5-byte big-endian integers, each reduced mod 100000 and written as
    5 zero-padded digits, giving 30 digits per key. The two 30-digit halves are joined
    smaller first, so both users see the same 60 digits whichever side computes it. The
    result is shown as 12 groups of 5 digits separated by single spaces. Iterating makes it
    costlier to grind for a key whose number resembles someone else's.
    """
    for key in (key_a, key_b):
        if not isinstance(key, bytes) or len(key) != KEY_SIZE:
            raise ValueError(f"an Ed25519 public key is {KEY_SIZE} bytes")
    digits = "".join(sorted((_safety_half(key_a), _safety_half(key_b))))
    return " ".join(digits[i : i + 5] for i in range(0, len(digits), 5))


# --------------------------------------------------------------------------- addresses

_HOST_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?", re.ASCII)
_SCOPE_ID = re.compile(r"[A-Za-z0-9_.-]{1,32}", re.ASCII)
_MAX_HOSTNAME: Final = 253


def _parse_port(text: str) -> int:
    # int() would also take "+5", " 5", "1_0" and non-ASCII digits.
    if not (text.isascii() and text.isdigit()) or len(text) > 5:
        raise ValueError(f"invalid port {text!r}")
    port = int(text)
    if not 1 <= port <= 65535:
        raise ValueError(f"port {port} is outside 1..65535")
    return port


def _normalize_host(host: str) -> str:
    if ":" in host:
        _, percent, scope = host.partition("%")
        if percent and not _SCOPE_ID.fullmatch(scope):
            # ipaddress accepts any text as a zone; keep it to interface-name characters.
            raise ValueError(f"invalid IPv6 zone in {host!r}")
        try:
            return str(ipaddress.IPv6Address(host))
        except ValueError:
            raise ValueError(f"invalid IPv6 address {host!r}") from None
    try:
        return str(ipaddress.IPv4Address(host))
    except ValueError:
        pass
    name = host.lower()
    if name.endswith("."):
        name = name[:-1]
    if not name.isascii() or not 0 < len(name) <= _MAX_HOSTNAME:
        raise ValueError(f"invalid host name {host!r}")
    labels = name.split(".")
    if not all(_HOST_LABEL.fullmatch(label) for label in labels):
        raise ValueError(f"invalid host name {host!r}")
    if labels[-1].isdigit():
        # "10.1" or "1.2.3.4.5" would be read as (legacy) IPv4 by resolvers.
        raise ValueError(f"invalid IPv4 address {host!r}")
    return name


def parse_address(text: str) -> tuple[str, int]:
    """Split ``"host:port"`` (IPv6 in brackets) into a normalized host and a port.

    Hosts are IPv4/IPv6 literals or DNS names; IP literals are written in their canonical
    form and names lower-cased, so equal addresses compare equal as text.
    """
    if not isinstance(text, str):
        raise ValueError("an address must be text")
    return _parse_address(text)


@functools.lru_cache(maxsize=1024)
def _parse_address(text: str) -> tuple[str, int]:
    """``parse_address`` for text, remembered: the dial loop parses every contact's
    addresses each second, and ``ipaddress`` is slow (a bounded cache; what fails to
    parse is not kept)."""
    text = text.strip()
    if text.startswith("["):
        host, sep, port_text = text[1:].partition("]:")
        if not sep or ":" not in host:
            raise ValueError(f"invalid address {text!r}; expected [ipv6]:port")
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep or not host:
            raise ValueError(f"invalid address {text!r}; expected host:port")
        if ":" in host:
            raise ValueError(f"invalid address {text!r}; write IPv6 as [address]:port")
    return _normalize_host(host), _parse_port(port_text)


def format_address(host: str, port: int) -> str:
    """Inverse of :func:`parse_address`; raises ``ValueError`` for what it would reject."""
    if type(port) is not int or not 1 <= port <= 65535:
        raise ValueError(f"port {port!r} is outside 1..65535")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    host = _normalize_host(host)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# --------------------------------------------------------------------------- invites

INVITE_PREFIX: Final = "p2pchat:"
MAX_INVITE_CHARS: Final = 2048
_MAX_ADDRESSES: Final = 16
_MAX_HINTS: Final = 4
_MAX_TOKEN: Final = 64
_TOKEN_RE = re.compile(r"[A-Za-z0-9_-]{1,64}", re.ASCII)


def _check_name(name: str) -> str:
    """The invite's suggested name under the one name rule (``p2pchat.names``)."""
    try:
        return normalise_name(name)
    except InvalidName as exc:
        raise InvalidInvite(f"invite name refused: {exc}") from None


@dataclass(frozen=True, slots=True)
class Invite:
    """What one user hands another out of band so the second can reach and trust the first.

    Construction validates and normalizes every field (peer ID canonical, addresses as
    :func:`parse_address` writes them), so an ``Invite`` that exists can always be encoded
    and decoded again. The encoded form is ``"p2pchat:"`` followed by the z-base-32 of a
    msgpack map ``{"v": 1, "id": <32-byte key>, "a": [...], "t": token, "n": name,
    "r": [...], "b": [...]}`` where absent fields are left out; it is case-insensitive and
    survives copy-paste.

    ``relays`` (``PEER_ID@HOST:PORT``) are rendezvous and relay nodes the inviter is
    reachable through, and ``bootstrap`` (``HOST:PORT``) DHT nodes of the inviter's
    swarm: a group's always-on node, typically (``docs/self-hosting.md``).  The invitee
    may use both for itself too.
    """

    peer_id: str
    addresses: tuple[str, ...] = ()
    token: str | None = None
    name: str | None = None
    relays: tuple[str, ...] = ()
    bootstrap: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "peer_id", peer_id_from_key(key_from_peer_id(self.peer_id)))
        if isinstance(self.addresses, str):
            raise InvalidInvite("addresses must be a sequence of 'host:port' strings")
        addresses = tuple(self.addresses)
        if len(addresses) > _MAX_ADDRESSES:
            raise InvalidInvite(f"an invite carries at most {_MAX_ADDRESSES} addresses")
        normalized: list[str] = []
        for address in addresses:
            if not isinstance(address, str):
                raise InvalidInvite("addresses must be 'host:port' strings")
            try:
                normalized.append(format_address(*parse_address(address)))
            except ValueError as exc:
                raise InvalidInvite(f"bad address in invite: {exc}") from None
        object.__setattr__(self, "addresses", tuple(normalized))
        object.__setattr__(self, "relays", _hints(self.relays, "relays", relay=True))
        object.__setattr__(self, "bootstrap", _hints(self.bootstrap, "bootstrap", relay=False))
        if self.token is not None and not (
            isinstance(self.token, str) and _TOKEN_RE.fullmatch(self.token)
        ):
            raise InvalidInvite(
                f"token must be 1..{_MAX_TOKEN} characters from A-Z a-z 0-9 '-' '_'"
            )
        if self.name is not None:
            if not isinstance(self.name, str):
                raise InvalidInvite("name must be text")
            object.__setattr__(self, "name", _check_name(self.name))
        if len(self.encode()) > MAX_INVITE_CHARS:
            raise InvalidInvite(f"invite would exceed {MAX_INVITE_CHARS} characters")

    @property
    def public_key(self) -> bytes:
        return key_from_peer_id(self.peer_id)

    def encode(self) -> str:
        payload: dict[str, Any] = {"v": 1, "id": self.public_key}
        if self.addresses:
            payload["a"] = list(self.addresses)
        if self.token is not None:
            payload["t"] = self.token
        if self.name is not None:
            payload["n"] = self.name
        if self.relays:
            payload["r"] = list(self.relays)
        if self.bootstrap:
            payload["b"] = list(self.bootstrap)
        packed: bytes = msgpack.packb(payload, use_bin_type=True)
        return INVITE_PREFIX + zbase32_encode(packed)

    @classmethod
    def decode(cls, text: str) -> Invite:
        """Parse an invite from untrusted text; every failure is :class:`InvalidInvite`.

        Surrounding and embedded whitespace is ignored (invites get wrapped when pasted).
        Map keys this version does not know are ignored so later versions can add
        optional fields without breaking older readers.
        """
        if not isinstance(text, str):
            raise InvalidInvite("an invite must be text")
        if len(text) > MAX_INVITE_CHARS:
            text = text.strip()
            if len(text) > MAX_INVITE_CHARS:
                raise InvalidInvite(f"invite is longer than {MAX_INVITE_CHARS} characters")
        text = "".join(text.split())
        if text[: len(INVITE_PREFIX)].lower() != INVITE_PREFIX:
            raise InvalidInvite(f"an invite starts with {INVITE_PREFIX!r}")
        try:
            packed = zbase32_decode(text[len(INVITE_PREFIX) :])
        except ValueError as exc:
            raise InvalidInvite(f"invite is garbled: {exc}") from None
        try:
            payload = msgpack.unpackb(packed, raw=False, strict_map_key=True)
        except Exception:  # msgpack signals bad input with many unrelated exception types
            raise InvalidInvite("invite is garbled: payload is not valid msgpack") from None
        if not isinstance(payload, dict):
            raise InvalidInvite("invite payload is not a map")
        version = payload.get("v")
        if type(version) is not int or version != 1:
            raise InvalidInvite(f"unsupported invite version {version!r}")
        key = payload.get("id")
        if not isinstance(key, bytes) or len(key) != KEY_SIZE:
            raise InvalidInvite("invite does not carry a 32-byte public key")
        addresses = payload.get("a", [])
        if not isinstance(addresses, list):
            raise InvalidInvite("invite addresses are not a list")
        if len(addresses) > _MAX_ADDRESSES:
            raise InvalidInvite(f"an invite carries at most {_MAX_ADDRESSES} addresses")
        token = payload.get("t")
        name = payload.get("n")
        relays, bootstrap = payload.get("r", []), payload.get("b", [])
        if not isinstance(relays, list) or not isinstance(bootstrap, list):
            raise InvalidInvite("invite hints are not lists")
        try:
            return cls(
                peer_id_from_key(key),
                tuple(addresses),
                token,
                name,
                tuple(relays),
                tuple(bootstrap),
            )
        except InvalidPeerId:
            raise InvalidInvite("invite key is not a valid Ed25519 public key") from None
        except InvalidInvite:
            raise
        except ValueError as exc:
            raise InvalidInvite(f"invalid invite: {exc}") from None


def _hints(values: object, what: str, *, relay: bool) -> tuple[str, ...]:
    """Validate and normalise an invite's relay (``PEER_ID@HOST:PORT``) or bootstrap
    (``HOST:PORT``) hints: at most four, each well formed."""
    if isinstance(values, str) or not isinstance(values, tuple | list):
        raise InvalidInvite(f"{what} must be a sequence of strings")
    if len(values) > _MAX_HINTS:
        raise InvalidInvite(f"an invite carries at most {_MAX_HINTS} {what}")
    out: list[str] = []
    for value in values:
        if not isinstance(value, str):
            raise InvalidInvite(f"{what} must be strings")
        peer, sep, address = value.rpartition("@")
        try:
            if relay != bool(sep):
                raise ValueError("PEER_ID@HOST:PORT" if relay else "HOST:PORT")
            normal = format_address(*parse_address(address))
            if relay:
                normal = f"{peer_id_from_key(key_from_peer_id(peer))}@{normal}"
        except ValueError as exc:
            raise InvalidInvite(f"bad {what} entry in invite {value!r}: {exc}") from None
        out.append(normal)
    return tuple(dict.fromkeys(out))


def parse_contact_ref(text: str) -> Invite:
    """Accept whatever a user pastes to add a contact: an invite or a bare peer ID."""
    if not isinstance(text, str):
        raise InvalidInvite("expected an invite or a peer ID")
    stripped = text.strip()
    if stripped[: len(INVITE_PREFIX)].lower() == INVITE_PREFIX:
        return Invite.decode(stripped)
    try:
        return Invite(peer_id_from_key(key_from_peer_id(stripped)))
    except InvalidPeerId as exc:
        raise InvalidPeerId(
            f"expected an invite ({INVITE_PREFIX}...) or a {PEER_ID_LENGTH}-character "
            f"peer ID: {exc}"
        ) from None
