"""A one-line input whose value never holds control or invisible characters.

Textual's ``Input`` draws its value as it is: a pasted invite or name that
someone sent with an escape sequence in it would reach the terminal.  Every
value (typed, pasted or set by the app) goes through ``safe.clean`` instead:
controls become visible symbols, format characters go.  Passphrase fields
keep Textual's ``Input``: they are never drawn, and must take the bytes typed.
"""

from __future__ import annotations

from textual.widgets import Input

from p2pchat.ui.safe import clean


class PlainInput(Input):
    def validate_value(self, value: str) -> str:
        return clean(value)
