"""Sans-IO protocol cores: bytes and ``now`` in, events and bytes out.

Nothing in this package may import asyncio, socket, textual or ``p2pchat.net``;
``tests/test_boundaries.py`` enforces it so every protocol stays testable
without a network.
"""
