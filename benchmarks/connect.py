"""Time to the first message between two people behind routers, and file drop over a
punched path and over a relay.

Runs in the network lab (``tests/netlab``: namespaces, veths, nftables NATs; root
needed): one public host with two relaying daemons (DHT bootstrap and rendezvous) and
sites behind every NAT kind.  For each pair and trial, two fresh identities that added
each other by peer ID alone (no invite, no address) start at the same moment; the clock
runs from the moment both daemons answer on their control sockets to the moment the
first message is acknowledged.  Between trials the routers' connection tracking is
flushed (``conntrack -F`` when installed, else a WAN link flap), so no trial rides on
a mapping an earlier one opened.

    sudo python3 benchmarks/connect.py                       # every pair, 20 trials
    sudo python3 benchmarks/connect.py --pairs preserving-random --trials 5
    sudo python3 benchmarks/connect.py --filedrop-mib 64     # add the file-drop rows

``random-random`` (both sides behind random-port NATs) has no direct path: its rows
time a relayed session (through one of the public daemons) and a file drop over it,
once with the relays' default budgets and once with them lifted (64 MiB/s), which
shows what the relayed path itself carries.

Prints a Markdown table (p50, p95, max, paths seen) for docs/performance.md.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from p2pchat.config import Paths
from p2pchat.node import Node
from tests.daemons import delivered, make_home, path_of
from tests.netlab import Lab, prepare, unavailable_reason
from tests.netlab.daemon import NsDaemon
from tests.netlab.topologies import (
    MATRIX_PAIRS,
    MATRIX_SITES,
    PUBLIC_ADDRESS,
    build_internet,
)

PORT = 4001
#: Trials per pair of public daemons (each trial adds one record per site IP).
PUBLIC_LIFETIME = 8
BOOTSTRAP = (f"{PUBLIC_ADDRESS}:{PORT}", f"{PUBLIC_ADDRESS}:{PORT + 1}")
SITES = {**MATRIX_SITES, "r2": "random"}
PAIRS = {**MATRIX_PAIRS, "random-random": ("r1", "r2")}
LIFTED = ("--relay-rate", "64M", "--relay-peer-rate", "64M")


def daemon(host: Any, home: Path, *extra: str, port: int = PORT) -> NsDaemon:
    boot = [arg for entry in BOOTSTRAP for arg in ("--bootstrap", entry)]
    return NsDaemon(
        host, home, listen=f"0.0.0.0:{port}", mdns=False, dht=True, extra=(*boot, *extra)
    )


def flush_mappings(lab: Lab, net: Any) -> None:
    """Forget every NAT mapping and filter state, as if the routers had just booted."""
    namespaces = []
    for site in net.sites.values():
        for router in (site.router, site.outer):
            if router is not None:
                namespaces.append(router.ns)
    for ns in namespaces:
        if shutil.which("conntrack"):
            lab.run(ns, "conntrack", "-F", check=False)
        else:
            lab.set_link(ns, "wan0", up=False)
            lab.set_link(ns, "wan0", up=True)


async def fresh_pair(
    lab: Lab, net: Any, root: Path, x: str, y: str, tag: str
) -> tuple[dict[str, Path], dict[str, str]]:
    """Two new identities that added each other by peer ID, on freshly booted routers."""
    flush_mappings(lab, net)
    homes = {k: make_home(root, f"{x}-{y}-{tag}-{k}").home for k in (x, y)}
    nodes = {k: Node(Paths(h)) for k, h in homes.items()}
    ids = {k: n.peer_id for k, n in nodes.items()}
    for me, other in ((x, y), (y, x)):
        nodes[me].add_contact(ids[other], name=other)
        await nodes[me].stop()  # closes the store; the node never went online
    return homes, ids


async def until_delivered(d: NsDaemon, contact: str, body: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if await delivered(d, contact, body):
            return True
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.02)


async def trial(lab: Lab, net: Any, root: Path, x: str, y: str, n: int) -> tuple[float, str]:
    homes, ids = await fresh_pair(lab, net, root, x, y, str(n))
    a = daemon(net.sites[x].host, homes[x])
    b = daemon(net.sites[y].host, homes[y])
    try:
        await asyncio.gather(a.start(), b.start())
        start = time.monotonic()
        body = f"trial {n}"
        await a.call("send", contact=y, text=body, wait=0)
        if not await until_delivered(a, y, body, 60):
            return float("inf"), "timeout"
        took = time.monotonic() - start
        return took, await path_of(a, ids[y]) or "?"
    finally:
        await asyncio.gather(a.stop(), b.stop())


async def file_drop(
    lab: Lab, net: Any, root: Path, x: str, y: str, mib: int, tag: str
) -> tuple[float, str]:
    homes, ids = await fresh_pair(lab, net, root, x, y, tag)
    payload = root / f"payload-{mib}.bin"
    if not payload.exists():
        with payload.open("wb") as f:
            for _ in range(mib):
                f.write(bytes(range(256)) * 4096)
    a = daemon(net.sites[x].host, homes[x])
    b = daemon(net.sites[y].host, homes[y], "--accept-files-from", "contacts")
    try:
        await asyncio.gather(a.start(), b.start())
        await a.call("send", contact=y, text="hello", wait=0)
        await until_delivered(a, y, "hello", 120)
        path = await path_of(a, ids[y]) or "?"
        start = time.monotonic()
        transfer = await a.call("send_files", contact=y, paths=[str(payload)])
        assert a.client is not None
        state = await a.client.call(
            "wait_transfer", {"id": transfer["id"], "timeout": 600}, timeout=610
        )
        took = time.monotonic() - start
        if state != "done":
            for side in (a, b):
                view = await side.call("transfer", id=transfer["id"])
                print(f"{side.paths.home.name}: {view}", file=sys.stderr)
                log = side.log_path.read_text(errors="replace").splitlines()[-20:]
                print("\n".join(log), file=sys.stderr)
            return 0.0, f"{path} ({state})"
        return mib * 1024 * 1024 / took / 1e6, path
    finally:
        await asyncio.gather(a.stop(), b.stop())


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--pairs", default="all", help="comma-separated names or 'all'")
    parser.add_argument("--filedrop-mib", type=int, default=0, help="also time a file drop")
    parser.add_argument(
        "--filedrop-rows", default="", help="only the file-drop rows whose name has this text"
    )
    args = parser.parse_args()
    reason = unavailable_reason(need_nft=True)
    if reason:
        print(f"cannot run: {reason}", file=sys.stderr)
        return 2
    pairs = PAIRS if args.pairs == "all" else {k: PAIRS[k] for k in args.pairs.split(",")}
    prepare()
    root = Path(tempfile.mkdtemp(prefix="p2pchat-connect-"))
    lab = Lab()
    publics: list[NsDaemon] = []
    generation = 0

    async def fresh_publics(*budgets: str) -> None:
        """New public daemons (empty DHT storage): the hosts of the lab publish a new
        identity's record every trial, and a DHT node keeps at most 16 items per
        source IP, which a real address never reaches this way."""
        nonlocal publics, generation
        for d in publics:
            await d.stop()
        generation += 1
        publics = [
            daemon(net.public, make_home(root, f"pub-{generation}").home, "--relay", *budgets),
            daemon(
                net.public,
                make_home(root, f"pub2-{generation}").home,
                "--relay",
                *budgets,
                port=PORT + 1,
            ),
        ]
        for d in publics:
            await d.start()

    try:
        net = build_internet(lab, SITES, port=PORT)
        if args.trials:
            print("| pair | trials | p50 (s) | p95 (s) | max (s) | paths |")
            print("| --- | ---: | ---: | ---: | ---: | --- |")
        for name, (x, y) in pairs.items() if args.trials else ():
            times: list[float] = []
            paths: dict[str, int] = {}
            for n in range(args.trials):
                if n % PUBLIC_LIFETIME == 0:
                    await fresh_publics()
                took, path = await trial(lab, net, root, x, y, n)
                times.append(took)
                paths[path] = paths.get(path, 0) + 1
            finite = [t for t in times if t != float("inf")] or [float("inf")]
            seen = ", ".join(f"{p} {c}" for p, c in sorted(paths.items()))
            print(
                f"| {name} | {len(times)} | {statistics.median(finite):.2f} | "
                f"{pct(finite, 0.95):.2f} | {max(times):.2f} | {seen} |",
                flush=True,
            )
        if args.filedrop_mib:
            print()
            print("| file drop | path | MB/s |")
            print("| --- | --- | ---: |")
            for n, (name, (x, y), budgets) in enumerate(
                (
                    ("none-none", ("n1", "n2"), ()),
                    ("preserving-preserving", ("p1", "p2"), ()),
                    ("preserving-random", ("p1", "r1"), ()),
                    ("random-random, default relay budgets", ("r1", "r2"), ()),
                    ("random-random, relay budgets lifted", ("r1", "r2"), LIFTED),
                )
            ):
                if args.filedrop_rows not in name:
                    continue
                await fresh_publics(*budgets)
                rate, path = await file_drop(lab, net, root, x, y, args.filedrop_mib, f"file{n}")
                print(f"| {name}, {args.filedrop_mib} MiB | {path} | {rate:.1f} |", flush=True)
    finally:
        for d in publics:
            await d.stop()
        lab.close()
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
