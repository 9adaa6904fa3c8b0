"""``Paths``: a value written out by hand (no dataclass, for the CLI's start-up)."""

from __future__ import annotations

import copy
import pickle
from pathlib import Path

import pytest

from p2pchat.config import Paths


def test_paths_is_an_immutable_value(tmp_path: Path) -> None:
    paths = Paths(tmp_path)
    assert paths == Paths(tmp_path) and hash(paths) == hash(Paths(tmp_path))
    assert paths != Paths(tmp_path / "other") and paths != tmp_path
    assert len({paths, Paths(tmp_path)}) == 1
    assert copy.copy(paths) == paths and copy.deepcopy(paths) == paths
    assert pickle.loads(pickle.dumps(paths)) == paths
    assert repr(paths) == f"Paths(home={tmp_path!r})"
    with pytest.raises(AttributeError):
        paths.home = tmp_path / "other"
    assert paths.identity == tmp_path / "identity.key"
