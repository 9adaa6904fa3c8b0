"""Command line: argument parsing and printing, nothing else.

Every command goes through ``rpc.call`` on a node: the running one for this home
(over its control socket) or one opened here for the duration of the command.
JSON output (``--json``) is a stable contract for scripts and tests.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from pathlib import Path

from p2pchat import __version__
from p2pchat.config import (
    BOOTSTRAP_ENV,
    NEW_PASSPHRASE_ENV,
    PASSPHRASE_ENV,
    NodeLock,
    Paths,
    load_settings,
    resolve_home,
    save_settings,
)
from p2pchat.net.control_client import CALL_TIMEOUT, BlockingControlClient, ControlError

# ``typing`` only for the type checker (``TYPE_CHECKING`` is True for it alone): an
# interpreter that has not loaded it spends several milliseconds on it, a large part
# of what a short command costs (docs/performance.md, "CLI start-up").
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Coroutine, Iterator, Sequence
    from typing import Any, NoReturn, Protocol

    from p2pchat.identity import Identity
    from p2pchat.node import Node

    class Api(Protocol):
        async def call(self, op: str, args: dict[str, Any]) -> Any: ...


# A command that talks to the running node needs only the control client and JSON:
# the node, the network stack (aioquic, the DHT, zeroconf), SQLCipher and Textual load
# only where a command opens or runs a node itself (``_api`` without a running node,
# ``init``, ``daemon``, ``passphrase``, the app), so such a command starts in tens of
# milliseconds (tests/test_cli_startup.py, benchmarks/cli.py).  Nor does it load
# asyncio, the largest import left: it talks over a blocking socket and its coroutine
# runs without an event loop (``_run_loopless``).

# Exit codes are part of the scripting contract (docs/cli.md).
EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_NO_IDENTITY = 3
EXIT_PASSPHRASE = 4
EXIT_UNKNOWN_CONTACT = 5
EXIT_BAD_ID = 6
EXIT_NETWORK = 7

_KIND_EXIT = {
    "IdentityMissing": EXIT_NO_IDENTITY,
    "PassphraseRequired": EXIT_PASSPHRASE,
    "WrongPassphrase": EXIT_PASSPHRASE,
    "UnknownContact": EXIT_UNKNOWN_CONTACT,
    "AmbiguousContact": EXIT_UNKNOWN_CONTACT,
    "InvalidPeerId": EXIT_BAD_ID,
    "InvalidInvite": EXIT_BAD_ID,
    "InvalidName": EXIT_USAGE,
    "EndpointError": EXIT_NETWORK,
    "NodeAlreadyRunning": EXIT_NETWORK,
    "ControlUnavailable": EXIT_NETWORK,
    "UnknownGroup": EXIT_UNKNOWN_CONTACT,
}


class CliError(Exception):
    def __init__(self, message: str, code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.code = code


class _LocalApi:
    def __init__(self, node: Node) -> None:
        self.node = node

    async def call(self, op: str, args: dict[str, Any]) -> Any:
        from p2pchat import rpc

        return await rpc.call(self.node, op, args)


# Operations that take long on purpose: hashing files to offer, a DHT lookup, a
# passphrase change (Argon2id and a copy of the whole database), and ``send``
# waiting for delivery (its own ``wait`` plus the usual margin).
_SLOW_OPS: dict[str, float | None] = {
    "send_files": None,
    "dht_lookup": 120.0,
    "passphrase": None,
}


class _RemoteApi:
    """The running node, over a blocking socket: a command process does nothing else
    while it waits for an answer, so its ``call`` never suspends (``_run_loopless``)."""

    def __init__(self, client: BlockingControlClient) -> None:
        self.client = client

    async def call(self, op: str, args: dict[str, Any]) -> Any:
        timeout: float | None = CALL_TIMEOUT
        if op in _SLOW_OPS:
            timeout = _SLOW_OPS[op]
        elif op in ("send", "wait_transfer", "wait_delivery"):
            wait = args.get("wait", args.get("timeout", 0))
            timeout = CALL_TIMEOUT + (float(wait) if isinstance(wait, (int, float)) else 0.0)
        return self.client.call(op, args, timeout=timeout)


def _getpass(prompt: str) -> str:
    import getpass  # only where a passphrase is asked for (termios, at every start else)

    return getpass.getpass(prompt)


def _passphrase(args: argparse.Namespace) -> str | None:
    env = os.environ.get(PASSPHRASE_ENV)
    if env:
        return env
    if getattr(args, "ask_passphrase", False):
        return _getpass("Passphrase: ")
    return None


def _open_node(paths: Paths, args: argparse.Namespace, passphrase: str | None = None) -> Node:
    from p2pchat.identity import PassphraseRequired
    from p2pchat.node import Node

    passphrase = passphrase or _passphrase(args)
    try:
        return Node(paths, passphrase=passphrase)
    except PassphraseRequired as exc:
        if sys.stdin.isatty():
            return Node(paths, passphrase=_getpass("Passphrase: "))
        raise PassphraseRequired(f"{exc}: set {PASSPHRASE_ENV} or use --ask-passphrase") from None


@contextlib.asynccontextmanager
async def _api(
    paths: Paths,
    args: argparse.Namespace,
    *,
    network: bool = False,
    passphrase: str | None = None,
) -> AsyncIterator[Api]:
    """The running node if there is one, else a node opened (and maybe started) here."""
    if NodeLock(paths).is_held_elsewhere():
        client = BlockingControlClient(paths.control_socket)
        try:
            client.connect()
        except (OSError, ControlError) as exc:
            raise CliError(
                f"a node runs for {paths.home} but its control socket does not answer: {exc}",
                EXIT_NETWORK,
            ) from exc
        try:
            yield _RemoteApi(client)
        finally:
            client.close()
        return
    if getattr(args, "loopless", False):
        raise CliError(
            f"the node running for {paths.home} stopped as the command started; run it again",
            EXIT_NETWORK,
        )
    _require_identity(paths)
    node = _open_node(paths, args, passphrase)
    try:
        if network:
            from p2pchat.owner import start_owned

            # Serve the control socket too: other commands reach this short-lived node.
            await start_owned(node)
        yield _LocalApi(node)
    finally:
        await node.stop()


def _require_identity(paths: Paths) -> None:
    if not paths.identity.exists():
        from p2pchat.identity import IdentityMissing

        raise IdentityMissing(f"no identity in {paths.home}: run `p2pchat init` first")


def _safe(text: object) -> str:
    """Peers choose names, previews, bodies and file names: every human-readable line
    goes through the one rule for outside text (``p2pchat/plain.py``), so none of it
    drives the terminal.  JSON output needs none: it is ASCII with every control
    escaped."""
    from p2pchat.plain import clean  # unicodedata: not for JSON output or help

    return clean(str(text), multiline=True)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, sort_keys=True))


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    try:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))
    except (OverflowError, OSError, ValueError):
        return "?"


# ---------------------------------------------------------------- commands
def _ensure_identity(paths: Paths, args: argparse.Namespace) -> tuple[Identity, bool, str | None]:
    """Load the home's identity or create it (``init``, and ``daemon`` on a fresh home,
    like the app's first run); returns it, whether it is new, and its passphrase.

    ``--name`` and ``--listen`` are saved either way.
    """
    from p2pchat.atrest import recover
    from p2pchat.identity import (
        PassphraseRequired,
        format_address,
        load_or_create_identity,
        parse_address,
    )
    from p2pchat.names import normalise_name

    # Checked before anything is created: a refused name leaves no half-made home.
    name = getattr(args, "name", None)
    if name is not None:
        name = normalise_name(name)
    paths.ensure()
    recover(paths)  # a passphrase change cut short may have left identity.key.next
    passphrase = os.environ.get(PASSPHRASE_ENV) or None
    if passphrase is None and args.ask_passphrase:
        if paths.identity.exists():
            passphrase = _getpass("Passphrase: ") or None
        else:
            first = _getpass("New passphrase: ")
            if first != _getpass("Repeat passphrase: "):
                raise CliError("passphrases do not match")
            passphrase = first or None
    try:
        identity, created = load_or_create_identity(paths.identity, passphrase)
    except PassphraseRequired:
        if not sys.stdin.isatty():
            raise
        passphrase = _getpass("Passphrase: ")
        identity, created = load_or_create_identity(paths.identity, passphrase)
    settings = load_settings(paths)
    listen = getattr(args, "init_listen", None)
    if name is not None or listen:
        if name is not None:
            settings["name"] = name
        if listen:
            host, port = parse_address(listen)
            settings["listen"] = format_address(host, port)
        save_settings(paths, settings)
    if created:
        print(f"created a new identity in {paths.home}", file=sys.stderr)
    return identity, created, passphrase


async def cmd_init(paths: Paths, args: argparse.Namespace) -> int:
    identity, created, _ = _ensure_identity(paths, args)
    if args.json:
        _print_json({"peer_id": identity.peer_id, "created": created})
    else:
        print(identity.peer_id)
    return EXIT_OK


async def cmd_id(paths: Paths, args: argparse.Namespace) -> int:
    async with _api(paths, args) as api:
        info = await api.call("info", {"one_time": args.one_time})
    if args.json:
        _print_json(info)
    elif args.invite:
        print(info["invite"])
    else:
        print(f"peer id:      {info['peer_id']}")
        print(_safe(f"name:         {info['name']}"))
        print(f"fingerprint:  {info['fingerprint']}")
        print(f"addresses:    {', '.join(info['addresses']) or '(not listening)'}")
        print(f"invite:       {info['invite']}")
        if info.get("storage_error"):
            print(
                _safe(
                    f"warning:      the database failed ({info['storage_error']}); "
                    "incoming messages wait at their senders until it works again"
                )
            )
    return EXIT_OK


async def cmd_add(paths: Paths, args: argparse.Namespace) -> int:
    call_args = {"ref": args.code, "name": args.name, "addresses": args.addr or []}
    return await _contact_change(paths, args, "add", call_args, "added")


async def cmd_rename(paths: Paths, args: argparse.Namespace) -> int:
    call_args = {"contact": args.contact, "name": args.name}
    return await _contact_change(paths, args, "rename", call_args, "renamed to")


async def _contact_change(
    paths: Paths, args: argparse.Namespace, op: str, call_args: dict[str, Any], verb: str
) -> int:
    """add, rename, accept, remove, block, unblock, mute, unmute: one call, then the
    contact (or blocked peer) it touched: as JSON, or ``VERB NAME (PEER_ID)``."""
    async with _api(paths, args) as api:
        result = await api.call(op, call_args)
    if args.json:
        _print_json(result)
    else:
        name = result.get("name") or "?"
        print(_safe(f"{verb} {name} ({result['peer_id']})"))
    return EXIT_OK


async def cmd_remove(paths: Paths, args: argparse.Namespace) -> int:
    return await _contact_change(paths, args, "remove", {"contact": args.contact}, "removed")


async def cmd_block(paths: Paths, args: argparse.Namespace) -> int:
    return await _contact_change(paths, args, "block", {"ref": args.ref}, "blocked")


async def cmd_unblock(paths: Paths, args: argparse.Namespace) -> int:
    return await _contact_change(paths, args, "unblock", {"ref": args.ref}, "unblocked")


async def cmd_mute(paths: Paths, args: argparse.Namespace) -> int:
    muted = args.command == "mute"
    return await _contact_change(
        paths, args, "mute", {"contact": args.contact, "muted": muted},
        "muted" if muted else "unmuted",
    )  # fmt: skip


async def cmd_blocked(paths: Paths, args: argparse.Namespace) -> int:
    async with _api(paths, args) as api:
        blocked = await api.call("blocked", {})
    if args.json:
        _print_json(blocked)
        return EXIT_OK
    if not blocked:
        print("nobody is blocked")
    for b in blocked:
        print(_safe(f"{b.get('name') or '?':<20} {b['peer_id']}  since {_when(b['blocked_at'])}"))
    return EXIT_OK


async def cmd_contacts(paths: Paths, args: argparse.Namespace) -> int:
    async with _api(paths, args) as api:
        contacts = await api.call("contacts", {})
    if args.json:
        _print_json(contacts)
        return EXIT_OK
    if not contacts:
        print("no contacts yet: `p2pchat add INVITE`")
    for c in contacts:
        flags = ("online" if c["online"] else "offline") + (", verified" if c["verified"] else "")
        flags += ", muted" if c.get("muted") else ""
        flags += ", blocked" if c.get("blocked") else ""
        unread = f", {c['unread']} unread" if c["unread"] else ""
        waiting = f", messages held: {c['deferred']}" if c.get("deferred") else ""
        print(_safe(f"{c['name']:<20} {c['peer_id']}  ({flags}{unread}{waiting})"))
    return EXIT_OK


async def cmd_requests(paths: Paths, args: argparse.Namespace) -> int:
    async with _api(paths, args) as api:
        requests = await api.call("requests", {})
    if args.json:
        _print_json(requests)
        return EXIT_OK
    if not requests:
        print("no pending contact requests")
    for r in requests:
        preview = f'  "{r["preview"]}"' if r.get("preview") else ""
        line = f"{r.get('name') or '?':<20} {r['peer_id']}  from {r.get('address')}{preview}"
        print(_safe(line))
    return EXIT_OK


async def cmd_accept(paths: Paths, args: argparse.Namespace) -> int:
    call_args = {"ref": args.ref, "name": args.name}
    return await _contact_change(paths, args, "accept", call_args, "accepted")


async def _plain(
    paths: Paths, args: argparse.Namespace, op: str, call_args: dict[str, Any], done: str
) -> int:
    """Commands whose whole output is one word once the node did it."""
    async with _api(paths, args) as api:
        await api.call(op, call_args)
    print(done)
    return EXIT_OK


async def cmd_decline(paths: Paths, args: argparse.Namespace) -> int:
    return await _plain(paths, args, "decline", {"ref": args.ref}, "declined")


def _stdin_chunks(max_lines: int, max_bytes: int) -> Iterator[list[str]]:
    """Lines of stdin (without their line ends, blank ones skipped) in chunks."""
    chunk: list[str] = []
    size = 0
    for raw in sys.stdin:
        line = raw.rstrip("\r\n")
        if not line.strip():
            continue
        if chunk and (len(chunk) >= max_lines or size + len(line) > max_bytes):
            yield chunk
            chunk, size = [], 0
        chunk.append(line)
        size += len(line)
    if chunk:
        yield chunk


# What one ``send_many`` call carries: at most ``rpc.MAX_BATCH_BYTES`` (stated here too so
# that this command does not import the node to learn it), and 1,000 lines, below
# ``rpc.MAX_BATCH``: each message is two events at once for every attached view, whose
# queue (``node.EVENT_QUEUE_SIZE``, 10,000) must not overflow and drop some.
_CHUNK_LINES = 1000
_CHUNK_BYTES = 512 * 1024


async def _msg_lines(paths: Paths, args: argparse.Namespace) -> int:
    """``msg CONTACT --lines``: every line of stdin is one message, in order."""
    ids: list[str] = []
    reply: dict[str, Any] = {}
    async with _api(paths, args, network=True) as api:
        for chunk in _stdin_chunks(_CHUNK_LINES, _CHUNK_BYTES):
            try:
                reply = await api.call(
                    "send_many", {"contact": args.contact, "texts": chunk, "wait": 0}
                )
            except ControlError as exc:
                if ids:
                    exc.args = (f"{exc} (in the {len(ids) + 1}th line or the ones after it; "
                                f"the {len(ids)} before it were sent)",)  # fmt: skip
                raise
            ids.extend(reply["ids"])
        if not ids:
            raise CliError("no lines on stdin: nothing sent", EXIT_USAGE)
        if args.wait:
            waited = await api.call("wait_delivery", {"id": ids[-1], "wait": args.wait})
            reply["state"] = waited["state"]
    state = reply["state"]
    if args.json:
        _print_json({"ids": ids, "state": state, "peer_id": reply["peer_id"]})
    elif state in ("delivered", "read"):
        print(f"delivered {len(ids)} messages")
    else:
        print(
            f"queued {len(ids)} messages: not all delivered yet; they stay in the outbox and "
            "are sent in order when the contact is reachable and a node runs for this home"
        )
    return EXIT_OK


async def cmd_msg(paths: Paths, args: argparse.Namespace) -> int:
    if args.lines:
        if args.text is not None:
            raise CliError("--lines reads the messages from stdin: give no TEXT", EXIT_USAGE)
        return await _msg_lines(paths, args)
    if args.text is None:
        raise CliError("give the message as TEXT, or - to read it from stdin", EXIT_USAGE)
    text = sys.stdin.read() if args.text == "-" else args.text
    async with _api(paths, args, network=True) as api:
        reply = await api.call(
            "send",
            {"contact": args.contact, "text": text, "wait": args.wait, "reply_to": args.reply_to},
        )
        message, state = reply["message"], reply["state"]
        waiting = bool(reply.get("awaiting_acceptance")) and state not in ("delivered", "read")
        if waiting and not args.json:  # the name, for the line below
            contact = await api.call("find_contact", {"ref": message["peer_id"]})
    if args.json:
        _print_json(
            {
                "id": message["id"],
                "state": state,
                "peer_id": message["peer_id"],
                "awaiting_acceptance": waiting,
            }
        )
    elif state in ("delivered", "read"):
        print(f"delivered ({message['id']})")
    elif waiting:
        print(
            _safe(
                f"waiting for {contact['name']} to accept your request ({message['id']}): the "
                "message is queued and goes out once they do"
            )
        )
    else:
        print(
            f"queued ({message['id']}): not delivered yet; it stays in the outbox and is "
            "sent when the contact is reachable and a node runs for this home"
        )
    return EXIT_OK


async def _quoted(api: Api, messages: list[dict[str, Any]], contact: str) -> dict[str, Any]:
    """The messages that ``messages`` reply to and that are not among them."""
    shown = {m["id"] for m in messages}
    quoted: dict[str, Any] = {}
    for m in messages:
        ref = m.get("reply_to")
        if ref and ref not in shown and ref not in quoted:
            quoted[ref] = await api.call("message", {"id": ref, "contact": contact})
    return quoted


def _print_messages(
    messages: list[dict[str, Any]],
    quoted: dict[str, Any] | None,
    *,
    names: dict[str, str] | None = None,
) -> None:
    """Conversation lines; ``quoted`` None prints no reply quotes, ``names`` (search)
    says whose conversation each line is from."""
    shown = {m["id"]: m for m in messages}
    ticks = {"queued": "…", "sent": "✓", "delivered": "✓✓", "read": "✓✓ read"}
    for m in messages:
        who = "me" if m["direction"] == "out" else "them"
        if names is not None:
            peer = names.get(m["peer_id"], m["peer_id"][:8])
            who = f"me -> {peer}" if m["direction"] == "out" else peer
        tick = f"  [{ticks.get(m['state'], m['state'])}]" if m["direction"] == "out" else ""
        ref = m.get("reply_to")
        if ref and quoted is not None:
            original = shown.get(ref) or quoted.get(ref)
            quote = _quote(original) if original else "a message not stored here"
            print(_safe(f"{'':19}  {'':>4}  ↳ reply to {quote}"))
        if m.get("deleted"):
            body, note = "(deleted)", ""
        else:
            body, note = m["body"], ("  (edited)" if m.get("edited") else "")
        print(_safe(f"{_when(m['created_at'])}  {who:>4}: {body}{tick}{note}  #{m['id'][-8:]}"))


async def cmd_history(paths: Paths, args: argparse.Namespace) -> int:
    query = {"contact": args.contact, "limit": args.limit, "before": args.before}
    async with _api(paths, args) as api:
        messages = await api.call("history", query)
        quoted = {} if args.json else await _quoted(api, messages, args.contact)
    if args.json:
        _print_json(messages)
        return EXIT_OK
    _print_messages(messages, quoted)
    return EXIT_OK


async def cmd_search(paths: Paths, args: argparse.Namespace) -> int:
    query = {"text": args.text, "contact": args.contact, "limit": args.limit}
    async with _api(paths, args) as api:
        messages = await api.call("search", query)
        contacts = [] if args.json else await api.call("contacts", {})
    if args.json:
        _print_json(messages)
        return EXIT_OK
    if not messages:
        print("no message matches")
    _print_messages(messages, None, names={c["peer_id"]: c["name"] for c in contacts})
    return EXIT_OK


def _quote(m: dict[str, Any]) -> str:
    """The quoted message on one line: who wrote it and its first words."""
    if m.get("deleted"):
        return "a deleted message"
    text = " ".join(str(m["body"]).split())
    text = text if len(text) <= 60 else text[:59] + "…"
    who = "me" if m["direction"] == "out" else "them"
    return f"{who}: {text} #{m['id'][-8:]}"


async def cmd_edit(paths: Paths, args: argparse.Namespace) -> int:
    async with _api(paths, args) as api:
        m = await api.call("edit", {"id": args.id, "text": args.text})
    if args.json:
        _print_json(m)
    else:
        print(f"edited #{m['id'][-8:]}")
    return EXIT_OK


async def cmd_delete(paths: Paths, args: argparse.Namespace) -> int:
    async with _api(paths, args) as api:
        m = await api.call("delete", {"id": args.id})
    if args.json:
        _print_json(m)
    else:
        print(f"deleted #{m['id'][-8:]} for both sides")
    return EXIT_OK


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


async def cmd_send(paths: Paths, args: argparse.Namespace) -> int:
    files = [str(Path(p).expanduser().absolute()) for p in args.paths]
    async with _api(paths, args, network=True) as api:
        t = await api.call("send_files", {"contact": args.contact, "paths": files})
        if not args.json:
            print(f"offered {len(t['files'])} file(s), {_size(t['total'])} ({t['id']})")
        state = t["state"]
        if args.wait:
            deadline = time.monotonic() + args.timeout
            last = ""
            while state not in ("done", "declined", "cancelled", "failed"):
                if time.monotonic() > deadline:
                    break
                state = await api.call("wait_transfer", {"id": t["id"], "timeout": 0.5})
                view = await api.call("transfer", {"id": t["id"]})
                if not args.json and view.get("progress"):
                    done, total = view["progress"]
                    line = f"\r{state}: {_size(done)} / {_size(total)}"
                    if line != last:
                        print(line, end="", flush=True)
                        last = line
            t = await api.call("transfer", {"id": t["id"]})
            if not args.json and last:
                print()
    if args.json:
        _print_json(t)
    elif t["state"] == "done":
        print(f"delivered and verified ({_size(t['total'])})")
    elif t["state"] in ("declined", "cancelled", "failed"):
        print(_safe(f"{t['state']}: {t.get('error') or ''}".rstrip(": ")))
    else:
        print(f"{t['state']}: the transfer continues whenever a node runs for this home")
    return EXIT_OK if t["state"] not in ("declined", "cancelled", "failed") else EXIT_ERROR


# ------------------------------------------------------------------ groups
def _group_line(g: dict[str, Any]) -> str:
    flags = [g["status"]] if g["status"] != "joined" else []
    if g.get("role") == "admin":
        flags.append("admin")
    flags.append(f"{g['members']} members, {g['online']} online")
    if g.get("unread"):
        flags.append(f"{g['unread']} unread")
    return f"{g['name']:<20} {g['group_id'][:16]}  ({', '.join(flags)})"


async def cmd_groups(paths: Paths, args: argparse.Namespace) -> int:
    async with _api(paths, args) as api:
        groups = await api.call("groups", {})
    if args.json:
        _print_json(groups)
        return EXIT_OK
    if not groups:
        print("no groups yet: `p2pchat group create NAME --member CONTACT`")
    for g in groups:
        print(_safe(_group_line(g)))
    return EXIT_OK


async def _group_call(
    paths: Paths, args: argparse.Namespace, op: str, call_args: dict[str, Any], done: str
) -> int:
    """Group commands that print the group afterwards (or its JSON)."""
    async with _api(paths, args, network=True) as api:
        view = await api.call(op, call_args)
    if getattr(args, "json", False):
        _print_json(view)
    elif view is None:
        print(done)
    else:
        print(_safe(f"{done}: {_group_line(view)}"))
    return EXIT_OK


async def cmd_group_create(paths: Paths, args: argparse.Namespace) -> int:
    call = {"name": args.name, "members": args.member or []}
    return await _group_call(paths, args, "group_create", call, "created")


async def cmd_group_add(paths: Paths, args: argparse.Namespace) -> int:
    call = {"group": args.group, "contact": args.contact, "admin": args.admin}
    return await _group_call(paths, args, "group_add", call, "added (invited)")


async def cmd_group_remove(paths: Paths, args: argparse.Namespace) -> int:
    call = {"group": args.group, "member": args.member}
    return await _group_call(paths, args, "group_remove", call, "removed")


async def cmd_group_promote(paths: Paths, args: argparse.Namespace) -> int:
    call = {"group": args.group, "member": args.member}
    return await _group_call(paths, args, "group_promote", call, "promoted")


async def cmd_group_rename(paths: Paths, args: argparse.Namespace) -> int:
    call = {"group": args.group, "name": args.name}
    return await _group_call(paths, args, "group_rename", call, "renamed")


async def cmd_group_leave(paths: Paths, args: argparse.Namespace) -> int:
    return await _group_call(paths, args, "group_leave", {"group": args.group}, "left")


async def cmd_group_accept(paths: Paths, args: argparse.Namespace) -> int:
    return await _group_call(paths, args, "group_accept", {"group": args.group}, "joined")


async def cmd_group_decline(paths: Paths, args: argparse.Namespace) -> int:
    return await _group_call(paths, args, "group_decline", {"group": args.group}, "declined")


async def cmd_group_members(paths: Paths, args: argparse.Namespace) -> int:
    async with _api(paths, args) as api:
        members = await api.call("group_members", {"group": args.group})
    if args.json:
        _print_json(members)
        return EXIT_OK
    for m in members:
        flags = [m["role"]]
        flags.append("you" if m["is_me"] else ("online" if m["online"] else "offline"))
        if not m["is_me"] and not m["is_contact"]:
            flags.append("not a contact")
        print(_safe(f"{m['name']:<20} {m['peer_id']}  ({', '.join(flags)})"))
    return EXIT_OK


async def cmd_group_msg(paths: Paths, args: argparse.Namespace) -> int:
    async with _api(paths, args, network=True) as api:
        reply = await api.call(
            "group_msg", {"group": args.group, "text": args.text, "wait": args.wait}
        )
    message = reply["message"]
    if args.json:
        _print_json(reply)
    elif reply["delivered"] > 1:
        held = f"{reply['delivered']} of {reply['members']} members"
        print(f"held by {held} ({message['message_id']})")
    else:
        print(
            f"stored ({message['message_id']}): no other member has it yet; members get it "
            "when a node runs for this home and meets one of them, or from each other"
        )
    return EXIT_OK


async def cmd_group_history(paths: Paths, args: argparse.Namespace) -> int:
    async with _api(paths, args) as api:
        messages = await api.call("group_history", {"group": args.group, "limit": args.limit})
    if args.json:
        _print_json(messages)
        return EXIT_OK
    for m in messages:
        if m["kind"] == "text":
            body = m["text"]
        elif m["kind"] == "files":
            names = ", ".join(f"{p} ({_size(n)})" for p, n in m["files"])
            body = f"[files] {names}"
            if m["transfer_id"]:
                body += f"  (transfer {m['transfer_id']})"
        else:
            body = f"[a {m['kind']} message this version cannot show]"
        tick = f"  [{m['delivered']}/{m['members']}]" if m["mine"] else ""
        who = "me" if m["mine"] else m["author_name"]
        print(_safe(f"{_when(m['sent_at'])}  {who:>10}: {body}{tick}"))
    return EXIT_OK


async def cmd_group_send(paths: Paths, args: argparse.Namespace) -> int:
    files = [str(Path(p).expanduser().absolute()) for p in args.paths]
    async with _api(paths, args, network=True) as api:
        reply = await api.call("group_send", {"group": args.group, "paths": files})
    if args.json:
        _print_json(reply)
    else:
        count = len(reply["message"]["files"])
        print(
            f"offered {count} file(s) to {len(reply['transfers'])} member(s); each accepts "
            "its own transfer (`p2pchat transfers`)"
        )
    return EXIT_OK


async def cmd_transfers(paths: Paths, args: argparse.Namespace) -> int:
    query = {"limit": args.limit, "before": args.before}
    async with _api(paths, args) as api:
        # Offers waiting for an answer come whole, apart from the pages: a flood of
        # finished transfers can push them off the first page, never out of sight.
        pending = await api.call("pending_offers", {}) if args.pending or not args.before else []
        if args.pending:
            transfers, more = [], False
        else:
            transfers = await api.call("transfers", query)
            more = bool(transfers) and bool(
                await api.call("transfers", {"limit": 1, "before": transfers[-1]["id"]})
            )
    if args.json:
        _print_json(pending if args.pending else transfers)
        return EXIT_OK
    if pending:
        print(f"waiting for your answer ({len(pending)}; p2pchat accept-file / decline-file ID):")
        for t in pending:
            print(_transfer_line(t))
    elif args.pending:
        print("no offers waiting for an answer")
    if args.pending:
        return EXIT_OK
    shown = {t["id"] for t in pending}
    rest = [t for t in transfers if t["id"] not in shown]
    if pending and rest:
        print("transfers:")
    if not transfers:
        print("no more transfers" if args.before else "no transfers")
    for t in rest:
        print(_transfer_line(t))
    if more:
        print(f"older transfers: p2pchat transfers --before {transfers[-1]['id'][:12]}")
    return EXIT_OK


def _transfer_line(t: dict[str, Any]) -> str:
    arrow = "->" if t["direction"] == "out" else "<-"
    names = ", ".join(f["path"] for f in t["files"][:3]) + (" ..." if len(t["files"]) > 3 else "")
    size = _size(t["total"])
    return _safe(f"{t['id'][:8]} {arrow} {t['peer_id'][:8]}  {t['state']:<10} {size:>10}  {names}")


async def cmd_accept_file(paths: Paths, args: argparse.Namespace) -> int:
    async with _api(paths, args) as api:
        t = await api.call(
            "accept_file",
            {
                "id": args.id,
                "only": args.only,
                "folder": str(Path(args.to).absolute()) if args.to else None,
            },
        )
    print(_safe(f"accepted {t['id']}: saving to {t['folder']}"))
    return EXIT_OK


async def cmd_decline_file(paths: Paths, args: argparse.Namespace) -> int:
    return await _plain(paths, args, "decline_file", {"id": args.id}, "declined")


async def cmd_cancel_file(paths: Paths, args: argparse.Namespace) -> int:
    return await _plain(paths, args, "cancel_file", {"id": args.id}, "cancelled")


async def cmd_nearby(paths: Paths, args: argparse.Namespace) -> int:
    async with _api(paths, args) as api:
        peers = await api.call("nearby", {})
    if args.json:
        _print_json(peers)
        return EXIT_OK
    if not peers:
        print("nobody nearby (is a node running with LAN discovery on?)")
    for p in peers:
        tag = "contact" if p["is_contact"] else "not a contact: `p2pchat add ID`"
        if not p.get("verified"):
            tag += ", ID not yet proven"
        print(
            _safe(
                f"{p.get('name') or '?':<20} {p['peer_id']}  {', '.join(p['addresses'])}  ({tag})"
            )
        )
    return EXIT_OK


def _current_passphrase(args: argparse.Namespace) -> str:
    secret = os.environ.get(PASSPHRASE_ENV)
    if secret:
        return secret
    if args.ask_passphrase or sys.stdin.isatty():
        return _getpass("Current passphrase: ")
    raise CliError(
        f"the identity has a passphrase: set {PASSPHRASE_ENV} or use --ask-passphrase",
        EXIT_PASSPHRASE,
    )


def _new_passphrase() -> str:
    secret = os.environ.get(NEW_PASSPHRASE_ENV)
    if secret:
        return secret
    if not sys.stdin.isatty():
        raise CliError(f"no terminal to ask for the new passphrase: set {NEW_PASSPHRASE_ENV}")
    first = _getpass("New passphrase: ")
    if not first:
        raise CliError("the new passphrase is empty")
    if first != _getpass("Repeat new passphrase: "):
        raise CliError("passphrases do not match")
    return first


async def cmd_passphrase(paths: Paths, args: argparse.Namespace) -> int:
    """Set, change or remove the passphrase of the key file and the database together."""
    from p2pchat.atrest import recover
    from p2pchat.identity import is_sealed

    _require_identity(paths)
    recover(paths)
    sealed = is_sealed(paths.identity)
    if args.action == "set" and sealed:
        raise CliError("the identity already has a passphrase: `p2pchat passphrase change`")
    if args.action != "set" and not sealed:
        raise CliError("the identity has no passphrase: `p2pchat passphrase set`")
    old = _current_passphrase(args) if sealed else None
    new = None if args.action == "remove" else _new_passphrase()
    async with _api(paths, args, passphrase=old) as api:
        result = await api.call("passphrase", {"old": old, "new": new})
    if args.json:
        _print_json(result)
    else:
        print(result["summary"])
    return EXIT_OK


def _require_running(paths: Paths) -> None:
    """The DHT lives only in a running node; a node opened just for one command has none."""
    if not NodeLock(paths).is_held_elsewhere():
        raise CliError(
            f"no node runs for {paths.home}: start one with `p2pchat daemon`", EXIT_NETWORK
        )


async def cmd_net(paths: Paths, args: argparse.Namespace) -> int:
    """The running node's network status: how it is reachable (NAT kind, reflexive
    addresses, rendezvous nodes; docs/nat.md) and the counters of every budget
    (docs/threat-model.md, "Budgets"): what peers were refused, and why."""
    _require_running(paths)
    async with _api(paths, args) as api:
        status = await api.call("network_status", {})
    if args.json:
        _print_json(status)
        return EXIT_OK
    print(f"addresses:  {', '.join(status.get('addresses') or []) or '(not listening)'}")
    print(f"online:     {status.get('online')} contact(s), {status.get('nearby')} nearby")
    reach = status.get("reachability")
    if isinstance(reach, dict):
        regs = [
            f"{r['address']} ({(r['peer_id'] or '?')[:8]}): {r['state']}"
            + (f", sees us at {r['observed']}" if r["observed"] else "")
            + (f", {r['reason']}" if r["reason"] else "")
            for r in reach["registrations"]
        ]
        served = reach["rendezvous"]
        print(f"nat:        {reach['nat']}")
        print(f"reflexive:  {', '.join(reach['reflexive']) or '-'}")
        print(_safe(f"registered: {'; '.join(regs) or '-'}"))
        print(
            f"rendezvous: for {served.get('registrations', 0)} nodes"
            + (" (relay: anyone)" if reach["relay"] else " (contacts only)")
            + f", {served.get('connect_forwarded', 0)} connect requests forwarded"
        )
        relaying = reach.get("relaying")
        if isinstance(relaying, dict):
            serving = relaying["serving"]
            over = sum(v for k, v in serving.items() if k.startswith("dropped_"))
            ours = ", ".join(
                f"{c['peer_id'][:8]} via {(c['relay'] or '?')[:8]}" for c in relaying["channels"]
            )
            print(
                f"relaying:   {serving['channels']} channels for others, "
                f"{_size(serving['forwarded_bytes'])} forwarded, {over} datagrams dropped; "
                f"ours: {ours or '-'}"
            )
    skip = {"reachability"}
    for section in sorted(k for k, v in status.items() if isinstance(v, dict) and k not in skip):
        values = status[section]
        flat = ", ".join(
            f"{key} {value}" for key, value in sorted(values.items()) if value not in (None, {})
        )
        print(_safe(f"{section + ':':<11} {flat}"))
    if isinstance(reach, dict) and reach["punch"]:
        flat = ", ".join(f"{k} {v}" for k, v in sorted(reach["punch"].items()))
        print(_safe(f"{'punch:':<11} {flat}"))
    return EXIT_OK


async def cmd_dht_status(paths: Paths, args: argparse.Namespace) -> int:
    _require_running(paths)
    async with _api(paths, args) as api:
        st = await api.call("dht_status", {})
    if args.json:
        _print_json(st)
        return EXIT_OK
    if not st["reflexive"]:
        seen = sorted(st["observations"].items())
        votes = ", ".join(f"{o} ({v['source']}) says {v['address']}" for o, v in seen)
        external = f"unknown ({votes or 'nobody has seen us yet'})"
    else:
        external = ", ".join(
            f"{a['address']} ({a['observers']} observers{', trusted' if a['trusted'] else ''})"
            for a in st["reflexive"]
        )
    rec = st["record"]
    if rec["published_at"] is not None:
        record = (
            f"seq {rec['seq']}, stored on {rec['stored']} nodes at {_when(rec['published_at'])}: "
            + (", ".join(rec["addresses"]) or "-")
        )
    else:
        record = "not published yet" + (f" (last try: seq {rec['seq']})" if rec["seq"] else "")
    print(f"node id:        {st['node_id']}")
    print(f"mode:           {st['mode']}")
    print(f"routing table:  {st['table_size']} nodes ({st['table_confirmed']} confirmed)")
    print(f"external addr:  {external}")
    print(f"nat:            {st['nat']}")
    print(f"local addrs:    {', '.join(st['local_addresses']) or '-'}")
    rendezvous = ", ".join(f"{r['address']} ({r['peer_id'][:8]})" for r in st["rendezvous"])
    print(f"rendezvous:     {rendezvous or '-'}")
    print(f"bootstrap:      {', '.join(st['bootstrap']) or '(none: first node of a swarm)'}")
    print(f"peer record:    {record}")
    return EXIT_OK


async def cmd_dht_lookup(paths: Paths, args: argparse.Namespace) -> int:
    _require_running(paths)
    async with _api(paths, args) as api:
        found = await api.call("dht_lookup", {"peer": args.peer})
    if args.json:
        _print_json(found)
    elif not found["addresses"]:
        print("no record found in the DHT")
        return EXIT_ERROR
    else:
        for address in found["addresses"]:
            print(address)
    return EXIT_OK


def _daemon_options(args: argparse.Namespace) -> list[str]:
    """The daemon's own options again, for the detached copy of this command."""
    out: list[str] = []
    if args.listen:
        out += ["--listen", args.listen]
    if args.no_mdns:
        out.append("--no-mdns")
    for interface in args.mdns_interface or ():
        out += ["--mdns-interface", interface]
    if args.mdns_hidden:
        out.append("--mdns-hidden")
    if args.mdns_share_name:
        out.append("--mdns-share-name")
    if args.no_dht:
        out.append("--no-dht")
    for entry in args.bootstrap or ():
        out += ["--bootstrap", entry]
    for entry in args.rendezvous:
        out += ["--rendezvous", entry]
    if args.relay:
        out.append("--relay")
    for flag, _field, _what in RELAY_BUDGET_FLAGS:
        value = getattr(args, flag[2:].replace("-", "_"))
        if value is not None:
            out += [flag, str(value)]
    if args.downloads:
        out += ["--downloads", str(Path(args.downloads).expanduser().absolute())]
    for ref in args.accept_files_from:
        out += ["--accept-files-from", ref]
    return out


#: The relay's budgets on the command line (docs/self-hosting.md): flag, the
#: ``RelayLimits`` field, help.  Sizes like 512K, 2M, 10G; rates are per second
#: (positive), quotas per day (0 turns a quota off).
RELAY_BUDGET_FLAGS = (
    ("--relay-rate", "total_rate", "bytes per second relayed in all (default 16M)"),
    ("--relay-peer-rate", "peer_rate", "bytes per second relayed for one node (default 2M)"),
    ("--relay-quota", "total_per_day", "bytes relayed per day in all (default 0: no limit)"),
    ("--relay-peer-quota", "peer_per_day", "bytes relayed per day for one node (default 4G)"),
)


def _size_arg(text: str) -> int:
    from p2pchat.config import parse_size

    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _relay_limits(args: argparse.Namespace) -> Any:
    """``RelayLimits`` from the budget flags (the defaults where none is given); a
    rate's burst is two seconds' worth, and one source IP may use twice a node's rate."""
    from p2pchat.core.relay import RelayLimits

    fields: dict[str, float] = {}
    for flag, field, _what in RELAY_BUDGET_FLAGS:
        value = getattr(args, flag[2:].replace("-", "_"))
        if value is None:
            continue
        if field.endswith("_rate") and value <= 0:
            raise CliError(f"{flag} must be more than 0", EXIT_USAGE)
        fields[field] = float(value)
    for rate, burst in (("total_rate", "total_burst"), ("peer_rate", "peer_burst")):
        if rate in fields:
            fields[burst] = 2 * fields[rate]
    if "peer_rate" in fields:
        fields["ip_rate"] = 2 * fields["peer_rate"]
        fields["ip_burst"] = 4 * fields["peer_rate"]
    return RelayLimits(**fields)  # type: ignore[arg-type]


def _listening(info: dict[str, Any]) -> str:
    return f"p2pchat {info['peer_id']} listening on {', '.join(info['addresses'])}"


async def cmd_daemon(paths: Paths, args: argparse.Namespace) -> int:
    import asyncio
    import signal

    from p2pchat.config import NodeAlreadyRunning
    from p2pchat.net.dht import DhtOptions
    from p2pchat.net.mdns import MdnsOptions
    from p2pchat.node import Node
    from p2pchat.owner import spawn_daemon, start_owned

    _identity, _created, passphrase = _ensure_identity(paths, args)
    if NodeLock(paths).is_held_elsewhere():
        raise NodeAlreadyRunning(f"a p2pchat node is already running for {paths.home}")
    if args.detach:
        pid = await spawn_daemon(paths, _daemon_options(args), passphrase=passphrase)
        async with _api(paths, args) as api:
            info = await api.call("info", {})
        print(f"{_listening(info)} (pid {pid})", flush=True)
        return EXIT_OK
    node = Node(paths, passphrase=passphrase)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        mdns: MdnsOptions | None = None
        if not args.no_mdns:
            mdns = MdnsOptions(
                interfaces=tuple(args.mdns_interface or ()),
                hidden=args.mdns_hidden,
                share_name=args.mdns_share_name,
            )
        await start_owned(
            node,
            shutdown=stop.set,
            listen=args.listen,
            mdns=mdns,
            downloads=Path(args.downloads) if args.downloads else None,
            accept_files_from=args.accept_files_from,
            dht=None if args.no_dht else DhtOptions.configured(args.bootstrap),
            relay=args.relay,
            rendezvous=args.rendezvous,
            relay_limits=_relay_limits(args),
        )
        print(_listening(node.info()), flush=True)
        await stop.wait()
    finally:
        await node.stop()
    print("stopped", flush=True)
    return EXIT_OK


async def cmd_stop(paths: Paths, args: argparse.Namespace) -> int:
    """Ask the daemon that owns this home to stop, and wait until it has."""
    lock = NodeLock(paths)
    if not lock.is_held_elsewhere():
        raise CliError(f"no node runs for {paths.home}", EXIT_NETWORK)
    async with _api(paths, args) as api:
        await api.call("shutdown", {})
    deadline = time.monotonic() + args.timeout
    while lock.is_held_elsewhere():
        if time.monotonic() > deadline:
            raise CliError(f"the node did not stop within {args.timeout:g} s", EXIT_NETWORK)
        # Run without an event loop (``_run_loopless``): nothing else runs here.
        time.sleep(0.05)  # noqa: ASYNC251
    print("stopped")
    return EXIT_OK


# ------------------------------------------------------------------ parser
# Building the parser of every command (some 45 of them) is a large part of what a
# short command costs at start-up (docs/performance.md, "CLI start-up"): a run that
# plainly names its command builds only that one.  Every top-level command, and the
# top-level options that take a value or none (``build_parser``):
COMMANDS = frozenset({
    "init", "id", "add", "rename", "remove", "block", "unblock", "blocked", "mute",
    "unmute", "contacts", "requests", "accept", "decline", "msg", "edit", "delete",
    "history", "search", "send", "transfers", "accept-file", "decline-file",
    "cancel-file", "nearby", "net", "dht", "passphrase", "daemon", "groups", "group",
    "stop",
})  # fmt: skip
_VALUED_OPTIONS = ("--home", "--listen", "--bootstrap")
_FLAG_OPTIONS = ("--version", "--ask-passphrase", "--verbose", "--no-mdns", "--no-dht")


# ``_named_command`` for a run that names no command (help, the version, the app):
# the commands are listed in the help but none of them is built.
NO_COMMAND = ""


def _named_command(argv: Sequence[str]) -> str | None:
    """The command ``argv`` names, if nothing before it but top-level options spelled
    out in full, or ``NO_COMMAND`` if it holds nothing else (``--help`` included);
    None when unsure (abbreviations, anything unknown, help asked before a command):
    the whole parser decides then."""
    args = iter(argv)
    helped = False
    for arg in args:
        if arg in _VALUED_OPTIONS:
            next(args, None)
        elif arg in ("-h", "--help"):
            helped = True
        elif not (
            arg in _FLAG_OPTIONS
            or arg.partition("=")[0] in _VALUED_OPTIONS
            or (len(arg) > 1 and arg[0] == "-" and set(arg[1:]) == {"v"})
        ):
            return arg if arg in COMMANDS and not helped else None
    return NO_COMMAND


class _Rebuild(Exception):
    """The parser of one command found an error: the whole parser reports it."""


def _terminal_columns() -> int:
    """``shutil.get_terminal_size().columns``, the same steps without importing
    ``shutil`` (see ``_Formatter``): ``$COLUMNS``, else the terminal's, else 80."""
    try:
        columns = int(os.environ["COLUMNS"])
    except (KeyError, ValueError):
        columns = 0
    if columns > 0:
        return columns
    columns = 0
    stdout = sys.__stdout__  # None without one
    if stdout is not None:
        with contextlib.suppress(ValueError, OSError):  # not a terminal, or closed
            columns = os.get_terminal_size(stdout.fileno()).columns
    return columns or 80


class _Formatter(argparse.HelpFormatter):
    """argparse's help formatter, given the terminal's width.  Left to find it, it
    imports ``shutil`` (and with it zlib, bz2 and lzma) as the first parser is built,
    several milliseconds of a short command's start-up on an interpreter that has not
    loaded them; the help is the same."""

    def __init__(
        self,
        prog: str,
        indent_increment: int = 2,
        max_help_position: int = 24,
        width: int | None = None,
    ) -> None:
        if width is None:
            width = _terminal_columns() - 2
        super().__init__(prog, indent_increment, max_help_position, width)


class _Parser(argparse.ArgumentParser):
    """The parser of the command line and of each command (``add_subparsers`` makes
    the commands' parsers of the same class): with ``_Formatter``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _Formatter)
        super().__init__(*args, **kwargs)


class _PartialParser(_Parser):
    """Knows only the command a run named (``build_parser(only=...)``).  It reports no
    error itself: the whole parser parses again and says what is wrong in its own
    words (its usage lists every command)."""

    def error(self, message: str) -> NoReturn:
        raise _Rebuild(message)


class _Commands:
    """Adds the commands to the parser: each one, or only the one a run named (the
    others get a parser that drops what is added to it), or, for a run that names
    none, each one's name and help for the listing but nothing of what it takes."""

    def __init__(self, sub: Any, only: str | None) -> None:
        self.sub = sub
        self.only = only
        self._dropped = _Dropped()

    def add_parser(self, name: str, **kwargs: Any) -> argparse.ArgumentParser:
        if name not in COMMANDS:
            raise AssertionError(f"{name} is missing from cli.COMMANDS")
        if self.only in (None, NO_COMMAND, name):  # with NO_COMMAND: a _Dropped, listed
            parser: argparse.ArgumentParser = self.sub.add_parser(name, **kwargs)
            return parser
        return self._dropped


class _Dropped(argparse.ArgumentParser):
    """The parser of a command this run does not use: what is added goes nowhere.

    Nothing of ``ArgumentParser`` is set up: nothing parses with it, and setting up
    a real parser (argparse looking for translations of its own strings) is most of
    what building one costs."""

    def __init__(self, **kwargs: Any) -> None:
        pass

    def add_argument(self, *args: Any, **kwargs: Any) -> Any:
        return None

    def set_defaults(self, **kwargs: Any) -> None:
        return None

    def add_subparsers(self, **kwargs: Any) -> Any:
        return self  # its commands are dropped too

    def add_parser(self, name: str, **kwargs: Any) -> argparse.ArgumentParser:
        return self


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The command line's parser; with ``only``, a parser that knows that one command,
    or none (``NO_COMMAND``), see ``_named_command``."""
    cls = _Parser if only is None else _PartialParser
    parser = cls(
        prog="p2pchat", description="End-to-end encrypted peer-to-peer chat and file drop."
    )
    parser.add_argument("--version", action="version", version=f"p2pchat {__version__}")
    parser.add_argument("--home", help="state folder (default: $P2PCHAT_HOME or the user data dir)")
    parser.add_argument(
        "--ask-passphrase",
        action="store_true",
        help=f"prompt for the identity passphrase (scripts: ${PASSPHRASE_ENV})",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0)
    app = parser.add_argument_group("the terminal app (p2pchat with no command)")
    app.add_argument("--listen", dest="app_listen", metavar="HOST:PORT", help="UDP address")
    app.add_argument("--no-mdns", dest="app_no_mdns", action="store_true", help="no LAN discovery")
    app.add_argument("--no-dht", dest="app_no_dht", action="store_true", help="no DHT")
    app.add_argument(
        "--bootstrap",
        dest="app_bootstrap",
        action="append",
        metavar="HOST:PORT",
        help=f"DHT bootstrap node (repeatable; also ${BOOTSTRAP_ENV})",
    )
    # A run that names no command lists the commands (help, usage) and parses none.
    if only == NO_COMMAND:
        sub: Any = parser.add_subparsers(dest="command", parser_class=_Dropped)
    else:
        sub = parser.add_subparsers(dest="command")
    commands = _Commands(sub, only)

    p = commands.add_parser("init", help="create the identity if missing and print the peer ID")
    p.add_argument("--name", help="display name shown to contacts")
    p.add_argument(
        "--listen",
        dest="init_listen",
        metavar="HOST:PORT",
        help="default UDP address for nodes of this home",
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_init)

    p = commands.add_parser("id", help="peer ID, fingerprint, invite and addresses")
    p.add_argument("--json", action="store_true")
    p.add_argument(
        "--one-time", action="store_true", help="invite with a one-time token (no manual accept)"
    )
    p.add_argument("--invite", action="store_true", help="print only the invite (for scripts)")
    p.set_defaults(func=cmd_id)

    p = commands.add_parser("add", help="add a contact from an invite or a peer ID")
    p.add_argument("code", metavar="CODE_OR_ID")
    p.add_argument("--name")
    p.add_argument("--addr", action="append", metavar="HOST:PORT", help="address hint")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_add)

    p = commands.add_parser("rename", help="change the name a contact is stored under")
    p.add_argument("contact", metavar="CONTACT")
    p.add_argument("name", metavar="NEW_NAME")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_rename)

    p = commands.add_parser(
        "remove", help="remove a contact (history stays; it may knock again: see block)"
    )
    p.add_argument("contact", metavar="CONTACT")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_remove)

    p = commands.add_parser(
        "block", help="block a contact, a requester or a peer ID: no sessions, requests, lookups"
    )
    p.add_argument("ref", metavar="CONTACT_REQUEST_OR_ID")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_block)

    p = commands.add_parser("unblock", help="take a peer off the block list")
    p.add_argument("ref", metavar="NAME_OR_ID")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_unblock)

    p = commands.add_parser("blocked", help="list blocked peers")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_blocked)

    for verb, text in (("mute", "no notifications for a contact"), ("unmute", "undo mute")):
        p = commands.add_parser(verb, help=text)
        p.add_argument("contact", metavar="CONTACT")
        p.add_argument("--json", action="store_true")
        p.set_defaults(func=cmd_mute)

    p = commands.add_parser("contacts", help="list contacts")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_contacts)

    p = commands.add_parser("requests", help="list pending contact requests")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_requests)

    p = commands.add_parser("accept", help="accept a contact request")
    p.add_argument("ref", metavar="ID_OR_NAME")
    p.add_argument("--name", help="name to store the contact under")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_accept)

    p = commands.add_parser("decline", help="decline a contact request")
    p.add_argument("ref", metavar="ID_OR_NAME")
    p.set_defaults(func=cmd_decline)

    p = commands.add_parser(
        "msg", help="send a message (through the running node, or a short-lived one)"
    )
    p.add_argument("contact", metavar="CONTACT")
    p.add_argument("text", metavar="TEXT", nargs="?", help="the message; - reads it from stdin")
    p.add_argument(
        "--lines",
        action="store_true",
        help="send each line of stdin as its own message, in order (blank lines skipped)",
    )
    p.add_argument(
        "--wait", type=float, default=10.0, help="seconds to wait for delivery (default 10)"
    )
    p.add_argument(
        "--reply-to",
        metavar="MESSAGE_ID",
        help="answer this message (its id, or its end after # in `history`)",
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_msg)

    p = commands.add_parser("edit", help="change the text of one of your messages (both sides)")
    p.add_argument("id", metavar="MESSAGE_ID", help="as `history` shows it after #")
    p.add_argument("text", metavar="TEXT")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_edit)

    p = commands.add_parser("delete", help="delete one of your messages for both sides")
    p.add_argument("id", metavar="MESSAGE_ID")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_delete)

    p = commands.add_parser("history", help="show a conversation")
    p.add_argument("contact", metavar="CONTACT")
    p.add_argument("--limit", type=_positive_int, metavar="N", help="the newest N messages")
    p.add_argument(
        "--before", metavar="ID", help="the messages before this one (page back with --limit)"
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_history)

    p = commands.add_parser("search", help="find messages containing words (newest first)")
    p.add_argument("text", metavar="TEXT", help="every word must appear; the last may be cut")
    p.add_argument("--contact", metavar="CONTACT", help="only this conversation")
    p.add_argument(
        "--limit", type=_positive_int, default=50, metavar="N", help="at most N (max 500)"
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_search)

    p = commands.add_parser("send", help="offer files or folders to a contact")
    p.add_argument("contact", metavar="CONTACT")
    p.add_argument("paths", metavar="PATH", nargs="+")
    p.add_argument("--wait", action="store_true", help="block until delivered, with progress")
    p.add_argument("--timeout", type=float, default=24 * 3600, help="with --wait: give up after")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_send)

    p = commands.add_parser("transfers", help="list file transfers, newest first, one page")
    p.add_argument(
        "--limit", type=_positive_int, default=50, metavar="N", help="at most N (max 500)"
    )
    p.add_argument("--before", metavar="ID", help="the page after the transfer ID")
    p.add_argument(
        "--pending", action="store_true", help="only the offers waiting for your answer, all"
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_transfers)

    p = commands.add_parser("accept-file", help="accept an incoming file offer")
    p.add_argument("id", metavar="TRANSFER_ID")
    p.add_argument("--only", type=int, action="append", metavar="INDEX", help="only these files")
    p.add_argument("--to", metavar="DIR", help="save into DIR instead of the download folder")
    p.set_defaults(func=cmd_accept_file)

    p = commands.add_parser("decline-file", help="decline an incoming file offer")
    p.add_argument("id", metavar="TRANSFER_ID")
    p.set_defaults(func=cmd_decline_file)

    p = commands.add_parser("cancel-file", help="cancel a transfer (either side)")
    p.add_argument("id", metavar="TRANSFER_ID")
    p.set_defaults(func=cmd_cancel_file)

    p = commands.add_parser("nearby", help="peers seen on the LAN (mDNS)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_nearby)

    p = commands.add_parser(
        "net", help="the running node's reachability (NAT, rendezvous) and budget counters"
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_net)

    p = commands.add_parser("dht", help="the running node's DHT: status and record lookups")
    dht = p.add_subparsers(dest="dht_command", required=True, metavar="{status,lookup}")
    q = dht.add_parser("status", help="routing table, external address, published record")
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=cmd_dht_status)
    q = dht.add_parser("lookup", help="the addresses in a peer's signed DHT record")
    q.add_argument("peer", metavar="ID_OR_CONTACT")
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=cmd_dht_lookup)

    p = commands.add_parser(
        "passphrase",
        help="set, change or remove the passphrase that encrypts the key and the history",
    )
    p.add_argument("action", choices=("set", "change", "remove"))
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_passphrase)

    p = commands.add_parser(
        "daemon",
        help="run the node headless until SIGINT/SIGTERM or `p2pchat stop` "
        "(creates the identity on first use)",
    )
    p.add_argument("--listen", metavar="HOST:PORT", help="UDP address to listen on")
    p.add_argument("--name", help="display name (saved; used when creating the identity)")
    p.add_argument(
        "--detach",
        action="store_true",
        help="run in the background; return once the node answers (output in daemon.log, "
        "none for an identity with a passphrase)",
    )
    p.add_argument("--no-mdns", action="store_true", help="no LAN discovery")
    p.add_argument(
        "--mdns-interface",
        action="append",
        metavar="IFACE_OR_ADDR",
        help="LAN discovery only on this interface or local address (repeatable)",
    )
    p.add_argument(
        "--mdns-hidden",
        action="store_true",
        help="find peers on the LAN without announcing this node",
    )
    p.add_argument(
        "--mdns-share-name",
        action="store_true",
        help="include the display name in LAN announcements (off: only ID and port)",
    )
    p.add_argument("--no-dht", action="store_true", help="no DHT participation")
    p.add_argument(
        "--bootstrap",
        action="append",
        metavar="HOST:PORT",
        help=f"DHT bootstrap node (repeatable; also ${BOOTSTRAP_ENV})",
    )
    p.add_argument(
        "--rendezvous",
        action="append",
        default=[],
        metavar="PEER@HOST:PORT",
        help="a reachable node to register with when behind a NAT (repeatable; the DHT "
        "bootstrap nodes and reachable contacts are tried too)",
    )
    p.add_argument(
        "--relay",
        action="store_true",
        help="be a rendezvous and relay for anyone, not only for contacts (a public node)",
    )
    for flag, _field, what in RELAY_BUDGET_FLAGS:
        p.add_argument(flag, metavar="SIZE", type=_size_arg, help=what)
    p.add_argument("--downloads", metavar="DIR", help="where received files go")
    p.add_argument(
        "--accept-files-from",
        action="append",
        default=[],
        metavar="CONTACT|contacts",
        help="accept file offers from this contact (or all contacts) without asking",
    )
    p.set_defaults(func=cmd_daemon)

    p = commands.add_parser("groups", help="list groups (joined, invited, left)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_groups)

    p = commands.add_parser("group", help="group chat: create, invite, talk, share files")
    grp = p.add_subparsers(dest="group_command", required=True, metavar="COMMAND")
    q = grp.add_parser("create", help="create a group, inviting contacts")
    q.add_argument("name", metavar="NAME")
    q.add_argument("--member", action="append", metavar="CONTACT", help="invite (repeatable)")
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=cmd_group_create)
    q = grp.add_parser("add", help="invite a contact (admins)")
    q.add_argument("group", metavar="GROUP")
    q.add_argument("contact", metavar="CONTACT")
    q.add_argument("--admin", action="store_true", help="as an admin")
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=cmd_group_add)
    q = grp.add_parser("remove", help="remove a member (admins)")
    q.add_argument("group", metavar="GROUP")
    q.add_argument("member", metavar="MEMBER")
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=cmd_group_remove)
    q = grp.add_parser("promote", help="make a member an admin (admins)")
    q.add_argument("group", metavar="GROUP")
    q.add_argument("member", metavar="MEMBER")
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=cmd_group_promote)
    q = grp.add_parser("rename", help="rename a group (admins)")
    q.add_argument("group", metavar="GROUP")
    q.add_argument("name", metavar="NAME")
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=cmd_group_rename)
    q = grp.add_parser("leave", help="leave a group (its history stays)")
    q.add_argument("group", metavar="GROUP")
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=cmd_group_leave)
    q = grp.add_parser("accept", help="accept a group invitation")
    q.add_argument("group", metavar="GROUP")
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=cmd_group_accept)
    q = grp.add_parser("decline", help="decline a group invitation")
    q.add_argument("group", metavar="GROUP")
    q.set_defaults(func=cmd_group_decline)
    q = grp.add_parser("members", help="list a group's members")
    q.add_argument("group", metavar="GROUP")
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=cmd_group_members)
    q = grp.add_parser("msg", help="post a message to a group")
    q.add_argument("group", metavar="GROUP")
    q.add_argument("text", metavar="TEXT")
    q.add_argument(
        "--wait", type=float, default=10.0,
        help="seconds to wait for another member to hold it (default 10)",
    )
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=cmd_group_msg)
    q = grp.add_parser("history", help="show a group's messages")
    q.add_argument("group", metavar="GROUP")
    q.add_argument("--limit", type=int)
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=cmd_group_history)
    q = grp.add_parser("send", help="offer files or folders to every member")
    q.add_argument("group", metavar="GROUP")
    q.add_argument("paths", metavar="PATH", nargs="+")
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=cmd_group_send)

    p = commands.add_parser("stop", help="stop the daemon running for this home")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds to wait (default 30)")
    p.set_defaults(func=cmd_stop)
    return parser


def _run_app(paths: Paths, args: argparse.Namespace) -> int:
    """No command: the terminal app on this home's node."""
    from p2pchat import ui  # Textual loads only when the app is wanted
    from p2pchat.net.dht import DhtOptions
    from p2pchat.net.mdns import MdnsOptions

    passphrase = os.environ.get(PASSPHRASE_ENV) or None
    if passphrase is None and args.ask_passphrase and paths.identity.exists():
        passphrase = _getpass("Passphrase: ")
    mdns = None if args.app_no_mdns else MdnsOptions(interfaces=(), hidden=False, share_name=False)
    dht = None if args.app_no_dht else DhtOptions.configured(args.app_bootstrap)
    return ui.run(paths, passphrase=passphrase, listen=args.app_listen, mdns=mdns, dht=dht)


# The errors a command reports in one line with an exit code instead of a traceback,
# by module.  Named rather than imported, so that printing an error loads nothing: an
# exception whose module was never imported cannot have been raised.
_REPORTED: dict[str, tuple[str, ...]] = {
    "p2pchat.config": ("ConfigError", "NodeAlreadyRunning"),
    "p2pchat.identity": ("IdentityError", "InvalidInvite", "InvalidPeerId", "WrongPassphrase"),
    "p2pchat.names": ("InvalidName",),
    "p2pchat.store": ("UnknownContact", "AmbiguousContact", "StoreError"),
    "p2pchat.node": ("NodeError",),
    "p2pchat.net.endpoint": ("EndpointError",),
    "p2pchat.net.transfers": ("TransferError",),
    "p2pchat.net.groups": ("GroupError",),
}


def _reported(exc: Exception) -> bool:
    if isinstance(exc, (CliError, ControlError, ValueError)):
        return True
    for module_name, names in _REPORTED.items():
        module = sys.modules.get(module_name)
        if module is not None and isinstance(exc, tuple(getattr(module, n) for n in names)):
            return True
    return False


def _exit_code(exc: BaseException) -> int:
    if isinstance(exc, CliError):
        return exc.code
    if isinstance(exc, ControlError):
        return _KIND_EXIT.get(exc.kind, EXIT_ERROR)
    return _KIND_EXIT.get(type(exc).__name__, EXIT_ERROR)


def _run_loopless(command: Coroutine[Any, Any, int]) -> int:
    """Run a command that only talks to the running node, without an event loop.

    Its coroutine never suspends: every call is a blocking round trip on the control
    socket (``_RemoteApi``), so it runs to the end in one step.  Creating and closing
    an event loop, and importing asyncio, would cost a short command more than all
    the rest of its work (docs/performance.md, "CLI start-up").
    """
    try:
        command.send(None)
    except StopIteration as done:
        return int(done.value)
    command.close()
    raise RuntimeError("a command for the running node waited on an event loop it has not got")


def _logging(verbose: int) -> None:
    import logging

    logging.basicConfig(
        level=logging.WARNING - 10 * min(verbose, 2),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def _end(code: int | str | None) -> NoReturn:
    """End a run that did nothing but parse, talk to the running node and print.

    The interpreter's own shutdown (tearing down every module, collecting what is
    left) costs a short command about as much as its work (docs/performance.md,
    "CLI start-up"), and such a run leaves nothing that needs it: no thread, no open
    file but the standard streams.  So the exit handlers run and the streams are
    flushed here, and the process ends at once.  A stream that cannot be written (a
    reader that went away) is left to the interpreter, which reports it as always.
    """
    if not isinstance(code, int) or (
        "threading" in sys.modules and sys.modules["threading"].active_count() > 1
    ):
        sys.exit(code)  # a thread to wait for first: the interpreter's way
    import atexit

    atexit._run_exitfuncs()  # as the interpreter would, before it flushes the streams
    try:
        for stream in (sys.stdout, sys.stderr):
            if stream is not None:
                stream.flush()
    except (OSError, ValueError):
        sys.exit(code)
    os._exit(code)


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """The command line.  Given ``argv`` (tests), the run ends with ``SystemExit``;
    without it, this is the program, and a run that only parsed or talked to the
    running node ends the process at once (``_end``)."""
    program = argv is None
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        try:
            args = build_parser(only=_named_command(argv)).parse_args(argv)
        except _Rebuild:
            args = build_parser().parse_args(argv)
    except SystemExit as exc:  # help, the version, a usage error: printed, nothing else
        if program:
            _end(exc.code)
        raise
    paths = Paths(resolve_home(args.home))
    # With a node running for this home, every command but ``daemon`` only talks to it:
    # nothing in this process logs, and nothing needs an event loop.
    if args.command is None:
        _logging(args.verbose)
        sys.exit(_run_app(paths, args))
    args.loopless = args.func is not cmd_daemon and NodeLock(paths).is_held_elsewhere()
    if not args.loopless:
        _logging(args.verbose)
    try:
        if args.loopless:
            code = _run_loopless(args.func(paths, args))
        else:
            import asyncio

            code = asyncio.run(args.func(paths, args))
    except KeyboardInterrupt:
        code = 130
    except Exception as exc:
        if not _reported(exc):
            raise
        print(_safe(f"p2pchat: error: {exc}"), file=sys.stderr)
        code = _exit_code(exc)
    if program and args.loopless:
        _end(code)
    sys.exit(code)
