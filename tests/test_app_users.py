"""The Gradio app shared with several people: logins, sessions that belong to a user, a bounded queue.

One in-process app with two users (alice, bob; short greedy replies) serves the
user tests; the queue test launches its own app with ``app.max_queue: 1``. Each
user plants a secret in their first message, which becomes their session's
title: the other user must never see it, in the session list, in ``/config``
or in any output.
"""

from __future__ import annotations

import os
import time

import pytest

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
gradio_client = pytest.importorskip("gradio_client", reason="the app extra is not installed")
httpx = pytest.importorskip("httpx")

from conftest import _free_port, build_resources  # noqa: E402

USERS = [("alice", "alice-pw-1"), ("bob", "bob-pw-2")]
SECRETS = {
    "alice": "Note to self: my locker code is QUARTZ-ALICE-5531.",
    "bob": "Reminder: the vault word is HERON-BOB-8804.",
    "carol": "Private: my new PIN is OSPREY-CAROL-2207.",
}
MARKS = {"alice": "QUARTZ-ALICE-5531", "bob": "HERON-BOB-8804", "carol": "OSPREY-CAROL-2207"}  # in each title


def launch_app(embedded, path, auth=None, **sections):
    from streamrag_app import launch

    sections.setdefault("generation", {"temperature": 0, "max_new_tokens": 12})
    resources = build_resources(embedded, path, **sections)
    port = _free_port()
    demo = launch(host="127.0.0.1", port=port, block=False, resources=resources, auth=auth)
    return demo, f"http://127.0.0.1:{port}/", resources


@pytest.fixture(scope="module")
def app(embedded, tmp_path_factory):
    """The app with alice and bob; carol's session was stored before it was built (it must not be baked in)."""
    path = tmp_path_factory.mktemp("app-users")
    stored = build_resources(embedded, path, generation={"temperature": 0, "max_new_tokens": 8})
    stored.session(None, owner="carol").chat(SECRETS["carol"])
    stored.close()
    demo, url, resources = launch_app(embedded, path, auth=USERS)
    yield url, resources
    demo.close()
    resources.close()


def client(url: str, user: str | None):
    auth = dict(USERS)[user] if user else None
    return gradio_client.Client(url, auth=(user, auth) if user else None, verbose=False)


def run(c, *args, api_name: str, seen: list | None = None):
    """Call an endpoint to the end; every streamed output (as text) goes to ``seen``."""
    job = c.submit(*args, api_name=api_name)
    try:
        result = job.result(timeout=180)
    finally:
        if seen is not None:
            seen.extend(repr(output) for output in job.outputs())
    if seen is not None:
        seen.append(repr(result))
    return result


def session_ids(sessions) -> list[str]:
    """The session ids in a Dropdown update's choices ([label, value] pairs)."""
    choices = sessions.get("choices", []) if isinstance(sessions, dict) else []
    return [choice[1] if isinstance(choice, list | tuple) else choice for choice in choices]


def _text(content) -> str:
    """Message content as text (gradio_client gives a string or a list of text parts)."""
    if isinstance(content, list):
        return "".join(part.get("text", "") if isinstance(part, dict) else str(part) for part in content)
    return content if isinstance(content, str) else str(content)


def page_config(url: str, user: str | None) -> httpx.Response:
    """``GET /config`` as a browser would fetch it: logged in as ``user`` (a cookie), or not at all."""
    with httpx.Client(base_url=url, timeout=30) as http:
        if user:
            login = http.post("login", data={"username": user, "password": dict(USERS)[user]})
            assert login.status_code == 200, login.text
        return http.get("config")


@pytest.fixture(scope="module")
def chatted(app):
    """alice and bob each said their secret (their session's title) and one more line; (clients, ids, outputs)."""
    url, resources = app
    clients, ids, seen = {}, {}, {}
    for user in ("alice", "bob"):
        clients[user] = client(url, user)
        seen[user] = []
        run(clients[user], SECRETS[user], api_name="/chat", seen=seen[user])
        _, _, _, panel, sessions = run(clients[user], "Thanks, that is all.", api_name="/chat", seen=seen[user])
        ids[user] = panel["session_id"]
        assert MARKS[user] in resources.transcript.get_session(ids[user]).title
        assert ids[user] in session_ids(sessions)
    return clients, ids, seen


def test_each_user_lists_only_their_own_sessions_and_never_sees_another_title(app, chatted):
    url, resources = app
    clients, ids, seen = chatted
    assert resources.transcript.get_session(ids["alice"]).meta["owner"] == "alice"
    (carol,) = [info.session_id for info in resources.sessions_of("carol")]
    for user, other in (("alice", "bob"), ("bob", "alice")):
        c = clients[user]
        _, _, _, _, sessions = run(c, api_name="/new_session", seen=seen[user])
        assert session_ids(sessions) == [ids[user]]
        assert MARKS[user] in repr(sessions)  # the own title is listed
        run(c, "", 5, api_name="/search", seen=seen[user])  # a fresh tab has no session: nothing found
        text = "\n".join(seen[user])
        assert MARKS[other] not in text and ids[other] not in text
        assert MARKS["carol"] not in text and carol not in text
    # The page config every browser loads names no session, logged in or not (carol's existed at build time).
    for user in ("alice", "bob"):
        response = page_config(url, user)
        assert response.status_code == 200 and '"components"' in response.text
        for name in ("alice", "bob", "carol"):
            assert MARKS[name] not in response.text
        assert ids["alice"] not in response.text and ids["bob"] not in response.text and carol not in response.text


def test_bob_cannot_switch_into_chat_in_or_delete_alices_session(app, chatted):
    url, resources = app
    clients, ids, _ = chatted
    alice_before = [(m.role, m.content) for m in resources.transcript.messages(ids["alice"])]
    bob = client(url, "bob")
    run(bob, ids["bob"], api_name="/switch_session")
    with pytest.raises(Exception) as refused:
        run(bob, ids["alice"], api_name="/switch_session")
    assert "belongs to another user" in str(refused.value)
    assert MARKS["alice"] not in str(refused.value)
    # Nothing changed: bob's tab is still in his own session, and every action stays there.
    _, history, _, panel, _ = run(bob, "Is anyone else here?", api_name="/chat")
    assert panel["session_id"] == ids["bob"]
    assert MARKS["alice"] not in repr(history)
    rows = run(bob, "locker code QUARTZ-ALICE-5531", 10, api_name="/search")
    assert rows is not None and "QUARTZ" not in repr([row[4] for row in rows.get("data", rows)])
    run(bob, api_name="/forget_session")  # forgets bob's own session only
    assert resources.transcript.get_session(ids["bob"]) is None
    assert [(m.role, m.content) for m in resources.transcript.messages(ids["alice"])] == alice_before
    assert resources.transcript.get_session(ids["alice"]).meta["owner"] == "alice"
    _, history, _, panel, _ = run(clients["alice"], ids["alice"], api_name="/switch_session")
    assert panel["session_id"] == ids["alice"] and SECRETS["alice"] in repr(history)


def test_a_client_without_a_login_is_refused(app, chatted):
    url, _ = app
    _, ids, _ = chatted
    with pytest.raises(Exception):  # noqa: B017 - gradio_client raises a ValueError subclass, version dependent
        gradio_client.Client(url, verbose=False)
    with pytest.raises(Exception):  # noqa: B017
        gradio_client.Client(url, auth=("alice", "bob-pw-2"), verbose=False)
    response = page_config(url, None)
    assert response.status_code in {401, 403}
    for name in ("alice", "bob"):
        assert MARKS[name] not in response.text and ids[name] not in response.text
    joined = httpx.post(url + "gradio_api/queue/join", json={"data": ["hi"], "fn_index": 0, "session_hash": "x"})
    assert joined.status_code in {401, 403}


def test_serve_refuses_the_network_or_a_share_link_without_users_before_loading_the_model(monkeypatch, tmp_path):
    import streamrag_app
    from typer.testing import CliRunner

    from streamrag.cli import app as cli
    from streamrag.config import ConfigError
    from streamrag.session import Resources

    def must_not_load(cls, config):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(Resources, "load", classmethod(must_not_load))
    config = tmp_path / "app.yaml"
    config.write_text(f"data_dir: {tmp_path}\n")
    for flags, where in ((["--host", "0.0.0.0"], "on 0.0.0.0"), (["--share"], "with a public share link")):
        started = time.monotonic()
        result = CliRunner().invoke(cli, ["serve", "-c", str(config), *flags])
        assert time.monotonic() - started < 5
        assert result.exit_code == 1, result.output
        output = " ".join(result.output.split())
        assert f"refusing to serve the app {where} without users" in output and "--auth" in output
    with pytest.raises(ConfigError, match="without users"):
        streamrag_app.launch(host="0.0.0.0", block=False)
    result = CliRunner().invoke(cli, ["serve", "-c", str(config), "--auth", "no-colon"])
    assert result.exit_code == 1 and "USER:PASSWORD" in result.output

    # With users it starts (model and launch stubbed here), warns, and hands Gradio every user.
    calls = {}
    monkeypatch.setattr(Resources, "load", classmethod(lambda cls, config: calls.setdefault("config", config)))
    monkeypatch.setattr(streamrag_app, "launch", lambda config, **kwargs: calls.update(kwargs))
    users = tmp_path / "users"
    users.write_text("# who may log in\ncarol: pw:with:colons\n\n")
    users.chmod(0o600)
    result = CliRunner().invoke(
        cli, ["serve", "-c", str(config), "--host", "0.0.0.0", "--auth", "alice:a1", "--auth-file", str(users)]
    )
    assert result.exit_code == 0, result.output
    assert calls["host"] == "0.0.0.0" and calls["auth"] == [("alice", "a1"), ("carol", "pw:with:colons")]
    assert "reachable from the network on 0.0.0.0" in " ".join(result.output.split())
    config.write_text(f"data_dir: {tmp_path}\napp:\n  auth_file: {users}\n")  # the same file from the config
    result = CliRunner().invoke(cli, ["serve", "-c", str(config), "--share"])
    assert result.exit_code == 0 and calls["share"] and calls["auth"] == [("carol", "pw:with:colons")]


def test_a_full_queue_refuses_at_once_while_the_running_reply_goes_on(embedded, tmp_path):
    from gradio_client.utils import QueueError, Status

    demo, url, resources = launch_app(embedded, tmp_path, app={"max_queue": 1})
    try:
        # One session whose replies run until stopped (its own settings); every other reply is 12 tokens.
        long_session = resources.session(
            None, settings={"generation.max_new_tokens": 2000, "generation.ignore_eos": True}
        )
        first, second, third = (client(url, None) for _ in range(3))
        run(first, long_session.session_id, api_name="/switch_session")
        running = first.submit("Tell me a very long story about the sea.", api_name="/chat")
        deadline = time.monotonic() + 120
        while len(running.outputs()) < 2 and time.monotonic() < deadline:  # replying: the model group is busy
            time.sleep(0.05)
        waiting = second.submit("Hello!", api_name="/chat")  # waits for the model: the queue is now full
        while waiting.status().code != Status.IN_QUEUE and time.monotonic() < deadline:
            time.sleep(0.05)
        started = time.monotonic()
        with pytest.raises(QueueError):
            third.submit("Hello too!", api_name="/chat").result(timeout=30)
        assert time.monotonic() - started < 5
        # The running reply was not disturbed: it goes on streaming, then ends cleanly when stopped.
        streamed = len(running.outputs())
        while len(running.outputs()) < streamed + 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not running.done() and len(running.outputs()) >= streamed + 3
        # Stop skips the queue (queue=False): the browser posts it straight to /run, as here; it works when full.
        stop = httpx.post(url + "gradio_api/run/stop", json={"data": [None], "session_hash": first.session_hash})
        assert stop.status_code == 200, stop.text
        _, history, _, panel, _ = running.result(timeout=120)
        assert panel["stop_reason"] == "interrupted" and panel["generated_tokens"] > 3
        stored = resources.transcript.messages(long_session.session_id)[-1]
        assert stored.role == "assistant" and stored.content == _text(history[-1]["content"])
        _, history, _, _, _ = waiting.result(timeout=120)  # the one that waited is answered too
        assert history[-1]["role"] == "assistant" and _text(history[-1]["content"])
    finally:
        demo.close()
        resources.close()
