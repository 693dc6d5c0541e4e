"""The durable record of every message (SQLite with WAL, or PostgreSQL).

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

Nothing is deleted except by an explicit call (undo, forget). A client whose
message list diverges from the stored one *supersedes* the messages after
the common prefix (:meth:`Transcript.supersede_after`): they stay, with
``superseded_at`` set, in exports and in the archive, but leave the
conversation that is fed to the model.

The same database is the archive's write-ahead log. Text the KV cache is about
to evict is appended to the ``evicted`` table (:meth:`Transcript.log_evicted`,
one transaction, one fsync) before its slots drop; a background indexer
(:mod:`streamrag.indexer`) embeds it into the vector store later and marks the
rows indexed. Appends are idempotent per message: a range already logged is
never logged twice, so replays after a crash or a rebuild change nothing.

PostgreSQL (:func:`open_transcript` with a ``postgresql://`` URL) holds the
same tables for several server processes, on several machines, that share one
transcript. The queries are the same; what differs is isolated in a small
backend (``_SQLiteBackend``, ``_PostgresBackend``): the parameter style, the
column types (8-byte integers and floats: PostgreSQL's ``REAL`` would round
a timestamp to about two minutes), the schema version kept in a table
instead of ``PRAGMA user_version``, and the write lock. SQLite's ``BEGIN
IMMEDIATE`` locks the whole file; PostgreSQL's ``READ COMMITTED`` transactions
lock nothing they only read, so every write that reads before it writes
(``max(seq) + 1``, the logged end of a message) first takes a transaction-scoped
advisory lock on the session it touches: two replicas appending to one session
take turns, two sessions never wait for each other.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
import select
import sqlite3
import threading
import time
import urllib.parse
import uuid
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 4
# "tool": a tool's result, fed like any message; "memory" and "tool_spec": what the session itself put in
# the context (recalled memories, the tools' instructions), recorded for the audit trail and never re-fed.
ROLES = ("system", "user", "assistant", "tool", "memory", "tool_spec")
# How long a write waits for another *process* holding the write lock (e.g. `streamrag chat`
# next to `streamrag serve` on the same data dir) before giving up.
BUSY_TIMEOUT_S = 30.0

_SCHEMA_TEMPLATE = f"""
CREATE TABLE IF NOT EXISTS sessions (
    session_id TEXT PRIMARY KEY,
    title      TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    meta       TEXT NOT NULL DEFAULT '{{}}'
);
CREATE TABLE IF NOT EXISTS {{messages}} (
    message_id TEXT PRIMARY KEY,
    session_id TEXT NOT NULL REFERENCES sessions(session_id) ON DELETE CASCADE,
    seq        INTEGER NOT NULL,
    role       TEXT NOT NULL CHECK (role IN ({", ".join(f"'{role}'" for role in ROLES)})),
    content    TEXT NOT NULL CHECK (content <> ''),
    turn       INTEGER NOT NULL,
    created_at REAL NOT NULL,
    meta       TEXT NOT NULL DEFAULT '{{}}',
    superseded_at REAL,
    UNIQUE (session_id, seq)
);
CREATE INDEX IF NOT EXISTS messages_by_session_seq ON messages (session_id, seq);
CREATE INDEX IF NOT EXISTS messages_superseded ON messages (session_id, seq) WHERE superseded_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS sessions_by_updated ON sessions (updated_at);
CREATE TABLE IF NOT EXISTS evicted (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    session_id TEXT NOT NULL,
    message_id TEXT NOT NULL,
    role       TEXT NOT NULL,
    turn       INTEGER NOT NULL,
    char_start INTEGER NOT NULL,
    char_end   INTEGER NOT NULL CHECK (char_end > char_start),
    text       TEXT NOT NULL,
    spoken_at  REAL NOT NULL,
    logged_at  REAL NOT NULL,
    indexed_at REAL
);
CREATE INDEX IF NOT EXISTS evicted_pending ON evicted (seq) WHERE indexed_at IS NULL;
CREATE INDEX IF NOT EXISTS evicted_by_message ON evicted (message_id, char_start);
CREATE INDEX IF NOT EXISTS evicted_by_session ON evicted (session_id);
"""
_SCHEMA = _SCHEMA_TEMPLATE.replace("{messages}", "messages")
_MESSAGES_TABLE = _SCHEMA_TEMPLATE.split(";")[1]
# Schema 1 -> 2: superseded messages instead of deleted ones; the eviction log.
# Schema 2 -> 3: the tool roles. SQLite cannot change a CHECK in place, so the table is copied whole,
# inside the migration's transaction (a failure leaves the old table as it was).
# Schema 3 -> 4: the index of superseded messages (drafts_of); created with the rest of the schema.
_MIGRATIONS = {
    1: ["ALTER TABLE messages ADD COLUMN superseded_at REAL"],
    2: [
        _MESSAGES_TABLE.replace("{messages}", "messages_v3"),
        "INSERT INTO messages_v3 (message_id, session_id, seq, role, content, turn, created_at, meta, superseded_at) "
        "SELECT message_id, session_id, seq, role, content, turn, created_at, meta, superseded_at FROM messages",
        "DROP TABLE messages",
        "ALTER TABLE messages_v3 RENAME TO messages",
    ],
}

_MESSAGE_COLUMNS = "message_id, session_id, seq, role, content, turn, created_at, meta, superseded_at"
_EVICTED_COLUMNS = "seq, session_id, message_id, role, turn, char_start, char_end, text, spoken_at"
# The log's seq is left to the database (AUTOINCREMENT, an identity column in PostgreSQL).
_EVICTED_INSERT_COLUMNS = _EVICTED_COLUMNS.removeprefix("seq, ") + ", logged_at"
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
    superseded_at: float | None = None


@dataclass(frozen=True)
class NewMessage:
    """A message to append (see :meth:`Transcript.append`)."""

    role: str
    content: str
    turn: int
    message_id: str | None = None
    meta: dict[str, Any] | None = None
    created_at: float | None = None


@dataclass(frozen=True)
class EvictedText:
    """Text of one message that left (or must be treated as having left) the KV cache.

    ``char_start``/``char_end`` index the message's content; ``spoken_at`` is
    when the message was said (its transcript time), which memories carry.
    ``seq`` is the log position, set once the text is logged.
    """

    session_id: str
    message_id: str
    role: str
    turn: int
    char_start: int
    char_end: int
    text: str
    spoken_at: float
    seq: int | None = None


@dataclass(frozen=True)
class SessionInfo:
    """A conversation's header. ``updated_at`` moves when a message is added or removed."""

    session_id: str
    title: str | None
    created_at: float
    updated_at: float
    message_count: int
    meta: dict[str, Any] = field(default_factory=dict)


POSTGRES_SCHEMES = ("postgresql://", "postgres://")
# Connection settings a postgresql:// URL may set itself; these apply where it does not. libpq waits
# forever for an unreachable server by default, and TCP notices a dead peer only after two hours.
_POSTGRES_DEFAULTS = {
    "connect_timeout": "5",
    "keepalives_idle": "30",
    "keepalives_interval": "10",
    "keepalives_count": "3",
    "application_name": "streamrag",
}
# pg_advisory_xact_lock(namespace, key): the transcript's locks, apart from other applications' locks.
_POSTGRES_LOCK_NAMESPACE = 0x53524147  # "SRAG"
_POSTGRES_VERSION_TABLE = """
CREATE TABLE IF NOT EXISTS transcript_schema (
    singleton BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (singleton),
    version   INTEGER NOT NULL
)
"""


def is_postgres_url(target: object) -> bool:
    """Is ``target`` a ``postgresql://`` (or ``postgres://``) URL, i.e. a transcript in PostgreSQL?"""
    return isinstance(target, str) and target.startswith(POSTGRES_SCHEMES)


def mask_url(url: str) -> str:
    """The URL with its password replaced by ``***``: what reprs, logs and error messages show.

    Errs towards hiding: everything between the user name and the last ``@``
    before the query is masked, even a malformed password holding ``/``.
    """
    scheme, sep, rest = url.partition("://")
    address, question, query = rest.partition("?")
    userinfo, at, hosts = address.rpartition("@")
    if sep and at and ":" in userinfo:
        address = f"{userinfo.partition(':')[0]}:***@{hosts}"
    query = re.sub(r"(?i)\b(password=)[^&]*", r"\1***", query)
    return scheme + sep + address + question + query


def _url_secrets(url: str) -> list[str]:
    """The password of a URL as written and decoded, longest first, to scrub from messages."""
    address, _, query = url.partition("://")[2].partition("?")
    userinfo, at, _ = address.rpartition("@")
    found = [userinfo.partition(":")[2]] if at else []
    found += re.findall(r"(?i)\bpassword=([^&]*)", query)
    found += [urllib.parse.unquote(secret) for secret in found]
    return sorted({secret for secret in found if secret}, key=len, reverse=True)


class _Connection(Protocol):
    """What the queries need of a connection: sqlite3's, or :class:`_PostgresConnection`."""

    def execute(self, sql: str, parameters: Sequence[Any] = (), /) -> Any: ...

    def executemany(self, sql: str, parameters: Iterable[Sequence[Any]], /) -> Any: ...


class _SQLiteBackend:
    """One SQLite file in WAL mode; the queries run as written."""

    errors: tuple[type[Exception], ...] = (sqlite3.Error,)

    def __init__(self, path: Path):
        self.path = path
        self.location = str(path)

    def connect(self) -> sqlite3.Connection:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise TranscriptError(f"cannot create the directory for transcript {self.path}: {exc}") from exc
        try:
            # isolation_level=None: no implicit transactions; every write opens its own BEGIN IMMEDIATE,
            # so we decide exactly when the write lock is taken and released.
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
        return conn

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
        # Deleted rows are overwritten with zeros, not left in free pages: forgetting removes the bytes.
        conn.execute("PRAGMA secure_delete=ON")
        if version < SCHEMA_VERSION:
            conn.execute("BEGIN IMMEDIATE")
            try:
                for step in range(max(version, 1), SCHEMA_VERSION) if version else ():
                    for statement in _MIGRATIONS.get(step, []):
                        conn.execute(statement)
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

    def usable(self, conn: sqlite3.Connection) -> sqlite3.Connection:
        return conn

    def lost(self, conn: sqlite3.Connection) -> bool:
        return False

    def begin(self, conn: sqlite3.Connection) -> None:
        conn.execute("BEGIN IMMEDIATE")

    def commit(self, conn: sqlite3.Connection) -> None:
        conn.execute("COMMIT")

    def rollback(self, conn: sqlite3.Connection) -> None:
        if conn.in_transaction:
            conn.execute("ROLLBACK")

    def lock_sessions(self, conn: sqlite3.Connection, session_ids: Iterable[str]) -> None:
        """Nothing to do: ``BEGIN IMMEDIATE`` already holds the whole file's write lock."""

    def json_text(self, column: str, key: str) -> str:
        return f"json_extract({column}, '$.{key}')"

    def insert_returning(self, conn: sqlite3.Connection, sql: str, params: Sequence[Any], column: str) -> int:
        """Run an INSERT and return the new row's ``column`` (its INTEGER PRIMARY KEY, i.e. the rowid)."""
        return conn.execute(sql, params).lastrowid

    def checkpoint(self, conn: sqlite3.Connection) -> None:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()

    def describe(self, exc: Exception, conn: sqlite3.Connection, writing: bool = False) -> str:
        return str(exc)

    def close(self, conn: sqlite3.Connection) -> None:
        conn.close()


class _PostgresRow:
    """A result row read by column name or by position, like :class:`sqlite3.Row` (the row helpers do both)."""

    __slots__ = ("_index", "_values")

    def __init__(self, values: Sequence[Any], index: dict[str, int]):
        self._values = values
        self._index = index

    def __getitem__(self, key: int | str) -> Any:
        return self._values[self._index[key] if isinstance(key, str) else key]

    def __iter__(self) -> Iterator[Any]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def keys(self) -> list[str]:
        return list(self._index)

    def __repr__(self) -> str:
        return f"_PostgresRow({dict(zip(self._index, self._values, strict=True))!r})"


def _postgres_row_factory(cursor: Any) -> Any:
    """psycopg's row factory protocol: called per result with the cursor, returns the row maker."""
    names = [column.name for column in cursor.description or ()]
    index = {name: position for position, name in enumerate(names)}
    return lambda values: _PostgresRow(values, index)


@functools.lru_cache(maxsize=512)
def _postgres_sql(query: str) -> str:
    """A query in psycopg's parameter style: ``?`` -> ``%s``, a literal ``%`` doubled.

    Safe because no query of this module has a ``?`` or a ``%`` inside a string literal.
    """
    return query.replace("%", "%%").replace("?", "%s")


def _postgres_ddl(statement: str) -> str:
    """A schema statement in PostgreSQL's types.

    SQLite's INTEGER is 8 bytes and its REAL is a double; PostgreSQL's are 4
    bytes (a REAL timestamp would be rounded to about two minutes). The log's
    ``AUTOINCREMENT`` seq becomes an identity column: never reused either.
    """
    statement = statement.replace(
        "INTEGER PRIMARY KEY AUTOINCREMENT", "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY"
    )
    statement = re.sub(r"\bINTEGER\b", "BIGINT", statement)
    return re.sub(r"\bREAL\b", "DOUBLE PRECISION", statement)


class _PostgresConnection:
    """A psycopg connection (autocommit; writes open their own ``BEGIN``) that runs the ``?`` queries."""

    def __init__(self, raw: Any):
        self.raw = raw

    def execute(self, sql: str, parameters: Sequence[Any] = (), /) -> Any:
        # Always a sequence, never None: psycopg only converts placeholders (and %%) when given parameters.
        return self.raw.execute(_postgres_sql(sql), tuple(parameters))

    def executemany(self, sql: str, parameters: Iterable[Sequence[Any]], /) -> None:
        with self.raw.cursor() as cursor:
            cursor.executemany(_postgres_sql(sql), [tuple(row) for row in parameters])

    def lost(self) -> bool:
        """Is the connection unusable? Also true when the server has hung up on an idle connection.

        An idle connection (we never LISTEN) receives nothing until it sends a
        query, so a readable socket means the server wrote its goodbye (a
        restart's "terminating connection") or closed it: checked without a round trip.
        """
        if self.raw.closed or self.raw.broken:
            return True
        try:
            readable, _, _ = select.select([self.raw.fileno()], [], [], 0)
        except (OSError, ValueError):
            return True
        return bool(readable)


class _PostgresBackend:
    """PostgreSQL through psycopg 3: one connection, replaced once when the server drops it."""

    def __init__(self, url: str):
        self.path = None
        self.url = url
        self.location = mask_url(url)
        self._secrets = _url_secrets(url)
        try:
            import psycopg
        except ImportError as exc:
            raise TranscriptError(
                f"the transcript at {self.location} is in PostgreSQL, which needs psycopg: "
                'pip install "streamrag[postgres]"'
            ) from exc
        self.psycopg = psycopg
        self.errors: tuple[type[Exception], ...] = (psycopg.Error,)

    def scrub(self, text: object) -> str:
        """``text`` without the URL's password (error messages may quote a connection string)."""
        text = str(text)
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    def connect(self) -> _PostgresConnection:
        psycopg = self.psycopg
        try:
            given = psycopg.conninfo.conninfo_to_dict(self.url)
            options = {key: value for key, value in _POSTGRES_DEFAULTS.items() if key not in given}
            raw = psycopg.connect(self.url, autocommit=True, row_factory=_postgres_row_factory, **options)
        except psycopg.Error as exc:
            # Not chained: the original exception's text is the unscrubbed one.
            raise TranscriptError(f"cannot connect to the transcript at {self.location}: {self.scrub(exc)}") from None
        conn = _PostgresConnection(raw)
        try:
            self._setup(conn)
        except BaseException as exc:
            raw.close()
            if isinstance(exc, psycopg.Error):
                raise TranscriptError(f"cannot set up the transcript at {self.location}: {self.scrub(exc)}") from None
            raise
        return conn

    def _setup(self, conn: _PostgresConnection) -> None:
        """Create the schema once, under a lock: replicas starting together would race on CREATE TABLE.

        A PostgreSQL transcript is born at the current schema version (SQLite's
        migrations 1-3 predate it); a later schema change adds its own step here.
        """
        self.begin(conn)
        try:
            conn.execute(f"SELECT pg_advisory_xact_lock({_POSTGRES_LOCK_NAMESPACE}, 0)")
            conn.execute(_POSTGRES_VERSION_TABLE)
            row = conn.execute("SELECT version FROM transcript_schema").fetchone()
            version = row[0] if row is not None else 0
            if version > SCHEMA_VERSION:
                raise TranscriptError(
                    f"transcript {self.location} has schema version {version}, newer than this streamrag "
                    f"understands ({SCHEMA_VERSION}); upgrade streamrag"
                )
            if version < SCHEMA_VERSION:
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        conn.execute(_postgres_ddl(statement))
                conn.execute(
                    "INSERT INTO transcript_schema (singleton, version) VALUES (TRUE, ?) "
                    "ON CONFLICT (singleton) DO UPDATE SET version = excluded.version",
                    (SCHEMA_VERSION,),
                )
            conn.execute("COMMIT")
        except BaseException:
            self.rollback(conn)
            raise

    def lost(self, conn: _PostgresConnection) -> bool:
        return conn.lost()

    def usable(self, conn: _PostgresConnection) -> _PostgresConnection:
        """The connection, or a new one if the server dropped it (restart, failover, idle timeout)."""
        if not conn.lost():
            return conn
        logger.warning("transcript %s: the connection to PostgreSQL was lost; reconnecting", self.location)
        conn.raw.close()
        return self.connect()

    def begin(self, conn: _PostgresConnection) -> None:
        # Named, not the server's default: the session locks rely on each statement seeing every commit made
        # before it ran. A REPEATABLE READ snapshot, taken while waiting for the lock, would miss the last append.
        conn.execute("BEGIN ISOLATION LEVEL READ COMMITTED")

    def commit(self, conn: _PostgresConnection) -> None:
        conn.execute("COMMIT")

    def rollback(self, conn: _PostgresConnection) -> None:
        raw = conn.raw
        if raw.closed or raw.broken or raw.info.transaction_status == self.psycopg.pq.TransactionStatus.IDLE:
            return  # nothing to undo: a lost connection's transaction dies with it on the server
        try:
            raw.execute("ROLLBACK")
        except self.psycopg.Error as exc:
            logger.debug("transcript %s: rollback failed: %s", self.location, self.scrub(exc))

    def lock_sessions(self, conn: _PostgresConnection, session_ids: Iterable[str]) -> None:
        """Serialise this transaction with every other write to these sessions, in any process.

        Taken in sorted order, so two writes locking several sessions cannot
        deadlock; released at COMMIT or ROLLBACK. A hash collision between two
        sessions only makes them take turns.
        """
        for session_id in sorted(set(session_ids)):
            conn.execute(f"SELECT pg_advisory_xact_lock({_POSTGRES_LOCK_NAMESPACE}, hashtext(?))", (session_id,))

    def json_text(self, column: str, key: str) -> str:
        return f"({column}::jsonb ->> '{key}')"

    def insert_returning(self, conn: _PostgresConnection, sql: str, params: Sequence[Any], column: str) -> int:
        """Run an INSERT and return the new row's ``column`` (psycopg has no ``lastrowid``)."""
        return conn.execute(f"{sql} RETURNING {column}", params).fetchone()[0]

    def checkpoint(self, conn: _PostgresConnection) -> None:
        """Nothing to do: the server manages its WAL."""

    def describe(self, exc: Exception, conn: _PostgresConnection, writing: bool = False) -> str:
        text = " ".join(self.scrub(exc).split())  # libpq's messages span lines
        if not conn.lost():
            return text
        if writing:
            return (
                f"the connection to PostgreSQL was lost ({text}); this write was not confirmed: it is stored whole "
                "or not at all (replaying an append with the same message_id is safe); the next call reconnects"
            )
        return f"the connection to PostgreSQL was lost ({text}); the next call reconnects"

    def close(self, conn: _PostgresConnection) -> None:
        conn.raw.close()


_Backend = _SQLiteBackend | _PostgresBackend


def _backend_for(target: str | os.PathLike[str]) -> _Backend:
    if is_postgres_url(target):
        return _PostgresBackend(str(target))
    if isinstance(target, str) and re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", target):
        scheme = target.partition("://")[0]
        raise TranscriptError(
            f"unsupported transcript URL scheme {scheme}://; use a file path (SQLite) or a postgresql:// URL"
        )
    return _SQLiteBackend(Path(target))


def open_transcript(target: str | os.PathLike[str]) -> Transcript:
    """Open (creating its tables if needed) the transcript at ``target``.

    ``target`` is a file path (SQLite, for one machine) or a
    ``postgresql://user:password@host:port/database`` URL (PostgreSQL, shared
    by several server processes); ``config.transcript_target`` is what a
    config names. Raises :class:`TranscriptError` if it cannot be opened.
    """
    return Transcript(target)


class Transcript:
    """Every message of every session, in one SQLite file or one PostgreSQL database.

    ``Transcript(path)`` opens a SQLite file; :func:`open_transcript` also
    takes a ``postgresql://`` URL (``Transcript(url)`` is the same call).

    Thread safety: one connection (``check_same_thread=False``) behind one
    lock. SQLite serialises writers anyway, so per-thread connections would
    only buy concurrent *reads*, which at chat scale are microseconds; they
    would cost connections that outlive Gradio's worker threads (and that
    :meth:`close` cannot reach), ``SQLITE_BUSY`` handling between our own
    threads, and a race on ``seq`` allocation. With the lock, "read max(seq),
    insert max+1, commit" is atomic within the process; ``BEGIN IMMEDIATE``
    makes it atomic against other processes on the same file too. In
    PostgreSQL the same holds through a per-session advisory lock (see the
    module's docstring); a connection the server dropped is replaced at the
    next call, and a write whose commit failed raises :class:`TranscriptError`.

    >>> with Transcript(tmp / "transcripts.sqlite3") as transcript:
    ...     transcript.append("s1", "user", "hello", turn=1)
    ...     transcript.tail("s1", max_chars=4000)
    """

    def __init__(self, path: str | os.PathLike[str]):
        self._lock = threading.Lock()
        self._conn: Any = None
        self._backend = _backend_for(path)
        # The SQLite file (None in PostgreSQL); `location` is what messages name: the path, or the masked URL.
        self.path: Path | None = self._backend.path
        self.location = self._backend.location
        self._conn = self._backend.connect()
        logger.debug("transcript open at %s", self.location)

    # -- connection plumbing --------------------------------------------
    def close(self) -> None:
        """Close the database. Safe to call twice; any later call raises :class:`TranscriptError`."""
        with self._lock:
            if self._conn is not None:
                self._backend.close(self._conn)
                self._conn = None

    def __enter__(self) -> Transcript:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Transcript({self.location!r})"

    @contextmanager
    def _read(self) -> Iterator[_Connection]:
        with self._lock:
            conn = self._open_conn()
            try:
                yield conn
            except self._backend.errors as exc:
                raise TranscriptError(f"transcript {self.location}: {self._backend.describe(exc, conn)}") from exc

    @contextmanager
    def _write(self) -> Iterator[_Connection]:
        """One transaction: committed (durable) when the block exits, rolled back if it raises."""
        with self._lock:
            conn = self._begin()
            try:
                yield conn
                self._backend.commit(conn)
            except BaseException as exc:
                self._backend.rollback(conn)
                if isinstance(exc, self._backend.errors):
                    reason = self._backend.describe(exc, conn, writing=True)
                    raise TranscriptError(f"transcript {self.location}: {reason}") from exc
                raise

    def _begin(self) -> _Connection:
        """Open a write transaction; a connection found dead only now (nothing was written) is replaced once."""
        conn = self._open_conn()
        try:
            self._backend.begin(conn)
            return conn
        except self._backend.errors as exc:
            if not self._backend.lost(conn):
                raise self._cannot_begin(exc, conn) from exc
        conn = self._open_conn()
        try:
            self._backend.begin(conn)
        except self._backend.errors as exc:
            raise self._cannot_begin(exc, conn) from exc
        return conn

    def _cannot_begin(self, exc: Exception, conn: _Connection) -> TranscriptError:
        return TranscriptError(f"transcript {self.location}: cannot start a write: {self._backend.describe(exc, conn)}")

    def _open_conn(self) -> _Connection:
        """The open connection (a PostgreSQL one the server dropped is replaced); raises once closed."""
        if self._conn is None:
            raise TranscriptError(f"transcript {self.location} is closed")
        self._conn = self._backend.usable(self._conn)
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
                "INSERT INTO sessions (session_id, title, created_at, updated_at, meta) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (session_id) DO NOTHING",
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
                raise TranscriptError(f"cannot rename: no session {session_id!r} in {self.location}")
            info = self._session_row(conn, session_id)
        assert info is not None
        return info

    def delete_session(self, session_id: str) -> bool:
        """Delete a session, (by cascade) all its messages, and its eviction log. False if there was no session."""
        with self._write() as conn:
            self._backend.lock_sessions(conn, [session_id])
            conn.execute("DELETE FROM evicted WHERE session_id = ?", (session_id,))
            deleted = conn.execute("DELETE FROM sessions WHERE session_id = ?", (session_id,)).rowcount
        self.checkpoint()
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
        created_at: float | None = None,
    ) -> StoredMessage:
        """Store one message at the end of its session; it is committed (durable) when this returns.

        ``created_at`` is when it was said (a Unix time; now by default), for
        histories imported after the fact.

        The session is created if it does not exist. Re-appending a
        ``message_id`` that is already stored returns the stored row, unchanged,
        when session, role, content and turn are identical (``meta`` is not
        compared and not updated): a caller recovering from a crash can simply
        replay its last append. Any difference raises :class:`TranscriptError`.
        """
        return self.append_many(session_id, [NewMessage(role, content, turn, message_id, meta, created_at)])[0]

    def append_many(self, session_id: str, messages: list[NewMessage]) -> list[StoredMessage]:
        """Store several messages in order, in one transaction (one fsync): all of them or none.

        Each follows the rules of :meth:`append`; bulk ingestion of a history
        pays one commit instead of one per message.
        """
        session_id = _check_id(session_id, "session_id")
        rows = []
        now = time.time()
        for message in messages:
            role, content, turn = message.role, message.content, message.turn
            if role not in ROLES:
                raise TranscriptError(f"unknown role {role!r}; use one of {', '.join(ROLES)}")
            if not isinstance(content, str):
                raise TranscriptError(f"message content must be a string, not {type(content).__name__}")
            if not content.strip():
                raise TranscriptError(f"refusing to store an empty {role} message in session {session_id!r}")
            if isinstance(turn, bool) or not isinstance(turn, int) or turn < 0:
                raise TranscriptError(f"turn must be a non-negative integer, not {turn!r}")
            message_id = message.message_id
            message_id = _check_id(message_id, "message_id") if message_id is not None else uuid.uuid4().hex
            spoken = now if message.created_at is None else float(message.created_at)
            rows.append((message_id, role, content, turn, spoken, _dump_meta(message.meta)))
        stored: list[StoredMessage] = []
        with self._write() as conn:
            self._backend.lock_sessions(conn, [session_id])
            conn.execute(
                "INSERT INTO sessions (session_id, title, created_at, updated_at, meta) VALUES (?, NULL, ?, ?, '{}') "
                "ON CONFLICT (session_id) DO UPDATE SET updated_at = excluded.updated_at",
                (session_id, now, now),
            )
            seq = conn.execute(
                "SELECT COALESCE(MAX(seq), 0) FROM messages WHERE session_id = ?", (session_id,)
            ).fetchone()[0]
            for message_id, role, content, turn, spoken, meta_json in rows:
                existing = self._message_row(conn, message_id)
                if existing is not None:
                    same = (existing.session_id, existing.role, existing.content, existing.turn) == (
                        session_id,
                        role,
                        content,
                        turn,
                    )
                    if not same:
                        raise TranscriptError(
                            f"message id {message_id!r} is already stored (session {existing.session_id!r}, "
                            f"seq {existing.seq}, role {existing.role}) with different content; use a new id"
                        )
                    logger.debug("transcript: message %s already stored; append is a no-op", message_id)
                    stored.append(existing)
                    continue
                seq += 1
                conn.execute(
                    f"INSERT INTO messages ({_MESSAGE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (message_id, session_id, seq, role, content, turn, spoken, meta_json, None),
                )
                # meta as it will read back (JSON turns tuples into lists, int keys into strings).
                stored.append(
                    StoredMessage(message_id, session_id, seq, role, content, turn, spoken, _load_meta(meta_json))
                )
        return stored

    def messages(
        self,
        session_id: str,
        after_seq: int | None = None,
        limit: int | None = None,
        include_superseded: bool = False,
    ) -> list[StoredMessage]:
        """A session's messages, oldest first: those with ``seq > after_seq``, at most ``limit`` of them.

        Superseded messages (see :meth:`supersede_after`) are left out unless
        ``include_superseded``. An unknown session has no messages (an empty list, not an error).
        """
        query = f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE session_id = ?"
        params: list[Any] = [session_id]
        if not include_superseded:
            query += " AND superseded_at IS NULL"
        if after_seq is not None:
            query += " AND seq > ?"
            params.append(int(after_seq))
        query += " ORDER BY seq"
        if limit is not None:
            query += " LIMIT ?"
            params.append(_check_limit(limit))
        with self._read() as conn:
            return [_message_from_row(row) for row in conn.execute(query, params)]

    def supersede_after(self, session_id: str, seq: int) -> list[StoredMessage]:
        """Mark the session's active messages with ``seq`` greater than the given one as superseded.

        Used when a client's message list diverges from the stored one: the
        messages stay (exported, archived, recallable) but are no longer part
        of the conversation fed to the model. Returns the messages marked.
        """
        now = time.time()
        with self._write() as conn:
            self._backend.lock_sessions(conn, [session_id])
            rows = conn.execute(
                f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE session_id = ? AND seq > ? "
                "AND superseded_at IS NULL ORDER BY seq",
                (session_id, int(seq)),
            ).fetchall()
            if rows:
                conn.execute(
                    "UPDATE messages SET superseded_at = ? WHERE session_id = ? AND seq > ? AND superseded_at IS NULL",
                    (now, session_id, int(seq)),
                )
                conn.execute("UPDATE sessions SET updated_at = ? WHERE session_id = ?", (now, session_id))
        if rows:
            logger.info("transcript: %d message(s) after seq %d of session %s superseded", len(rows), seq, session_id)
        return [_message_from_row(row) for row in rows]

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

    def count(self, session_id: str, include_superseded: bool = True) -> int:
        """How many messages the session has stored (superseded ones included unless told otherwise)."""
        query = "SELECT COUNT(*) FROM messages WHERE session_id = ?"
        if not include_superseded:
            query += " AND superseded_at IS NULL"
        with self._read() as conn:
            return conn.execute(query, (session_id,)).fetchone()[0]

    def get(self, message_id: str) -> StoredMessage | None:
        with self._read() as conn:
            return self._message_row(conn, message_id)

    def speakers(self, message_ids: list[str]) -> dict[str, str]:
        """Message id -> who said it: the ``name`` in its meta (a chat participant), else its role."""
        found: dict[str, str] = {}
        with self._read() as conn:
            for start in range(0, len(message_ids), 500):
                batch = message_ids[start : start + 500]
                marks = ", ".join("?" * len(batch))
                for row in conn.execute(
                    f"SELECT message_id, role, meta FROM messages WHERE message_id IN ({marks})", batch
                ):
                    found[row["message_id"]] = speaker_of(row["role"], _load_meta(row["meta"]))
        return found

    def speaker_names(self, session_id: str) -> set[str]:
        """Names of the session's participants (the ``name`` of its messages)."""
        name = self._backend.json_text("meta", "name")
        with self._read() as conn:
            rows = conn.execute(
                f"SELECT DISTINCT {name} AS name FROM messages WHERE session_id = ? AND {name} IS NOT NULL",
                (session_id,),
            ).fetchall()
        return {str(r["name"]).strip() for r in rows if str(r["name"]).strip()}

    def contexts(
        self, message_ids: list[str], shorter_than: int, clip: int = 240, questions_only: bool = False
    ) -> dict[str, str]:
        """For each message shorter than ``shorter_than`` characters: the turn before it, as ``speaker: text``.

        What the archive embeds a short message with (memory blocks are
        skipped; the turn is clipped to ``clip`` characters). With
        ``questions_only``, only a turn that asks a question counts: "Biscuit!"
        needs "What did you name him?", but a statement after an unrelated
        remark is clearer alone (measured in ``bench memory``: 0.82 -> 0.87).
        """
        found: dict[str, str] = {}
        if shorter_than <= 0:
            return found
        with self._read() as conn:
            for message_id in message_ids:
                centre = self._message_row(conn, message_id)
                if centre is None or len(centre.content) >= shorter_than:
                    continue
                branch = "" if centre.superseded_at is not None else " AND superseded_at IS NULL"
                row = conn.execute(
                    f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE session_id = ? AND seq < ? "
                    f"AND role NOT IN ('memory', 'system'){branch} ORDER BY seq DESC LIMIT 1",
                    (centre.session_id, centre.seq),
                ).fetchone()
                if row is not None and (not questions_only or row["content"].rstrip().endswith("?")):
                    before = _message_from_row(row)
                    text = " ".join(before.content.split())
                    if len(text) > clip:  # cut after a word
                        text = text[: text.rfind(" ", 0, clip) if " " in text[:clip] else clip]
                    found[message_id] = f"{speaker_of(before.role, before.meta)}: {text}"
        return found

    def drafts_of(self, session_id: str, question: str) -> set[str]:
        """Superseded copies of ``question`` (a user message) and the replies that answered them.

        A client that re-sends a list, or a regenerated answer, supersedes an
        earlier attempt at the same question: those are drafts of the reply
        being written now, not memories of the conversation (recalled beside
        the question, the 135M model answered its old copy, not the new one).
        """
        drafts: set[str] = set()
        with self._read() as conn:
            copies = conn.execute(
                "SELECT message_id, seq, superseded_at FROM messages WHERE session_id = ? AND role = 'user' "
                "AND superseded_at IS NOT NULL AND content = ?",
                (session_id, question),
            ).fetchall()
            for message_id, seq, superseded_at in copies:
                drafts.add(message_id)
                later = conn.execute(
                    "SELECT message_id, role FROM messages WHERE session_id = ? AND superseded_at = ? AND seq > ? "
                    "ORDER BY seq",
                    (session_id, superseded_at, seq),
                )
                for later_id, role in later:
                    if role == "user":
                        break
                    drafts.add(later_id)
        return drafts

    def neighbours(
        self, message_id: str, before: int = 1, after: int = 1
    ) -> tuple[list[StoredMessage], list[StoredMessage]]:
        """The conversation's messages just before and just after one message (memory blocks skipped).

        Used to give a recalled line its context ("Biscuit!" means little
        without "What did you name him?"). A superseded message's neighbours
        are those of its own branch: superseded with it or before the fork.
        """
        with self._read() as conn:
            centre = self._message_row(conn, message_id)
            if centre is None:
                return [], []
            branch = "" if centre.superseded_at is not None else " AND superseded_at IS NULL"
            earlier = conn.execute(
                f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE session_id = ? AND seq < ? AND role != 'memory'"
                f"{branch} ORDER BY seq DESC LIMIT ?",
                (centre.session_id, centre.seq, int(before)),
            ).fetchall()
            later = conn.execute(
                f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE session_id = ? AND seq > ? AND role != 'memory'"
                f"{branch} ORDER BY seq LIMIT ?",
                (centre.session_id, centre.seq, int(after)),
            ).fetchall()
        return [_message_from_row(r) for r in reversed(earlier)], [_message_from_row(r) for r in later]

    def delete_message(self, message_id: str) -> bool:
        """Delete one message (e.g. a user message that never reached the model). False if it was not there."""
        now = time.time()
        with self._write() as conn:
            row = conn.execute("SELECT session_id FROM messages WHERE message_id = ?", (message_id,)).fetchone()
            if row is None:
                return False
            conn.execute("DELETE FROM messages WHERE message_id = ?", (message_id,))
            conn.execute("DELETE FROM evicted WHERE message_id = ?", (message_id,))
            conn.execute("UPDATE sessions SET updated_at = ? WHERE session_id = ?", (now, row["session_id"]))
        return True

    def truncate_after(self, session_id: str, seq: int) -> int:
        """Delete the session's messages with ``seq`` greater than the given one (undo, regenerate).

        Returns how many were deleted. ``truncate_after(sid, 0)`` empties the session but keeps it.
        """
        now = time.time()
        with self._write() as conn:
            self._backend.lock_sessions(conn, [session_id])
            if conn.execute("SELECT 1 FROM sessions WHERE session_id = ?", (session_id,)).fetchone() is None:
                raise TranscriptError(f"cannot truncate: no session {session_id!r} in {self.location}")
            conn.execute(
                "DELETE FROM evicted WHERE message_id IN (SELECT message_id FROM messages "
                "WHERE session_id = ? AND seq > ?)",
                (session_id, int(seq)),
            )
            deleted = conn.execute(
                "DELETE FROM messages WHERE session_id = ? AND seq > ?", (session_id, int(seq))
            ).rowcount
            if deleted:
                conn.execute("UPDATE sessions SET updated_at = ? WHERE session_id = ?", (now, session_id))
        if deleted:
            self.checkpoint()
            logger.info("transcript: removed %d message(s) after seq %d in session %s", deleted, seq, session_id)
        return deleted

    def export(self, session_id: str) -> dict[str, Any]:
        """The session and its messages as plain dicts, ready for ``json.dumps``."""
        with self._read() as conn:
            info = self._session_row(conn, session_id)
            if info is None:
                raise TranscriptError(f"cannot export: no session {session_id!r} in {self.location}")
            rows = conn.execute(
                f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE session_id = ? ORDER BY seq", (session_id,)
            ).fetchall()
        return {
            "schema_version": SCHEMA_VERSION,
            "session": asdict(info),
            "messages": [asdict(_message_from_row(row)) for row in rows],
        }

    def forget_message(self, message_id: str, keep_record: bool = False) -> dict[str, int]:
        """Erase a message's text from the database: its eviction log, the memory blocks quoting it, its row.

        With ``keep_record`` the message row stays (marked forgotten and
        superseded: never fed to the model or archived again); everything
        derived from it still goes. A memory block (a recalled ``memory``
        row) is erased when it quotes the message: its meta lists the
        messages it quotes; blocks stored before that are read line by line. The session
        title is re-derived if the message gave it. Rows are overwritten
        (``secure_delete``) and the WAL is truncated, so no file holds the
        text afterwards. Returns what was removed: log rows and messages as
        counts, the ids of the erased memory blocks.

        In PostgreSQL the text leaves every query at once, but not the disk:
        a DELETE (or UPDATE) leaves dead row versions in the table's pages
        until vacuum reclaims the space and it is reused, and the server's
        WAL and backups keep them until those are recycled. Nothing heavy is
        run here; where the bytes must go now, an operator runs ``VACUUM
        FULL messages, evicted`` (it rewrites the tables, under an exclusive lock).
        """
        now = time.time()
        with self._write() as conn:
            row = conn.execute(
                f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE message_id = ?", (message_id,)
            ).fetchone()
            if row is None:
                raise TranscriptError(f"cannot forget: no message {message_id!r} in {self.location}")
            message = _message_from_row(row)
            self._backend.lock_sessions(conn, [message.session_id])
            log_rows = conn.execute("DELETE FROM evicted WHERE message_id = ?", (message_id,)).rowcount
            blocks = [
                r["message_id"]
                for r in conn.execute(
                    "SELECT message_id, content, meta FROM messages WHERE session_id = ? AND role = 'memory' "
                    "ORDER BY seq",
                    (message.session_id,),
                )
                if message_id in _load_meta(r["meta"]).get("quotes", ()) or quotes(r["content"], message.content)
            ]
            for block in blocks:
                conn.execute("DELETE FROM messages WHERE message_id = ?", (block,))
            if keep_record:
                meta = message.meta | {"forgotten_at": now}
                conn.execute(
                    "UPDATE messages SET meta = ?, superseded_at = COALESCE(superseded_at, ?) WHERE message_id = ?",
                    (_dump_meta(meta), now, message_id),
                )
            else:
                conn.execute("DELETE FROM messages WHERE message_id = ?", (message_id,))
                self._retitle(conn, message)
            conn.execute("UPDATE sessions SET updated_at = ? WHERE session_id = ?", (now, message.session_id))
        self.checkpoint()
        logger.info("transcript: forgot message %s (%d log rows, %d memory blocks)", message_id, log_rows, len(blocks))
        return {"log_rows": log_rows, "memory_blocks": blocks, "messages": 0 if keep_record else 1}

    def _retitle(self, conn: _Connection, forgotten: StoredMessage) -> None:
        """A title cut from a forgotten message goes with it; the next user message names the session instead."""
        title = conn.execute("SELECT title FROM sessions WHERE session_id = ?", (forgotten.session_id,)).fetchone()
        if title is None or title[0] is None:
            return
        words = " ".join(forgotten.content.split())
        if not (title[0] == words or (title[0].endswith("…") and words.startswith(title[0][:-1]))):
            return
        nxt = conn.execute(
            "SELECT content FROM messages WHERE session_id = ? AND role = 'user' ORDER BY seq LIMIT 1",
            (forgotten.session_id,),
        ).fetchone()
        conn.execute(
            "UPDATE sessions SET title = ? WHERE session_id = ?",
            (title_of(nxt[0]) if nxt else None, forgotten.session_id),
        )

    def checkpoint(self) -> None:
        """Copy the WAL into the database and truncate it to zero bytes (no stale page copies stay behind).

        SQLite only; a no-op in PostgreSQL, whose server manages its own WAL.
        """
        with self._lock:
            conn = self._open_conn()
            try:
                self._backend.checkpoint(conn)
            except self._backend.errors as exc:
                reason = self._backend.describe(exc, conn)
                raise TranscriptError(f"transcript {self.location}: checkpoint failed: {reason}") from exc

    # -- the archive's write-ahead log ------------------------------------
    def log_evicted(self, records: list[EvictedText]) -> list[EvictedText]:
        """Append evicted text, durably (one transaction); returns what was new, with its log ``seq``.

        Idempotent per message: each message's logged text is a prefix
        ``[0, end)`` growing at the end, and a record is clipped to what lies
        past the logged end, so replaying a record (after a rebuild re-fed
        and evicted the same message again) logs nothing twice.
        """
        records = [r for r in records if r.char_end > r.char_start and r.text]
        if not records:
            return []
        now = time.time()
        logged: list[EvictedText] = []
        with self._write() as conn:
            self._backend.lock_sessions(conn, (record.session_id for record in records))
            ends: dict[str, int] = {}
            for record in records:
                if record.message_id not in ends:
                    ends[record.message_id] = conn.execute(
                        "SELECT COALESCE(MAX(char_end), 0) FROM evicted WHERE message_id = ?", (record.message_id,)
                    ).fetchone()[0]
                end = ends[record.message_id]
                if record.char_end <= end:
                    continue
                start = max(record.char_start, end)
                text = record.text[start - record.char_start :]
                if end < record.char_start:
                    logger.warning(
                        "eviction log: message %s jumps from char %d to %d", record.message_id, end, record.char_start
                    )
                log_seq = self._backend.insert_returning(
                    conn,
                    f"INSERT INTO evicted ({_EVICTED_INSERT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        record.session_id,
                        record.message_id,
                        record.role,
                        record.turn,
                        start,
                        record.char_end,
                        text,
                        record.spoken_at,
                        now,
                    ),
                    "seq",
                )
                ends[record.message_id] = record.char_end
                logged.append(replace(record, char_start=start, text=text, seq=log_seq))
        return logged

    def logged_ends(self, session_id: str) -> dict[str, int]:
        """Per message of the session, how far (in characters) its text is logged as evicted."""
        with self._read() as conn:
            rows = conn.execute(
                "SELECT message_id, MAX(char_end) FROM evicted WHERE session_id = ? GROUP BY message_id", (session_id,)
            ).fetchall()
        return {row[0]: row[1] for row in rows}

    def pending_evicted(self, limit: int = 256, session_id: str | None = None) -> list[EvictedText]:
        """Logged text not yet indexed into the archive, oldest first."""
        query = f"SELECT {_EVICTED_COLUMNS} FROM evicted WHERE indexed_at IS NULL"
        params: list[Any] = []
        if session_id is not None:
            query += " AND session_id = ?"
            params.append(session_id)
        query += " ORDER BY seq LIMIT ?"
        params.append(_check_limit(limit))
        with self._read() as conn:
            return [_evicted_from_row(row) for row in conn.execute(query, params)]

    def log_count(self, session_id: str) -> int:
        """Rows of the session in the eviction log, indexed or not."""
        with self._read() as conn:
            return conn.execute("SELECT COUNT(*) FROM evicted WHERE session_id = ?", (session_id,)).fetchone()[0]

    def pending_count(self, session_id: str | None = None) -> int:
        query = "SELECT COUNT(*) FROM evicted WHERE indexed_at IS NULL"
        params: tuple[Any, ...] = ()
        if session_id is not None:
            query += " AND session_id = ?"
            params = (session_id,)
        with self._read() as conn:
            return conn.execute(query, params).fetchone()[0]

    def evicted_text(self, message_id: str, from_char: int = 0) -> list[EvictedText]:
        """A message's logged pieces that end after ``from_char``, in order (what chunks are cut from)."""
        with self._read() as conn:
            rows = conn.execute(
                f"SELECT {_EVICTED_COLUMNS} FROM evicted WHERE message_id = ? AND char_end > ? ORDER BY char_start",
                (message_id, int(from_char)),
            ).fetchall()
        return [_evicted_from_row(row) for row in rows]

    def mark_indexed(self, seqs: list[int]) -> None:
        """The archive holds these log rows now."""
        if not seqs:
            return
        now = time.time()
        with self._write() as conn:
            conn.executemany("UPDATE evicted SET indexed_at = ? WHERE seq = ?", [(now, seq) for seq in seqs])

    # -- row helpers (called with the lock held) --------------------------
    def _session_row(self, conn: _Connection, session_id: str) -> SessionInfo | None:
        row = conn.execute(_SESSION_QUERY + " WHERE s.session_id = ?", (session_id,)).fetchone()
        return _session_from_row(row) if row is not None else None

    def _message_row(self, conn: _Connection, message_id: str) -> StoredMessage | None:
        row = conn.execute(f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE message_id = ?", (message_id,)).fetchone()
        return _message_from_row(row) if row is not None else None


TITLE_CHARS = 60


def title_of(text: str) -> str:
    """A session title from a message: its first line of words, cut to ``TITLE_CHARS`` with an ellipsis."""
    line = " ".join(text.split())
    return line if len(line) <= TITLE_CHARS else line[: TITLE_CHARS - 1].rstrip() + "…"


def quotes(block: str, content: str) -> bool:
    """Does a memory block quote ``content``? (For blocks whose meta does not list what they quote.)

    Lines read ``[7 May 2023] Maya: <text>`` (or, before dates, ``- (turn
    N, role) <text>``); the text may be clipped with an ellipsis and has its
    whitespace collapsed.
    """
    flat = " ".join(content.split())
    for line in block.splitlines():
        if line.startswith("["):
            _, marker, quoted = line.partition("]")
            quoted = quoted.partition(": ")[2]
        else:
            _, marker, quoted = line.partition(") ")
        quoted = quoted.strip().removeprefix("…").removesuffix("…").strip()
        if marker and quoted and " ".join(quoted.split()) in flat:
            return True
    return False


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


# A result row: sqlite3.Row or _PostgresRow, both read by column name and by position.
_Row = Any


def _evicted_from_row(row: _Row) -> EvictedText:
    return EvictedText(
        session_id=row["session_id"],
        message_id=row["message_id"],
        role=row["role"],
        turn=row["turn"],
        char_start=row["char_start"],
        char_end=row["char_end"],
        text=row["text"],
        spoken_at=row["spoken_at"],
        seq=row["seq"],
    )


def _message_from_row(row: _Row) -> StoredMessage:
    return StoredMessage(
        message_id=row["message_id"],
        session_id=row["session_id"],
        seq=row["seq"],
        role=row["role"],
        content=row["content"],
        turn=row["turn"],
        created_at=row["created_at"],
        meta=_load_meta(row["meta"]),
        superseded_at=row["superseded_at"],
    )


def _session_from_row(row: _Row) -> SessionInfo:
    return SessionInfo(
        session_id=row["session_id"],
        title=row["title"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        message_count=row["message_count"],
        meta=_load_meta(row["meta"]),
    )


def speaker_of(role: str, meta: dict[str, Any]) -> str:
    """Who said a message: the participant ``name`` in its meta when there is one, else its role."""
    name = meta.get("name")
    return name.strip() if isinstance(name, str) and name.strip() else role
