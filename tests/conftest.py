"""Shared fixtures: the embedded model is loaded once per test session.

Everything a test writes goes under pytest's temporary directories: the
GGUF-to-safetensors conversion of the embedded model included.
"""

from __future__ import annotations

import contextlib
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")

import pytest  # noqa: E402
import torch  # noqa: E402

from streamrag.config import ModelSettings, StreamRAGConfig  # noqa: E402
from streamrag.engine import StreamingLM  # noqa: E402
from streamrag.models import load_model  # noqa: E402

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> os.PathLike:
    """One data directory for the whole session, so the embedded model is converted once."""
    return tmp_path_factory.mktemp("streamrag-data")


@pytest.fixture(scope="session")
def embedded(data_dir):
    """(model, tokenizer) of the embedded SmolLM2-135M-Instruct in fp32 on CPU, not quantized.

    The cache's reference tests compare against transformers' dense cache to
    1e-3; the quantized default computes in bf16, whose rounding differs
    between a one-token step and a long prefill by far more than that.
    ``embedded_int4`` is the default configuration, for the tests of quantisation.
    """
    model, tokenizer, _ = load_model(ModelSettings(device="cpu", dtype="float32", quantize="none"), data_dir)
    return model, tokenizer


@pytest.fixture(scope="session")
def embedded_int4(data_dir):
    """(model, tokenizer) of the embedded model as a user gets it on CPU: ``quantize: auto`` (int4 weights)."""
    model, tokenizer, _ = load_model(ModelSettings(device="cpu"), data_dir)
    return model, tokenizer


@pytest.fixture
def make_lm(embedded, data_dir):
    """Build a StreamingLM around the shared model with the given cache and generation settings."""
    model, tokenizer = embedded

    def build(sink_tokens=4, window_tokens=252, evict_chunk=16, prefill_chunk=512, **generation) -> StreamingLM:
        generation = {"temperature": 0.0, "max_new_tokens": 32, **generation}
        config = StreamRAGConfig(
            data_dir=data_dir,
            cache={
                "sink_tokens": sink_tokens,
                "window_tokens": window_tokens,
                "evict_chunk": evict_chunk,
                "prefill_chunk": prefill_chunk,
            },
            generation=generation,
        )
        return StreamingLM(model, tokenizer, config)

    return build


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ChromaServer:
    """A real Chroma server (`chroma run`, shipped with chromadb) on 127.0.0.1 that a test may stop and restart."""

    def __init__(self, path, port: int | None = None):
        from pathlib import Path

        self.path = Path(path)
        self.port = port or _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = None

    def start(self, timeout: float = 60) -> ChromaServer:
        import shutil
        import subprocess
        import sys
        import time
        import urllib.request
        from pathlib import Path

        chroma = shutil.which("chroma") or str(Path(sys.executable).parent / "chroma")
        self.path.mkdir(parents=True, exist_ok=True)
        log = open(self.path / "server.log", "ab")  # noqa: SIM115 - the server process owns it
        self.process = subprocess.Popen(
            [chroma, "run", "--path", str(self.path / "db"), "--host", "127.0.0.1", "--port", str(self.port)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while True:
            try:
                urllib.request.urlopen(f"{self.url}/api/v2/heartbeat", timeout=1).read()
                return self
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    log_text = (self.path / "server.log").read_text()
                    raise RuntimeError(f"chroma server did not start: {log_text}") from None
                time.sleep(0.2)

    def stop(self) -> None:
        import subprocess

        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None


@pytest.fixture(scope="session")
def chroma_server(tmp_path_factory):
    """The URL of a Chroma server shared by the tests of this session."""
    server = ChromaServer(tmp_path_factory.mktemp("chroma-server")).start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
def own_chroma_server(tmp_path):
    """A Chroma server of this test's own, to kill and restart."""
    server = ChromaServer(tmp_path / "chroma-server")
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture(params=["embedded", "server"])
def archive_settings(request, tmp_path):
    """Archive settings for an embedded Chroma under tmp_path, and for a real Chroma server."""
    from streamrag.config import ArchiveSettings

    if request.param == "server":
        url = request.getfixturevalue("chroma_server")
        # One collection per test keeps server-side state from leaking between tests.
        return ArchiveSettings(chroma_url=url, collection=f"t{abs(hash(request.node.nodeid)) % 10**9}")
    return ArchiveSettings()


def build_resources(embedded, path, **sections):
    """Resources around the shared model, with archive and transcript under ``path`` (a pytest temp dir).

    Defaults: a 256-token cache (evictions within a few turns) and short greedy replies.
    """
    from streamrag.session import Resources

    model, tokenizer = embedded
    settings = {
        "cache": {"sink_tokens": 4, "window_tokens": 252, "evict_chunk": 32},
        "generation": {"temperature": 0, "max_new_tokens": 16},
        "archive": {"chunk_chars": 400, "chunk_overlap_chars": 80},
        **sections,
    }
    config = StreamRAGConfig(data_dir=path, **settings)
    return Resources.around(config, model, tokenizer)  # SQLite under path, or a transcript_url


@pytest.fixture
def make_resources(embedded_int4, tmp_path):
    """``make_resources(**sections)``: fresh Resources under tmp_path around the shared model, as users get it
    (int4 on CPU): sessions, archive and servers are tested on the default configuration."""
    made = []

    def build(**sections):
        resources = build_resources(embedded_int4, tmp_path / f"r{len(made)}", **sections)
        made.append(resources)
        return resources

    yield build
    for resources in made:
        resources.close()


# A fact to plant, then small talk that pushes it out of a 124-token window in four or five turns.
PASSPORT_FACT = "Before I forget: my passport number is X7741, and it expires in May."
SMALL_TALK = [
    "We are thinking about painting the hallway a pale green colour this spring.",
    "Yesterday I repotted the lemon tree on the balcony; it needed a bigger pot.",
    "The train to Coimbra was forty minutes late again this morning, as always.",
    "My neighbour's dog barks every morning at exactly seven o'clock.",
    "I am reading a novel about sailors crossing the Atlantic in winter.",
]

FILLER = [
    ("Let's talk about gardening. What should I plant in a shady corner?", "Ferns and hostas do well in shade."),
    ("The weather has been grey all week and the train was late again.", "A short walk at lunch can help."),
    ("I am reading a novel about sailors crossing the Atlantic in winter.", "Sea stories have great atmosphere."),
    ("We might paint the kitchen a pale colour next spring.", "Pale colours make small kitchens feel bigger."),
    ("My neighbour's dog barks every morning at exactly seven o'clock.", "Maybe he greets someone who leaves then."),
]


def filler_history(windows: float, capacity: int, chars_per_token: float = 4.0) -> list[tuple[str, str]]:
    """Filler (role, content) pairs adding up to about ``windows`` cache capacities of tokens."""
    messages: list[tuple[str, str]] = []
    size = 0
    i = 0
    while size < windows * capacity * chars_per_token:
        user, assistant = FILLER[i % len(FILLER)]
        messages += [("user", f"{user} (note {i})"), ("assistant", assistant)]
        size += len(user) + len(assistant) + 40
        i += 1
    return messages


@contextlib.contextmanager
def torch_threads(count: int):
    """Run a block on ``count`` torch CPU threads, restoring the previous number after."""
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture
def one_thread():
    """One torch thread for a test whose matrices are tiny (faster, and steadier beside another process)."""
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def one_thread_module():
    """:func:`one_thread` for a whole module: ``pytestmark = pytest.mark.usefixtures("one_thread_module")``."""
    with torch_threads(1):
        yield


def files_holding(root, text: str) -> list[str]:
    """Every file under ``root`` whose raw bytes contain ``text`` (converted models skipped: not user data)."""
    from pathlib import Path

    root = Path(root)
    needle = text.encode()
    return sorted(
        str(path.relative_to(root))
        for path in root.rglob("*")
        if path.is_file() and "models" not in path.relative_to(root).parts and needle in path.read_bytes()
    )


# -- PostgreSQL -----------------------------------------------------------------------------------------------
class PostgresUnavailable(RuntimeError):
    """No PostgreSQL server can be started here; the message says why (tests skip with it)."""


class PostgresServer:
    """A throwaway PostgreSQL cluster (initdb + pg_ctl) on 127.0.0.1, trust auth, that a test may restart.

    initdb refuses to run as root, so as root (CI) the cluster belongs to the
    ``postgres`` OS user, in a directory of its own under the system temp dir
    (pytest's temp dirs are private to root). The unix socket stays in that
    directory too: the system's /run/postgresql may not exist.
    """

    def __init__(self, port: int | None = None):
        self.port = port or _free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        self.root = None
        self.bindir = None

    @staticmethod
    def find_bindir():
        """The folder of initdb and pg_ctl: on PATH, else Debian's /usr/lib/postgresql/<version>/bin."""
        import glob
        import shutil
        from pathlib import Path

        if found := shutil.which("initdb"):
            return Path(found).resolve().parent
        versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
        return Path(versions[-1]).parent if versions else None

    def _as_owner(self, *command) -> list[str]:
        return ["runuser", "-u", "postgres", "--", *map(str, command)] if os.geteuid() == 0 else list(map(str, command))

    def _run(self, *command, timeout: float = 120) -> None:
        import subprocess
        from pathlib import Path

        done = subprocess.run(self._as_owner(*command), capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            log = self.root / "server.log"
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise PostgresUnavailable(
                f"{Path(str(command[0])).name} failed ({done.returncode}): {done.stderr.strip() or done.stdout.strip()}"
                f"\n{tail}".strip()
            )

    def start(self, timeout: float = 60) -> PostgresServer:
        import shutil
        import tempfile
        from pathlib import Path

        if self.root is None:
            self.bindir = self.find_bindir()
            if self.bindir is None:
                raise PostgresUnavailable("PostgreSQL is not installed: apt-get install postgresql")
            if os.geteuid() == 0:
                import pwd

                try:
                    owner = pwd.getpwnam("postgres")
                except KeyError:
                    raise PostgresUnavailable(
                        "running as root, and initdb refuses root: no `postgres` OS user to run it as "
                        "(apt-get install postgresql creates one)"
                    ) from None
                if shutil.which("runuser") is None:
                    raise PostgresUnavailable("running as root without runuser to start PostgreSQL as `postgres`")
            self.root = Path(tempfile.mkdtemp(prefix="streamrag-pg-"))
            if os.geteuid() == 0:
                os.chown(self.root, owner.pw_uid, owner.pw_gid)
            self._run(
                self.bindir / "initdb",
                "-D",
                self.root / "data",
                "-U",
                "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--no-locale",
                "--no-sync",
            )
        # fsync off: a test cluster need not survive a power cut, and commits are much faster on a busy disk.
        options = (
            f"-c listen_addresses=127.0.0.1 -c port={self.port} -c unix_socket_directories={self.root} "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        )
        self._run(
            self.bindir / "pg_ctl",
            "start",
            "-D",
            self.root / "data",
            "-l",
            self.root / "server.log",
            "-w",
            "-t",
            int(timeout),
            "-o",
            options,
            timeout=timeout + 30,
        )
        return self

    def restart(self, timeout: float = 60) -> None:
        """Stop (fast: every connection is cut) and start again on the same port and data."""
        self.stop(remove=False)
        self.start(timeout)

    def stop(self, remove: bool = True) -> None:
        """Stop the server (fast: every connection is cut); unless told to keep it, delete its cluster too."""
        import shutil

        if self.root is None:
            return
        try:
            self._run(self.bindir / "pg_ctl", "stop", "-D", self.root / "data", "-m", "fast", "-w")
        except PostgresUnavailable:
            pass  # never started, or already stopped
        if remove:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None

    def create_database(self) -> str:
        """A new, empty database; returns its URL."""
        import uuid

        import psycopg

        name = f"test_{uuid.uuid4().hex[:16]}"
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url.rsplit("/", 1)[0] + f"/{name}"

    def drop_database(self, url: str) -> None:
        import psycopg

        name = url.rsplit("/", 1)[1]
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _start_postgres() -> PostgresServer:
    """A started server, or the test skips saying why (PostgreSQL missing, or it would not start)."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        pytest.skip('psycopg is not installed: pip install "streamrag[postgres]"')
    import subprocess

    server = PostgresServer()
    try:
        return server.start()
    except PostgresUnavailable as exc:
        server.stop()
        pytest.skip(str(exc))
    except (OSError, subprocess.TimeoutExpired) as exc:
        server.stop()
        pytest.skip(f"cannot start PostgreSQL: {exc}")


@pytest.fixture(scope="session")
def postgres_cluster():
    """The PostgreSQL server (a :class:`PostgresServer`) shared by the tests of this session."""
    server = _start_postgres()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def postgres_server(postgres_cluster) -> str:
    """The URL of the shared PostgreSQL server's ``postgres`` database (trust auth: no password needed)."""
    return postgres_cluster.url


@pytest.fixture
def postgres_url(postgres_cluster):
    """The URL of a fresh, empty database of this test's own on the shared server; dropped after the test."""
    url = postgres_cluster.create_database()
    try:
        yield url
    finally:
        postgres_cluster.drop_database(url)


@pytest.fixture
def own_postgres_server():
    """A PostgreSQL server of this test's own, to restart (see :meth:`PostgresServer.restart`)."""
    server = _start_postgres()
    try:
        yield server
    finally:
        server.stop()
