"""Tests of the sans-IO DHT core, including a simulated network with virtual time."""
