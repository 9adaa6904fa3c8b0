"""Where a node keeps its state, and the lock that allows one node per home.

platformdirs (the maintained successor of appdirs) picks the per-user data folder
on each OS; ``--home`` or ``P2PCHAT_HOME`` selects another so that several
identities can run side by side on one machine (tests do exactly that).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import platformdirs

APP_NAME = "p2pchat"
HOME_ENV = "P2PCHAT_HOME"
PASSPHRASE_ENV = "P2PCHAT_PASSPHRASE"
# The new passphrase for `p2pchat passphrase set|change` run without a terminal.
NEW_PASSPHRASE_ENV = "P2PCHAT_NEW_PASSPHRASE"
BOOTSTRAP_ENV = "P2PCHAT_BOOTSTRAP"
# The well-known Mainline routers: only for a daemon given no --bootstrap and no
# $P2PCHAT_BOOTSTRAP (tests always name their own nodes).
DEFAULT_BOOTSTRAP = (
    "router.bittorrent.com:6881",
    "dht.transmissionbt.com:6881",
    "router.utorrent.com:6881",
    "dht.libtorrent.org:25401",
)
DEFAULT_PORT = 47474
# sockaddr_un.sun_path is 108 bytes on Linux (104 on macOS); stay clear of both.
_MAX_UNIX_PATH = 100


class ConfigError(Exception):
    """A problem with the state folder that the user has to fix."""


class NodeAlreadyRunning(ConfigError):
    """Another node holds this home's lock."""


def resolve_home(cli_home: str | os.PathLike[str] | None = None) -> Path:
    """``--home`` beats ``P2PCHAT_HOME`` beats the platform's user data folder."""
    if cli_home:
        return Path(cli_home).expanduser().resolve()
    env = os.environ.get(HOME_ENV)
    if env:
        return Path(env).expanduser().resolve()
    return platformdirs.user_data_path(APP_NAME, appauthor=False)


@dataclass(frozen=True, slots=True)
class Paths:
    """Every file a node uses, derived from one home folder."""

    home: Path

    @property
    def identity(self) -> Path:
        return self.home / "identity.key"

    @property
    def database(self) -> Path:
        return self.home / "p2pchat.db"

    @property
    def settings(self) -> Path:
        return self.home / "settings.json"

    @property
    def dht_state(self) -> Path:
        return self.home / "dht.state"

    @property
    def lock(self) -> Path:
        return self.home / "node.lock"

    @property
    def downloads(self) -> Path:
        return platformdirs.user_downloads_path()

    @property
    def control_socket(self) -> Path:
        """The owner-only Unix socket of the running node.

        A deep home folder would overflow ``sun_path``; then the socket lives in a
        private per-user folder under the temp dir, named by a hash of the home.
        """
        direct = self.home / "control.sock"
        if len(os.fsencode(direct)) <= _MAX_UNIX_PATH:
            return direct
        digest = hashlib.blake2b(os.fsencode(self.home), digest_size=10).hexdigest()
        runtime = Path(tempfile.gettempdir()) / f"p2pchat-{os.getuid()}"
        return runtime / f"{digest}.sock"

    def ensure(self) -> None:
        """Create the home folder owner-only (0700): it holds the key and history."""
        self.home.mkdir(mode=0o700, parents=True, exist_ok=True)
        with contextlib.suppress(OSError):
            os.chmod(self.home, 0o700)
        sock_dir = self.control_socket.parent
        if sock_dir != self.home:
            sock_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            if sock_dir.stat().st_uid != os.getuid():
                raise ConfigError(f"{sock_dir} belongs to another user")
            os.chmod(sock_dir, 0o700)


def load_settings(paths: Paths) -> dict[str, Any]:
    """Small JSON settings (display name, last listen address); absent means defaults."""
    try:
        data = json.loads(paths.settings.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read {paths.settings}: {exc}") from exc
    return data if isinstance(data, dict) else {}


def save_settings(paths: Paths, settings: dict[str, Any]) -> None:
    """Write atomically so a crash never leaves half a settings file."""
    paths.ensure()
    tmp = paths.settings.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(settings, fh, indent=2, sort_keys=True)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, paths.settings)


def bootstrap_list(
    cli: Sequence[str] | None, environ: Mapping[str, str] = os.environ
) -> tuple[str, ...]:
    """``--bootstrap`` beats ``$P2PCHAT_BOOTSTRAP`` (comma or whitespace separated)
    beats the public routers."""
    if cli:
        return tuple(cli)
    from_env = tuple(re.split(r"[\s,]+", environ.get(BOOTSTRAP_ENV, "").strip()))
    return tuple(e for e in from_env if e) or DEFAULT_BOOTSTRAP


class NodeLock:
    """An advisory ``flock`` on ``node.lock``: released by the kernel even on SIGKILL,
    so a crashed node never leaves a stale lock behind."""

    def __init__(self, paths: Paths) -> None:
        self._paths = paths
        self._fd: int | None = None

    def acquire(self) -> None:
        self._paths.ensure()
        fd = os.open(self._paths.lock, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
            os.close(fd)
            who = f" (pid {holder})" if holder else ""
            raise NodeAlreadyRunning(
                f"a p2pchat node is already running for {self._paths.home}{who}"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def is_held_elsewhere(self) -> bool:
        """True when another process holds the lock (a node runs for this home)."""
        if self._fd is not None:
            return False
        try:
            fd = os.open(self._paths.lock, os.O_RDWR)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        else:
            fcntl.flock(fd, fcntl.LOCK_UN)
            return False
        finally:
            os.close(fd)
