"""Screens of the chat UI: setup (first run, unlock, errors), main, and modals."""
