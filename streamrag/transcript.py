"""The durable record of every message (SQLite, WAL).

The KV cache forgets and the archive keeps only chunks of what was evicted;
the transcript is the one place where a conversation exists in full, in
order, exactly as it was said. :class:`~streamrag.session.Assistant` appends
a user message *before* the model sees it and the reply *after* it is
complete, and :meth:`Transcript.append` returns only once the row is
committed, so a process killed mid-turn loses at most the unfinished reply.
A restart rebuilds the cache from :meth:`Transcript.messages`.

Durability settings: ``journal_mode=WAL`` (readers never block the writer,
and a commit is one sequential append to the ``-wal`` file) with
``synchronous=FULL`` (the WAL is fsynced at every commit; WAL's usual
``NORMAL`` may lose the last commits on power loss, which is exactly the
message the user just typed).

``seq`` is a message's position in its session: 1, 2, 3, ... in the order
the messages were appended. It is allocated as ``max(seq) + 1`` inside the
write transaction, so after :meth:`Transcript.truncate_after` (undo,
regenerate) the next message takes the position the removed one had.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1
ROLES = ("system", "user", "assistant", "memory")
# How long a write waits for another *process* holding the write lock (e.g. `streamrag chat`
# next to `streamrag serve` on the same data dir) before giving up.
BUSY_TIMEOUT_S = 30.0

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS sessions (
    session_id TEXT PRIMARY KEY,
    title      TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    meta       TEXT NOT NULL DEFAULT '{{}}'
);
CREATE TABLE IF NOT EXISTS messages (
    message_id TEXT PRIMARY KEY,
    session_id TEXT NOT NULL REFERENCES sessions(session_id) ON DELETE CASCADE,
    seq        INTEGER NOT NULL,
    role       TEXT NOT NULL CHECK (role IN ({", ".join(f"'{role}'" for role in ROLES)})),
    content    TEXT NOT NULL CHECK (content <> ''),
    turn       INTEGER NOT NULL,
    created_at REAL NOT NULL,
    meta       TEXT NOT NULL DEFAULT '{{}}',
    UNIQUE (session_id, seq)
);
CREATE INDEX IF NOT EXISTS messages_by_session_seq ON messages (session_id, seq);
CREATE INDEX IF NOT EXISTS sessions_by_updated ON sessions (updated_at);
"""

_MESSAGE_COLUMNS = "message_id, session_id, seq, role, content, turn, created_at, meta"
_SESSION_QUERY = """
SELECT s.session_id, s.title, s.created_at, s.updated_at, s.meta,
       (SELECT COUNT(*) FROM messages m WHERE m.session_id = s.session_id) AS message_count
FROM sessions s
"""


class TranscriptError(RuntimeError):
    """A transcript operation was refused or the database failed; the message says which and why."""


@dataclass(frozen=True)
class StoredMessage:
    """One committed message. ``seq`` is its position in the session (1-based, increasing)."""

    message_id: str
    session_id: str
    seq: int
    role: str
    content: str
    turn: int
    created_at: float
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SessionInfo:
    """A conversation's header. ``updated_at`` moves when a message is added or removed."""

    session_id: str
    title: str | None
    created_at: float
    updated_at: float
    message_count: int
    meta: dict[str, Any] = field(default_factory=dict)


class Transcript:
    """Every message of every session, in one SQLite file.

    Thread safety: one connection (``check_same_thread=False``) behind one
    lock. SQLite serialises writers anyway, so per-thread connections would
    only buy concurrent *reads*, which at chat scale are microseconds; they
    would cost connections that outlive Gradio's worker threads (and that
    :meth:`close` cannot reach), ``SQLITE_BUSY`` handling between our own
    threads, and a race on ``seq`` allocation. With the lock, "read max(seq),
    insert max+1, commit" is atomic within the process; ``BEGIN IMMEDIATE``
    makes it atomic against other processes on the same file too.

    >>> with Transcript(tmp / "transcripts.sqlite3") as transcript:
    ...     transcript.append("s1", "user", "hello", turn=1)
    ...     transcript.tail("s1", max_chars=4000)
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise TranscriptError(f"cannot create the directory for transcript {self.path}: {exc}") from exc
        try:
            # isolation_level=None: no implicit transactions; every write below opens its own
            # BEGIN IMMEDIATE, so we decide exactly when the write lock is taken and released.
            conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise TranscriptError(f"cannot open transcript database {self.path}: {exc}") from exc
        try:
            self._setup(conn)
        except TranscriptError:
            conn.close()
            raise
        except sqlite3.OperationalError as exc:
            conn.close()
            raise TranscriptError(f"cannot open transcript database {self.path}: {exc}") from exc
        except sqlite3.DatabaseError as exc:
            # SQLite opens any file lazily; garbage is noticed only at the first statement.
            conn.close()
            raise TranscriptError(
                f"{self.path} is not a readable SQLite database ({exc}); move it aside or point data_dir elsewhere"
            ) from exc
        self._conn = conn
        logger.debug("transcript open at %s", self.path)

    def _setup(self, conn: sqlite3.Connection) -> None:
        conn.row_factory = sqlite3.Row
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise TranscriptError(
                f"transcript {self.path} has schema version {version}, newer than this streamrag "
                f"understands ({SCHEMA_VERSION}); upgrade streamrag"
            )
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            # Some filesystems (network mounts) cannot do WAL; FULL sync keeps commits durable anyway.
            logger.warning("transcript %s: WAL unavailable, journal_mode is %s", self.path, mode)
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA foreign_keys=ON")
        if version < SCHEMA_VERSION:
            conn.execute("BEGIN IMMEDIATE")
            try:
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

    # -- connection plumbing --------------------------------------------
    def close(self) -> None:
        """Close the database. Safe to call twice; any later call raises :class:`TranscriptError`."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __enter__(self) -> Transcript:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Transcript({str(self.path)!r})"

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            conn = self._open_conn()
            try:
                yield conn
            except sqlite3.Error as exc:
                raise TranscriptError(f"transcript {self.path}: {exc}") from exc

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One transaction: committed (durable) when the block exits, rolled back if it raises."""
        with self._lock:
            conn = self._open_conn()
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise TranscriptError(f"transcript {self.path}: cannot start a write: {exc}") from exc
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException as exc:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                if isinstance(exc, sqlite3.Error):
                    raise TranscriptError(f"transcript {self.path}: {exc}") from exc
                raise

    def _open_conn(self) -> sqlite3.Connection:
        if self._conn is None:
            raise TranscriptError(f"transcript {self.path} is closed")
        return self._conn

    # -- sessions --------------------------------------------------------
    def create_session(
        self, session_id: str | None = None, title: str | None = None, meta: dict[str, Any] | None = None
    ) -> SessionInfo:
        """Create a session, or return the existing one unchanged (title and meta are not overwritten).

        Idempotent so that opening a conversation by id can always call it.
        """
        session_id = _check_id(session_id, "session_id") if session_id is not None else uuid.uuid4().hex
        meta_json = _dump_meta(meta)
        now = time.time()
        with self._write() as conn:
            conn.execute(
                "INSERT OR IGNORE INTO sessions (session_id, title, created_at, updated_at, meta) "
                "VALUES (?, ?, ?, ?, ?)",
                (session_id, title, now, now, meta_json),
            )
            info = self._session_row(conn, session_id)
        assert info is not None  # just inserted or already there, inside the same transaction
        return info

    def get_session(self, session_id: str) -> SessionInfo | None:
        with self._read() as conn:
            return self._session_row(conn, session_id)

    def sessions(self, limit: int | None = None) -> list[SessionInfo]:
        """All sessions, the most recently updated first."""
        query = _SESSION_QUERY + " ORDER BY s.updated_at DESC, s.created_at DESC, s.session_id"
        params: tuple[Any, ...] = ()
        if limit is not None:
            query += " LIMIT ?"
            params = (_check_limit(limit),)
        with self._read() as conn:
            return [_session_from_row(row) for row in conn.execute(query, params)]

    def rename_session(self, session_id: str, title: str | None) -> SessionInfo:
        """Set a session's title (``updated_at`` is left alone: renaming is not conversation activity)."""
        with self._write() as conn:
            cursor = conn.execute("UPDATE sessions SET title = ? WHERE session_id = ?", (title, session_id))
            if cursor.rowcount == 0:
                raise TranscriptError(f"cannot rename: no session {session_id!r} in {self.path}")
            info = self._session_row(conn, session_id)
        assert info is not None
        return info

    def delete_session(self, session_id: str) -> bool:
        """Delete a session and (by cascade) all its messages. False if there was no such session."""
        with self._write() as conn:
            deleted = conn.execute("DELETE FROM sessions WHERE session_id = ?", (session_id,)).rowcount
        if deleted:
            logger.info("transcript: deleted session %s", session_id)
        return bool(deleted)

    # -- messages --------------------------------------------------------
    def append(
        self,
        session_id: str,
        role: str,
        content: str,
        turn: int,
        message_id: str | None = None,
        meta: dict[str, Any] | None = None,
    ) -> StoredMessage:
        """Store one message at the end of its session; it is committed (durable) when this returns.

        The session is created if it does not exist. Re-appending a
        ``message_id`` that is already stored returns the stored row, unchanged,
        when session, role, content and turn are identical (``meta`` is not
        compared and not updated): a caller recovering from a crash can simply
        replay its last append. Any difference raises :class:`TranscriptError`.
        """
        session_id = _check_id(session_id, "session_id")
        if role not in ROLES:
            raise TranscriptError(f"unknown role {role!r}; use one of {', '.join(ROLES)}")
        if not isinstance(content, str):
            raise TranscriptError(f"message content must be a string, not {type(content).__name__}")
        if not content.strip():
            raise TranscriptError(f"refusing to store an empty {role} message in session {session_id!r}")
        if isinstance(turn, bool) or not isinstance(turn, int) or turn < 0:
            raise TranscriptError(f"turn must be a non-negative integer, not {turn!r}")
        message_id = _check_id(message_id, "message_id") if message_id is not None else uuid.uuid4().hex
        meta_json = _dump_meta(meta)
        now = time.time()
        with self._write() as conn:
            existing = self._message_row(conn, message_id)
            if existing is not None:
                same = (existing.session_id, existing.role, existing.content, existing.turn) == (
                    session_id,
                    role,
                    content,
                    turn,
                )
                if same:
                    logger.debug("transcript: message %s already stored; append is a no-op", message_id)
                    return existing
                raise TranscriptError(
                    f"message id {message_id!r} is already stored (session {existing.session_id!r}, "
                    f"seq {existing.seq}, role {existing.role}) with different content; use a new id"
                )
            conn.execute(
                "INSERT INTO sessions (session_id, title, created_at, updated_at, meta) VALUES (?, NULL, ?, ?, '{}') "
                "ON CONFLICT (session_id) DO UPDATE SET updated_at = excluded.updated_at",
                (session_id, now, now),
            )
            seq = conn.execute(
                "SELECT COALESCE(MAX(seq), 0) + 1 FROM messages WHERE session_id = ?", (session_id,)
            ).fetchone()[0]
            conn.execute(
                f"INSERT INTO messages ({_MESSAGE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (message_id, session_id, seq, role, content, turn, now, meta_json),
            )
        # meta as it will read back (JSON turns tuples into lists, int keys into strings).
        return StoredMessage(message_id, session_id, seq, role, content, turn, now, _load_meta(meta_json))

    def messages(self, session_id: str, after_seq: int | None = None, limit: int | None = None) -> list[StoredMessage]:
        """A session's messages, oldest first: those with ``seq > after_seq``, at most ``limit`` of them.

        An unknown session has no messages (an empty list, not an error).
        """
        query = f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE session_id = ?"
        params: list[Any] = [session_id]
        if after_seq is not None:
            query += " AND seq > ?"
            params.append(int(after_seq))
        query += " ORDER BY seq"
        if limit is not None:
            query += " LIMIT ?"
            params.append(_check_limit(limit))
        with self._read() as conn:
            return [_message_from_row(row) for row in conn.execute(query, params)]

    def tail(self, session_id: str, max_chars: int) -> list[StoredMessage]:
        """The most recent messages whose contents add up to at most ``max_chars``, oldest first.

        The newest message is always included, even when it alone is longer
        than ``max_chars``: a resumed conversation must at least see where it
        stopped. The result is a contiguous run ending at the newest message.
        """
        if isinstance(max_chars, bool) or not isinstance(max_chars, int) or max_chars < 0:
            raise TranscriptError(f"max_chars must be a non-negative integer, not {max_chars!r}")
        picked: list[StoredMessage] = []
        used = 0
        with self._read() as conn:
            cursor = conn.execute(
                f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE session_id = ? ORDER BY seq DESC", (session_id,)
            )
            for row in cursor:
                size = len(row["content"])
                if picked and used + size > max_chars:
                    break
                picked.append(_message_from_row(row))
                used += size
            cursor.close()
        picked.reverse()
        return picked

    def count(self, session_id: str) -> int:
        with self._read() as conn:
            return conn.execute("SELECT COUNT(*) FROM messages WHERE session_id = ?", (session_id,)).fetchone()[0]

    def get(self, message_id: str) -> StoredMessage | None:
        with self._read() as conn:
            return self._message_row(conn, message_id)

    def delete_message(self, message_id: str) -> bool:
        """Delete one message (e.g. a user message that never reached the model). False if it was not there."""
        now = time.time()
        with self._write() as conn:
            row = conn.execute("SELECT session_id FROM messages WHERE message_id = ?", (message_id,)).fetchone()
            if row is None:
                return False
            conn.execute("DELETE FROM messages WHERE message_id = ?", (message_id,))
            conn.execute("UPDATE sessions SET updated_at = ? WHERE session_id = ?", (now, row["session_id"]))
        return True

    def truncate_after(self, session_id: str, seq: int) -> int:
        """Delete the session's messages with ``seq`` greater than the given one (undo, regenerate).

        Returns how many were deleted. ``truncate_after(sid, 0)`` empties the session but keeps it.
        """
        now = time.time()
        with self._write() as conn:
            if conn.execute("SELECT 1 FROM sessions WHERE session_id = ?", (session_id,)).fetchone() is None:
                raise TranscriptError(f"cannot truncate: no session {session_id!r} in {self.path}")
            deleted = conn.execute(
                "DELETE FROM messages WHERE session_id = ? AND seq > ?", (session_id, int(seq))
            ).rowcount
            if deleted:
                conn.execute("UPDATE sessions SET updated_at = ? WHERE session_id = ?", (now, session_id))
        if deleted:
            logger.info("transcript: removed %d message(s) after seq %d in session %s", deleted, seq, session_id)
        return deleted

    def export(self, session_id: str) -> dict[str, Any]:
        """The session and its messages as plain dicts, ready for ``json.dumps``."""
        with self._read() as conn:
            info = self._session_row(conn, session_id)
            if info is None:
                raise TranscriptError(f"cannot export: no session {session_id!r} in {self.path}")
            rows = conn.execute(
                f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE session_id = ? ORDER BY seq", (session_id,)
            ).fetchall()
        return {
            "schema_version": SCHEMA_VERSION,
            "session": asdict(info),
            "messages": [asdict(_message_from_row(row)) for row in rows],
        }

    # -- row helpers (called with the lock held) --------------------------
    def _session_row(self, conn: sqlite3.Connection, session_id: str) -> SessionInfo | None:
        row = conn.execute(_SESSION_QUERY + " WHERE s.session_id = ?", (session_id,)).fetchone()
        return _session_from_row(row) if row is not None else None

    def _message_row(self, conn: sqlite3.Connection, message_id: str) -> StoredMessage | None:
        row = conn.execute(f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE message_id = ?", (message_id,)).fetchone()
        return _message_from_row(row) if row is not None else None


def _check_id(value: Any, name: str) -> str:
    if not isinstance(value, str) or not value:
        raise TranscriptError(f"{name} must be a non-empty string, not {value!r}")
    return value


def _check_limit(limit: Any) -> int:
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
        raise TranscriptError(f"limit must be a non-negative integer or None, not {limit!r}")
    return limit


def _dump_meta(meta: dict[str, Any] | None) -> str:
    if meta is None:
        return "{}"
    if not isinstance(meta, dict):
        raise TranscriptError(f"meta must be a dict, not {type(meta).__name__}")
    try:
        return json.dumps(meta, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise TranscriptError(f"meta must be JSON-serialisable: {exc}") from exc


def _load_meta(text: str | None) -> dict[str, Any]:
    return json.loads(text) if text else {}


def _message_from_row(row: sqlite3.Row) -> StoredMessage:
    return StoredMessage(
        message_id=row["message_id"],
        session_id=row["session_id"],
        seq=row["seq"],
        role=row["role"],
        content=row["content"],
        turn=row["turn"],
        created_at=row["created_at"],
        meta=_load_meta(row["meta"]),
    )


def _session_from_row(row: sqlite3.Row) -> SessionInfo:
    return SessionInfo(
        session_id=row["session_id"],
        title=row["title"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        message_count=row["message_count"],
        meta=_load_meta(row["meta"]),
    )
