"""The soak of issue 9, short: two daemons chat and swap files while a third party
runs every attack at once (``benchmarks/soak.py``, which asserts and exits non-zero
on any lost or duplicated message, unverified file, unbounded RSS, error in a
daemon's log, or attack that never reached the victims).  The 10-minute run and its
figures are in docs/performance.md."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SOAK = Path(__file__).resolve().parents[2] / "benchmarks" / "soak.py"

pytestmark = [
    pytest.mark.timeout(480),
    pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc"),
]


def test_short_soak_under_every_attack(tmp_path: Path) -> None:
    figures = tmp_path / "soak.json"
    done = subprocess.run(
        [
            sys.executable, str(SOAK), "--minutes", "0.75", "--report-every", "15",
            "--json", str(figures),
        ],
        capture_output=True,
        text=True,
        timeout=450,
    )  # fmt: skip
    print(done.stdout, done.stderr)
    summary = json.loads(figures.read_text())
    assert done.returncode == 0, summary["failures"]
    assert summary["failures"] == []
    # The run did what it says: traffic both ways under every attack at once.
    last = summary["rows"][-1]
    for way in ("alice->bob", "bob->alice"):
        assert last[way]["sent"] > 0 and last[way]["files_verified"] > 0
    assert all(summary["attacker"].get(k) for k in ("initials", "krpc_queries", "offers"))
