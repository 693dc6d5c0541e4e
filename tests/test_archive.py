"""The archive: durable writes of evicted text, hybrid search, session isolation, forgetting."""

from __future__ import annotations

import numpy as np
import pytest

from streamrag.archive import Archive, ArchiveUnavailable
from streamrag.chunking import Chunk, chunk_id
from streamrag.embedding import load_sentence_transformer

FILLER = [
    "We talked about the weather and how grey the sky has been all week.",
    "The train was late again this morning, so I missed the first meeting.",
    "I have been reading a novel about sailors crossing the Atlantic.",
    "Lunch was a sandwich with cheese, tomato and a little mustard.",
    "The garden needs watering; the roses look tired in the heat.",
    "My brother plays the cello in an amateur orchestra on Sundays.",
    "We might paint the kitchen a pale green colour next spring.",
    "The football match ended in a draw after a very slow second half.",
]


def span(session: str, message: str, text: str, turn: int = 1, role: str = "user") -> Chunk:
    """One whole short message as the indexer hands it to the archive."""
    return Chunk(chunk_id(session, message, 0), text, session, message, role, turn, 0, len(text), True, 1000.0 + turn)


@pytest.fixture
def archive(archive_settings, tmp_path):
    return Archive(archive_settings, tmp_path)


def fill(archive: Archive, session: str, facts: dict[str, str]) -> None:
    spans = [span(session, f"filler{i}", text, turn=i) for i, text in enumerate(FILLER)]
    spans += [span(session, mid, text, turn=20) for mid, text in facts.items()]
    assert archive.upsert(spans) == len(spans)


def test_dense_similarity_matches_brute_force_cosine(archive):
    fill(archive, "s1", {})
    query = "Which instrument does my brother play?"
    hits = archive.search("s1", query, k=len(FILLER))
    encoder = load_sentence_transformer("embedded")
    vectors = encoder.encode([query, *FILLER], normalize_embeddings=True)
    brute = {text: float(np.dot(vectors[0], v)) for text, v in zip(FILLER, vectors[1:])}
    dense = [h for h in hits if h.similarity is not None]
    assert dense and dense[0].text == max(brute, key=brute.get)
    for hit in dense:
        assert hit.similarity == pytest.approx(brute[hit.text], abs=1e-4)


def test_exact_codes_are_found_by_bm25_even_when_the_embedding_misses_them(archive):
    fill(archive, "s1", {"fact": "For the record, the shipment reference is QX-77815."})
    hits = archive.search("s1", "QX-77815", k=3)
    assert hits and hits[0].message_id == "fact"
    assert hits[0].lexical_score is not None and hits[0].lexical_score > 0


def test_sessions_never_see_each_other(archive):
    fill(archive, "alice", {"a": "Alice's secret password is marmalade-42."})
    fill(archive, "bob", {"b": "Bob prefers window seats on long flights."})
    for hit in archive.search("bob", "secret password marmalade-42", k=20):
        assert hit.session_id == "bob"
    assert all(h.session_id == "alice" for h in archive.search("alice", "window seats flights", k=20))
    assert archive.count("alice") == archive.count("bob") == len(FILLER) + 1


def test_writing_the_same_chunk_twice_is_harmless(archive, tmp_path):
    spans = [span("s1", "m", "The meeting moved to Thursday at 3pm.")]
    archive.upsert(spans)
    # A new process indexing the same log rows again, as after a crash.
    fresh = Archive(archive.settings, tmp_path, client=archive.client)
    assert fresh.upsert(spans) == 1
    assert archive.count("s1") == 1
    assert archive.list("s1")[0].created_at == 1001.0  # when it was said, not when it was indexed


def test_forget_one_memory_or_a_whole_session(archive):
    fill(archive, "s1", {"fact": "The dog is called Biscuit."})
    fill(archive, "s2", {"other": "The cat is called Pepper."})
    target = archive.search("s1", "Biscuit", k=1)[0]
    assert archive.forget("s1", target.chunk_id) == 1
    assert all(h.chunk_id != target.chunk_id for h in archive.search("s1", "Biscuit dog", k=20))
    assert archive.forget("s1", archive.search("s2", "Pepper", k=1)[0].chunk_id) == 0  # not s1's to forget
    assert archive.forget("s1") == len(FILLER)
    assert archive.count("s1") == 0 and archive.count("s2") == len(FILLER) + 1
    assert archive.search("s1", "weather", k=5) == []


def test_a_failed_write_raises_and_a_retry_writes_the_same_chunks(archive, monkeypatch):
    spans = [span("s1", "m", "The boat leaves from pier 9 at dawn.")]
    collection = archive.collection_for("s1")
    original = collection.upsert

    def down(*args, **kwargs):
        raise ConnectionError("connection refused")

    monkeypatch.setattr(collection, "upsert", down)
    with pytest.raises(ArchiveUnavailable, match="connection refused"):
        archive.upsert(spans)
    assert archive.count("s1") == 0
    monkeypatch.setattr(collection, "upsert", original)
    assert archive.upsert(spans) == 1
    assert archive.search("s1", "pier 9", k=1)[0].text == spans[0].text


def test_an_unreachable_server_is_a_clear_error_on_every_call(tmp_path):
    from streamrag.config import ArchiveSettings

    archive = Archive(ArchiveSettings(chroma_url="http://127.0.0.1:9"), tmp_path)  # starts anyway: retried later
    for call in (
        lambda: archive.search("s1", "anything"),
        lambda: archive.count("s1"),
        lambda: archive.list("s1"),
        lambda: archive.upsert([span("s1", "m", "text")]),
        lambda: archive.forget("s1"),
    ):
        with pytest.raises(ArchiveUnavailable, match="127.0.0.1:9"):
            call()


def test_reads_turn_any_store_failure_into_archive_unavailable(archive, monkeypatch):
    fill(archive, "s1", {})

    def broken(*args, **kwargs):
        raise RuntimeError("httpx.ConnectError: [Errno 111] Connection refused")

    monkeypatch.setattr(archive.collection_for("s1"), "query", broken)
    monkeypatch.setattr(archive.collection_for("s1"), "get", broken)
    monkeypatch.setattr(archive.collection_for("s1"), "count", broken)
    for call in (lambda: archive.search("s1", "weather"), lambda: archive.count("s1"), lambda: archive.list("s1")):
        with pytest.raises(ArchiveUnavailable, match="Connection refused"):
            call()


def test_pending_chunks_are_found_by_bm25_beside_the_store(archive):
    fill(archive, "s1", {})
    waiting = [span("s1", "new", "The new gate code is 7781-B."), span("s2", "other", "gate code 7781-B")]
    hits = archive.search("s1", "gate code 7781-B", k=3, pending=waiting)
    assert hits[0].message_id == "new" and hits[0].pending and hits[0].session_id == "s1"
    assert all(h.session_id == "s1" for h in hits)


def test_a_collection_reopens_with_its_own_embedder(tmp_path):
    from streamrag.config import ArchiveSettings

    first = Archive(ArchiveSettings(), tmp_path)
    fill(first, "s1", {"fact": "Grandma's birthday is on the 14th of March."})
    import chromadb

    client = chromadb.PersistentClient(path=str(tmp_path / "chroma"))
    collection = client.get_collection(first.collection_name("s1"))  # no embedding function passed
    result = collection.query(query_texts=["When is grandma's birthday?"], n_results=1)
    assert "14th of March" in result["documents"][0][0]


def test_the_reranker_hook_orders_hits_by_the_cross_encoders_scores(tmp_path):
    """No CrossEncoder ships offline, so build a tiny random one from MiniLM's own tokenizer."""
    from sentence_transformers import CrossEncoder
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from streamrag.config import ArchiveSettings
    from streamrag.models import embedded_embedding_model

    folder = tmp_path / "tiny-reranker"
    tokenizer = AutoTokenizer.from_pretrained(str(embedded_embedding_model()))
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        num_labels=1,
    )
    BertForSequenceClassification(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)

    archive = Archive(ArchiveSettings(reranker=str(folder)), tmp_path / "data")
    fill(archive, "s1", {})
    query = "Which instrument does my brother play?"
    hits = archive.search("s1", query, k=5)
    expected = CrossEncoder(str(folder)).predict([(query, h.text) for h in hits])
    assert [h.score for h in hits] == pytest.approx(sorted(map(float, expected), reverse=True), abs=1e-5)


def test_a_search_reads_only_its_own_sessions_collection(archive, monkeypatch):
    # Cost must follow the session, not the archive: count what one search touches.
    big = [span("big", f"m{i}", f"Note {i}: the weather, the garden and the train were fine.") for i in range(300)]
    archive.upsert(big)
    fill(archive, "small", {"fact": "My sister Lena moved to Porto last spring."})
    touched: list[tuple[str, int]] = []
    for session in ("big", "small"):
        collection = archive.collection_for(session)
        original = collection.query

        def spy(*args, _original=original, _session=session, **kwargs):
            touched.append((_session, kwargs["n_results"]))
            return _original(*args, **kwargs)

        monkeypatch.setattr(collection, "query", spy)
    archive._lexical.clear()
    hits = archive.search("small", "Where does my sister live?", k=3)
    assert hits[0].message_id == "fact"
    assert touched and all(session == "small" for session, _ in touched)
    assert all(n <= len(FILLER) + 1 for _, n in touched)
    assert list(archive._lexical) == ["small"] and len(archive._lexical["small"]) == len(FILLER) + 1
    assert archive.collection_name("big") != archive.collection_name("small")
    assert sorted(archive.session_ids()) == ["big", "small"]
    assert archive.count() == 300 + len(FILLER) + 1


def test_scores_are_absolute_so_one_threshold_serves_every_query(archive):
    fill(archive, "s1", {"fact": "My gym locker code is 4471."})
    right = archive.search("s1", "What is my gym locker code?", k=1)[0]
    unrelated = archive.search("s1", "Which volcano erupted in 1815?", k=1)[0]
    assert right.message_id == "fact" and 0.0 <= unrelated.score < right.score <= 1.0
    assert right.score > 0.5 and unrelated.score < 0.3  # RRF gave both 1/61


def test_speakers_are_searchable_and_the_stored_text_stays_verbatim(archive):
    said = Chunk(
        chunk_id("s1", "m1", 0), "I ran my first half marathon.", "s1", "m1", "user", 1, 0, 29, True, 1.0, "Maya"
    )
    other = Chunk(chunk_id("s1", "m2", 0), "I ran to the shop.", "s1", "m2", "assistant", 1, 0, 18, True, 2.0, "Tom")
    archive.upsert([said, other])
    hit = archive.search("s1", "What did Maya run?", k=1)[0]
    assert hit.message_id == "m1" and hit.speaker == "Maya" and hit.text == "I ran my first half marathon."


def test_an_archive_with_one_shared_collection_is_split_per_session_on_open(archive_settings, tmp_path):
    if archive_settings.chroma_url is not None:
        pytest.skip("the split is exercised on the embedded store; the code path is the same for a server")
    import chromadb
    from chromadb.config import Settings

    from streamrag.embedding import StreamragEmbedding

    client = chromadb.PersistentClient(path=str(tmp_path / "chroma"), settings=Settings(anonymized_telemetry=False))
    shared = client.get_or_create_collection(
        archive_settings.collection,
        embedding_function=StreamragEmbedding(),
        configuration={"hnsw": {"space": "cosine"}},
    )
    rows = [("s1", "m1", "The boat leaves from pier 9."), ("s2", "m2", "Pepper is the cat's name.")]
    shared.add(
        ids=[chunk_id(s, m, 0) for s, m, _ in rows],
        documents=[text for *_, text in rows],
        metadatas=[
            {
                "session_id": s,
                "message_id": m,
                "role": "user",
                "turn": 1,
                "char_start": 0,
                "char_end": len(t),
                "complete": True,
                "created_at": 1.0,
            }
            for s, m, t in rows
        ],  # fmt: skip
    )
    del client
    archive = Archive(archive_settings, tmp_path)
    assert archive.count("s1") == 1 and archive.count("s2") == 1
    assert archive.search("s1", "pier 9", k=1)[0].text == "The boat leaves from pier 9."
    assert archive.search("s1", "cat's name", k=5)[0].message_id == "m1"  # s2's text is not s1's
    assert archive_settings.collection not in {c.name for c in archive._client().list_collections()}


def test_text_said_in_a_period_can_be_searched_alone(archive):
    early = span("s1", "early", "We planted the tomatoes in the garden.", turn=1)
    late = Chunk(
        chunk_id("s1", "late", 0), "We planted roses in the garden.", "s1", "late", "user", 2, 0, 31, True, 5000.0
    )
    archive.upsert([early, late])
    assert {m.message_id for m in archive.search("s1", "what did we plant", k=5)} == {"early", "late"}
    only = archive.search("s1", "what did we plant", k=5, spoken_between=(4000.0, 6000.0))
    assert [m.message_id for m in only] == ["late"]
