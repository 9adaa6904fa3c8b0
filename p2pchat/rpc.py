"""The operations the CLI may ask of a node, in one table.

The same table serves a running node through its control socket and a node the
CLI opens itself when none runs, so both paths give identical, stable JSON.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from p2pchat.core.events import NodeEvent
from p2pchat.node import SEARCH_LIMIT, TRANSFER_PAGE_SIZE, Node
from p2pchat.store import Message, Transfer

Op = Callable[[Node, dict[str, Any]], Awaitable[Any]]


def to_json(value: Any) -> Any:
    """Dataclasses (store rows, views) become plain dicts; tuples become lists.

    Plain values are tested first: a page of transfers holds thousands of them.
    """
    if value is None or isinstance(value, (str, int, float)):
        return value
    if isinstance(value, dict):
        return {str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json(v) for v in value]
    if isinstance(value, bytes):
        return value.hex()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_json(getattr(value, f.name)) for f in dataclasses.fields(value)}
    return value


def _str(args: dict[str, Any], key: str, default: str | None = None) -> str:
    value = args.get(key, default)
    if not isinstance(value, str):
        raise ValueError(f"argument {key!r} must be a string")
    return value


def _opt_str(args: dict[str, Any], key: str) -> str | None:
    value = args.get(key)
    if value is not None and not isinstance(value, str):
        raise ValueError(f"argument {key!r} must be a string")
    return value


async def _info(node: Node, args: dict[str, Any]) -> Any:
    info = node.info()
    if args.get("one_time"):
        info["invite"] = node.invite(one_time=True)
    return info


async def _contacts(node: Node, args: dict[str, Any]) -> Any:
    return node.contacts()


async def _requests(node: Node, args: dict[str, Any]) -> Any:
    return node.requests()


async def _add(node: Node, args: dict[str, Any]) -> Any:
    addresses = args.get("addresses") or []
    if not isinstance(addresses, list) or not all(isinstance(a, str) for a in addresses):
        raise ValueError("addresses must be a list of HOST:PORT strings")
    return node.add_contact(_str(args, "ref"), name=_opt_str(args, "name"), addresses=addresses)


async def _accept(node: Node, args: dict[str, Any]) -> Any:
    return node.accept_request(_str(args, "ref"), name=_opt_str(args, "name"))


async def _decline(node: Node, args: dict[str, Any]) -> Any:
    node.decline_request(_str(args, "ref"))
    return None


async def _send(node: Node, args: dict[str, Any]) -> Any:
    message = node.send_message(
        _str(args, "contact"), _str(args, "text"), reply_to=_opt_str(args, "reply_to")
    )
    wait = args.get("wait", 0)
    if not isinstance(wait, (int, float)) or isinstance(wait, bool) or wait < 0:
        raise ValueError("wait must be a non-negative number of seconds")
    state: str = message.state
    if wait and node.running:
        state = await node.wait_for_delivery(message.id, float(wait))
    return {
        "message": message_view(message),
        "state": state,
        "online": node.is_online(message.peer_id),
        "awaiting_acceptance": node.awaiting_acceptance(message.peer_id),
    }


# Messages in one ``send_many`` call: the CLI sends stdin in chunks of this many lines
# (and of at most ``MAX_BATCH_BYTES``), each stored in one transaction.
MAX_BATCH = 5000
MAX_BATCH_BYTES = 512 * 1024


async def _send_many(node: Node, args: dict[str, Any]) -> Any:
    """Several messages to one contact in order (``p2pchat msg --lines``): one call and
    one transaction per chunk instead of a round trip per line."""
    texts = args.get("texts")
    if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
        raise ValueError("texts must be a list of strings")
    if len(texts) > MAX_BATCH or sum(len(t) for t in texts) > MAX_BATCH_BYTES:
        raise ValueError(f"at most {MAX_BATCH} messages and {MAX_BATCH_BYTES} bytes a call")
    wait = args.get("wait", 0)
    if not isinstance(wait, (int, float)) or isinstance(wait, bool) or wait < 0:
        raise ValueError("wait must be a non-negative number of seconds")
    messages = node.send_messages(_str(args, "contact"), texts)
    last = messages[-1]
    state: str = last.state
    if wait and node.running:
        # In order, exactly once: the last one delivered means all of them are.
        state = await node.wait_for_delivery(last.id, float(wait))
    return {
        "ids": [m.id for m in messages],
        "peer_id": last.peer_id,
        "state": state,
        "online": node.is_online(last.peer_id),
    }


async def _wait_delivery(node: Node, args: dict[str, Any]) -> Any:
    wait = args.get("wait", 0)
    if not isinstance(wait, (int, float)) or isinstance(wait, bool) or wait < 0:
        raise ValueError("wait must be a non-negative number of seconds")
    return {"state": await node.wait_for_delivery(_str(args, "id"), float(wait))}


def _limit(args: dict[str, Any], default: int | None = None) -> int | None:
    limit = args.get("limit", default)
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 1):
        raise ValueError("limit must be a positive integer")
    return limit


async def _history(node: Node, args: dict[str, Any]) -> Any:
    found = node.history(
        _str(args, "contact"), limit=_limit(args, None), before=_opt_str(args, "before")
    )
    return [message_view(m) for m in found]


async def _search(node: Node, args: dict[str, Any]) -> Any:
    found = node.search(
        _str(args, "text"),
        contact=_opt_str(args, "contact"),
        limit=_limit(args, SEARCH_LIMIT) or SEARCH_LIMIT,
    )
    return [message_view(m) for m in found]


# The fields of a message that scripts see (``message_view``), looked up once: a page
# of history is hundreds of messages, and listing a dataclass's fields for each one
# was most of what answering ``history`` cost.
_MESSAGE_VIEW_FIELDS = tuple(
    f.name for f in dataclasses.fields(Message) if f.name not in ("kind", "target")
)


def message_view(m: Message) -> dict[str, Any]:
    """A message for scripts: its fields, ``edited``/``deleted`` flags, and none of
    the bookkeeping (``kind``, ``target``) that only edit and delete rows use."""
    view = {name: to_json(getattr(m, name)) for name in _MESSAGE_VIEW_FIELDS}
    view["edited"] = m.edited_at is not None
    view["deleted"] = m.deleted_at is not None
    return view


async def _edit(node: Node, args: dict[str, Any]) -> Any:
    return message_view(node.edit_message(_str(args, "id"), _str(args, "text")))


async def _delete(node: Node, args: dict[str, Any]) -> Any:
    return message_view(node.delete_message(_str(args, "id")))


async def _message(node: Node, args: dict[str, Any]) -> Any:
    found = node.get_message(_str(args, "id"), contact=_opt_str(args, "contact"))
    return None if found is None else message_view(found)


async def _nearby(node: Node, args: dict[str, Any]) -> Any:
    return node.nearby()


async def _dht_status(node: Node, args: dict[str, Any]) -> Any:
    return node.dht_status()


async def _dht_lookup(node: Node, args: dict[str, Any]) -> Any:
    return {"peer": _str(args, "peer"), "addresses": await node.dht_lookup(_str(args, "peer"))}


async def _verify(node: Node, args: dict[str, Any]) -> Any:
    contact = node.verify_contact(_str(args, "contact"), bool(args.get("verified", True)))
    return {"contact": contact, "safety_number": node.safety_number(contact.peer_id)}


async def _send_files(node: Node, args: dict[str, Any]) -> Any:
    paths = args.get("paths")
    if not isinstance(paths, list) or not paths or not all(isinstance(p, str) for p in paths):
        raise ValueError("paths must be a non-empty list of strings")
    t = await node.offer_files(_str(args, "contact"), [Path(p) for p in paths])
    return _transfer_view(t)


async def _transfers(node: Node, args: dict[str, Any]) -> Any:
    """One page, newest first: ``limit`` (default 50, at most 500) and ``before`` (the
    last id of the previous page)."""
    limit = args.get("limit", TRANSFER_PAGE_SIZE)
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
        raise ValueError("limit must be a positive integer")
    page = node.list_transfers(
        _opt_str(args, "contact"), limit=limit, before=_opt_str(args, "before")
    )
    return [_transfer_view(t, node) for t in page]


async def _pending_offers(node: Node, args: dict[str, Any]) -> Any:
    """Every incoming offer waiting for an answer (optionally of one ``contact``)."""
    return [_transfer_view(t) for t in node.pending_offers(_opt_str(args, "contact"))]


async def _running_transfers(node: Node, args: dict[str, Any]) -> Any:
    return [_transfer_view(t, node) for t in node.running_transfers()]


async def _transfer(node: Node, args: dict[str, Any]) -> Any:
    return _transfer_view(node.get_transfer(_str(args, "id")), node)


async def _accept_file(node: Node, args: dict[str, Any]) -> Any:
    folder = _opt_str(args, "folder")
    only = args.get("only")
    if only is not None and (not isinstance(only, list) or not all(type(i) is int for i in only)):
        raise ValueError("only must be a list of file indices")
    t = node.accept_transfer(_str(args, "id"), only=only, folder=Path(folder) if folder else None)
    return _transfer_view(t)


async def _decline_file(node: Node, args: dict[str, Any]) -> Any:
    node.decline_transfer(_str(args, "id"))
    return None


async def _cancel_file(node: Node, args: dict[str, Any]) -> Any:
    node.cancel_transfer(_str(args, "id"))
    return None


async def _wait_transfer(node: Node, args: dict[str, Any]) -> Any:
    timeout = args.get("timeout", 0)
    if not isinstance(timeout, (int, float)) or isinstance(timeout, bool) or timeout < 0:
        raise ValueError("timeout must be a non-negative number of seconds")
    return await node.wait_transfer(_str(args, "id"), float(timeout))


def _transfer_view(t: Transfer, node: Node | None = None) -> dict[str, Any]:
    """A transfer for scripts: hashes as hex, sizes and progress as plain numbers."""
    view = to_json(t)
    view["total"] = t.total
    progress = node.transfers.progress(t.id) if node is not None else None
    view["progress"] = list(progress) if progress else None
    return dict(view)


async def _find_contact(node: Node, args: dict[str, Any]) -> Any:
    return node.find_contact(_str(args, "ref"))


async def _invite(node: Node, args: dict[str, Any]) -> Any:
    return node.invite(one_time=bool(args.get("one_time")))


async def _typing(node: Node, args: dict[str, Any]) -> Any:
    node.set_typing(_str(args, "contact"), bool(args.get("active")))
    return None


async def _mark_read(node: Node, args: dict[str, Any]) -> Any:
    return node.mark_read(_str(args, "contact"))


async def _view_state(node: Node, args: dict[str, Any]) -> Any:
    return node.view_state(_str(args, "key"))


async def _set_view_state(node: Node, args: dict[str, Any]) -> Any:
    node.set_view_state(_str(args, "key"), _opt_str(args, "value"))
    return None


async def _set_name(node: Node, args: dict[str, Any]) -> Any:
    return node.set_name(_str(args, "name"))


async def _rename(node: Node, args: dict[str, Any]) -> Any:
    return node.rename_contact(_str(args, "contact"), _str(args, "name"))


async def _remove(node: Node, args: dict[str, Any]) -> Any:
    return node.remove_contact(_str(args, "contact"))


async def _block(node: Node, args: dict[str, Any]) -> Any:
    return node.block(_str(args, "ref"))


async def _unblock(node: Node, args: dict[str, Any]) -> Any:
    return node.unblock(_str(args, "ref"))


async def _blocked(node: Node, args: dict[str, Any]) -> Any:
    return node.blocked()


async def _mute(node: Node, args: dict[str, Any]) -> Any:
    muted = args.get("muted", True)
    if not isinstance(muted, bool):
        raise ValueError("muted must be true or false")
    return node.set_muted(_str(args, "contact"), muted)


async def _safety_number(node: Node, args: dict[str, Any]) -> Any:
    return node.safety_number(_str(args, "contact"))


async def _update_settings(node: Node, args: dict[str, Any]) -> Any:
    values = args.get("values")
    if not isinstance(values, dict):
        raise ValueError("values must be an object")
    node.update_settings(**{str(k): v for k, v in values.items()})
    return node.settings


async def _progress(node: Node, args: dict[str, Any]) -> Any:
    progress = node.transfers.progress(_str(args, "id"))
    return list(progress) if progress else None


async def _network_status(node: Node, args: dict[str, Any]) -> Any:
    return node.network_status()


async def _passphrase(node: Node, args: dict[str, Any]) -> Any:
    change = await node.change_passphrase(_opt_str(args, "old"), _opt_str(args, "new"))
    return {**to_json(change), "summary": change.describe()}


# ------------------------------------------------------------------ groups
def _str_list(args: dict[str, Any], key: str) -> list[str]:
    value = args.get(key) or []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"argument {key!r} must be a list of strings")
    return value


def _seconds(args: dict[str, Any], key: str) -> float:
    value = args.get(key, 0)
    if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{key} must be a non-negative number of seconds")
    return float(value)


async def _groups(node: Node, args: dict[str, Any]) -> Any:
    return node.groups.all()


async def _group(node: Node, args: dict[str, Any]) -> Any:
    return node.groups.get(_str(args, "group"))


async def _group_create(node: Node, args: dict[str, Any]) -> Any:
    return node.groups.create(_str(args, "name"), _str_list(args, "members"))


async def _group_add(node: Node, args: dict[str, Any]) -> Any:
    return node.groups.add_member(
        _str(args, "group"), _str(args, "contact"), admin=bool(args.get("admin"))
    )


async def _group_remove(node: Node, args: dict[str, Any]) -> Any:
    return node.groups.remove_member(_str(args, "group"), _str(args, "member"))


async def _group_promote(node: Node, args: dict[str, Any]) -> Any:
    return node.groups.promote(_str(args, "group"), _str(args, "member"))


async def _group_rename(node: Node, args: dict[str, Any]) -> Any:
    return node.groups.rename(_str(args, "group"), _str(args, "name"))


async def _group_leave(node: Node, args: dict[str, Any]) -> Any:
    return node.groups.leave(_str(args, "group"))


async def _group_accept(node: Node, args: dict[str, Any]) -> Any:
    return node.groups.accept(_str(args, "group"))


async def _group_decline(node: Node, args: dict[str, Any]) -> Any:
    node.groups.decline(_str(args, "group"))
    return None


async def _group_members(node: Node, args: dict[str, Any]) -> Any:
    return node.groups.members(_str(args, "group"))


async def _group_msg(node: Node, args: dict[str, Any]) -> Any:
    """Post; with ``wait``, wait that long for at least one other member to hold it."""
    group = _str(args, "group")
    message = node.groups.send(group, _str(args, "text"))
    wait = _seconds(args, "wait")
    delivered = message.delivered
    if wait and node.running and message.members > 1:
        delivered = await node.groups.wait_delivered(group, message.message_id, 2, wait)
    return {"message": message, "delivered": delivered, "members": message.members}


async def _group_history(node: Node, args: dict[str, Any]) -> Any:
    return node.groups.history(_str(args, "group"), limit=_limit(args))


async def _group_send(node: Node, args: dict[str, Any]) -> Any:
    paths = _str_list(args, "paths")
    if not paths:
        raise ValueError("paths must be a non-empty list of strings")
    message, transfers = await node.groups.offer_files(
        _str(args, "group"), [Path(p) for p in paths]
    )
    return {"message": message, "transfers": [_transfer_view(t) for t in transfers]}


async def _group_read(node: Node, args: dict[str, Any]) -> Any:
    node.groups.mark_read(_str(args, "group"))
    return None


GROUP_OPS: dict[str, Op] = {
    "groups": _groups,
    "group": _group,
    "group_create": _group_create,
    "group_add": _group_add,
    "group_remove": _group_remove,
    "group_promote": _group_promote,
    "group_rename": _group_rename,
    "group_leave": _group_leave,
    "group_accept": _group_accept,
    "group_decline": _group_decline,
    "group_members": _group_members,
    "group_msg": _group_msg,
    "group_history": _group_history,
    "group_send": _group_send,
    "group_read": _group_read,
}


OPS: dict[str, Op] = {
    **GROUP_OPS,
    "edit": _edit,
    "delete": _delete,
    "message": _message,
    "remove": _remove,
    "block": _block,
    "unblock": _unblock,
    "blocked": _blocked,
    "mute": _mute,
    "passphrase": _passphrase,
    "network_status": _network_status,
    "find_contact": _find_contact,
    "invite": _invite,
    "typing": _typing,
    "mark_read": _mark_read,
    "view_state": _view_state,
    "set_view_state": _set_view_state,
    "set_name": _set_name,
    "rename": _rename,
    "safety_number": _safety_number,
    "update_settings": _update_settings,
    "progress": _progress,
    "send_files": _send_files,
    "transfers": _transfers,
    "transfer": _transfer,
    "running_transfers": _running_transfers,
    "pending_offers": _pending_offers,
    "accept_file": _accept_file,
    "decline_file": _decline_file,
    "cancel_file": _cancel_file,
    "wait_transfer": _wait_transfer,
    "nearby": _nearby,
    "dht_status": _dht_status,
    "dht_lookup": _dht_lookup,
    "verify": _verify,
    "info": _info,
    "contacts": _contacts,
    "requests": _requests,
    "add": _add,
    "accept": _accept,
    "decline": _decline,
    "send": _send,
    "send_many": _send_many,
    "wait_delivery": _wait_delivery,
    "history": _history,
    "search": _search,
}


def event_to_json(event: NodeEvent) -> dict[str, Any]:
    """One node event as a JSON object with its class name under ``"type"``."""
    return {"type": type(event).__name__, **to_json(event)}


async def call(node: Node, op: str, args: dict[str, Any]) -> Any:
    """Run one operation and return its JSON-ready result."""
    handler = OPS.get(op)
    if handler is None:
        raise ValueError(f"unknown operation {op!r}")
    return to_json(await handler(node, args))
