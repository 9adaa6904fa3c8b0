"""Calm notifications: one notice per contact that counts, none for the open chat, none
over dialogs, alerts rate-limited, and their state on the status bar."""

from __future__ import annotations

from pathlib import Path

from textual.widgets import Static
from textual.widgets._toast import Toast

from p2pchat.ui.format import AlertLimiter
from p2pchat.ui.screens.help import HelpScreen
from p2pchat.ui.widgets.notices import NoticeCard, NoticeTray

from ..conftest import StartNode, make_home
from .conftest import app_for, main_screen, showing, until
from .test_flows import befriend, record_notifications, row_for

FLOOD = 500


def test_alert_limiter_alerts_once_per_subject_and_spaces_alerts() -> None:
    limiter = AlertLimiter(per_key=60, gap=3)
    assert limiter.allow("msg:bob", 0.0)
    assert not limiter.allow("msg:bob", 1.0)  # the same news
    assert not limiter.allow("msg:carol", 2.0)  # too soon after any alert
    assert limiter.allow("msg:carol", 3.5)
    assert not limiter.allow("msg:bob", 30.0)
    limiter.forget("msg:bob")  # the user opened bob's conversation
    assert limiter.allow("msg:bob", 30.0)


async def test_a_flood_of_messages_is_one_notice_that_counts(
    tmp_path: Path, start_node: StartNode
) -> None:
    bob = await start_node("bob")
    carol = await start_node("carol")
    app = app_for(make_home(tmp_path, "alice"))
    async with app.run_test(size=(120, 36)) as pilot:
        toasts = record_notifications(app)
        main = await main_screen(pilot)
        node = app.node
        assert node is not None
        rings: list[int] = []
        app.bell = lambda: rings.append(1)  # type: ignore[method-assign]
        main.bell = True
        befriend(node, bob)
        befriend(node, carol)
        await until(pilot, lambda: node.is_online(bob.peer_id) and node.is_online(carol.peer_id))
        main.open_conversation(carol.peer_id)
        tray = main.notices
        most = 0

        def sample() -> None:
            nonlocal most
            most = max(most, len([k for k in tray.keys if k.startswith("msg:")]))

        for i in range(FLOOD // 2):
            bob.send_message("alice", f"flood {i}")
        await until(pilot, lambda: tray.notices.get(f"msg:{bob.peer_id}") is not None)
        await pilot.press("f1")  # help opens in the middle of the flood
        await until(pilot, lambda: showing(app, HelpScreen))
        for i in range(FLOOD // 2, FLOOD):
            bob.send_message("alice", f"flood {i}")
            if i % 50 == 0:
                sample()
                await pilot.pause()
        await until(pilot, lambda: len(node.history(bob.peer_id)) == FLOOD, 60)
        sample()
        # Nothing lands on the help screen: no toast there, the tray is under it.
        assert not list(app.screen.query(Toast))
        await pilot.press("escape")
        await until(pilot, lambda: app.screen is main)
        await until(pilot, lambda: f" {FLOOD} " in row_for(main, "bob"), 30)
        notice = tray.notices[f"msg:{bob.peer_id}"]
        await until(pilot, lambda: notice.count == FLOOD)
        await until(pilot, lambda: len(tray.query(NoticeCard)) == 1)
        card = tray.query_one(NoticeCard)
        # Drawn at the next flush, with the count the list has.
        await until(pilot, lambda: f"{FLOOD} new" in str(card.render()))
        assert "flood 499" in str(card.render())
        assert most == 1  # one notice for bob the whole time
        assert toasts == []  # and not a single toast
        assert len(rings) == 1  # one bell for the whole burst
        status = str(main.query_one("#status", Static).content)
        assert "alerts bell" in status
        # A click on the notice opens bob's conversation; it does not come back while
        # bob's conversation is open.
        await pilot.click(NoticeCard)
        await until(pilot, lambda: main.current == bob.peer_id)
        await until(pilot, lambda: tray.notices == {})
        bob.send_message("alice", "one more")
        await until(pilot, lambda: node.history(bob.peer_id)[-1].body == "one more")
        await pilot.pause(0.3)
        assert tray.notices == {} and toasts == []
        # Carol's message is a new subject: a notice, but the bell waits its turn.
        carol.send_message("alice", "hi from carol")
        await until(pilot, lambda: f"msg:{carol.peer_id}" in tray.notices)
        assert len(rings) <= 2


async def test_notice_tray_updates_in_place(tmp_path: Path) -> None:
    app = app_for(make_home(tmp_path, "alice"))
    async with app.run_test(size=(80, 24)) as pilot:
        main = await main_screen(pilot)
        tray: NoticeTray = main.notices
        assert tray.post("msg:x", "bob", "one")
        assert not tray.post("msg:x", "bob", "two")
        for n in range(5):
            tray.post(f"offer:{n}", "File offer", f"offer {n}")
        await until(pilot, lambda: len(tray.query(NoticeCard)) == 3)
        assert "+3 more" in str(tray.query_one(".notices-more", Static).content)
        tray.drop_where(lambda n: n.key.startswith("offer:"))
        await until(pilot, lambda: len(tray.query(NoticeCard)) == 1)
        assert "2 new" in str(tray.query_one(NoticeCard).render())
