"""A CLI command that talks to the running node loads only the control client.

Start-up time is what a script pays for every command; most of it used to be
importing the node, aioquic, the DHT and SQLCipher, none of which such a command
uses.  This checks what was imported (not how long it took: timing lives in
benchmarks/cli.py) after real commands against a real daemon.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import pty
import shutil
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pytest

import p2pchat
from p2pchat import __version__
from p2pchat.identity import create_identity

from .conftest import free_udp_port
from .daemons import Daemon, cli_env, run_cli

# What a command answered by the running node must never load.  Past the node's own
# stack: asyncio (it runs without an event loop, over a blocking socket), the control
# server, what the state-folder module imports only where it is used (platformdirs
# when no --home is given, dataclasses and the inspect module it pulls in, hashlib),
# the ``socket`` module (the control client uses the socket type under it) and
# ``getpass`` (only where a passphrase is asked for).
HEAVY_PACKAGES = (
    "aioquic", "cryptography", "nacl", "msgpack", "blake3", "zeroconf", "sqlcipher3",
    "sqlite3", "textual", "rich", "precis_i18n", "bencode2", "asyncio", "platformdirs",
    "dataclasses", "inspect", "hashlib", "logging", "datetime", "ssl", "socket",
    "selectors", "getpass", "termios",
)  # fmt: skip
HEAVY_MODULES = (
    "p2pchat.node", "p2pchat.store", "p2pchat.rpc", "p2pchat.owner", "p2pchat.identity",
    "p2pchat.atrest", "p2pchat.dht", "p2pchat.net.dht", "p2pchat.net.endpoint",
    "p2pchat.net.transfers", "p2pchat.ui", "p2pchat.core", "p2pchat.net.control",
    "p2pchat.remote",
)  # fmt: skip

# Without ``site`` (``python -S``), nothing that a Python installation's .pth files
# import is loaded before the command: there it must not load ``typing`` (only the
# type checker reads it) nor ``shutil`` with zlib, bz2 and lzma (argparse's help
# formatter asks it the terminal's width).
NOT_WITHOUT_SITE = ("typing", "shutil", "zlib", "bz2", "lzma")

# Runs one command in a fresh interpreter, then reports what it imported.
PROBE = """
import json, sys
out, root = sys.argv[1], sys.argv[2]
if root:  # without site: the package's folder, as an installation would add it
    sys.path.insert(0, root)
code = 0
try:
    from p2pchat.cli import main
    main(sys.argv[3:])
except SystemExit as exc:
    code = exc.code
with open(out, "w") as f:
    json.dump({"code": code, "modules": sorted(sys.modules)}, f)
"""
ROOT = str(Path(p2pchat.__file__).resolve().parent.parent)


def _imports(
    tmp_path: Path, home: Path, *args: str, site: bool = True
) -> tuple[int, set[str]]:
    out = tmp_path / "modules.json"
    interpreter = [sys.executable] if site else [sys.executable, "-S"]
    done = subprocess.run(
        [*interpreter, "-c", PROBE, str(out), "" if site else ROOT, "--home", str(home), *args],
        capture_output=True, text=True, env=cli_env(), timeout=60,
    )  # fmt: skip
    assert out.exists(), done.stderr
    report = json.loads(out.read_text())
    out.unlink()
    assert report["code"] == 0, (args, done.stdout, done.stderr)
    return report["code"], set(report["modules"])


def _heavy(modules: set[str]) -> list[str]:
    return sorted(
        m
        for m in modules
        if m.split(".")[0] in HEAVY_PACKAGES
        or any(m == h or m.startswith(h + ".") for h in HEAVY_MODULES)
    )


async def test_commands_for_the_running_node_import_only_the_control_client(
    tmp_path: Path,
) -> None:
    home = tmp_path / "alice"
    init = run_cli(home, "init", "--name", "alice", "--listen", f"127.0.0.1:{free_udp_port()}")
    assert init.returncode == 0, init.stderr
    bob = tmp_path / "bob.key"
    bob_id = create_identity(bob).peer_id
    added = run_cli(home, "add", bob_id, "--name", "bob", "--addr", "127.0.0.1:9")
    assert added.returncode == 0, added.stderr
    offered = tmp_path / "note.txt"
    offered.write_text("a file for bob\n")
    daemon = Daemon(home, f"127.0.0.1:{free_udp_port()}")
    await daemon.start()
    try:
        commands = [
            ("contacts", "--json"),
            ("msg", "bob", "hello", "--wait", "0"),
            ("history", "bob", "--json"),
            ("send", "bob", str(offered)),
            ("transfers",),
            ("search", "hello", "--json"),
        ]
        for command in commands:
            _code, modules = _imports(tmp_path, home, *command)
            assert "p2pchat.net.control_client" in modules  # it did talk to the daemon
            assert _heavy(modules) == [], command
            if "--json" in command:  # no line for a terminal: no unicodedata either
                assert "p2pchat.plain" not in modules, command
        for command in [("contacts", "--json"), ("history", "bob")]:  # they change nothing
            _code, modules = _imports(tmp_path, home, *command, site=False)
            assert _heavy(modules) == [], command
            assert sorted(modules.intersection(NOT_WITHOUT_SITE)) == [], command
        # The daemon did the work: the message and the offer are in its store.
        history = await daemon.call("history", contact="bob")
        assert [m["body"] for m in history] == ["hello"]
        assert len(await daemon.call("transfers")) == 1
        # ``stop`` waits for the node to be gone without an event loop too.
        _code, modules = _imports(tmp_path, home, "stop", "--timeout", "20")
        assert _heavy(modules) == []
        assert daemon.proc is not None
        assert daemon.proc.wait(timeout=20) == 0
    finally:
        await daemon.stop()


def test_help_and_version_import_nothing_heavy(tmp_path: Path) -> None:
    for args in (["--help"], ["--version"], ["contacts", "--help"], ["msg", "--help"]):
        _code, modules = _imports(tmp_path, tmp_path / "nobody", *args)
        assert _heavy(modules) == [], args
        assert "p2pchat.plain" not in modules
        _code, modules = _imports(tmp_path, tmp_path / "nobody", *args, site=False)
        assert sorted(modules.intersection(NOT_WITHOUT_SITE)) == [], args


def test_a_run_that_names_its_command_builds_only_that_parser() -> None:
    """``main`` builds the parser of the one command a run names (building all of them
    was a large part of a short command's start-up); it must read the same arguments
    as the whole parser, and leave errors and help to the whole parser."""
    from p2pchat.cli import COMMANDS, _named_command, _Rebuild, build_parser

    full = build_parser()
    [sub] = [a for a in full._actions if isinstance(a, argparse._SubParsersAction)]
    assert set(sub.choices) == COMMANDS
    runs = [
        ["contacts", "--json"],
        ["--home", "/tmp/h", "-vv", "msg", "bob", "hi", "--wait", "0"],
        ["--home=/tmp/h", "--no-dht", "history", "bob", "--limit", "5"],
        ["--ask-passphrase", "dht", "lookup", "someone"],
        ["group", "msg", "friends", "hello"],
        ["send", "bob", "a", "b", "--wait"],
        ["daemon", "--listen", "127.0.0.1:1", "--no-mdns", "--relay-rate", "2M"],
        ["transfers", "--json"],
    ]
    for argv in runs:
        only = _named_command(argv)
        assert only is not None and only in argv, argv
        assert vars(build_parser(only=only).parse_args(argv)) == vars(full.parse_args(argv))
    for unsure in (["--ho", "/tmp/h", "contacts"], ["nosuch"], ["-x", "contacts"], ["-h", "msg"]):
        assert _named_command(unsure) is None, unsure
    with pytest.raises(_Rebuild):  # reported by the whole parser, in its words
        build_parser(only="history").parse_args(["history", "bob", "--limit", "0"])


def test_a_run_that_names_no_command_builds_none() -> None:
    """Help, the version and the app name no command: the parser lists every command
    with its help (the same text as the whole parser's) without building any."""
    from p2pchat.cli import NO_COMMAND, _named_command, _Rebuild, build_parser

    full = build_parser()
    listed = build_parser(only=NO_COMMAND)
    assert listed.format_help() == full.format_help()
    assert listed.format_usage() == full.format_usage()
    for argv in ([], ["--home", "/tmp/h"], ["--no-mdns", "--listen", "127.0.0.1:1", "-v"]):
        assert _named_command(argv) == NO_COMMAND, argv
        assert vars(listed.parse_args(argv)) == vars(full.parse_args(argv))
    for argv in (["--help"], ["-h"], ["--home", "/tmp/h", "--version"]):
        assert _named_command(argv) == NO_COMMAND, argv
    with pytest.raises(_Rebuild):  # a usage error: the whole parser reports it
        build_parser(only=NO_COMMAND).parse_args(["--home"])


def test_the_help_formatter_finds_the_width_as_argparse_would(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``cli._Formatter`` works out the terminal's width without ``shutil``: the same
    width as ``shutil.get_terminal_size``, so the same help as argparse's own."""
    from p2pchat.cli import _terminal_columns, build_parser

    for columns in ("", "50", "200", "wide", "-3", "0"):
        monkeypatch.setenv("COLUMNS", columns)
        assert _terminal_columns() == shutil.get_terminal_size().columns, columns
        parser = build_parser()
        ours = parser.format_help()
        parser.formatter_class = argparse.HelpFormatter
        assert ours == parser.format_help(), columns
    monkeypatch.delenv("COLUMNS")
    assert _terminal_columns() == shutil.get_terminal_size().columns
    # On a terminal 57 columns wide (a pseudo-terminal as stdout): its width.
    leader, follower = pty.openpty()
    try:
        fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 57, 0, 0))
        env = cli_env()
        env.pop("COLUMNS", None)
        done = subprocess.run(
            [
                sys.executable, "-c",
                "import shutil, sys; from p2pchat.cli import _terminal_columns; "
                "print(_terminal_columns(), shutil.get_terminal_size().columns, file=sys.stderr)",
            ],
            stdout=follower, stderr=subprocess.PIPE, text=True, env=env, timeout=60,
        )  # fmt: skip
    finally:
        os.close(leader)
        os.close(follower)
    assert done.stderr.split() == ["57", "57"], done.stderr


def test_the_program_runs_exit_handlers_and_flushes_before_it_ends() -> None:
    """A run that only parsed or talked to the running node ends the process without
    the interpreter's shutdown (``cli._end``): what was printed and what an exit
    handler does must still happen, and the exit status be the same."""
    script = (
        "import atexit, sys\n"
        "atexit.register(lambda: print('exit handler ran'))\n"
        "sys.argv = ['p2pchat', *sys.argv[1:]]\n"
        "from p2pchat.cli import main\n"
        "main()\n"
    )
    env = cli_env()
    del env["PYTHONUNBUFFERED"]  # block-buffered, as in a pipe: flushed at the end
    done = subprocess.run(
        [sys.executable, "-c", script, "--version"],
        capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0
    assert done.stdout == f"p2pchat {__version__}\nexit handler ran\n"
    done = subprocess.run(
        [sys.executable, "-c", script, "--home"],
        capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.endswith("error: argument --home: expected one argument\n")
    assert done.stdout == "exit handler ran\n"
    # A thread still running (this one until the main thread has ended): the
    # interpreter's own shutdown, which waits for it.
    threaded = (
        "import threading\n"
        "def wait():\n"
        "    threading.main_thread().join()\n"
        "    print('thread done')\n"
        "threading.Thread(target=wait).start()\n" + script
    )
    done = subprocess.run(
        [sys.executable, "-c", threaded, "--version"],
        capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0
    assert done.stdout == f"p2pchat {__version__}\nthread done\nexit handler ran\n"
