"""``quick_init``: the faster ``__init__`` of per-message frozen dataclasses behaves as
the one ``dataclasses`` writes, and refuses what it does not support up front."""

from __future__ import annotations

import dataclasses
import inspect
import pickle
from dataclasses import dataclass, field

import pytest

from p2pchat.core import chat, events
from p2pchat.core.frozen import quick_init
from p2pchat.store import records


@dataclass(frozen=True, slots=True)
class _Base:
    kind: str


@quick_init
@dataclass(frozen=True, slots=True)
class _Quick(_Base):
    a: int
    b: str = "b"
    c: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class _Plain(_Base):
    a: int
    b: str = "b"
    c: tuple[int, ...] = ()


def test_builds_what_the_dataclass_init_builds() -> None:
    for args, kwargs in [(("k", 1), {}), (("k", 1, "x", (2,)), {}), (("k",), {"a": 3, "c": (4,)})]:
        quick, plain = _Quick(*args, **kwargs), _Plain(*args, **kwargs)  # type: ignore[arg-type]
        assert dataclasses.astuple(quick) == dataclasses.astuple(plain)
        assert repr(quick) == repr(plain).replace("_Plain", "_Quick")
    assert _Quick("k", 1) == _Quick(kind="k", a=1, b="b")
    assert hash(_Quick("k", 1)) == hash(_Quick("k", 1, "b", ()))
    assert _Quick("k", 1) != _Quick("k", 2)


def test_stays_frozen_and_works_with_replace_and_pickle() -> None:
    quick = _Quick("k", 1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        quick.a = 2  # type: ignore[misc]
    assert dataclasses.replace(quick, b="z") == _Quick("k", 1, "z")
    assert pickle.loads(pickle.dumps(quick)) == quick


def test_wrong_arguments_fail_as_before() -> None:
    with pytest.raises(TypeError):
        _Quick("k")  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        _Quick("k", 1, d=5)  # type: ignore[call-arg]


def test_refuses_what_it_does_not_support_when_the_class_is_defined() -> None:
    with pytest.raises(TypeError, match="frozen=True, slots=True"):

        @quick_init
        @dataclass(frozen=True)
        class _NoSlots:
            a: int

    with pytest.raises(TypeError, match="plain fields"):

        @quick_init
        @dataclass(frozen=True, slots=True)
        class _Factory:
            a: list[int] = field(default_factory=list)

    with pytest.raises(TypeError, match="__post_init__"):

        @quick_init
        @dataclass(frozen=True, slots=True)
        class _Post:
            a: int

            def __post_init__(self) -> None:
                pass


@pytest.mark.parametrize(
    "cls",
    [
        chat.ChatMessage,
        chat.Ack,
        events.MessageReceived,
        events.MessageSent,
        events.MessageEdited,
        events.MessageDeleted,
        events.MessageStateChanged,
        records.Message,
        records.ReceiveResult,
    ],
)
def test_the_classes_built_per_message_keep_their_signature(cls: type) -> None:
    """Same parameters, order and defaults as the dataclass fields say."""
    params = list(inspect.signature(cls).parameters.values())
    fields = dataclasses.fields(cls)
    assert [p.name for p in params] == [f.name for f in fields]
    for p, f in zip(params, fields, strict=True):
        expected = inspect.Parameter.empty if f.default is dataclasses.MISSING else f.default
        assert p.default == expected


def test_store_records_compare_hash_replace_and_pickle_as_dataclasses() -> None:
    message = records.Message("m1", "p", "in", 3, "hi", 1.0, 2.0, "delivered", 2.0, kind="text")
    same = records.Message(
        id="m1", peer_id="p", direction="in", seq=3, body="hi", created_at=1.0,
        received_at=2.0, state="delivered", updated_at=2.0,
    )  # fmt: skip
    assert message == same and hash(message) == hash(same)
    assert message.reply_to is None and message.target is None and message.kind == "text"
    assert message.with_state("read") == dataclasses.replace(message, state="read")
    assert pickle.loads(pickle.dumps(message)) == message
    with pytest.raises(dataclasses.FrozenInstanceError):
        message.body = "changed"  # type: ignore[misc]
    result = records.ReceiveResult("accept", message, 3)
    assert result == records.ReceiveResult("accept", same, 3, None, None)
    assert dataclasses.replace(result, recv_seq=4).recv_seq == 4
    assert pickle.loads(pickle.dumps(result)) == result


def test_a_message_row_is_read_positionally_in_field_order() -> None:
    """``_message`` builds a ``Message`` from the row alone: the column list must be the
    fields, in order, or a row would land in the wrong fields."""
    columns = [c.strip() for c in records._MESSAGE_COLUMNS.split(",")]
    assert columns == [f.name for f in dataclasses.fields(records.Message)]
    row = tuple(f"v{i}" for i in range(len(columns)))
    assert dataclasses.astuple(records._message(row)) == row
