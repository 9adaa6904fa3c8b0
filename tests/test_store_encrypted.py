"""The store's own tests again, on a SQLCipher database.

Every test of ``tests/test_store.py`` that needs nothing but a ``store`` runs here
a second time with the ``store`` fixture below, so a query or an error path that
works only on the standard library's binding (a ``sqlite3``-specific exception,
say) is caught on the encrypted one too.  Tests added there later join in.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from pathlib import Path

import pytest

from p2pchat.store import Store, database_is_plaintext

from . import test_store as plain_tests

KEY = bytes(range(32))


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    path = tmp_path / "state" / "node.db"
    with Store(path, key=KEY) as s:
        yield s
    assert database_is_plaintext(path) is False


def _store_only(name: str, value: object) -> bool:
    return (
        name.startswith("test_")
        and inspect.isfunction(value)
        and list(inspect.signature(value).parameters) == ["store"]
    )


SHARED = sorted(name for name, value in vars(plain_tests).items() if _store_only(name, value))
globals().update({name: getattr(plain_tests, name) for name in SHARED})


def test_the_shared_tests_are_collected() -> None:
    assert len(SHARED) >= 20
