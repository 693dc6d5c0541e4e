"""The transcript in PostgreSQL: the behaviour it has in SQLite, and what several replicas sharing it need.

The behaviour tests run on both backends (``transcript_factory`` is
parametrised); the SQLite-only details (WAL, PRAGMAs, file migrations, a
killed process) stay in test_transcript.py. PostgreSQL runs as a throwaway
local server (``postgres_cluster`` in conftest.py); without one installed,
those tests skip and say so.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path

import pytest

from streamrag.config import ConfigError, StreamRAGConfig
from streamrag.transcript import (
    SCHEMA_VERSION,
    EvictedText,
    NewMessage,
    Transcript,
    TranscriptError,
    mask_url,
    open_transcript,
)

PASSWORD = "s3cret-Pw"


@pytest.fixture(params=["sqlite", "postgres"])
def store(request, tmp_path) -> str | Path:
    """Where a transcript lives: a SQLite file, or a fresh database of this test's own in PostgreSQL."""
    if request.param == "postgres":
        return request.getfixturevalue("postgres_url")
    return tmp_path / "transcripts.sqlite3"


@pytest.fixture
def transcript_factory(store):
    """``transcript_factory()``: one more Transcript on the same store (a restarted process, a second replica)."""
    opened: list[Transcript] = []

    def make() -> Transcript:
        transcript = open_transcript(store)
        opened.append(transcript)
        return transcript

    yield make
    for transcript in opened:
        transcript.close()


@pytest.fixture
def transcript(transcript_factory) -> Transcript:
    return transcript_factory()


def evicted(message, start: int, end: int) -> EvictedText:
    return EvictedText(
        message.session_id,
        message.message_id,
        message.role,
        message.turn,
        start,
        end,
        message.content[start:end],
        message.created_at,
    )


# -- on both backends ---------------------------------------------------------------------------------------
def test_every_field_round_trips_exactly_and_another_transcript_reads_it(transcript_factory):
    writer, reader = transcript_factory(), transcript_factory()
    said_at = 1_700_000_000.123456  # sub-second: a 4-byte float column would round this by a minute
    meta = {"lang": "fr", "name": "Maya", "n": [1, 2.5, None], "deep": {"ok": True}}
    first = writer.append("s1", "user", "héllo ✓ there", turn=3, message_id="m1", meta=meta, created_at=said_at)
    second = writer.append("s1", "assistant", "salut", turn=3)
    assert (first.seq, first.created_at, first.meta) == (1, said_at, meta)
    assert abs(second.created_at - time.time()) < 60
    for t in (writer, reader):
        assert t.messages("s1") == [first, second]  # floats compared exactly, now() included
        assert t.get("m1") == first
        assert t.get("nope") is None
    assert reader.get_session("s1") == writer.get_session("s1")
    info = reader.get_session("s1")
    assert (info.message_count, info.title, info.meta) == (2, None, {})
    assert info.updated_at >= info.created_at


def test_seq_is_allocated_per_session_and_messages_filter_by_seq_and_limit(transcript):
    for i in range(6):
        transcript.append("a", "user" if i % 2 == 0 else "assistant", f"a{i}", turn=i // 2 + 1)
        transcript.append("b", "user", f"b{i}", turn=i + 1)
    assert [m.seq for m in transcript.messages("a")] == [1, 2, 3, 4, 5, 6]
    assert [m.content for m in transcript.messages("b")] == [f"b{i}" for i in range(6)]
    assert [m.content for m in transcript.messages("a", after_seq=4)] == ["a4", "a5"]
    assert [m.content for m in transcript.messages("a", after_seq=2, limit=2)] == ["a2", "a3"]
    assert transcript.messages("a", limit=0) == []
    assert transcript.messages("unknown") == []
    assert (transcript.count("a"), transcript.count("unknown")) == (6, 0)


def test_append_many_is_all_or_nothing_and_a_replayed_append_is_a_no_op(transcript):
    stored = transcript.append_many(
        "s", [NewMessage("user", "one", 1, "m1", {"a": 1}), NewMessage("assistant", "two", 1, "m2")]
    )
    assert [m.seq for m in stored] == [1, 2]
    with pytest.raises(TranscriptError, match="'m1' is already stored"):
        transcript.append_many("s", [NewMessage("user", "three", 2, "m3"), NewMessage("user", "changed", 1, "m1")])
    assert transcript.get("m3") is None and transcript.count("s") == 2
    with pytest.raises(TranscriptError, match="already stored"):
        transcript.append("other", "user", "one", turn=1, message_id="m1")
    assert transcript.get_session("other") is None  # rolled back whole, the session's row included
    assert transcript.append("s", "user", "one", turn=1, message_id="m1", meta={"a": 2}) == stored[0]
    assert transcript.append("s", "user", "three", turn=2).seq == 3


def test_refusals_leave_nothing_behind(transcript):
    with pytest.raises(TranscriptError, match="empty"):
        transcript.append("s", "user", "  \n", turn=1)
    with pytest.raises(TranscriptError, match="unknown role 'function'"):
        transcript.append("s", "function", "hi", turn=1)
    with pytest.raises(TranscriptError, match="JSON"):
        transcript.append("s", "user", "hi", turn=1, meta={"when": object()})
    with pytest.raises(TranscriptError, match="limit"):
        transcript.messages("s", limit=-1)
    assert transcript.get_session("s") is None
    for role in ("memory", "tool", "tool_spec"):
        assert transcript.append("s", role, f"a {role} row", turn=1).role == role


def test_tail_is_the_newest_contiguous_run_within_the_budget(transcript):
    for text in ["a" * 10, "b" * 20, "c" * 30, "d" * 40]:
        transcript.append("s", "user", text, turn=1)
    assert [m.content[0] for m in transcript.tail("s", 89)] == ["c", "d"]
    assert [m.content[0] for m in transcript.tail("s", 90)] == ["b", "c", "d"]
    assert [m.content[0] for m in transcript.tail("s", 0)] == ["d"]
    assert transcript.tail("unknown", 100) == []
    with pytest.raises(TranscriptError, match="max_chars"):
        transcript.tail("s", -1)


def test_supersede_after_keeps_the_drafts_out_of_the_conversation(transcript):
    transcript.append("s", "user", "hello", turn=1, message_id="u1")
    transcript.append("s", "assistant", "hi", turn=1, message_id="a1")
    transcript.append("s", "user", "What is 2+2?", turn=2, message_id="u2")
    transcript.append("s", "assistant", "5", turn=2, message_id="a2")
    marked = transcript.supersede_after("s", 2)
    assert [m.message_id for m in marked] == ["u2", "a2"]
    assert transcript.supersede_after("s", 2) == []  # already superseded
    assert [m.message_id for m in transcript.messages("s")] == ["u1", "a1"]
    assert [m.message_id for m in transcript.messages("s", include_superseded=True)] == ["u1", "a1", "u2", "a2"]
    assert (transcript.count("s"), transcript.count("s", include_superseded=False)) == (4, 2)
    assert transcript.get("u2").superseded_at == transcript.get("a2").superseded_at is not None
    again = transcript.append("s", "user", "What is 2+2?", turn=2)
    assert again.seq == 5
    assert transcript.drafts_of("s", "What is 2+2?") == {"u2", "a2"}
    assert transcript.drafts_of("s", "hello") == set()


def test_truncate_after_and_delete_message(transcript):
    for i in range(5):
        transcript.append("s", "user", f"m{i}", turn=i + 1, message_id=f"m{i}")
    transcript.log_evicted([evicted(transcript.get("m4"), 0, 2)])
    assert transcript.truncate_after("s", 3) == 2
    assert transcript.log_count("s") == 0  # the removed messages' log rows went with them
    assert transcript.append("s", "assistant", "regenerated", turn=3).seq == 4
    assert transcript.delete_message("m0") is True
    assert transcript.delete_message("m0") is False
    assert transcript.append("s", "user", "next", turn=4).seq == 5  # a gap is not reused
    assert transcript.truncate_after("s", 0) == 4
    assert transcript.get_session("s") is not None
    with pytest.raises(TranscriptError, match="no session 'ghost'"):
        transcript.truncate_after("ghost", 0)


def test_forget_message_erases_the_text_its_log_and_the_memories_quoting_it(transcript):
    transcript.create_session("s", title="my locker code is 4417")
    secret = transcript.append("s", "user", "my locker code is 4417", turn=1, message_id="secret")
    transcript.append("s", "assistant", "Noted.", turn=1)
    transcript.append("s", "user", "what was it?", turn=2, message_id="later")
    block = transcript.append("s", "memory", "[recalled] 4417", turn=2, meta={"quotes": ["secret"]})
    old_block = transcript.append("s", "memory", "- (turn 1, user) my locker code is 4417", turn=2)
    transcript.log_evicted([evicted(secret, 0, 10)])
    removed = transcript.forget_message("secret")
    assert removed == {"log_rows": 1, "memory_blocks": [block.message_id, old_block.message_id], "messages": 1}
    assert transcript.get("secret") is None and transcript.get(block.message_id) is None
    assert transcript.log_count("s") == 0
    assert transcript.get_session("s").title == "what was it?"  # the title was cut from the forgotten message
    assert not any("4417" in m.content for m in transcript.messages("s", include_superseded=True))

    kept = transcript.forget_message("later", keep_record=True)
    assert kept["messages"] == 0
    record = transcript.get("later")
    assert record.superseded_at is not None and "forgotten_at" in record.meta
    assert "later" not in [m.message_id for m in transcript.messages("s")]
    with pytest.raises(TranscriptError, match="no message 'ghost'"):
        transcript.forget_message("ghost")


def test_eviction_log_is_idempotent_and_feeds_the_indexer(transcript):
    one = transcript.append("s", "user", "0123456789", turn=1)
    two = transcript.append("s", "assistant", "abcdefghij", turn=1)
    other = transcript.append("o", "user", "elsewhere", turn=1)
    logged = transcript.log_evicted([evicted(one, 0, 4), evicted(two, 0, 10), evicted(other, 0, 9)])
    assert [(r.message_id, r.char_start, r.char_end, r.text) for r in logged] == [
        (one.message_id, 0, 4, "0123"),
        (two.message_id, 0, 10, "abcdefghij"),
        (other.message_id, 0, 9, "elsewhere"),
    ]
    assert logged[0].seq < logged[1].seq < logged[2].seq
    assert transcript.log_evicted([evicted(one, 0, 4), evicted(two, 2, 8)]) == []  # replays log nothing
    grown = transcript.log_evicted([evicted(one, 0, 7)])  # overlapping: only the new tail
    assert [(r.char_start, r.char_end, r.text) for r in grown] == [(4, 7, "456")]
    assert transcript.logged_ends("s") == {one.message_id: 7, two.message_id: 10}
    assert (transcript.log_count("s"), transcript.pending_count("s"), transcript.pending_count()) == (3, 3, 4)
    assert [r.text for r in transcript.evicted_text(one.message_id, from_char=3)] == ["0123", "456"]
    assert [r.text for r in transcript.evicted_text(one.message_id, from_char=4)] == ["456"]
    pending = transcript.pending_evicted()
    assert [r.seq for r in pending] == sorted(r.seq for r in pending) and len(pending) == 4
    assert pending[0] == logged[0]
    assert [r.text for r in transcript.pending_evicted(limit=2, session_id="s")] == ["0123", "abcdefghij"]
    transcript.mark_indexed([r.seq for r in pending[:3]])
    assert [r.text for r in transcript.pending_evicted()] == ["456"]
    assert transcript.pending_count("s") == 1 and transcript.log_count("s") == 3
    transcript.mark_indexed([])
    assert transcript.delete_session("o") is True
    assert transcript.pending_count() == 1


def test_neighbours_contexts_and_speakers(transcript):
    transcript.append("s", "system", "Be kind.", turn=0, message_id="sys")
    transcript.append("s", "user", "What did you name him?", turn=1, message_id="q", meta={"name": "Maya"})
    transcript.append("s", "memory", "[recalled] dogs", turn=1, message_id="mem")
    transcript.append("s", "assistant", "Biscuit!", turn=1, message_id="a")
    transcript.append("s", "user", "Nice.", turn=2, message_id="n", meta={"name": " Tom "})
    before, after = transcript.neighbours("a", before=2, after=1)
    assert [m.message_id for m in before] == ["sys", "q"] and [m.message_id for m in after] == ["n"]
    assert transcript.neighbours("ghost") == ([], [])
    assert transcript.contexts(["a", "n", "q"], shorter_than=20) == {
        "a": "Maya: What did you name him?",
        "n": "assistant: Biscuit!",
    }
    assert transcript.contexts(["a", "n"], shorter_than=20, questions_only=True) == {
        "a": "Maya: What did you name him?"
    }
    assert transcript.speakers(["q", "a", "n", "ghost"]) == {"q": "Maya", "a": "assistant", "n": "Tom"}
    assert transcript.speaker_names("s") == {"Maya", "Tom"}
    assert transcript.speaker_names("unknown") == set()


def test_sessions_are_created_listed_renamed_and_deleted(transcript):
    info = transcript.create_session("old", title="First", meta={"model": "smollm2"})
    assert (info.title, info.meta, info.message_count) == ("First", {"model": "smollm2"}, 0)
    assert transcript.create_session("old", title="ignored") == info
    time.sleep(0.002)
    transcript.create_session("mid")
    time.sleep(0.002)
    transcript.create_session("new")
    fresh = transcript.create_session()
    assert len(fresh.session_id) == 32
    transcript.delete_session(fresh.session_id)
    time.sleep(0.002)
    transcript.append("old", "user", "bumps old to the top", turn=1, message_id="m1")
    listed = transcript.sessions()
    assert [s.session_id for s in listed] == ["old", "new", "mid"]
    assert listed[0].message_count == 1
    assert [s.session_id for s in transcript.sessions(limit=2)] == ["old", "new"]
    renamed = transcript.rename_session("old", "after")
    assert renamed.title == "after" and renamed.updated_at == listed[0].updated_at
    with pytest.raises(TranscriptError, match="no session 'ghost'"):
        transcript.rename_session("ghost", "x")
    assert transcript.delete_session("old") is True
    assert transcript.get("m1") is None and transcript.count("old") == 0  # cascaded
    assert transcript.delete_session("old") is False
    with pytest.raises(TranscriptError, match="limit"):
        transcript.sessions(limit=-1)


def test_export_is_json_ready_and_complete(transcript):
    transcript.create_session("s", title="Chat", meta={"k": "v"})
    transcript.append("s", "user", "héllo ✓", turn=1, meta={"lang": "fr"}, created_at=1_700_000_000.5)
    transcript.append("s", "assistant", "salut", turn=1, meta={"stop_reason": "eos"})
    exported = transcript.export("s")
    assert json.loads(json.dumps(exported)) == exported
    assert exported["schema_version"] == SCHEMA_VERSION
    assert exported["session"]["title"] == "Chat" and exported["session"]["message_count"] == 2
    assert [m["content"] for m in exported["messages"]] == ["héllo ✓", "salut"]
    assert exported["messages"][0]["created_at"] == 1_700_000_000.5
    with pytest.raises(TranscriptError, match="no session 'ghost'"):
        transcript.export("ghost")


def test_threads_sharing_one_transcript_get_consecutive_seqs(transcript):
    threads_n, per_thread = 6, 15
    barrier = threading.Barrier(threads_n)
    errors: list[BaseException] = []

    def worker(worker_id: int) -> None:
        try:
            barrier.wait()
            for i in range(per_thread):
                transcript.append("s", "user", f"w{worker_id}-{i}", turn=i + 1)
                transcript.count("s")
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(threads_n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert [m.seq for m in transcript.messages("s")] == list(range(1, threads_n * per_thread + 1))


def test_a_closed_transcript_refuses_calls_and_repr_names_its_place(transcript_factory):
    transcript = transcript_factory()
    assert repr(transcript).startswith("Transcript(")
    transcript.checkpoint()  # WAL truncation in SQLite, a no-op in PostgreSQL: both fine to call
    transcript.close()
    transcript.close()
    with pytest.raises(TranscriptError, match="closed"):
        transcript.count("s")
    with pytest.raises(TranscriptError, match="closed"):
        transcript.append("s", "user", "hi", turn=1)


# -- PostgreSQL only ------------------------------------------------------------------------------------------
def _admin(url: str):
    import psycopg

    return psycopg.connect(url, autocommit=True)


def test_postgres_schema_uses_8_byte_columns_and_a_version_table(postgres_url):
    import psycopg

    with open_transcript(postgres_url) as transcript:
        assert transcript.path is None and transcript.location == postgres_url
        transcript.create_session("s")
        with _admin(postgres_url) as admin:
            types = dict(
                admin.execute(
                    "SELECT table_name || '.' || column_name, data_type FROM information_schema.columns "
                    "WHERE table_schema = 'public'"
                ).fetchall()
            )
            assert types["messages.created_at"] == types["evicted.spoken_at"] == "double precision"
            assert types["messages.superseded_at"] == types["sessions.updated_at"] == "double precision"
            assert types["messages.seq"] == types["evicted.char_end"] == "bigint"
            identity = admin.execute(
                "SELECT is_identity FROM information_schema.columns "
                "WHERE table_name = 'evicted' AND column_name = 'seq'"
            ).fetchone()[0]
            assert identity == "YES"
            assert admin.execute("SELECT version FROM transcript_schema").fetchone()[0] == SCHEMA_VERSION
            with pytest.raises(psycopg.errors.CheckViolation):  # the role CHECK backs up the validation
                admin.execute("INSERT INTO messages VALUES ('x', 's', 1, 'robot', 'hi', 1, 0, '{}', NULL)")
    with open_transcript(postgres_url):  # opening again changes nothing
        pass
    with _admin(postgres_url) as admin:
        admin.execute("UPDATE transcript_schema SET version = %s", (SCHEMA_VERSION + 1,))
    with pytest.raises(TranscriptError, match="newer"):
        open_transcript(postgres_url)


@pytest.mark.parametrize("isolation", [None, "repeatable read"])
def test_two_replicas_appending_to_one_session_take_turns(postgres_url, isolation):
    """Two processes' transcripts (here: two connections, several threads each) never hand out one seq twice.

    Also where the database's default isolation is stricter: the transcript's writes name their own.
    """
    if isolation is not None:
        with _admin(postgres_url) as admin:
            name = postgres_url.rsplit("/", 1)[1]
            admin.execute(f"ALTER DATABASE \"{name}\" SET default_transaction_isolation TO '{isolation}'")
    replicas = [open_transcript(postgres_url), open_transcript(postgres_url)]
    threads_per_replica, per_thread = 3, 20
    writers = [(replica, f"r{r}t{t}") for r, replica in enumerate(replicas) for t in range(threads_per_replica)]
    barrier = threading.Barrier(len(writers))
    errors: list[BaseException] = []

    def worker(replica: Transcript, name: str) -> None:
        try:
            barrier.wait()
            for i in range(per_thread):
                replica.append("shared", "user", f"{name}-{i}", turn=i + 1)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=writer) for writer in writers]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []
        for replica in replicas:  # each reads what both wrote
            messages = replica.messages("shared")
            assert [m.seq for m in messages] == list(range(1, len(writers) * per_thread + 1))
            for _, name in writers:
                own = [m.content for m in messages if m.content.startswith(f"{name}-")]
                assert own == [f"{name}-{i}" for i in range(per_thread)]
    finally:
        for replica in replicas:
            replica.close()


def test_two_replicas_logging_the_same_eviction_log_it_once(postgres_url):
    replicas = [open_transcript(postgres_url) for _ in range(4)]
    try:
        message = replicas[0].append("s", "user", "x" * 400, turn=1)
        for end in (100, 250, 400):
            barrier = threading.Barrier(len(replicas))
            results: list[list[EvictedText]] = []

            def log(replica: Transcript, end: int, barrier: threading.Barrier, results: list) -> None:
                barrier.wait()
                results.append(replica.log_evicted([evicted(message, 0, end)]))

            threads = [threading.Thread(target=log, args=(r, end, barrier, results)) for r in replicas]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            assert sorted(len(logged) for logged in results) == [0] * (len(replicas) - 1) + [1]
        pieces = replicas[1].evicted_text(message.message_id)
        assert [(p.char_start, p.char_end) for p in pieces] == [(0, 100), (100, 250), (250, 400)]
    finally:
        for replica in replicas:
            replica.close()


def test_reconnects_after_the_server_restarts(own_postgres_server):
    url = own_postgres_server.create_database()
    with open_transcript(url) as transcript:
        transcript.append("s", "user", "before the restart", turn=1)
        own_postgres_server.restart()
        assert [m.content for m in transcript.messages("s")] == ["before the restart"]  # a read reconnects
        own_postgres_server.restart()
        assert transcript.append("s", "assistant", "after it", turn=1).seq == 2  # and so does a write
        own_postgres_server.stop(remove=False)
        started = time.monotonic()
        with pytest.raises(TranscriptError, match="cannot connect"):
            transcript.count("s")  # while the server is down: a clear error, at once
        assert time.monotonic() - started < 10
        own_postgres_server.start()
        assert transcript.count("s") == 2  # not failing forever: the next call connects again


def test_a_write_whose_commit_fails_raises_and_leaves_nothing(postgres_url):
    with open_transcript(postgres_url) as transcript, _admin(postgres_url) as admin:
        transcript.append("s", "user", "kept", turn=1)
        pid = transcript._conn.raw.info.backend_pid
        with pytest.raises(TranscriptError, match="connection to PostgreSQL was lost.*not confirmed"):
            with transcript._write() as conn:
                conn.execute("INSERT INTO sessions (session_id, created_at, updated_at) VALUES ('half', 0, 0)")
                admin.execute("SELECT pg_terminate_backend(%s, 5000)", (pid,))  # returns once it is gone
        assert transcript.get_session("half") is None  # the next call reconnected; nothing half-written
        assert [m.content for m in transcript.messages("s")] == ["kept"]


def test_the_password_shows_in_no_repr_and_no_error(postgres_url):
    user, host = postgres_url.split("://", 1)[1].split("@", 1)
    secret_url = f"postgresql://{user}:{PASSWORD}@{host}"  # trust auth: the password is not checked
    with open_transcript(secret_url) as transcript:
        transcript.append("s", "user", "hi", turn=1)
        assert PASSWORD not in repr(transcript) and ":***@" in repr(transcript)
        with pytest.raises(TranscriptError) as info:
            transcript.rename_session("ghost", "x")
        assert PASSWORD not in str(info.value) and "***" in str(info.value)
    missing = secret_url.rsplit("/", 1)[0] + "/no_such_database"
    with pytest.raises(TranscriptError, match="cannot connect") as info:
        open_transcript(missing)
    assert PASSWORD not in str(info.value)
    assert PASSWORD not in "".join(str(e) for e in (info.value.__cause__, info.value.__context__) if e)


def test_an_unreachable_server_fails_fast_with_a_clear_error():
    import socket

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    started = time.monotonic()
    with pytest.raises(TranscriptError, match="cannot connect to the transcript at postgresql://u:\\*\\*\\*@") as info:
        open_transcript(f"postgresql://u:{PASSWORD}@127.0.0.1:{port}/db")
    assert time.monotonic() - started < 10
    assert PASSWORD not in str(info.value)


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("postgresql://u:pw@localhost:notaport/db", "cannot connect"),
        ("mysql://u:pw@localhost/db", "unsupported transcript URL scheme mysql://"),
    ],
)
def test_a_bad_url_is_refused(target, message):
    pytest.importorskip("psycopg")
    with pytest.raises(TranscriptError, match=message) as info:
        open_transcript(target)
    assert ":pw@" not in str(info.value)


def test_without_psycopg_the_error_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "psycopg", None)  # `import psycopg` raises ImportError
    with pytest.raises(TranscriptError, match=r'pip install "streamrag\[postgres\]"') as info:
        open_transcript(f"postgresql://u:{PASSWORD}@127.0.0.1:5432/db")
    assert PASSWORD not in str(info.value)


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("postgresql://u:p%40ss@db:5432/x", "postgresql://u:***@db:5432/x"),
        ("postgres://u@db/x", "postgres://u@db/x"),
        ("postgresql:///x?user=u&password=pw&sslmode=require", "postgresql:///x?user=u&password=***&sslmode=require"),
    ],
)
def test_mask_url(url, masked):
    assert mask_url(url) == masked


def test_config_names_the_transcript_target(tmp_path):
    config = StreamRAGConfig(data_dir=tmp_path)
    assert config.transcript_url is None and config.transcript_target == tmp_path / "transcripts.sqlite3"
    url = f"postgresql://u:{PASSWORD}@db:5432/streamrag"
    config = StreamRAGConfig(data_dir=tmp_path, transcript_url=url)
    assert config.transcript_target == url
    assert PASSWORD not in repr(config)
    assert StreamRAGConfig(transcript_url="postgres://db/x").transcript_target == "postgres://db/x"
    with pytest.raises(ConfigError, match="transcript_url must be a postgresql://") as info:
        StreamRAGConfig.from_dict({"transcript_url": f"mysql://u:{PASSWORD}@db/x"})
    assert PASSWORD not in str(info.value)
