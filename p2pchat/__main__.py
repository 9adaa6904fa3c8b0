"""``python -m p2pchat``."""

from p2pchat.cli import main

main()
