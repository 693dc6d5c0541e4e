"""Who may use the app: the users of ``streamrag serve --auth`` / ``--auth-file`` / ``app.auth_file``.

With users, Gradio asks each browser to log in (``demo.launch(auth=...)``)
and every handler reads the login from its ``gr.Request``: a user sees,
continues and deletes only the sessions they started. Without users the app
is a single person's (every session is listed), so it is refused on any
address beyond the loopback one, and with a public share link.
"""

from __future__ import annotations

import logging
import stat
from collections.abc import Iterable
from pathlib import Path

from streamrag.api.app import is_loopback
from streamrag.config import ConfigError

logger = logging.getLogger(__name__)
Users = list[tuple[str, str]]


def _user(entry: str, where: str) -> tuple[str, str]:
    """``user:password``: split at the first colon, whitespace around each part ignored. Errors never quote it."""
    user, colon, password = entry.partition(":")
    user, password = user.strip(), password.strip()
    if not colon or not user or not password:
        raise ConfigError(f"{where}: expected USER:PASSWORD with a non-empty user and password")
    return user, password


def load_users(entries: Iterable[str] = (), auth_file: str | Path | None = None) -> Users:
    """The app's users from ``--auth USER:PASSWORD`` entries and an auth file of ``user:password`` lines.

    Blank lines and lines starting with ``#`` in the file are skipped. A user
    named twice is refused (which password would count?).
    """
    users: Users = [_user(entry, f"--auth entry {i}") for i, entry in enumerate(entries or (), start=1)]
    if auth_file is not None:
        path = Path(auth_file).expanduser()
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot read the auth file {path}: {exc.strerror or exc}") from None
        if path.stat().st_mode & (stat.S_IRGRP | stat.S_IROTH):
            logger.warning("the auth file %s is readable by other users of this machine (chmod 600 it)", path)
        for number, line in enumerate(text.splitlines(), start=1):
            if line.strip() and not line.lstrip().startswith("#"):
                users.append(_user(line, f"auth file {path} line {number}"))
    seen: set[str] = set()
    for user, _ in users:
        if user in seen:
            raise ConfigError(f"user {user!r} is named twice in --auth / the auth file")
        seen.add(user)
    return users


def exposed(host: str, share: bool) -> bool:
    """Whether others could reach the app: a non-loopback address, or a public share link."""
    return share or not is_loopback(host)


def check_exposure(host: str, share: bool, users: Users | None) -> None:
    """Refuse to serve beyond this machine without users: anyone reaching it could read every session."""
    if exposed(host, share) and not users:
        where = "with a public share link" if share else f"on {host}"
        raise ConfigError(
            f"refusing to serve the app {where} without users: anyone who reaches it could read, continue and "
            "delete every session. Add --auth USER:PASSWORD or --auth-file PATH (app.auth_file), or bind 127.0.0.1."
        )
