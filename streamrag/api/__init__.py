"""streamrag over HTTP: an OpenAI-compatible API (`streamrag api`). See :mod:`streamrag.api.app`."""

from __future__ import annotations

import logging

from streamrag.api.app import SESSION_HEADER, api_key_of, check_exposure, create_app, is_loopback, served_model_name
from streamrag.session import Resources

logger = logging.getLogger(__name__)

__all__ = ["SESSION_HEADER", "api_key_of", "check_exposure", "create_app", "is_loopback", "run", "served_model_name"]


def run(resources: Resources, host: str | None = None, port: int | None = None) -> None:
    """Serve the API with uvicorn until interrupted (``host``/``port`` default to ``server.*`` of the config).

    Binding beyond the loopback address without an API key is refused: every
    session's transcript and memories would be readable by anyone who can reach the port.
    """
    import uvicorn

    settings = resources.config.server.model_copy(
        update={"host": host or resources.config.server.host, "port": port or resources.config.server.port}
    )
    host, port = settings.host, settings.port
    check_exposure(settings)
    logger.info("streamrag API on http://%s:%d/v1 (model %s)", host, port, served_model_name(resources.config))
    uvicorn.run(create_app(resources), host=host, port=port, log_level="info", timeout_graceful_shutdown=10)
