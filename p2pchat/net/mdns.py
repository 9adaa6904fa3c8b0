"""LAN discovery over multicast DNS: announce this node, hear the others.

The node announces ``_p2pchat._udp.local.`` with a TXT record carrying its peer
ID (``id``), the protocol version (``v``), its QUIC port (``port``) and, only
when the user allows it, its display name (``name``).  It browses the same type
all the time and hands every peer it hears to the node as a *claim*: anyone on
the LAN can announce any ID, so nothing here is trusted.  The node dials a
contact with the contact's key as the expected peer (a false claim ends in a key
mismatch) and shows everyone else only as "nearby".

mDNS answers come from whoever is on the link, so they are parsed strictly and
anything odd is dropped without a word: a malformed or oversized TXT, an unknown
version, an ID that is not a canonical peer ID, a port out of range, addresses
that are not unicast or not on one of our own links.

Binding and announcing use only the interfaces the user selected; with no
selection zeroconf's default (every interface) applies.  A periodic check
notices new or changed interface addresses and re-announces (or reopens the
sockets when the set of interfaces to bind changed).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
from collections.abc import Coroutine, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import ifaddr
from zeroconf import InterfaceChoice, IPVersion, ServiceStateChange, Zeroconf
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from p2pchat.identity import format_address, is_peer_id, key_from_peer_id, peer_id_from_key

log = logging.getLogger(__name__)

SERVICE_TYPE = "_p2pchat._udp.local."
PROTOCOL_VERSION = b"1"
SOURCE = "mdns"
RECHECK_INTERVAL = 10.0
RESOLVE_TIMEOUT_MS = 3000
# Both record groups get the short host TTL: a chat peer that vanished without a
# goodbye (crash, cable pulled) should leave "nearby" in minutes, not 75 of them.
TTL = 120
MAX_TXT_BYTES = 1024
MAX_NAME_BYTES = 200
MAX_ADDRESSES = 8
MAX_SERVICES = 256
MAX_RESOLVING = 16

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
BindList = list[str | int]


class MdnsError(ValueError):
    """The mDNS options cannot work here (for example: no such interface)."""


@dataclass(frozen=True, slots=True)
class MdnsOptions:
    """How the node takes part in LAN discovery.

    ``interfaces`` are interface names or addresses; empty means zeroconf's
    default (all of them).  ``hidden`` browses without announcing.
    ``share_name`` puts the display name in the announcement, which everyone on
    the LAN can read, hence off unless asked for.
    """

    interfaces: tuple[str, ...] = ()
    hidden: bool = False
    share_name: bool = False
    recheck_interval: float = RECHECK_INTERVAL


class DiscoveryOwner(Protocol):
    """What the mDNS service needs from the node."""

    @property
    def peer_id(self) -> str: ...

    @property
    def name(self) -> str: ...

    def peer_discovered(
        self, peer_id: str, addresses: Iterable[str], *, source: str, name: str | None = None
    ) -> None: ...

    def peer_lost(self, peer_id: str, *, source: str) -> None: ...


@dataclass(frozen=True, slots=True)
class Claim:
    """One announcement that passed validation: still only what the sender says."""

    peer_id: str
    addresses: tuple[str, ...]
    name: str | None


# ------------------------------------------------------------------ parsing
def parse_txt(text: bytes) -> dict[str, bytes | None] | None:
    """TXT rdata to ``{key: value}``; None when it is malformed or too large.

    Keys are case-insensitive and only the first occurrence counts (RFC 6763
    section 6.4); a key without ``=`` maps to None.
    """
    if len(text) > MAX_TXT_BYTES:
        return None
    result: dict[str, bytes | None] = {}
    pos = 0
    while pos < len(text):
        length = text[pos]
        pos += 1
        if pos + length > len(text):
            return None
        item = text[pos : pos + length]
        pos += length
        key, sep, value = item.partition(b"=")
        if not key:
            continue
        if not key.isascii() or not key.decode("ascii").isprintable():
            return None
        name = key.decode("ascii").lower()
        result.setdefault(name, value if sep else None)
    return result


def _canonical_peer_id(raw: bytes | None) -> str | None:
    if not raw or len(raw) > 64 or not raw.isascii():
        return None
    text = raw.decode("ascii")
    if not is_peer_id(text):
        return None
    # is_peer_id forgives case and spaces (for humans); on the wire only the
    # canonical spelling is accepted, so one key never shows up under two IDs.
    return text if peer_id_from_key(key_from_peer_id(text)) == text else None


def _port(raw: bytes | None) -> int | None:
    if raw is None or not raw.isdigit() or len(raw) > 5:
        return None
    port = int(raw)
    return port if 1 <= port <= 65535 else None


def _usable(address: IPAddress, networks: Sequence[Network] | None) -> bool:
    if (
        address.is_unspecified
        or address.is_multicast
        or address.is_loopback
        or address.is_reserved
        or address == ipaddress.IPv4Address("255.255.255.255")
    ):
        return False
    if address.version == 6 and address.is_link_local:
        return False  # unusable without a zone, and the TXT carries none
    if networks is None:
        return True
    return any(address.version == net.version and address in net for net in networks)


def parse_claim(
    text: bytes,
    srv_port: int | None,
    addresses: Iterable[str],
    *,
    networks: Sequence[Network] | None = None,
    family: int | None = None,
) -> Claim | None:
    """Validate one resolved service; None means "drop it silently".

    ``networks`` are our own links: mDNS is link-local, so a LAN peer's address
    lies on one of them, and anything else would let a stranger on the LAN
    steer our dialling at arbitrary hosts.  ``family`` (4 or 6) keeps only
    addresses our socket can reach.
    """
    props = parse_txt(text)
    if props is None or props.get("v") != PROTOCOL_VERSION:
        return None
    peer_id = _canonical_peer_id(props.get("id"))
    if peer_id is None:
        return None
    port = _port(props["port"]) if "port" in props else None
    if "port" in props and port is None:
        return None
    if srv_port is not None and srv_port != 0:
        if not 1 <= srv_port <= 65535 or (port is not None and port != srv_port):
            return None
        port = srv_port
    if port is None:
        return None
    usable: list[str] = []
    for text_address in addresses:
        try:
            address = ipaddress.ip_address(text_address)
        except ValueError:
            continue
        if family is not None and address.version != family:
            continue
        if _usable(address, networks):
            usable.append(format_address(str(address), port))
    if not usable:
        return None
    name: str | None = None
    raw_name = props.get("name")
    if raw_name and len(raw_name) <= MAX_NAME_BYTES:
        with contextlib.suppress(UnicodeDecodeError):
            name = raw_name.decode("utf-8")
    return Claim(peer_id, tuple(dict.fromkeys(usable))[:MAX_ADDRESSES], name)


def _encode_name(name: str) -> bytes:
    return name.encode("utf-8")[:MAX_NAME_BYTES].decode("utf-8", errors="ignore").encode("utf-8")


# --------------------------------------------------------------- interfaces
@dataclass(frozen=True, slots=True)
class _Scope:
    """The interface addresses discovery may use, as seen at one moment."""

    addresses: tuple[IPAddress, ...]
    networks: tuple[Network, ...]
    v6_indexes: tuple[int, ...]
    missing: tuple[str, ...]


def _ip_of(ip: ifaddr.IP) -> tuple[IPAddress, Network] | None:
    raw = ip.ip if isinstance(ip.ip, str) else ip.ip[0]
    try:
        iface = ipaddress.ip_interface(f"{raw}/{ip.network_prefix}")
    except ValueError:
        return None
    return iface.ip, iface.network


def _owns(adapter: ifaddr.Adapter, address: IPAddress) -> bool:
    return any((parsed := _ip_of(ip)) is not None and parsed[0] == address for ip in adapter.ips)


def _scope(selection: Sequence[str]) -> _Scope:
    addresses: list[IPAddress] = []
    networks: list[Network] = []
    indexes: list[int] = []
    missing: list[str] = []
    adapters = list(ifaddr.get_adapters())
    wanted: list[tuple[ifaddr.Adapter, IPAddress | None]] = []
    if not selection:
        wanted = [(adapter, None) for adapter in adapters]
    for item in selection:
        try:
            only: IPAddress | None = ipaddress.ip_address(item)
        except ValueError:
            only = None
        matches = [
            a
            for a in adapters
            if (item in (a.nice_name, a.name) if only is None else _owns(a, only))
        ]
        if not matches:
            missing.append(item)
        wanted.extend((adapter, only) for adapter in matches)
    for adapter, only in wanted:
        for ip in adapter.ips:
            parsed = _ip_of(ip)
            if parsed is None or (only is not None and parsed[0] != only):
                continue
            addresses.append(parsed[0])
            networks.append(parsed[1])
            if parsed[0].version == 6 and isinstance(adapter.index, int):
                indexes.append(adapter.index)
    return _Scope(
        tuple(dict.fromkeys(addresses)),
        tuple(dict.fromkeys(networks)),
        tuple(dict.fromkeys(indexes)),
        tuple(missing),
    )


def _describe(key: tuple[str | int, ...], interfaces: InterfaceChoice | BindList) -> str:
    where = ", ".join(str(k) for k in key) or "no address yet"
    return f"all interfaces ({where})" if not isinstance(interfaces, list) else where


# ------------------------------------------------------------------ service
class MdnsService:
    """Announce and browse on the LAN for one node; owns every task it starts."""

    def __init__(self, owner: DiscoveryOwner, options: MdnsOptions) -> None:
        self._owner = owner
        self._options = options
        self._bound: tuple[str, int] | None = None
        self._zc: AsyncZeroconf | None = None
        self._browser: AsyncServiceBrowser | None = None
        self._info: AsyncServiceInfo | None = None
        self._registered = False
        self._bind_key: tuple[str | int, ...] | None = None
        self._scope_now = _Scope((), (), (), ())
        self._claims: dict[str, Claim] = {}
        self._published: set[str] = set()
        self._resolving: dict[str, asyncio.Task[None]] = {}
        self._dirty: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._closing: asyncio.Future[None] | None = None
        self._limit = asyncio.Semaphore(MAX_RESOLVING)
        self._warned = False
        self.running = False

    @property
    def announced(self) -> tuple[str, ...]:
        """The addresses in our current announcement (empty when hidden or not yet)."""
        if self._info is None:
            return ()
        return tuple(self._info.parsed_addresses())

    # -------------------------------------------------------------- life
    async def start(self, bound: tuple[str, int]) -> None:
        """Begin after the endpoint is bound: ``bound`` is its actual address."""
        self._bound = bound
        scope = _scope(self._options.interfaces)
        if scope.missing:
            raise MdnsError(f"no network interface or local address {', '.join(scope.missing)}")
        self.running = True
        await self._refresh(scope)
        self._spawn(self._watch())

    async def stop(self) -> None:
        """Say goodbye on the LAN and cancel everything this service started."""
        self.running = False
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._closing is not None:
            # The periodic check was cancelled half way through closing: finish that.
            with contextlib.suppress(Exception):
                await self._closing
        await self._close()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("mDNS task failed", exc_info=task.exception())

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self._options.recheck_interval)
            try:
                await self._refresh(_scope(self._options.interfaces))
            except Exception:  # one bad round must not end discovery for good
                log.exception("mDNS interface check failed")

    # ------------------------------------------------------- interfaces
    def _family(self) -> int:
        assert self._bound is not None
        return ipaddress.ip_address(self._bound[0].split("%")[0]).version

    def _bind(self, scope: _Scope) -> tuple[InterfaceChoice | BindList, tuple[str | int, ...]]:
        """What zeroconf binds to, and a key that changes when that should change."""
        v6 = self._family() == 6
        v4 = tuple(str(a) for a in scope.addresses if a.version == 4)
        if not self._options.interfaces:
            key: tuple[str | int, ...] = v4 + (scope.v6_indexes if v6 else ())
            return InterfaceChoice.All, key
        chosen: BindList = list(v4)
        if v6:
            chosen.extend(scope.v6_indexes)
        return chosen, tuple(chosen)

    def _advertised(self, scope: _Scope) -> tuple[IPAddress, ...]:
        assert self._bound is not None
        bound = ipaddress.ip_address(self._bound[0].split("%")[0])
        if not bound.is_unspecified:
            return () if bound.is_loopback else (bound,)
        return tuple(
            a
            for a in scope.addresses
            if not a.is_loopback
            and not (a.version == 6 and (bound.version == 4 or a.is_link_local))
        )[:MAX_ADDRESSES]

    def _ip_version(self, interfaces: InterfaceChoice | BindList) -> IPVersion:
        if not isinstance(interfaces, list):
            return IPVersion.All if self._family() == 6 else IPVersion.V4Only
        v6 = any(isinstance(i, int) or ":" in i for i in interfaces)
        v4 = any(isinstance(i, str) and ":" not in i for i in interfaces)
        return IPVersion.All if v4 and v6 else IPVersion.V6Only if v6 else IPVersion.V4Only

    async def _refresh(self, scope: _Scope) -> None:
        self._scope_now = scope
        interfaces, key = self._bind(scope)
        if self._zc is None:
            await self._reopen(interfaces, key)
        elif key != self._bind_key and not await self._rebind(interfaces, key):
            await self._reopen(interfaces, key)
        if self._zc is not None:
            await self._sync_announcement(scope)

    async def _rebind(
        self, interfaces: InterfaceChoice | BindList, key: tuple[str | int, ...]
    ) -> bool:
        """Move the open sockets to the new interface set; False if zeroconf cannot.

        Newer zeroconf reconciles its sockets in place, so peers see no goodbye
        and no second probe; older versions get a full reopen instead.
        """
        update = getattr(self._zc, "async_update_interfaces", None)
        if update is None or (isinstance(interfaces, list) and not interfaces):
            return False
        try:
            await update(interfaces, self._ip_version(interfaces))
        except Exception as exc:
            log.info("mDNS could not follow the interface change in place: %s", exc)
            return False
        self._bind_key = key
        log.info("LAN discovery follows the interfaces: %s", _describe(key, interfaces))
        return True

    async def _reopen(
        self, interfaces: InterfaceChoice | BindList, key: tuple[str | int, ...]
    ) -> None:
        await self._close()
        if isinstance(interfaces, list) and not interfaces:
            self._warn(f"no address on {', '.join(self._options.interfaces)} yet")
            return
        try:
            zc = AsyncZeroconf(interfaces=interfaces, ip_version=self._ip_version(interfaces))
        except (OSError, RuntimeError, ValueError) as exc:
            self._warn(f"cannot open mDNS sockets: {exc}")
            return
        self._zc = zc
        self._bind_key = key
        self._warned = False
        self._browser = AsyncServiceBrowser(
            zc.zeroconf, [SERVICE_TYPE], handlers=[self._on_state_change]
        )
        log.info("LAN discovery on %s", _describe(key, interfaces))

    def _warn(self, message: str) -> None:
        """Once per outage: the periodic check keeps retrying quietly."""
        if not self._warned:
            log.warning("LAN discovery unavailable for now: %s", message)
            self._warned = True

    async def _close(self) -> None:
        for task in list(self._resolving.values()):
            task.cancel()
        self._resolving.clear()
        self._dirty.clear()
        zc, self._zc = self._zc, None
        self._browser = None
        self._info = None
        self._registered = False
        self._bind_key = None
        if zc is not None:
            # Shielded: a cancelled caller must not leave sockets half closed.
            self._closing = asyncio.ensure_future(zc.async_close())  # sends the goodbyes
            try:
                await asyncio.shield(self._closing)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("closing mDNS")
        for peer_id in list(self._published):
            self._published.discard(peer_id)
            self._owner.peer_lost(peer_id, source=SOURCE)
        self._claims.clear()

    # ------------------------------------------------------- announcing
    def _service_info(self, name: str, addresses: Sequence[IPAddress]) -> AsyncServiceInfo:
        assert self._bound is not None
        port = self._bound[1]
        peer_id = self._owner.peer_id
        properties: dict[str | bytes, str | bytes | None] = {
            b"id": peer_id.encode("ascii"),
            b"v": PROTOCOL_VERSION,
            b"port": str(port).encode("ascii"),
        }
        if self._options.share_name:
            properties[b"name"] = _encode_name(self._owner.name)
        return AsyncServiceInfo(
            SERVICE_TYPE,
            name,
            port=port,
            properties=properties,
            server=f"{peer_id}.local.",
            addresses=[a.packed for a in addresses],
            host_ttl=TTL,
            other_ttl=TTL,
        )

    async def _sync_announcement(self, scope: _Scope) -> None:
        if self._options.hidden or self._zc is None:
            return
        addresses = self._advertised(scope)
        if self._info is not None and not self._registered:
            return  # still probing; the next check compares again
        if not addresses:
            if self._info is not None:
                info, self._info = self._info, None
                self._registered = False
                await self._zc.async_unregister_service(info)
            return
        if self._info is None:
            self._info = self._service_info(f"{self._owner.peer_id}.{SERVICE_TYPE}", addresses)
            self._spawn(self._register(self._zc, self._info))
            return
        wanted = self._service_info(self._info.name, addresses)
        if (wanted.text, set(wanted.addresses_by_version(IPVersion.All))) != (
            self._info.text,
            set(self._info.addresses_by_version(IPVersion.All)),
        ):
            self._info = wanted
            log.info("re-announcing on the LAN: %s", wanted.parsed_addresses())
            await self._zc.async_update_service(wanted)

    async def _register(self, zc: AsyncZeroconf, info: AsyncServiceInfo) -> None:
        try:
            # Someone else may already use our instance name (maybe claiming our
            # ID): zeroconf then picks "<id>-2"; the TXT still carries the ID.
            await (await zc.async_register_service(info, allow_name_change=True))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("cannot announce on the LAN: %s", exc)
            if self._info is info:
                self._info = None
            return
        if self._info is info:
            self._registered = True
            log.info("announced on the LAN as %s at %s", info.name, info.parsed_addresses())

    # ---------------------------------------------------------- browsing
    def _on_state_change(
        self,
        zeroconf: Zeroconf,
        service_type: str,
        name: str,
        state_change: ServiceStateChange,
    ) -> None:
        """zeroconf's browser callback (in the event loop); resolving happens in tasks."""
        if not self.running or service_type != SERVICE_TYPE:
            return
        key = name.lower()
        if state_change is ServiceStateChange.Removed:
            task = self._resolving.pop(key, None)
            if task is not None:
                task.cancel()
            self._drop(key)
            return
        if key in self._resolving:
            self._dirty.add(key)
            return
        if key not in self._claims and len(self._claims) + len(self._resolving) >= MAX_SERVICES:
            return
        self._resolving[key] = self._spawn(self._resolve(key, name))

    async def _resolve(self, key: str, name: str) -> None:
        try:
            while True:
                self._dirty.discard(key)
                async with self._limit:
                    claim = await self._resolve_once(name)
                if claim is None:
                    self._drop(key)
                else:
                    self._claims[key] = claim
                    self._publish(claim.peer_id)
                if key not in self._dirty:
                    return
        finally:
            if self._resolving.get(key) is asyncio.current_task():
                del self._resolving[key]

    async def _resolve_once(self, name: str) -> Claim | None:
        zc = self._zc
        if zc is None:
            return None
        try:
            info = AsyncServiceInfo(SERVICE_TYPE, name)
            if not await info.async_request(zc.zeroconf, RESOLVE_TIMEOUT_MS):
                return None
            claim = parse_claim(
                info.text or b"",
                info.port,
                info.parsed_addresses(),
                networks=self._scope_now.networks,
                family=self._family(),
            )
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # whatever a hostile answer trips in zeroconf
            log.debug("dropped mDNS service %r: %s", name, exc)
            return None
        if claim is None:
            log.debug("dropped mDNS service %r: invalid announcement", name)
            return None
        if claim.peer_id == self._owner.peer_id:
            return None
        return claim

    def _drop(self, key: str) -> None:
        claim = self._claims.pop(key, None)
        if claim is not None:
            self._publish(claim.peer_id)

    def _publish(self, peer_id: str) -> None:
        """Tell the node what all current announcements for ``peer_id`` say together.

        Two services may claim one ID (a second instance, or someone lying);
        the node gets every claimed address and the handshake sorts them out.
        """
        claims = [c for c in self._claims.values() if c.peer_id == peer_id]
        if not claims:
            if peer_id in self._published:
                self._published.discard(peer_id)
                self._owner.peer_lost(peer_id, source=SOURCE)
            return
        addresses = tuple(dict.fromkeys(a for c in claims for a in c.addresses))[:MAX_ADDRESSES]
        name = next((c.name for c in reversed(claims) if c.name), None)
        self._published.add(peer_id)
        self._owner.peer_discovered(peer_id, addresses, source=SOURCE, name=name)
