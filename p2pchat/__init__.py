"""p2pchat: end-to-end encrypted, peer-to-peer terminal chat and file drop."""

__version__ = "0.1.0"
