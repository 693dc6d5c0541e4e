"""The Gradio app, driven like a user would: through gradio_client, and in headless Chromium.

One in-process app (small 256-token cache, short greedy replies) serves every
test here; each ``gradio_client.Client`` is its own browser-tab-like session.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from pathlib import Path

import pytest

from streamrag.bench.serve import gradio_text

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
gradio_client = pytest.importorskip("gradio_client", reason="the app extra is not installed")

from conftest import _free_port, build_resources, files_holding  # noqa: E402

RESULTS = Path(__file__).resolve().parent.parent / "results"
FACT = "By the way, my sister Margarethe moved to Trondheim last year."
QUESTION = "Where did my sister Margarethe move to?"
# Long enough that two or three of them overflow the 256-token window.
FILLER = [
    "Let's talk about gardening for a while. What should I plant in a shady corner of the garden, where the soil "
    "stays damp most of the year and the afternoon sun never quite reaches the fence? I have tried tulips before "
    "and they did not like it at all, they came up thin and pale and never flowered properly.",
    "The weather has been grey all week and the train was late again every single morning, so I have been reading "
    "on the platform: a long novel about sailors crossing the Atlantic in winter, with storms, frozen rigging, a "
    "captain who keeps a diary and a cook who tells stories about his village by the sea.",
    "We might paint the kitchen a pale colour next spring, perhaps a soft green or a warm off-white, and change the "
    "handles on the cupboards too. The neighbour's dog barks every morning at seven, which at least means nobody "
    "in the house ever oversleeps, even on the weekends when we would really like to.",
]
RECALL = {"top_k": 3, "budget_fraction": 0.3}


def launch_app(embedded, path: Path, **sections):
    from streamrag_app import launch

    resources = build_resources(
        embedded, path, generation={"temperature": 0, "max_new_tokens": 24}, recall=RECALL, **sections
    )
    port = _free_port()
    demo = launch(host="127.0.0.1", port=port, block=False, resources=resources)
    return demo, f"http://127.0.0.1:{port}/", resources


@pytest.fixture(scope="module")
def app(embedded, tmp_path_factory):
    path = tmp_path_factory.mktemp("app")
    demo, url, resources = launch_app(embedded, path)
    yield url, resources, path
    demo.close()
    resources.close()


def client(url: str):
    return gradio_client.Client(url, verbose=False)


def chat(c, message: str):
    """Send one message; (reply, panel data, every streamed update of the reply)."""
    job = c.submit(message, api_name="/chat")
    updates = []
    while not job.done():
        time.sleep(0.02)
    outputs = job.outputs()
    for _textbox, history, _html, _panel, _sessions in outputs:
        if history and history[-1]["role"] == "assistant":
            updates.append(gradio_text(history[-1]["content"]))
    _textbox, history, _html, panel, _sessions = job.result()
    return gradio_text(history[-1]["content"]), panel, updates, history


def test_a_message_streams_back_in_several_partial_updates(app):
    url, _, _ = app
    reply, panel, updates, _ = chat(client(url), "Tell me about the moon in a few sentences.")
    partial = [u for u in dict.fromkeys(updates) if u and u != reply]
    assert reply.strip()
    assert len(partial) >= 2, updates
    assert all(reply.startswith(u) for u in partial)  # each update extends the one before
    assert panel["tokens_per_second"] > 0 and panel["generated_tokens"] > 0


def test_the_memory_panel_shows_evictions_and_recalls_an_early_fact(app):
    url, _, _ = app
    c = client(url)
    _, panel, _, _ = chat(c, FACT)
    assert panel["cache"]["evicted_tokens"] == 0 and panel["cache"]["sink_tokens"] == 4
    for filler in FILLER:
        _, panel, _, _ = chat(c, filler)
    cache = panel["cache"]
    assert cache["evicted_tokens"] > 0 and cache["evictions"] > 0 and panel["archived_chunks"] > 0
    assert cache["window_fill"] <= cache["window_tokens"]
    _, panel, _, _ = chat(c, QUESTION)
    recalled = [m for m in panel["recalled"] if "Trondheim" in m["text"]]
    assert recalled, panel["recalled"]
    assert recalled[0]["turn"] == 1 and recalled[0]["role"] == "user" and recalled[0]["score"] > 0
    # The archive tab finds it too, with its turn and role.
    rows = c.predict("Margarethe Trondheim", 5, api_name="/search")
    data = rows["data"] if isinstance(rows, dict) else rows
    assert any("Trondheim" in row[4] and row[1] == 1 and row[2] == "user" for row in data)


def test_two_concurrent_clients_never_see_each_others_messages_or_memories(app):
    url, _, _ = app
    secrets = {"alice": "My secret project is codenamed Bluefinch.", "bob": "I collect antique maps of Portugal."}
    seen: dict[str, list] = {}
    errors = []

    def converse(name: str) -> None:
        try:
            c = client(url)
            histories, panels = [], []
            for message in [secrets[name], *FILLER[:2], "What is my secret project codenamed? Bluefinch?"]:
                _, panel, _, history = chat(c, message)
                histories.append(history)
                panels.append(panel)
            seen[name] = [histories, panels]
        except Exception as exc:  # surfaced in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=converse, args=(name,)) for name in secrets]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert not errors, errors
    for name, other in (("alice", "bob"), ("bob", "alice")):
        histories, panels = seen[name]
        words = "Bluefinch" if other == "alice" else "Portugal"
        session_ids = {p["session_id"] for p in panels}
        assert len(session_ids) == 1
        for history in histories[:-1]:  # bob's last question names Bluefinch itself
            assert not any(words in gradio_text(m["content"]) for m in history if m["role"] == "user")
        for panel in panels:
            assert all(words not in m["text"] for m in panel["recalled"])
    assert {p["session_id"] for p in seen["alice"][1]}.isdisjoint({p["session_id"] for p in seen["bob"][1]})
    bob_recalled = seen["bob"][1][-1]["recalled"]
    assert all("Bluefinch" not in m["text"] for m in bob_recalled)


def test_undo_regenerate_and_sessions_that_survive_a_restart(app, embedded):
    url, resources, path = app
    c = client(url)
    chat(c, "My favourite tea is a smoky lapsang souchong.")
    first, _, _, _ = chat(c, "Name one mountain.")
    _, history, _, panel, _ = c.predict(api_name="/regenerate")
    assert gradio_text(history[-1]["content"]) == first  # greedy: the same answer, not a second copy
    assert [m["role"] for m in history] == ["user", "assistant", "user", "assistant"]
    textbox, history, _, panel, _ = c.predict(api_name="/undo")
    assert textbox == "Name one mountain." and len(history) == 2
    session_id = panel["session_id"]
    assert [m.role for m in resources.transcript.messages(session_id)][-2:] == ["user", "assistant"]

    # A second app on the same data directory (a restart) lists the session and resumes it.
    demo, url2, restarted = launch_app(embedded, path)
    try:
        c2 = client(url2)
        _, _, _, _, sessions = c2.predict(api_name="/new_session")
        choices = sessions.get("choices", []) if isinstance(sessions, dict) else []
        _, history, _, panel, _ = c2.predict(session_id, api_name="/switch_session")
        assert gradio_text(history[0]["content"]) == "My favourite tea is a smoky lapsang souchong."
        assert panel["session_id"] == session_id and panel["cache"]["cache_tokens"] > 0
        reply, panel, _, history = chat(c2, "Thanks!")
        assert panel["session_id"] == session_id and len(history) == 4
        assert not choices or any(session_id in str(choice) for choice in choices)
    finally:
        demo.close()
        restarted.close()


def test_forget_one_memory_or_the_whole_session_from_the_archive_tab(app):
    url, resources, path = app
    c = client(url)
    chat(c, "My bank PIN hint is 'the blue door'.")
    chat(c, "Note for later: the pool locker is 4711-PELICAN.")  # words no other test's session uses
    for filler in FILLER:
        _, panel, _, _ = chat(c, filler)
    session_id = panel["session_id"]
    rows = c.predict("bank PIN hint blue door", 10, api_name="/search")
    data = rows["data"] if isinstance(rows, dict) else rows
    chunk = next(row[0] for row in data if "blue door" in row[4])
    status, rows, history, _html, _panel = c.predict(chunk, "bank PIN hint blue door", 10, api_name="/forget")
    assert status.startswith("Forgot the message")
    assert all("blue door" not in m.text for m in resources.archive.list(session_id))
    said = [m for m in resources.transcript.messages(session_id, include_superseded=True) if m.role == "user"]
    assert not any("PIN hint" in m.content for m in said)
    # The screen agrees with the stores: the forgotten message left the chat view too.
    assert not any("PIN hint" in gradio_text(m["content"]) for m in history if m["role"] == "user")
    # Forgetting the whole session (the confirmation step's endpoint) leaves no byte of it under the data dir.
    words = "4711-PELICAN"
    assert files_holding(path, words)
    c.predict(api_name="/forget_session")
    assert resources.archive.count(session_id) == 0 and resources.transcript.get_session(session_id) is None
    assert resources.archive.wait_compacted(timeout=300)  # the archive's files are rewritten in the background
    assert files_holding(path, words) == []


def test_an_abandoned_reply_is_stopped_and_releases_the_shared_model(app):
    from streamrag_app.handlers import stream_in_worker

    _, resources, _ = app
    assistant = resources.session(None, settings={"generation.max_new_tokens": 400, "generation.ignore_eos": True})
    replies = []

    def start():
        replies.append(assistant.stream("Tell me a long story about dragons."))
        return replies[-1]

    reader = stream_in_worker(assistant, start)
    shown = next(reader)
    reader.close()  # the tab went away, or the event was cancelled
    deadline = time.monotonic() + 60
    while (resources.lock.locked() or assistant.transcript.count(assistant.session_id) < 2) and (
        time.monotonic() < deadline
    ):
        time.sleep(0.05)
    assert not resources.lock.locked()
    reply = assistant.transcript.messages(assistant.session_id)[-1]
    assert reply.role == "assistant" and reply.content.startswith(shown)
    assert replies[0].stop_reason == "interrupted" and replies[0].stats.generated_tokens < 400
    assert reply.message_id == replies[0].message_id and reply.content == replies[0].text


CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


def send(box, message: str, timeout: float = 180) -> None:
    """Type and submit; Gradio ignores Enter while the tab's last event is still finishing, so retry until taken."""
    box.fill(message)
    deadline = time.monotonic() + timeout
    while box.input_value() and time.monotonic() < deadline:
        box.press("Enter")
        time.sleep(1)  # the textbox is cleared by the handler's first update
    assert not box.input_value(), "the message was never taken"


def test_the_page_streams_a_reply_in_headless_chromium_and_saves_a_screenshot(app):
    if not os.path.exists(CHROMIUM):
        pytest.skip("chromium is not installed (make test installs it with apt-get as root; no apt or no root here)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (the app extra)")
    url, resources, _ = app
    args = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
    ]
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=args, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(url, wait_until="domcontentloaded")
            box = page.get_by_placeholder("Say something")
            box.wait_for(timeout=60_000)
            for turn, message in enumerate([FACT, *FILLER, QUESTION], start=1):
                send(box, message)
                # The reply streams into the chat; the panel is rewritten when the reply is done.
                page.wait_for_function(
                    "t => document.querySelector('#memory-panel').innerText.includes('after turn ' + t)",
                    arg=turn,
                    timeout=180_000,  # generous: CI machines share two cores
                )
            page.wait_for_function(
                "() => document.querySelector('#memory-panel').innerText.includes('Trondheim')", timeout=60_000
            )
            text = page.locator("#chat").inner_text()
            assert "Margarethe" in text
            RESULTS.mkdir(exist_ok=True)
            page.screenshot(path=str(RESULTS / "app.png"), full_page=True)
            session_id = _last_session(resources)  # the session this page just chatted in
            trash = page.locator("#chat").get_by_role("button", name="Clear")
            # The trash icon asks first. Cancel: the conversation comes back on screen and stays stored.
            page.once("dialog", lambda dialog: dialog.dismiss())
            trash.click()
            page.wait_for_function("() => document.querySelector('#chat').innerText.includes('Margarethe')")
            assert resources.transcript.get_session(session_id) is not None
            # Confirm: the session is forgotten for real, and the screen is empty.
            page.once("dialog", lambda dialog: dialog.accept())
            trash.click()
            deadline = time.monotonic() + 60
            while resources.transcript.get_session(session_id) is not None and time.monotonic() < deadline:
                time.sleep(0.2)
            assert resources.transcript.get_session(session_id) is None
            assert "Margarethe" not in page.locator("#chat").inner_text()
        finally:
            browser.close()
    assert (RESULTS / "app.png").stat().st_size > 10_000


def _last_session(resources) -> str:
    """The most recently updated stored session (the one the browser just used)."""
    return resources.transcript.sessions(limit=1)[0].session_id


def test_serve_binds_locally_without_a_share_link_by_default(monkeypatch, tmp_path):
    import streamrag_app
    from typer.testing import CliRunner

    from streamrag.cli import app as cli
    from streamrag.session import Resources

    calls = {}
    monkeypatch.setattr(Resources, "load", classmethod(lambda cls, config: calls.setdefault("config", config)))
    monkeypatch.setattr(streamrag_app, "launch", lambda config, **kwargs: calls.update(kwargs))
    config = tmp_path / "app.yaml"
    config.write_text(f"data_dir: {tmp_path}\ncache:\n  window_tokens: 508\n")
    result = CliRunner().invoke(cli, ["serve", "--config", str(config)])
    assert result.exit_code == 0, result.output
    assert (calls["host"], calls["port"], calls["share"]) == ("127.0.0.1", 7860, False)
    assert calls["config"].cache.window_tokens == 508
    assert calls["auth"] is None  # no users: one local person, every session listed
    # Another address needs users (tests/test_app_users.py has the refusal without them).
    argv = ["serve", "-c", str(config), "--host", "0.0.0.0", "--port", "8080", "--auth", "alice:pw"]
    result = CliRunner().invoke(cli, argv)
    assert result.exit_code == 0, result.output
    assert (calls["host"], calls["port"], calls["auth"]) == ("0.0.0.0", 8080, [("alice", "pw")])
