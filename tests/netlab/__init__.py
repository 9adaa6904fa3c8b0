"""A network lab for tests: hosts in network namespaces, joined by veths and bridges.

Use it through :class:`Lab` (a context manager that removes everything it made)::

    with open_lab() as lab:
        lan = lab.lan(3)            # three hosts on one bridge, 10.77.0.11-13/24
        nat = lab.two_nats("random")  # two NATed LANs and a public host

Tests that need it skip when :func:`unavailable_reason` says why they cannot run.
"""

from .lab import (
    PREFIX,
    Host,
    Lab,
    LabError,
    list_namespaces,
    open_lab,
    prepare,
    sweep_stale,
    unavailable_reason,
)
from .topologies import PUBLIC_ADDRESS, Lan, NatMode, Router, TwoNats

__all__ = [
    "PREFIX",
    "PUBLIC_ADDRESS",
    "Host",
    "Lab",
    "LabError",
    "Lan",
    "NatMode",
    "Router",
    "TwoNats",
    "list_namespaces",
    "open_lab",
    "prepare",
    "sweep_stale",
    "unavailable_reason",
]
