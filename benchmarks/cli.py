#!/usr/bin/env python3
"""CLI start-up: wall time of commands a script runs against a running daemon.

Usage (from the repository root)::

    python3 benchmarks/cli.py [--runs 20] [--importtime]

Two ``p2pchat daemon`` processes (alice and bob, fresh homes under a temporary
folder, contacts of each other, loopback addresses, ``--no-mdns --no-dht``) run
for the whole measurement.  Each command is then started ``--runs`` times as a
new process (``python -m p2pchat --home ALICE ...``, the way the console script
runs it) and timed from ``Popen`` to exit, the commands taking turns (one run of
each per round); the table shows the median, the best and the 90th percentile:

* ``--help``: argument parsing only;
* ``contacts --json``: one control-socket call;
* ``msg bob TEXT``: stored in alice's outbox, sent, and waited for until bob's
  node acknowledged it (the default ``--wait``), so it includes a delivery;
* ``history bob --json``: the conversation (the messages the runs above sent);
* ``send bob FILE``: a 1 KiB file offered to bob (the command returns once the
  offer is made; bob's daemon keeps it waiting for an answer);
* ``transfers --json``: the list of those offers;
* ``python -c pass``: the interpreter alone, for reference; the last column is
  each command's median above it (what p2pchat itself costs);
* ``console script``: ``contacts --json`` through the installed ``p2pchat``
  script next to this interpreter (what a user runs), when there is one.

Then, messages from a pipe (``--pipe N``, default 10,000): ``seq N | p2pchat msg
bob --lines`` against alice's daemon, timed from starting the command until it
exits, which it does once bob's node acknowledged the last line (acks follow the
commit, and delivery is in order, so bob has stored all N by then); three runs,
the median is shown.  Bob's history is then checked to hold every line in order.

``--no-site`` times the commands (not the daemons) with ``python -S``, the bare
interpreter too: without the ``site`` module, so without what a Python
installation's ``.pth`` files import at every start.  Where those import much (here
``certifi``, with ``pathlib``, ``typing``, ``shutil``, ``re``...), the commands find
those modules already loaded; ``-S`` shows what the commands cost an interpreter that
has not (a command for the running node needs nothing from site-packages).

Byte-compiled files are written once before timing (a warm-up run of every
command with ``PYTHONDONTWRITEBYTECODE`` unset), as an installed package has
them.  ``--importtime`` prints, for ``contacts --json`` and ``--help``, the modules
they import beyond what the bare interpreter does (``python -X importtime``; the
interpreter's own start-up, ``site`` and what its ``.pth`` files load, is in the
bare row too), so what is left can be seen.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def env() -> dict[str, str]:
    out = dict(os.environ)
    out.pop("PYTHONDONTWRITEBYTECODE", None)
    out.pop("P2PCHAT_HOME", None)
    out.pop("P2PCHAT_PASSPHRASE", None)
    out["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), out.get("PYTHONPATH")]))
    return out


def cli(home: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "p2pchat", "--home", str(home), *args]


def run(argv: list[str]) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, env=env(), timeout=120)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {done.stderr}")
    return done.stdout


def start_daemon(home: Path) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        cli(home, "daemon", "--no-mdns", "--no-dht"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env(),
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if "listening" not in line:
        raise RuntimeError(f"daemon did not start: {line}{proc.stdout.read()}")
    return proc


def timed(commands: dict[str, list[str]], runs: int) -> dict[str, list[float]]:
    """Wall times of every command, ``runs`` rounds of one run each (interleaved, so
    that a change in the machine's load touches every row alike)."""
    out: dict[str, list[float]] = {label: [] for label in commands}
    for _ in range(runs):
        for label, argv in commands.items():
            started = time.perf_counter()
            done = subprocess.run(argv, capture_output=True, env=env(), timeout=120)
            out[label].append(time.perf_counter() - started)
            if done.returncode != 0:
                raise RuntimeError(f"{' '.join(argv)} failed: {done.stderr.decode()}")
    return out


def imported(argv: list[str]) -> list[tuple[str, int, int]]:
    """(module, self µs, cumulative µs) of every import ``argv`` makes, in order."""
    done = subprocess.run(
        [argv[0], "-X", "importtime", *argv[1:]], capture_output=True, text=True, env=env()
    )
    rows = []
    for line in done.stderr.splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        self_us, cumulative, name = (part.strip() for part in line[12:].split("|"))
        rows.append((name, int(self_us), int(cumulative)))
    return rows


def importtime(
    argv: list[str], bare_argv: list[str], top: int = 15
) -> tuple[int, list[tuple[int, int, str]]]:
    """What ``argv`` imports beyond the bare interpreter (``bare_argv``): the sum of
    those modules' own times, and the slowest of them (cumulative, self, name)."""
    bare = {name for name, _s, _c in imported(bare_argv)}
    extra = [(c, s, name) for name, s, c in imported(argv) if name not in bare]
    return sum(s for _c, s, _n in extra), sorted(extra, reverse=True)[:top]


def pipe(alice: Path, bob: Path, n: int) -> None:
    lines = "".join(f"{i}\n" for i in range(1, n + 1))
    rates = []
    for _round in range(3):
        before = len(json.loads(run(cli(bob, "history", "alice", "--json"))))
        started = time.perf_counter()
        done = subprocess.run(
            cli(alice, "msg", "bob", "--lines", "--wait", "120"),
            input=lines, capture_output=True, text=True, env=env(), timeout=300,
        )  # fmt: skip
        elapsed = time.perf_counter() - started
        if done.returncode != 0 or not done.stdout.startswith("delivered"):
            raise RuntimeError(f"msg --lines: {done.stdout}{done.stderr}")
        history = json.loads(run(cli(bob, "history", "alice", "--json")))
        got = [m["body"] for m in history[before:]]
        if got != [str(i) for i in range(1, n + 1)]:
            raise RuntimeError("bob's history does not hold every line in order")
        rates.append(n / elapsed)
    print(
        f"\nseq {n} | p2pchat msg bob --lines (until bob's node stored and acknowledged "
        f"all): median {statistics.median(rates):,.0f} msg/s "
        f"(runs: {', '.join(f'{r:,.0f}' for r in rates)})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--importtime", action="store_true")
    parser.add_argument("--pipe", type=int, default=10_000, metavar="N")
    parser.add_argument("--no-site", action="store_true", help="commands run with python -S")
    opts = parser.parse_args()
    print(f"python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} cores")
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    with tempfile.TemporaryDirectory(prefix="p2pchat-cli-bench-") as tmp:
        alice, bob = Path(tmp) / "alice", Path(tmp) / "bob"
        for home, name in ((alice, "alice"), (bob, "bob")):
            run(cli(home, "init", "--name", name, "--listen", f"127.0.0.1:{free_udp_port()}"))
        invite = json.loads(run(cli(bob, "id", "--json")))["invite"]
        run(cli(alice, "add", invite, "--name", "bob"))
        alice_invite = json.loads(run(cli(alice, "id", "--json")))["invite"]
        run(cli(bob, "add", alice_invite, "--name", "alice"))
        offered = Path(tmp) / "offered.bin"
        offered.write_bytes(os.urandom(1024))
        daemons = [start_daemon(alice), start_daemon(bob)]
        try:
            commands = {
                "python -c pass": [sys.executable, "-c", "pass"],
                "--help": cli(alice, "--help"),
                "contacts --json": cli(alice, "contacts", "--json"),
                "msg bob TEXT": cli(alice, "msg", "bob", "hello from the benchmark"),
                "history bob --json": cli(alice, "history", "bob", "--json"),
                "send bob FILE": cli(alice, "send", "bob", str(offered)),
                "transfers --json": cli(alice, "transfers", "--json"),
            }
            script = Path(sys.executable).parent / "p2pchat"
            if script.exists():
                commands["console script"] = [str(script), *cli(alice, "contacts", "--json")[3:]]
            if opts.no_site:
                commands = {
                    label: [argv[0], "-S", *argv[1:]]
                    for label, argv in commands.items()
                    if label != "console script"  # its interpreter line has no -S
                }
            for argv in commands.values():  # byte-compile, connect, warm caches
                run(argv)
            sent = run(commands["msg bob TEXT"])
            if not sent.startswith("delivered"):
                raise RuntimeError(f"msg was not delivered: {sent}")
            print(
                f"\n{opts.runs} runs each, wall time from start to exit (ms)"
                + (", every command with python -S" if opts.no_site else "")
                + "\n"
            )
            print(f"| {'command':<18} | median |  best  |  p90   | above bare |")
            print(f"|{'-' * 20}|-------:|-------:|-------:|-----------:|")
            results = timed(commands, opts.runs)
            bare = statistics.median(results["python -c pass"])
            for label, times in results.items():
                times.sort()
                p90 = times[min(len(times) - 1, int(0.9 * len(times)))]
                median = statistics.median(times)
                print(
                    f"| {label:<18} | {median * 1e3:6.1f} "
                    f"| {times[0] * 1e3:6.1f} | {p90 * 1e3:6.1f} | {(median - bare) * 1e3:10.1f} |"
                )
            if opts.pipe:
                pipe(alice, bob, opts.pipe)
            if opts.importtime:
                for label in ("contacts --json", "--help"):
                    total, slowest = importtime(commands[label], commands["python -c pass"])
                    print(
                        f"\n`{label}` imports beyond the bare interpreter, {total / 1e3:.1f} ms "
                        "of their own in all; the slowest (cumulative µs, self µs):"
                    )
                    for cumulative, self_us, name in slowest:
                        print(f"  {cumulative:>8} {self_us:>8}  {name}")
        finally:
            for proc in daemons:
                proc.terminate()
                proc.communicate(timeout=30)
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
