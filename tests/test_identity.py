from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import nacl.pwhash.argon2id
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import p2pchat.identity as identity_module
from p2pchat.identity import (
    MAX_INVITE_CHARS,
    Identity,
    IdentityError,
    IdentityMissing,
    InvalidInvite,
    InvalidPeerId,
    Invite,
    PassphraseRequired,
    WrongPassphrase,
    create_identity,
    format_address,
    is_peer_id,
    key_from_peer_id,
    load_identity,
    load_or_create_identity,
    parse_address,
    parse_contact_ref,
    peer_id_from_key,
    safety_number,
    verify_signature,
    zbase32_decode,
    zbase32_encode,
)

SEED = bytes(range(32))
ALPHABET = "ybndrfg8ejkmcpqxot1uwisza345h769"


@pytest.fixture
def fast_kdf(monkeypatch: pytest.MonkeyPatch) -> None:
    fast = (nacl.pwhash.argon2id.OPSLIMIT_MIN, nacl.pwhash.argon2id.MEMLIMIT_MIN)
    monkeypatch.setattr(identity_module, "KDF_COST", fast)


@pytest.fixture
def umask_zero() -> Iterator[None]:
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# ----------------------------------------------------------------- z-base-32


@pytest.mark.parametrize(
    ("raw", "text"),
    [
        (b"", ""),
        (b"\x00", "yy"),
        (b"\x80", "oy"),
        (b"\xf0\xbf\xc7", "6n9hq"),
        (b"\xd4\x7a\x04", "4t7ye"),
        (b"\xf8\x3e\x7f\x83\xe7", "9y989y98"),
        (b"\x00" * 32, "y" * 52),
        (b"\xff" * 5, "9" * 8),
    ],
)
def test_zbase32_known_vectors(raw: bytes, text: str) -> None:
    assert zbase32_encode(raw) == text
    assert zbase32_decode(text) == raw
    assert zbase32_decode(text.upper()) == raw


@given(st.binary(max_size=200))
def test_zbase32_round_trip(data: bytes) -> None:
    text = zbase32_encode(data)
    assert len(text) == -(-len(data) * 8 // 5)
    assert set(text) <= set(ALPHABET)
    assert zbase32_decode(text) == data


@given(st.text(alphabet=ALPHABET, max_size=60))
def test_zbase32_decode_accepts_only_canonical_text(text: str) -> None:
    try:
        data = zbase32_decode(text)
    except ValueError:
        return
    assert zbase32_encode(data) == text


@pytest.mark.parametrize(
    "text",
    [
        "y",  # 5 bits: not a whole byte
        "yyy",  # 15 bits: one byte plus a whole spare character
        "yyyyyy",
        "yb",  # last spare bit set
        "y" * 51 + "b",  # peer-ID length with a trailing bit set
        "yy0",  # '0' is not in the alphabet
        "yyl",
        "yy v",
        "yy=",
        "\u212ay",  # KELVIN SIGN lower-cases to ASCII "k"
        "éé",
    ],
)
def test_zbase32_decode_rejects_garbage(text: str) -> None:
    with pytest.raises(ValueError):
        zbase32_decode(text)


# ----------------------------------------------------------------- peer IDs


def test_peer_id_round_trip() -> None:
    ident = Identity(SEED)
    peer_id = ident.peer_id
    assert len(peer_id) == 52
    assert peer_id == peer_id_from_key(ident.public_key)
    assert key_from_peer_id(peer_id) == ident.public_key
    assert key_from_peer_id(f"  {peer_id.upper()}\n") == ident.public_key
    grouped = " ".join(peer_id[i : i + 4] for i in range(0, 52, 4))
    assert key_from_peer_id(grouped) == ident.public_key
    assert is_peer_id(peer_id)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "y" * 52,  # all-zero bytes: not a valid point
        zbase32_encode(b"\x01" + b"\x00" * 31),  # identity element (small order)
        zbase32_encode(b"\xff" * 32),  # non-canonical encoding
        zbase32_encode(bytes(range(31))),  # 31 bytes
        zbase32_encode(bytes(range(33))),  # 33 bytes
        "y" * 51 + "b",  # trailing bit set
        "0" * 52,
        "p2pchat:" + "y" * 44,
    ],
)
def test_key_from_peer_id_rejects(text: str) -> None:
    with pytest.raises(InvalidPeerId):
        key_from_peer_id(text)
    assert not is_peer_id(text)


def test_peer_id_from_key_requires_32_bytes() -> None:
    with pytest.raises(ValueError):
        peer_id_from_key(b"\x00" * 31)


def test_sign_and_verify() -> None:
    ident = Identity(SEED)
    sig = ident.sign(b"hello")
    assert len(sig) == 64
    assert verify_signature(ident.public_key, b"hello", sig)
    assert not verify_signature(ident.public_key, b"hellO", sig)
    assert not verify_signature(Identity.generate().public_key, b"hello", sig)
    assert not verify_signature(ident.public_key, b"hello", sig[:-1])
    assert not verify_signature(ident.public_key[:31], b"hello", sig)
    assert not verify_signature(b"\x00" * 32, b"hello", sig)
    assert not verify_signature(None, b"hello", sig)  # type: ignore[arg-type]
    assert not verify_signature(ident.public_key, "hello", sig)  # type: ignore[arg-type]


def test_identity_repr_hides_seed() -> None:
    ident = Identity(SEED)
    assert SEED.hex() not in repr(ident)
    assert repr(SEED) not in repr(ident)
    assert ident.peer_id in repr(ident)


def test_identity_rejects_bad_seed() -> None:
    with pytest.raises(ValueError):
        Identity(b"short")


def test_fingerprint_format() -> None:
    fp = Identity(SEED).fingerprint
    groups = fp.split(" ")
    assert len(groups) == 8
    assert all(len(g) == 4 and g == g.upper() for g in groups)
    int("".join(groups), 16)
    assert fp != Identity.generate().fingerprint


def test_generate_is_random() -> None:
    assert Identity.generate().seed != Identity.generate().seed


# ----------------------------------------------------------------- key files


def test_plain_round_trip_and_permissions(tmp_path: Path, umask_zero: None) -> None:
    path = tmp_path / "state" / "identity.key"
    ident = create_identity(path)
    assert mode_of(path) == 0o600
    assert mode_of(path.parent) == 0o700
    doc = json.loads(path.read_text())
    assert doc == {
        "version": 1,
        "kind": "plain",
        "public_key": ident.public_key.hex(),
        "seed": ident.seed.hex(),
    }
    assert load_identity(path) == ident
    assert load_identity(path, "ignored for plain files") == ident
    assert [p.name for p in path.parent.iterdir()] == ["identity.key"]


def test_create_refuses_to_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "identity.key"
    first = create_identity(path)
    with pytest.raises(FileExistsError):
        create_identity(path)
    assert load_identity(path) == first
    assert [p.name for p in tmp_path.iterdir()] == ["identity.key"]


def test_passphrase_round_trip(
    tmp_path: Path, fast_kdf: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "identity.key"
    ident = create_identity(path, "correct horse")
    text = path.read_text()
    assert ident.seed.hex() not in text
    doc = json.loads(text)
    assert doc["kind"] == "argon2id-secretbox"
    assert doc["public_key"] == ident.public_key.hex()
    assert doc["opslimit"] == nacl.pwhash.argon2id.OPSLIMIT_MIN
    assert doc["memlimit"] == nacl.pwhash.argon2id.MEMLIMIT_MIN
    # The limits come from the file, so loading does not depend on the current cost.
    monkeypatch.setattr(
        identity_module,
        "KDF_COST",
        (nacl.pwhash.argon2id.OPSLIMIT_MODERATE, nacl.pwhash.argon2id.MEMLIMIT_MODERATE),
    )
    assert load_identity(path, "correct horse") == ident


def test_passphrase_is_unicode_normalized(tmp_path: Path, fast_kdf: None) -> None:
    path = tmp_path / "identity.key"
    ident = create_identity(path, "caf\u00e9")
    assert load_identity(path, "cafe\u0301") == ident


def test_wrong_passphrase(tmp_path: Path, fast_kdf: None) -> None:
    path = tmp_path / "identity.key"
    create_identity(path, "right")
    with pytest.raises(WrongPassphrase):
        load_identity(path, "wrong")
    with pytest.raises(WrongPassphrase):
        load_identity(path, "")


def test_missing_passphrase(tmp_path: Path, fast_kdf: None) -> None:
    path = tmp_path / "identity.key"
    create_identity(path, "secret")
    with pytest.raises(PassphraseRequired):
        load_identity(path)
    with pytest.raises(PassphraseRequired):
        load_or_create_identity(path)


def test_load_or_create(tmp_path: Path) -> None:
    path = tmp_path / "identity.key"
    with pytest.raises(IdentityMissing):
        load_or_create_identity(path, create=False)
    with pytest.raises(IdentityMissing):
        load_identity(path)
    ident, created = load_or_create_identity(path)
    assert created
    again, created_again = load_or_create_identity(path)
    assert not created_again
    assert again == ident


def test_load_tightens_loose_permissions(tmp_path: Path) -> None:
    path = tmp_path / "identity.key"
    ident = create_identity(path)
    path.chmod(0o644)
    assert load_identity(path) == ident
    assert mode_of(path) == 0o600


def _plain_doc(ident: Identity) -> dict[str, Any]:
    return {
        "version": 1,
        "kind": "plain",
        "public_key": ident.public_key.hex(),
        "seed": ident.seed.hex(),
    }


def _corruptions() -> list[Any]:
    ident = Identity(SEED)
    other = Identity(bytes(32))
    good = _plain_doc(ident)
    return [
        b"",
        b"not json",
        b"\xff\xfe\x00",
        b"[1, 2, 3]",
        b"[" * 100_000,
        {**good, "version": 2},
        {**good, "version": True},
        {**good, "version": "1"},
        {**good, "kind": "rot13"},
        {**good, "public_key": other.public_key.hex()},
        {**good, "seed": other.seed.hex()},
        {**good, "seed": ident.seed.hex()[:-2]},
        {**good, "seed": "zz" * 32},
        {**good, "seed": 7},
        {k: v for k, v in good.items() if k != "public_key"},
        {
            "version": 1,
            "kind": "argon2id-secretbox",
            "public_key": ident.public_key.hex(),
            "salt": "00" * 16,
            "opslimit": 1,
            "memlimit": 1 << 50,
            "box": "00" * 72,
        },
        {
            "version": 1,
            "kind": "argon2id-secretbox",
            "public_key": ident.public_key.hex(),
            "salt": "00" * 15,
            "opslimit": 1,
            "memlimit": 8192,
            "box": "00" * 72,
        },
    ]


@pytest.mark.parametrize("content", _corruptions())
def test_corrupt_file(tmp_path: Path, content: Any) -> None:
    path = tmp_path / "identity.key"
    data = content if isinstance(content, bytes) else json.dumps(content).encode()
    path.write_bytes(data)
    path.chmod(0o600)
    with pytest.raises(IdentityError) as info:
        load_identity(path, "pw")
    assert not isinstance(info.value, (WrongPassphrase, IdentityMissing))
    assert str(path) in str(info.value)


def test_tampered_box_is_wrong_passphrase(tmp_path: Path, fast_kdf: None) -> None:
    path = tmp_path / "identity.key"
    create_identity(path, "pw")
    doc = json.loads(path.read_text())
    box = bytearray.fromhex(doc["box"])
    box[-1] ^= 1
    doc["box"] = box.hex()
    path.write_text(json.dumps(doc))
    with pytest.raises(WrongPassphrase):
        load_identity(path, "pw")


def test_directory_instead_of_file(tmp_path: Path) -> None:
    with pytest.raises(IdentityError):
        load_identity(tmp_path)


# ----------------------------------------------------------------- safety numbers


def test_safety_number() -> None:
    a = Identity(SEED).public_key
    b = Identity(bytes(32)).public_key
    c = Identity(b"\x01" * 32).public_key
    number = safety_number(a, b)
    assert number == safety_number(b, a)
    groups = number.split(" ")
    assert len(groups) == 12
    assert all(len(g) == 5 and g.isdigit() for g in groups)
    assert number != safety_number(a, c)
    assert number != safety_number(b, c)
    # Each half belongs to one key, so a pair shares exactly one half with another pair.
    halves_ab = {number.replace(" ", "")[:30], number.replace(" ", "")[30:]}
    ac = safety_number(a, c).replace(" ", "")
    assert len(halves_ab & {ac[:30], ac[30:]}) == 1
    assert safety_number(a, a).replace(" ", "")[:30] == safety_number(a, a).replace(" ", "")[30:]


def test_safety_number_rejects_bad_keys() -> None:
    with pytest.raises(ValueError):
        safety_number(b"\x00" * 31, b"\x00" * 32)


# ----------------------------------------------------------------- addresses


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1.2.3.4:5", ("1.2.3.4", 5)),
        ("[::1]:4000", ("::1", 4000)),
        ("[2001:DB8:0:0::1]:65535", ("2001:db8::1", 65535)),
        ("[fe80::1%eth0]:9", ("fe80::1%eth0", 9)),
        ("localhost:5", ("localhost", 5)),
        ("Chat.Example.COM.:443", ("chat.example.com", 443)),
        (" host-1:1 ", ("host-1", 1)),
    ],
)
def test_parse_address(text: str, expected: tuple[str, int]) -> None:
    assert parse_address(text) == expected
    assert parse_address(format_address(*expected)) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "host",
        ":5",
        "host:",
        "host:0",
        "host:65536",
        "host:+5",
        "host:1_0",
        "host:\u0665",
        "host: 5",
        "::1:5",
        "[::1]5",
        "[::1]:",
        "[1.2.3.4]:5",
        "[::1%a b]:5",
        "[::1%]:5",
        "-bad-:5",
        "bad..name:5",
        "a_b:5",
        "héllo:5",
        "1.2.3:5",
        "1.2.3.4.5:5",
        "300.1.1.1:5",
        ("a" * 64) + ".com:5",
    ],
)
def test_parse_address_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_address(text)


def test_format_address() -> None:
    assert format_address("::1", 4000) == "[::1]:4000"
    assert format_address("[::1]", 4000) == "[::1]:4000"
    assert format_address("1.2.3.4", 5) == "1.2.3.4:5"
    with pytest.raises(ValueError):
        format_address("1.2.3.4", 0)
    with pytest.raises(ValueError):
        format_address("bad host", 5)


# ----------------------------------------------------------------- invites

PEER_ID = Identity(SEED).peer_id


@pytest.mark.parametrize(
    "invite",
    [
        Invite(PEER_ID),
        Invite(PEER_ID, ("1.2.3.4:5",)),
        Invite(PEER_ID, ("[::1]:4000", "example.com:443"), token="tok-EN_1", name="Alice"),
        Invite(PEER_ID, token="x" * 64),
        Invite(PEER_ID, name="Zoë 👩💻 ❤"),
        Invite(PEER_ID, tuple(f"10.0.0.{i}:{1000 + i}" for i in range(16))),
    ],
)
def test_invite_round_trip(invite: Invite) -> None:
    text = invite.encode()
    assert text.startswith("p2pchat:")
    assert len(text) <= MAX_INVITE_CHARS
    assert Invite.decode(text) == invite
    assert Invite.decode(text.upper()) == invite
    assert Invite.decode(f"\n {text[:30]}\n{text[30:]} \n") == invite
    assert parse_contact_ref(text) == invite


def test_invite_omits_absent_fields() -> None:
    text = Invite(PEER_ID).encode()
    payload = msgpack.unpackb(zbase32_decode(text[len("p2pchat:") :]))
    assert payload == {"v": 1, "id": Identity(SEED).public_key}


def test_invite_normalizes_fields() -> None:
    invite = Invite(PEER_ID.upper(), ("[0:0::1]:5", "HOST:7"))
    assert invite.peer_id == PEER_ID
    assert invite.addresses == ("[::1]:5", "host:7")


@pytest.mark.parametrize(
    "kwargs",
    [
        {"peer_id": "y" * 52},
        {"addresses": tuple(f"10.0.0.{i}:1" for i in range(17))},
        {"addresses": ("nope",)},
        {"addresses": "1.2.3.4:5"},
        {"token": ""},
        {"token": "x" * 65},
        {"token": "has space"},
        {"name": ""},
        {"name": "   "},
        {"name": "x" * 65},
        {"name": "evil\x1b[2J"},
        {"name": "abc\u202edcba"},
        {"name": "bad\ud800"},
        {"addresses": tuple(f"{'a' * 60}.{'b' * 60}.{'c' * 60}.example:{i}" for i in range(1, 9))},
    ],
)
def test_invite_construction_validates(kwargs: dict[str, Any]) -> None:
    args: dict[str, Any] = {"peer_id": PEER_ID, **kwargs}
    with pytest.raises(ValueError):
        Invite(**args)


def _wrap(payload: Any) -> str:
    return "p2pchat:" + zbase32_encode(msgpack.packb(payload, use_bin_type=True))


KEY = Identity(SEED).public_key


@pytest.mark.parametrize(
    "text",
    [
        "",
        "p2pchat:",
        "p2pchat",
        "chat:" + zbase32_encode(b"\x80"),
        "p2pchat:0000",
        "p2pchat:" + "y" * (MAX_INVITE_CHARS),
        _wrap([1, 2]),
        _wrap({"v": 2, "id": KEY}),
        _wrap({"v": True, "id": KEY}),
        _wrap({"v": 1}),
        _wrap({"v": 1, "id": KEY.hex()}),
        _wrap({"v": 1, "id": KEY[:31]}),
        _wrap({"v": 1, "id": b"\x00" * 32}),
        _wrap({"v": 1, "id": KEY, "a": "1.2.3.4:5"}),
        _wrap({"v": 1, "id": KEY, "a": ["1.2.3.4:5"] * 17}),
        _wrap({"v": 1, "id": KEY, "a": ["1.2.3.4:0"]}),
        _wrap({"v": 1, "id": KEY, "a": [b"1.2.3.4:5"]}),
        _wrap({"v": 1, "id": KEY, "t": 5}),
        _wrap({"v": 1, "id": KEY, "t": "t" * 65}),
        _wrap({"v": 1, "id": KEY, "n": "n" * 65}),
        _wrap({"v": 1, "id": KEY, "n": b"name"}),
        _wrap({"v": 1, "id": KEY, "n": "\x07"}),
        "p2pchat:" + zbase32_encode(msgpack.packb({"v": 1, "id": KEY}) + b"\x00"),
        "p2pchat:" + zbase32_encode(b"\x81\x01\x02"),  # non-string map key
        "p2pchat:" + zbase32_encode(b"\x91" * 5000),  # deep nesting, truncated
    ],
)
def test_invite_decode_rejects(text: str) -> None:
    with pytest.raises(InvalidInvite):
        Invite.decode(text)


def test_invite_decode_ignores_unknown_keys() -> None:
    text = _wrap({"v": 1, "id": KEY, "future": [1, 2, 3]})
    assert Invite.decode(text) == Invite(PEER_ID)


def test_invite_decode_refuses_long_text_before_decoding() -> None:
    text = Invite(PEER_ID).encode() + " " * 10 + "y" * MAX_INVITE_CHARS
    with pytest.raises(InvalidInvite, match="longer"):
        Invite.decode(text)


def test_parse_contact_ref() -> None:
    assert parse_contact_ref(PEER_ID) == Invite(PEER_ID)
    assert parse_contact_ref(f"  {PEER_ID.upper()} ") == Invite(PEER_ID)
    with pytest.raises(InvalidPeerId, match="invite"):
        parse_contact_ref("hello")
    with pytest.raises(InvalidInvite):
        parse_contact_ref("P2PCHAT:garbage")


msgpack_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats()
    | st.text(max_size=80)
    | st.binary(max_size=40),
    lambda children: (
        st.lists(children, max_size=5)
        | st.dictionaries(
            st.text(max_size=4) | st.sampled_from(["v", "id", "a", "t", "n"]), children
        )
    ),
    max_leaves=20,
)

near_valid_payloads = st.fixed_dictionaries(
    {},
    optional={
        "v": st.sampled_from([1, 0, 2, True, "1"]) | msgpack_values,
        "id": st.sampled_from([KEY, b"\x00" * 32, KEY[:31]]) | msgpack_values,
        "a": st.lists(
            st.sampled_from(["1.2.3.4:5", "[::1]:1", "h:65536", ""]) | msgpack_values,
            max_size=18,
        )
        | msgpack_values,
        "t": st.from_regex(r"[A-Za-z0-9_-]{0,70}", fullmatch=True) | msgpack_values,
        "n": st.text(max_size=70) | msgpack_values,
        "x": msgpack_values,
    },
)


def _decode_or_invalid(text: str) -> None:
    try:
        invite = Invite.decode(text)
    except InvalidInvite:
        return
    assert isinstance(invite, Invite)
    assert Invite.decode(invite.encode()) == invite


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=300))
def test_invite_decode_fuzz_text(text: str) -> None:
    _decode_or_invalid(text)
    _decode_or_invalid("p2pchat:" + text)


@given(st.binary(max_size=300))
def test_invite_decode_fuzz_raw_payload(data: bytes) -> None:
    _decode_or_invalid("p2pchat:" + zbase32_encode(data))


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(msgpack_values | near_valid_payloads)
def test_invite_decode_fuzz_msgpack(payload: Any) -> None:
    try:
        packed = msgpack.packb(payload, use_bin_type=True)
    except (ValueError, TypeError, OverflowError):
        return
    _decode_or_invalid("p2pchat:" + zbase32_encode(packed))


hosts = (
    st.ip_addresses(v=4).map(str)
    | st.ip_addresses(v=6).map(str)
    | st.from_regex(r"[a-z][a-z0-9]{0,10}(\.[a-z]{2,6}){0,2}", fullmatch=True)
)


@given(
    seed=st.binary(min_size=32, max_size=32),
    addresses=st.lists(
        st.tuples(hosts, st.integers(1, 65535)).map(lambda hp: format_address(*hp)),
        max_size=4,
    ),
    token=st.none() | st.from_regex(r"[A-Za-z0-9_-]{1,64}", fullmatch=True),
    name=st.none() | st.from_regex(r"[A-Za-z][A-Za-z0-9 ]{0,40}", fullmatch=True),
)
def test_invite_round_trip_property(
    seed: bytes, addresses: list[str], token: str | None, name: str | None
) -> None:
    invite = Invite(Identity(seed).peer_id, tuple(addresses), token, name)
    assert Invite.decode(invite.encode()) == invite
