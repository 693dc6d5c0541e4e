"""The command line: generation streams, bad settings exit cleanly, archive commands see the archive."""

from __future__ import annotations

import json

import pytest
import yaml
from typer.testing import CliRunner

from streamrag.archive import Archive
from streamrag.chunking import Chunk, chunk_id
from streamrag.cli import app
from streamrag.config import StreamRAGConfig
from streamrag.transcript import Transcript

runner = CliRunner()


@pytest.fixture
def config_file(tmp_path, data_dir, embedded):
    """A config whose data dir reuses the session's converted model but keeps its own archive."""
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "models").symlink_to(data_dir / "models", target_is_directory=True)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"data_dir": str(tmp_path / "data"), "model": {"device": "cpu"}}))
    return path


def test_generate_streams_a_reply_with_constant_cache(config_file):
    result = runner.invoke(
        app,
        [
            "generate",
            "-c",
            str(config_file),
            "-p",
            "Count to ten:",
            "-n",
            "200",
            "--raw",
            "--ignore-eos",
            "--window-tokens",
            "124",
            "--temperature",
            "0",
            "--quantize",
            "int8",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "200 tokens" in result.output and "cache " in result.output
    cache = result.output.split("cache ")[1].split(",")[0]
    used, capacity = map(int, cache.split("/"))
    assert capacity == 128 and used <= capacity


def test_invalid_settings_exit_with_the_field_name(config_file):
    result = runner.invoke(app, ["generate", "-c", str(config_file), "-p", "x", "--window-tokens", "2"])
    assert result.exit_code == 2
    assert "cache.window_tokens" in result.output
    result = runner.invoke(app, ["generate", "-c", str(config_file), "-p", "x", "--quantize", "int3"])
    assert result.exit_code == 2 and "model.quantize" in result.output


def test_empty_prompt_is_refused(config_file):
    result = runner.invoke(app, ["generate", "-c", str(config_file), "-p", "   "])
    assert result.exit_code == 2 and "empty" in result.output


def test_archive_commands_search_list_export_and_forget(config_file):
    config = StreamRAGConfig.load(config_file)
    archive = Archive(config.archive, config.data_dir)
    transcript = Transcript(config.transcript_path)
    transcript.create_session("s1", title="demo")
    text = "The spare key is under the third flowerpot."
    message = transcript.append("s1", "user", text, 1)
    archive.upsert(
        [
            Chunk(
                chunk_id("s1", message.message_id, 0),
                text,
                "s1",
                message.message_id,
                "user",
                1,
                0,
                len(text),
                True,
                message.created_at,
            )
        ]
    )

    listed = runner.invoke(app, ["archive", "sessions", "-c", str(config_file)])
    assert listed.exit_code == 0 and "s1" in listed.output

    found = runner.invoke(app, ["archive", "search", "flowerpot key", "-s", "s1", "-c", str(config_file)])
    assert found.exit_code == 0 and "flowerpot" in found.output

    out = config_file.parent / "export.json"
    exported = runner.invoke(app, ["archive", "export", "-s", "s1", "-o", str(out), "-c", str(config_file)])
    assert exported.exit_code == 0
    data = json.loads(out.read_text())
    assert data["messages"][0]["content"] == text and data["memories"][0]["text"] == text

    missing = runner.invoke(app, ["archive", "list", "-s", "nope", "-c", str(config_file)])
    assert missing.exit_code == 1 and "no session" in missing.output

    gone = runner.invoke(app, ["archive", "forget", "-s", "s1", "--yes", "-c", str(config_file)])
    assert gone.exit_code == 0 and "forgot the session: 1 messages, 1 memories" in gone.output
    assert archive.count("s1") == 0 and transcript.get_session("s1") is None


def test_api_refuses_to_serve_beyond_localhost_without_a_key(monkeypatch, tmp_path):
    monkeypatch.delenv("STREAMRAG_API_KEY", raising=False)
    monkeypatch.setenv("STREAMRAG_HOME", str(tmp_path))
    result = runner.invoke(app, ["api", "--host", "0.0.0.0", "--port", "8123"])
    assert result.exit_code == 1
    assert "without an API key" in result.output
    assert not any(tmp_path.iterdir())  # refused before loading or creating anything
