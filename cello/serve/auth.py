"""The bearer token `cello serve` expects, read from a mounted Secret file or an env var.

Auth fails closed: whether auth is on is decided once, at start (a token file is configured,
or the env var holds a token). From then on a token source that turns empty, whitespace-only,
unreadable or missing does not switch auth off: every protected route answers 401 and the
server logs an error (once per change), until a valid token is back. The file is re-read when
its identity, size or mtime changes (Kubernetes updates a Secret by swapping a symlink).

    tokens = TokenSource(env="CELLO_SERVE_TOKEN", file="/var/run/secrets/cello/token")
    tokens.required        # True: auth is on for the life of the server
    tokens.token()         # the token, or None while the source is broken (refuse everything)
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from cello.errors import ConfigError

log = logging.getLogger(__name__)


class TokenSource:
    """The expected bearer token: a file (wins) or an env var; see the module docstring."""

    def __init__(self, *, env: str | None, file: str | os.PathLike | None) -> None:
        self.env = env
        self.file = Path(file) if file else None
        self._key: tuple | None = None
        self._cached: str | None = None
        self._problem: str | None = None  # what is wrong with the source now (logged once per change)
        if self.file is not None and not self.file.is_file():
            msg = f"serve.auth_token_file={self.file} does not exist; mount the Secret there or unset the setting."
            raise ConfigError(msg)
        if self.file is not None and not self._read_file():
            msg = f"serve.auth_token_file={self.file} is empty; put the token in it."
            raise ConfigError(msg)
        self.required = self.file is not None or bool(self._read_env())

    def _read_env(self) -> str | None:
        return (os.environ.get(self.env, "").strip() or None) if self.env else None

    def _read_file(self) -> str | None:
        assert self.file is not None
        try:
            st = self.file.stat()
            key = (st.st_ino, st.st_size, st.st_mtime_ns)
            if key != self._key:
                self._cached, self._key = self.file.read_text(encoding="utf-8").strip() or None, key
        except (OSError, UnicodeError) as exc:
            self._cached, self._key = None, None
            self._report(f"cannot read serve.auth_token_file={self.file} ({type(exc).__name__})")
            return None
        self._report(None if self._cached else f"serve.auth_token_file={self.file} is empty")
        return self._cached

    def _report(self, problem: str | None) -> None:
        if problem == self._problem:
            return
        if problem is not None:
            log.error("auth: %s; every protected route answers 401 until a valid token is back", problem)
        elif self._problem is not None:
            log.warning("auth: the token is readable again; requests with it are served")
        self._problem = problem

    def token(self) -> str | None:
        """The token now; None when auth is off, or (when `required`) while the source is broken."""
        if self.file is not None:
            return self._read_file()
        value = self._read_env()
        if self.required:
            self._report(None if value else f"the env var {self.env} is empty")
        return value
