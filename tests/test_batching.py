"""Group commit: what arrives in one loop turn is stored in one transaction and
acknowledged once, after the commit, without giving up exactly-once and in order."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from pathlib import Path

from p2pchat.core import chat
from p2pchat.core.events import MessageReceived, TypingChanged
from p2pchat.identity import load_identity
from p2pchat.node import Node
from p2pchat.store import Store
from p2pchat.store.journal import journal_path

from .attacks.attackers import HostileLink, HostilePeer
from .conftest import EventLog, StartNode, make_home, wait_until
from .daemons import cli_env
from .test_messaging import befriend, bodies


def count_commits(node: Node) -> list[int]:
    """Counts COMMITs on the node's database connection from now on."""
    counter = [0]

    def trace(statement: str) -> None:
        if statement.strip().upper() == "COMMIT":
            counter[0] += 1

    node.store._connection().set_trace_callback(trace)
    return counter


async def test_a_burst_is_stored_in_few_transactions_exactly_once_in_order(
    start_node: StartNode,
) -> None:
    a = await start_node("alice")
    b = await start_node("bob")
    befriend(a, b)
    await wait_until(lambda: a.is_online(b.peer_id) and b.is_online(a.peer_id))
    received = EventLog(b)
    commits = count_commits(b)
    n = 2000
    # One batch of 1,000, then 1,000 single sends in the same loop turns.
    a.send_messages("b", [f"m {i:04d}" for i in range(n // 2)])
    for i in range(n // 2, n):
        a.send_message("b", f"m {i:04d}")
        b.send_message("a", f"r {i:04d}")
        if i % 200 == 0:
            await asyncio.sleep(0)
    expected = [f"m {i:04d}" for i in range(n)]
    await wait_until(lambda: len(bodies(b, "a", "in")) >= n, timeout=60)
    await wait_until(
        lambda: a.store.outbox(b.peer_id) == [] and b.store.outbox(a.peer_id) == [], timeout=60
    )
    assert bodies(b, "a", "in") == expected
    assert bodies(a, "b", "in") == [f"r {i:04d}" for i in range(n // 2, n)]
    assert [m.state for m in a.history("b") if m.direction == "out"] == ["delivered"] * n
    events = [e.body for e in received.of(MessageReceived)]  # type: ignore[attr-defined]
    assert events == expected
    # Bob's own sends commit once each (durable before send_message returns); what he
    # received was applied in batches, far fewer transactions than messages.
    assert commits[0] - n // 2 < n // 4, commits[0]
    await received.close()


# Bob's node in a process of its own that is killed right after a batch was stored (one
# append to its message journal: docs/storage.md) and before its ack leaves:
# ``Delivery._answer`` runs only after that.
CRASH_AFTER_COMMIT = """
import asyncio, os, signal, sys
from pathlib import Path
from p2pchat.config import Paths
from p2pchat.delivery import Delivery
from p2pchat.node import Node

def crash(self, conn, peer, results, wall, **options):
    accepted = [r for _f, r in results if r.verdict == "accept"]
    if len(accepted) >= 2:
        os.kill(os.getpid(), signal.SIGKILL)

Delivery._answer = crash

async def main():
    node = Node(Paths(Path(sys.argv[1])))
    await node.start()
    print("started", flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


async def test_sigkill_between_a_batch_commit_and_its_ack(
    tmp_path: Path, start_node: StartNode
) -> None:
    a = await start_node("alice")
    bob_paths = make_home(tmp_path, "bob")
    with Store(bob_paths.database) as store:
        store.add_contact(a.peer_id, "alice", addresses=a.addresses, now=1.0)
    proc = subprocess.Popen(
        [sys.executable, "-c", CRASH_AFTER_COMMIT, str(bob_paths.home)],
        stdout=subprocess.PIPE, text=True, env=cli_env(),
    )  # fmt: skip
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "started"
        bob = load_identity(bob_paths.identity).peer_id
        a.add_contact(bob, name="bob", addresses=["127.0.0.1:1"])
        await wait_until(lambda: a.is_online(bob), timeout=30)
        n = 50
        a.send_messages("bob", [f"m {i:02d}" for i in range(n)])
        await wait_until(lambda: proc.poll() is not None, timeout=30)
        assert proc.returncode == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
    # Bob stored a batch, then died: nothing of it was acknowledged.  Only the journal
    # holds it; opening the store folds it.
    assert journal_path(bob_paths.database).stat().st_size > 0
    with Store(bob_paths.database) as store:
        stored = [m.body for m in store.history(a.peer_id) if m.direction == "in"]
    assert len(stored) >= 2 and stored == [f"m {i:02d}" for i in range(len(stored))]
    # (``sent``, or ``queued`` again: the mark may not be written yet, and a session
    # found dead puts its unacknowledged messages back to ``queued``.)
    assert {m.state for m in a.history("bob")} <= {"sent", "queued"}
    # Bob comes back: Alice resends everything, the stored part is a duplicate.
    b = await start_node("bob")
    await wait_until(lambda: a.store.outbox(bob) == [], timeout=60)
    assert bodies(b, "alice", "in") == [f"m {i:02d}" for i in range(n)]
    assert [m.state for m in a.history("bob")] == ["delivered"] * n


async def _hostile_contact(alice: Node) -> tuple[HostilePeer, HostileLink]:
    peer = HostilePeer()
    await peer.start()
    alice.add_contact(peer.peer_id, name="mallory")
    link = await peer.connect(alice.addresses[0], hello=chat.Hello(name="mallory"))
    await wait_until(lambda: alice.is_online(peer.peer_id))
    return peer, link


async def _settled(alice: Node, link: HostileLink, log: EventLog) -> None:
    """Everything the peer sent before this is applied: its Typing frame comes after,
    and the end-of-turn flush runs before the event reaches a consumer."""
    seen = len(log.of(TypingChanged))
    link.send(chat.Typing(True))
    await wait_until(lambda: len(log.of(TypingChanged)) > seen)


async def test_an_ack_for_messages_never_transmitted_is_refused(start_node: StartNode) -> None:
    alice = await start_node("alice")
    log = EventLog(alice)
    peer, link = await _hostile_contact(alice)
    try:
        first = alice.send_message("mallory", "one")
        await wait_until(lambda: len(link.of(chat.ChatMessage)) == 1)
        # The peer asks us to hold everything from seq 1 on for an hour...
        link.send(chat.Defer(seq=1, retry_after=3600.0, why="storage", reason="full"))
        await _settled(alice, link, log)
        later = alice.send_messages("mallory", ["two", "three", "four"])
        await _settled(alice, link, log)
        assert len(link.of(chat.ChatMessage)) == 1  # held back, never transmitted
        # ...then claims to have received all four, and more than we ever wrote.
        for lie in (4, 2, 99):
            link.send(chat.Ack(lie))
            await _settled(alice, link, log)
            states = [m.state for m in alice.history("mallory")]
            assert states == ["sent", "queued", "queued", "queued"], (lie, states)
        assert len(alice.store.outbox(peer.peer_id)) == 4
        # The truth is taken.
        link.send(chat.Ack(1))
        await _settled(alice, link, log)
        assert alice.store.get_message(first.id).state == "delivered"  # type: ignore[union-attr]
        assert [m.id for m in alice.store.outbox(peer.peer_id)] == [m.id for m in later]
    finally:
        link.close()
        peer.close()
        await log.close()


async def test_cost_per_message_does_not_grow_with_the_outbox(start_node: StartNode) -> None:
    """A peer that never acknowledges: the outbox grows, and what one more message
    costs the store (statements and SQLite VM steps, send and its sent mark) stays
    the same with 10 or 2,000 messages waiting."""
    alice = await start_node("alice")
    peer, link = await _hostile_contact(alice)
    db = alice.store._connection()
    try:

        async def cost_of_one(text: str) -> tuple[int, int]:
            statements, steps = [0], [0]

            def trace(_statement: str) -> None:
                statements[0] += 1

            def step() -> int:
                steps[0] += 1
                return 0

            db.set_trace_callback(trace)
            db.set_progress_handler(step, 1)
            try:
                alice.send_message("mallory", text)
                alice.delivery.flush()  # its sent mark, which would wait for a flush
            finally:
                db.set_trace_callback(None)
                db.set_progress_handler(None, 1)
            return statements[0], steps[0]

        alice.send_messages("mallory", [f"fill {i}" for i in range(10)])
        alice.delivery.flush()
        small = [await cost_of_one(f"small {i}") for i in range(5)]
        alice.send_messages("mallory", [f"fill {i}" for i in range(2000)])
        alice.delivery.flush()
        assert len(alice.store.outbox(peer.peer_id)) > 2000
        large = [await cost_of_one(f"large {i}") for i in range(5)]
        assert max(s for s, _ in large) == max(s for s, _ in small), (small, large)
        # VM steps: equal up to b-tree depth effects, nowhere near the 200x of a scan.
        # (Medians: the first call after a fill may warm SQLite's statement cache.)
        median_small = sorted(v for _, v in small)[2]
        median_large = sorted(v for _, v in large)[2]
        assert median_large <= 1.2 * median_small, (small, large)
    finally:
        link.close()
        peer.close()


def test_store_batch_is_one_transaction_and_rolls_back_whole(tmp_path: Path) -> None:
    store = Store(tmp_path / "db")
    peer = "b" * 52
    try:
        commits = [0]
        store._connection().set_trace_callback(
            lambda s: commits.__setitem__(0, commits[0] + (s.strip().upper() == "COMMIT"))
        )
        with store.batch():
            for seq in range(1, 11):
                store.queue_message(peer, f"out {seq}", now=1.0)
                store.receive_message(
                    peer, message_id=f"in{seq}", seq=seq, base=1, body=f"in {seq}",
                    sent_at=1.0, now=1.0,
                )  # fmt: skip
        assert commits[0] == 1
        assert store.recv_seq(peer) == 10 and len(store.outbox(peer)) == 10
        try:
            with store.batch():
                store.queue_message(peer, "lost", now=2.0)
                raise RuntimeError("boom")
        except RuntimeError:
            pass
        assert len(store.outbox(peer)) == 10 and store.send_seq(peer) == 10
    finally:
        store.close()
