"""SIGKILL a node half way through 1,000 messages each way: nothing lost or duplicated."""

from __future__ import annotations

from pathlib import Path

from p2pchat.store import Store

from .conftest import free_udp_port, make_home, wait_until
from .daemons import Daemon

N = 1000


def incoming(paths_db: Path, peer: str) -> list[str]:
    with Store(paths_db) as store:
        return [m.body for m in store.history(peer) if m.direction == "in"]


def undelivered(paths_db: Path, peer: str) -> int:
    with Store(paths_db) as store:
        return len(store.outbox(peer))


async def test_sigkill_and_restart_halfway(tmp_path: Path) -> None:
    pa, pb = make_home(tmp_path, "alice"), make_home(tmp_path, "bob")
    a = Daemon(pa.home, f"127.0.0.1:{free_udp_port()}")
    b = Daemon(pb.home, f"127.0.0.1:{free_udp_port()}")
    await a.start()
    await b.start()
    try:
        ida = (await a.call("info"))["peer_id"]
        idb = (await b.call("info"))["peer_id"]
        await a.call("add", ref=idb, name="bob", addresses=[b.listen])
        await b.call("add", ref=ida, name="alice", addresses=[a.listen])
        for i in range(N // 2):
            await a.call("send", contact="bob", text=f"a->b {i:04d}")
            await b.call("send", contact="alice", text=f"b->a {i:04d}")
        await b.kill()
        # Alice keeps writing while Bob is dead; the outbox holds it.
        for i in range(N // 2, N):
            await a.call("send", contact="bob", text=f"a->b {i:04d}")
        await b.start()
        for i in range(N // 2, N):
            await b.call("send", contact="alice", text=f"b->a {i:04d}")
        await wait_until(
            lambda: len(incoming(pb.database, ida)) >= N and len(incoming(pa.database, idb)) >= N,
            timeout=120,
            interval=0.5,
        )
        await wait_until(
            lambda: undelivered(pa.database, idb) == 0 and undelivered(pb.database, ida) == 0,
            timeout=60,
            interval=0.5,
        )
        assert incoming(pb.database, ida) == [f"a->b {i:04d}" for i in range(N)]
        assert incoming(pa.database, idb) == [f"b->a {i:04d}" for i in range(N)]
    finally:
        await a.stop()
        await b.stop()
