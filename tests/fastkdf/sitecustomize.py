"""Test-only: the processes the test suite starts seal new key files cheaply.

``tests/conftest.py`` puts this folder first on ``PYTHONPATH`` for the suite's own
subprocesses (daemons, CLI runs), and Python imports ``sitecustomize`` at start-up.
The package itself has no switch for this: a key file sealed by a normal run always
gets ``p2pchat.identity.KDF_COST``.
"""

from __future__ import annotations

import nacl.pwhash.argon2id

import p2pchat.identity

p2pchat.identity.KDF_COST = (
    nacl.pwhash.argon2id.OPSLIMIT_MIN,
    nacl.pwhash.argon2id.MEMLIMIT_MIN,
)
