"""Where a node keeps its state, and the lock that allows one node per home.

platformdirs (the maintained successor of appdirs) picks the per-user data folder
on each OS; ``--home`` or ``P2PCHAT_HOME`` selects another so that several
identities can run side by side on one machine (tests do exactly that).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import stat
from pathlib import Path

TYPE_CHECKING = False  # typing for the type checker only: see cli.py
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from typing import Any

# Every CLI command imports this module, most of them to reach the running node and
# exit: what only some paths need (platformdirs, hashlib, tempfile) is imported where
# it is used, to keep their start-up short (docs/performance.md, "CLI start-up").

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
    import platformdirs

    return platformdirs.user_data_path(APP_NAME, appauthor=False)


class Paths:
    """Every file a node uses, derived from one home folder.

    A value (immutable, compared and hashed by its home) written out by hand rather
    than as a frozen dataclass: the ``dataclasses`` module, with ``inspect`` that it
    imports, would be a large part of a CLI command's own start-up.
    """

    __slots__ = ("home",)
    home: Path

    def __init__(self, home: Path) -> None:
        object.__setattr__(self, "home", home)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"Paths is immutable: cannot set {name}")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"Paths is immutable: cannot delete {name}")

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return bool(self.home == other.home)

    def __hash__(self) -> int:
        return hash((self.home,))

    def __repr__(self) -> str:
        return f"Paths(home={self.home!r})"

    def __reduce__(self) -> tuple[type[Paths], tuple[Path]]:
        return (Paths, (self.home,))  # copy and pickle through __init__

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
        import platformdirs

        return platformdirs.user_downloads_path()

    @property
    def socket_pointer(self) -> Path:
        """Names the private folder of the control socket when it cannot live in the
        home and there is no usable ``$XDG_RUNTIME_DIR`` (see ``control_socket``)."""
        return self.home / "control.dir"

    @property
    def control_socket(self) -> Path:
        """The owner-only Unix socket of the running node.

        A deep home folder would overflow ``sun_path``.  The socket then lives in
        ``$XDG_RUNTIME_DIR/p2pchat/`` (named by a hash of the home) when that folder
        is ours and private, else in a folder made by ``mkdtemp`` (unpredictable
        name, 0700) whose path the home records in ``control.dir``.  A fixed name
        under the shared temp dir would let another user create it first and keep
        the node from starting.  Nothing found (no node ever ran): the direct path,
        whose length makes a connect fail with a clear error.
        """
        direct = self.home / "control.sock"
        if _fits(direct):
            return direct
        runtime = _xdg_socket(self.home)
        if runtime is not None:
            return runtime
        folder = _read_pointer(self.socket_pointer)
        return folder / "control.sock" if folder is not None else direct

    def ensure(self) -> None:
        """Create the home folder owner-only (0700): it holds the key and history;
        and the private folder of the control socket when it lives elsewhere."""
        self.home.mkdir(mode=0o700, parents=True, exist_ok=True)
        with contextlib.suppress(OSError):
            os.chmod(self.home, 0o700)
        if _fits(self.home / "control.sock"):
            return
        runtime = _xdg_socket(self.home)
        if runtime is not None:
            with contextlib.suppress(FileExistsError):
                runtime.parent.mkdir(mode=0o700)
            _check_private(runtime.parent)
            return
        if _read_pointer(self.socket_pointer) is not None:
            return
        import tempfile

        folder = Path(tempfile.mkdtemp(prefix="p2pchat-"))
        _check_private(folder)
        tmp = self.socket_pointer.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(str(folder) + "\n")
        os.replace(tmp, self.socket_pointer)


def _fits(path: Path) -> bool:
    return len(os.fsencode(path)) <= _MAX_UNIX_PATH


def _is_private_dir(folder: Path) -> bool:
    """A real folder (not a link), owned by us, with no access for group or others."""
    try:
        st = folder.lstat()
    except OSError:
        return False
    return (
        stat.S_ISDIR(st.st_mode)
        and st.st_uid == os.getuid()
        and stat.S_IMODE(st.st_mode) & 0o077 == 0
    )


def _check_private(folder: Path) -> None:
    if not _is_private_dir(folder):
        raise ConfigError(
            f"{folder} (the control socket's folder) must be a folder owned by you with "
            "mode 0700; remove it or fix its owner and mode"
        )


def _xdg_socket(home: Path) -> Path | None:
    """``$XDG_RUNTIME_DIR/p2pchat/<hash of home>.sock``, if that folder is usable:
    set, absolute, ours, private (so nobody else can have made ``p2pchat`` in it)."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if not runtime or not os.path.isabs(runtime):
        return None
    base = Path(runtime)
    try:
        st = base.stat()
    except OSError:
        return None
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
        return None
    import hashlib

    digest = hashlib.blake2b(os.fsencode(home), digest_size=10).hexdigest()
    path = base / "p2pchat" / f"{digest}.sock"
    return path if _fits(path) else None


def _read_pointer(pointer: Path) -> Path | None:
    """The folder ``control.dir`` names, if it still is a private folder of ours."""
    try:
        text = pointer.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return None
    folder = Path(text)
    if not text or not folder.is_absolute() or not _fits(folder / "control.sock"):
        return None
    return folder if _is_private_dir(folder) else None


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


_SIZE_RE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*", re.IGNORECASE)


def parse_size(text: str) -> int:
    """``"512K"``, ``"2M"``, ``"1.5G"``, ``"0"`` (binary units; a bare number is
    bytes): the relay budgets' command-line form (``p2pchat daemon --relay-rate``)."""
    match = _SIZE_RE.fullmatch(text)
    if match is None:
        raise ValueError(f"not a size: {text!r} (say 512K, 2M, 10G or a number of bytes)")
    number, unit = float(match.group(1)), match.group(2).lower()
    return int(number * 1024 ** "_kmgt".index(unit or "_"))
