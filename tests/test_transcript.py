"""The transcript: durable, ordered, thread-safe storage of every message."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import streamrag.transcript as transcript_module
from streamrag.transcript import SCHEMA_VERSION, SessionInfo, StoredMessage, Transcript, TranscriptError

# Child processes load transcript.py by file path: it needs only the stdlib, and going
# through `import streamrag` would pull in torch and cost seconds per child.
_CHILD_PRELUDE = f"""
import importlib.util, sys
from pathlib import Path
spec = importlib.util.spec_from_file_location("transcript_child", {transcript_module.__file__!r})
module = importlib.util.module_from_spec(spec)
sys.modules["transcript_child"] = module
spec.loader.exec_module(module)
Transcript = module.Transcript
"""


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "nested" / "dir" / "transcripts.sqlite3"


@pytest.fixture
def transcript(db_path: Path):
    with Transcript(db_path) as t:
        yield t


def _spawn(code: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", _CHILD_PRELUDE + code],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for_ok(child: subprocess.Popen) -> None:
    line = child.stdout.readline()
    if line.strip() != "ok":
        child.kill()
        _, err = child.communicate(timeout=10)
        pytest.fail(f"child did not report ok (got {line!r}); stderr:\n{err}")


# -- schema and settings ------------------------------------------------------
def test_creates_parent_dirs_schema_version_and_wal(db_path):
    assert not db_path.parent.exists()
    with Transcript(db_path):
        pass
    conn = sqlite3.connect(db_path)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"  # WAL is persistent in the file
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert {"sessions", "messages"} <= tables
        indexes = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
        assert "messages_by_session_seq" in indexes
    finally:
        conn.close()


def test_connection_uses_full_sync_and_foreign_keys(transcript):
    conn = transcript._conn
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1


def test_reopening_keeps_data(db_path):
    with Transcript(db_path) as t:
        t.append("s", "user", "persist me", turn=1)
    with Transcript(db_path) as t:
        assert [m.content for m in t.messages("s")] == ["persist me"]


def test_garbage_file_raises_transcript_error_naming_the_path(tmp_path):
    path = tmp_path / "transcripts.sqlite3"
    path.write_bytes(b"this is not a database\x00\xff" * 200)
    with pytest.raises(TranscriptError, match="not a readable SQLite database") as info:
        Transcript(path)
    assert str(path) in str(info.value)


def test_newer_schema_version_is_refused(db_path):
    with Transcript(db_path):
        pass
    conn = sqlite3.connect(db_path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(TranscriptError, match="newer"):
        Transcript(db_path)


def test_closed_transcript_refuses_calls(db_path):
    t = Transcript(db_path)
    t.close()
    t.close()  # twice is fine
    with pytest.raises(TranscriptError, match="closed"):
        t.count("s")


# -- round trip and ordering --------------------------------------------------
def test_append_round_trips_every_field(transcript):
    stored = transcript.append("s1", "user", "hello there", turn=3, message_id="m1", meta={"lang": "en", "n": [1, 2]})
    assert isinstance(stored, StoredMessage)
    assert (stored.message_id, stored.session_id, stored.seq, stored.role) == ("m1", "s1", 1, "user")
    assert (stored.content, stored.turn, stored.meta) == ("hello there", 3, {"lang": "en", "n": [1, 2]})
    assert abs(stored.created_at - time.time()) < 60
    assert transcript.get("m1") == stored
    assert transcript.messages("s1") == [stored]
    assert transcript.get("nope") is None


def test_append_generates_ids_and_creates_the_session(transcript):
    assert transcript.get_session("fresh") is None
    stored = transcript.append("fresh", "system", "You are helpful.", turn=0)
    assert len(stored.message_id) == 32
    info = transcript.get_session("fresh")
    assert info is not None and info.message_count == 1


def test_seq_increases_in_append_order_per_session(transcript):
    for i in range(5):
        transcript.append("a", "user" if i % 2 == 0 else "assistant", f"a{i}", turn=i // 2 + 1)
        transcript.append("b", "user", f"b{i}", turn=i + 1)
    a = transcript.messages("a")
    assert [m.seq for m in a] == [1, 2, 3, 4, 5]
    assert [m.content for m in a] == ["a0", "a1", "a2", "a3", "a4"]
    assert [m.content for m in transcript.messages("b")] == ["b0", "b1", "b2", "b3", "b4"]
    assert transcript.count("a") == 5
    assert transcript.count("unknown") == 0


def test_messages_after_seq_and_limit(transcript):
    for i in range(6):
        transcript.append("s", "user", f"m{i}", turn=i + 1)
    assert [m.content for m in transcript.messages("s", after_seq=4)] == ["m4", "m5"]
    assert [m.content for m in transcript.messages("s", limit=2)] == ["m0", "m1"]
    assert [m.content for m in transcript.messages("s", after_seq=2, limit=2)] == ["m2", "m3"]
    assert transcript.messages("s", after_seq=6) == []
    assert transcript.messages("unknown") == []


# -- refusals -----------------------------------------------------------------
@pytest.mark.parametrize("content", ["", "   \n\t"])
def test_empty_content_is_refused(transcript, content):
    with pytest.raises(TranscriptError, match="empty"):
        transcript.append("s", "user", content, turn=1)
    assert transcript.count("s") == 0
    assert transcript.get_session("s") is None  # a refused append leaves nothing behind


def test_unknown_role_is_refused(transcript):
    with pytest.raises(TranscriptError, match="unknown role 'function'"):
        transcript.append("s", "function", "hi", turn=1)


@pytest.mark.parametrize("role", ["memory", "tool", "tool_spec"])
def test_context_and_tool_roles_are_accepted(transcript, role):
    assert transcript.append("s", role, "[recalled] locker 4417", turn=1).role == role


def test_a_schema_2_transcript_is_migrated_whole_and_takes_tool_messages(db_path):
    """A database written before the tool roles existed: every row survives the table copy."""
    import streamrag.transcript as module

    old_schema = module._SCHEMA.replace("'tool', ", "").replace(", 'tool_spec'", "")
    db_path.parent.mkdir(parents=True, exist_ok=True)
    assert "'tool'" not in old_schema
    conn = sqlite3.connect(db_path)
    conn.executescript(old_schema)
    conn.execute("INSERT INTO sessions VALUES ('s', 'title', 1.0, 2.0, '{}')")
    rows = [
        (f"m{i}", "s", i, role, f"text {i}", i, 10.0 + i, '{"k": 1}', None)
        for i, role in enumerate(["system", "user", "memory", "assistant"], start=1)
    ]
    conn.executemany("INSERT INTO messages VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
    conn.execute("PRAGMA user_version = 2")
    conn.commit()
    with pytest.raises(sqlite3.IntegrityError):  # the old CHECK: no tool role
        conn.execute("INSERT INTO messages VALUES ('x', 's', 9, 'tool', 'r', 1, 1.0, '{}', NULL)")
    conn.close()

    with Transcript(db_path) as transcript:
        kept = transcript.messages("s")
        assert [(m.message_id, m.seq, m.role, m.content, m.turn, m.meta) for m in kept] == [
            (r[0], r[2], r[3], r[4], r[5], {"k": 1}) for r in rows
        ]
        assert transcript.append("s", "tool", '{"temp": 21}', turn=4).seq == 5
    conn = sqlite3.connect(db_path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
    conn.close()


def test_unserialisable_meta_is_refused(transcript):
    with pytest.raises(TranscriptError, match="JSON"):
        transcript.append("s", "user", "hi", turn=1, meta={"when": object()})
    assert transcript.count("s") == 0


def test_database_check_constraint_backs_up_role_validation(transcript):
    transcript.create_session("s")
    with pytest.raises(sqlite3.IntegrityError):
        transcript._conn.execute("INSERT INTO messages VALUES ('x', 's', 1, 'robot', 'hi', 1, 0, '{}', NULL)")


# -- idempotency ----------------------------------------------------------------
def test_reappending_an_identical_message_returns_the_stored_row(transcript):
    first = transcript.append("s", "user", "hello", turn=1, message_id="m1", meta={"a": 1})
    transcript.append("s", "assistant", "hi!", turn=1, message_id="m2")
    again = transcript.append("s", "user", "hello", turn=1, message_id="m1", meta={"a": 2})
    assert again == first  # same seq, same meta: nothing was rewritten
    assert transcript.count("s") == 2


def test_reusing_a_message_id_with_different_content_raises(transcript):
    transcript.append("s", "user", "hello", turn=1, message_id="m1")
    with pytest.raises(TranscriptError, match="'m1' is already stored"):
        transcript.append("s", "user", "goodbye", turn=1, message_id="m1")
    with pytest.raises(TranscriptError, match="already stored"):
        transcript.append("other", "user", "hello", turn=1, message_id="m1")
    assert [m.content for m in transcript.messages("s")] == ["hello"]
    assert transcript.get_session("other") is None  # the failed append was rolled back entirely


# -- tail -------------------------------------------------------------------------
def test_tail_returns_newest_messages_within_budget_oldest_first(transcript):
    for text in ["a" * 10, "b" * 20, "c" * 30, "d" * 40]:
        transcript.append("s", "user", text, turn=1)
    assert [m.content[0] for m in transcript.tail("s", 70)] == ["c", "d"]
    assert [m.content[0] for m in transcript.tail("s", 89)] == ["c", "d"]
    assert [m.content[0] for m in transcript.tail("s", 90)] == ["b", "c", "d"]
    assert [m.content[0] for m in transcript.tail("s", 1000)] == ["a", "b", "c", "d"]


def test_tail_always_includes_the_newest_message(transcript):
    transcript.append("s", "user", "short", turn=1)
    transcript.append("s", "assistant", "x" * 500, turn=1)
    tail = transcript.tail("s", 10)
    assert [m.seq for m in tail] == [2]
    assert transcript.tail("s", 0)[0].seq == 2


def test_tail_stops_at_the_first_message_that_does_not_fit(transcript):
    # Contiguous: a small old message is not picked up across a large one in between.
    for text in ["tiny", "y" * 100, "z" * 5]:
        transcript.append("s", "user", text, turn=1)
    assert [m.content for m in transcript.tail("s", 50)] == ["zzzzz"]


def test_tail_of_unknown_session_is_empty_and_negative_budget_is_refused(transcript):
    assert transcript.tail("unknown", 100) == []
    with pytest.raises(TranscriptError, match="max_chars"):
        transcript.tail("unknown", -1)


# -- sessions ---------------------------------------------------------------------
def test_create_session_is_idempotent(transcript):
    info = transcript.create_session("s", title="First", meta={"model": "smollm2"})
    assert isinstance(info, SessionInfo)
    assert (info.title, info.meta, info.message_count) == ("First", {"model": "smollm2"}, 0)
    again = transcript.create_session("s", title="Other title")
    assert again == info


def test_create_session_without_id_makes_a_new_one(transcript):
    a = transcript.create_session()
    b = transcript.create_session()
    assert a.session_id != b.session_id and len(a.session_id) == 32


def test_sessions_are_listed_most_recently_updated_first(transcript):
    for sid in ["old", "mid", "new"]:
        transcript.create_session(sid)
        time.sleep(0.002)
    transcript.append("old", "user", "bumps old to the top", turn=1)
    listed = transcript.sessions()
    assert [s.session_id for s in listed] == ["old", "new", "mid"]
    assert listed[0].message_count == 1
    assert [s.session_id for s in transcript.sessions(limit=2)] == ["old", "new"]


def test_rename_session(transcript):
    transcript.create_session("s", title="before")
    assert transcript.rename_session("s", "after").title == "after"
    assert transcript.get_session("s").title == "after"
    with pytest.raises(TranscriptError, match="no session 'ghost'"):
        transcript.rename_session("ghost", "x")


# -- deletion ---------------------------------------------------------------------
def test_delete_session_cascades_to_messages(transcript):
    transcript.append("s", "user", "one", turn=1, message_id="m1")
    transcript.append("s", "assistant", "two", turn=1, message_id="m2")
    transcript.append("keep", "user", "other", turn=1)
    assert transcript.delete_session("s") is True
    assert transcript.get_session("s") is None
    assert transcript.get("m1") is None and transcript.get("m2") is None
    rows = transcript._conn.execute("SELECT COUNT(*) FROM messages WHERE session_id = 's'").fetchone()[0]
    assert rows == 0
    assert transcript.count("keep") == 1
    assert transcript.delete_session("s") is False


def test_delete_message(transcript):
    transcript.append("s", "user", "one", turn=1, message_id="m1")
    transcript.append("s", "user", "two", turn=2, message_id="m2")
    assert transcript.delete_message("m1") is True
    assert transcript.delete_message("m1") is False
    assert [m.message_id for m in transcript.messages("s")] == ["m2"]
    # A gap left by a deleted message is not reused: the next message goes after the last one.
    assert transcript.append("s", "user", "three", turn=3).seq == 3


def test_truncate_after_removes_later_messages_and_seq_continues_from_there(transcript):
    for i in range(5):
        transcript.append("s", "user", f"m{i}", turn=i + 1)
    assert transcript.truncate_after("s", 3) == 2
    assert [m.seq for m in transcript.messages("s")] == [1, 2, 3]
    regenerated = transcript.append("s", "assistant", "new reply", turn=3)
    assert regenerated.seq == 4
    assert transcript.truncate_after("s", 10) == 0
    assert transcript.truncate_after("s", 0) == 4
    assert transcript.get_session("s") is not None  # the session itself stays
    with pytest.raises(TranscriptError, match="no session"):
        transcript.truncate_after("ghost", 0)


# -- export -------------------------------------------------------------------------
def test_export_is_json_serialisable_and_complete(transcript):
    transcript.create_session("s", title="Chat", meta={"k": "v"})
    transcript.append("s", "user", "héllo ✓", turn=1, meta={"lang": "fr"})
    transcript.append("s", "assistant", "salut", turn=1, meta={"stop_reason": "eos"})
    exported = transcript.export("s")
    decoded = json.loads(json.dumps(exported))
    assert decoded == exported
    assert decoded["session"]["title"] == "Chat" and decoded["session"]["message_count"] == 2
    assert [m["content"] for m in decoded["messages"]] == ["héllo ✓", "salut"]
    assert decoded["messages"][1]["meta"] == {"stop_reason": "eos"}
    with pytest.raises(TranscriptError, match="no session"):
        transcript.export("ghost")


# -- concurrency and durability -----------------------------------------------------
def test_concurrent_appends_from_threads_get_unique_consecutive_seqs(transcript):
    threads_n, per_thread = 8, 25
    barrier = threading.Barrier(threads_n)
    errors: list[BaseException] = []

    def worker(worker_id: int) -> None:
        try:
            barrier.wait()
            for i in range(per_thread):
                transcript.append("s", "user", f"w{worker_id}-{i}", turn=i + 1)
                transcript.count("s")  # interleave reads with other threads' writes
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(threads_n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    messages = transcript.messages("s")
    assert [m.seq for m in messages] == list(range(1, threads_n * per_thread + 1))
    for worker_id in range(threads_n):
        own = [m.content for m in messages if m.content.startswith(f"w{worker_id}-")]
        assert own == [f"w{worker_id}-{i}" for i in range(per_thread)]  # each thread's order is kept


def test_concurrent_appends_from_processes_get_unique_consecutive_seqs(db_path):
    """Two processes on one data dir (e.g. `chat` beside `serve`) must not hand out the same seq."""
    Transcript(db_path).close()
    children_n, per_child = 4, 60
    start_at = time.time() + 0.5  # all children start appending at once, after their imports
    code = (
        "import time\n"
        "t = Transcript(Path(sys.argv[1]))\n"
        "time.sleep(max(0.0, float(sys.argv[4]) - time.time()))\n"
        "for i in range(int(sys.argv[3])):\n"
        "    t.append('s', 'user', f'{sys.argv[2]}-{i}', turn=1)\n"
        "t.close()\n"
    )
    children = [
        subprocess.Popen(
            [sys.executable, "-c", _CHILD_PRELUDE + code, str(db_path), f"p{n}", str(per_child), str(start_at)],
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in range(children_n)
    ]
    for child in children:
        _, err = child.communicate(timeout=60)
        assert child.returncode == 0, err
    with Transcript(db_path) as t:
        messages = t.messages("s")
        assert [m.seq for m in messages] == list(range(1, children_n * per_child + 1))
        assert len({m.content for m in messages}) == children_n * per_child


def test_committed_message_survives_sigkill_and_unfinished_write_is_lost(db_path):
    """A process killed right after append() returns keeps the message, exactly once.

    The child also holds an open, uncommitted write (an "unfinished reply")
    when it dies: that row must vanish and its lock must not block the next writer.
    """
    code = f"""
import sqlite3, time
t = Transcript(Path({str(db_path)!r}))
t.append("s", "user", "remember me", turn=1, message_id="m-user")
raw = sqlite3.connect({str(db_path)!r}, isolation_level=None)
raw.execute("BEGIN IMMEDIATE")
raw.execute("INSERT INTO messages VALUES ('m-half', 's', 2, 'assistant', 'half a rep', 1, 0, '{{}}', NULL)")
print("ok", flush=True)
time.sleep(60)
"""
    child = _spawn(code)
    try:
        _wait_for_ok(child)
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=10)
    finally:
        if child.poll() is None:
            child.kill()
        child.stdout.close()
        child.stderr.close()
    assert child.returncode == -signal.SIGKILL

    with Transcript(db_path) as t:
        messages = t.messages("s")
        assert [(m.message_id, m.content) for m in messages] == [("m-user", "remember me")]
        assert t.get("m-half") is None
        # The dead process's write lock is gone: the next append succeeds at once, at seq 2.
        started = time.monotonic()
        assert t.append("s", "assistant", "a full reply", turn=1).seq == 2
        assert time.monotonic() - started < 5
        # Crash recovery: replaying the last append is harmless.
        assert t.append("s", "user", "remember me", turn=1, message_id="m-user").seq == 1
        assert t.count("s") == 2
