"""The only package that owns sockets, timers and tasks."""
