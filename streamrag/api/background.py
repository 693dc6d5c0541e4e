"""The API served from a thread of this process: for notebooks, benchmarks and tests.

``with BackgroundServer(resources) as server: OpenAI(base_url=server.base_url)``:
uvicorn runs in a daemon thread on a free port of 127.0.0.1 (or the one given),
and stops when the block ends.
"""

from __future__ import annotations

import socket
import threading
import time

from streamrag.config import ServerSettings
from streamrag.session import Resources


class BackgroundServer:
    """``streamrag api`` in a thread; ``base_url`` is what an OpenAI client takes (``.../v1``)."""

    def __init__(
        self, resources: Resources, settings: ServerSettings | None = None, host: str = "127.0.0.1", port: int = 0
    ):
        from streamrag.api.app import create_app

        self.resources = resources
        self.app = create_app(resources, settings)
        self.host = host
        self.port = port or _free_port(host)
        self._server = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    def start(self, timeout: float = 30.0) -> BackgroundServer:
        import uvicorn

        config = uvicorn.Config(self.app, host=self.host, port=self.port, log_level="warning", lifespan="off")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="streamrag-api", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the API server did not start on {self.url}")
            time.sleep(0.02)
        return self

    def stop(self, timeout: float = 30.0) -> None:
        if self._server is None:
            return
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)
        self._server = None

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def _free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]
