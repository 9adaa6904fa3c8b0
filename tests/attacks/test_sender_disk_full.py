"""A full disk on the sender: ``send_message`` fails with the database's disk-full error,
queues nothing, leaves no half record in the outbox journal, and sending works again
(numbering continues without a gap) once space returns."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from p2pchat.identity import load_identity
from p2pchat.node import Node
from p2pchat.store import StoreError
from p2pchat.store.journal import journal_path

from ..daemons import make_home
from .test_disk_full import fill, small_disk  # noqa: F401  (the fixture)

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="mounting a small tmpfs for the sender's home needs root"
)


async def test_a_send_on_a_full_disk_is_refused_whole(
    tmp_path: Path,
    small_disk: Path,  # noqa: F811  (the fixture imported above)
) -> None:
    paths = make_home(small_disk, "alice")
    bob = load_identity(make_home(tmp_path, "bob").identity).peer_id
    alice = Node(paths)
    try:
        alice.add_contact(bob, name="bob")
        before = alice.send_message("bob", "before")
        alice.store.fold()
        journal = journal_path(paths.database)
        assert journal.stat().st_size == 0
        filler = fill(small_disk)
        with pytest.raises(StoreError, match="database or disk is full"):
            alice.send_message("bob", "while the disk is full " + "z" * 2000)
        assert journal.stat().st_size == 0  # nothing half written for the next append
        assert not alice.store.pending
        filler.unlink()
        after = alice.send_message("bob", "after")
        assert (before.seq, after.seq) == (1, 2)
        assert [m.body for m in alice.store.outbox(bob)] == ["before", "after"]
    finally:
        await alice.stop()
    reopened = Node(paths)
    try:
        assert [(m.seq, m.body) for m in reopened.store.outbox(bob)] == [
            (1, "before"),
            (2, "after"),
        ]
    finally:
        await reopened.stop()
