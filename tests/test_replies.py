"""Replies, edits and deletions: the frame rules, and real nodes on both sides.

Edits and deletions travel as sequenced messages, so they inherit exactly-once,
in-order delivery; these tests check that the right side may make them, that a
deletion leaves no text behind on either side, and what scripts see.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path

import pytest

from p2pchat.core import chat
from p2pchat.core.errors import RemoteProtocolError
from p2pchat.core.events import MessageDeleted, MessageEdited, MessageReceived
from p2pchat.node import NodeError
from p2pchat.store import Store

from .conftest import EventLog, StartNode, free_udp_port, friends, make_home, wait_until
from .daemons import Daemon, run_cli

ID_A, ID_B = "a" * 32, "b" * 32
PEER = "b2" * 26


def roundtrip(frame: chat.ChatMessage) -> chat.ChatFrame:
    return chat.decode(chat.encode(frame))


def test_frames_carry_reply_edit_and_delete() -> None:
    reply = chat.ChatMessage(ID_A, 2, 1, 1.0, "yes", reply_to=ID_B)
    assert roundtrip(reply) == reply
    edit = chat.ChatMessage(ID_A, 3, 1, 1.0, "fixed typo", kind="edit", target=ID_B)
    assert roundtrip(edit) == edit
    delete = chat.ChatMessage(ID_A, 4, 1, 1.0, "", kind="delete", target=ID_B)
    assert roundtrip(delete) == delete
    plain = chat.ChatMessage(ID_A, 1, 1, 1.0, "hi")
    assert "r" not in chat.msgpack.unpackb(chat.encode(plain))  # old peers see old frames


@pytest.mark.parametrize(
    "fields",
    [
        {"k": "edit"},  # no target
        {"k": "delete", "x": ID_B, "m": "left over"},  # a deletion with text
        {"k": "edit", "x": ID_B, "m": "  "},  # an edit to nothing
        {"k": "rename", "x": ID_B},  # unknown kind
        {"x": ID_B},  # a target without a kind
        {"r": "not-an-id"},
        {"k": "edit", "x": ID_B, "r": ID_B},  # an edit that replies
    ],
)
def test_malformed_changes_are_refused(fields: dict[str, object]) -> None:
    frame = {"t": "msg", "i": ID_A, "s": 1, "b": 1, "at": 1.0, "m": "text", **fields}
    with pytest.raises(RemoteProtocolError):
        chat.decode(chat.msgpack.packb(frame))


async def test_reply_edit_and_delete_both_sides(start_node: StartNode) -> None:
    a, b = await friends(start_node)
    log_a, log_b = EventLog(a), EventLog(b)
    try:
        question = a.send_message("bob", "lunch at 12?")
        await wait_until(lambda: [m.body for m in b.history("alice")] == ["lunch at 12?"])
        answer = b.send_message("alice", "yes!", reply_to=question.id[-6:])
        assert answer.reply_to == question.id
        await wait_until(lambda: len(a.history("bob")) == 2)
        received = a.history("bob")[1]
        assert received.reply_to == question.id
        quoted = a.get_message(received.reply_to or "", contact="bob")
        assert quoted is not None and quoted.body == "lunch at 12?"  # resolved locally
        got = [e for e in log_a.of(MessageReceived) if isinstance(e, MessageReceived)]
        assert got[-1].reply_to == question.id

        edited = a.edit_message(question.id, "lunch at 1?")
        assert edited.body == "lunch at 1?" and edited.edited_at is not None
        await wait_until(lambda: b.history("alice")[0].body == "lunch at 1?")
        assert b.history("alice")[0].edited_at is not None
        await wait_until(lambda: bool(log_b.of(MessageEdited)))
        [change] = [e for e in log_b.of(MessageEdited) if isinstance(e, MessageEdited)]
        assert (change.message_id, change.direction, change.body) == (
            question.id, "in", "lunch at 1?",
        )  # fmt: skip
        # Only the author may change a message: Bob cannot edit or delete Alice's.
        with pytest.raises(NodeError, match="own messages"):
            b.edit_message(question.id, "lunch never")
        with pytest.raises(NodeError, match="own messages"):
            b.delete_message(question.id)

        b.delete_message(answer.id)
        await wait_until(lambda: a.history("bob")[1].deleted_at is not None)
        tombstone = a.history("bob")[1]
        assert tombstone.body == "" and tombstone.reply_to == question.id
        assert b.history("alice")[1].body == ""
        await wait_until(lambda: bool(log_a.of(MessageDeleted)))
        with pytest.raises(NodeError, match="deleted"):
            b.edit_message(answer.id, "too late")
        # The conversation goes on as before: nothing broke the sequence.
        later = b.send_message("alice", "see you")
        assert await b.wait_for_delivery(later.id, 20) == "delivered"
        assert [m.body for m in a.history("bob")] == ["lunch at 1?", "", "see you"]
        assert a.store.unread_count(b.peer_id) == 2  # edits and deletions are not unread
    finally:
        await log_a.close()
        await log_b.close()


async def test_a_deleted_message_leaves_no_text_anywhere(
    start_node: StartNode, tmp_path: Path
) -> None:
    """Written, edited and deleted while Bob was offline: he gets a tombstone and
    neither database holds the words (history-free deletion)."""
    a, b = await friends(start_node)
    await b.stop()
    await wait_until(lambda: not a.is_online(b.peer_id), timeout=15)
    secret = a.send_message("bob", "the password is swordfish")
    a.edit_message(secret.id, "the password is hunter2")
    a.delete_message(secret.id)
    b = await start_node("bob")
    await wait_until(lambda: [m.deleted_at is not None for m in b.history("alice")] == [True])
    await wait_until(lambda: a.store.outbox(b.peer_id) == [])
    for node in (a, b):
        db = sqlite3.connect(node.paths.database)
        try:
            rows = db.execute(
                "SELECT count(*) FROM messages WHERE body LIKE '%swordfish%'"
                " OR body LIKE '%hunter2%'"
            ).fetchone()
        finally:
            db.close()
        assert rows == (0,), node.name


async def test_changes_to_foreign_or_unknown_messages_are_refused(
    start_node: StartNode,
) -> None:
    """A hostile contact's node sends an edit of *our* message and a deletion of a
    message that does not exist: neither is applied, both are acknowledged (their
    numbers are used up), and the conversation continues."""
    a, b = await friends(start_node)
    mine = b.send_message("alice", "my words")
    await wait_until(lambda: [m.body for m in a.history("bob")] == ["my words"])
    # Alice's node misbehaves: it queues raw changes naming Bob's message and an
    # unknown id (a real node would never do this; the store is its outbox).
    with a.store._write() as db:
        forged = [
            a.store._queue(db, b.peer_id, "c" * 32, "rewritten", a.clock(),
                           kind="edit", target=mine.id),
            a.store._queue(db, b.peer_id, "d" * 32, "", a.clock(),
                           kind="delete", target="e" * 32),
        ]  # fmt: skip
    for frame in forged:
        a._send_now(frame)
    after = a.send_message("bob", "still talking")
    await wait_until(lambda: [m.body for m in b.history("alice")][-1:] == ["still talking"])
    assert [m.body for m in b.history("alice")] == ["my words", "still talking"]
    assert b.history("alice")[0].edited_at is None
    assert await a.wait_for_delivery(after.id, 20) == "delivered"
    assert a.store.outbox(b.peer_id) == []


async def test_history_json_and_the_cli_commands(tmp_path: Path, start_node: StartNode) -> None:
    home = make_home(tmp_path, "alice")
    daemon = Daemon(home.home, f"127.0.0.1:{free_udp_port()}")
    await daemon.start()
    bob = await start_node("bob")
    try:
        info = await daemon.call("info")
        await daemon.call("add", ref=bob.peer_id, name="bob", addresses=list(bob.addresses))
        bob.add_contact(info["peer_id"], name="alice", addresses=[daemon.listen])
        await wait_until(lambda: bob.is_online(info["peer_id"]), timeout=30)
        first = bob.send_message("alice", "first")

        async def cli(*args: str) -> str:
            # In a thread: Bob's node runs on this loop and must answer meanwhile.
            result = await asyncio.to_thread(run_cli, home.home, *args)
            assert result.returncode == 0, result.stderr
            return result.stdout

        await wait_until(lambda: [m.state for m in bob.history("alice")] == ["delivered"])
        sent = json.loads(
            await cli("msg", "bob", "an answer", "--reply-to", f"#{first.id[-8:]}", "--json")
        )
        assert sent["state"] == "delivered"
        await cli("edit", sent["id"][-8:], "a better answer")
        written = json.loads(await cli("msg", "bob", "oops", "--json"))
        assert (await cli("delete", written["id"])).startswith(f"deleted #{written['id'][-8:]}")
        history = json.loads(await cli("history", "bob", "--json"))
        assert [(m["body"], m["reply_to"], m["edited"], m["deleted"]) for m in history] == [
            ("first", None, False, False),
            ("a better answer", first.id, True, False),
            ("", None, False, True),
        ]
        assert all("kind" not in m and m["created_at"] for m in history)
        plain = await cli("history", "bob")
        assert "↳ reply to them: first" in plain and "(edited)" in plain
        assert "(deleted)" in plain and f"#{first.id[-8:]}" in plain
        # Paging back from a message as the plain output shows it.
        older = json.loads(await cli("history", "bob", "--before", f"#{sent['id'][-8:]}", "--json"))
        assert [m["id"] for m in older] == [first.id]
        await wait_until(lambda: [m.body for m in bob.history("alice")][1:] == [
            "a better answer", "",
        ])  # fmt: skip
        bad = await asyncio.to_thread(run_cli, home.home, "edit", first.id, "not mine")
        assert bad.returncode == 1 and "own messages" in bad.stderr
    finally:
        await daemon.stop()


def test_ids_begin_with_the_time_and_are_found_by_their_end(tmp_path: Path) -> None:
    """Ids made one after another sort in that order (the index of ids grows at its
    end); what tells them apart, and what people type, is their end."""
    store = Store(tmp_path / "p2pchat.db", journal=True)
    try:
        store.add_contact(PEER, "bob", now=0.0)
        made = [store.queue_message(PEER, f"m {i}", now=1000.0 + i).id for i in range(5)]
        made += [m.id for m in store.queue_messages(PEER, ["a", "b"], now=2000.0)]
        assert all(len(i) == 32 and int(i, 16) >= 0 for i in made)
        heads = [i[:12] for i in made]
        assert heads == sorted(heads) and heads[0] == f"{1000 * 1000:012x}"
        assert len(set(made)) == len(made)
        for message_id in made:
            assert store.message_ids(message_id[-8:], peer_id=PEER) == [message_id]
            assert store.message_ids(message_id[-8:]) == [message_id]
        # The start of an id names nothing: every id of that millisecond shares it.
        assert store.message_ids(made[-1][:8], peer_id=PEER) == []
    finally:
        store.close()
