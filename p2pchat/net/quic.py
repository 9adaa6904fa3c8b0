"""QUIC settings and the certificate that binds TLS to the identity key.

Each node's TLS certificate is self-signed by its Ed25519 identity key, so a
dialling client learns during the TLS handshake whether the server holds the key
it wanted.  aioquic does not request client certificates; the NaCl session that
runs inside QUIC (``core/session.py``) is what authenticates the dialling side,
and it authenticates the server a second time, independent of TLS.
"""

from __future__ import annotations

import datetime
import math
import ssl
import time

from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.x509.oid import NameOID

from p2pchat.identity import Identity

ALPN = "p2pchat/1"
# Not the peer ID: QUIC Initial packets are readable by anyone on the path, and
# a constant name keeps who-dials-whom out of them.
SERVER_NAME = "p2pchat"
# QUIC's own idle timeout bounds a handshake that gets no answer (hole punching
# needs it long).  An established connection is watched more closely by the
# endpoint: the dialling side pings after KEEPALIVE_INTERVAL of silence (and again
# KEEPALIVE_RETRY after an unanswered ping), the accepting side only after
# ACCEPTER_KEEPALIVE (a backstop), and a connection silent for LIVENESS_TIMEOUT is
# given up, so presence drops within that of a peer vanishing: the bound depends on
# LIVENESS_TIMEOUT alone, the intervals set how many lost pings it survives and
# what an idle connection costs (docs/protocol.md, "Liveness").
IDLE_TIMEOUT = 20.0
KEEPALIVE_INTERVAL = 1.5
KEEPALIVE_RETRY = 1.0
ACCEPTER_KEEPALIVE = 2.5
# Pings are due on multiples of this (loop time), so those of many connections are
# sent together; a ping is at most this much later than its interval.
KEEPALIVE_GRID = 0.5
# A ping after silence (not the repeat of an unanswered one) may also go up to
# KEEPALIVE_EARLY sooner, to fall on a multiple of KEEPALIVE_CYCLE: an idle
# connection then pings every KEEPALIVE_CYCLE in step with the node's other idle
# connections (one loop wake-up for all of them, not one per grid phase).
KEEPALIVE_EARLY = 0.5
KEEPALIVE_CYCLE = KEEPALIVE_INTERVAL + KEEPALIVE_GRID
# The node's once-a-second work (dial loop, punch and relay upkeep) runs on whole
# seconds of wall-clock time, so every other one shares the keepalives' wake-up.
TICK = 1.0
LIVENESS_TIMEOUT = 3.5


def wall_offset(now: float) -> float:
    """Wall-clock time minus the loop time ``now`` (just read), to 10 ms: keepalives
    and periodic work fall due on whole multiples of their period in wall-clock
    time, so nodes whose clocks are right keep in step with each other.  Rounded,
    so that it stays one number between the rare changes of the clock."""
    return round(time.time() - now, 2)


def next_tick(now: float) -> float:
    """The first whole ``TICK`` of wall-clock time after the loop time ``now`` (just
    read), in loop time: when periodic work runs next, in the same loop wake-up as
    the node's other periodic work and its keepalives (an idle node sleeps between
    them; each wake-up after a sleep is the dear part)."""
    offset = wall_offset(now)
    return (math.floor((now + offset) / TICK) + 1) * TICK - offset


def make_certificate(identity: Identity) -> tuple[x509.Certificate, ed25519.Ed25519PrivateKey]:
    """A self-signed certificate whose public key is the identity key."""
    key = ed25519.Ed25519PrivateKey.from_private_bytes(identity.seed)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, identity.peer_id)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .sign(key, None)
    )
    return cert, key


def configuration(identity: Identity, *, is_client: bool) -> QuicConfiguration:
    """Both roles present the identity certificate; chain validation is off
    because trust comes from the key itself, checked in ``peer_certificate_key``."""
    cert, key = make_certificate(identity)
    return QuicConfiguration(
        alpn_protocols=[ALPN],
        is_client=is_client,
        idle_timeout=IDLE_TIMEOUT,
        verify_mode=ssl.CERT_NONE,
        server_name=SERVER_NAME if is_client else None,
        certificate=cert,
        private_key=key,
    )


def peer_certificate_key(conn: QuicConnection) -> bytes | None:
    """The raw Ed25519 key of the certificate the peer proved possession of.

    aioquic verifies the CertificateVerify signature with this certificate's key
    even when chain validation is off, so the key is authenticated.  aioquic has
    no public accessor for it, hence the private attribute.
    """
    cert = getattr(conn.tls, "_peer_certificate", None)
    if cert is None:
        return None
    public = cert.public_key()
    if not isinstance(public, ed25519.Ed25519PublicKey):
        return None
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def smoothed_rtt(conn: QuicConnection) -> float | None:
    """QUIC's smoothed round-trip time in seconds, once a sample exists.

    aioquic keeps it in its loss-recovery object without a public accessor.
    """
    loss = getattr(conn, "_loss", None)
    if loss is None or not getattr(loss, "_rtt_initialized", False):
        return None
    rtt = getattr(loss, "_rtt_smoothed", None)
    return float(rtt) if isinstance(rtt, int | float) else None
