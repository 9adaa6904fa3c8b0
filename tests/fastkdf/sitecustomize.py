"""Test-only: the processes the test suite starts seal new key files cheaply.

``tests/conftest.py`` puts this folder first on ``PYTHONPATH`` for the suite's own
subprocesses (daemons, CLI runs), and Python imports ``sitecustomize`` at start-up.
The package itself has no switch for this: a key file sealed by a normal run always
gets ``p2pchat.identity.KDF_COST``.

The cost is lowered when ``p2pchat.identity`` is imported, not here: importing it
at start-up would load PyNaCl and msgpack into every process, including the CLI
commands that must not load them (tests/test_cli_startup.py).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from importlib.machinery import ModuleSpec, PathFinder
from types import ModuleType
from typing import Any


class _LowerKdfCost:
    """A meta path entry that only watches for ``p2pchat.identity``."""

    def find_spec(
        self, name: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        if name != "p2pchat.identity":
            return None
        sys.meta_path.remove(self)
        spec = PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return spec
        loader: Any = spec.loader
        run = loader.exec_module

        def exec_module(module: ModuleType) -> None:
            run(module)
            import nacl.pwhash.argon2id

            module.KDF_COST = (
                nacl.pwhash.argon2id.OPSLIMIT_MIN,
                nacl.pwhash.argon2id.MEMLIMIT_MIN,
            )

        loader.exec_module = exec_module
        return spec


sys.meta_path.insert(0, _LowerKdfCost())
