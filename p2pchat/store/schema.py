"""The database schema: every migration step, and how they are applied.

``PRAGMA user_version`` counts the steps applied; opening a store runs the missing
ones inside one transaction, so a database is never half-migrated and two
processes opening the same file never both migrate it.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from p2pchat.store.errors import StoreError

# Each step is applied once, in order, inside the same transaction that bumps
# ``PRAGMA user_version``; append new steps, never edit a released one.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE contacts (
        peer_id      TEXT PRIMARY KEY,
        name         TEXT NOT NULL,
        verified     INTEGER NOT NULL DEFAULT 0,
        added_at     REAL NOT NULL,
        addresses    TEXT NOT NULL DEFAULT '[]',
        last_seen    REAL,
        last_address TEXT
    );

    CREATE TABLE conversations (
        peer_id       TEXT PRIMARY KEY,
        send_seq      INTEGER NOT NULL DEFAULT 0,
        recv_seq      INTEGER NOT NULL DEFAULT 0,
        peer_read_seq INTEGER NOT NULL DEFAULT 0,
        my_read_seq   INTEGER NOT NULL DEFAULT 0
    );

    -- pos is AUTOINCREMENT so it is never reused: it is the order the user saw.
    CREATE TABLE messages (
        pos         INTEGER PRIMARY KEY AUTOINCREMENT,
        id          TEXT NOT NULL UNIQUE,
        peer_id     TEXT NOT NULL,
        direction   TEXT NOT NULL CHECK (direction IN ('in', 'out')),
        seq         INTEGER NOT NULL CHECK (seq >= 1),
        body        TEXT NOT NULL,
        created_at  REAL NOT NULL,
        received_at REAL,
        state       TEXT NOT NULL CHECK (state IN ('queued', 'sent', 'delivered', 'read')),
        updated_at  REAL NOT NULL
    );
    CREATE UNIQUE INDEX messages_peer_direction_seq ON messages (peer_id, direction, seq);
    CREATE INDEX messages_history ON messages (peer_id, pos);
    -- Only delivered-but-unread rows, named with INDEXED BY by the queries that
    -- need them: keeps read receipts and unread counts independent of how long
    -- the history is (without statistics the planner would pick the unique index).
    CREATE INDEX messages_unread_in ON messages (peer_id, seq)
        WHERE direction = 'in' AND state = 'delivered';
    CREATE INDEX messages_unread_out ON messages (peer_id, seq)
        WHERE direction = 'out' AND state = 'delivered';

    CREATE TABLE outbox (
        message_id   TEXT PRIMARY KEY REFERENCES messages (id) ON DELETE CASCADE,
        peer_id      TEXT NOT NULL,
        seq          INTEGER NOT NULL,
        attempts     INTEGER NOT NULL DEFAULT 0,
        last_attempt REAL
    );
    CREATE UNIQUE INDEX outbox_peer_seq ON outbox (peer_id, seq);

    CREATE TABLE requests (
        peer_id    TEXT PRIMARY KEY,
        name       TEXT,
        address    TEXT,
        preview    TEXT,
        first_seen REAL NOT NULL,
        last_seen  REAL NOT NULL,
        attempts   INTEGER NOT NULL DEFAULT 1,
        state      TEXT NOT NULL CHECK (state IN ('pending', 'declined'))
    );
    CREATE INDEX requests_state_last_seen ON requests (state, last_seen);

    CREATE TABLE invite_tokens (
        token      TEXT PRIMARY KEY,
        created_at REAL NOT NULL,
        expires_at REAL NOT NULL,
        used_at    REAL,
        used_by    TEXT
    );
    """,
    """
    -- File drop: one row per transfer, one per offered file.  The receiver's
    -- progress is the size of its .part file (every byte in it was authenticated),
    -- so nothing per chunk needs to be written here.
    CREATE TABLE transfers (
        id          TEXT PRIMARY KEY,
        peer_id     TEXT NOT NULL,
        direction   TEXT NOT NULL CHECK (direction IN ('in', 'out')),
        state       TEXT NOT NULL,
        created_at  REAL NOT NULL,
        updated_at  REAL NOT NULL,
        error       TEXT,
        bytes_moved INTEGER NOT NULL DEFAULT 0,
        attempts    INTEGER NOT NULL DEFAULT 0,
        folder      TEXT
    );
    CREATE INDEX transfers_peer ON transfers (peer_id, created_at);
    CREATE TABLE transfer_files (
        transfer_id TEXT NOT NULL REFERENCES transfers (id) ON DELETE CASCADE,
        idx         INTEGER NOT NULL,
        path        TEXT NOT NULL,
        size        INTEGER NOT NULL,
        hash        BLOB NOT NULL,
        source      TEXT,
        part        TEXT,
        final       TEXT,
        accepted    INTEGER NOT NULL DEFAULT 1,
        done        INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (transfer_id, idx)
    );
    """,
    """
    -- File drop budgets: how many file rows each transfer holds (so a contact's share
    -- is one indexed sum), and indexes for paged listings, expiry and pruning.
    ALTER TABLE transfers ADD COLUMN file_count INTEGER NOT NULL DEFAULT 0;
    UPDATE transfers SET file_count =
        (SELECT COUNT(*) FROM transfer_files WHERE transfer_id = transfers.id);
    CREATE INDEX transfers_created ON transfers (created_at, id);
    CREATE INDEX transfers_state ON transfers (direction, state, updated_at);
    """,
    """
    -- One-time tokens of invites we redeemed, waiting for the first Hello to that
    -- peer.  Here rather than in settings.json so that a home with a passphrase holds
    -- no contact's peer ID in clear.
    CREATE TABLE pending_tokens (
        peer_id TEXT PRIMARY KEY,
        token   TEXT NOT NULL
    );
    """,
    """
    -- Message ids are unique per conversation, not across the whole table: a contact
    -- reusing another contact's id must not make that contact's message a duplicate
    -- forever.  SQLite cannot change a constraint in place, so messages and outbox
    -- (whose foreign key must follow) are rebuilt.  The outbox goes first, so dropping
    -- the old messages table cascades into nothing.
    CREATE TABLE messages_v4 (
        pos         INTEGER PRIMARY KEY AUTOINCREMENT,
        id          TEXT NOT NULL,
        peer_id     TEXT NOT NULL,
        direction   TEXT NOT NULL CHECK (direction IN ('in', 'out')),
        seq         INTEGER NOT NULL CHECK (seq >= 1),
        body        TEXT NOT NULL,
        created_at  REAL NOT NULL,
        received_at REAL,
        state       TEXT NOT NULL CHECK (state IN ('queued', 'sent', 'delivered', 'read')),
        updated_at  REAL NOT NULL,
        UNIQUE (peer_id, id)
    );
    INSERT INTO messages_v4 (pos, id, peer_id, direction, seq, body, created_at,
        received_at, state, updated_at)
        SELECT pos, id, peer_id, direction, seq, body, created_at, received_at, state,
        updated_at FROM messages ORDER BY pos;
    -- pos is never reused: carry the counter over, not just the highest row left.
    UPDATE sqlite_sequence SET seq = max(seq,
        coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'messages'), 0))
        WHERE name = 'messages_v4';
    CREATE TABLE outbox_v4 (
        message_id   TEXT NOT NULL,
        peer_id      TEXT NOT NULL,
        seq          INTEGER NOT NULL,
        attempts     INTEGER NOT NULL DEFAULT 0,
        last_attempt REAL,
        PRIMARY KEY (peer_id, message_id),
        FOREIGN KEY (peer_id, message_id) REFERENCES messages_v4 (peer_id, id)
            ON DELETE CASCADE
    );
    INSERT INTO outbox_v4 (message_id, peer_id, seq, attempts, last_attempt)
        SELECT message_id, peer_id, seq, attempts, last_attempt FROM outbox;
    DROP TABLE outbox;
    DROP TABLE messages;
    ALTER TABLE messages_v4 RENAME TO messages;
    ALTER TABLE outbox_v4 RENAME TO outbox;
    CREATE UNIQUE INDEX messages_peer_direction_seq ON messages (peer_id, direction, seq);
    CREATE INDEX messages_history ON messages (peer_id, pos);
    CREATE INDEX messages_unread_in ON messages (peer_id, seq)
        WHERE direction = 'in' AND state = 'delivered';
    CREATE INDEX messages_unread_out ON messages (peer_id, seq)
        WHERE direction = 'out' AND state = 'delivered';
    CREATE UNIQUE INDEX outbox_peer_seq ON outbox (peer_id, seq);

    -- Message bytes accepted from each contact per UTC day (the daily quota).
    CREATE TABLE intake (
        peer_id  TEXT NOT NULL,
        day      INTEGER NOT NULL,
        bytes    INTEGER NOT NULL DEFAULT 0,
        messages INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (peer_id, day)
    ) WITHOUT ROWID;
    """,
    """
    -- Contact management: muted contacts, and a block list that also covers
    -- strangers (a blocked key gets no session, its knocks are dropped).
    ALTER TABLE contacts ADD COLUMN muted INTEGER NOT NULL DEFAULT 0;
    CREATE TABLE blocked (
        peer_id    TEXT PRIMARY KEY,
        name       TEXT,
        blocked_at REAL NOT NULL
    );
    -- Replies, edits and deletions.  Edits and deletions travel through the outbox
    -- as sequenced rows of their own (kind 'edit'/'delete', naming their target),
    -- so they get the same exactly-once delivery as messages; history shows only
    -- kind 'text'.  A deleted message keeps its row with an empty body.
    ALTER TABLE messages ADD COLUMN reply_to TEXT;
    ALTER TABLE messages ADD COLUMN edited_at REAL;
    ALTER TABLE messages ADD COLUMN deleted_at REAL;
    ALTER TABLE messages ADD COLUMN kind TEXT NOT NULL DEFAULT 'text'
        CHECK (kind IN ('text', 'edit', 'delete'));
    ALTER TABLE messages ADD COLUMN target TEXT;
    CREATE INDEX messages_target ON messages (peer_id, target) WHERE target IS NOT NULL;
    """,
    """
    -- Groups (docs/groups.md): the signed operations and messages exactly as received,
    -- plus the replica's counters, so a restart rebuilds the same view.  Queries are in
    -- p2pchat/group_store.py.
    CREATE TABLE groups (
        id          BLOB PRIMARY KEY,
        name        TEXT NOT NULL,
        status      TEXT NOT NULL
                    CHECK (status IN ('invited', 'joined', 'left', 'removed', 'declined')),
        inviter     TEXT,
        created_at  REAL NOT NULL,
        updated_at  REAL NOT NULL,
        read_clock  INTEGER NOT NULL DEFAULT 0
    );
    CREATE TABLE group_ops (
        group_id BLOB NOT NULL REFERENCES groups (id) ON DELETE CASCADE,
        pos      INTEGER NOT NULL,
        id       BLOB NOT NULL,
        body     BLOB NOT NULL,
        sig      BLOB NOT NULL,
        PRIMARY KEY (group_id, id)
    );
    CREATE INDEX group_ops_pos ON group_ops (group_id, pos);
    CREATE TABLE group_messages (
        group_id    BLOB NOT NULL REFERENCES groups (id) ON DELETE CASCADE,
        author      BLOB NOT NULL,
        seq         INTEGER NOT NULL,
        id          TEXT NOT NULL,
        clock       INTEGER NOT NULL,
        sent_at     REAL NOT NULL,
        received_at REAL NOT NULL,
        kind        TEXT NOT NULL,
        header      BLOB NOT NULL,
        sig         BLOB NOT NULL,
        content     BLOB NOT NULL,
        shown       INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (group_id, author, seq)
    );
    CREATE INDEX group_messages_order ON group_messages (group_id, shown, clock, author, seq);
    CREATE INDEX group_messages_id ON group_messages (id);
    CREATE TABLE group_authors (
        group_id    BLOB NOT NULL REFERENCES groups (id) ON DELETE CASCADE,
        author      BLOB NOT NULL,
        shown       INTEGER NOT NULL,
        shown_clock INTEGER NOT NULL,
        floor       INTEGER NOT NULL,
        PRIMARY KEY (group_id, author)
    );
    CREATE TABLE group_marks (
        group_id BLOB NOT NULL REFERENCES groups (id) ON DELETE CASCADE,
        member   BLOB NOT NULL,
        author   BLOB NOT NULL,
        upto     INTEGER NOT NULL,
        PRIMARY KEY (group_id, member, author)
    );
    -- Where fellow members who are not contacts may be reached: addresses a session
    -- with them came from, then addresses other members claimed (a dial checks the key).
    CREATE TABLE group_hints (
        peer_id    TEXT PRIMARY KEY,
        addresses  TEXT NOT NULL,
        updated_at REAL NOT NULL
    );
    """,
    """
    -- Hints from invites (docs/self-hosting.md): relays ('PEER_ID@HOST:PORT') to
    -- register with, DHT bootstrap nodes ('HOST:PORT') to use when none was named.
    CREATE TABLE network_hints (
        kind     TEXT NOT NULL CHECK (kind IN ('relay', 'bootstrap')),
        value    TEXT NOT NULL,
        added_at REAL NOT NULL,
        PRIMARY KEY (kind, value)
    ) WITHOUT ROWID;
    """,
    """
    -- The highest seq ever handed to a session for each contact.  An ack beyond it
    -- names messages the contact cannot have received (they are still queued here),
    -- so it is refused whole, like an ack beyond send_seq.
    ALTER TABLE conversations ADD COLUMN sent_seq INTEGER NOT NULL DEFAULT 0;
    UPDATE conversations SET sent_seq = coalesce((SELECT max(m.seq) FROM messages m
        WHERE m.peer_id = conversations.peer_id AND m.direction = 'out'
        AND m.state != 'queued'), 0);

    -- A leaner outbox: keyed by (peer_id, seq) without a rowid, so queueing a message
    -- writes one outbox b-tree instead of three (the rowid table, its primary key and
    -- the seq index), and an ack deletes from one.  The cascade from messages has no
    -- index of its own and scans the outbox, which holds only unacknowledged messages.
    CREATE TABLE outbox_v6 (
        peer_id      TEXT NOT NULL,
        seq          INTEGER NOT NULL,
        message_id   TEXT NOT NULL,
        attempts     INTEGER NOT NULL DEFAULT 0,
        last_attempt REAL,
        PRIMARY KEY (peer_id, seq),
        FOREIGN KEY (peer_id, message_id) REFERENCES messages (peer_id, id)
            ON DELETE CASCADE
    ) WITHOUT ROWID;
    INSERT INTO outbox_v6 (peer_id, seq, message_id, attempts, last_attempt)
        SELECT peer_id, seq, message_id, attempts, last_attempt FROM outbox;
    DROP TABLE outbox;
    ALTER TABLE outbox_v6 RENAME TO outbox;
    """,
    """
    -- Full-text search over message bodies (SQLite FTS5; external content, so the text
    -- is stored once, in messages).  New rows are indexed in batches by the store
    -- (Store.index_messages: at the node's tick, and before every search), not by a
    -- trigger on each insert, which would add the index's pages to every message's
    -- commit; fts_position is how far indexing got.  Edits and deletions of indexed
    -- rows keep the index right through the triggers.
    CREATE VIRTUAL TABLE messages_fts USING fts5(
        body, content = 'messages', content_rowid = 'pos'
    );
    CREATE TABLE fts_position (
        id  INTEGER PRIMARY KEY CHECK (id = 0),
        pos INTEGER NOT NULL
    );
    INSERT INTO fts_position (id, pos) VALUES (0, 0);
    CREATE TRIGGER messages_fts_delete AFTER DELETE ON messages
        WHEN old.pos <= (SELECT pos FROM fts_position)
    BEGIN
        INSERT INTO messages_fts (messages_fts, rowid, body) VALUES ('delete', old.pos, old.body);
    END;
    CREATE TRIGGER messages_fts_update AFTER UPDATE OF body ON messages
        WHEN old.pos <= (SELECT pos FROM fts_position)
    BEGIN
        INSERT INTO messages_fts (messages_fts, rowid, body) VALUES ('delete', old.pos, old.body);
        INSERT INTO messages_fts (rowid, body) VALUES (new.pos, new.body);
    END;
    """,
    """
    -- What a view remembers between runs (the conversation the terminal app had
    -- open): here rather than in a file of its own so that a home with a passphrase
    -- holds no contact's peer ID in clear.
    CREATE TABLE view_state (
        key   TEXT PRIMARY KEY,
        value TEXT NOT NULL
    ) WITHOUT ROWID;
    """,
    """
    -- File drop 2: an offered file's modification time (ns) when it was offered, so
    -- the sender notices a file changed since; its hash may now be empty (b"") until
    -- it is known (offers leave before the files are hashed).
    ALTER TABLE transfer_files ADD COLUMN mtime INTEGER;
    """,
    """
    -- SQLite checks a row against its table's CHECK constraints on every insert and
    -- update, and evaluates `x IN ('a', 'b', ...)` there by building a temporary b-tree
    -- of the list, for every row: about 40 % of the cost of inserting a message
    -- (docs/performance.md).  The same constraints written with `=` and `OR` cost
    -- nothing measurable.  Only the text of the schema changes, no row is read or
    -- written (instant on a million messages), by SQLite's documented procedure for a
    -- constraint change that every stored row satisfies: writable_schema, then the
    -- schema version bumped (`migrate` does that), so every connection reads it again.
    PRAGMA writable_schema = ON;
    UPDATE sqlite_master SET sql = replace(replace(replace(sql,
        'CHECK (direction IN (''in'', ''out''))',
        'CHECK (direction = ''in'' OR direction = ''out'')'),
        'CHECK (state IN (''queued'', ''sent'', ''delivered'', ''read''))',
        'CHECK (state = ''queued'' OR state = ''sent'''
        || ' OR state = ''delivered'' OR state = ''read'')'),
        'CHECK (kind IN (''text'', ''edit'', ''delete''))',
        'CHECK (kind = ''text'' OR kind = ''edit'' OR kind = ''delete'')')
        WHERE type = 'table' AND name = 'messages';
    PRAGMA writable_schema = OFF;
    """,
)


def _split_statements(script: str) -> list[str]:
    """Split a migration into statements so it can run inside our transaction.

    ``executescript`` would commit the open transaction first, which would make
    a half-applied migration possible and race with a second process migrating
    the same file.
    """
    statements: list[str] = []
    buffer = ""
    for line in script.splitlines(keepends=True):
        buffer += line
        if sqlite3.complete_statement(buffer):
            statements.append(buffer.strip())
            buffer = ""
    leftover = [
        line for line in buffer.splitlines() if line.strip() and not line.strip().startswith("--")
    ]
    if leftover:
        raise StoreError(f"incomplete SQL statement in migration: {leftover[0].strip()[:80]!r}")
    return statements


def migrate(db: sqlite3.Connection, path: Path) -> None:
    """Apply the steps ``db`` has not seen yet, in one ``BEGIN IMMEDIATE`` transaction."""
    db.execute("BEGIN IMMEDIATE")
    try:
        version = int(db.execute("PRAGMA user_version").fetchone()[0])
        if version > len(MIGRATIONS):
            raise StoreError(
                f"{path} has schema version {version}, but this p2pchat only knows "
                f"up to version {len(MIGRATIONS)}; it was written by a newer p2pchat, "
                "please upgrade"
            )
        for step in MIGRATIONS[version:]:
            for statement in _split_statements(step):
                db.execute(statement)
        if any("writable_schema" in step for step in MIGRATIONS[version:]):
            # A step rewrote schema text: a new schema version makes every connection
            # (this one included) parse the schema again.
            schema = int(db.execute("PRAGMA schema_version").fetchone()[0])
            db.execute(f"PRAGMA schema_version = {schema + 1}")
        if version != len(MIGRATIONS):
            db.execute(f"PRAGMA user_version = {len(MIGRATIONS)}")
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise
